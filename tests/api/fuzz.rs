//! Fuzzing from the OpenAPI document with schemathesis: generated valid and
//! invalid requests to every operation must get no 5xx, only documented
//! status codes, content types and bodies, 4xx for schema-violating input
//! and 2xx for schema-valid input (with the exceptions in
//! schemathesis.toml).

use std::time::Duration;

use tokio::process::Command;

use crate::helpers::{ADMIN_KEY, python_venv, repo_root, seed_corpus, spawn_app_with};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";

#[tokio::test]
async fn fuzzing_from_the_openapi_document_finds_no_errors() {
    let venv = python_venv(SCHEMATHESIS, "schemathesis").await;
    // Requests come faster than a client's default rate limit allows.
    let app = spawn_app_with(&[("RAGD_AUTH__RATE_LIMIT_PER_SECOND", "0")]).await;
    let collection = app.create_collection("fuzz").await;
    seed_corpus(&app, &collection).await;

    // Bounded for CI; README (Tests) has the longer run. /query and chat
    // completions are left out: each of their requests runs the local
    // generator for up to max_tokens, which would take the run from a
    // minute to hours.
    let run = Command::new(venv.join("bin/schemathesis"))
        .arg("--config-file")
        .arg(repo_root().join("tests/api/schemathesis.toml"))
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_KEY}")])
        .args(["--exclude-path", "/v1/collections/{collection}/query"])
        .args(["--exclude-path", "/v1/chat/completions"])
        // A schema-valid job is a real fine-tuning run: too heavy to fuzz.
        .args(["--exclude-path", "/v1/jobs"])
        .args(["--max-examples", "10", "--max-failures", "10", "--seed", "1"])
        .args(["--generation-database", "none", "--request-timeout", "60", "--no-color"])
        .current_dir(app.data_dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("fuzzing finished in time")
        .expect("run schemathesis");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        app.log()
    );
}
