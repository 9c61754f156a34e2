use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app, spawn_app_with};

/// Posts `lines` as an NDJSON body that arrives in small pieces, so that
/// lines are split across the chunks the server reads.
async fn post_ndjson(app: &TestApp, collection: &str, lines: &[String]) -> Response {
    let body = lines.join("\n").into_bytes();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(97).map(|piece| Ok(piece.to_vec())).collect();
    app.client
        .post(app.url(&format!("/v1/collections/{collection}/documents")))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .expect("request")
}

/// Polls the batch until none of its documents is queued or processing.
async fn wait_for_batch(app: &TestApp, batch: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let response = app.get(&format!("/v1/batches/{batch}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        if body["done"] == true {
            return body;
        }
        assert!(Instant::now() < deadline, "batch {batch} not done after 180 s: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn collection_stats(app: &TestApp, collection: &str) -> Value {
    let body: Value = app.get(&format!("/v1/collections/{collection}")).await.json().await.unwrap();
    body["stats"].clone()
}

const TOPICS: &[&str] = &[
    "lighthouses", "glaciers", "honeybees", "volcanoes", "sourdough", "comets", "tides", "falcons",
    "coral reefs", "sundials", "origami", "basalt",
];

#[tokio::test]
async fn ndjson_upload_queues_valid_lines_and_reports_bad_ones() {
    let app = spawn_app_with(&[("RAGD_SERVER__MAX_DOCUMENT_BYTES", "2000")]).await;
    let c = app.create_collection("bulk").await;
    let mut lines: Vec<String> = (0..50)
        .map(|i| {
            let topic = TOPICS[i % TOPICS.len()];
            let text = format!("Note {i} is about {topic}. Entry number {i} of the bulk upload test.");
            json!({"title": format!("note {i}"), "text": text, "metadata": {"n": i}, "external_id": format!("note-{i}")})
                .to_string()
        })
        .collect();
    lines[9] = "{\"text\": ".to_owned();
    lines[29] = json!({"text": "  "}).to_string();
    // A line over the document limit, and lines that are not documents.
    lines.push(json!({"text": "x".repeat(5000)}).to_string());
    lines.push(String::new());
    lines.push(json!({"text": "fine", "colour": "red"}).to_string());
    lines.push(json!({"text": "a NUL \u{0} inside"}).to_string());

    let response = post_ndjson(&app, &c, &lines).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 48, "{body}");
    assert_eq!((body["duplicates"].as_i64(), body["rejected_count"].as_i64()), (Some(0), Some(5)));
    let rejected: Vec<(i64, String)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_i64().unwrap(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    let numbers: Vec<i64> = rejected.iter().map(|(line, _)| *line).collect();
    assert_eq!(numbers, [10, 30, 51, 53, 54], "{body}");
    assert!(rejected[0].1.contains("EOF"), "{rejected:?}");
    assert!(rejected[1].1.contains("empty"), "{rejected:?}");
    assert!(rejected[2].1.contains("longer than the 2000 byte limit"), "{rejected:?}");
    assert!(rejected[3].1.contains("colour"), "{rejected:?}");
    assert!(rejected[4].1.contains("NUL"), "{rejected:?}");
    assert_eq!((body["documents_truncated"].as_bool(), body["rejected_truncated"].as_bool()), (Some(false), Some(false)));
    let documents = body["documents"].as_array().unwrap();
    assert_eq!(documents.len(), 48);
    assert_eq!(documents[9]["line"], 11);
    assert_eq!(documents[9]["external_id"], "note-10");
    assert!(documents.iter().all(|d| d["status"] == "queued" && d["version"] == 1), "{body}");

    let batch = body["batch_id"].as_str().unwrap();
    let done = wait_for_batch(&app, batch).await;
    assert_eq!(done["collection_id"], c.as_str());
    assert_eq!((done["accepted"].as_i64(), done["rejected"].as_i64()), (Some(48), Some(5)));
    assert_eq!(done["documents"]["ready"], 48, "{done}");
    assert_eq!(done["documents"]["failed"], 0, "{done}");
    assert_eq!(done["progress"], 1.0);

    let document = documents[0]["id"].as_str().unwrap();
    let view: Value = app.get(&format!("/v1/collections/{c}/documents/{document}")).await.json().await.unwrap();
    assert_eq!((view["batch_id"].as_str(), view["title"].as_str()), (Some(batch), Some("note 0")));
    let stats = collection_stats(&app, &c).await;
    assert_eq!(stats["documents"]["total"], 48);
    assert_eq!(stats["point_count"], stats["chunk_count"]);

    let hits = app.search(&c, json!({"query": "honeybees entry number 14", "top_k": 5})).await;
    assert!(hits["hits"].as_array().unwrap().iter().any(|h| h["text"].as_str().unwrap().contains("Note 14 ")), "{hits}");

    assert_problem(app.get("/v1/batches/0190f5c2-7a6e-7b1c-9d2e-3f4a5b6c7d8e").await, StatusCode::NOT_FOUND).await;
    assert_problem(app.get("/v1/batches/not-a-batch").await, StatusCode::BAD_REQUEST).await;
    assert_problem(post_ndjson(&app, &c, &["".to_owned(), "  ".to_owned()]).await, StatusCode::BAD_REQUEST).await;
    assert!(!app.log().contains("panicked"), "the server panicked:\n{}", app.log());
}

#[tokio::test]
async fn identical_content_is_not_ingested_twice() {
    let app = spawn_app().await;
    let c = app.create_collection("dedup").await;
    let documents = format!("/v1/collections/{c}/documents");
    let text = "The Mariana Trench is the deepest known part of the world's oceans.";
    let first = app.add_text(&c, "Trench", text, json!({})).await;

    let again = app.post_json(&documents, &json!({"title": "Another title", "text": text})).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!((again["id"].as_str(), again["duplicate"].as_bool()), (Some(first.as_str()), Some(true)));
    assert_eq!(again["title"], "Trench", "the stored document is unchanged");
    app.wait_ready(&c, &first).await;

    // In bulk: against the stored document, and within the body itself.
    let other = "Sea otters hold hands while they sleep so they do not drift apart.";
    let lines = [json!({"text": text}), json!({"text": other}), json!({"text": other, "title": "again"})]
        .map(|line| line.to_string());
    let response = post_ndjson(&app, &c, &lines).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["accepted"].as_i64(), body["duplicates"].as_i64()), (Some(1), Some(2)), "{body}");
    let entries = body["documents"].as_array().unwrap();
    assert_eq!((entries[0]["status"].as_str(), entries[0]["duplicate_of"].as_str()), (Some("duplicate"), Some(first.as_str())));
    assert_eq!(entries[0]["id"], first.as_str());
    assert_eq!(entries[1]["status"], "queued");
    assert_eq!(entries[2]["duplicate_of"], entries[1]["id"]);

    let done = wait_for_batch(&app, body["batch_id"].as_str().unwrap()).await;
    assert_eq!((done["accepted"].as_i64(), done["duplicates"].as_i64()), (Some(1), Some(2)));
    assert_eq!(done["documents"]["total"], 1, "{done}");
    let stats = collection_stats(&app, &c).await;
    assert_eq!(stats["documents"]["total"], 2);
    assert_eq!(stats["point_count"], stats["chunk_count"]);
}

