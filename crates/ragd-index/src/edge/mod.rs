//! The Qdrant Edge backend: one in-process `EdgeShard` per collection
//! generation, in `<root>/<collection-id>/` (generation 0) or
//! `<root>/<collection-id>-g<n>/`.

mod filter;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_edge::{
    CountRequest, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams, EdgeVectorParams,
    FieldIndexOperations, Filter as QFilter, Fusion, HnswIndexConfig, Modifier, NamedQuery, Payload,
    PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations, PointOperations,
    PointStructPersisted, Prefetch, QueryEnum, QueryRequest, ScoredPoint, ScoringQuery, ScrollRequest,
    SparseVector as QSparseVector, UpdateOperation, VectorInternal, VectorPersisted, VectorStructPersisted,
    WithPayloadInterface, WithVector,
};
use ragd_core::{
    ChunkPayload, CollectionIndexSpec, DocumentId, HybridQuery, IndexHit, IndexPoint, IndexSettings,
    IndexTarget, Quantization, SearchMode, SparseVector, VectorIndex,
};
use serde::Deserialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::schema::{self, DENSE_VECTOR, SPARSE_VECTOR};

/// Written by `EdgeShard::new` before anything else, so its presence marks a
/// directory as a shard.
const SHARD_CONFIG_FILE: &str = "edge_config.json";
/// Prefix of a dropped shard's directory until it is deleted; a rename makes
/// the drop atomic even if the deletion is interrupted.
const DROPPED_PREFIX: &str = ".dropped-";
/// Locked exclusively by the process that has the index open.
const LOCK_FILE: &str = ".lock";

/// Tuning of the Qdrant Edge backend. Changes apply to existing collections
/// the next time they are opened (their HNSW graphs are rebuilt by the next
/// optimisation).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeIndexConfig {
    /// HNSW edges per node.
    pub hnsw_m: usize,
    /// HNSW candidate list size while building the graph.
    pub hnsw_ef_construct: usize,
    /// A segment holding more vector data than this (KiB) gets an HNSW graph;
    /// below it search is an exact scan.
    pub indexing_threshold_kb: usize,
    /// The `k` of reciprocal rank fusion: `1 / (k + rank)`, rank from 0.
    pub rrf_k: usize,
}

impl Default for EdgeIndexConfig {
    fn default() -> Self {
        Self { hnsw_m: 16, hnsw_ef_construct: 100, indexing_threshold_kb: 10_000, rrf_k: 60 }
    }
}

impl EdgeIndexConfig {
    fn hnsw(&self) -> HnswIndexConfig {
        HnswIndexConfig { m: self.hnsw_m, ef_construct: self.hnsw_ef_construct, ..HnswIndexConfig::default() }
    }

