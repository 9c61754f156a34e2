use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::json;

use crate::helpers::{assert_problem, spawn_app};

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
