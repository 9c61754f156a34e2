//! The `finetune-generator` job: a tiny LoRA run on SmolLM2 through the job
//! API, its loss and validation reports, the registered adapter, and the
//! merged model chatting through `/v1/chat/completions`; conversations from
//! a JSONL file and from a collection; cancellation; bad parameters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp};
use crate::jobs::{finished, job, wait_job};

const KIND: &str = "finetune-generator";

/// Made-up facts the base model cannot know, so the loss has room to fall.
const FACTS: [(&str, &str); 10] = [
    ("Zorblat", "teal"),
    ("Quintex", "amber"),
    ("Mavrin", "crimson"),
    ("Tolsk", "ochre"),
    ("Brevik", "violet"),
    ("Ondra", "silver"),
    ("Kelvar", "indigo"),
    ("Pranth", "olive"),
    ("Sudeki", "maroon"),
    ("Wexley", "coral"),
];

fn conversation(i: usize) -> Value {
    let (name, colour) = FACTS[i % FACTS.len()];
    json!({"messages": [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": format!("What colour is the flag of {name}?")},
        {"role": "assistant", "content": format!("The flag of {name} is {colour}.")},
    ]})
}

fn examples(count: usize) -> Vec<Value> {
    (0..count).map(conversation).collect()
}

async fn submit(app: &TestApp, params: Value) -> String {
    let response = app.post_json("/v1/jobs", &json!({"kind": KIND, "params": params})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

fn values(job: &Value, metric: &str) -> Vec<f64> {
    job["metrics"][metric]
        .as_array()
        .map(|points| points.iter().map(|p| p["value"].as_f64().unwrap()).collect())
        .unwrap_or_default()
}

fn logs(job: &Value) -> Vec<String> {
    job["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn finetune_generator_trains_an_adapter_and_a_merged_model_that_chats() {
    let app = spawn_app().await;
    let params = json!({
        "name": "tiny-lora",
        "examples": examples(10),
        "rank": 4,
        "alpha": 8,
        "epochs": 3,
        "batch_size": 2,
        "learning_rate": 3e-3,
        "max_seq_len": 64,
        "validation_fraction": 0.2,
        "merge": true,
    });
    let id = submit(&app, params).await;
    let started = Instant::now();
    let done = wait_job(&app, &id, Duration::from_secs(900), finished).await;
    eprintln!("finished in {} s", started.elapsed().as_secs());
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["params"]["examples"], 10, "inline conversations are counted, not echoed");

    // 8 training conversations in batches of 2: 4 steps per epoch.
    let loss = values(&done, "loss");
    eprintln!("loss per step: {loss:?}; step ms: {:?}", values(&done, "step_ms"));
    assert_eq!(loss.len(), 12, "{done}");
    let (first, last) = (loss[..4].iter().sum::<f64>() / 4.0, loss[8..].iter().sum::<f64>() / 4.0);
    assert!(last < first * 0.8, "loss did not go down: {loss:?}");
    let (val_loss, perplexity) = (values(&done, "val_loss"), values(&done, "val_perplexity"));
    eprintln!("validation loss per epoch: {val_loss:?}, perplexity {perplexity:?}");
    assert_eq!((val_loss.len(), perplexity.len()), (4, 4), "the base model, then every epoch");
    for (loss, perplexity) in val_loss.iter().zip(&perplexity) {
        assert!((loss.exp() - perplexity).abs() < 1e-6 * perplexity, "{loss} {perplexity}");
    }
    assert!(val_loss[3] < val_loss[0], "held-out loss did not go down: {val_loss:?}");
    let logs = logs(&done);
    assert!(logs.iter().any(|l| l.starts_with("8 training conversations, 2 held out")), "{logs:?}");
    assert!(logs.iter().any(|l| l.starts_with("epoch 3: validation loss")), "{logs:?}");

    let artifacts = done["artifacts"].as_array().unwrap();
    let described: Vec<(&str, &str)> =
        artifacts.iter().map(|a| (a["name"].as_str().unwrap(), a["kind"].as_str().unwrap())).collect();
    assert_eq!(described, [("tiny-lora", "generator-lora"), ("tiny-lora-merged", "generator-gguf")]);
    for artifact in artifacts {
        let dir = PathBuf::from(artifact["path"].as_str().unwrap());
        assert!(dir.starts_with(app.data_dir.path()), "{}", dir.display());
        for file in artifact["files"].as_array().unwrap() {
            assert!(dir.join(file.as_str().unwrap()).is_file(), "{file} missing in {}", dir.display());
        }
    }
    let adapter_dir = PathBuf::from(artifacts[0]["path"].as_str().unwrap());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(adapter_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["lora"],
        json!({"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"], "tensor_names": "gguf"})
    );
    assert_eq!(manifest["merged_model"], "tiny-lora-merged");
    assert!(manifest["validation"]["perplexity"].as_f64().unwrap() > 1.0, "{manifest}");
    // 30 layers, A (4 x 576) and B: q is 576 wide out, v 192.
    assert_eq!(manifest["training"]["trainable_parameters"], 30 * (4 * 576 + 576 * 4 + 4 * 576 + 192 * 4));
    assert!(!app.data_dir.path().join("jobs").join(&id).exists(), "job scratch left behind");

    let body = json!({
        "model": "tiny-lora-merged",
        "messages": [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": "What colour is the flag of Zorblat?"},
        ],
        "max_tokens": 16,
    });
    let response = app.post_json("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap());
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["model"], "tiny-lora-merged");
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    eprintln!("the merged model says: {text:?}");
    assert!(!text.trim().is_empty(), "{answer}");
    let models: Value = app.get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"tiny-lora-merged") && !ids.contains(&"tiny-lora"), "{ids:?}");

    // A second adapter of the same name is refused when the job runs.
    let again = submit(&app, json!({"name": "tiny-lora", "examples": examples(2)})).await;
    let again = wait_job(&app, &again, Duration::from_secs(120), finished).await;
    assert_eq!(again["status"], "failed");
    assert!(again["error"].as_str().unwrap().contains("already exists"), "{again}");
}

