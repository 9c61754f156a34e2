//! Crash safety: the server is killed with SIGKILL during a bulk upload of
//! the SciFact corpus, and again during ingestion, and restarted on the same
//! data directory each time. Every document the API acknowledged must end
//! `ready` or `failed` with a reason, exactly once, and the index must hold
//! exactly the chunks of the ready documents.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{repo_root, spawn_app_with, TestApp};

/// The size of SciFact, which the synthetic stand-in copies.
const CORPUS_DOCUMENTS: usize = 5183;
/// Documents per NDJSON upload.
const BATCH_DOCUMENTS: usize = 500;
/// Uploads acknowledged before the kill that interrupts the next one. The
/// client then sends the interrupted upload again and the rest of the
/// corpus.
const BATCHES_BEFORE_KILL: usize = 3;

/// One NDJSON line per document, keyed by its `external_id`.
struct Line {
    external_id: String,
    json: String,
}

/// SciFact from `../shared/eval/scifact`, or a synthetic corpus of the same
/// size and document length when the dataset is not there.
fn corpus() -> Vec<Line> {
    let path = repo_root().join("../shared/eval/scifact/corpus.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("{} is missing: using a synthetic corpus of {CORPUS_DOCUMENTS} documents", path.display());
        return synthetic_corpus();
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let doc: Value = serde_json::from_str(line).expect("a BEIR corpus line");
            let external_id = format!("scifact-{}", doc["_id"].as_str().expect("_id"));
            let json = json!({
                "title": doc["title"].as_str().unwrap_or(""),
                "text": doc["text"].as_str().expect("text"),
                "metadata": {"beir_id": doc["_id"]},
                "external_id": external_id,
            })
            .to_string();
            Line { external_id, json }
        })
        .collect()
}

/// `n` spelled in letters, e.g. `qxbaf`: one word for the BM25 tokenizer.
fn letters(mut n: usize) -> String {
    let mut word = String::from("qx");
    for _ in 0..3 {
        word.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    word
}

/// Abstract-sized documents (about 1,400 characters) of pseudo-random
/// words, each different.
fn synthetic_corpus() -> Vec<Line> {
    const WORDS: &[&str] = &[
        "cell",
        "protein",
        "binding",
        "receptor",
        "expression",
        "tumour",
        "patients",
        "cohort",
        "trial",
        "dose",
        "mutation",
        "pathway",
        "signalling",
        "mice",
        "neurons",
        "vaccine",
        "antibody",
        "risk",
        "increase",
        "reduced",
        "significant",
        "analysis",
        "genome",
        "infection",
        "therapy",
        "response",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..CORPUS_DOCUMENTS)
        .map(|n| {
            let words: Vec<&str> = (0..200).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect();
            let external_id = format!("synthetic-{n}");
            // A made-up word of its own lets search tell the documents apart.
            let text = format!("Document {}. {}.", letters(n), words.join(" "));
            let json = json!({"title": format!("Synthetic {n}"), "text": text, "metadata": {}, "external_id": external_id})
                .to_string();
            Line { external_id, json }
        })
        .collect()
}

fn ndjson(lines: &[Line]) -> Vec<u8> {
    lines.iter().flat_map(|line| [line.json.as_bytes(), b"\n"].concat()).collect()
}

fn documents_path(collection: &str) -> String {
    format!("/v1/collections/{collection}/documents")
}

/// One bulk upload that must be acknowledged; returns its answer.
async fn upload(app: &TestApp, collection: &str, lines: &[Line]) -> Value {
    let response = app
        .client
        .post(app.url(&documents_path(collection)))
        .header("content-type", "application/x-ndjson")
        .body(ndjson(lines))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["rejected_count"], 0, "{body}");
    body
}

/// Starts an upload whose body trickles in over about ten seconds; the
/// task yields the upload's outcome.
fn start_slow_upload(
    app: &TestApp,
    collection: &str,
    lines: &[Line],
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let body = ndjson(lines);
    let pieces: Vec<Vec<u8>> = body.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
    let pause = Duration::from_millis(10_000 / pieces.len().max(1) as u64);
    let stream = futures::stream::iter(pieces).then(move |piece| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(piece)
    });
    let request = app
        .client
        .post(app.url(&documents_path(collection)))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(stream));
    tokio::spawn(request.send())
}