    fn validate(&self) -> Result<()> {
        if self.hnsw_m < 2 || self.hnsw_ef_construct < 4 || self.rrf_k == 0 {
            return Err(Error::Config(
                "edge index config: hnsw_m must be at least 2, hnsw_ef_construct at least 4, rrf_k at least 1"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

pub struct EdgeIndex {
    root: PathBuf,
    config: EdgeIndexConfig,
    shards: RwLock<HashMap<IndexTarget, Arc<Shard>>>,
    /// Serialises creating, opening and dropping shards, so that two
    /// `EdgeShard`s never live on one directory.
    lifecycle: Mutex<()>,
    /// Held for the index's lifetime: shards are loaded once and written in
    /// place, so a second process on the directory would neither see this
    /// one's writes nor keep its own from colliding. The OS drops the lock
    /// when the process dies, even by SIGKILL.
    _lock: std::fs::File,
}

struct Shard {
    edge: EdgeShard,
    dimensions: usize,
    /// Serialises updates, flushes and optimisations: `EdgeShard::flush`
    /// panics when it meets a concurrent writer. Searches do not take it.
    writes: Arc<Mutex<()>>,
}

impl EdgeIndex {
    /// Opens (creating if needed) the index directory. Collections are loaded
    /// from disk on first use. Leftovers of interrupted drops are deleted.
    /// Fails with [`Error::Locked`] while another `EdgeIndex`, in this
    /// process or another, has the directory open.
    pub fn open(root: &Path, config: EdgeIndexConfig) -> Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(root).map_err(Error::io(root))?;
        let lock = lock_directory(root)?;
        for entry in std::fs::read_dir(root).map_err(Error::io(root))? {
            let entry = entry.map_err(Error::io(root))?;
            if entry.file_name().to_string_lossy().starts_with(DROPPED_PREFIX) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "deleting interrupted collection drop");
                std::fs::remove_dir_all(&path).map_err(Error::io(path))?;
            }
        }
        Ok(Self {
            root: root.to_owned(),
            config,
            shards: RwLock::new(HashMap::new()),
            lifecycle: Mutex::new(()),
            _lock: lock,
        })
    }

    /// Runs the optimisers of one collection until they have nothing left to
    /// do. Writes already do this; it is exposed for maintenance.
    pub async fn optimize(&self, target: IndexTarget) -> Result<bool> {
        let shard = self.shard(target).await?;
        let guard = shard.writes.clone().lock_owned().await;
        blocking(move || {
            let _guard = guard;
            shard.optimize_and_flush(target)
        })
        .await
    }

    fn shard_path(&self, target: IndexTarget) -> PathBuf {
        self.root.join(target.to_string())
    }

    fn loaded(&self, target: IndexTarget) -> Option<Arc<Shard>> {
        self.shards.read().unwrap_or_else(PoisonError::into_inner).get(&target).cloned()
    }

    async fn shard(&self, target: IndexTarget) -> Result<Arc<Shard>> {
        if let Some(shard) = self.loaded(target) {
            return Ok(shard);
        }
        let _lifecycle = self.lifecycle.lock().await;
        self.open_shard(target).await?.ok_or(Error::UnknownCollection(target))
    }

    /// The collection's shard, loading it from disk if it exists there.
    /// Callers hold `lifecycle`.
    async fn open_shard(&self, target: IndexTarget) -> Result<Option<Arc<Shard>>> {
        if let Some(shard) = self.loaded(target) {
            return Ok(Some(shard));
        }
        let path = self.shard_path(target);
        let config_file = path.join(SHARD_CONFIG_FILE);
        if !tokio::fs::try_exists(&config_file).await.map_err(Error::io(config_file))? {
            return Ok(None);
        }
        let config = self.config.clone();
        let shard = Arc::new(blocking(move || Shard::load(&path, &config)).await?);
        tracing::info!(%target, dimensions = shard.dimensions, "opened vector shard");
        self.shards.write().unwrap_or_else(PoisonError::into_inner).insert(target, shard.clone());
        Ok(Some(shard))
    }
}

impl Shard {
    fn create(path: &Path, dimensions: usize, settings: &IndexSettings, config: &EdgeIndexConfig) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(Error::io(path))?;
        let mut edge_config = EdgeConfig::default();
        let mut dense = EdgeVectorParams::builder(dimensions, Distance::Cosine).on_disk(settings.on_disk);
        if settings.quantization == Quantization::Int8 {
            dense = dense.quantization_config(int8_quantization()?);
        }
        edge_config.vectors.insert(DENSE_VECTOR.to_owned(), dense.build());
        edge_config.sparse_vectors.insert(
            SPARSE_VECTOR.to_owned(),
            EdgeSparseVectorParams {
                modifier: Some(Modifier::Idf),
                on_disk: Some(settings.on_disk),
                ..EdgeSparseVectorParams::default()
            },
        );
        edge_config.hnsw_config = config.hnsw();
        edge_config.optimizers.indexing_threshold = Some(config.indexing_threshold_kb);
        let edge = EdgeShard::new(path, edge_config).map_err(Error::engine)?;
        let shard = Self { edge, dimensions, writes: Arc::new(Mutex::new(())) };
        shard.create_payload_indexes()?;
        shard.edge.flush();
        Ok(shard)
    }

    fn load(path: &Path, config: &EdgeIndexConfig) -> Result<Self> {
        let edge = EdgeShard::load(path, None).map_err(Error::engine)?;
        let (dimensions, hnsw_changed, threshold_changed) = {
            let current = edge.config();
            let dense = current.vectors.get(DENSE_VECTOR).ok_or_else(|| {
                Error::Engine(format!("shard {} has no {DENSE_VECTOR:?} vector", path.display()))
            })?;
            let hnsw = config.hnsw();
            (
                dense.size,
                current.hnsw_config.m != hnsw.m || current.hnsw_config.ef_construct != hnsw.ef_construct,
                current.optimizers.indexing_threshold != Some(config.indexing_threshold_kb),
            )
        };
        if hnsw_changed {
            edge.set_hnsw_config(config.hnsw()).map_err(Error::engine)?;
        }
        if threshold_changed {
            let mut optimizers = edge.config().optimizers.clone();
            optimizers.indexing_threshold = Some(config.indexing_threshold_kb);
            edge.set_optimizers_config(optimizers).map_err(Error::engine)?;
        }
        Ok(Self { edge, dimensions, writes: Arc::new(Mutex::new(())) })
    }

    /// Idempotent: creating an existing index is a no-op in the engine.
    fn create_payload_indexes(&self) -> Result<()> {
        let indexes = [
            (schema::TENANT, PayloadSchemaType::Keyword),
            (schema::COLLECTION, PayloadSchemaType::Keyword),
            (schema::DOCUMENT, PayloadSchemaType::Keyword),
            (schema::ACL, PayloadSchemaType::Keyword),
            (schema::VERSION, PayloadSchemaType::Integer),
        ];
        for (field, kind) in indexes {
            let operation =
                UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name: filter::path(field)?,
                    field_schema: Some(PayloadFieldSchema::FieldType(kind)),
                }));
            self.edge.update(operation).map_err(Error::engine)?;
        }
        Ok(())
    }

    /// Applies a write and makes it durable. Edge 0.7.1 never replays its WAL
    /// when a shard is loaded, so a write survives a crash only once the
    /// segments themselves are flushed.
    fn write(&self, target: IndexTarget, operation: UpdateOperation) -> Result<()> {
        self.edge.update(operation).map_err(Error::engine)?;
        self.edge.flush();
        self.optimize_and_flush(target)?;
        Ok(())
    }

    /// Edge has no background optimiser: without this an appendable segment
    /// grows forever (exact scan, no HNSW) and deleted points are never
    /// vacuumed. When nothing crosses a threshold the planner returns at once.
    fn optimize_and_flush(&self, target: IndexTarget) -> Result<bool> {
        let started = Instant::now();
        let optimized = self.edge.optimize().map_err(Error::engine)?;
        if optimized {
            self.edge.flush();
            tracing::info!(%target, elapsed_ms = started.elapsed().as_millis() as u64, "optimized vector shard");
        }
        Ok(optimized)
    }

    fn query(&self, request: QueryRequest) -> Result<Vec<ScoredPoint>> {
        self.edge.query(request).map_err(Error::engine)
    }

    /// The score each of `ids` gets from one nearest query, for ids it can
    /// score at all (a sparse query scores only points sharing a term).
    fn branch_scores(
        &self,
        query: VectorInternal,
        using: &str,
        ids: &[PointId],
    ) -> Result<HashMap<PointId, f32>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let only_ids = QFilter::new().with_point_ids(ids.iter().copied());
        let request = nearest_request(query, using, Some(only_ids), ids.len(), false);
        Ok(self.query(request)?.into_iter().map(|point| (point.id, point.score)).collect())
    }
}

