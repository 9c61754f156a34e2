//! `ragd worker`: job workers without the API. Processes started this way on
//! any number of hosts share the API's database (whose job queue hands each
//! job to one of them under a lease), its blobs directory and its index.

use std::path::PathBuf;

use anyhow::{Context, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ragd_jobs::{Worker, WorkerHandle};
use ragd_store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::serve::{Engines, wait_for_signal};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Directory for this process's own state (the SQLite file when
    /// store.url is empty, the Qdrant Edge index).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Job kinds to claim, comma-separated (default: every kind; known: ingest, finetune-embedder).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Serve GET /healthz and /readyz on this address (port 0 picks one).
    #[arg(long)]
    pub listen: Option<String>,
    /// Index into a Qdrant Edge index private to this process, whose points
    /// no API process searches; for exercising the job queue only.
    #[arg(long)]
    pub private_index: bool,
}

const EDGE_IS_PRIVATE: &str = "index.backend \"edge\" keeps vectors inside one process, so what \
     `ragd worker` indexes would be marked ready but not be searchable through the API. Worker \
     processes need an index shared with the API: set index.backend = \"qdrant\" (a Qdrant \
     server) in every process. Or run the workers inside `ragd serve` (jobs.workers), or pass \
     --private-index to index into this process's own Edge shards anyway";

pub async fn run(config: Config, args: WorkerArgs) -> anyhow::Result<()> {
    let kinds = kinds(&args.kinds)?;
    if config.jobs.workers == 0 {
        bail!("ragd worker needs jobs.workers of at least 1");
    }
    if config.index.backend == "edge" && !args.private_index {
        bail!(EDGE_IS_PRIVATE);
    }
    let engines = Engines::build(&config).await?;
    crate::memory::fit(&config, &engines.dense)?;
    let listener = match &args.listen {
        Some(listen) => {
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            println!("ragd worker listening on http://{}", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    crate::memory::spawn_guard(&config, engines.dense.clone(), shutdown.clone());
    // Nothing in this process enqueues jobs: the workers find them by
    // polling every jobs.poll_interval_ms.
    let handle = WorkerHandle::default();
    let tasks = engines.spawn_workers(&config, &engines.pipeline(&config), config.jobs.workers, &kinds, &handle, &shutdown);
    let health = listener.map(|listener| {
        let router = health_router(engines.store.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await
        })
    });
    tracing::info!(workers = config.jobs.workers, ?kinds, backend = ?engines.store.backend(), "worker process ready");
    // Tests and scripts wait for this line.
    println!("ragd worker running {} workers for {}", config.jobs.workers, kinds.join(","));

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    if let Some(health) = health {
        health.await??;
    }
    Ok(())
}

fn kinds(names: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(Worker::KINDS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            Worker::kind(name.trim()).with_context(|| {
                format!("unknown job kind {name:?}; known kinds: {}", Worker::KINDS.join(", "))
            })
        })
        .collect()
}

fn health_router(store: Store) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(store)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers: the job queue is the worker's only input.
async fn readyz(State(store): State<Store>) -> (StatusCode, Json<Value>) {
    match store.pending_job_count().await {
        Ok(pending) => (StatusCode::OK, Json(json!({"status": "ready", "pending_jobs": pending}))),
        Err(error) => {
            let error = ragd_core::Error::from(error);
            tracing::warn!(error = %error.chain(), "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "detail": error.message()})),
            )
        }
    }
}
