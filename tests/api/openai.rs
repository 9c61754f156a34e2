use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{ADMIN_KEY, assert_problem, python_venv, repo_root, seed_corpus, spawn_app, spawn_app_with};

const GENERATOR: &str = "smollm2-135m-instruct";
const EMBEDDER: &str = "minilm-l6-onnx";
const OPENAI_CLIENT: &str = "openai==1.109.1";

fn chunk_ids(list: &Value) -> HashSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["chunk_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn the_official_openai_client_works_against_ragd() {
    let python = python_venv(OPENAI_CLIENT, "openai").await.join("bin/python");
    let app = spawn_app().await;
    let c = app.create_collection("handbook").await;
    let ids = seed_corpus(&app, &c).await;

    let script = repo_root().join("tests/api/openai_client.py");
    let run = Command::new(&python)
        .arg(&script)
        .args([&app.url("/v1"), "rag:handbook", GENERATOR, EMBEDDER])
        .env("RAGD_API_KEY", ADMIN_KEY)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run).await.expect("client finished in time").expect("run client");
    assert!(
        output.status.success(),
        "the OpenAI client failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        app.log()
    );
    let out: Value = serde_json::from_slice(&output.stdout).expect("client prints JSON");

    // A grounded answer, with citations among the sources it was given.
    let chat = &out["chat"];
    assert_eq!(chat["object"], "chat.completion");
    assert!(chat["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(chat["model"], "rag:handbook");
    let choice = &chat["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(!choice["message"]["content"].as_str().unwrap().trim().is_empty(), "{chat}");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &chat["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0 && usage["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap());
    let sources = chat["sources"].as_array().unwrap();
    assert_eq!(sources[0]["document_id"], ids[0].as_str(), "best source is the photosynthesis text");
    let offered = chunk_ids(&chat["sources"]);
    for citation in chat["citations"].as_array().unwrap() {
        let n = citation["source"].as_u64().unwrap() as usize;
        assert!((1..=sources.len()).contains(&n));
        assert_eq!(citation["text"], sources[n - 1]["text"]);
        assert!(chunk_ids(&json!([citation])).is_subset(&offered), "citation {citation} points outside the sources");
    }

    // Streamed: the role first, the text in pieces, a finish reason and the
    // citations, then usage.
    let chunks = out["stream"].as_array().unwrap();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(!chunks[0]["sources"].as_array().unwrap().is_empty());
    let with_choices: Vec<&Value> = chunks.iter().filter(|c| !c["choices"].as_array().unwrap().is_empty()).collect();
    let text: String = with_choices.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.trim().is_empty(), "{chunks:?}");
    assert!(with_choices.len() >= 4, "the answer arrives in pieces: {chunks:?}");
    let last = with_choices.last().unwrap();
    assert!(["stop", "length"].contains(&last["choices"][0]["finish_reason"].as_str().unwrap()));
    assert!(last["citations"].is_array());
    let totals = chunks.last().unwrap();
    assert_eq!(totals["choices"], json!([]));
    assert!(totals["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Plain chat with the generator, no retrieval.
    let plain = &out["plain"];
    assert_eq!(plain["model"], GENERATOR);
    assert!(!plain["choices"][0]["message"]["content"].as_str().unwrap().trim().is_empty(), "{plain}");
    assert!(plain.get("citations").is_none_or(Value::is_null));

    let embeddings = &out["embeddings"];
    assert_eq!(embeddings["count"], 2);
    assert_eq!(embeddings["indices"], json!([0, 1]));
    assert_eq!(embeddings["dimensions"], json!([384, 384]));
    assert_eq!(embeddings["model"], EMBEDDER);
    assert!(embeddings["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(embeddings["max_difference"].as_f64().unwrap() < 1e-6, "base64 and float encode the same vector");

    let models: Vec<&str> = out["models"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(models.contains(&GENERATOR) && models.contains(&"rag:handbook"), "{models:?}");
    assert_eq!(out["retrieved_model"], "rag:handbook");
    assert_eq!(out["unknown_model"], 404);
}

#[tokio::test]
async fn openai_routes_reject_bad_requests_with_problem_details() {
    let app = spawn_app().await;
    app.create_collection("things").await;
    let chat = "/v1/chat/completions";
    let ask = json!([{"role": "user", "content": "hi"}]);

    let cases = [
        (json!({"model": "rag:things", "messages": ask, "n": 2}), StatusCode::BAD_REQUEST, "n must be 1"),
        (json!({"model": "rag:things", "messages": []}), StatusCode::BAD_REQUEST, "must not be empty"),
        (json!({"model": GENERATOR, "messages": [{"role": "tool", "content": "x"}]}), StatusCode::BAD_REQUEST, "\"tool\""),
        (json!({"model": "rag:things", "messages": [{"role": "assistant", "content": "x"}]}), StatusCode::BAD_REQUEST, "last message"),
        (json!({"model": GENERATOR, "messages": ask, "max_tokens": 0}), StatusCode::BAD_REQUEST, "max_tokens"),
        (json!({"model": GENERATOR, "messages": ask, "tools": []}), StatusCode::UNPROCESSABLE_ENTITY, "tools"),
        (json!({"model": "gpt-nope", "messages": ask}), StatusCode::NOT_FOUND, "rag:things"),
        (json!({"model": "rag:missing", "messages": ask}), StatusCode::NOT_FOUND, GENERATOR),
    ];
    for (body, status, detail) in cases {
        let problem = assert_problem(app.post_json(chat, &body).await, status).await;
        assert!(problem["detail"].as_str().unwrap().contains(detail), "{body} -> {problem}");
    }

    let embeddings = "/v1/embeddings";
    let cases = [
        (json!({"input": []}), StatusCode::BAD_REQUEST),
        (json!({"input": ""}), StatusCode::BAD_REQUEST),
        (json!({"input": [[1, 2, 3]]}), StatusCode::BAD_REQUEST),
        (json!({"input": vec!["x"; 257]}), StatusCode::BAD_REQUEST),
        (json!({"input": "x", "dimensions": 64}), StatusCode::BAD_REQUEST),
        (json!({"input": "x", "model": "text-embedding-3-small"}), StatusCode::NOT_FOUND),
    ];
    for (body, status) in cases {
        assert_problem(app.post_json(embeddings, &body).await, status).await;
    }
    assert_problem(app.get("/v1/models/gpt-nope").await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn openai_stream_without_sources_says_so_and_ends_with_done() {
    let app = spawn_app().await;
    app.create_collection("empty").await;
    let body = json!({"model": "rag:empty", "messages": [{"role": "user", "content": "Who won?"}], "stream": true});
    let response = app.post_json("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut raw = String::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        raw.push_str(&String::from_utf8_lossy(&piece.unwrap()));
    }
    let data: Vec<&str> = raw.split("\n\n").filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: "))).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{raw}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks.len(), 3, "role, the fixed answer, the finish: {raw}");
    assert!(chunks[1]["choices"][0]["delta"]["content"].as_str().unwrap().contains("could not find"), "{raw}");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[2]["citations"], json!([]));
}

/// ragd's OpenAI-compatible generator, pointed at another ragd.
#[tokio::test]
async fn ragd_generates_through_another_ragd() {
    let upstream = spawn_app().await;
    let base_url = upstream.url("/v1");
    let app = spawn_app_with(&[
        ("RAGD_GENERATION__BACKEND", "openai"),
        ("RAGD_GENERATION__OPENAI__BASE_URL", &base_url),
        ("RAGD_GENERATION__OPENAI__MODEL", GENERATOR),
        ("RAGD_GENERATION__OPENAI__API_KEY", ADMIN_KEY),
    ])
    .await;
    let c = app.create_collection("relayed").await;
    seed_corpus(&app, &c).await;

    let body = json!({"query": "What is a volcano?", "top_k": 1, "max_tokens": 16});
    let response = app.post_json(&format!("/v1/collections/{c}/query"), &body).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", app.log());
    let body: Value = response.json().await.unwrap();
    assert!(!body["answer"].as_str().unwrap().trim().is_empty(), "{body}");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let upstream_log = upstream.log();
    assert!(upstream_log.contains("/v1/chat/completions") && upstream_log.contains("generation finished"), "{upstream_log}");
}