async fn stats(app: &TestApp, collection: &str) -> Value {
    let response = app.get(&format!("/v1/collections/{collection}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["stats"].clone()
}

fn count(stats: &Value, status: &str) -> i64 {
    stats["documents"][status].as_i64().unwrap()
}

/// Polls until `done` holds for the collection's stats.
async fn wait_until(
    app: &TestApp,
    collection: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let stats = stats(app, collection).await;
        if done(&stats) {
            return stats;
        }
        assert!(started.elapsed() < limit, "not {what} after {limit:?}: {stats}");
        if reported.elapsed() > Duration::from_secs(30) {
            eprintln!("waiting until {what} ({} s): {stats}", started.elapsed().as_secs());
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn all_documents(app: &TestApp, collection: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = after.as_ref().map(|id| format!("&after={id}")).unwrap_or_default();
        let response = app.get(&format!("{}?limit=500{query}", documents_path(collection))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.unwrap();
        documents.extend(page["documents"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return documents,
        }
    }
}

#[tokio::test]
async fn acknowledged_documents_survive_kill_9() {
    let corpus = corpus();
    let batches: Vec<&[Line]> = corpus.chunks(BATCH_DOCUMENTS).collect();
    // A short lease, so the job that was running at the kill is taken
    // again soon after the restart.
    let mut app = spawn_app_with(&[("RAGD_JOBS__LEASE_SECS", "4")]).await;
    let c = app.create_collection("crash").await;
    let mut acknowledged: Vec<Value> = Vec::new();

    for batch in &batches[..BATCHES_BEFORE_KILL] {
        acknowledged.push(upload(&app, &c, batch).await);
    }
    wait_until(&app, &c, "ingesting", Duration::from_secs(300), |s| count(s, "ready") > 0).await;
    let interrupted = batches[BATCHES_BEFORE_KILL];
    let upload_in_flight = start_slow_upload(&app, &c, interrupted);
    // Part of the interrupted upload is stored, none of it acknowledged.
    let stored = (BATCHES_BEFORE_KILL * BATCH_DOCUMENTS) as i64;
    let before = wait_until(&app, &c, "partly stored", Duration::from_secs(60), |s| count(s, "total") > stored).await;
    assert!(count(&before, "queued") > 0, "ingestion is in flight at the kill: {before}");
    app.kill_and_restart().await;
    let outcome = upload_in_flight.await.unwrap();
    assert!(
        outcome.as_ref().map_or(true, |r| r.status() != StatusCode::ACCEPTED),
        "the interrupted upload was not acknowledged"
    );
    eprintln!("killed during upload {} with {before}", BATCHES_BEFORE_KILL + 1);

    // The client sends the interrupted upload again, then the rest.
    for batch in &batches[BATCHES_BEFORE_KILL..] {
        acknowledged.push(upload(&app, &c, batch).await);
    }
    let sent = &corpus[..];
    let half = sent.len() as i64 / 2;
    let before =
        wait_until(&app, &c, "half ingested", Duration::from_secs(1800), |s| count(s, "ready") >= half).await;
    app.kill_and_restart().await;
    eprintln!("killed during ingestion with {before}");

    let after = wait_until(&app, &c, "ingested", Duration::from_secs(2400), |s| {
        count(s, "queued") + count(s, "processing") == 0
    })
    .await;
    eprintln!("after the restarts: {after}");

    // Every acknowledged document exists exactly once, and has finished.
    let documents = all_documents(&app, &c).await;
    let mut by_external_id: HashMap<&str, Vec<&Value>> = HashMap::new();
    for document in &documents {
        by_external_id
            .entry(document["external_id"].as_str().expect("external_id"))
            .or_default()
            .push(document);
    }
    for line in sent {
        let found = by_external_id.get(line.external_id.as_str()).map_or(0, Vec::len);
        assert_eq!(found, 1, "{} is stored {found} times", line.external_id);
    }
    assert_eq!(documents.len(), sent.len(), "only the documents sent are stored");
    let mut chunks = 0;
    for document in &documents {
        match document["status"].as_str() {
            Some("ready") => {
                assert!(document["chunk_count"].as_i64().unwrap() > 0, "{document}");
                chunks += document["chunk_count"].as_i64().unwrap();
            }
            Some("failed") => {
                assert!(
                    !document["failure"].as_str().unwrap_or("").is_empty(),
                    "a failure has a reason: {document}"
                );
            }
            _ => panic!("document not finished: {document}"),
        }
    }
    assert_eq!(count(&after, "total"), sent.len() as i64, "{after}");
    assert_eq!(after["chunk_count"], chunks, "{after}");
    assert_eq!(
        after["point_count"], after["chunk_count"],
        "each chunk is in the index exactly once: {after}"
    );

    // The batches' counts agree with their answers and with the documents.
    let mut batch_ids = HashSet::new();
    let (mut accepted, mut duplicates) = (0, 0);
    for answer in &acknowledged {
        let id = answer["batch_id"].as_str().unwrap();
        batch_ids.insert(id);
        let response = app.get(&format!("/v1/batches/{id}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let batch: Value = response.json().await.unwrap();
        assert_eq!(
            (&batch["accepted"], &batch["duplicates"], &batch["rejected"]),
            (&answer["accepted"], &answer["duplicates"], &json!(0))
        );
        assert_eq!(batch["documents"]["total"], answer["accepted"], "{batch}");
        assert_eq!((batch["done"].as_bool(), batch["progress"].as_f64()), (Some(true), Some(1.0)), "{batch}");
        let tagged = documents.iter().filter(|d| d["batch_id"] == id).count() as i64;
        assert_eq!(answer["accepted"].as_i64(), Some(tagged), "{batch}");
        accepted += answer["accepted"].as_i64().unwrap();
        duplicates += answer["duplicates"].as_i64().unwrap();
    }
    assert_eq!(accepted + duplicates, sent.len() as i64);
    // Documents the interrupted upload stored before the kill were queued
    // and ingested; sent again, they are duplicates.
    let orphans =
        documents.iter().filter(|d| !batch_ids.contains(d["batch_id"].as_str().unwrap_or(""))).count() as i64;
    assert!(orphans > 0, "the interrupted upload stored documents before the kill");
    assert_eq!(orphans, duplicates, "duplicates are exactly the documents stored by the interrupted upload");

    let first = &corpus[0];
    let text: Value = serde_json::from_str(&first.json).unwrap();
    let query: String = text["text"].as_str().unwrap().chars().take(200).collect();
    let hits = app.search(&c, json!({"query": query, "top_k": 1, "mode": "sparse"})).await;
    let hit = hits["hits"][0]["document_id"].as_str().unwrap();
    assert_eq!(by_external_id[first.external_id.as_str()][0]["id"], hit, "{hits}");
    assert!(!app.log().contains("panicked"), "the server panicked:\n{}", app.log());
}
