use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, seed_corpus, spawn_app};

#[tokio::test]
async fn collections_are_created_listed_fetched_and_deleted() {
    let app = spawn_app().await;
    let id = app.create_collection("handbook").await;

    let listed: Value = app.get("/v1/collections").await.json().await.unwrap();
    let names: Vec<&str> = listed["collections"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["handbook"]);

    for key in [id.as_str(), "handbook"] {
        let response = app.get(&format!("/v1/collections/{key}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["dimensions"], 384);
        assert_eq!(body["stats"]["documents"]["total"], 0);
    }

    let duplicate = app.post_json("/v1/collections", &json!({"name": "handbook"})).await;
    assert_problem(duplicate, StatusCode::CONFLICT).await;

    assert_eq!(app.delete(&format!("/v1/collections/{id}")).await.status(), StatusCode::NO_CONTENT);
    assert_problem(app.get(&format!("/v1/collections/{id}")).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn collection_counts_agree_with_the_index() {
    let app = spawn_app().await;
    let id = app.create_collection("counted").await;
    seed_corpus(&app, &id).await;

    let body: Value = app.get(&format!("/v1/collections/{id}")).await.json().await.unwrap();
    let stats = &body["stats"];
    assert_eq!(stats["documents"]["ready"], 4, "{body}");
    assert_eq!(stats["documents"]["total"], 4);
    assert!(stats["chunk_count"].as_i64().unwrap() >= 4);
    assert_eq!(stats["chunk_count"].as_i64().unwrap() as u64, stats["point_count"].as_u64().unwrap());
}
