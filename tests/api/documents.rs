use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

fn file(name: &str, body: &str, mime: &str) -> Part {
    Part::bytes(body.as_bytes().to_vec()).file_name(name.to_owned()).mime_str(mime).unwrap()
}

#[tokio::test]
async fn files_are_uploaded_parsed_and_searchable() {
    let app = spawn_app().await;
    let c = app.create_collection("files").await;
    let markdown = "# Operations Guide\n\n## Backups\n\nNightly backups are written to the cold storage bucket at 02:00 UTC and kept for ninety days.\n";
    let html = "<html><head><title>Office wiki</title><script>var tracking = 1;</script></head><body><nav>Home | About</nav><h1>Parking</h1><p>Visitors park in the underground garage on level minus two.</p></body></html>";
    let form = Form::new()
        .part("file", file("notes.txt", "The cafeteria serves lentil soup every Tuesday.", "text/plain"))
        .part("file", file("guide.md", markdown, "text/markdown"))
        .part("file", file("wiki.html", html, "text/html"));
    let response = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let documents = body["documents"].as_array().unwrap();
    assert_eq!(documents.len(), 3, "{body}");
    for document in documents {
        assert_eq!(document["status"], "queued");
        app.wait_ready(&c, document["id"].as_str().unwrap()).await;
    }

    let hits = app.search(&c, json!({"query": "when are backups taken", "top_k": 1})).await;
    let hit = &hits["hits"][0];
    assert_eq!(hit["title"], "guide");
    assert_eq!(hit["heading_path"], "Operations Guide > Backups");

    let hits = app.search(&c, json!({"query": "where do visitors park", "top_k": 1})).await;
    let text = hits["hits"][0]["text"].as_str().unwrap();
    assert!(text.contains("underground garage"), "{hits}");
    assert!(!text.contains("tracking") && !text.contains("Home | About"), "boilerplate leaked: {text}");
}

#[tokio::test]
async fn documents_are_listed_in_pages() {
    let app = spawn_app_with(&[("RAGD_SERVER__MAX_PAGE_SIZE", "3")]).await;
    let c = app.create_collection("paged").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.add_text(&c, &format!("note {i}"), &format!("Note number {i} about nothing."), json!({}))
                .await,
        );
    }
    let first: Value = app.get(&format!("/v1/collections/{c}/documents?limit=3")).await.json().await.unwrap();
    let after = first["next_after"].as_str().unwrap().to_owned();
    let second: Value =
        app.get(&format!("/v1/collections/{c}/documents?limit=3&after={after}")).await.json().await.unwrap();
    let listed: Vec<String> = first["documents"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["documents"].as_array().unwrap())
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids, "pages list every document once, oldest first");
    assert!(second["next_after"].is_null());

    let over_limit = app.get(&format!("/v1/collections/{c}/documents?limit=4")).await;
    let body = assert_problem(over_limit, StatusCode::BAD_REQUEST).await;
    assert!(
        body["detail"].as_str().unwrap().contains("between 1 and 3"),
        "the environment sets the limit: {body}"
    );
}

