//! The `quantize` job: SmolLM2 re-quantized to Q8_0 and Q4_K through the
//! job API, the files checked with llama.cpp's own `gguf` reader, and the
//! registered models chatting through `/v1/chat/completions`; MiniLM with
//! Q8_0 Linear weights embedding like the f32 model; cancellation between
//! tensors; bad parameters.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::Command;

use crate::helpers::{assert_problem, python_venv, repo_root, spawn_app, TestApp};
use crate::jobs::{finished, job, wait_job};

const SOURCE: &str = "smollm2-135m-instruct";
const GGUF_READER: &str = "gguf==0.19.0";

async fn submit(app: &TestApp, params: Value) -> String {
    let response = app.post_json("/v1/jobs", &json!({"kind": "quantize", "params": params})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

/// Runs the `gguf` package's checks of `written` against the source file.
async fn check_with_gguf_reader(python: &PathBuf, written: &PathBuf, dtype: &str) -> Value {
    let source = repo_root().join("models").join(SOURCE).join("model.gguf");
    let output = Command::new(python)
        .arg(repo_root().join("tests/api/gguf_check.py"))
        .args([&source, written])
        .arg(dtype)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run gguf_check.py");
    assert!(output.status.success(), "gguf_check.py {dtype}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("gguf_check.py prints JSON")
}

async fn chat(app: &TestApp, model: &str) -> Value {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 12,
    });
    let response = app.post_json("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

#[tokio::test]
async fn quantize_writes_q8_0_and_q4_k_ggufs_that_load_and_chat() {
    let python = python_venv(GGUF_READER, "gguf").await.join("bin/python");
    let app = spawn_app().await;
    let q8 = submit(&app, json!({"model": SOURCE, "type": "q8_0"})).await;
    let q4 = submit(&app, json!({"model": SOURCE, "type": "q4_k", "name": "smollm2-small"})).await;

    for (id, name, dtype) in [(&q8, "smollm2-135m-instruct-q8_0", "q8_0"), (&q4, "smollm2-small", "q4_k")] {
        let done = wait_job(&app, id, Duration::from_secs(600), finished).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["progress"], 1.0);
        assert_eq!(done["params"]["name"], name);
        let artifacts = done["artifacts"].as_array().unwrap();
        assert_eq!(
            (artifacts.len(), artifacts[0]["name"].as_str(), artifacts[0]["kind"].as_str()),
            (1, Some(name), Some("generator-gguf")),
            "{done}"
        );
        let dir = PathBuf::from(artifacts[0]["path"].as_str().unwrap());
        assert_eq!(dir, app.data_dir.path().join("models").join(name));
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(
            (manifest["kind"].as_str(), manifest["quantization"]["type"].as_str()),
            (Some("generator-gguf"), Some(dtype))
        );
        assert!(!app.data_dir.path().join("jobs").join(id).exists(), "job scratch left behind");

        let checked = check_with_gguf_reader(&python, &dir.join("model.gguf"), dtype).await;
        eprintln!("{name}: {checked}");
        assert_eq!(checked["tensors"], 272, "{checked}");

        let answer = chat(&app, name).await;
        assert_eq!(answer["model"], name);
        let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
        eprintln!("{name} says: {text:?}");
        assert!(!text.trim().is_empty(), "{answer}");
    }
    let models: Value = app.get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"smollm2-small") && ids.contains(&"smollm2-135m-instruct-q8_0"), "{ids:?}");

    // A collection can answer with a registered generator of its own.
    let settings = json!({"generation": {"model": "smollm2-small"}});
    let created = app.post_json("/v1/collections", &json!({"name": "own-model", "settings": settings})).await;
    assert_eq!(created.status(), StatusCode::CREATED, "{}", created.text().await.unwrap());
    let bridge = app.add_text("own-model", "bridge", "The Zorblax bridge in Tallinn is 412 metres long.", json!({})).await;
    app.wait_ready("own-model", &bridge).await;
    let question = json!({"query": "How long is the Zorblax bridge?", "max_tokens": 12});
    let answer: Value = app.post_json("/v1/collections/own-model/query", &question).await.json().await.unwrap();
    assert_eq!(answer["model"], "smollm2-small", "{answer}");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{answer}");

    // A quantized model can be quantized again; an existing name is refused when the job runs.
    let again = submit(&app, json!({"model": "smollm2-small", "type": "f16", "name": "smollm2-small"})).await;
    let again = wait_job(&app, &again, Duration::from_secs(300), finished).await;
    assert_eq!(again["status"], "failed");
    assert!(again["error"].as_str().unwrap().contains("already exists"), "{again}");
}

