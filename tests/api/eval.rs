use serde_json::{Value, json};

use crate::helpers::{CORPUS, repo_root};

/// `ragd eval` ingests a BEIR dataset through the real pipeline and scores
/// each mode; on a corpus with one obvious answer per query every mode finds it.
#[tokio::test]
async fn eval_scores_a_beir_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("tiny");
    std::fs::create_dir_all(dataset.join("qrels")).unwrap();
    let corpus: String = CORPUS
        .iter()
        .enumerate()
        .map(|(i, (title, text))| format!("{}\n", json!({"_id": format!("d{i}"), "title": title, "text": text})))
        .collect();
    std::fs::write(dataset.join("corpus.jsonl"), corpus).unwrap();
    let queries = [
        "Which pigment do chloroplasts contain?",
        "How does Rust prevent data races?",
        "What erupts from a volcano?",
        "What leavens sourdough?",
    ];
    let queries_jsonl: String =
        queries.iter().enumerate().map(|(i, q)| format!("{}\n", json!({"_id": format!("q{i}"), "text": q}))).collect();
    std::fs::write(dataset.join("queries.jsonl"), queries_jsonl).unwrap();
    let qrels: String = (0..4).map(|i| format!("q{i}\td{i}\t1\n")).collect();
    std::fs::write(dataset.join("qrels/test.tsv"), format!("query-id\tcorpus-id\tscore\n{qrels}")).unwrap();

    let report_path = dir.path().join("report.json");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ragd"))
        .current_dir(repo_root())
        .args(["eval", "--split", "test", "--mode", "all", "--dataset"])
        .arg(&dataset)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--json")
        .arg(&report_path)
        .env("RAGD_MODELS__VERIFY_CHECKSUMS", "false")
        .env("RAGD_JOBS__POLL_INTERVAL_MS", "100")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ragd eval failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("nDCG@10") || stdout.to_lowercase().contains("ndcg"), "{stdout}");

    let reports: Vec<Value> = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let modes: Vec<&str> = reports.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["dense", "sparse", "hybrid"]);
    for report in &reports {
        let metrics = &report["metrics"];
        assert_eq!(metrics["queries"], 4);
        assert_eq!(metrics["recall_at_100"], 1.0, "{report}");
        assert!(metrics["ndcg_at_10"].as_f64().unwrap() > 0.7, "{report}");
        assert_eq!(report["ingest"]["documents"], 4);
        assert!(report["stages"]["search"]["p50_ms"].as_f64().is_some());
    }
}
