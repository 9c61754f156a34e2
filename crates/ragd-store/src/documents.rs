use ragd_core::{CollectionId, ContentHash, DocumentId, DocumentStatus, JobId, TenantId, Visibility};
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::batches::BatchId;
use crate::collections::IndexLayout;
use crate::error::{Error, Result};
use crate::jobs::{JobState, INGEST_JOB_KIND};
use crate::store::{column, now_ms, placeholders, Backend, Store};

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
    /// The batch that queued the current version, when it came in one.
    pub batch: Option<BatchId>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// What adding a document did (see [`Store::insert_documents_with_jobs`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AddOutcome {
    /// A new document, queued with its ingest job.
    Created { record: DocumentRecord, job: JobId },
    /// The document with the same external id got the new content as its
    /// next version, queued with its ingest job.
    NewVersion { record: DocumentRecord, job: JobId },
    /// The content is already in the collection: nothing was stored.
    Duplicate(DocumentRecord),
}

/// A version of a document whose chunks are all in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedVersion {
    pub document: DocumentId,
    pub version: i64,
    pub chunk_count: i64,
    /// The collection's generations the chunks were written to.
    pub layout: IndexLayout,
}

/// What recording an [`IndexedVersion`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOutcome {
    /// The document is ready with this version.
    Ready,
    /// A newer version was queued meanwhile; its job publishes it.
    Superseded,
    /// The document was deleted meanwhile.
    Missing,
    /// A reindex started or finished meanwhile, so the chunks are not in
    /// every generation the collection now has; the job must run again.
    IndexMoved,
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
                       chunk_count, batch_id, created_at, updated_at";

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
            batch: row
                .try_get::<Option<String>, _>("batch_id")?
                .map(|raw| {
                    raw.parse()
                        .map_err(|err| Error::corrupt(format_args!("column batch_id: {err}")))
                })
                .transpose()?,
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
        let mut tx = self.pool.begin().await?;
        let created = self.insert_row_and_job(&mut tx, new, None, now).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Adds each document in turn, all in one transaction (a failure adds
    /// none), tagging what it queues with `batch`:
    /// - a document whose `external_id` is already in the collection becomes
    ///   the next version of that document, unless the content is the same
    ///   and that document has not failed: then it is a duplicate;
    /// - otherwise a document whose content is already in the collection,
    ///   in a document that has not failed, is a duplicate;
    /// - otherwise it is inserted.
    ///
    /// Earlier documents of the slice count as already in the collection.
    /// Adders of the same collection are serialised, so concurrent uploads
    /// of the same content or external id cannot both insert. Fails with
    /// NotFound when a collection does not exist for its tenant, and with
    /// Conflict when a new document's id is taken.
    #[tracing::instrument(
        name = "store.insert_documents_with_jobs",
        skip_all,
        fields(documents = documents.len(), batch = ?batch.map(|id| id.to_string()))
    )]
    pub async fn insert_documents_with_jobs(
        &self,
        batch: Option<BatchId>,
        documents: &[NewDocument],
    ) -> Result<Vec<AddOutcome>> {
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut scopes: Vec<(CollectionId, &TenantId)> =
            documents.iter().map(|new| (new.collection, &new.tenant)).collect();
        // One order for every adder, so that PostgreSQL row locks taken for
        // several collections cannot deadlock.
        scopes.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
        scopes.dedup();
        for (collection, tenant) in scopes {
            self.lock_collection(&mut tx, collection, tenant).await?;
        }
        let mut outcomes = Vec::with_capacity(documents.len());
        for new in documents {
            let outcome = match find_match(&mut tx, new).await? {
                Match::Duplicate(existing) => AddOutcome::Duplicate(*existing),
                Match::NextVersion(existing) => {
                    let (record, job) =
                        self.replace_content(&mut tx, existing, new, batch, now).await?;
                    AddOutcome::NewVersion { record, job }
                }
                Match::None => {
                    let (record, job) = self.insert_row_and_job(&mut tx, new, batch, now).await?;
                    AddOutcome::Created { record, job }
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Makes `new` the next version of the stored document `new.id`: its
    /// content and fields replace the stored ones, the version goes up by
    /// one and the document is queued again with a new ingest job, in one
    /// transaction. Its queued jobs are cancelled (they would process the
    /// same content); a running one finishes, and the new job waits for it
    /// (see [`Store::claim_job`]). The old version stays searchable until
    /// the new one is indexed. Fails with NotFound when the document is not
    /// in `new.collection` of `new.tenant`.
    #[tracing::instrument(
        name = "store.new_document_version",
        skip_all,
        fields(collection = %new.collection, document = %new.id)
    )]
    pub async fn new_document_version(
        &self,
        new: &NewDocument,
        batch: Option<BatchId>,
    ) -> Result<(DocumentRecord, JobId)> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        self.lock_collection(&mut tx, new.collection, &new.tenant).await?;
        let replaced = self.replace_content(&mut tx, new.id, new, batch, now).await?;
        tx.commit().await?;
        Ok(replaced)
    }

    /// Checks that the collection exists for the tenant and, on PostgreSQL,
    /// locks its row until the transaction ends (SQLite's write lock is
    /// already held, see [`Store::begin_write`]).
    async fn lock_collection(
        &self,
        conn: &mut AnyConnection,
        collection: CollectionId,
        tenant: &TenantId,
    ) -> Result<()> {
        let lock = match self.backend {
            Backend::Sqlite => "",
            // Weaker than FOR UPDATE: it does not block the foreign key
            // checks of plain document inserts.
            Backend::Postgres => " FOR NO KEY UPDATE",
        };
        let sql = format!("SELECT id FROM collections WHERE id = $1 AND tenant = $2{lock}");
        sqlx::query(&sql)
            .bind(collection.to_string())
            .bind(tenant.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("collection {collection}")))?;
        Ok(())
    }

    async fn insert_row_and_job(
        &self,
        conn: &mut AnyConnection,
        new: &NewDocument,
        batch: Option<BatchId>,
        now: i64,
    ) -> Result<(DocumentRecord, JobId)> {
        let metadata = Value::Object(new.metadata.clone()).to_string();
        let acl = serde_json::json!(new.acl).to_string();
        // Selecting from collections makes the insert a no-op unless the
        // collection belongs to the tenant.
        let inserted = sqlx::query(
            "INSERT INTO documents (id, collection_id, tenant, external_id, title, source_name, \
             media_type, content_hash, size_bytes, metadata, acl, status, failure, version, \
             chunk_count, batch_id, created_at, updated_at) \
             SELECT $1, id, tenant, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, 1, 0, $11, $12, $12 \
             FROM collections WHERE id = $13 AND tenant = $14",
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
        .bind(batch.map(|id| id.to_string()))
        .bind(now)
        .bind(new.collection.to_string())
        .bind(new.tenant.as_str())
        .execute(&mut *conn)
        .await
        .map_err(|err| Error::conflict_or_database(err, format_args!("document {}", new.id)))?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::NotFound(format!("collection {}", new.collection)));
        }
        let job = self.enqueue_ingest(conn, new.id, new.collection, now).await?;
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
            batch,
            created_at: now,
            updated_at: now,
        };
        Ok((record, job))
    }

    /// Replaces the content of document `id` with `new`'s; the external id
    /// and the chunk count (of the version still in the index) are kept.
    async fn replace_content(
        &self,
        conn: &mut AnyConnection,
        id: DocumentId,
        new: &NewDocument,
        batch: Option<BatchId>,
        now: i64,
    ) -> Result<(DocumentRecord, JobId)> {
        let sql = format!(
            "UPDATE documents SET title = $1, source_name = $2, media_type = $3, \
             content_hash = $4, size_bytes = $5, metadata = $6, acl = $7, status = $8, \
             failure = NULL, version = version + 1, batch_id = $9, updated_at = $10 \
             WHERE id = $11 AND collection_id = $12 AND tenant = $13 RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&new.title)
            .bind(new.source_name.as_deref())
            .bind(&new.media_type)
            .bind(new.content_hash.as_str())
            .bind(new.size_bytes)
            .bind(Value::Object(new.metadata.clone()).to_string())
            .bind(serde_json::json!(new.acl).to_string())
            .bind(DocumentStatus::Queued.as_str())
            .bind(batch.map(|id| id.to_string()))
            .bind(now)
            .bind(id.to_string())
            .bind(new.collection.to_string())
            .bind(new.tenant.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("document {id}")))?;
        let record = DocumentRecord::from_row(&row)?;
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = $1, lease_until = NULL, \
             error = 'superseded by a newer version', updated_at = $2 \
             WHERE document_id = $3 AND state = $4",
        )
        .bind(JobState::Cancelled.as_str())
        .bind(now)
        .bind(id.to_string())
        .bind(JobState::Queued.as_str())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        let job = self.enqueue_ingest(conn, id, new.collection, now).await?;
        tracing::debug!(document = %id, version = record.version, cancelled_jobs = cancelled, "new document version queued");
        Ok((record, job))
    }

    async fn enqueue_ingest(
        &self,
        conn: &mut AnyConnection,
        document: DocumentId,
        collection: CollectionId,
        now: i64,
    ) -> Result<JobId> {
        let payload = serde_json::json!({
            "document": document.to_string(),
            "collection": collection.to_string(),
        });
        self.enqueue(conn, INGEST_JOB_KIND, &payload, Some(document), Some(collection), now).await
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
    pub async fn list_documents(
        &self,
        collection: CollectionId,
        after: Option<DocumentId>,
        limit: u32,
    ) -> Result<Vec<DocumentRecord>> {
        self.list_visible_documents(collection, after, limit, &Visibility::All).await
    }

    /// [`Store::list_documents`], keeping only what `visibility` allows; the
    /// ACL is applied in the query, so pages stay full.
    #[tracing::instrument(name = "store.list_documents", skip_all, fields(%collection, limit))]
    pub async fn list_visible_documents(
        &self,
        collection: CollectionId,
        after: Option<DocumentId>,
        limit: u32,
        visibility: &Visibility,
    ) -> Result<Vec<DocumentRecord>> {
        let after_clause = if after.is_some() { "AND id > $3" } else { "" };
        let (acl_clause, principals) =
            self.visibility_clause(visibility, if after.is_some() { 4 } else { 3 });
        let sql = format!(
            "SELECT {COLUMNS} FROM documents WHERE collection_id = $1 {after_clause} {acl_clause} \
             ORDER BY id LIMIT $2"
        );
        let mut query = sqlx::query(&sql).bind(collection.to_string()).bind(i64::from(limit));
        if let Some(after) = after {
            query = query.bind(after.to_string());
        }
        for principal in principals {
            query = query.bind(principal);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(DocumentRecord::from_row).collect()
    }

    /// The condition (with a leading `AND`) keeping the documents that
    /// `visibility` allows, numbering its placeholders from `first`, and the
    /// values to bind to them. An ACL is stored as a JSON array, `[]` when
    /// empty; reading its elements is the one part that differs by engine.
    pub(crate) fn visibility_clause(&self, visibility: &Visibility, first: usize) -> (String, Vec<String>) {
        match visibility {
            Visibility::All => (String::new(), Vec::new()),
            Visibility::Principals(principals) if principals.is_empty() => {
                ("AND acl = '[]'".to_owned(), Vec::new())
            }
            Visibility::Principals(principals) => {
                let list = placeholders(first, principals.len());
                let elements = match self.backend {
                    Backend::Sqlite => {
                        format!("SELECT 1 FROM json_each(documents.acl) WHERE json_each.value IN ({list})")
                    }
                    Backend::Postgres => format!(
                        "SELECT 1 FROM jsonb_array_elements_text(CAST(documents.acl AS jsonb)) \
                         AS principal(name) WHERE principal.name IN ({list})"
                    ),
                };
                (format!("AND (acl = '[]' OR EXISTS ({elements}))"), principals.clone())
            }
        }
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

    pub async fn mark_document_processing(&self, id: DocumentId) -> Result<()> {
        found(self.mark_documents_processing(&[id]).await?, id)
    }

    /// Marks `ids` processing in one statement; returns how many exist.
    #[tracing::instrument(name = "store.mark_documents_processing", skip_all, fields(documents = ids.len()))]
    pub async fn mark_documents_processing(&self, ids: &[DocumentId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE documents SET status = $1, failure = NULL, updated_at = $2 WHERE id IN ({ids})",
            ids = placeholders(3, ids.len()),
        );
        let mut query = sqlx::query(&sql).bind(DocumentStatus::Processing.as_str()).bind(now_ms());
        for id in ids {
            query = query.bind(id.to_string());
        }
        Ok(query.execute(&self.pool).await?.rows_affected())
    }

    /// Records that `version` of the document is in the index with
    /// `chunk_count` chunks; does nothing when a newer version has been
    /// queued since. Fails with NotFound when the document is gone. For a
    /// collection that was never reindexed (generation 0, none pending).
    pub async fn mark_document_ready(&self, id: DocumentId, version: i64, chunk_count: i64) -> Result<()> {
        let layout = IndexLayout { generation: 0, pending: None };
        let indexed = IndexedVersion { document: id, version, chunk_count, layout };
        match self.mark_documents_ready(&[indexed]).await?.pop() {
            Some(ReadyOutcome::Missing) | None => Err(Error::NotFound(format!("document {id}"))),
            Some(_) => Ok(()),
        }
    }

    /// Records each indexed version, as [`Store::mark_document_ready`]
    /// does, in one transaction; the outcomes come in the same order.
    #[tracing::instrument(name = "store.mark_documents_ready", skip_all, fields(documents = indexed.len()))]
    pub async fn mark_documents_ready(&self, indexed: &[IndexedVersion]) -> Result<Vec<ReadyOutcome>> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(indexed.len());
        for item in indexed {
            // A job of an older version that finishes after a newer version
            // was queued must not publish over it: the newer version's job
            // follows.
            let updated = sqlx::query(
                "UPDATE documents SET status = $1, failure = NULL, version = $2, chunk_count = $3, \
                 updated_at = $4 WHERE id = $5 AND version <= $2 AND EXISTS (SELECT 1 FROM collections c \
                 WHERE c.id = documents.collection_id AND c.index_generation = $6 \
                 AND COALESCE(c.pending_generation, -1) = $7)",
            )
            .bind(DocumentStatus::Ready.as_str())
            .bind(item.version)
            .bind(item.chunk_count)
            .bind(now)
            .bind(item.document.to_string())
            .bind(i64::from(item.layout.generation))
            .bind(item.layout.pending.map_or(-1, i64::from))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated > 0 {
                outcomes.push(ReadyOutcome::Ready);
                continue;
            }
            let current = sqlx::query("SELECT version FROM documents WHERE id = $1")
                .bind(item.document.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            outcomes.push(match current {
                Some(row) => {
                    let current: i64 = row.try_get("version")?;
                    if current > item.version {
                        tracing::info!(document = %item.document, current, "a newer version is queued; this one is not published");
                        ReadyOutcome::Superseded
                    } else {
                        tracing::info!(document = %item.document, "the collection's index generations changed; not published");
                        ReadyOutcome::IndexMoved
                    }
                }
                None => ReadyOutcome::Missing,
            });
        }
        tx.commit().await?;
        Ok(outcomes)
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

    pub async fn document_status_counts(&self, collection: CollectionId) -> Result<StatusCounts> {
        self.visible_document_counts(collection, &Visibility::All).await
    }

    /// [`Store::document_status_counts`] of the documents `visibility` allows.
    #[tracing::instrument(name = "store.document_status_counts", skip_all, fields(%collection))]
    pub async fn visible_document_counts(
        &self,
        collection: CollectionId,
        visibility: &Visibility,
    ) -> Result<StatusCounts> {
        self.status_counts("collection_id", &collection.to_string(), visibility).await
    }

    /// Counts the documents whose `key` column (a trusted column name)
    /// equals `value` and that `visibility` allows.
    pub(crate) async fn status_counts(
        &self,
        key: &str,
        value: &str,
        visibility: &Visibility,
    ) -> Result<StatusCounts> {
        let (acl_clause, principals) = self.visibility_clause(visibility, 2);
        // SUM of a BIGINT is NUMERIC on PostgreSQL, which the Any driver
        // cannot decode: cast it back.
        let sql = format!(
            "SELECT status, COUNT(*) AS documents, \
             CAST(COALESCE(SUM(chunk_count), 0) AS BIGINT) AS chunks \
             FROM documents WHERE {key} = $1 {acl_clause} GROUP BY status"
        );
        let mut query = sqlx::query(&sql).bind(value);
        for principal in principals {
            query = query.bind(principal);
        }
        let rows = query.fetch_all(&self.pool).await?;
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

/// What an added document is, given what the collection holds.
enum Match {
    Duplicate(Box<DocumentRecord>),
    /// The id of the document that gets the content as its next version.
    NextVersion(DocumentId),
    None,
}

async fn find_match(conn: &mut AnyConnection, new: &NewDocument) -> Result<Match> {
    if let Some(external_id) = &new.external_id {
        // The oldest, should rows from before external ids were matched
        // share one.
        let sql = format!(
            "SELECT {COLUMNS} FROM documents WHERE collection_id = $1 AND external_id = $2 \
             ORDER BY id LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(new.collection.to_string())
            .bind(external_id)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            let existing = DocumentRecord::from_row(&row)?;
            // Uploading a failed document again retries it, even unchanged;
            // new permissions are a new version like new content.
            if existing.content_hash == new.content_hash
                && existing.acl == new.acl
                && existing.status != DocumentStatus::Failed
            {
                return Ok(Match::Duplicate(Box::new(existing)));
            }
            return Ok(Match::NextVersion(existing.id));
        }
    }
    // Only a document with the same permissions is the same document: one
    // under another ACL must not be answered with (and so shown to a
    // caller who may not see it).
    let sql = format!(
        "SELECT {COLUMNS} FROM documents WHERE collection_id = $1 AND content_hash = $2 \
         AND status <> $3 AND acl = $4 ORDER BY id LIMIT 1"
    );
    let row = sqlx::query(&sql)
        .bind(new.collection.to_string())
        .bind(new.content_hash.as_str())
        .bind(DocumentStatus::Failed.as_str())
        .bind(serde_json::json!(new.acl).to_string())
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Match::Duplicate(Box::new(DocumentRecord::from_row(&row)?))),
        None => Ok(Match::None),
    }
}

fn found(updated: u64, id: DocumentId) -> Result<()> {
    if updated == 0 {
        Err(Error::NotFound(format!("document {id}")))
    } else {
        Ok(())
    }
}
