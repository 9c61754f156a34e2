//! The claim -> heartbeat -> finish loop shared by every job kind.

use std::sync::Arc;
use std::time::Duration;

use ragd_store::{JobRecord, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::finetune::{TrainingJobs, FINETUNE_EMBEDDER_KIND};
use crate::ingest::IngestPipeline;
use crate::{Error, JobsConfig};

/// Wakes idle workers when a job is queued, so a new upload does not wait
/// for the next poll.
#[derive(Clone, Default)]
pub struct WorkerHandle {
    notify: Arc<Notify>,
}

impl WorkerHandle {
    pub fn job_queued(&self) {
        self.notify.notify_waiters();
    }
}

pub struct Worker {
    name: String,
    store: Store,
    ingest: Arc<IngestPipeline>,
    training: Arc<TrainingJobs>,
    config: JobsConfig,
    handle: WorkerHandle,
    kinds: Vec<&'static str>,
}

impl Worker {
    /// A worker for every job kind; [`Worker::only`] narrows it.
    pub fn new(
        name: String,
        store: Store,
        ingest: Arc<IngestPipeline>,
        training: Arc<TrainingJobs>,
        config: JobsConfig,
        handle: WorkerHandle,
    ) -> Self {
        Self { name, store, ingest, training, config, handle, kinds: Self::KINDS.to_vec() }
    }

    pub const KINDS: &'static [&'static str] = &[ragd_store::INGEST_JOB_KIND, FINETUNE_EMBEDDER_KIND];

    /// The known kind spelled `name`.
    pub fn kind(name: &str) -> Option<&'static str> {
        Self::KINDS.iter().copied().find(|kind| *kind == name)
    }

    /// Claims only jobs of `kinds`, each one of [`Worker::KINDS`].
    pub fn only(mut self, kinds: &[&'static str]) -> Self {
        self.kinds = kinds.to_vec();
        self
    }

    /// Runs until `shutdown` is cancelled. A job in progress at shutdown is
    /// abandoned, not failed: its lease expires and another worker resumes it.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(worker = %self.name, kinds = ?self.kinds, "worker started");
        let lease = Duration::from_secs(self.config.lease_secs.max(1));
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let mut backoff = poll;
        while !shutdown.is_cancelled() {
            let woken = self.handle.notify.notified();
            match self.store.claim_job(&self.name, &self.kinds, lease).await {
                Ok(Some(job)) => {
                    backoff = poll;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.run_job(job, lease) => {}
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = woken => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(worker = %self.name, error = %ragd_core::Error::from(error).chain(), "claiming a job failed");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
        tracing::info!(worker = %self.name, "worker stopped");
    }

    async fn run_job(&self, job: JobRecord, lease: Duration) {
        let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
        async {
            let started = std::time::Instant::now();
            let heartbeat = self.keep_lease(&job, lease);
            let outcome = tokio::select! {
                outcome = self.dispatch(&job) => outcome,
                lost = heartbeat => Err(lost),
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(()) => {
                    if let Err(error) = self.store.complete_job(job.id, &self.name).await {
                        tracing::warn!(error = %ragd_core::Error::from(error).chain(), "recording job success failed");
                    }
                    tracing::info!(elapsed_ms, "job succeeded");
                }
                Err(Error::LeaseLost) => tracing::warn!(elapsed_ms, "job abandoned: its lease was taken over"),
                Err(Error::Cancelled) => {
                    if let Err(error) = self.store.finish_cancelled_job(job.id, &self.name).await {
                        tracing::warn!(error = %ragd_core::Error::from(error).chain(), "recording job cancellation failed");
                    }
                    tracing::info!(elapsed_ms, "job cancelled");
                }
                Err(error) => {
                    let retry = error.is_retryable() && job.attempts < job.max_attempts;
                    let reason = ragd_core::Error::from(error);
                    tracing::warn!(elapsed_ms, retry, error = %reason.chain(), "job failed");
                    if !retry && job.kind == ragd_store::INGEST_JOB_KIND {
                        self.ingest.record_failure(&job, reason.message()).await;
                    }
                    if let Err(error) = self.store.fail_job(job.id, &self.name, reason.message(), retry).await {
                        tracing::warn!(error = %ragd_core::Error::from(error).chain(), "recording job failure failed");
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn dispatch(&self, job: &JobRecord) -> crate::Result<()> {
        match job.kind.as_str() {
            ragd_store::INGEST_JOB_KIND => self.ingest.run(job).await,
            FINETUNE_EMBEDDER_KIND => self.training.run(job, &self.name).await,
            other => Err(Error::UnknownKind(other.to_owned())),
        }
    }

    /// Renews the lease every third of its length; returns only if the lease
    /// was lost, so the job stops before another worker's copy collides.
    async fn keep_lease(&self, job: &JobRecord, lease: Duration) -> Error {
        let mut interval = tokio::time::interval(lease / 3);
        interval.tick().await;
        loop {
            interval.tick().await;
            match self.store.heartbeat_job(job.id, &self.name, lease).await {
                Ok(true) => {}
                Ok(false) => return Error::LeaseLost,
                Err(error) => tracing::warn!(error = %ragd_core::Error::from(error).chain(), "heartbeat failed"),
            }
        }
    }
}
