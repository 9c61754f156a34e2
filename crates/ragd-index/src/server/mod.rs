//! The Qdrant server backend: one Qdrant collection per ragd collection
//! generation, named `<collection_prefix><collection-id>[-g<n>]`, reached over gRPC with
//! qdrant-client. Points, payloads, filters and the hybrid query are the
//! ones the Edge backend uses (see the crate docs), so the conformance suite
//! holds for both.

mod filter;

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vectors_config::Config as VectorsConfigKind;
use qdrant_client::qdrant::{
    CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    Distance, FieldType, Filter as QFilter, HnswConfigDiffBuilder, Modifier, NamedVectors, PointId,
    PointStruct, PrefetchQueryBuilder, QuantizationType, Query, QueryPointsBuilder, RrfBuilder,
    ScalarQuantizationBuilder, ScoredPoint, ScrollPointsBuilder, SparseIndexConfigBuilder,
    SparseVectorParamsBuilder, SparseVectorsConfigBuilder, UpsertPointsBuilder, Vector, VectorInput,
    VectorParamsBuilder, VectorsConfigBuilder, WriteOrdering, WriteOrderingType,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use ragd_core::{
    ChunkPayload, CollectionIndexSpec, DocumentId, HybridQuery, IndexHit, IndexPoint, IndexTarget,
    Quantization, SearchMode, VectorIndex,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::schema::{self, DENSE_VECTOR, SPARSE_VECTOR};

/// Where the Qdrant server is and how ragd lays out its collections there.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QdrantServerConfig {
    /// gRPC address, e.g. `http://qdrant:6334`.
    pub url: String,
    /// Sent as the `api-key` header when set.
    pub api_key: Option<String>,
    /// Prefix of the Qdrant collection names, so several ragd deployments
    /// (or test runs) can share one Qdrant cluster.
    pub collection_prefix: String,
    /// Deadline of each request to Qdrant, in seconds.
    pub timeout_secs: u64,
    /// HNSW edges per node.
    pub hnsw_m: u64,
    /// HNSW candidate list size while building the graph.
    pub hnsw_ef_construct: u64,
    /// The `k` of reciprocal rank fusion: `1 / (k + rank)`.
    pub rrf_k: u32,
}

impl Default for QdrantServerConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:6334".to_owned(),
            api_key: None,
            collection_prefix: "ragd_".to_owned(),
            timeout_secs: 30,
            hnsw_m: 16,
            hnsw_ef_construct: 100,
            rrf_k: 60,
        }
    }
}