#[async_trait]
impl VectorIndex for EdgeIndex {
    async fn create_collection(&self, spec: &CollectionIndexSpec) -> ragd_core::Result<()> {
        let target = spec.target;
        let dimensions = spec.dimensions;
        if dimensions == 0 {
            return Err(Error::InvalidPoint("a collection needs at least one vector dimension".into()).into());
        }
        spec.settings.validate()?;
        if spec.settings.shard_number.unwrap_or(1) > 1 || spec.settings.replication_factor.unwrap_or(1) > 1 {
            return Err(Error::Config(
                "the embedded vector index holds one shard with one copy; shard_number and \
                 replication_factor above 1 need the Qdrant server backend ([index] backend = \"qdrant\")"
                    .to_owned(),
            )
            .into());
        }
        let _lifecycle = self.lifecycle.lock().await;
        if let Some(shard) = self.open_shard(target).await? {
            if shard.dimensions != dimensions {
                return Err(Error::DimensionsConflict {
                    collection: target,
                    existing: shard.dimensions,
                    requested: dimensions,
                }
                .into());
            }
            return Ok(());
        }
        let path = self.shard_path(target);
        let config = self.config.clone();
        let settings = spec.settings.clone();
        let shard = Arc::new(blocking(move || Shard::create(&path, dimensions, &settings, &config)).await?);
        self.shards.write().unwrap_or_else(PoisonError::into_inner).insert(target, shard);
        tracing::info!(%target, dimensions, "created vector shard");
        Ok(())
    }

