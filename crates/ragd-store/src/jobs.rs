use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use ragd_core::{CollectionId, DocumentId, JobId, TenantId};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::error::{Error, Result};
use crate::store::{column, duration_ms, now_ms, placeholders, Backend, Store};

/// The kind of the job that parses, chunks, embeds and indexes a document.
pub const INGEST_JOB_KIND: &str = "ingest";

/// What a document whose worker vanished on the last attempt reports.
const LEASE_EXHAUSTED: &str =
    "processing did not finish: the worker stopped responding on the last attempt";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = ragd_core::Error;
    fn from_str(s: &str) -> ragd_core::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ragd_core::Error::invalid(format!("unknown job state {s:?}")))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub payload: Value,
    pub state: JobState,
    /// Claims so far, including the current one while running.
    pub attempts: i64,
    pub max_attempts: i64,
    /// The worker that claimed it last.
    pub worker: Option<String>,
    /// Unix milliseconds; while running, the job is reclaimable after this.
    pub lease_until: Option<i64>,
    /// Unix milliseconds; a queued job is not claimed before this (retry
    /// backoff).
    pub run_after: i64,
    /// The reason of the last failure.
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The owner of a job submitted through the job API; None for internal
    /// jobs such as ingest.
    pub tenant: Option<TenantId>,
    /// 0..1, as last reported by the worker.
    pub progress: f64,
    /// What the worker is doing, as last reported.
    pub step: Option<String>,
    /// Where a retried attempt resumes, as the job kind recorded it.
    pub checkpoint: Option<Value>,
    /// What the job produced, one JSON object each.
    pub artifacts: Vec<Value>,
    /// The owner asked the job to stop; a running one stops at its next step.
    pub cancel_requested: bool,
}

pub(crate) const COLUMNS: &str =
    "id, kind, payload, state, attempts, max_attempts, worker, lease_until, run_after, error, \
     created_at, updated_at, tenant, progress, step, checkpoint, artifacts, cancel_requested";

impl JobRecord {
    pub(crate) fn from_row(row: &AnyRow) -> Result<Self> {
        let tenant: Option<String> = row.try_get("tenant")?;
        let checkpoint: Option<String> = row.try_get("checkpoint")?;
        Ok(Self {
            id: column(row, "id", str::parse)?,
            kind: row.try_get("kind")?,
            payload: column(row, "payload", |raw| serde_json::from_str(raw))?,
            state: column(row, "state", str::parse)?,
            attempts: row.try_get("attempts")?,
            max_attempts: row.try_get("max_attempts")?,
            worker: row.try_get("worker")?,
            lease_until: row.try_get("lease_until")?,
            run_after: row.try_get("run_after")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            tenant: tenant
                .map(|raw| {
                    TenantId::parse(&raw)
                        .map_err(|err| Error::corrupt(format_args!("column tenant: {err}")))
                })
                .transpose()?,
            progress: row.try_get("progress")?,
            step: row.try_get("step")?,
            checkpoint: checkpoint
                .map(|raw| {
                    serde_json::from_str(&raw)
                        .map_err(|err| Error::corrupt(format_args!("column checkpoint: {err}")))
                })
                .transpose()?,
            artifacts: column(row, "artifacts", |raw| serde_json::from_str(raw))?,
            cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        })
    }
}