#[tokio::test]
async fn quantize_stops_between_tensors_when_cancelled() {
    let app = spawn_app().await;
    let id = submit(&app, json!({"model": SOURCE, "type": "f32"})).await;
    // The conversion takes a second or two: cancel as soon as it is under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while job(&app, &id).await["step"].is_null() {
        assert!(Instant::now() < deadline, "the job did not start\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = app.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let stopped = wait_job(&app, &id, Duration::from_secs(120), finished).await;
    eprintln!("stopped at {}", stopped["step"]);
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    assert!(stopped["progress"].as_f64().unwrap() < 1.0, "{stopped}");
    assert!(stopped["artifacts"].as_array().unwrap().is_empty());
    assert!(!app.data_dir.path().join("models").join("smollm2-135m-instruct-f32").exists());
    assert!(!app.data_dir.path().join("jobs").join(&id).exists(), "job scratch left behind");
}

#[tokio::test]
async fn quantize_requests_are_validated() {
    let app = spawn_app().await;
    let cases = [
        (json!({"model": "no-such-model", "type": "q8_0"}), StatusCode::NOT_FOUND, "no-such-model"),
        (
            json!({"model": "minilm-l6-onnx", "type": "q8_0"}),
            StatusCode::NOT_FOUND,
            "neither a GGUF generator",
        ),
        (
            json!({"model": "all-minilm-l6-v2", "type": "q4_k"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "only be q8_0",
        ),
        (json!({"model": SOURCE, "type": "q3_k"}), StatusCode::UNPROCESSABLE_ENTITY, "q8_0, q4_k, f16, f32"),
        (json!({"model": SOURCE}), StatusCode::UNPROCESSABLE_ENTITY, "type"),
        (
            json!({"model": SOURCE, "type": "f16", "name": "../x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "model name",
        ),
    ];
    for (params, status, expected) in cases {
        let response = app.post_json("/v1/jobs", &json!({"kind": "quantize", "params": params})).await;
        let problem = assert_problem(response, status).await;
        assert!(problem["detail"].as_str().unwrap().contains(expected), "{params}: {problem}");
    }
}

#[tokio::test]
async fn quantize_stores_an_embedders_linear_weights_as_q8_0() {
    let app = spawn_app().await;
    let id = submit(&app, json!({"model": "all-minilm-l6-v2", "type": "q8_0"})).await;
    let done = wait_job(&app, &id, Duration::from_secs(300), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let artifact = &done["artifacts"][0];
    assert_eq!(
        (artifact["name"].as_str(), artifact["kind"].as_str()),
        (Some("all-minilm-l6-v2-q8_0"), Some("embedder-safetensors"))
    );
    let dir = PathBuf::from(artifact["path"].as_str().unwrap());
    for file in artifact["files"].as_array().unwrap() {
        assert!(dir.join(file.as_str().unwrap()).is_file(), "{file} missing");
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    // 6 layers of 6 Linear layers, and the pooler.
    assert_eq!(manifest["quantization"]["tensors_in_type"], 37, "{manifest}");
    let f32_bytes =
        std::fs::metadata(repo_root().join("models/all-minilm-l6-v2/model.safetensors")).unwrap().len();
    let q8_bytes = std::fs::metadata(dir.join("model.gguf")).unwrap().len();
    eprintln!("f32 {f32_bytes} bytes, q8_0 {q8_bytes} bytes");
    // The word embeddings (half of MiniLM's weights) are looked up, not
    // multiplied, and stay f32.
    assert!(q8_bytes < f32_bytes * 7 / 10, "{q8_bytes} vs {f32_bytes}");

    let texts = ["How do volcanoes erupt?", "Sourdough is leavened by wild yeast and lactic acid bacteria."];
    let full = ragd_embed::SentenceEncoder::load("test", &repo_root().join("models/all-minilm-l6-v2"), 64).unwrap();
    let small = ragd_embed::SentenceEncoder::load("test", &dir, 64).expect("the q8_0 model loads");
    for (a, b) in full.embed(&texts).unwrap().iter().zip(small.embed(&texts).unwrap()) {
        let cosine: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(cosine > 0.99, "cosine {cosine}");
    }
}
