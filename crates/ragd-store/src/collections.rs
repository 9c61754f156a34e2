use ragd_core::{CollectionId, CollectionName, TenantId};
use serde_json::{Map, Value};
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
    /// Opaque to the store: the server's per-collection settings.
    pub settings: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRecord {
    pub id: CollectionId,
    pub tenant: TenantId,
    pub name: CollectionName,
    pub description: String,
    pub embedder: String,
    pub dimensions: i64,
    pub settings: Map<String, Value>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionUpdate {
    pub description: Option<String>,
    pub settings: Option<Map<String, Value>>,
}

const COLUMNS: &str = "id, tenant, name, description, embedder, dimensions, settings, created_at";

impl CollectionRecord {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: column(row, "id", str::parse)?,
            tenant: column(row, "tenant", TenantId::parse)?,
            name: column(row, "name", CollectionName::parse)?,
            description: row.try_get("description")?,
            embedder: row.try_get("embedder")?,
            dimensions: row.try_get("dimensions")?,
            settings: column(row, "settings", |raw| serde_json::from_str(raw))?,
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
            settings: new.settings.clone(),
            created_at: now_ms(),
        };
        sqlx::query(
            "INSERT INTO collections (id, tenant, name, description, embedder, dimensions, settings, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(record.id.to_string())
        .bind(record.tenant.as_str())
        .bind(record.name.as_str())
        .bind(&record.description)
        .bind(&record.embedder)
        .bind(record.dimensions)
        .bind(Value::Object(record.settings.clone()).to_string())
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

    /// Changes the description and/or settings; NotFound when the tenant has
    /// no such collection.
    #[tracing::instrument(name = "store.update_collection", skip_all, fields(%tenant, collection = %id))]
    pub async fn update_collection(
        &self,
        tenant: &TenantId,
        id: CollectionId,
        update: &CollectionUpdate,
    ) -> Result<CollectionRecord> {
        let settings = update.settings.as_ref().map(|settings| Value::Object(settings.clone()).to_string());
        let updated = sqlx::query(
            "UPDATE collections SET description = COALESCE($1, description), settings = COALESCE($2, settings) \
             WHERE id = $3 AND tenant = $4",
        )
        .bind(update.description.clone())
        .bind(settings)
        .bind(id.to_string())
        .bind(tenant.as_str())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(Error::NotFound(format!("collection {id}")));
        }
        self.get_collection(tenant, id).await
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