#[tokio::test]
async fn deleting_a_document_removes_its_chunks_from_search() {
    let app = spawn_app().await;
    let c = app.create_collection("deletions").await;
    let keep = app.add_text(&c, "Kept", "Glaciers carve U-shaped valleys as they move.", json!({})).await;
    let gone = app
        .add_text(&c, "Deleted", "The zebra mussel is an invasive species in the Great Lakes.", json!({}))
        .await;
    app.wait_ready(&c, &keep).await;
    app.wait_ready(&c, &gone).await;

    let before = app.search(&c, json!({"query": "zebra mussel invasive", "top_k": 10})).await;
    assert!(before["hits"].as_array().unwrap().iter().any(|h| h["document_id"] == gone.as_str()));

    assert_eq!(
        app.delete(&format!("/v1/collections/{c}/documents/{gone}")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(app.get(&format!("/v1/collections/{c}/documents/{gone}")).await, StatusCode::NOT_FOUND)
        .await;
    let after = app.search(&c, json!({"query": "zebra mussel invasive", "top_k": 10})).await;
    let hits = after["hits"].as_array().unwrap();
    assert!(hits.iter().all(|h| h["document_id"] != gone.as_str()), "{after}");
    assert!(hits.iter().any(|h| h["document_id"] == keep.as_str()));

    let stats: Value = app.get(&format!("/v1/collections/{c}")).await.json().await.unwrap();
    assert_eq!(stats["stats"]["point_count"], stats["stats"]["chunk_count"]);
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// A ZIP upload is a batch of its files; entries that escape the archive's
/// folder or expand past the limit are rejected by name, the rest ingest.
#[tokio::test]
async fn zip_archives_are_unpacked_safely() {
    let app = spawn_app_with(&[("RAGD_SERVER__MAX_DOCUMENT_BYTES", "100000")]).await;
    let c = app.create_collection("archives").await;
    let bomb = vec![b'z'; 5_000_000];
    let archive = zip_of(&[
        ("docs/kiln.txt", b"The kiln fires stoneware at 1300 degrees Celsius."),
        ("docs/glaze.md", b"# Glazes\n\nCeladon glazes turn green from iron oxide."),
        ("../../etc/cron.d/evil", b"* * * * * root rm -rf /"),
        ("bomb.txt", &bomb),
    ]);
    let form = Form::new().part("file", Part::bytes(archive).file_name("pottery.zip".to_owned()));
    let response = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let documents = body["documents"].as_array().unwrap();
    let names: Vec<&str> = documents.iter().map(|d| d["source_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pottery.zip/docs/kiln.txt", "pottery.zip/docs/glaze.md"], "{body}");
    let rejected: Vec<&str> =
        body["rejected"].as_array().unwrap().iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(rejected, ["pottery.zip/../../etc/cron.d/evil", "pottery.zip/bomb.txt"], "{body}");
    for document in documents {
        app.wait_ready(&c, document["id"].as_str().unwrap()).await;
    }
    let hits = app.search(&c, json!({"query": "why is celadon green", "top_k": 1})).await;
    assert_eq!(hits["hits"][0]["heading_path"], "Glazes");
}

fn tar_gz_of(files: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, kind, bytes) in files {
        let mut header = tar::Header::new_gnu();
        // set_path refuses `..`, which is what the server must refuse too.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// An archive can be the whole body, sent as a stream: a gzipped tar is
/// unpacked as it arrives, a ZIP from a scratch file. Its files become a
/// batch; source code in it is chunked on function boundaries.
#[tokio::test]
async fn archive_bodies_become_batches() {
    let app = spawn_app_with(&[("RAGD_SERVER__MAX_ARCHIVE_BYTES", "200000")]).await;
    let c = app.create_collection("bodies").await;
    let functions: String = (0..40)
        .map(|i| format!("def tide_height_{i}(hour):\n    \"\"\"Height of tide {i} at the hour.\"\"\"\n    return {i} * hour\n\n"))
        .collect();
    let archive = tar_gz_of(&[
        ("./guide/", tar::EntryType::Directory, b""),
        (
            "./guide/lighthouse.txt",
            tar::EntryType::Regular,
            b"The lighthouse lamp is lit at dusk by the keeper.",
        ),
        ("./src/tides.py", tar::EntryType::Regular, functions.as_bytes()),
        ("../outside.txt", tar::EntryType::Regular, b"evil"),
        ("guide/link", tar::EntryType::Symlink, b""),
    ]);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = archive.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let response = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .header("content-type", "application/gzip")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let names: Vec<&str> =
        body["documents"].as_array().unwrap().iter().map(|d| d["source_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["guide/lighthouse.txt", "src/tides.py"], "{body}");
    let rejected: Vec<&str> =
        body["rejected"].as_array().unwrap().iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(rejected, ["../outside.txt", "guide/link"], "{body}");
    for document in body["documents"].as_array().unwrap() {
        app.wait_ready(&c, document["id"].as_str().unwrap()).await;
    }
    let hits = app.search(&c, json!({"query": "height of tide 17", "top_k": 20, "mode": "sparse"})).await;
    let code: Vec<&str> = hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["text"].as_str())
        .filter(|t| t.contains("tide_height"))
        .collect();
    assert!(code.len() > 1, "the module is several chunks: {hits}");
    assert!(code.iter().all(|t| t.starts_with("def tide_height_")), "chunks start at a function: {code:?}");

    let zip = zip_of(&[("notes/kiln.txt", b"The kiln fires stoneware at 1300 degrees Celsius.")]);
    let response = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .header("content-type", "application/zip")
        .body(zip)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["documents"][0]["source_name"], "notes/kiln.txt", "{body}");

    let too_big = tar_gz_of(&[("noise.txt", tar::EntryType::Regular, &random_bytes(300_000))]);
    for (media_type, bytes) in [("application/gzip", too_big.clone()), ("application/zip", too_big)] {
        let response = app
            .client
            .post(app.url(&format!("/v1/collections/{c}/documents")))
            .header("content-type", media_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
        assert!(problem["detail"].as_str().unwrap().contains("larger than 200000 bytes"), "{problem}");
    }
    let response = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .header("content-type", "application/x-tar")
        .body(b"this is not a tar archive at all, just some words".repeat(20))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["detail"].as_str().unwrap().contains("tar"), "{problem}");
}

/// Incompressible bytes, so a gzip of them stays as large.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// CSV and JSONL uploads are one document per row: the text field is the
/// text, the rest is metadata that filters match; bad rows fail alone.
#[tokio::test]
async fn csv_and_jsonl_rows_become_documents() {
    let app = spawn_app().await;
    let c = app.create_collection("rows").await;
    let csv = "title,text,year\nHeron,The grey heron hunts fish in shallow water.,2020\nEmpty,,2021\nOtter,Otters use stones to crack open shellfish.,2022\n";
    let jsonl =
        "{\"body\": \"Beavers build dams from branches and mud.\", \"habitat\": \"river\"}\nnot json\n";
    let form = Form::new()
        .text("text_field", "text")
        .part("file", file("animals.csv", csv, "text/csv"))
        .text("text_field", "body")
        .part("file", file("more.jsonl", jsonl, "application/jsonl"));
    let response = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let names: Vec<&str> =
        body["documents"].as_array().unwrap().iter().map(|d| d["source_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["animals.csv#1", "animals.csv#3", "more.jsonl#1"], "{body}");
    let rejected: Vec<&str> =
        body["rejected"].as_array().unwrap().iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(rejected, ["animals.csv#2", "more.jsonl#2"], "{body}");
    for document in body["documents"].as_array().unwrap() {
        app.wait_ready(&c, document["id"].as_str().unwrap()).await;
    }
    let hits = app
        .search(&c, json!({"query": "which animal cracks shellfish", "top_k": 3, "filter": {"year": "2022"}}))
        .await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 1, "{hits}");
    assert_eq!(hits["hits"][0]["title"], "Otter");
    let hits = app.search(&c, json!({"query": "dams", "top_k": 1, "filter": {"habitat": "river"}})).await;
    assert!(hits["hits"][0]["text"].as_str().unwrap().contains("Beavers"), "{hits}");
}
