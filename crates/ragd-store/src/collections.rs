use ragd_core::{CollectionId, CollectionName, IndexTarget, JobId, TenantId};
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
    /// The index generation searches read, built with `embedder`.
    pub index_generation: u32,
    /// The generation a reindex is building, when one is under way.
    pub pending: Option<PendingIndex>,
}

/// A generation being built beside the searched one; ingestion writes to
/// both until the reindex swaps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIndex {
    pub generation: u32,
    pub embedder: String,
    pub dimensions: i64,
    /// The reindex job building it.
    pub job: JobId,
}

/// One generation a collection's chunks are written to, with the embedder
/// whose vectors it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTarget {
    pub target: IndexTarget,
    pub embedder: String,
}

/// Which generations a writer saw; publishing checks that they are still
/// the collection's, so no document is published into a generation that a
/// reindex swapped out meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLayout {
    pub generation: u32,
    pub pending: Option<u32>,
}

impl CollectionRecord {
    /// The generation searches read.
    pub fn index_target(&self) -> IndexTarget {
        IndexTarget::new(self.id, self.index_generation)
    }

    /// Every generation new chunks must reach: the searched one and, during
    /// a reindex, the one being built.
    pub fn write_targets(&self) -> Vec<WriteTarget> {
        let mut targets = vec![WriteTarget {
            target: self.index_target(),
            embedder: self.embedder.clone(),
        }];
        if let Some(pending) = &self.pending {
            targets.push(WriteTarget {
                target: IndexTarget::new(self.id, pending.generation),
                embedder: pending.embedder.clone(),
            });
        }
        targets
    }

    pub fn layout(&self) -> IndexLayout {
        IndexLayout { generation: self.index_generation, pending: self.pending.as_ref().map(|p| p.generation) }
    }
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionUpdate {
    pub description: Option<String>,
    pub settings: Option<Map<String, Value>>,
}

const COLUMNS: &str = "id, tenant, name, description, embedder, dimensions, settings, created_at, \
                       index_generation, pending_generation, pending_embedder, pending_dimensions, reindex_job";

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
            index_generation: generation(row.try_get("index_generation")?)?,
            pending: match row.try_get::<Option<i64>, _>("pending_generation")? {
                None => None,
                Some(pending) => Some(PendingIndex {
                    generation: generation(pending)?,
                    embedder: row.try_get::<Option<String>, _>("pending_embedder")?.unwrap_or_default(),
                    dimensions: row.try_get::<Option<i64>, _>("pending_dimensions")?.unwrap_or_default(),
                    job: column(row, "reindex_job", str::parse)?,
                }),
            },
        })
    }
}

fn generation(value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::Corrupt(format!("index generation {value} is out of range")))
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
            index_generation: 0,
            pending: None,
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

    /// Starts building generation `index_generation + 1` with `embedder` for
    /// the reindex job `job`, or returns the one that job already started
    /// (a retried attempt resumes). Conflict while another job's reindex is
    /// queued or running; one whose job ended without finishing it is taken
    /// over.
    #[tracing::instrument(name = "store.begin_reindex", skip_all, fields(%tenant, collection = %id, embedder))]
    pub async fn begin_reindex(
        &self,
        tenant: &TenantId,
        id: CollectionId,
        embedder: &str,
        dimensions: i64,
        job: JobId,
    ) -> Result<CollectionRecord> {
        sqlx::query(
            "UPDATE collections SET pending_generation = index_generation + 1, pending_embedder = $1, \
             pending_dimensions = $2, reindex_job = $3 \
             WHERE id = $4 AND tenant = $5 AND (pending_generation IS NULL OR reindex_job NOT IN \
             (SELECT j.id FROM jobs j WHERE j.state IN ($6, $7)))",
        )
        .bind(embedder)
        .bind(dimensions)
        .bind(job.to_string())
        .bind(id.to_string())
        .bind(tenant.as_str())
        .bind(JobState::Queued.as_str())
        .bind(JobState::Running.as_str())
        .execute(&self.pool)
        .await?;
        let record = self.get_collection(tenant, id).await?;
        match &record.pending {
            Some(pending) if pending.job == job => Ok(record),
            Some(pending) => Err(Error::Conflict(format!(
                "collection {:?} is being reindexed to {:?} by job {}",
                record.name.as_str(),
                pending.embedder,
                pending.job
            ))),
            None => Err(Error::Conflict(format!("collection {:?} could not start a reindex", record.name.as_str()))),
        }
    }

    /// Makes the reindex job's generation the searched one, with its
    /// embedder; returns the generation searches read before. Conflict when
    /// the job's reindex is no longer the collection's.
    #[tracing::instrument(name = "store.finish_reindex", skip_all, fields(collection = %id, %job))]
    pub async fn finish_reindex(&self, id: CollectionId, job: JobId) -> Result<u32> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE collections SET index_generation = pending_generation, embedder = pending_embedder, \
             dimensions = pending_dimensions, pending_generation = NULL, pending_embedder = NULL, \
             pending_dimensions = NULL, reindex_job = NULL \
             WHERE id = $1 AND reindex_job = $2 AND pending_generation IS NOT NULL",
        )
        .bind(id.to_string())
        .bind(job.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(Error::Conflict(format!("job {job} no longer reindexes collection {id}")));
        }
        // Generations only grow, so the previous one is the largest below.
        let row = sqlx::query("SELECT index_generation FROM collections WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let current = generation(row.try_get("index_generation")?)?;
        tx.commit().await?;
        Ok(current.saturating_sub(1))
    }

    /// Forgets the job's unfinished reindex; the collection keeps its
    /// generation. Returns the abandoned generation, if the job had one.
    #[tracing::instrument(name = "store.abandon_reindex", skip_all, fields(collection = %id, %job))]
    pub async fn abandon_reindex(&self, id: CollectionId, job: JobId) -> Result<Option<u32>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT pending_generation FROM collections WHERE id = $1 AND reindex_job = $2")
            .bind(id.to_string())
            .bind(job.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let pending = row.try_get::<Option<i64>, _>("pending_generation")?.map(generation).transpose()?;
        sqlx::query(
            "UPDATE collections SET pending_generation = NULL, pending_embedder = NULL, \
             pending_dimensions = NULL, reindex_job = NULL WHERE id = $1 AND reindex_job = $2",
        )
        .bind(id.to_string())
        .bind(job.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pending)
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