    async fn drop_collection(&self, target: IndexTarget) -> ragd_core::Result<()> {
        let _lifecycle = self.lifecycle.lock().await;
        let removed = self.shards.write().unwrap_or_else(PoisonError::into_inner).remove(&target);
        if let Some(mut shard) = removed {
            // In-flight searches and writes hold clones; the shard must be
            // closed (and its files released) before its directory goes.
            let shard = loop {
                match Arc::try_unwrap(shard) {
                    Ok(shard) => break shard,
                    Err(shared) => {
                        shard = shared;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
            blocking(move || {
                drop(shard);
                Ok(())
            })
            .await?;
        }
        let path = self.shard_path(target);
        let dropped = self.root.join(format!("{DROPPED_PREFIX}{target}"));
        blocking(move || {
            if !path.exists() {
                return Ok(());
            }
            if dropped.exists() {
                std::fs::remove_dir_all(&dropped).map_err(Error::io(&dropped))?;
            }
            std::fs::rename(&path, &dropped).map_err(Error::io(&path))?;
            std::fs::remove_dir_all(&dropped).map_err(Error::io(&dropped))
        })
        .await?;
        tracing::info!(%target, "dropped vector shard");
        Ok(())
    }

    async fn upsert(&self, target: IndexTarget, points: Vec<IndexPoint>) -> ragd_core::Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let shard = self.shard(target).await?;
        let count = points.len();
        let started = Instant::now();
        let guard = shard.writes.clone().lock_owned().await;
        blocking(move || {
            let _guard = guard;
            let points = points
                .into_iter()
                .map(|point| to_edge_point(point, shard.dimensions))
                .collect::<Result<Vec<_>>>()?;
            let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                PointInsertOperations::PointsList(points),
            ));
            shard.write(target, operation)
        })
        .await?;
        tracing::debug!(%target, points = count, elapsed_ms = started.elapsed().as_millis() as u64, "upserted points");
        Ok(())
    }

