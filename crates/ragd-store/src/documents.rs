use ragd_core::{CollectionId, ContentHash, DocumentId, DocumentStatus, JobId, TenantId};
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::jobs::{JobState, INGEST_JOB_KIND};
use crate::store::{column, is_unique_violation, now_ms, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct NewDocument {
    pub id: DocumentId,
    pub collection: CollectionId,
    pub tenant: TenantId,
    pub external_id: Option<String>,
    pub title: String,
    pub source_name: Option<String>,
    pub media_type: String,
    pub content_hash: ContentHash,
    pub size_bytes: i64,
    pub metadata: Map<String, Value>,
    pub acl: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRecord {
    pub id: DocumentId,
    pub collection: CollectionId,
    pub tenant: TenantId,
    pub external_id: Option<String>,
    pub title: String,
    pub source_name: Option<String>,
    pub media_type: String,
    pub content_hash: ContentHash,
    pub size_bytes: i64,
    pub metadata: Map<String, Value>,
    pub acl: Vec<String>,
    pub status: DocumentStatus,
    /// Why the last ingestion failed, when `status` is failed.
    pub failure: Option<String>,
    /// Starts at 1; the version whose chunks are in the index once ready.
    pub version: i64,
    pub chunk_count: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// How many documents of a collection are in each status, and how many
/// chunks the ready ones have in the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub queued: i64,
    pub processing: i64,
    pub ready: i64,
    pub failed: i64,
    pub chunks: i64,
}

const COLUMNS: &str = "id, collection_id, tenant, external_id, title, source_name, media_type, \
                       content_hash, size_bytes, metadata, acl, status, failure, version, \
                       chunk_count, created_at, updated_at";

impl DocumentRecord {
    fn from_row(row: &AnyRow) -> Result<Self> {
        Ok(Self {
            id: column(row, "id", str::parse)?,
            collection: column(row, "collection_id", str::parse)?,
            tenant: column(row, "tenant", TenantId::parse)?,
            external_id: row.try_get("external_id")?,
            title: row.try_get("title")?,
            source_name: row.try_get("source_name")?,
            media_type: row.try_get("media_type")?,
            content_hash: column(row, "content_hash", ContentHash::parse)?,
            size_bytes: row.try_get("size_bytes")?,
            metadata: column(row, "metadata", |raw| serde_json::from_str(raw))?,
            acl: column(row, "acl", |raw| serde_json::from_str(raw))?,
            status: column(row, "status", str::parse)?,
            failure: row.try_get("failure")?,
            version: row.try_get("version")?,
            chunk_count: row.try_get("chunk_count")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl Store {
    /// Inserts the document as queued together with its ingest job, in one
    /// transaction, so a stored document always has a job that will process
    /// it. Fails with NotFound when the collection does not exist for the
    /// tenant, and with Conflict when the document id is taken.
    #[tracing::instrument(
        name = "store.insert_document_with_job",
        skip_all,
        fields(collection = %new.collection, document = %new.id)
    )]
    pub async fn insert_document_with_job(
        &self,
        new: &NewDocument,
    ) -> Result<(DocumentRecord, JobId)> {
        let now = now_ms();
        let metadata = Value::Object(new.metadata.clone()).to_string();
        let acl = serde_json::json!(new.acl).to_string();
        let mut tx = self.pool.begin().await?;
        // Selecting from collections makes the insert a no-op unless the
        // collection belongs to the tenant.
        let inserted = sqlx::query(
            "INSERT INTO documents (id, collection_id, tenant, external_id, title, source_name, \
             media_type, content_hash, size_bytes, metadata, acl, status, failure, version, \
             chunk_count, created_at, updated_at) \
             SELECT $1, id, tenant, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, 1, 0, $11, $11 \
             FROM collections WHERE id = $12 AND tenant = $13",
        )
        .bind(new.id.to_string())
        .bind(new.external_id.as_deref())
        .bind(&new.title)
        .bind(new.source_name.as_deref())
        .bind(&new.media_type)
        .bind(new.content_hash.as_str())
        .bind(new.size_bytes)
        .bind(&metadata)
        .bind(&acl)
        .bind(DocumentStatus::Queued.as_str())
        .bind(now)
        .bind(new.collection.to_string())
        .bind(new.tenant.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                Error::Conflict(format!("document {} already exists", new.id))
            } else {
                Error::Database(err)
            }
        })?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::NotFound(format!("collection {}", new.collection)));
        }
        let payload = serde_json::json!({
            "document": new.id.to_string(),
            "collection": new.collection.to_string(),
        });
        let job = self
            .enqueue(&mut tx, INGEST_JOB_KIND, &payload, Some(new.id), Some(new.collection), now)
            .await?;
        tx.commit().await?;
        let record = DocumentRecord {
            id: new.id,
            collection: new.collection,
            tenant: new.tenant.clone(),
            external_id: new.external_id.clone(),
            title: new.title.clone(),
            source_name: new.source_name.clone(),
            media_type: new.media_type.clone(),
            content_hash: new.content_hash.clone(),
            size_bytes: new.size_bytes,
            metadata: new.metadata.clone(),
            acl: new.acl.clone(),
            status: DocumentStatus::Queued,
            failure: None,
            version: 1,
            chunk_count: 0,
            created_at: now,
            updated_at: now,
        };
        Ok((record, job))
    }

    #[tracing::instrument(
        name = "store.get_document",
        skip_all,
        fields(%collection, document = %id)
    )]
    pub async fn get_document(
        &self,
        collection: CollectionId,
        id: DocumentId,
    ) -> Result<DocumentRecord> {
        let sql = format!("SELECT {COLUMNS} FROM documents WHERE id = $1 AND collection_id = $2");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(collection.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("document {id}")))?;
        DocumentRecord::from_row(&row)
    }

    /// Up to `limit` documents of the collection, oldest first (ids are
    /// time ordered), starting after the document `after` when given.
    #[tracing::instrument(name = "store.list_documents", skip_all, fields(%collection, limit))]
    pub async fn list_documents(
        &self,
        collection: CollectionId,
        after: Option<DocumentId>,
        limit: u32,
    ) -> Result<Vec<DocumentRecord>> {
        let after_clause = if after.is_some() { "AND id > $3" } else { "" };
        let sql = format!(
            "SELECT {COLUMNS} FROM documents WHERE collection_id = $1 {after_clause} \
             ORDER BY id LIMIT $2"
        );
        let mut query = sqlx::query(&sql).bind(collection.to_string()).bind(i64::from(limit));
        if let Some(after) = after {
            query = query.bind(after.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(DocumentRecord::from_row).collect()
    }

    /// Removes the document and cancels its unfinished jobs (a running
    /// worker learns it from its next heartbeat). Returns the removed row so
    /// the caller can drop its points and blob.
    #[tracing::instrument(
        name = "store.delete_document",
        skip_all,
        fields(%collection, document = %id)
    )]
    pub async fn delete_document(
        &self,
        collection: CollectionId,
        id: DocumentId,
    ) -> Result<DocumentRecord> {
        let now = now_ms();
        let sql = format!(
            "DELETE FROM documents WHERE id = $1 AND collection_id = $2 RETURNING {COLUMNS}"
        );
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(collection.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("document {id}")))?;
        let record = DocumentRecord::from_row(&row)?;
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = $1, lease_until = NULL, error = 'document deleted', \
             updated_at = $2 WHERE document_id = $3 AND state IN ($4, $5)",
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
        tracing::debug!(cancelled_jobs = cancelled, "document deleted");
        Ok(record)
    }

    #[tracing::instrument(
        name = "store.mark_document_processing",
        skip_all,
        fields(document = %id)
    )]
    pub async fn mark_document_processing(&self, id: DocumentId) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE documents SET status = $1, failure = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(DocumentStatus::Processing.as_str())
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected();
        found(updated, id)
    }

    /// Records that `version` of the document is in the index with
    /// `chunk_count` chunks.
    #[tracing::instrument(
        name = "store.mark_document_ready",
        skip_all,
        fields(document = %id, version, chunk_count)
    )]
    pub async fn mark_document_ready(
        &self,
        id: DocumentId,
        version: i64,
        chunk_count: i64,
    ) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE documents SET status = $1, failure = NULL, version = $2, chunk_count = $3, \
             updated_at = $4 WHERE id = $5",
        )
        .bind(DocumentStatus::Ready.as_str())
        .bind(version)
        .bind(chunk_count)
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected();
        found(updated, id)
    }

    /// `reason` is shown to API callers: it must not carry internals.
    #[tracing::instrument(
        name = "store.mark_document_failed",
        skip_all,
        fields(document = %id, reason)
    )]
    pub async fn mark_document_failed(&self, id: DocumentId, reason: &str) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE documents SET status = $1, failure = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(DocumentStatus::Failed.as_str())
        .bind(reason)
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected();
        found(updated, id)
    }

    #[tracing::instrument(name = "store.document_status_counts", skip_all, fields(%collection))]
    pub async fn document_status_counts(&self, collection: CollectionId) -> Result<StatusCounts> {
        // SUM of a BIGINT is NUMERIC on PostgreSQL, which the Any driver
        // cannot decode: cast it back.
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS documents, \
             CAST(COALESCE(SUM(chunk_count), 0) AS BIGINT) AS chunks \
             FROM documents WHERE collection_id = $1 GROUP BY status",
        )
        .bind(collection.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut counts = StatusCounts::default();
        for row in &rows {
            let documents: i64 = row.try_get("documents")?;
            let status: DocumentStatus = column(row, "status", str::parse)?;
            match status {
                DocumentStatus::Queued => counts.queued = documents,
                DocumentStatus::Processing => counts.processing = documents,
                DocumentStatus::Ready => {
                    counts.ready = documents;
                    counts.chunks = row.try_get("chunks")?;
                }
                DocumentStatus::Failed => counts.failed = documents,
            }
        }
        Ok(counts)
    }
}

fn found(updated: u64, id: DocumentId) -> Result<()> {
    if updated == 0 {
        Err(Error::NotFound(format!("document {id}")))
    } else {
        Ok(())
    }
}