impl QdrantServerConfig {
    fn validate(&self) -> Result<()> {
        let prefix_ok =
            self.collection_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok || self.collection_prefix.len() > 64 {
            return Err(Error::Config(
                "qdrant index config: collection_prefix must be at most 64 letters, digits, '-' or '_'"
                    .to_owned(),
            ));
        }
        if self.hnsw_m < 2 || self.hnsw_ef_construct < 4 || self.rrf_k == 0 || self.timeout_secs == 0 {
            return Err(Error::Config(
                "qdrant index config: hnsw_m must be at least 2, hnsw_ef_construct at least 4, rrf_k and \
                 timeout_secs at least 1"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

pub struct QdrantServerIndex {
    client: Qdrant,
    config: QdrantServerConfig,
    /// Dense dimensions of the collections seen so far; they never change
    /// while a collection exists, and checking them here gives the same
    /// errors as the Edge backend instead of the server's wording.
    dimensions: RwLock<HashMap<IndexTarget, usize>>,
}

impl QdrantServerIndex {
    /// Connects and checks that the server answers, so a wrong URL fails at
    /// start rather than at the first upload.
    pub async fn connect(config: QdrantServerConfig) -> Result<Self> {
        config.validate()?;
        let client = Qdrant::from_url(&config.url)
            .api_key(config.api_key.clone())
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs.min(10)))
            .skip_compatibility_check()
            .build()
            .map_err(|err| Error::Config(format!("qdrant index config: url {:?}: {err}", config.url)))?;
        let health = client
            .health_check()
            .await
            .map_err(|err| Error::Unavailable(format!("Qdrant at {} does not answer: {err}", config.url)))?;
        tracing::info!(url = %config.url, version = %health.version, "connected to Qdrant server");
        Ok(Self { client, config, dimensions: RwLock::new(HashMap::new()) })
    }

    fn name(&self, collection: IndexTarget) -> String {
        format!("{}{collection}", self.config.collection_prefix)
    }

    /// The collection's dense dimensions, asking the server the first time;
    /// None when the collection does not exist.
    async fn dimensions(&self, collection: IndexTarget) -> Result<Option<usize>> {
        if let Some(&known) = self.dimensions.read().unwrap_or_else(PoisonError::into_inner).get(&collection)
        {
            return Ok(Some(known));
        }
        let info = match self.client.collection_info(self.name(collection)).await {
            Ok(info) => info,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(engine_error(err)),
        };
        let size = info
            .result
            .and_then(|info| info.config)
            .and_then(|config| config.params)
            .and_then(|params| params.vectors_config)
            .and_then(|vectors| match vectors.config {
                Some(VectorsConfigKind::ParamsMap(map)) => {
                    map.map.get(DENSE_VECTOR).map(|params| params.size)
                }
                _ => None,
            })
            .ok_or_else(|| {
                Error::Engine(format!(
                    "Qdrant collection {} has no {DENSE_VECTOR:?} vector",
                    self.name(collection)
                ))
            })?;
        let size = usize::try_from(size).map_err(Error::engine)?;
        self.dimensions.write().unwrap_or_else(PoisonError::into_inner).insert(collection, size);
        Ok(Some(size))
    }

    async fn existing_dimensions(&self, collection: IndexTarget) -> Result<usize> {
        self.dimensions(collection).await?.ok_or(Error::UnknownCollection(collection))
    }

    async fn create_payload_indexes(&self, name: &str) -> Result<()> {
        let indexes = [
            (schema::TENANT, FieldType::Keyword),
            (schema::COLLECTION, FieldType::Keyword),
            (schema::DOCUMENT, FieldType::Keyword),
            (schema::ACL, FieldType::Keyword),
            (schema::VERSION, FieldType::Integer),
        ];
        for (field, kind) in indexes {
            let request = CreateFieldIndexCollectionBuilder::new(name, field, kind).wait(true);
            self.client.create_field_index(request).await.map_err(engine_error)?;
        }
        Ok(())
    }

    async fn query(&self, request: QueryPointsBuilder) -> Result<Vec<ScoredPoint>> {
        Ok(self.client.query(request).await.map_err(query_error)?.result)
    }

    /// The score each of `ids` gets from one nearest query, for ids it can
    /// score at all (a sparse query scores only points sharing a term).
    async fn branch_scores(
        &self,
        name: &str,
        query: VectorInput,
        using: &str,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, f32>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let only_ids = QFilter::must([qdrant_client::qdrant::Condition::has_id(
            ids.iter().map(|id| PointId::from(id.to_string())),
        )]);
        let request = QueryPointsBuilder::new(name)
            .query(Query::new_nearest(query))
            .using(using)
            .filter(only_ids)
            .limit(ids.len() as u64)
            .with_payload(false);
        self.query(request).await?.into_iter().map(|point| Ok((point_uuid(point.id)?, point.score))).collect()
    }
}

#[async_trait]
impl VectorIndex for QdrantServerIndex {
    async fn create_collection(&self, spec: &CollectionIndexSpec) -> ragd_core::Result<()> {
        let collection = spec.target;
        if spec.dimensions == 0 {
            return Err(Error::InvalidPoint("a collection needs at least one vector dimension".into()).into());
        }
        spec.settings.validate()?;
        if let Some(existing) = self.dimensions(collection).await? {
            if existing != spec.dimensions {
                return Err(
                    Error::DimensionsConflict { collection, existing, requested: spec.dimensions }.into()
                );
            }
            return Ok(());
        }
        let name = self.name(collection);
        let settings = &spec.settings;
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(
            DENSE_VECTOR,
            VectorParamsBuilder::new(spec.dimensions as u64, Distance::Cosine).on_disk(settings.on_disk),
        );
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            SPARSE_VECTOR,
            SparseVectorParamsBuilder::default()
                .modifier(Modifier::Idf)
                .index(SparseIndexConfigBuilder::default().on_disk(settings.on_disk)),
        );
        let mut request = CreateCollectionBuilder::new(&name)
            .vectors_config(vectors)
            .sparse_vectors_config(sparse)
            .on_disk_payload(settings.on_disk)
            .hnsw_config(
                HnswConfigDiffBuilder::default()
                    .m(self.config.hnsw_m)
                    .ef_construct(self.config.hnsw_ef_construct),
            );
        if let Some(shards) = settings.shard_number {
            request = request.shard_number(shards);
        }
        if let Some(replicas) = settings.replication_factor {
            request = request.replication_factor(replicas);
        }
        if settings.quantization == Quantization::Int8 {
            request = request.quantization_config(
                ScalarQuantizationBuilder::default().r#type(QuantizationType::Int8.into()).always_ram(true),
            );
        }
        match self.client.create_collection(request).await {
            Ok(_) => {}
            // Another process created it between the check and the request.
            Err(err) if is_already_exists(&err) => {}
            Err(err) => return Err(creation_error(err).into()),
        }
        self.create_payload_indexes(&name).await?;
        self.dimensions.write().unwrap_or_else(PoisonError::into_inner).insert(collection, spec.dimensions);
        tracing::info!(%collection, qdrant_collection = %name, dimensions = spec.dimensions, ?settings, "created Qdrant collection");
        Ok(())
    }

    async fn drop_collection(&self, collection: IndexTarget) -> ragd_core::Result<()> {
        self.dimensions.write().unwrap_or_else(PoisonError::into_inner).remove(&collection);
        match self.client.delete_collection(self.name(collection)).await {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(engine_error(err).into()),
        }
        tracing::info!(%collection, "dropped Qdrant collection");
        Ok(())
    }

    async fn upsert(&self, collection: IndexTarget, points: Vec<IndexPoint>) -> ragd_core::Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let dimensions = self.existing_dimensions(collection).await?;
        let count = points.len();
        let started = Instant::now();
        let points =
            points.into_iter().map(|point| to_point(point, dimensions)).collect::<Result<Vec<_>>>()?;
        let request = UpsertPointsBuilder::new(self.name(collection), points).wait(true).ordering(strong());
        self.client.upsert_points(request).await.map_err(|err| write_error(err, collection))?;
        tracing::debug!(%collection, points = count, elapsed_ms = started.elapsed().as_millis() as u64, "upserted points");
        Ok(())
    }

    async fn delete_document(
        &self,
        collection: IndexTarget,
        document: DocumentId,
        keep_version: Option<i64>,
    ) -> ragd_core::Result<()> {
        self.existing_dimensions(collection).await?;
        let request = DeletePointsBuilder::new(self.name(collection))
            .points(filter::document_filter(document, keep_version))
            .wait(true)
            .ordering(strong());
        self.client.delete_points(request).await.map_err(|err| write_error(err, collection))?;
        tracing::debug!(%collection, %document, ?keep_version, "deleted document points");
        Ok(())
    }

    async fn search(&self, query: &HybridQuery) -> ragd_core::Result<Vec<IndexHit>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let dimensions = self.existing_dimensions(query.target).await?;
        if query.mode != SearchMode::Sparse && query.dense.len() != dimensions {
            return Err(Error::InvalidQuery(format!(
                "the dense query has {} dimensions; the collection has {dimensions}",
                query.dense.len()
            ))
            .into());
        }
        let (indices, values) = schema::checked_sparse(&query.sparse).map_err(Error::InvalidQuery)?;
        let name = self.name(query.target);
        let scope = filter::search_filter(query)?;
        let dense = || VectorInput::new_dense(query.dense.clone());
        let sparse = || VectorInput::new_sparse(indices.clone(), values.clone());
        let nearest = |input: VectorInput, using: &str| {
            QueryPointsBuilder::new(&name)
                .query(Query::new_nearest(input))
                .using(using)
                .filter(scope.clone())
                .limit(query.limit as u64)
                .with_payload(true)
        };
        let started = Instant::now();
        let hits = match query.mode {
            SearchMode::Dense => {
                to_hits(self.query(nearest(dense(), DENSE_VECTOR)).await?, |_, score| (Some(score), None))?
            }
            SearchMode::Sparse => {
                to_hits(self.query(nearest(sparse(), SPARSE_VECTOR)).await?, |_, score| (None, Some(score)))?
            }
            SearchMode::Hybrid => {
                let branch = |input: VectorInput, using: &str| {
                    PrefetchQueryBuilder::default()
                        .query(Query::new_nearest(input))
                        .using(using)
                        .filter(scope.clone())
                        .limit(query.candidates as u64)
                };
                let request = QueryPointsBuilder::new(&name)
                    .add_prefetch(branch(dense(), DENSE_VECTOR))
                    .add_prefetch(branch(sparse(), SPARSE_VECTOR))
                    .query(Query::new_rrf(RrfBuilder::default().k(query.rrf_k.unwrap_or(self.config.rrf_k))))
                    .filter(scope.clone())
                    .limit(query.limit as u64)
                    .with_payload(true);
                let points = self.query(request).await?;
                let ids =
                    points.iter().map(|point| point_uuid(point.id.clone())).collect::<Result<Vec<_>>>()?;
                let dense_scores = self.branch_scores(&name, dense(), DENSE_VECTOR, &ids).await?;
                let sparse_scores = self.branch_scores(&name, sparse(), SPARSE_VECTOR, &ids).await?;
                to_hits(points, |id, _| (dense_scores.get(id).copied(), sparse_scores.get(id).copied()))?
            }
        };
        tracing::debug!(
            collection = %query.target,
            mode = ?query.mode,
            limit = query.limit,
            candidates = query.candidates,
            filters = query.filter.must.len(),
            acl = query.principals.is_some(),
            hits = hits.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "searched Qdrant collection"
        );
        Ok(hits)
    }

