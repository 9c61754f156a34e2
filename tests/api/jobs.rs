//! The job API with the `finetune-embedder` kind: a tiny fine-tuning run
//! through HTTP, its reports and its registered model; cancellation.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, TestApp};

const CODE_WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
    "lima", "mike", "november", "oscar", "papa",
];
const TOPICS: [&str; 16] = [
    "cats",
    "compilers",
    "paris",
    "coffee",
    "tides",
    "volcanoes",
    "chess",
    "bees",
    "jazz",
    "glaciers",
    "vaccines",
    "ledgers",
    "tea",
    "saturn",
    "wolves",
    "origami",
];

/// Queries that share no words with their passages, so the base model
/// cannot already rank them and the loss has room to fall.
fn pairs(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let (word, topic) = (CODE_WORDS[i % 16], TOPICS[(i * 7) % 16]);
            json!({
                "query": format!("code word {word} {}", i / 16),
                "positive": format!("A short passage about {topic}, with facts on {topic} (number {i})."),
            })
        })
        .collect()
}

async fn submit(app: &TestApp, params: Value) -> Value {
    let response = app.post_json("/v1/jobs", &json!({"kind": "finetune-embedder", "params": params})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/v1/jobs/{}", job["id"].as_str().unwrap()));
    // The answer is read back after the commit, so an idle worker may
    // already have claimed the job.
    assert!(matches!(job["status"].as_str(), Some("queued" | "running")), "{job}");
    job
}

pub(crate) async fn job(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Polls until `done` holds for the job; returns it.
pub(crate) async fn wait_job(
    app: &TestApp,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let body = job(app, id).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "job {id} not there after {limit:?}: {body}\n{}", app.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn finished(job: &Value) -> bool {
    matches!(job["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

fn values(job: &Value, metric: &str) -> Vec<f64> {
    job["metrics"][metric]
        .as_array()
        .map(|points| points.iter().map(|p| p["value"].as_f64().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn finetune_embedder_trains_reports_and_registers_a_model() {
    let app = spawn_app().await;
    let params = json!({
        "name": "tiny-ft",
        "pairs": pairs(16),
        "epochs": 3,
        "batch_size": 4,
        "learning_rate": 1e-4,
        "max_seq_len": 32,
        "validation_fraction": 0.25,
        "seed": 7,
    });
    let submitted = submit(&app, params).await;
    let id = submitted["id"].as_str().unwrap();
    let done = wait_job(&app, id, Duration::from_secs(900), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["params"]["pairs"], 16, "inline pairs are counted, not echoed");

    // 12 training pairs in batches of 4: 3 steps per epoch.
    let loss = values(&done, "loss");
    assert_eq!(loss.len(), 9, "{done}");
    let (first, last) = (loss[..3].iter().sum::<f64>() / 3.0, loss[6..].iter().sum::<f64>() / 3.0);
    eprintln!("loss per step: {loss:?}; step ms: {:?}", values(&done, "step_ms"));
    assert!(last < first * 0.8, "loss did not go down: {loss:?}");
    assert_eq!(values(&done, "val_mrr").len(), 4, "base model, then every epoch");
    let logs = done["logs"].as_array().unwrap();
    assert!(logs.iter().any(|l| l["message"].as_str().unwrap().contains("registered")), "{logs:?}");

    let artifacts = done["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{done}");
    assert_eq!(
        (artifacts[0]["name"].as_str(), artifacts[0]["kind"].as_str()),
        (Some("tiny-ft"), Some("embedder-safetensors"))
    );
    let dir = std::path::PathBuf::from(artifacts[0]["path"].as_str().unwrap());
    assert!(dir.starts_with(app.data_dir.path()), "{}", dir.display());
    for file in artifacts[0]["files"].as_array().unwrap() {
        assert!(dir.join(file.as_str().unwrap()).is_file(), "{file} missing in {}", dir.display());
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        (manifest["dimensions"].as_u64(), manifest["base_model"].as_str()),
        (Some(384), Some("all-minilm-l6-v2"))
    );
    assert!(!app.data_dir.path().join("jobs").join(id).exists(), "job scratch left behind");

    let encoder = ragd_embed::SentenceEncoder::load("test", &dir, 32).expect("trained model loads");
    let vectors = encoder.embed(&["code word alpha 0", "a passage about tea"]).expect("embed");
    for vector in &vectors {
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert_eq!(vector.len(), 384);
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }

    let listed: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(listed["jobs"][0]["id"], id);
    assert!(listed["jobs"][0].get("metrics").is_none(), "the list carries summaries");
    assert_problem(app.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).await, StatusCode::CONFLICT)
        .await;

    // A second model of the same name is refused when the job runs.
    let again = submit(&app, json!({"name": "tiny-ft", "pairs": pairs(4), "max_seq_len": 16})).await;
    let again = wait_job(&app, again["id"].as_str().unwrap(), Duration::from_secs(120), finished).await;
    assert_eq!(again["status"], "failed");
    assert!(again["error"].as_str().unwrap().contains("already exists"), "{again}");
}

#[tokio::test]
async fn cancel_stops_a_running_job_promptly_and_frees_the_worker() {
    let app = spawn_app().await;
    let long = json!({"pairs": pairs(64), "epochs": 50, "batch_size": 4, "max_seq_len": 32, "validation_fraction": 0.0});
    let running = submit(&app, long.clone()).await;
    let running = running["id"].as_str().unwrap().to_owned();
    let queued = submit(&app, long).await;
    let queued = queued["id"].as_str().unwrap().to_owned();

    // The only worker is busy: the second job waits, and cancelling it ends it at once.
    let response = app.post_json(&format!("/v1/jobs/{queued}/cancel"), &json!({})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");

    wait_job(&app, &running, Duration::from_secs(300), |job| job["progress"].as_f64().unwrap() > 0.0).await;
    let response = app.post_json(&format!("/v1/jobs/{running}/cancel"), &json!({})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["status"].as_str(), body["cancel_requested"].as_bool()), (Some("running"), Some(true)));
    let asked = Instant::now();
    let stopped = wait_job(&app, &running, Duration::from_secs(120), finished).await;
    eprintln!("cancelled {} ms after the request, at {}", asked.elapsed().as_millis(), stopped["step"]);
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    assert!(stopped["progress"].as_f64().unwrap() < 0.5, "{stopped}");
    assert!(stopped["artifacts"].as_array().unwrap().is_empty());
    assert!(!app.data_dir.path().join("jobs").join(&running).exists(), "job scratch left behind");

    // The worker takes the next job.
    let collection = app.create_collection("after-cancel").await;
    let document = app.add_text(&collection, "note", "The worker is free again.", json!({})).await;
    app.wait_ready(&collection, &document).await;
}

#[tokio::test]
async fn job_requests_are_validated() {
    let app = spawn_app().await;
    let unknown = app.post_json("/v1/jobs", &json!({"kind": "reindex-everything", "params": {}})).await;
    let problem = assert_problem(unknown, StatusCode::BAD_REQUEST).await;
    assert!(problem["detail"].as_str().unwrap().contains("finetune-embedder"), "{problem}");
    let internal = app.post_json("/v1/jobs", &json!({"kind": "ingest", "params": {}})).await;
    assert_problem(internal, StatusCode::BAD_REQUEST).await;

    let cases = [
        json!({"pairs": pairs(1)}),
        json!({"pairs": pairs(4), "epochs": 0}),
        json!({"pairs": pairs(4), "learning_rate": -1}),
        json!({"pairs": pairs(4), "name": "../../etc"}),
        json!({"pairs": [{"query": "q"}]}),
        json!("not an object"),
    ];
    for params in cases {
        let response =
            app.post_json("/v1/jobs", &json!({"kind": "finetune-embedder", "params": params})).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let no_kind = app.post_json("/v1/jobs", &json!({"params": {}})).await;
    assert_problem(no_kind, StatusCode::UNPROCESSABLE_ENTITY).await;

    assert_problem(app.get("/v1/jobs/not-a-uuid").await, StatusCode::BAD_REQUEST).await;
    let missing = "0190f000-0000-7000-8000-000000000000";
    assert_problem(app.get(&format!("/v1/jobs/{missing}")).await, StatusCode::NOT_FOUND).await;
    assert_problem(
        app.post_json(&format!("/v1/jobs/{missing}/cancel"), &json!({})).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(app.get("/v1/jobs?limit=0").await, StatusCode::BAD_REQUEST).await;
    let listed: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(listed, json!({"jobs": [], "next_after": null}));
}

#[tokio::test]
async fn finetune_embedder_reads_a_beir_dataset_under_the_datasets_dir() {
    let datasets = tempfile::tempdir().unwrap();
    let beir = datasets.path().join("tiny");
    std::fs::create_dir_all(beir.join("qrels")).unwrap();
    let mut corpus = String::new();
    let mut queries = String::new();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (i, topic) in TOPICS.iter().take(7).enumerate() {
        corpus.push_str(&format!(
            "{}\n",
            json!({"_id": format!("d{i}"), "title": topic, "text": format!("All about {topic}.")})
        ));
        queries.push_str(&format!(
            "{}\n",
            json!({"_id": format!("q{i}"), "text": format!("code word {}", CODE_WORDS[i])})
        ));
        // The last judgement says "not relevant": it makes no pair.
        qrels.push_str(&format!("q{i}\td{i}\t{}\n", u8::from(i < 6)));
    }
    std::fs::write(beir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(beir.join("queries.jsonl"), queries).unwrap();
    std::fs::write(beir.join("qrels/train.tsv"), qrels).unwrap();
    let app = spawn_app_with(&[("RAGD_JOBS__DATASETS_DIR", datasets.path().to_str().unwrap())]).await;

    let params = json!({"dataset": {"beir_dir": "tiny"}, "batch_size": 4, "max_seq_len": 16, "validation_fraction": 0.0});
    let submitted = submit(&app, params).await;
    let done = wait_job(&app, submitted["id"].as_str().unwrap(), Duration::from_secs(600), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(values(&done, "loss").len(), 2, "6 pairs in batches of 4 and 2: {done}");
    let logs: Vec<&str> =
        done["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert!(logs.iter().any(|l| l.starts_with("6 training pairs, 0 held out")), "{logs:?}");
    assert!(done["artifacts"][0]["name"].as_str().unwrap().starts_with("all-minilm-l6-v2-ft-"), "{done}");

    // Hard negatives mined from a collection holding the same corpus.
    let collection = app.create_collection("tiny-corpus").await;
    let mut documents = Vec::new();
    for (i, topic) in TOPICS.iter().take(7).enumerate() {
        let metadata = json!({"beir_id": format!("d{i}")});
        documents.push(app.add_text(&collection, topic, &format!("All about {topic}."), metadata).await);
    }
    for document in &documents {
        app.wait_ready(&collection, document).await;
    }
    let params = json!({"dataset": {"beir_dir": "tiny"}, "collection": "tiny-corpus", "skip_hits": 1,
        "name": "tiny-hn", "batch_size": 4, "max_seq_len": 16, "validation_fraction": 0.0});
    let mined = submit(&app, params).await;
    let mined = wait_job(&app, mined["id"].as_str().unwrap(), Duration::from_secs(600), finished).await;
    assert_eq!(mined["status"], "succeeded", "{mined}");
    assert_eq!(mined["params"]["collection"], collection, "the name is stored as the id");
    let logs: Vec<&str> =
        mined["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert!(logs.contains(&"6 of 6 pairs have a mined negative"), "{logs:?}");
    let dir = std::path::PathBuf::from(mined["artifacts"][0]["path"].as_str().unwrap());
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["training"]["mined_negatives"], 6, "{manifest}");
    assert_eq!(manifest["training"]["skip_hits"], 1, "{manifest}");
    let nowhere = json!({"kind": "finetune-embedder", "params": {"dataset": {"beir_dir": "tiny"}, "collection": "nope"}});
    assert_problem(app.post_json("/v1/jobs", &nowhere).await, StatusCode::NOT_FOUND).await;

    let missing = submit(&app, json!({"dataset": {"beir_dir": "tiny", "split": "test"}})).await;
    let failed = wait_job(&app, missing["id"].as_str().unwrap(), Duration::from_secs(120), finished).await;
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{failed}"
    );
    assert!(failed["error"].as_str().unwrap().contains("cannot read"), "{failed}");

    let outside = app
        .post_json(
            "/v1/jobs",
            &json!({"kind": "finetune-embedder", "params": {"dataset": {"beir_dir": "../tiny"}}}),
        )
        .await;
    assert_problem(outside, StatusCode::UNPROCESSABLE_ENTITY).await;
}
