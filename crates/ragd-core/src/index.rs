//! The vector index boundary: what is stored per chunk and how it is queried.
//! Implemented by `ragd-index` (Qdrant Edge in-process, Qdrant server).

use async_trait::async_trait;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::Result;
use crate::filter::Filter;
use crate::ids::{CollectionId, DocumentId, TenantId};

/// A sparse vector of term weights; `indices` are term ids, unique and
/// matched with `values` by position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// Everything retrieval needs about a chunk without a database round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPayload {
    pub tenant: TenantId,
    pub collection: CollectionId,
    pub document: DocumentId,
    pub version: i64,
    pub chunk_index: u32,
    pub title: String,
    /// `Guide > Install > Linux`: the headings the chunk sits under.
    pub heading_path: String,
    /// 1-based page the chunk starts on, in paginated formats.
    pub page: Option<u32>,
    pub text: String,
    pub metadata: Map<String, Value>,
    /// Principals allowed to see the chunk; empty means the whole tenant.
    pub acl: Vec<String>,
}

/// Where a collection's points live. A collection has one searchable
/// generation; `reindex` builds the next one beside it (with another
/// embedder) and swaps, so the engine keeps each generation apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexTarget {
    pub collection: CollectionId,
    pub generation: u32,
}

impl IndexTarget {
    pub fn new(collection: CollectionId, generation: u32) -> Self {
        Self { collection, generation }
    }
}

/// Generation 0 is named by the collection id alone, as before generations
/// existed, so older data directories and Qdrant collections keep working.
impl std::fmt::Display for IndexTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.generation {
            0 => write!(f, "{}", self.collection),
            generation => write!(f, "{}-g{generation}", self.collection),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IndexPoint {
    pub id: Uuid,
    pub dense: Vec<f32>,
    pub sparse: SparseVector,
    pub payload: ChunkPayload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    Dense,
    Sparse,
    /// Dense and sparse candidates fused with reciprocal rank fusion, inside
    /// the index.
    Hybrid,
}

#[derive(Debug, Clone)]
pub struct HybridQuery {
    pub tenant: TenantId,
    /// The generation searched; its collection also scopes the filter.
    pub target: IndexTarget,
    pub dense: Vec<f32>,
    pub sparse: SparseVector,
    pub mode: SearchMode,
    pub limit: usize,
    /// Candidates taken from each branch before fusion.
    pub candidates: usize,
    /// The `k` of reciprocal rank fusion for this query; the backend's
    /// configured one when unset.
    pub rrf_k: Option<u32>,
    pub filter: Filter,
    /// When set, only chunks whose ACL is empty or names one of these
    /// principals match.
    pub principals: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct IndexHit {
    pub id: Uuid,
    /// The score the hits are ordered by (RRF for hybrid).
    pub score: f32,
    /// Cosine similarity to the query, when the dense branch scored the hit.
    pub dense_score: Option<f32>,
    /// BM25 score, when the sparse branch scored the hit.
    pub sparse_score: Option<f32>,
    /// The reranker's score, when a reranker ordered the hit; set by the
    /// query pipeline, never by the index.
    pub rerank_score: Option<f32>,
    pub payload: ChunkPayload,
}

#[derive(Debug, Clone)]
pub struct CollectionIndexSpec {
    pub target: IndexTarget,
    pub dimensions: usize,
    pub settings: IndexSettings,
}

/// How a collection is laid out in the vector engine, chosen when it is
/// created. Shards and replicas exist only in a Qdrant cluster; the
/// embedded engine refuses more than one of each.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexSettings {
    /// Shards the collection is split into; the engine's default when unset.
    #[serde(deserialize_with = "crate::numbers::whole")]
    pub shard_number: Option<u32>,
    /// Copies of each shard; the engine's default when unset.
    #[serde(deserialize_with = "crate::numbers::whole")]
    pub replication_factor: Option<u32>,
    /// Dense vectors, the sparse index and payloads memory-mapped from disk
    /// instead of held in RAM, so the index's size does not bound the
    /// server's memory. (The embedded engine keeps payloads on disk anyway.)
    pub on_disk: bool,
    pub quantization: Quantization,
}

/// Compression of the dense vectors; searches score on the compressed
/// vectors and rescore the best candidates with the originals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    #[default]
    None,
    /// Scalar quantization to 8-bit integers (4x smaller, kept in RAM).
    Int8,
}

impl IndexSettings {
    /// Rejects counts of zero, which no engine accepts.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("shard_number", self.shard_number), ("replication_factor", self.replication_factor)] {
            if value == Some(0) {
                return Err(crate::Error::new(crate::ErrorKind::InvalidInput, format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

#[async_trait]
pub trait VectorIndex: Send + Sync {
    /// Creates the generation's storage; does nothing if it exists.
    async fn create_collection(&self, spec: &CollectionIndexSpec) -> Result<()>;

    /// Drops the generation and all its points; does nothing if it is absent.
    async fn drop_collection(&self, target: IndexTarget) -> Result<()>;

    /// Inserts or overwrites points by id.
    async fn upsert(&self, target: IndexTarget, points: Vec<IndexPoint>) -> Result<()>;

    /// Deletes the document's points, except those of `keep_version`.
    async fn delete_document(
        &self,
        target: IndexTarget,
        document: DocumentId,
        keep_version: Option<i64>,
    ) -> Result<()>;

    async fn search(&self, query: &HybridQuery) -> Result<Vec<IndexHit>>;

    /// The chunks of one document version with the given indices, in index
    /// order (for widening a hit with its neighbours).
    async fn chunks(
        &self,
        target: IndexTarget,
        document: DocumentId,
        version: i64,
        indices: &[u32],
    ) -> Result<Vec<ChunkPayload>>;

    /// Number of points in the generation.
    async fn count(&self, target: IndexTarget) -> Result<u64>;
}
