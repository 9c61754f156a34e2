//! Jobs submitted through the job API: owned by a tenant, reporting
//! progress, metrics, log lines, checkpoints and artifacts while they run,
//! and cancellable by their owner.

use ragd_core::{JobId, TenantId};
use serde_json::Value;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::jobs::{JobRecord, JobState, COLUMNS};
use crate::store::{now_ms, Store};

/// One value of a metric series, e.g. the loss at a training step.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMetric {
    pub name: String,
    pub step: i64,
    pub value: f64,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLogLine {
    pub at: i64,
    pub message: String,
}

/// What the worker should do after reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobControl {
    Continue,
    /// The owner asked the job to stop.
    Stop,
}

impl Store {
    /// Queues a job owned by `tenant`.
    #[tracing::instrument(name = "store.submit_job", skip_all, fields(%tenant, kind))]
    pub async fn submit_job(&self, tenant: &TenantId, kind: &str, payload: &Value) -> Result<JobRecord> {
        let mut tx = self.begin_write().await?;
        let id = self.enqueue(&mut tx, kind, payload, None, None, now_ms()).await?;
        sqlx::query("UPDATE jobs SET tenant = $1 WHERE id = $2")
            .bind(tenant.as_str())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_tenant_job(tenant, id).await
    }

    /// `tenant`'s jobs in id (that is, submission) order, after `after`.
    #[tracing::instrument(name = "store.list_jobs", skip_all, fields(%tenant, limit))]
    pub async fn list_jobs(
        &self,
        tenant: &TenantId,
        after: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<JobRecord>> {
        let after_clause = if after.is_some() { "AND id > $3" } else { "" };
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE tenant = $1 {after_clause} ORDER BY id LIMIT $2");
        let mut query = sqlx::query(&sql).bind(tenant.as_str()).bind(i64::from(limit));
        if let Some(after) = after {
            query = query.bind(after.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(JobRecord::from_row).collect()
    }

    /// NotFound unless the job exists and belongs to `tenant`.
    #[tracing::instrument(name = "store.get_tenant_job", skip_all, fields(%tenant, job = %id))]
    pub async fn get_tenant_job(&self, tenant: &TenantId, id: JobId) -> Result<JobRecord> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id}")))?;
        JobRecord::from_row(&row)
    }

    /// A queued job is cancelled at once; a running one is flagged and stops
    /// at its next step (or is cancelled when its lease expires). Cancelling
    /// a cancelled job is a no-op; a finished one is a Conflict.
    #[tracing::instrument(name = "store.request_job_cancel", skip_all, fields(%tenant, job = %id))]
    pub async fn request_job_cancel(&self, tenant: &TenantId, id: JobId) -> Result<JobRecord> {
        let sql = format!(
            "UPDATE jobs SET state = CASE WHEN state = $1 THEN $2 ELSE state END, \
             cancel_requested = 1, updated_at = $3 \
             WHERE id = $4 AND tenant = $5 AND state IN ($1, $6) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(JobState::Queued.as_str())
            .bind(JobState::Cancelled.as_str())
            .bind(now_ms())
            .bind(id.to_string())
            .bind(tenant.as_str())
            .bind(JobState::Running.as_str())
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return JobRecord::from_row(&row);
        }
        let job = self.get_tenant_job(tenant, id).await?;
        match job.state {
            JobState::Cancelled => Ok(job),
            state => Err(Error::Conflict(format!("job {id} has already {state}; it cannot be cancelled"))),
        }
    }

    /// Records progress (0..1), the current step and metric values, if the
    /// job is still `worker`'s. Tells the worker whether to go on; Conflict
    /// when the job is no longer its.
    #[tracing::instrument(name = "store.report_job_progress", skip_all, fields(job = %id, worker))]
    pub async fn report_job_progress(
        &self,
        id: JobId,
        worker: &str,
        progress: f64,
        step: &str,
        metrics: &[(&str, i64, f64)],
    ) -> Result<JobControl> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE jobs SET progress = $1, step = $2, updated_at = $3 \
             WHERE id = $4 AND worker = $5 AND state = $6 RETURNING cancel_requested",
        )
        .bind(progress.clamp(0.0, 1.0))
        .bind(step)
        .bind(now)
        .bind(id.to_string())
        .bind(worker)
        .bind(JobState::Running.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            return Err(self.not_held(id, worker).await);
        };
        for (name, step, value) in metrics {
            sqlx::query(
                "INSERT INTO job_metrics (job_id, name, step, value, at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (job_id, name, step) DO UPDATE SET value = excluded.value, at = excluded.at",
            )
            .bind(id.to_string())
            .bind(*name)
            .bind(*step)
            .bind(*value)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(if row.try_get::<i64, _>("cancel_requested")? != 0 {
            JobControl::Stop
        } else {
            JobControl::Continue
        })
    }