#[tokio::test]
async fn finetune_generator_reads_jsonl_and_builds_questions_from_a_collection() {
    let datasets = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..5).map(|i| conversation(i).to_string()).collect();
    std::fs::write(datasets.path().join("flags.jsonl"), lines.join("\n") + "\n").unwrap();
    let app = spawn_app_with(&[("RAGD_JOBS__DATASETS_DIR", datasets.path().to_str().unwrap())]).await;

    let quick = json!({"rank": 2, "batch_size": 4, "max_seq_len": 48, "validation_fraction": 0.0});
    let mut params = quick.clone();
    params["dataset"] = json!({"jsonl": "flags.jsonl", "limit": 4});
    let id = submit(&app, params).await;
    let done = wait_job(&app, &id, Duration::from_secs(600), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(values(&done, "loss").len(), 1, "4 conversations in one batch: {done}");
    assert!(logs(&done).iter().any(|l| l.starts_with("4 training conversations, 0 held out")), "{done}");
    assert!(
        done["artifacts"][0]["name"].as_str().unwrap().starts_with("smollm2-135m-instruct-lora-"),
        "{done}"
    );

    let collection = app.create_collection("handbook").await;
    let notes = [
        ("Leases", "A worker holds each job under a lease and renews it with a heartbeat every few seconds."),
        ("Blobs", "Uploaded files are stored once by content hash, so identical uploads share one blob."),
        ("Chunks", "Documents are split into chunks sized by the embedder's tokenizer, with some overlap."),
    ];
    for (title, text) in notes {
        let document = app.add_text(&collection, title, text, json!({})).await;
        app.wait_ready(&collection, &document).await;
    }
    let mut params = quick;
    params["dataset"] = json!({"collection": "handbook"});
    let id = submit(&app, params).await;
    let done = wait_job(&app, &id, Duration::from_secs(600), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["params"]["dataset"]["collection"], collection, "stored by id");
    let logs = logs(&done);
    assert!(
        logs.iter().any(|l| l == "built 3 questions and answers from the collection's chunks"),
        "{logs:?}"
    );

    let response = app
        .post_json("/v1/jobs", &json!({"kind": KIND, "params": {"dataset": {"jsonl": "missing.jsonl"}}}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let missing: Value = response.json().await.unwrap();
    let failed = wait_job(&app, missing["id"].as_str().unwrap(), Duration::from_secs(120), finished).await;
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{failed}"
    );
    assert!(failed["error"].as_str().unwrap().contains("cannot read dataset"), "{failed}");
}

#[tokio::test]
async fn a_cancelled_lora_run_stops_promptly_and_frees_the_worker() {
    let app = spawn_app().await;
    let long = json!({"examples": examples(20), "epochs": 50, "batch_size": 2, "max_seq_len": 48, "rank": 2});
    let id = submit(&app, long).await;
    wait_job(&app, &id, Duration::from_secs(300), |job| job["progress"].as_f64().unwrap() > 0.0).await;
    let response = app.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let asked = Instant::now();
    let stopped = wait_job(&app, &id, Duration::from_secs(120), finished).await;
    let waited = asked.elapsed();
    eprintln!("cancelled {} ms after the request, at {}", waited.as_millis(), stopped["step"]);
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    assert!(waited < Duration::from_secs(30), "took {waited:?}");
    assert!(stopped["progress"].as_f64().unwrap() < 0.5, "{stopped}");
    assert!(stopped["artifacts"].as_array().unwrap().is_empty());
    assert!(!app.data_dir.path().join("jobs").join(&id).exists(), "job scratch left behind");

    // The worker takes the next job.
    let collection = app.create_collection("after-cancel").await;
    let document = app.add_text(&collection, "note", "The worker is free again.", json!({})).await;
    app.wait_ready(&collection, &document).await;
    assert_eq!(job(&app, &id).await["status"], "cancelled");
}

#[tokio::test]
async fn finetune_generator_requests_are_validated() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"examples": examples(2), "base_model": "no-such-model"}),
            StatusCode::NOT_FOUND,
            "no-such-model",
        ),
        (
            json!({"examples": examples(2), "base_model": "all-minilm-l6-v2"}),
            StatusCode::NOT_FOUND,
            "not a GGUF generator",
        ),
        (json!({"dataset": {"collection": "nowhere"}}), StatusCode::NOT_FOUND, "nowhere"),
        (json!({"examples": examples(1)}), StatusCode::UNPROCESSABLE_ENTITY, "at least 2"),
        (
            json!({"examples": examples(2), "targets": ["lm_head"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "lm_head",
        ),
        (json!({"examples": examples(2), "rank": 0}), StatusCode::UNPROCESSABLE_ENTITY, "rank"),
        (json!({"examples": examples(2), "dropout": 0.1}), StatusCode::UNPROCESSABLE_ENTITY, "unknown field"),
        (json!({"dataset": {"jsonl": "../etc/passwd"}}), StatusCode::UNPROCESSABLE_ENTITY, "dataset.jsonl"),
        (
            json!({"examples": [{"messages": [{"role": "user", "content": "hi"}]}, conversation(0)]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "assistant",
        ),
    ];
    for (params, status, expected) in cases {
        let response = app.post_json("/v1/jobs", &json!({"kind": KIND, "params": params})).await;
        let problem = assert_problem(response, status).await;
        assert!(problem["detail"].as_str().unwrap().contains(expected), "{params}: {problem}");
    }
}