    async fn chunks(
        &self,
        collection: IndexTarget,
        document: DocumentId,
        version: i64,
        indices: &[u32],
    ) -> ragd_core::Result<Vec<ChunkPayload>> {
        let wanted = indices.iter().copied().collect::<HashSet<_>>();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        self.existing_dimensions(collection).await?;
        let request = ScrollPointsBuilder::new(self.name(collection))
            .filter(filter::chunks_filter(document, version, indices))
            .limit(u32::try_from(wanted.len()).unwrap_or(u32::MAX))
            .with_payload(true)
            .with_vectors(false);
        let records = self.client.scroll(request).await.map_err(engine_error)?.result;
        let mut chunks =
            records.into_iter().map(|record| chunk_payload(record.payload)).collect::<Result<Vec<_>>>()?;
        chunks.sort_by_key(|chunk| chunk.chunk_index);
        Ok(chunks)
    }

    async fn count(&self, collection: IndexTarget) -> ragd_core::Result<u64> {
        self.existing_dimensions(collection).await?;
        let request = CountPointsBuilder::new(self.name(collection)).exact(true);
        let response = self.client.count(request).await.map_err(engine_error)?;
        Ok(response.result.map_or(0, |result| result.count))
    }
}

/// Writes applied in the same order on every replica, so a new version's
/// points and the old version's deletion cannot be seen out of order.
fn strong() -> WriteOrdering {
    WriteOrdering { r#type: WriteOrderingType::Strong.into() }
}

fn to_point(point: IndexPoint, dimensions: usize) -> Result<PointStruct> {
    if point.dense.len() != dimensions {
        return Err(Error::InvalidPoint(format!(
            "point {} has a {}-dimensional dense vector; the collection has {dimensions}",
            point.id,
            point.dense.len()
        )));
    }
    let (indices, values) = schema::checked_sparse(&point.sparse)
        .map_err(|problem| Error::InvalidPoint(format!("point {}: {problem}", point.id)))?;
    let vectors = NamedVectors::default()
        .add_vector(DENSE_VECTOR, Vector::new_dense(point.dense))
        .add_vector(SPARSE_VECTOR, Vector::new_sparse(indices, values));
    let payload = Payload::from(schema::payload_to_json(&point.payload));
    Ok(PointStruct::new(point.id.to_string(), vectors, payload))
}

fn to_hits(
    points: Vec<ScoredPoint>,
    branch_scores: impl Fn(&Uuid, f32) -> (Option<f32>, Option<f32>),
) -> Result<Vec<IndexHit>> {
    points
        .into_iter()
        .map(|point| {
            let id = point_uuid(point.id)?;
            let (dense_score, sparse_score) = branch_scores(&id, point.score);
            Ok(IndexHit {
                id,
                score: point.score,
                dense_score,
                sparse_score,
                rerank_score: None,
                payload: chunk_payload(point.payload)?,
            })
        })
        .collect()
}

fn chunk_payload(payload: HashMap<String, qdrant_client::qdrant::Value>) -> Result<ChunkPayload> {
    if payload.is_empty() {
        return Err(Error::Engine("a point came back without its payload".into()));
    }
    schema::payload_from_json(Payload::from(payload).into())
}

fn point_uuid(id: Option<PointId>) -> Result<Uuid> {
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(text)) => text.parse().map_err(Error::engine),
        other => Err(Error::Engine(format!("point id {other:?} is not a uuid"))),
    }
}

