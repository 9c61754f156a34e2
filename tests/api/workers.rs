//! `ragd worker` processes: the API (`ragd serve` with no workers of its
//! own) and two worker processes share one PostgreSQL database and one blobs
//! directory; one worker is killed with SIGKILL in the middle of a job, the
//! other takes the job over when its lease expires, and every job is done
//! exactly once. A training job killed the same way resumes from its last
//! epoch checkpoint.
//!
//! Each worker indexes into its own Qdrant Edge directory (`--private-index`):
//! an Edge index belongs to one process, and the shared Qdrant server backend
//! does not exist yet. So this test checks exactly-once where the queue
//! keeps it, in the database and in the workers' own logs, not in a shared
//! index.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ragd_core::JobId;
use ragd_store::{JobState, Store, StoreConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{TestApp, repo_root, spawn_app, spawn_app_with};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const LEASE_SECS: &str = "2";

/// A fresh PostgreSQL database, dropped (connections and all) on drop.
struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// None when PostgreSQL is unreachable and `RAGD_TEST_SKIP_POSTGRES=1`.
    async fn create() -> Option<Self> {
        let mut admin = match PgConnection::connect(ADMIN_URL).await {
            Ok(conn) => conn,
            Err(err) if std::env::var("RAGD_TEST_SKIP_POSTGRES").as_deref() == Ok("1") => {
                eprintln!("skipping: PostgreSQL unreachable ({err}) and RAGD_TEST_SKIP_POSTGRES=1");
                return None;
            }
            Err(err) => panic!(
                "PostgreSQL is not reachable at {ADMIN_URL}: {err}. Start it (user postgres, trust \
                 auth) or set RAGD_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL tests"
            ),
        };
        let name = format!("ragd_test_{}", uuid::Uuid::new_v4().simple());
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
        Some(Self { name })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime cannot be blocked on: a
        // thread with its own runtime does the async work.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(ADMIN_URL).await?;
                admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A running `ragd worker` with its own data directory; killed on drop.
struct WorkerProcess {
    child: Child,
    pid: u32,
    data_dir: TempDir,
    health: Option<String>,
}

impl WorkerProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("worker.log")).unwrap_or_default()
    }

    /// Its claims carry this prefix: `host/pid/task`.
    fn owns(&self, worker: &str) -> bool {
        worker.split('/').nth(1) == Some(self.pid.to_string().as_str())
    }

    /// The ids of the jobs whose success this process logged, in order.
    fn succeeded_jobs(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["fields"]["message"] == "job succeeded")
            .map(|event| event["fields"]["job"].as_str().expect("the event names its job").to_owned())
            .collect()
    }
}

fn worker_command(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragd"));
    command
        .current_dir(repo_root())
        .arg("worker")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .env("RAGD_MODELS__VERIFY_CHECKSUMS", "false")
        .env("RAGD_JOBS__POLL_INTERVAL_MS", "100")
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

async fn spawn_worker(args: &[&str], env: &[(&str, &str)]) -> WorkerProcess {
    let data_dir = tempfile::Builder::new().prefix("ragd-worker-").tempdir().expect("temp dir");
    let log = std::fs::File::create(data_dir.path().join("worker.log")).expect("log file");
    let mut child = worker_command(data_dir.path(), args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn ragd worker");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let health = tokio::time::timeout(Duration::from_secs(120), async {
        let mut health = None;
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(address) = line.strip_prefix("ragd worker listening on ") {
                health = Some(address.to_owned());
            }
            if line.starts_with("ragd worker running") {
                return health;
            }
        }
        let log = std::fs::read_to_string(data_dir.path().join("worker.log")).unwrap_or_default();
        panic!("ragd worker exited before running; its log:\n{log}");
    })
    .await
    .expect("ragd worker did not start within 120 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    WorkerProcess { child, pid, data_dir, health }
}