    async fn delete_document(
        &self,
        target: IndexTarget,
        document: DocumentId,
        keep_version: Option<i64>,
    ) -> ragd_core::Result<()> {
        let shard = self.shard(target).await?;
        let selection = filter::document_filter(document, keep_version)?;
        let guard = shard.writes.clone().lock_owned().await;
        blocking(move || {
            let _guard = guard;
            shard.write(
                target,
                UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(selection)),
            )
        })
        .await?;
        tracing::debug!(%target, %document, ?keep_version, "deleted document points");
        Ok(())
    }

    async fn search(&self, query: &HybridQuery) -> ragd_core::Result<Vec<IndexHit>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let shard = self.shard(query.target).await?;
        if query.mode != SearchMode::Sparse && query.dense.len() != shard.dimensions {
            return Err(Error::InvalidQuery(format!(
                "the dense query has {} dimensions; the collection has {}",
                query.dense.len(),
                shard.dimensions
            ))
            .into());
        }
        let plan = SearchPlan {
            mode: query.mode,
            dense: VectorInternal::Dense(query.dense.clone()),
            sparse: VectorInternal::Sparse(edge_sparse(&query.sparse).map_err(Error::InvalidQuery)?),
            scope: filter::search_filter(query)?,
            limit: query.limit,
            candidates: query.candidates,
            rrf_k: query.rrf_k.map_or(self.config.rrf_k, |k| k as usize),
        };
        let (limit, candidates) = (plan.limit, plan.candidates);
        let started = Instant::now();
        let hits = blocking(move || plan.run(&shard)).await?;
        tracing::debug!(
            target = %query.target,
            mode = ?query.mode,
            limit,
            candidates,
            filters = query.filter.must.len(),
            acl = query.principals.is_some(),
            hits = hits.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "searched vector shard"
        );
        Ok(hits)
    }

    async fn chunks(
        &self,
        target: IndexTarget,
        document: DocumentId,
        version: i64,
        indices: &[u32],
    ) -> ragd_core::Result<Vec<ChunkPayload>> {
        let wanted = indices.iter().copied().collect::<HashSet<_>>();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let shard = self.shard(target).await?;
        let selection = filter::chunks_filter(document, version, indices)?;
        let limit = wanted.len();
        let mut chunks = blocking(move || {
            let request = ScrollRequest {
                offset: None,
                limit: Some(limit),
                filter: Some(selection),
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: WithVector::Bool(false),
                order_by: None,
            };
            let (records, _next) = shard.edge.scroll(request).map_err(Error::engine)?;
            records.into_iter().map(|record| chunk_payload(record.payload)).collect::<Result<Vec<_>>>()
        })
        .await?;
        chunks.sort_by_key(|chunk| chunk.chunk_index);
        Ok(chunks)
    }

    async fn count(&self, target: IndexTarget) -> ragd_core::Result<u64> {
        let shard = self.shard(target).await?;
        let count = blocking(move || {
            shard.edge.count(CountRequest { filter: None, exact: true }).map_err(Error::engine)
        })
        .await?;
        Ok(count as u64)
    }
}

/// One search, ready to run on a shard.
struct SearchPlan {
    mode: SearchMode,
    dense: VectorInternal,
    sparse: VectorInternal,
    scope: QFilter,
    limit: usize,
    candidates: usize,
    rrf_k: usize,
}

impl SearchPlan {
    fn run(self, shard: &Shard) -> Result<Vec<IndexHit>> {
        let Self { mode, dense, sparse, scope, limit, candidates, rrf_k } = self;
        match mode {
            SearchMode::Dense => {
                let points = shard.query(nearest_request(dense, DENSE_VECTOR, Some(scope), limit, true))?;
                to_hits(points, |point| (Some(point.score), None))
            }
            SearchMode::Sparse => {
                let points = shard.query(nearest_request(sparse, SPARSE_VECTOR, Some(scope), limit, true))?;
                to_hits(points, |point| (None, Some(point.score)))
            }
            SearchMode::Hybrid => {
                let branch = |query: VectorInternal, using: &str| Prefetch {
                    prefetches: Vec::new(),
                    query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(query, using)))),
                    limit: candidates,
                    params: None,
                    filter: None,
                    score_threshold: None,
                };
                // The query planner merges the root filter into every
                // prefetch, so both branches search the scoped points only.
                let request = QueryRequest {
                    prefetches: vec![
                        branch(dense.clone(), DENSE_VECTOR),
                        branch(sparse.clone(), SPARSE_VECTOR),
                    ],
                    query: Some(ScoringQuery::Fusion(Fusion::Rrf { k: rrf_k, weights: None })),
                    filter: Some(scope),
                    score_threshold: None,
                    limit,
                    offset: 0,
                    params: None,
                    with_vector: WithVector::Bool(false),
                    with_payload: WithPayloadInterface::Bool(true),
                };
                let points = shard.query(request)?;
                let ids = points.iter().map(|point| point.id).collect::<Vec<_>>();
                let dense_scores = shard.branch_scores(dense, DENSE_VECTOR, &ids)?;
                let sparse_scores = shard.branch_scores(sparse, SPARSE_VECTOR, &ids)?;
                to_hits(points, |point| {
                    (dense_scores.get(&point.id).copied(), sparse_scores.get(&point.id).copied())
                })
            }
        }
    }
}

