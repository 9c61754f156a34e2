use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn bad_requests_get_problem_details_never_a_500() {
    let app = spawn_app().await;
    let c = app.create_collection("strict").await;
    let documents = format!("/v1/collections/{c}/documents");

    // Unknown collection, by id and by name.
    let missing = "0190f5c2-7a6e-7b1c-9d2e-3f4a5b6c7d8e";
    assert_problem(app.get(&format!("/v1/collections/{missing}")).await, StatusCode::NOT_FOUND).await;
    let body = assert_problem(app.post_json("/v1/collections/nope/search", &json!({"query": "x"})).await, StatusCode::NOT_FOUND).await;
    assert_eq!(body["code"], "not_found");

    // Empty text.
    let body = assert_problem(app.post_json(&documents, &json!({"text": "   "})).await, StatusCode::BAD_REQUEST).await;
    assert!(body["detail"].as_str().unwrap().contains("empty"), "{body}");

    // Malformed JSON, a wrong field type, an unknown field.
    let malformed = app.client.post(app.url(&documents)).header("content-type", "application/json").body("{\"text\": ").send().await.unwrap();
    assert_problem(malformed, StatusCode::BAD_REQUEST).await;
    let wrong_type = app.post_json(&documents, &json!({"text": 5})).await;
    assert!(wrong_type.status().is_client_error());
    assert_problem(wrong_type, StatusCode::from_u16(422).unwrap()).await;
    assert_problem(app.post_json(&documents, &json!({"text": "x", "colour": "red"})).await, StatusCode::UNPROCESSABLE_ENTITY).await;

    // Unsupported file types: binary junk, and text that is not UTF-8.
    let junk = Part::bytes(vec![0u8, 159, 146, 150, 0, 1, 2, 3, 255, 254]).file_name("program.exe");
    let response = app.client.post(app.url(&documents)).multipart(Form::new().part("file", junk)).send().await.unwrap();
    let body = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(body["detail"].as_str().unwrap().contains("program.exe"), "{body}");

    // Invalid names and parameters.
    assert_problem(app.post_json("/v1/collections", &json!({"name": "no spaces please"})).await, StatusCode::BAD_REQUEST).await;
    assert_problem(app.post_json(&format!("/v1/collections/{c}/search"), &json!({"query": "x", "top_k": 0})).await, StatusCode::BAD_REQUEST).await;
    assert_problem(app.post_json(&format!("/v1/collections/{c}/search"), &json!({"query": "x", "filter": {"k": {"gt": 1}}})).await, StatusCode::BAD_REQUEST).await;
    assert_problem(app.post_json(&format!("/v1/collections/{c}/search"), &json!({"query": ""})).await, StatusCode::BAD_REQUEST).await;
    assert_problem(app.get(&format!("{documents}/not-a-uuid")).await, StatusCode::BAD_REQUEST).await;
    let plain = app.client.post(app.url(&documents)).header("content-type", "text/plain").body("hello").send().await.unwrap();
    assert_problem(plain, StatusCode::BAD_REQUEST).await;

    // Unknown routes and methods are problems too.
    assert_problem(app.get("/v1/nothing-here").await, StatusCode::NOT_FOUND).await;
    assert_problem(app.client.put(app.url("/v1/collections")).send().await.unwrap(), StatusCode::METHOD_NOT_ALLOWED).await;

    assert!(!app.log().contains("panicked"), "the server panicked:\n{}", app.log());
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
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

/// Every kind of bad file in one upload: each is refused with its reason
/// (or, when only parsing can tell, its document fails with one), and the
/// good files of the same batch are ingested.
#[tokio::test]
async fn bad_files_fail_alone_and_the_rest_of_the_batch_is_ingested() {
    let app = spawn_app_with(&[("RAGD_SERVER__MAX_DOCUMENT_BYTES", "100000")]).await;
    let c = app.create_collection("mixed").await;
    let part = |name: &str, bytes: Vec<u8>| Part::bytes(bytes).file_name(name.to_owned());
    let bomb = vec![b'z'; 5_000_000];
    let archive = zip_of(&[
        ("inside/anchors.txt", b"Anchors hold a ship in place by digging into the sea floor."),
        ("../../escape.txt", b"names that leave the archive are refused"),
        ("inside/nul\0.txt", b"PostgreSQL cannot store this name"),
        ("bomb.txt", &bomb),
    ]);
    let mut corrupt_pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R".to_vec();
    corrupt_pdf.extend((0..4000u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8));
    let long_name = format!("{}.txt", "n".repeat(1100));
    // PostgreSQL cannot store a NUL; the row holding one is refused alone.
    let rows = concat!(
        r#"{"text": "Buoys mark the channel.", "title": "a\u0000b"}"#,
        "\n",
        r#"{"text": "Lighthouses warn ships off rocks."}"#,
        "\n"
    );
    let form = Form::new()
        .part("file", part("compass.txt", b"A compass needle points to magnetic north.".to_vec()))
        .part("file", part(&long_name, b"A name too long to be a title.".to_vec()))
        .part("file", part("beacons.jsonl", rows.as_bytes().to_vec()))
        .part("file", part("broken.pdf", corrupt_pdf))
        .part("file", part("huge.txt", "sextant ".repeat(20_000).into_bytes()))
        .part("file", part("latin1.txt", b"Le caf\xe9 est tr\xe8s bon.".to_vec()))
        .part("file", part("empty.txt", Vec::new()))
        .part("file", part("harbour.zip", archive))
        .part("file", part("tides.md", b"# Tides\n\nSpring tides follow the full and new moon.".to_vec()));
    let response = app
        .client
        .post(app.url(&format!("/v1/collections/{c}/documents")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();

    let rejected: Vec<(&str, &str)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["file"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    let reason =
        |file: &str| rejected.iter().find(|(name, _)| *name == file).map(|(_, reason)| *reason).unwrap_or("");
    assert_eq!((rejected.len(), body["rejected_count"].as_i64()), (8, Some(8)), "{body}");
    assert!(reason(&long_name).contains("title is longer"), "{body}");
    assert!(reason("beacons.jsonl#1").contains("NUL"), "{body}");
    assert!(reason("harbour.zip/inside/nul\0.txt").contains("NUL"), "{body}");
    assert!(reason("huge.txt").contains("100000 byte limit"), "{body}");
    assert!(reason("latin1.txt").contains("UTF-8"), "{body}");
    assert!(reason("empty.txt").contains("empty"), "{body}");
    assert!(!reason("harbour.zip/../../escape.txt").is_empty(), "{body}");
    assert!(!reason("harbour.zip/bomb.txt").is_empty(), "{body}");

    let mut outcome = std::collections::BTreeMap::new();
    for document in body["documents"].as_array().unwrap() {
        let done = app.wait_for_document(&c, document["id"].as_str().unwrap()).await;
        outcome.insert(
            done["source_name"].as_str().unwrap().to_owned(),
            (done["status"].clone(), done["failure"].clone()),
        );
    }
    let names: Vec<&str> = outcome.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["beacons.jsonl#2", "broken.pdf", "compass.txt", "harbour.zip/inside/anchors.txt", "tides.md"],
        "{outcome:?}"
    );
    let (status, failure) = &outcome["broken.pdf"];
    assert_eq!(status, "failed");
    assert!(failure.as_str().unwrap().contains("PDF"), "{failure}");
    for name in ["beacons.jsonl#2", "compass.txt", "harbour.zip/inside/anchors.txt", "tides.md"] {
        assert_eq!(outcome[name].0, "ready", "{name}: {outcome:?}");
    }

    let batch: Value =
        app.get(&format!("/v1/batches/{}", body["batch_id"].as_str().unwrap())).await.json().await.unwrap();
    assert_eq!((batch["accepted"].as_i64(), batch["rejected"].as_i64()), (Some(5), Some(8)), "{batch}");
    assert_eq!(
        (batch["documents"]["ready"].as_i64(), batch["documents"]["failed"].as_i64()),
        (Some(4), Some(1)),
        "{batch}"
    );
    let hits = app.search(&c, json!({"query": "what holds a ship in place", "top_k": 1})).await;
    assert_eq!(hits["hits"][0]["title"], "anchors", "{hits}");
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    assert!(!app.log().contains("panicked"), "the server panicked:\n{}", app.log());
}