impl Store {
    /// Adds a queued job on `conn`, so that callers can enqueue in the
    /// transaction that creates the job's subject.
    pub(crate) async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        kind: &str,
        payload: &Value,
        document: Option<DocumentId>,
        collection: Option<CollectionId>,
        now: i64,
    ) -> Result<JobId> {
        let id = JobId::new();
        sqlx::query(
            "INSERT INTO jobs (id, kind, payload, state, attempts, max_attempts, worker, \
             lease_until, run_after, error, document_id, collection_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, $5, NULL, NULL, $6, NULL, $7, $8, $6, $6)",
        )
        .bind(id.to_string())
        .bind(kind)
        .bind(payload.to_string())
        .bind(JobState::Queued.as_str())
        .bind(i64::from(self.policy.max_attempts.max(1)))
        .bind(now)
        .bind(document.map(|id| id.to_string()))
        .bind(collection.map(|id| id.to_string()))
        .execute(&mut *conn)
        .await?;
        tracing::debug!(job = %id, kind, "job enqueued");
        Ok(id)
    }

    /// Claims the oldest job of one of `kinds` that is queued and due, or
    /// running with an expired lease and attempts left, for `lease`, unless
    /// another job of the same document is running under a live lease. Each
    /// job goes to exactly one claimer, on both engines; `worker` must be
    /// unique per claiming task.
    pub async fn claim_job(
        &self,
        worker: &str,
        kinds: &[&str],
        lease: Duration,
    ) -> Result<Option<JobRecord>> {
        Ok(self.claim_jobs(worker, kinds, lease, 1).await?.pop())
    }

    /// Claims up to `limit` jobs at once, oldest first, as [`Store::claim_job`]
    /// claims one. Two jobs of one document can come back together (a queued
    /// one and one whose lease expired); they are for the same content.
    #[tracing::instrument(name = "store.claim_jobs", skip_all, fields(worker, ?kinds, limit))]
    pub async fn claim_jobs(
        &self,
        worker: &str,
        kinds: &[&str],
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        if kinds.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        self.fail_exhausted_leases(now).await?;
        // SQLite runs one writing statement at a time, so the UPDATE with its
        // subquery is atomic there; PostgreSQL needs the row lock, and
        // SKIP LOCKED lets concurrent claimers take the next job instead of
        // queueing behind each other.
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        // A job waits while another job of its document runs under a live
        // lease: two versions of a document ingested at once would each drop
        // the other's points when they publish.
        let sql = format!(
            "UPDATE jobs SET state = $1, worker = $2, lease_until = $3, attempts = attempts + 1, \
             updated_at = $4 \
             WHERE id IN (SELECT candidate.id FROM jobs AS candidate \
               WHERE candidate.kind IN ({kinds}) \
               AND ((candidate.state = $5 AND candidate.run_after <= $4) \
                 OR (candidate.state = $1 AND candidate.lease_until < $4 \
                   AND candidate.attempts < candidate.max_attempts \
                   AND candidate.cancel_requested = 0)) \
               AND NOT EXISTS (SELECT 1 FROM jobs AS busy \
                 WHERE busy.document_id = candidate.document_id AND busy.id <> candidate.id \
                   AND busy.state = $1 AND busy.lease_until >= $4) \
               ORDER BY candidate.id LIMIT {limit}{lock}) \
             RETURNING {COLUMNS}",
            kinds = placeholders(6, kinds.len()),
        );
        let mut query = sqlx::query(&sql)
            .bind(JobState::Running.as_str())
            .bind(worker)
            .bind(now.saturating_add(duration_ms(lease)))
            .bind(now)
            .bind(JobState::Queued.as_str());
        for kind in kinds {
            query = query.bind(*kind);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut jobs = rows.iter().map(JobRecord::from_row).collect::<Result<Vec<_>>>()?;
        // RETURNING gives no order guarantee.
        jobs.sort_by_key(|job| job.id);
        for job in &jobs {
            tracing::debug!(job = %job.id, kind = %job.kind, attempt = job.attempts, "job claimed");
        }
        Ok(jobs)
    }

    /// A running job whose lease expired on its last attempt would never be
    /// claimed again: fail it, and its document, which would otherwise stay
    /// processing forever.
    async fn fail_exhausted_leases(&self, now: i64) -> Result<()> {
        // A job asked to stop whose worker vanished is not run again.
        sqlx::query(
            "UPDATE jobs SET state = $1, lease_until = NULL, updated_at = $2 \
             WHERE state = $3 AND lease_until < $2 AND cancel_requested <> 0",
        )
        .bind(JobState::Cancelled.as_str())
        .bind(now)
        .bind(JobState::Running.as_str())
        .execute(&self.pool)
        .await?;
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = $1, lease_until = NULL, error = $2, updated_at = $3 \
             WHERE state = $4 AND lease_until < $3 AND attempts >= max_attempts \
             RETURNING id, document_id",
        )
        .bind(JobState::Failed.as_str())
        .bind(LEASE_EXHAUSTED)
        .bind(now)
        .bind(JobState::Running.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in &rows {
            let document: Option<String> = row.try_get("document_id")?;
            if let Some(document) = document {
                sqlx::query(
                    "UPDATE documents SET status = $1, failure = $2, updated_at = $3 \
                     WHERE id = $4 AND status IN ($5, $6)",
                )
                .bind(ragd_core::DocumentStatus::Failed.as_str())
                .bind(LEASE_EXHAUSTED)
                .bind(now)
                .bind(document)
                .bind(ragd_core::DocumentStatus::Queued.as_str())
                .bind(ragd_core::DocumentStatus::Processing.as_str())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        tracing::warn!(jobs = rows.len(), "jobs failed: lease expired on the last attempt");
        Ok(())
    }

    /// Extends the lease. False when the job is no longer this worker's
    /// (reclaimed after the lease expired, cancelled, or finished): the
    /// worker must then stop working on it.
    pub async fn heartbeat_job(&self, id: JobId, worker: &str, lease: Duration) -> Result<bool> {
        Ok(!self.heartbeat_jobs(&[id], worker, lease).await?.is_empty())
    }

    /// Extends the leases of `ids` in one statement; returns those still
    /// this worker's.
    #[tracing::instrument(name = "store.heartbeat_jobs", skip_all, fields(jobs = ids.len(), worker))]
    pub async fn heartbeat_jobs(&self, ids: &[JobId], worker: &str, lease: Duration) -> Result<Vec<JobId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let sql = format!(
            "UPDATE jobs SET lease_until = $1, updated_at = $2 \
             WHERE worker = $3 AND state = $4 AND id IN ({ids}) RETURNING id",
            ids = placeholders(5, ids.len()),
        );
        let mut query = sqlx::query(&sql)
            .bind(now.saturating_add(duration_ms(lease)))
            .bind(now)
            .bind(worker)
            .bind(JobState::Running.as_str());
        for id in ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|row| column(row, "id", str::parse)).collect()
    }

    /// Fails with Conflict when the job is no longer this worker's.
    #[tracing::instrument(name = "store.complete_job", skip_all, fields(job = %id, worker))]
    pub async fn complete_job(&self, id: JobId, worker: &str) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE jobs SET state = $1, lease_until = NULL, error = NULL, updated_at = $2 \
             WHERE id = $3 AND worker = $4 AND state = $5",
        )
        .bind(JobState::Succeeded.as_str())
        .bind(now_ms())
        .bind(id.to_string())
        .bind(worker)
        .bind(JobState::Running.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(self.not_held(id, worker).await);
        }
        Ok(())
    }

    /// Completes those of `ids` that are still this worker's, in one
    /// statement; returns how many were.
    #[tracing::instrument(name = "store.complete_jobs", skip_all, fields(jobs = ids.len(), worker))]
    pub async fn complete_jobs(&self, ids: &[JobId], worker: &str) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE jobs SET state = $1, lease_until = NULL, error = NULL, updated_at = $2 \
             WHERE worker = $3 AND state = $4 AND id IN ({ids})",
            ids = placeholders(5, ids.len()),
        );
        let mut query = sqlx::query(&sql)
            .bind(JobState::Succeeded.as_str())
            .bind(now_ms())
            .bind(worker)
            .bind(JobState::Running.as_str());
        for id in ids {
            query = query.bind(id.to_string());
        }
        Ok(query.execute(&self.pool).await?.rows_affected() as usize)
    }

    /// Puts the job back in the queue after a backoff when `retry` and
    /// attempts are left, otherwise fails it for good. Fails with Conflict
    /// when the job is no longer this worker's.
    #[tracing::instrument(name = "store.fail_job", skip_all, fields(job = %id, worker, retry))]
    pub async fn fail_job(&self, id: JobId, worker: &str, reason: &str, retry: bool) -> Result<()> {
        let row = sqlx::query(
            "SELECT attempts, max_attempts, cancel_requested FROM jobs \
             WHERE id = $1 AND worker = $2 AND state = $3",
        )
        .bind(id.to_string())
        .bind(worker)
        .bind(JobState::Running.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Err(self.not_held(id, worker).await);
        };
        let attempts: i64 = row.try_get("attempts")?;
        let max_attempts: i64 = row.try_get("max_attempts")?;
        let cancel_requested = row.try_get::<i64, _>("cancel_requested")? != 0;
        let now = now_ms();
        let (state, run_after) = if cancel_requested {
            (JobState::Cancelled, now)
        } else if retry && attempts < max_attempts {
            (JobState::Queued, now.saturating_add(self.policy.backoff_ms(attempts)))
        } else {
            (JobState::Failed, now)
        };
        // The attempts check makes this a compare-and-set: the job may have
        // been reclaimed and claimed again since the read above.
        let updated = sqlx::query(
            "UPDATE jobs SET state = $1, run_after = $2, lease_until = NULL, error = $3, \
             updated_at = $4 \
             WHERE id = $5 AND worker = $6 AND state = $7 AND attempts = $8",
        )
        .bind(state.as_str())
        .bind(run_after)
        .bind(reason)
        .bind(now)
        .bind(id.to_string())
        .bind(worker)
        .bind(JobState::Running.as_str())
        .bind(attempts)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(self.not_held(id, worker).await);
        }
        tracing::debug!(%state, attempts, max_attempts, "job failed");
        Ok(())
    }

    /// The error for a job update that matched no row.
    pub(crate) async fn not_held(&self, id: JobId, worker: &str) -> Error {
        match self.get_job(id).await {
            Ok(job) => Error::Conflict(format!(
                "job {id} is not held by worker {worker:?} (state {}, worker {:?})",
                job.state, job.worker
            )),
            Err(err) => err,
        }
    }

    #[tracing::instrument(name = "store.get_job", skip_all, fields(job = %id))]
    pub async fn get_job(&self, id: JobId) -> Result<JobRecord> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id}")))?;
        JobRecord::from_row(&row)
    }

    /// Jobs not finished yet: queued (due or not) and running.
    #[tracing::instrument(name = "store.pending_job_count", skip_all)]
    pub async fn pending_job_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS pending FROM jobs WHERE state IN ($1, $2)")
            .bind(JobState::Queued.as_str())
            .bind(JobState::Running.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("pending")?)
    }
}