fn nearest_request(
    query: VectorInternal,
    using: &str,
    filter: Option<QFilter>,
    limit: usize,
    with_payload: bool,
) -> QueryRequest {
    QueryRequest {
        prefetches: Vec::new(),
        query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::new(query, using)))),
        filter,
        score_threshold: None,
        limit,
        offset: 0,
        params: None,
        with_vector: WithVector::Bool(false),
        with_payload: WithPayloadInterface::Bool(with_payload),
    }
}

fn to_hits(
    points: Vec<ScoredPoint>,
    branch_scores: impl Fn(&ScoredPoint) -> (Option<f32>, Option<f32>),
) -> Result<Vec<IndexHit>> {
    points
        .into_iter()
        .map(|point| {
            let (dense_score, sparse_score) = branch_scores(&point);
            Ok(IndexHit {
                id: point_uuid(point.id)?,
                score: point.score,
                dense_score,
                sparse_score,
                rerank_score: None,
                payload: chunk_payload(point.payload)?,
            })
        })
        .collect()
}

fn to_edge_point(point: IndexPoint, dimensions: usize) -> Result<PointStructPersisted> {
    if point.dense.len() != dimensions {
        return Err(Error::InvalidPoint(format!(
            "point {} has a {}-dimensional dense vector; the collection has {dimensions}",
            point.id,
            point.dense.len()
        )));
    }
    let sparse = edge_sparse(&point.sparse)
        .map_err(|problem| Error::InvalidPoint(format!("point {}: {problem}", point.id)))?;
    let vectors = HashMap::from([
        (DENSE_VECTOR.to_owned(), VectorPersisted::Dense(point.dense)),
        (SPARSE_VECTOR.to_owned(), VectorPersisted::Sparse(sparse)),
    ]);
    Ok(PointStructPersisted {
        id: PointId::Uuid(point.id),
        vector: VectorStructPersisted::Named(vectors),
        payload: Some(Payload(schema::payload_to_json(&point.payload))),
    })
}

/// Scalar int8 with the quantized vectors kept in RAM. Edge does not export
/// the config's inner struct, so it is built from its serde form.
fn int8_quantization() -> Result<qdrant_edge::QuantizationConfig> {
    serde_json::from_value(serde_json::json!({"scalar": {"type": "int8", "always_ram": true}}))
        .map_err(|err| Error::Engine(format!("int8 quantization config: {err}")))
}

fn edge_sparse(vector: &SparseVector) -> std::result::Result<QSparseVector, String> {
    let mut sparse = QSparseVector::new(vector.indices.clone(), vector.values.clone())
        .map_err(|err| format!("invalid sparse vector: {err}"))?;
    sparse.sort_by_indices();
    Ok(sparse)
}

fn chunk_payload(payload: Option<Payload>) -> Result<ChunkPayload> {
    let payload = payload.ok_or_else(|| Error::Engine("a point came back without its payload".into()))?;
    schema::payload_from_json(payload.0)
}

fn point_uuid(id: PointId) -> Result<Uuid> {
    match id {
        PointId::Uuid(uuid) => Ok(uuid),
        PointId::NumId(number) => Err(Error::Engine(format!("point id {number} is not a uuid"))),
    }
}

fn lock_directory(root: &Path) -> Result<std::fs::File> {
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(root.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Engine(format!("vector engine task failed: {err}")))?
}

#[cfg(test)]
mod tests;
