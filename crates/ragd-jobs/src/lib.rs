//! The durable job runner: workers claim jobs from the store's queue under a
//! lease, keep the lease alive while they work, and record the outcome. The
//! job kinds live here too: `ingest`, the pipeline that turns a stored
//! upload into indexed chunks, and, submitted through the job API,
//! `finetune-embedder`, `finetune-reranker` and `finetune-generator` (LoRA),
//! which train models with `ragd-train`, and `quantize`, which re-quantizes
//! a GGUF generator with `ragd-generate`.
//!
//! Invariant: a job is only ever finished by the worker holding its lease,
//! and every step of a job is safe to repeat, because a crashed worker's job
//! is claimed again once its lease expires.

pub mod finetune;
pub mod generator_job;
pub mod ingest;
mod mining;
pub mod quantize_job;
pub mod reindex_job;
pub mod reranker_job;
mod worker;

use std::path::PathBuf;

use serde::Deserialize;

pub use finetune::{validate_submission, TrainingJobs, FINETUNE_EMBEDDER_KIND};
pub use generator_job::{ADAPTER_KIND, FINETUNE_GENERATOR_KIND};
pub use ingest::{IngestCounters, IngestPipeline, JobOutcome};
pub use quantize_job::{ModelDirs, GENERATOR_KIND, QUANTIZE_KIND};
pub use reindex_job::REINDEX_KIND;
pub use reranker_job::FINETUNE_RERANKER_KIND;
pub use worker::{Worker, WorkerHandle};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job {job} has a malformed payload: {reason}")]
    Payload { job: ragd_core::JobId, reason: String },
    #[error("the job's lease was taken over by another worker")]
    LeaseLost,
    #[error("unknown job kind {0:?}")]
    UnknownKind(String),
    /// The job's owner asked it to stop, and it did.
    #[error("the job was cancelled")]
    Cancelled,
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Core(#[from] ragd_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<ragd_store::Error> for Error {
    fn from(error: ragd_store::Error) -> Self {
        Self::Core(error.into())
    }
}

impl From<ragd_ingest::Error> for Error {
    fn from(error: ragd_ingest::Error) -> Self {
        Self::Core(error.into())
    }
}

impl From<ragd_train::Error> for Error {
    fn from(error: ragd_train::Error) -> Self {
        match error {
            ragd_train::Error::Stopped => Self::Cancelled,
            other => Self::Core(other.into()),
        }
    }
}

impl From<Error> for ragd_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Core(inner) => inner,
            other => ragd_core::Error::with_source(ragd_core::ErrorKind::Internal, "job failed", other),
        }
    }
}

impl Error {
    /// The same failure for another job of a group that failed together:
    /// same variant, kind and message, so the same retry decision.
    fn copy(&self) -> Self {
        match self {
            Self::Payload { job, reason } => Self::Payload { job: *job, reason: reason.clone() },
            Self::LeaseLost => Self::LeaseLost,
            Self::Cancelled => Self::Cancelled,
            Self::UnknownKind(kind) => Self::UnknownKind(kind.clone()),
            Self::Join(_) => Self::Core(ragd_core::Error::internal("background task failed")),
            Self::Core(inner) => Self::Core(ragd_core::Error::new(inner.kind(), inner.message())),
        }
    }

    /// Whether running the job again could succeed: a document that cannot
    /// be parsed fails the same way every time, a database hiccup does not.
    pub fn is_retryable(&self) -> bool {
        use ragd_core::ErrorKind::*;
        match self {
            Self::Core(inner) => matches!(inner.kind(), Internal | Upstream | Unavailable),
            Self::Join(_) => true,
            Self::Payload { .. } | Self::UnknownKind(_) | Self::LeaseLost | Self::Cancelled => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Worker tasks in the process: beside the API in `ragd serve` (0: API
    /// only), or on their own in `ragd worker` (at least 1).
    pub workers: usize,
    /// A job whose worker stops heartbeating is claimed again after this.
    pub lease_secs: u64,
    /// How often an idle worker looks for new jobs, when not woken directly.
    pub poll_interval_ms: u64,
    /// Chunks embedded and written to the index at a time.
    pub embed_batch_size: usize,
    /// The only place training jobs read datasets from: a job's
    /// `dataset.beir_dir` is a relative path under it.
    pub datasets_dir: PathBuf,
    /// Jobs a worker claims and runs together; their documents' chunks share
    /// embedding batches and index writes.
    pub claim_batch: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            lease_secs: 60,
            poll_interval_ms: 500,
            embed_batch_size: 64,
            datasets_dir: PathBuf::from("datasets"),
            claim_batch: 32,
        }
    }
}