#[tokio::test]
async fn a_known_external_id_with_new_content_becomes_a_new_version() {
    let app = spawn_app().await;
    let c = app.create_collection("versions").await;
    let documents = format!("/v1/collections/{c}/documents");
    let cats = "Cats purr when they are content, and domestic cats sleep for most of the day.";
    let submarines = "Submarines dive by flooding their ballast tanks with seawater and surface by blowing them out with compressed air.";
    let neighbour = app.add_text(&c, "Bridges", "Suspension bridges hang their deck from cables slung between towers.", json!({})).await;

    let response = app.post_json(&documents, &json!({"external_id": "doc-1", "title": "Pets", "text": cats})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let v1: Value = response.json().await.unwrap();
    let id = v1["id"].as_str().unwrap().to_owned();
    assert_eq!(app.wait_ready(&c, &id).await["version"], 1);
    app.wait_ready(&c, &neighbour).await;
    let hits = app.search(&c, json!({"query": "why do cats purr", "top_k": 1})).await;
    assert_eq!(hits["hits"][0]["document_id"], id.as_str(), "{hits}");

    // Same external id, same content: a duplicate.
    let same = app.post_json(&documents, &json!({"external_id": "doc-1", "text": cats})).await;
    assert_eq!(same.status(), StatusCode::OK);

    let response = app.post_json(&documents, &json!({"external_id": "doc-1", "title": "Boats", "text": submarines})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let v2: Value = response.json().await.unwrap();
    assert_eq!((v2["id"].as_str(), v2["version"].as_i64(), v2["status"].as_str()), (Some(id.as_str()), Some(2), Some("queued")));
    assert_ne!(v2["content_hash"], v1["content_hash"]);
    let ready = app.wait_ready(&c, &id).await;
    assert_eq!((ready["version"].as_i64(), ready["title"].as_str()), (Some(2), Some("Boats")));

    let hits = app.search(&c, json!({"query": "how do submarines dive", "top_k": 1})).await;
    assert_eq!(hits["hits"][0]["document_id"], id.as_str(), "{hits}");
    assert!(hits["hits"][0]["text"].as_str().unwrap().contains("ballast"));
    let hits = app.search(&c, json!({"query": cats, "top_k": 10})).await;
    for hit in hits["hits"].as_array().unwrap() {
        assert!(!hit["text"].as_str().unwrap().contains("purr"), "the old version is still indexed: {hits}");
    }
    let stats = collection_stats(&app, &c).await;
    assert_eq!(stats["documents"]["total"], 2);
    assert_eq!(stats["point_count"], stats["chunk_count"], "{stats}");

    // In bulk too.
    let line = json!({"external_id": "doc-1", "text": "Periscopes let a submerged crew look above the waves."}).to_string();
    let response = post_ndjson(&app, &c, &[line]).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["documents"][0]["id"].as_str(), body["documents"][0]["version"].as_i64()), (Some(id.as_str()), Some(3)));
    wait_for_batch(&app, body["batch_id"].as_str().unwrap()).await;
    let stats = collection_stats(&app, &c).await;
    assert_eq!((stats["documents"]["total"].as_i64(), stats["documents"]["ready"].as_i64()), (Some(2), Some(2)));
    assert_eq!(stats["point_count"], stats["chunk_count"], "{stats}");
}

#[tokio::test]
async fn multipart_uploads_form_a_batch() {
    let app = spawn_app().await;
    let c = app.create_collection("multi").await;
    let file = |name: &str, body: &str| {
        reqwest::multipart::Part::bytes(body.as_bytes().to_vec()).file_name(name.to_owned()).mime_str("text/plain").unwrap()
    };
    let form = reqwest::multipart::Form::new()
        .part("file", file("a.txt", "Kites fly because the wind pushes against their tilted surface."))
        .part("file", file("b.txt", "Kites fly because the wind pushes against their tilted surface."));
    let response = app.client.post(app.url(&format!("/v1/collections/{c}/documents"))).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let documents = body["documents"].as_array().unwrap();
    assert_eq!(documents[1]["id"], documents[0]["id"], "{body}");
    assert_eq!(documents[1]["duplicate"], true);
    let done = wait_for_batch(&app, body["batch_id"].as_str().unwrap()).await;
    assert_eq!((done["accepted"].as_i64(), done["duplicates"].as_i64()), (Some(1), Some(1)));
    assert_eq!(done["documents"]["ready"], 1);
}
