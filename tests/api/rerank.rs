//! Reranking end to end: a `finetune-reranker` job trains a cross-encoder
//! on a small seeded collection (negatives mined from it), registers it,
//! and searches of that collection configured with it come back ordered by
//! its scores; without one the stage is skipped and says so.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};

const TOPICS: [&str; 12] = [
    "cats", "compilers", "coffee", "tides", "volcanoes", "chess", "bees", "jazz", "glaciers", "tea", "saturn",
    "wolves",
];

fn passage(topic: &str) -> String {
    format!("A short passage about {topic}, with facts on {topic} and nothing else.")
}

/// Each query asks about its topic in other words than its passage's.
fn pairs() -> Vec<Value> {
    TOPICS.iter().map(|topic| json!({"query": format!("tell me about {topic}"), "positive": passage(topic)})).collect()
}

async fn wait_job(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let body: Value = app.get(&format!("/v1/jobs/{id}")).await.json().await.unwrap();
        if matches!(body["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            return body;
        }
        assert!(Instant::now() < deadline, "job {id} not finished: {body}\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn patch_settings(app: &TestApp, collection: &str, settings: Value) -> reqwest::Response {
    let url = app.url(&format!("/v1/collections/{collection}"));
    app.client.patch(url).json(&json!({"settings": settings})).send().await.unwrap()
}

fn documents(body: &Value) -> Vec<String> {
    body["hits"].as_array().unwrap().iter().map(|h| h["document_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_trained_reranker_is_registered_and_reorders_searches() {
    let app = spawn_app().await;
    let collection = app.create_collection("topics").await;
    let mut ids = Vec::new();
    for topic in TOPICS {
        ids.push(app.add_text(&collection, topic, &passage(topic), json!({})).await);
    }
    for id in &ids {
        app.wait_ready(&collection, id).await;
    }

    let search = |rerank: Option<bool>| {
        let mut body = json!({"query": "tell me about chess", "top_k": 8});
        if let Some(rerank) = rerank {
            body["rerank"] = json!(rerank);
        }
        body
    };
    // No reranker yet: the stage is skipped, and asking for it is an error.
    let plain = app.search(&collection, search(None)).await;
    assert_eq!(plain["rerank"], json!({"status": "skipped", "reason": "no reranker is configured"}), "{plain}");
    assert!(plain["timings"]["rerank_ms"].is_null(), "{plain}");
    assert!(plain["hits"][0]["scores"].get("rerank").is_none(), "{plain}");
    let url = format!("/v1/collections/{collection}/search");
    assert_problem(app.post_json(&url, &search(Some(true))).await, StatusCode::BAD_REQUEST).await;

    let params = json!({
        "collection": "topics",
        "name": "tiny-rr",
        "pairs": pairs(),
        "epochs": 3,
        "batch_size": 4,
        "negatives": 3,
        "learning_rate": 3e-4,
        "max_seq_len": 48,
        "validation_fraction": 0.25,
        "seed": 11,
    });
    let response = app.post_json("/v1/jobs", &json!({"kind": "finetune-reranker", "params": params})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let job: Value = response.json().await.unwrap();
    let done = wait_job(&app, job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}\n{}", app.log());
    assert_eq!(done["params"]["collection"], collection, "the name is stored as the id");

    // 9 training queries in batches of 4 (the last takes 5): 2 steps an epoch.
    let loss: Vec<f64> = done["metrics"]["loss"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).collect();
    eprintln!("loss per step: {loss:?}; metrics: {}", done["metrics"]);
    assert_eq!(loss.len(), 6, "{done}");
    assert!(loss[4] + loss[5] < (loss[0] + loss[1]) * 0.8, "loss did not go down: {loss:?}");
    assert_eq!(done["metrics"]["val_mrr"].as_array().unwrap().len(), 4, "base, then every epoch");
    let logs = done["logs"].as_array().unwrap();
    assert!(logs.iter().any(|l| l["message"].as_str().unwrap().contains("mined negatives")), "{logs:?}");

    let artifact = &done["artifacts"][0];
    assert_eq!((artifact["name"].as_str(), artifact["kind"].as_str()), (Some("tiny-rr"), Some("reranker")));
    let dir = std::path::PathBuf::from(artifact["path"].as_str().unwrap());
    for file in artifact["files"].as_array().unwrap() {
        assert!(dir.join(file.as_str().unwrap()).is_file(), "{file} missing in {}", dir.display());
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!((manifest["kind"].as_str(), manifest["max_seq_len"].as_u64()), (Some("reranker"), Some(48)));
    assert!(manifest["training"]["mined_negatives"].as_u64().unwrap() > 0, "{manifest}");

    // A reranker that does not exist, or a name that cannot be one.
    assert_eq!(patch_settings(&app, "topics", json!({"retrieval": {"reranker": "nope"}})).await.status(), StatusCode::OK);
    assert_problem(app.post_json(&url, &search(None)).await, StatusCode::NOT_FOUND).await;
    let bad = patch_settings(&app, "topics", json!({"retrieval": {"reranker": "../x"}})).await;
    assert_problem(bad, StatusCode::BAD_REQUEST).await;

    let ok = patch_settings(&app, "topics", json!({"retrieval": {"reranker": "tiny-rr"}})).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let mut reordered = false;
    for topic in TOPICS {
        let body = json!({"query": format!("tell me about {topic}"), "top_k": 8});
        let reranked = app.search(&collection, body.clone()).await;
        assert_eq!(reranked["rerank"], json!({"status": "applied", "model": "tiny-rr", "candidates": 12}), "{reranked}");
        assert!(reranked["timings"]["rerank_ms"].as_f64().unwrap() > 0.0, "{reranked}");
        let scores: Vec<f64> =
            reranked["hits"].as_array().unwrap().iter().map(|h| h["scores"]["rerank"].as_f64().unwrap()).collect();
        assert_eq!(scores.len(), 8);
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "not ordered by the reranker: {scores:?}");

        let mut fused_body = body;
        fused_body["rerank"] = json!(false);
        let fused = app.search(&collection, fused_body).await;
        assert_eq!(fused["rerank"]["reason"], "turned off by the request");
        reordered |= documents(&fused) != documents(&reranked);
    }
    assert!(reordered, "the reranker never changed the fused order");

    // /query reports the stage's time too.
    let answer: Value = app
        .post_json(&format!("/v1/collections/{collection}/query"), &json!({"query": "tell me about tea", "max_tokens": 4}))
        .await
        .json()
        .await
        .unwrap();
    assert!(answer["timings"]["rerank_ms"].as_f64().is_some(), "{answer}");
    assert!(answer["hits"][0]["scores"]["rerank"].as_f64().is_some(), "{answer}");
}

#[tokio::test]
async fn finetune_reranker_needs_an_existing_collection() {
    let app = spawn_app().await;
    let body = json!({"kind": "finetune-reranker", "params": {"collection": "absent", "pairs": pairs()}});
    assert_problem(app.post_json("/v1/jobs", &body).await, StatusCode::NOT_FOUND).await;
    let body = json!({"kind": "finetune-reranker", "params": {"pairs": pairs()}});
    let problem = assert_problem(app.post_json("/v1/jobs", &body).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(problem["detail"].as_str().unwrap().contains("collection"), "{problem}");
}