fn status(err: &QdrantError) -> Option<&tonic::Status> {
    match err {
        QdrantError::ResponseError { status } | QdrantError::ResourceExhaustedError { status, .. } => {
            Some(status)
        }
        _ => None,
    }
}

fn is_not_found(err: &QdrantError) -> bool {
    status(err).is_some_and(|status| status.code() == tonic::Code::NotFound)
}

fn is_already_exists(err: &QdrantError) -> bool {
    status(err).is_some_and(|status| {
        status.code() == tonic::Code::AlreadyExists || status.message().contains("already exists")
    })
}

fn engine_error(err: QdrantError) -> Error {
    match status(&err).map(tonic::Status::code) {
        Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted) => {
            Error::Unavailable(err.to_string())
        }
        _ => Error::Engine(err.to_string()),
    }
}

fn creation_error(err: QdrantError) -> Error {
    match status(&err) {
        // Shard and replica counts the cluster cannot satisfy.
        Some(status) if status.code() == tonic::Code::InvalidArgument => {
            Error::Config(format!("Qdrant refused the collection settings: {}", status.message()))
        }
        _ => engine_error(err),
    }
}

fn write_error(err: QdrantError, collection: IndexTarget) -> Error {
    if is_not_found(&err) {
        return Error::UnknownCollection(collection);
    }
    engine_error(err)
}

/// Queries are validated before they are sent, so the server's
/// InvalidArgument means a filter it could not apply to the stored payloads.
fn query_error(err: QdrantError) -> Error {
    match status(&err) {
        Some(status) if status.code() == tonic::Code::InvalidArgument => {
            Error::InvalidQuery(format!("Qdrant refused the query: {}", status.message()))
        }
        _ => engine_error(err),
    }
}

#[cfg(test)]
mod tests;
