use ragd_core::{CollectionId, CollectionName, TenantId};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::jobs::JobState;
use crate::store::{column, is_unique_violation, now_ms, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCollection {
    pub tenant: TenantId,
    pub name: CollectionName,
    pub description: String,
    pub embedder: String,
    pub dimensions: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionRecord {
    pub id: CollectionId,
    pub tenant: TenantId,
    pub name: CollectionName,
    pub description: String,
    pub embedder: String,
    pub dimensions: i64,
    /// Unix milliseconds.
    pub created_at: i64,
}

const COLUMNS: &str = "id, tenant, name, description, embedder, dimensions, created_at";

impl CollectionRecord {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: column(row, "id", str::parse)?,
            tenant: column(row, "tenant", TenantId::parse)?,
            name: column(row, "name", CollectionName::parse)?,
            description: row.try_get("description")?,
            embedder: row.try_get("embedder")?,
            dimensions: row.try_get("dimensions")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl Store {
    /// Fails with [`Error::Conflict`] when the tenant already has a
    /// collection of that name.
    #[tracing::instrument(
        name = "store.create_collection",
        skip_all,
        fields(tenant = %new.tenant, name = %new.name)
    )]
    pub async fn create_collection(&self, new: &NewCollection) -> Result<CollectionRecord> {
        let record = CollectionRecord {
            id: CollectionId::new(),
            tenant: new.tenant.clone(),
            name: new.name.clone(),
            description: new.description.clone(),
            embedder: new.embedder.clone(),
            dimensions: new.dimensions,
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO collections (id, tenant, name, description, embedder, dimensions, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(record.id.to_string())
        .bind(record.tenant.as_str())
        .bind(record.name.as_str())
        .bind(&record.description)
        .bind(&record.embedder)
        .bind(record.dimensions)
        .bind(record.created_at)
        .execute(&self.pool)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                Error::Conflict(format!("collection {:?} already exists", new.name.as_str()))
            } else {
                Error::Database(err)
            }
        })?;
        Ok(record)
    }

    #[tracing::instrument(
        name = "store.get_collection",
        skip_all,
        fields(%tenant, collection = %id)
    )]
    pub async fn get_collection(
        &self,
        tenant: &TenantId,
        id: CollectionId,
    ) -> Result<CollectionRecord> {
        let sql = format!("SELECT {COLUMNS} FROM collections WHERE id = $1 AND tenant = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("collection {id}")))?;
        CollectionRecord::from_row(&row)
    }

    /// The tenant's collections, oldest first.
    #[tracing::instrument(name = "store.list_collections", skip_all, fields(%tenant))]
    pub async fn list_collections(&self, tenant: &TenantId) -> Result<Vec<CollectionRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM collections WHERE tenant = $1 ORDER BY id");
        let rows = sqlx::query(&sql).bind(tenant.as_str()).fetch_all(&self.pool).await?;
        rows.iter().map(CollectionRecord::from_row).collect()
    }

    /// Deletes the collection with its documents (by cascade) and cancels
    /// their unfinished jobs, in one transaction. The documents' blobs are
    /// left to the caller.
    #[tracing::instrument(
        name = "store.delete_collection",
        skip_all,
        fields(%tenant, collection = %id)
    )]
    pub async fn delete_collection(&self, tenant: &TenantId, id: CollectionId) -> Result<()> {
        let now = now_ms();
        // Writing first keeps SQLite from upgrading a read transaction to a
        // write one, which fails instead of waiting when another writer won.
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM collections WHERE id = $1 AND tenant = $2")
            .bind(id.to_string())
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(Error::NotFound(format!("collection {id}")));
        }
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = $1, lease_until = NULL, \
             error = 'collection deleted', updated_at = $2 \
             WHERE collection_id = $3 AND state IN ($4, $5)",
        )
        .bind(JobState::Cancelled.as_str())
        .bind(now)
        .bind(id.to_string())
        .bind(JobState::Queued.as_str())
        .bind(JobState::Running.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        tracing::debug!(cancelled_jobs = cancelled, "collection deleted");
        Ok(())
    }
}
