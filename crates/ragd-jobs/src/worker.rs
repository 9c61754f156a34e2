//! The claim -> heartbeat -> finish loop shared by every job kind.

use std::sync::Arc;
use std::time::Duration;

use ragd_core::JobId;
use ragd_store::{JobRecord, JobState, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::finetune::{TrainingJobs, FINETUNE_EMBEDDER_KIND};
use crate::generator_job::FINETUNE_GENERATOR_KIND;
use crate::ingest::{IngestPipeline, JobOutcome};
use crate::quantize_job::QUANTIZE_KIND;
use crate::reindex_job::REINDEX_KIND;
use crate::reranker_job::FINETUNE_RERANKER_KIND;
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

    pub const KINDS: &'static [&'static str] = &[
        ragd_store::INGEST_JOB_KIND,
        FINETUNE_EMBEDDER_KIND,
        FINETUNE_RERANKER_KIND,
        FINETUNE_GENERATOR_KIND,
        QUANTIZE_KIND,
        REINDEX_KIND,
    ];

    /// The known kind spelled `name`.
    pub fn kind(name: &str) -> Option<&'static str> {
        Self::KINDS.iter().copied().find(|kind| *kind == name)
    }

    /// Claims only jobs of `kinds`, each one of [`Worker::KINDS`].
    pub fn only(mut self, kinds: &[&'static str]) -> Self {
        self.kinds = kinds.to_vec();
        self
    }

    /// Runs until `shutdown` is cancelled. Jobs in progress at shutdown are
    /// abandoned, not failed: their leases expire and a worker resumes them.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(worker = %self.name, kinds = ?self.kinds, "worker started");
        let lease = Duration::from_secs(self.config.lease_secs.max(1));
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let mut backoff = poll;
        while !shutdown.is_cancelled() {
            let woken = self.handle.notify.notified();
            let claimed =
                self.store.claim_jobs(&self.name, &self.kinds, lease, self.config.claim_batch.max(1)).await;
            match claimed {
                Ok(jobs) if !jobs.is_empty() => {
                    backoff = poll;
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.run_jobs(jobs, lease) => {}
                    }
                }
                Ok(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = woken => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(worker = %self.name, error = %ragd_core::Error::from(error).chain(), "claiming jobs failed");
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

    /// Runs the jobs claimed together and records each outcome; the
    /// successes are recorded in one statement.
    async fn run_jobs(&self, jobs: Vec<JobRecord>, lease: Duration) {
        let span = tracing::info_span!("jobs", count = jobs.len(), first = %jobs[0].id);
        async {
            let started = std::time::Instant::now();
            let heartbeat = self.keep_leases(&jobs, lease);
            let outcomes = tokio::select! {
                outcomes = self.dispatch(&jobs) => outcomes,
                lost = heartbeat => {
                    tracing::warn!(error = %lost, "jobs abandoned: a lease was taken over");
                    return;
                }
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let mut succeeded = Vec::with_capacity(jobs.len());
            for (id, outcome) in outcomes {
                let Some(job) = jobs.iter().find(|job| job.id == id) else { continue };
                match outcome {
                    Ok(()) => succeeded.push(id),
                    Err(Error::LeaseLost) => tracing::warn!(job = %id, "job abandoned: its lease was taken over"),
                    Err(Error::Cancelled) => {
                        if let Err(error) = self.store.finish_cancelled_job(id, &self.name).await {
                            tracing::warn!(error = %ragd_core::Error::from(error).chain(), "recording job cancellation failed");
                        }
                        tracing::info!(job = %id, "job cancelled");
                    }
                    Err(error) => self.record_failure(job, error).await,
                }
            }
            match self.store.complete_jobs(&succeeded, &self.name).await {
                Ok(completed) => {
                    for id in &succeeded {
                        tracing::info!(job = %id, "job succeeded");
                    }
                    if completed < succeeded.len() {
                        tracing::info!(completed, succeeded = succeeded.len(), "some jobs were cancelled while they ran");
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %ragd_core::Error::from(error).chain(), "recording job success failed");
                }
            }
            tracing::info!(elapsed_ms, jobs = jobs.len(), succeeded = succeeded.len(), "jobs finished");
        }
        .instrument(span)
        .await
    }

    async fn record_failure(&self, job: &JobRecord, error: Error) {
        let retry = error.is_retryable() && job.attempts < job.max_attempts;
        let reason = ragd_core::Error::from(error);
        tracing::warn!(job = %job.id, attempt = job.attempts, retry, error = %reason.chain(), "job failed");
        if !retry && job.kind == ragd_store::INGEST_JOB_KIND {
            self.ingest.record_failure(job, reason.message()).await;
        }
        if let Err(error) = self.store.fail_job(job.id, &self.name, reason.message(), retry).await {
            tracing::warn!(error = %ragd_core::Error::from(error).chain(), "recording job failure failed");
        }
    }

    /// Ingest jobs run as one group; other kinds run one after another.
    async fn dispatch(&self, jobs: &[JobRecord]) -> Vec<JobOutcome> {
        let (ingest, other): (Vec<JobRecord>, Vec<JobRecord>) =
            jobs.iter().cloned().partition(|job| job.kind == ragd_store::INGEST_JOB_KIND);
        let mut outcomes = Vec::with_capacity(jobs.len());
        if !ingest.is_empty() {
            outcomes.extend(self.ingest.run(&ingest).await);
        }
        for job in other {
            let outcome = match job.kind.as_str() {
                FINETUNE_EMBEDDER_KIND => self.training.run(&job, &self.name).await,
                FINETUNE_RERANKER_KIND => self.training.run_reranker(&job, &self.name).await,
                FINETUNE_GENERATOR_KIND => self.training.run_generator(&job, &self.name).await,
                QUANTIZE_KIND => self.training.run_quantize(&job, &self.name).await,
                REINDEX_KIND => self.training.run_reindex(&job, &self.name).await,
                kind => Err(Error::UnknownKind(kind.to_owned())),
            };
            outcomes.push((job.id, outcome));
        }
        outcomes
    }

    /// Renews the leases every third of their length; returns only if one
    /// was taken over, so the jobs stop before another worker's copies
    /// collide. A job cancelled meanwhile (its document was deleted) is
    /// let go: publishing notices the document is gone.
    async fn keep_leases(&self, jobs: &[JobRecord], lease: Duration) -> Error {
        let mut held: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        let mut interval = tokio::time::interval(lease / 3);
        interval.tick().await;
        loop {
            interval.tick().await;
            let still = match self.store.heartbeat_jobs(&held, &self.name, lease).await {
                Ok(still) => still,
                Err(error) => {
                    tracing::warn!(error = %ragd_core::Error::from(error).chain(), "heartbeat failed");
                    continue;
                }
            };
            for lost in held.iter().filter(|id| !still.contains(id)) {
                match self.store.get_job(*lost).await {
                    Ok(job) if job.state == JobState::Cancelled => {
                        tracing::info!(job = %job.id, "job cancelled while it ran");
                    }
                    _ => return Error::LeaseLost,
                }
            }
            held = still;
        }
    }
}
