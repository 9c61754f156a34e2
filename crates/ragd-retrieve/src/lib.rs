//! The query pipeline: encode the query (dense and sparse), run one hybrid
//! query in the index with the tenant, collection, ACL and metadata filter
//! applied inside it, then widen hits with their neighbouring chunks.
//!
//! Invariant: works only through the `ragd-core` traits; it never names an
//! engine (ONNX, Qdrant) and never formats anything for HTTP.

mod expand;

use std::sync::Arc;
use std::time::Instant;

use ragd_core::{
    CollectionId, Embedder, Filter, HybridQuery, IndexHit, SearchMode, SparseEncoder, TenantId,
    TopK, VectorIndex,
};
use serde::Deserialize;
use tracing::Instrument;

pub use expand::{ContextPassage, expand_hits};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("query text is empty")]
    EmptyQuery,
    #[error("query is {len} characters long; the limit is {max}")]
    QueryTooLong { len: usize, max: usize },
    #[error("candidates ({candidates}) must be between top_k ({top_k}) and {max}")]
    Candidates { candidates: usize, top_k: usize, max: usize },
    #[error("rrf_k ({rrf_k}) must be between 1 and {max}")]
    RrfK { rrf_k: u32, max: u32 },
    #[error("the encoder task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Core(#[from] ragd_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for ragd_core::Error {
    fn from(error: Error) -> Self {
        use ragd_core::ErrorKind;
        match error {
            Error::Core(inner) => inner,
            Error::Join(join) => ragd_core::Error::with_source(ErrorKind::Internal, "query encoding failed", join),
            invalid => ragd_core::Error::invalid(invalid.to_string()),
        }
    }
}

/// Defaults of the query pipeline; a request may override them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalConfig {
    /// Candidates each branch (dense, sparse) contributes before fusion.
    pub candidates: usize,
    /// Neighbouring chunks on each side added to a hit for generation.
    pub neighbour_window: u32,
    /// Longest accepted query, in characters.
    pub max_query_chars: usize,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self { candidates: 50, neighbour_window: 1, max_query_chars: 4096 }
    }
}

/// The most candidates a branch may contribute before fusion.
pub const MAX_CANDIDATES: usize = 2000;
/// The largest `k` of reciprocal rank fusion a request may ask for.
pub const MAX_RRF_K: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub tenant: TenantId,
    pub collection: CollectionId,
    pub query: String,
    pub top_k: TopK,
    pub mode: SearchMode,
    pub filter: Filter,
    pub candidates: Option<usize>,
    /// The `k` of reciprocal rank fusion; the index's configured one when unset.
    pub rrf_k: Option<u32>,
    pub principals: Option<Vec<String>>,
}

/// Wall time of each stage, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimings {
    pub encode_ms: f64,
    pub search_ms: f64,
}

#[derive(Debug, Clone)]
pub struct Retrieved {
    pub hits: Vec<IndexHit>,
    pub timings: StageTimings,
}

#[derive(Clone)]
pub struct Retriever {
    embedder: Arc<dyn Embedder>,
    sparse: Arc<dyn SparseEncoder>,
    index: Arc<dyn VectorIndex>,
    config: RetrievalConfig,
}

impl Retriever {
    pub fn new(
        embedder: Arc<dyn Embedder>,
        sparse: Arc<dyn SparseEncoder>,
        index: Arc<dyn VectorIndex>,
        config: RetrievalConfig,
    ) -> Self {
        Self { embedder, sparse, index, config }
    }

    pub fn config(&self) -> &RetrievalConfig {
        &self.config
    }

    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    pub async fn search(&self, request: SearchRequest) -> Result<Retrieved> {
        let query = request.query.trim().to_owned();
        if query.is_empty() {
            return Err(Error::EmptyQuery);
        }
        let len = query.chars().count();
        if len > self.config.max_query_chars {
            return Err(Error::QueryTooLong { len, max: self.config.max_query_chars });
        }
        let top_k = request.top_k.get();
        let candidates = request.candidates.unwrap_or(self.config.candidates.max(top_k));
        if candidates < top_k || candidates > MAX_CANDIDATES {
            return Err(Error::Candidates { candidates, top_k, max: MAX_CANDIDATES });
        }
        if let Some(rrf_k) = request.rrf_k {
            if !(1..=MAX_RRF_K).contains(&rrf_k) {
                return Err(Error::RrfK { rrf_k, max: MAX_RRF_K });
            }
        }

        let started = Instant::now();
        let (embedder, sparse, mode) = (self.embedder.clone(), self.sparse.clone(), request.mode);
        let text = query.clone();
        // Encoding is CPU-bound model inference: keep it off the async threads.
        let (dense, sparse_vector) = tokio::task::spawn_blocking(move || -> ragd_core::Result<_> {
            let dense = match mode {
                SearchMode::Sparse => Vec::new(),
                _ => embedder.embed_query(&text)?,
            };
            let sparse_vector = match mode {
                SearchMode::Dense => Default::default(),
                _ => sparse.encode_query(&text),
            };
            Ok((dense, sparse_vector))
        })
        .instrument(tracing::info_span!("encode_query", mode = ?mode))
        .await??;
        let encode_ms = started.elapsed().as_secs_f64() * 1e3;

        let started = Instant::now();
        let hybrid = HybridQuery {
            tenant: request.tenant,
            collection: request.collection,
            dense,
            sparse: sparse_vector,
            mode,
            limit: top_k,
            candidates,
            rrf_k: request.rrf_k,
            filter: request.filter,
            principals: request.principals,
        };
        let hits = self
            .index
            .search(&hybrid)
            .instrument(tracing::info_span!("index_search", top_k, candidates))
            .await?;
        let search_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(hits = hits.len(), encode_ms, search_ms, "retrieved");
        Ok(Retrieved { hits, timings: StageTimings { encode_ms, search_ms } })
    }

    /// Widens each hit with `window` chunks on either side, merging hits of
    /// the same document that touch so no text is given twice.
    pub async fn expand(&self, hits: &[IndexHit], window: u32) -> Result<Vec<ContextPassage>> {
        Ok(expand_hits(self.index.as_ref(), hits, window)
            .instrument(tracing::info_span!("expand_context", hits = hits.len(), window))
            .await?)
    }
}
