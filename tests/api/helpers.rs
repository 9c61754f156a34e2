use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// A virtualenv with `requirement` (`name==version`) installed, made once
/// per target directory and reused by later runs; `module` is what it
/// imports, to tell whether an earlier run finished installing it.
pub async fn python_venv(requirement: &str, module: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_ragd")).ancestors().nth(2).expect("target dir");
    let venv = target.join(format!("pyvenv-{}", requirement.replace("==", "-")));
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if ready {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).output().await;
    let made = made.unwrap_or_else(|e| panic!("python3 is needed to install {requirement}: {e}"));
    assert!(made.status.success(), "python3 -m venv failed: {}", String::from_utf8_lossy(&made.stderr));
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", requirement])
        .output()
        .await
        .expect("run pip");
    if !installed.status.success() {
        let _ = std::fs::remove_dir_all(&venv);
        panic!(
            "pip could not install {requirement} (this test needs PyPI access once per target directory):\n{}",
            String::from_utf8_lossy(&installed.stderr)
        );
    }
    venv
}

/// The operator admin key every test server is started with; `client`
/// sends it on every request.
pub const ADMIN_KEY: &str = "ragd-test-admin-key-0123456789abcdef";

/// A client that sends `key` as its bearer token on every request.
pub fn client_with_key(key: &str) -> Client {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).expect("header value");
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    Client::builder().default_headers(headers).build().expect("client")
}

/// A running `ragd serve` with a fresh data directory; killed on drop.
pub struct TestApp {
    pub address: String,
    pub client: Client,
    pub data_dir: TempDir,
    /// What the server printed on stdout before it listened (the first
    /// start's operator key, when no admin key is configured).
    pub banner: String,
    child: Child,
    env: Vec<(String, String)>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the server with extra `RAGD_*` environment settings.
pub async fn spawn_app_with(env: &[(&str, &str)]) -> TestApp {
    let models = repo_root().join("models");
    assert!(
        models.join("minilm-l6-onnx/model.onnx").exists(),
        "model files are missing: run scripts/fetch-models first"
    );
    let data_dir = tempfile::Builder::new().prefix("ragd-test-").tempdir().expect("temp dir");
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let (child, address, banner) = start(data_dir.path(), &env).await;
    TestApp { address, client: client_with_key(ADMIN_KEY), data_dir, banner, child, env }
}

/// Runs `ragd serve` on `data_dir` until it prints its address. The log is
/// appended to, so a restarted server's log follows the previous one's.
async fn start(data_dir: &Path, env: &[(String, String)]) -> (Child, String, String) {
    let log_path = data_dir.join("server.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ragd"));
    command
        .current_dir(repo_root())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        // Checksums are verified by the setup script; skipping them here
        // keeps server start fast.
        .env("RAGD_MODELS__VERIFY_CHECKSUMS", "false")
        .env("RAGD_JOBS__POLL_INTERVAL_MS", "100")
        .env("RAGD_ADMIN_KEY", ADMIN_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("spawn ragd");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = String::new();
    let address = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(address) = line.strip_prefix("ragd listening on ") {
                return address.to_owned();
            }
            banner.push_str(&line);
            banner.push('\n');
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("ragd exited before listening; its log:\n{log}");
    })
    .await
    .expect("ragd did not start within 120 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address, banner)
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client.delete(self.url(path)).send().await.expect("request")
    }

    pub async fn create_collection(&self, name: &str) -> String {
        let response = self.post_json("/v1/collections", &json!({"name": name})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn add_text(&self, collection: &str, title: &str, text: &str, metadata: Value) -> String {
        let body = json!({"title": title, "text": text, "metadata": metadata});
        let response = self.post_json(&format!("/v1/collections/{collection}/documents"), &body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    /// Polls until the document leaves `queued`/`processing`; returns it.
    pub async fn wait_for_document(&self, collection: &str, document: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let response = self.get(&format!("/v1/collections/{collection}/documents/{document}")).await;
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            let status = body["status"].as_str().unwrap().to_owned();
            if status == "ready" || status == "failed" {
                return body;
            }
            assert!(Instant::now() < deadline, "document {document} still {status} after 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_ready(&self, collection: &str, document: &str) -> Value {
        let body = self.wait_for_document(collection, document).await;
        assert_eq!(body["status"], "ready", "document failed: {body}");
        body
    }

    pub async fn search(&self, collection: &str, body: Value) -> Value {
        let response = self.post_json(&format!("/v1/collections/{collection}/search"), &body).await;
        assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Kills the server with SIGKILL, so no shutdown code runs, and starts
    /// it again on the same data directory (at a new address).
    pub async fn kill_and_restart(&mut self) {
        self.child.kill().await.expect("kill ragd");
        let (child, address, _) = start(self.data_dir.path(), &self.env).await;
        self.child = child;
        self.address = address;
    }

    /// The same server seen through another API key.
    pub fn as_key(&self, key: &str) -> KeyedClient<'_> {
        KeyedClient { app: self, client: client_with_key(key) }
    }

    /// Makes a key with the admin key; returns its id and the key.
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let response = self.post_json("/v1/keys", &body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
        let created: Value = response.json().await.unwrap();
        (created["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A small corpus with one clear answer per topic.
pub const CORPUS: &[(&str, &str)] = &[
    ("Photosynthesis", "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to produce glucose and oxygen. It takes place in the chloroplasts, which contain the pigment chlorophyll."),
    ("The Rust borrow checker", "Rust's borrow checker enforces that a value has either one mutable reference or any number of shared references at a time. This prevents data races at compile time without a garbage collector."),
    ("Volcanoes", "A volcano is an opening in the Earth's crust through which molten rock called magma erupts as lava. Volcanic ash clouds can disrupt air travel for days."),
    ("Sourdough bread", "Sourdough bread is leavened by a starter culture of wild yeast and lactic acid bacteria. The long fermentation gives the loaf its tangy flavour and open crumb."),
];

pub async fn seed_corpus(app: &TestApp, collection: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, (title, text)) in CORPUS.iter().enumerate() {
        ids.push(app.add_text(collection, title, text, json!({"topic": i, "lang": "en"})).await);
    }
    for id in &ids {
        app.wait_ready(collection, id).await;
    }
    ids
}

pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].as_str().unwrap().starts_with("urn:ragd:problem:"), "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

/// Requests to a [`TestApp`] made with one API key.
pub struct KeyedClient<'a> {
    pub app: &'a TestApp,
    pub client: Client,
}

impl KeyedClient<'_> {
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.app.url(path)).send().await.expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.app.url(path)).json(body).send().await.expect("request")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client.delete(self.app.url(path)).send().await.expect("request")
    }
}
