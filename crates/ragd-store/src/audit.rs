//! The audit log: who did what, when, and how it ended, for every write and
//! admin action. Rows are only ever added.

use ragd_core::TenantId;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::{now_ms, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// The key that acted; `None` for the command line.
    pub key_id: Option<String>,
    /// The tenant acted on; `None` for server-wide actions.
    pub tenant: Option<TenantId>,
    /// What was attempted, e.g. `collection.create`.
    pub action: String,
    /// What it was done to, e.g. a request path or a key id.
    pub target: String,
    /// `ok`, `denied`, `rejected` or `failed`.
    pub outcome: String,
    /// The HTTP status the action ended with.
    pub status: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Time ordered: paging by id is paging by time.
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    pub entry: NewAuditEntry,
}

const COLUMNS: &str = "id, at, key_id, tenant, action, target, outcome, status";

impl AuditRecord {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            at: row.try_get("at")?,
            entry: NewAuditEntry {
                key_id: row.try_get("key_id")?,
                tenant: row
                    .try_get::<Option<String>, _>("tenant")?
                    .map(|raw| {
                        TenantId::parse(&raw)
                            .map_err(|err| Error::corrupt(format_args!("column tenant: {err}")))
                    })
                    .transpose()?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                outcome: row.try_get("outcome")?,
                status: row.try_get("status")?,
            },
        })
    }
}

impl Store {
    #[tracing::instrument(name = "store.record_audit", skip_all, fields(action = %entry.action))]
    pub async fn record_audit(&self, entry: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, key_id, tenant, action, target, outcome, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::now_v7().simple().to_string())
        .bind(now_ms())
        .bind(entry.key_id.clone())
        .bind(entry.tenant.as_ref().map(|t| t.as_str().to_owned()))
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.outcome)
        .bind(entry.status)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` entries of `tenant` (of the whole server when `None`),
    /// newest first, older than the entry `before` when given.
    #[tracing::instrument(name = "store.list_audit", skip_all, fields(limit))]
    pub async fn list_audit(
        &self,
        tenant: Option<&TenantId>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(tenant) = tenant {
            values.push(tenant.as_str().to_owned());
            conditions.push(format!("tenant = ${}", values.len() + 1));
        }
        if let Some(before) = before {
            values.push(before.to_owned());
            conditions.push(format!("id < ${}", values.len() + 1));
        }
        let filter =
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!("SELECT {COLUMNS} FROM audit_log {filter} ORDER BY id DESC LIMIT $1");
        let mut query = sqlx::query(&sql).bind(i64::from(limit));
        for value in values {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(AuditRecord::from_row).collect()
    }
}
