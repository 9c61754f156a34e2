use serde_json::json;

use crate::helpers::{CORPUS, seed_corpus, spawn_app};

#[tokio::test]
async fn search_finds_the_right_document_in_every_mode() {
    let app = spawn_app().await;
    let c = app.create_collection("science").await;
    let ids = seed_corpus(&app, &c).await;

    let questions = [
        ("how do plants make sugar from light", 0),
        ("what prevents data races in rust", 1),
        ("why was my flight cancelled after an eruption", 2),
        ("what makes bread taste sour", 3),
    ];
    for mode in ["hybrid", "dense", "sparse"] {
        for (question, expected) in questions {
            if mode == "sparse" && expected == 2 {
                continue; // shares no words with its document: dense-only territory
            }
            let body = app.search(&c, json!({"query": question, "top_k": 2, "mode": mode})).await;
            let top = &body["hits"][0];
            assert_eq!(top["document_id"], ids[expected].as_str(), "{mode}: {question:?} -> {body}");
            assert_eq!(top["title"], CORPUS[expected].0);
            assert_eq!(top["rank"], 1);
        }
    }

    let body = app.search(&c, json!({"query": "how do plants make sugar from light", "top_k": 3})).await;
    let scores = &body["hits"][0]["scores"];
    assert!(scores["fused"].as_f64().unwrap() > 0.0);
    assert!(scores["dense"].as_f64().unwrap() > 0.3, "{scores}");
    assert!(scores["sparse"].as_f64().unwrap() > 0.0, "{scores}");
    assert!(body["timings"]["encode_ms"].as_f64().is_some());
}

#[tokio::test]
async fn metadata_filters_apply_inside_the_search() {
    let app = spawn_app().await;
    let c = app.create_collection("filtered").await;
    let ids = seed_corpus(&app, &c).await;

    let body = app.search(&c, json!({"query": "how do plants make sugar from light", "top_k": 10, "filter": {"topic": 3}})).await;
    let hits = body["hits"].as_array().unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h["document_id"] == ids[3].as_str()), "{body}");

    let body = app.search(&c, json!({"query": "anything", "top_k": 10, "filter": {"topic": [1, 2]}})).await;
    let found: Vec<&str> = body["hits"].as_array().unwrap().iter().map(|h| h["document_id"].as_str().unwrap()).collect();
    assert!(found.iter().all(|d| *d == ids[1] || *d == ids[2]), "{body}");

    let body = app.search(&c, json!({"query": "anything", "top_k": 10, "filter": {"lang": "fr"}})).await;
    assert_eq!(body["hits"].as_array().unwrap().len(), 0);
}
