//! `ragd ingest PATH --collection C`: uploads a file or a folder to a running
//! server through its public API, in multipart batches, with progress bars,
//! then waits until every accepted document is ready or failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// A file, or a folder whose files are uploaded recursively (hidden
    /// files and folders are skipped).
    pub path: PathBuf,
    /// The collection's name or id.
    #[arg(long)]
    pub collection: String,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Create the collection when it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Files per upload request.
    #[arg(long, default_value_t = 16)]
    pub files_per_request: usize,
    /// Return after uploading, without waiting for ingestion.
    #[arg(long)]
    pub no_wait: bool,
    /// An API key with the write role.
    #[arg(long, env = "RAGD_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

fn files_under(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut folders = vec![path.to_owned()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))?;
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn bar(len: usize, message: &'static str) -> anyhow::Result<ProgressBar> {
    let style = ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")?;
    let bar = ProgressBar::new(len as u64).with_style(style.progress_chars("=> "));
    bar.set_message(message);
    Ok(bar)
}

async fn problem_detail(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    format!("{status}: {}", body["detail"].as_str().unwrap_or("no detail"))
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let files = files_under(&args.path)?;
    if files.is_empty() {
        bail!("no files under {}", args.path.display());
    }
    let mut headers = reqwest::header::HeaderMap::new();
    let mut authorization = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", args.api_key))
        .context("the API key holds characters a header cannot carry")?;
    authorization.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, authorization);
    let client = Client::builder().default_headers(headers).build()?;
    let base = args.server.trim_end_matches('/');
    let collection = format!("{base}/v1/collections/{}", args.collection);
    let response = client.get(&collection).send().await.with_context(|| format!("connecting to {base}"))?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND if args.create => {
            let created = client.post(format!("{base}/v1/collections")).json(&json!({"name": args.collection})).send().await?;
            if created.status() != StatusCode::CREATED {
                bail!("creating collection {:?} failed: {}", args.collection, problem_detail(created).await);
            }
        }
        _ => bail!("collection {:?}: {}", args.collection, problem_detail(response).await),
    }

    let uploading = bar(files.len(), "uploading")?;
    let mut batches = Vec::new();
    let mut rejected = Vec::new();
    for group in files.chunks(args.files_per_request.max(1)) {
        let mut form = Form::new();
        for file in group {
            let bytes = tokio::fs::read(file).await.with_context(|| format!("reading {}", file.display()))?;
            let name = file.strip_prefix(&args.path).unwrap_or(file).display().to_string();
            let name = if name.is_empty() { file.display().to_string() } else { name };
            form = form.part("file", Part::bytes(bytes).file_name(name));
        }
        let response = client.post(format!("{collection}/documents")).multipart(form).send().await?;
        match response.status() {
            StatusCode::ACCEPTED => {
                let body: Value = response.json().await?;
                for entry in body["rejected"].as_array().into_iter().flatten() {
                    rejected.push(format!("{}: {}", entry["file"].as_str().unwrap_or(""), entry["reason"].as_str().unwrap_or("")));
                }
                if let Some(batch) = body["batch_id"].as_str() {
                    batches.push(batch.to_owned());
                }
            }
            StatusCode::UNPROCESSABLE_ENTITY => rejected.push(problem_detail(response).await),
            _ => bail!("upload failed: {}", problem_detail(response).await),
        }
        uploading.inc(group.len() as u64);
    }
    uploading.finish();
    for reason in &rejected {
        eprintln!("rejected {reason}");
    }
    if args.no_wait || batches.is_empty() {
        println!("uploaded {} files ({} rejected)", files.len() - rejected.len(), rejected.len());
        return Ok(());
    }

    let ingesting = bar(0, "ingesting")?;
    // [documents, ready, failed] over every batch of this upload.
    let totals = loop {
        let mut totals = [0i64; 3];
        let mut done = true;
        for batch in &batches {
            let view: Value = client.get(format!("{base}/v1/batches/{batch}")).send().await?.error_for_status()?.json().await?;
            let documents = &view["documents"];
            totals[0] += documents["total"].as_i64().unwrap_or(0);
            totals[1] += documents["ready"].as_i64().unwrap_or(0);
            totals[2] += documents["failed"].as_i64().unwrap_or(0);
            done &= view["done"].as_bool().unwrap_or(false);
        }
        ingesting.set_length(totals[0] as u64);
        ingesting.set_position((totals[1] + totals[2]) as u64);
        if done {
            break totals;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ingesting.finish();
    println!(
        "uploaded {} files: {} ready, {} failed, {} rejected",
        files.len(),
        totals[1],
        totals[2],
        rejected.len()
    );
    if totals[2] > 0 {
        bail!("{} documents failed; GET {collection}/documents shows why", totals[2]);
    }
    Ok(())
}
