//! The `reindex` job: a collection switches to another embedder (MiniLM
//! with Q8_0 weights, registered by a `quantize` job) while searches keep
//! answering, a document uploaded meanwhile ends up in the new vectors, and
//! afterwards every chunk is searchable with the new model and nothing else
//! is left in the index.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, seed_corpus, spawn_app, TestApp};
use crate::jobs::{finished, job, wait_job};

/// The configured embedder (MiniLM on ONNX Runtime).
const CONFIGURED: &str = "minilm-l6-onnx";
/// The same model's safetensors in the registry, the `quantize` source.
const BASE: &str = "all-minilm-l6-v2";
const QUANTIZED: &str = "minilm-q8";

async fn submit(app: &TestApp, kind: &str, params: Value) -> String {
    let response = app.post_json("/v1/jobs", &json!({"kind": kind, "params": params})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

async fn collection(app: &TestApp, name: &str) -> Value {
    let response = app.get(&format!("/v1/collections/{name}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn top_title(app: &TestApp, query: &str) -> String {
    let found = app.search("docs", json!({"query": query, "mode": "dense", "top_k": 1})).await;
    found["hits"][0]["title"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn reindex_switches_a_collection_to_another_embedder_while_it_is_searched() {
    let app = spawn_app().await;
    app.create_collection("docs").await;
    seed_corpus(&app, "docs").await;
    let quantize = submit(&app, "quantize", json!({"model": BASE, "type": "q8_0", "name": QUANTIZED})).await;
    let quantized = wait_job(&app, &quantize, Duration::from_secs(300), finished).await;
    assert_eq!(quantized["status"], "succeeded", "{quantized}");
    assert_eq!(collection(&app, "docs").await["embedder"], CONFIGURED);

    let reindex = submit(&app, "reindex", json!({"collection": "docs", "embedder": QUANTIZED})).await;
    let glaciers = app
        .add_text("docs", "Glaciers", "A glacier is a persistent body of dense ice that moves under its own weight.", json!({}))
        .await;
    // Every search answers, from the old vectors or the new ones.
    let mut searches = 0;
    while !finished(&job(&app, &reindex).await) {
        assert_eq!(top_title(&app, "How does magma reach the surface?").await, "Volcanoes");
        searches += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = job(&app, &reindex).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", app.log());
    assert_eq!(done["progress"], 1.0);
    eprintln!("{searches} searches during the reindex; log: {}", done["logs"]);
    app.wait_ready("docs", &glaciers).await;

    let after = collection(&app, "docs").await;
    assert_eq!(after["embedder"], QUANTIZED, "{after}");
    assert!(after.get("reindex").is_none(), "{after}");
    let stats = &after["stats"];
    assert_eq!(stats["documents"]["ready"], 5, "{after}");
    assert_eq!(stats["chunk_count"], stats["point_count"], "one generation, every chunk once: {after}");
    assert_eq!(top_title(&app, "How does magma reach the surface?").await, "Volcanoes");
    assert_eq!(top_title(&app, "slow rivers of ice").await, "Glaciers");

    // Deleting and adding documents now reach the new generation.
    let response = app.delete(&format!("/v1/collections/docs/documents/{glaciers}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let stats = collection(&app, "docs").await["stats"].clone();
    assert_eq!((stats["documents"]["ready"].as_i64(), stats["chunk_count"].clone()), (Some(4), stats["point_count"].clone()));
}

#[tokio::test]
async fn reindex_requests_are_validated() {
    let app = spawn_app().await;
    app.create_collection("docs").await;
    let cases = [
        (json!({"collection": "docs", "embedder": "no-such-model"}), StatusCode::NOT_FOUND, CONFIGURED),
        (json!({"collection": "docs", "embedder": "no-such-model"}), StatusCode::NOT_FOUND, BASE),
        (json!({"collection": "nowhere", "embedder": BASE}), StatusCode::NOT_FOUND, "nowhere"),
        (json!({"collection": "docs"}), StatusCode::UNPROCESSABLE_ENTITY, "embedder"),
        (json!({"collection": "docs", "embedder": "../up"}), StatusCode::UNPROCESSABLE_ENTITY, "not a valid model name"),
        (json!({"collection": "docs", "embedder": BASE, "extra": 1}), StatusCode::UNPROCESSABLE_ENTITY, "extra"),
    ];
    for (params, status, expected) in cases {
        let response = app.post_json("/v1/jobs", &json!({"kind": "reindex", "params": params})).await;
        let problem = assert_problem(response, status).await;
        assert!(problem["detail"].as_str().unwrap().contains(expected), "{params}: {problem}");
    }
}