/// About `sentences` * 15 tokens of text, so that it makes many chunks.
fn long_text(sentences: usize) -> String {
    (0..sentences)
        .map(|n| {
            format!("Observation {n} of the survey records tide level {} at station {}.", n * 7 % 113, n % 29)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn add_document(app: &TestApp, collection: &str, title: &str, text: &str) -> (String, JobId) {
    let body = json!({"title": title, "text": text});
    let response = app.post_json(&format!("/v1/collections/{collection}/documents"), &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().to_owned(), body["job_id"].as_str().unwrap().parse().unwrap())
}

async fn wait_for_job(store: &Store, job: JobId, what: &str, done: impl Fn(&ragd_store::JobRecord) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let record = store.get_job(job).await.expect("job");
        if done(&record) {
            return;
        }
        assert!(Instant::now() < deadline, "job {job} not {what} after 120 s: {record:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_taken_over_and_every_job_runs_once() {
    let Some(database) = TestDatabase::create().await else { return };
    let url = database.url();
    let app = spawn_app_with(&[("RAGD_STORE__URL", url.as_str()), ("RAGD_JOBS__WORKERS", "0")]).await;
    let store = Store::connect(&StoreConfig { url: url.clone(), max_connections: 2 }).await.expect("connect");

    let collection = app.create_collection("scale").await;
    // The oldest job is claimed first: the long one, so that a worker is
    // surely in the middle of it when killed.
    let mut documents = vec![add_document(&app, &collection, "Survey", &long_text(400)).await];
    for (n, topic) in ["tides", "winds", "currents", "reefs", "dunes", "estuaries"].iter().enumerate() {
        let text = format!("Note {n} is about {topic}, which the survey station measured every day.");
        documents.push(add_document(&app, &collection, topic, &text).await);
    }
    let (long_document, long_job) = documents[0].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = store.get_job(long_job).await.expect("job");
    assert_eq!(queued.state, JobState::Queued, "`ragd serve` with jobs.workers = 0 ran a job");

    let blobs = app.data_dir.path().join("blobs");
    let env = [
        ("RAGD_STORE__URL", url.as_str()),
        ("RAGD_STORE__BLOBS_DIR", blobs.to_str().unwrap()),
        ("RAGD_JOBS__WORKERS", "1"),
        ("RAGD_JOBS__LEASE_SECS", LEASE_SECS),
        // One chunk per embed-and-index step (each index write is flushed)
        // makes the long job last seconds: about 25 chunks.
        ("RAGD_JOBS__EMBED_BATCH_SIZE", "1"),
        // One job per claim, so the killed worker held exactly the long job
        // and only that one must run twice.
        ("RAGD_JOBS__CLAIM_BATCH", "1"),
        ("RAGD_LOG__FORMAT", "json"),
    ];
    let (first, second) = tokio::join!(
        spawn_worker(&["--private-index", "--kinds", "ingest", "--listen", "127.0.0.1:0"], &env),
        spawn_worker(&["--private-index"], &env),
    );
    let mut workers = [first, second];

    let health = workers[0].health.clone().expect("health address");
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(format!("{health}{path}")).send().await.expect("health request");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    wait_for_job(&store, long_job, "running", |job| job.state == JobState::Running).await;
    // Well into the job (parsing, then embedding chunk after chunk) before
    // the kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claimed = store.get_job(long_job).await.expect("job");
    let claimer = claimed.worker.clone().expect("running job has a worker");
    let victim = workers.iter().position(|w| w.owns(&claimer)).expect("one of the two workers claimed it");
    let survivor = 1 - victim;
    workers[victim].child.start_kill().expect("SIGKILL");
    let status = workers[victim].child.wait().await.expect("wait for the killed worker");
    assert!(!status.success());

    let abandoned = store.get_job(long_job).await.expect("job");
    assert_eq!(
        (abandoned.state, abandoned.attempts, abandoned.worker.as_deref()),
        (JobState::Running, 1, Some(claimer.as_str())),
        "the job finished before the kill; make it longer"
    );

    for (document, _) in &documents {
        app.wait_ready(&collection, document).await;
    }

    let taken_over = store.get_job(long_job).await.expect("job");
    assert_eq!(taken_over.state, JobState::Succeeded);
    assert_eq!(taken_over.attempts, 2, "{taken_over:?}");
    assert!(workers[survivor].owns(taken_over.worker.as_deref().unwrap()), "{taken_over:?}");
    for (_, job) in &documents[1..] {
        let record = store.get_job(*job).await.expect("job");
        assert_eq!((record.state, record.attempts), (JobState::Succeeded, 1), "{record:?}");
    }

    // Every job succeeded in exactly one process, per the workers' own logs.
    let mut successes: HashMap<String, Vec<usize>> = HashMap::new();
    for (n, worker) in workers.iter().enumerate() {
        for job in worker.succeeded_jobs() {
            successes.entry(job).or_default().push(n);
        }
    }
    for (_, job) in &documents {
        let by = successes.remove(&job.to_string()).unwrap_or_default();
        assert_eq!(by.len(), 1, "job {job} succeeded in workers {by:?}");
    }
    assert!(successes.is_empty(), "unexpected jobs {successes:?}");
    assert!(workers[survivor].succeeded_jobs().contains(&long_job.to_string()));

    for (document, _) in &documents {
        let body: Value = app
            .get(&format!("/v1/collections/{collection}/documents/{document}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!((body["status"].as_str(), body["version"].as_i64()), (Some("ready"), Some(1)), "{body}");
        let chunks = body["chunk_count"].as_i64().unwrap();
        let expected_at_least = if *document == long_document { 15 } else { 1 };
        assert!(chunks >= expected_at_least, "{body}");
    }
    let stats: Value = app.get(&format!("/v1/collections/{collection}")).await.json().await.unwrap();
    assert_eq!(stats["stats"]["documents"]["ready"], documents.len(), "{stats}");

    // SIGTERM stops the survivor cleanly: idle workers leave, the process
    // exits 0.
    let pid = workers[survivor].pid.to_string();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(sent.success());
    let stopped = tokio::time::timeout(Duration::from_secs(30), workers[survivor].child.wait())
        .await
        .expect("the worker did not stop within 30 s of SIGTERM")
        .expect("wait for the worker");
    assert!(stopped.success(), "{stopped:?}");
    assert!(workers[survivor].log().contains("worker stopped"));

    store.close().await;
    drop(workers);
    drop(app);
}

#[tokio::test]
async fn a_worker_refuses_an_index_it_cannot_share() {
    let app = spawn_app().await;

    let output = worker_command(app.data_dir.path(), &[], &[]).output().await.expect("run ragd worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not be searchable through the API") && stderr.contains("--private-index"),
        "{stderr}"
    );

    // The API's own data_dir: its Edge index is open in the `ragd serve`.
    let output = worker_command(app.data_dir.path(), &["--private-index"], &[])
        .output()
        .await
        .expect("run ragd worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("open in another process"), "{stderr}");

    let output = worker_command(app.data_dir.path(), &["--private-index", "--kinds", "ingest,compact"], &[])
        .output()
        .await
        .expect("run ragd worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown job kind \"compact\""), "{stderr}");
}

/// A training job whose worker is killed after an epoch resumes on another
/// worker from that epoch's checkpoint instead of starting over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_training_job_resumes_from_its_checkpoint() {
    let Some(database) = TestDatabase::create().await else { return };
    let url = database.url();
    let app = spawn_app_with(&[("RAGD_STORE__URL", url.as_str()), ("RAGD_JOBS__WORKERS", "0")]).await;
    let store = Store::connect(&StoreConfig { url: url.clone(), max_connections: 2 }).await.expect("connect");
    let env = [("RAGD_STORE__URL", url.as_str()), ("RAGD_JOBS__LEASE_SECS", LEASE_SECS)];
    let args = ["--private-index", "--kinds", "finetune-embedder"];
    let mut first = spawn_worker(&args, &env).await;

    let pairs: Vec<Value> = ["cats", "tides", "chess", "bees", "jazz", "tea", "saturn", "wolves"]
        .iter()
        .enumerate()
        .map(|(i, topic)| json!({"query": format!("code word {i}"), "positive": format!("a passage about {topic}")}))
        .collect();
    // 8 pairs in batches of 4: 2 steps per epoch, 6 in all.
    let params = json!({"pairs": pairs, "epochs": 3, "batch_size": 4, "max_seq_len": 16, "validation_fraction": 0.0});
    let response = app.post_json("/v1/jobs", &json!({"kind": "finetune-embedder", "params": params})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: JobId = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().parse().unwrap();

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let record = store.get_job(job).await.expect("job");
        if record.checkpoint.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint after 300 s: {record:?}\n{}", first.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.child.start_kill().expect("SIGKILL");
    first.child.wait().await.expect("wait for the killed worker");
    let killed = store.get_job(job).await.expect("job");
    assert_eq!((killed.state, killed.attempts), (JobState::Running, 1), "finished before the kill: {killed:?}");
    let resumed_after = killed.checkpoint.expect("checkpoint")["epoch"].as_u64().unwrap();

    let second = spawn_worker(&args, &env).await;
    wait_for_job(&store, job, "finished", |record| record.state != JobState::Running).await;
    let done: Value = app.get(&format!("/v1/jobs/{job}")).await.json().await.unwrap();
    assert_eq!((done["status"].as_str(), done["attempts"].as_i64()), (Some("succeeded"), Some(2)), "{done}");
    let logs: Vec<&str> = done["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    let expected = format!("attempt 2: resuming after epoch {resumed_after}");
    assert!(logs.contains(&expected.as_str()), "{logs:?}");
    let steps: Vec<i64> =
        done["metrics"]["loss"].as_array().unwrap().iter().map(|p| p["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6], "{done}");
    let path = done["artifacts"][0]["path"].as_str().unwrap();
    assert!(std::path::Path::new(path).starts_with(second.data_dir.path()), "{path}");

    store.close().await;
    drop(second);
    drop(first);
    drop(app);
}