    /// Replaces the job's checkpoint; Conflict when the job is no longer
    /// `worker`'s.
    #[tracing::instrument(name = "store.record_job_checkpoint", skip_all, fields(job = %id, worker))]
    pub async fn record_job_checkpoint(&self, id: JobId, worker: &str, checkpoint: &Value) -> Result<()> {
        self.update_held(id, worker, "checkpoint = $1", checkpoint.to_string()).await
    }

    /// Adds to the job's artifacts; Conflict when the job is no longer
    /// `worker`'s.
    #[tracing::instrument(name = "store.add_job_artifact", skip_all, fields(job = %id, worker))]
    pub async fn add_job_artifact(&self, id: JobId, worker: &str, artifact: Value) -> Result<()> {
        let mut artifacts = self.get_job(id).await?.artifacts;
        artifacts.push(artifact);
        self.update_held(id, worker, "artifacts = $1", Value::Array(artifacts).to_string()).await
    }

    async fn update_held(&self, id: JobId, worker: &str, assignment: &str, value: String) -> Result<()> {
        let sql = format!(
            "UPDATE jobs SET {assignment}, updated_at = $2 WHERE id = $3 AND worker = $4 AND state = $5"
        );
        let updated = sqlx::query(&sql)
            .bind(value)
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

    #[tracing::instrument(name = "store.append_job_log", skip_all, fields(job = %id))]
    pub async fn append_job_log(&self, id: JobId, message: &str) -> Result<()> {
        sqlx::query("INSERT INTO job_logs (job_id, at, message) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(now_ms())
            .bind(message)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a running job that stopped because its owner asked; Conflict
    /// when the job is no longer `worker`'s.
    #[tracing::instrument(name = "store.finish_cancelled_job", skip_all, fields(job = %id, worker))]
    pub async fn finish_cancelled_job(&self, id: JobId, worker: &str) -> Result<()> {
        self.update_held(
            id,
            worker,
            "state = $1, lease_until = NULL",
            JobState::Cancelled.as_str().to_owned(),
        )
        .await
    }

    /// Every metric value of the job, by name, then step.
    #[tracing::instrument(name = "store.job_metrics", skip_all, fields(job = %id))]
    pub async fn job_metrics(&self, id: JobId) -> Result<Vec<JobMetric>> {
        let rows = sqlx::query(
            "SELECT name, step, value, at FROM job_metrics WHERE job_id = $1 ORDER BY name, step",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(JobMetric {
                    name: row.try_get("name")?,
                    step: row.try_get("step")?,
                    value: row.try_get("value")?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }

    /// The job's last `last` log lines, oldest first.
    #[tracing::instrument(name = "store.job_logs", skip_all, fields(job = %id, last))]
    pub async fn job_logs(&self, id: JobId, last: u32) -> Result<Vec<JobLogLine>> {
        let rows =
            sqlx::query("SELECT at, message FROM job_logs WHERE job_id = $1 ORDER BY id DESC LIMIT $2")
                .bind(id.to_string())
                .bind(i64::from(last))
                .fetch_all(&self.pool)
                .await?;
        let mut lines = rows
            .iter()
            .map(|row| Ok(JobLogLine { at: row.try_get("at")?, message: row.try_get("message")? }))
            .collect::<Result<Vec<_>>>()?;
        lines.reverse();
        Ok(lines)
    }
}
