use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, seed_corpus, spawn_app};

async fn patch(app: &crate::helpers::TestApp, collection: &str, body: Value) -> reqwest::Response {
    app.client.patch(app.url(&format!("/v1/collections/{collection}"))).json(&body).send().await.unwrap()
}

/// A collection's settings are defaults its requests use unless they say
/// otherwise: top_k for search, the prompt's parts for answers.
#[tokio::test]
async fn collection_settings_are_defaults_requests_can_override() {
    let app = spawn_app().await;
    let settings = json!({
        "retrieval": {"top_k": 2, "rrf_k": 10},
        "prompt": {"no_context_answer": "The handbook says nothing about that."},
    });
    let created: Value = app
        .post_json("/v1/collections", &json!({"name": "tuned", "settings": settings}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["settings"]["retrieval"]["top_k"], 2, "{created}");
    assert_eq!(created["settings"]["index"]["quantization"], "none", "defaults are shown: {created}");
    seed_corpus(&app, "tuned").await;

    let hits = app.search("tuned", json!({"query": "how do plants make sugar"})).await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 2, "{hits}");
    let hits = app.search("tuned", json!({"query": "how do plants make sugar", "top_k": 3})).await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 3, "the request wins");

    let nothing = json!({"query": "volcanoes", "filter": {"lang": "fr"}, "max_tokens": 8});
    let answer: Value = app.post_json("/v1/collections/tuned/query", &nothing).await.json().await.unwrap();
    assert_eq!(answer["answer"], "The handbook says nothing about that.", "{answer}");

    let retuned = json!({"retrieval": {"top_k": 1}, "prompt": {}});
    let updated: Value =
        patch(&app, "tuned", json!({"settings": retuned, "description": "v2"})).await.json().await.unwrap();
    assert_eq!(
        (updated["description"].as_str(), updated["settings"]["retrieval"]["top_k"].as_u64()),
        (Some("v2"), Some(1))
    );
    let hits = app.search("tuned", json!({"query": "how do plants make sugar"})).await;
    assert_eq!(hits["hits"].as_array().unwrap().len(), 1, "{hits}");
    let answer: Value = app.post_json("/v1/collections/tuned/query", &nothing).await.json().await.unwrap();
    assert_ne!(answer["answer"], "The handbook says nothing about that.", "the override is gone: {answer}");

    let cases = [
        (json!({"settings": {"prompt": {"user": "no placeholders"}}}), "{sources} and {question}"),
        (json!({"settings": {"index": {"quantization": "int8"}}}), "fixed when a collection is created"),
        (json!({"settings": {"retrieval": {"rrf_k": 0}}}), "at least 1"),
        (json!({"settings": {"retrieval": {"colour": 1}}}), "unknown field"),
        (json!({"settings": {"generation": {"model": "gpt-nowhere"}}}), "no generator is called \"gpt-nowhere\""),
    ];
    for (body, needle) in cases {
        let problem = assert_problem(patch(&app, "tuned", body.clone()).await, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains(needle), "{body}: {problem}");
    }
    let problem = assert_problem(
        app.post_json(
            "/v1/collections",
            &json!({"name": "sharded", "settings": {"index": {"shard_number": 4}}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("Qdrant server"), "{problem}");
}

/// A follow-up question is searched together with the question before it,
/// so "it" finds what the conversation is about.
#[tokio::test]
async fn a_follow_up_is_searched_with_the_earlier_question() {
    let app = spawn_app().await;
    app.create_collection("kitchen").await;
    let ids = seed_corpus(&app, "kitchen").await;
    let sourdough = ids[3].as_str();
    let follow_up = "What gas does it produce?";
    let alone = app.search("kitchen", json!({"query": follow_up, "top_k": 1})).await;
    assert_ne!(
        alone["hits"][0]["document_id"], sourdough,
        "alone the follow-up finds something else: {alone}"
    );

    let chat = json!({
        "model": "rag:kitchen",
        "max_tokens": 4,
        "messages": [
            {"role": "user", "content": "Tell me about sourdough bread."},
            {"role": "assistant", "content": "It is leavened by a starter culture [1]."},
            {"role": "user", "content": follow_up},
        ],
    });
    let answer: Value = app.post_json("/v1/chat/completions", &chat).await.json().await.unwrap();
    assert_eq!(answer["sources"][0]["document_id"], sourdough, "{answer}");
}
