use std::fmt;
use std::str::FromStr;

use ragd_core::{CollectionId, TenantId, Visibility};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use crate::documents::StatusCounts;
use crate::error::{Error, Result};
use crate::store::{column, now_ms, Store};

/// Names the documents one upload request queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(Uuid);

impl BatchId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for BatchId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for BatchId {
    type Err = ragd_core::Error;
    fn from_str(s: &str) -> ragd_core::Result<Self> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| ragd_core::Error::invalid(format!("{s:?} is not a valid batch id")))
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an upload request did, written once the request is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    /// The id its documents were tagged with.
    pub id: BatchId,
    pub collection: CollectionId,
    pub tenant: TenantId,
    /// Entries queued for ingestion: new documents and new versions.
    pub accepted: i64,
    /// Entries whose content was already in the collection.
    pub duplicates: i64,
    /// Entries refused as invalid.
    pub rejected: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub id: BatchId,
    pub collection: CollectionId,
    pub tenant: TenantId,
    pub accepted: i64,
    pub duplicates: i64,
    pub rejected: i64,
    /// Unix milliseconds.
    pub created_at: i64,
}

const COLUMNS: &str = "id, collection_id, tenant, accepted, duplicates, rejected, created_at";

impl BatchRecord {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: column(row, "id", str::parse)?,
            collection: column(row, "collection_id", str::parse)?,
            tenant: column(row, "tenant", TenantId::parse)?,
            accepted: row.try_get("accepted")?,
            duplicates: row.try_get("duplicates")?,
            rejected: row.try_get("rejected")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

impl Store {
    /// Fails with NotFound when the collection does not exist for the
    /// tenant, and with Conflict when the batch id is taken.
    #[tracing::instrument(
        name = "store.create_batch",
        skip_all,
        fields(collection = %new.collection, batch = %new.id)
    )]
    pub async fn create_batch(&self, new: &NewBatch) -> Result<BatchRecord> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO batches (id, collection_id, tenant, accepted, duplicates, rejected, \
             created_at) \
             SELECT $1, id, tenant, $2, $3, $4, $5 FROM collections WHERE id = $6 AND tenant = $7",
        )
        .bind(new.id.to_string())
        .bind(new.accepted)
        .bind(new.duplicates)
        .bind(new.rejected)
        .bind(now)
        .bind(new.collection.to_string())
        .bind(new.tenant.as_str())
        .execute(&self.pool)
        .await
        .map_err(|err| Error::conflict_or_database(err, format_args!("batch {}", new.id)))?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::NotFound(format!("collection {}", new.collection)));
        }
        Ok(BatchRecord {
            id: new.id,
            collection: new.collection,
            tenant: new.tenant.clone(),
            accepted: new.accepted,
            duplicates: new.duplicates,
            rejected: new.rejected,
            created_at: now,
        })
    }

    /// Another tenant's batch is NotFound.
    #[tracing::instrument(name = "store.get_batch", skip_all, fields(%tenant, batch = %id))]
    pub async fn get_batch(&self, tenant: &TenantId, id: BatchId) -> Result<BatchRecord> {
        let sql = format!("SELECT {COLUMNS} FROM batches WHERE id = $1 AND tenant = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("batch {id}")))?;
        BatchRecord::from_row(&row)
    }

    /// The statuses of the documents whose current version the batch
    /// queued (a document re-uploaded by a later batch counts there) and
    /// that `visibility` allows.
    #[tracing::instrument(name = "store.batch_status_counts", skip_all, fields(batch = %id))]
    pub async fn batch_status_counts(&self, id: BatchId, visibility: &Visibility) -> Result<StatusCounts> {
        self.status_counts("batch_id", &id.to_string(), visibility).await
    }
}
