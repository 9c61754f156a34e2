use std::collections::HashSet;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{seed_corpus, spawn_app};

fn chunk_ids(list: &Value) -> HashSet<String> {
    list.as_array().unwrap().iter().flat_map(|s| s["chunk_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned())).collect()
}

#[tokio::test]
async fn query_answers_with_citations_that_point_at_returned_chunks() {
    let app = spawn_app().await;
    let c = app.create_collection("answers").await;
    let ids = seed_corpus(&app, &c).await;

    let body = json!({"query": "What gas do plants produce during photosynthesis?", "top_k": 2, "max_tokens": 48});
    let response = app.post_json(&format!("/v1/collections/{c}/query"), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();

    assert!(!body["answer"].as_str().unwrap().trim().is_empty(), "{body}");
    let sources = body["sources"].as_array().unwrap();
    assert!(!sources.is_empty());
    assert_eq!(sources[0]["source"], 1);
    assert_eq!(sources[0]["document_id"], ids[0].as_str(), "best source is the photosynthesis text");
    let hit_ids: HashSet<String> = body["hits"].as_array().unwrap().iter().map(|h| h["chunk_id"].as_str().unwrap().to_owned()).collect();
    for source in sources {
        let source_chunks = chunk_ids(&json!([source]));
        assert!(source_chunks.iter().any(|id| hit_ids.contains(id)), "every source contains a returned hit");
    }
    let offered = chunk_ids(&body["sources"]);
    for citation in body["citations"].as_array().unwrap() {
        let n = citation["source"].as_u64().unwrap() as usize;
        assert!((1..=sources.len()).contains(&n));
        assert!(chunk_ids(&json!([citation])).is_subset(&offered), "citation {citation} points outside the sources");
    }
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(body["usage"]["sources_used"].as_u64().unwrap() as usize, sources.len());
}

#[tokio::test]
async fn query_streams_server_sent_events() {
    let app = spawn_app().await;
    let c = app.create_collection("streamed").await;
    seed_corpus(&app, &c).await;

    let body = json!({"query": "What is a volcano?", "top_k": 1, "max_tokens": 16, "stream": true});
    let response = app.post_json(&format!("/v1/collections/{c}/query"), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut raw = String::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        raw.push_str(&String::from_utf8_lossy(&piece.unwrap()));
    }
    let events: Vec<(String, Value)> = raw
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"sources"), "{raw}");
    assert_eq!(names.last(), Some(&"done"), "{raw}");
    let deltas: String = events.iter().filter(|(n, _)| n == "delta").map(|(_, d)| d["text"].as_str().unwrap()).collect();
    assert!(names.iter().filter(|n| **n == "delta").count() >= 2, "the answer arrives in pieces: {raw}");
    let done = &events.last().unwrap().1;
    assert_eq!(done["answer"].as_str().unwrap(), deltas.trim());
}

#[tokio::test]
async fn query_with_nothing_relevant_says_so() {
    let app = spawn_app().await;
    let c = app.create_collection("empty").await;
    let body = json!({"query": "What is the airspeed of an unladen swallow?"});
    let response = app.post_json(&format!("/v1/collections/{c}/query"), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(body["answer"].as_str().unwrap().contains("could not find"), "{body}");
    assert_eq!(body["citations"].as_array().unwrap().len(), 0);
    assert_eq!(body["usage"]["sources_used"], 0);
}
