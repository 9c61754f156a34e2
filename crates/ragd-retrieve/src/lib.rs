//! The query pipeline: encode the query (dense and sparse), run one hybrid
//! query in the index with the tenant, collection, ACL and metadata filter
//! applied inside it, rerank the top candidates with a cross-encoder when
//! one is asked for, then widen hits with their neighbouring chunks.
//!
//! Invariant: works only through the `ragd-core` traits; it never names an
//! engine (ONNX, Qdrant) and never formats anything for HTTP.

mod expand;

use std::sync::Arc;
use std::time::Instant;

use ragd_core::{
    ChunkPayload, Embedder, EmbedderSource, Filter, HybridQuery, IndexHit, IndexTarget, RerankerSource, SearchMode,
    SparseEncoder, TenantId, TopK, VectorIndex,
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
    #[error("a reranker is asked for, but this server has none")]
    NoRerankers,
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
    /// The trained reranker (a `finetune-reranker` model name) that orders
    /// the top hits of every search; none by default. A collection's
    /// `settings.retrieval.reranker` wins over it.
    pub reranker: Option<String>,
    /// Hits of the hybrid search the reranker reads; the rest keep their
    /// order after them.
    pub rerank_candidates: usize,
    /// How much the reranker's order counts against the hybrid search's:
    /// the candidates are ordered by reciprocal rank fusion of the two
    /// ranks, weighted `rerank_weight` and `1 - rerank_weight`. 1 orders by
    /// the reranker alone; below it, a reranker trained on little data
    /// corrects the first stage instead of overruling it.
    pub rerank_weight: f64,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            candidates: 50,
            neighbour_window: 1,
            max_query_chars: 4096,
            reranker: None,
            rerank_candidates: 30,
            rerank_weight: 1.0,
        }
    }
}

/// The most candidates a branch may contribute before fusion.
pub const MAX_CANDIDATES: usize = 2000;
/// The largest `k` of reciprocal rank fusion a request may ask for.
pub const MAX_RRF_K: u32 = 10_000;
/// The `k` of the fusion of the reranker's ranks with the first stage's,
/// the value of Cormack et al.'s paper: a few places apart count little.
const RERANK_RRF_K: f64 = 60.0;

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub tenant: TenantId,
    /// The collection's searched generation.
    pub target: IndexTarget,
    /// The embedder that generation's vectors came from.
    pub embedder: String,
    pub query: String,
    pub top_k: TopK,
    pub mode: SearchMode,
    pub filter: Filter,
    pub candidates: Option<usize>,
    /// The `k` of reciprocal rank fusion; the index's configured one when unset.
    pub rrf_k: Option<u32>,
    pub principals: Option<Vec<String>>,
    /// The reranker that orders the top hits; `None` skips the stage.
    pub reranker: Option<String>,
}

/// Wall time of each stage, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimings {
    pub encode_ms: f64,
    pub search_ms: f64,
    /// Loading the reranker on first use, and scoring; `None` when skipped.
    pub rerank_ms: Option<f64>,
}

/// What the rerank stage did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reranked {
    pub model: String,
    /// Hits it scored: the top `rerank_candidates` of the hybrid search.
    pub candidates: usize,
}

#[derive(Debug, Clone)]
pub struct Retrieved {
    /// The generation searched, where the hits' neighbours are.
    pub target: IndexTarget,
    pub hits: Vec<IndexHit>,
    pub timings: StageTimings,
    /// `None` when no reranker was asked for.
    pub reranked: Option<Reranked>,
}

/// The text a reranker reads for a chunk: its title, heading path and
/// text, as the embedder does. Training mines its negatives with the same
/// text, so the model sees at training what it sees at search.
pub fn passage_text(payload: &ChunkPayload) -> String {
    [payload.title.as_str(), payload.heading_path.as_str(), payload.text.as_str()]
        .into_iter()
        .filter(|part| !part.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Clone)]
pub struct Retriever {
    embedders: Arc<dyn EmbedderSource>,
    sparse: Arc<dyn SparseEncoder>,
    index: Arc<dyn VectorIndex>,
    rerankers: Option<Arc<dyn RerankerSource>>,
    config: RetrievalConfig,
}

impl Retriever {
    pub fn new(
        embedders: Arc<dyn EmbedderSource>,
        sparse: Arc<dyn SparseEncoder>,
        index: Arc<dyn VectorIndex>,
        config: RetrievalConfig,
    ) -> Self {
        Self { embedders, sparse, index, rerankers: None, config }
    }

    /// Where the rerankers a search names are loaded from.
    pub fn with_rerankers(mut self, rerankers: Arc<dyn RerankerSource>) -> Self {
        self.rerankers = Some(rerankers);
        self
    }

    pub fn config(&self) -> &RetrievalConfig {
        &self.config
    }

    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }

    pub fn sparse(&self) -> &Arc<dyn SparseEncoder> {
        &self.sparse
    }

    /// The embedder of that name, loaded on first use (blocking).
    pub fn embedder(&self, name: &str) -> ragd_core::Result<Arc<dyn Embedder>> {
        self.embedders.embedder(name)
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
        let (embedders, sparse, mode) = (self.embedders.clone(), self.sparse.clone(), request.mode);
        let (text, embedder) = (query.clone(), request.embedder.clone());
        // Encoding is CPU-bound model inference (and a trained embedder's
        // first use loads it): keep it off the async threads.
        let (dense, sparse_vector) = tokio::task::spawn_blocking(move || -> ragd_core::Result<_> {
            let dense = match mode {
                SearchMode::Sparse => Vec::new(),
                _ => embedders.embedder(&embedder)?.embed_query(&text)?,
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

        // The reranker reads `rerank_candidates` hits; a deeper top_k takes
        // the rest in their fused order.
        let limit = match request.reranker {
            Some(_) => top_k.max(self.config.rerank_candidates),
            None => top_k,
        };
        let started = Instant::now();
        let hybrid = HybridQuery {
            tenant: request.tenant,
            target: request.target,
            dense,
            sparse: sparse_vector,
            mode,
            limit,
            candidates: candidates.max(limit),
            rrf_k: request.rrf_k,
            filter: request.filter,
            principals: request.principals,
        };
        let mut hits = self
            .index
            .search(&hybrid)
            .instrument(tracing::info_span!("index_search", top_k, candidates))
            .await?;
        let search_ms = started.elapsed().as_secs_f64() * 1e3;
        let (mut rerank_ms, mut reranked) = (None, None);
        if let Some(model) = request.reranker {
            let started = Instant::now();
            let count = hits.len().min(self.config.rerank_candidates);
            hits = self.rerank(&model, &query, hits, count).instrument(tracing::info_span!("rerank", %model, count)).await?;
            rerank_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            reranked = Some(Reranked { model, candidates: count });
        }
        hits.truncate(top_k);
        tracing::info!(hits = hits.len(), encode_ms, search_ms, rerank_ms, "retrieved");
        Ok(Retrieved { target: request.target, hits, timings: StageTimings { encode_ms, search_ms, rerank_ms }, reranked })
    }

    /// Scores the first `count` hits with the reranker `model` and orders
    /// them by that score, best first; the rest follow in their order.
    async fn rerank(&self, model: &str, query: &str, mut hits: Vec<IndexHit>, count: usize) -> Result<Vec<IndexHit>> {
        let source = self.rerankers.clone().ok_or(Error::NoRerankers)?;
        let (model, query) = (model.to_owned(), query.to_owned());
        let passages: Vec<String> = hits[..count].iter().map(|hit| passage_text(&hit.payload)).collect();
        // Loading and scoring are CPU-bound model work.
        let scores = tokio::task::spawn_blocking(move || -> ragd_core::Result<Vec<f32>> {
            let reranker = source.reranker(&model)?;
            let passages: Vec<&str> = passages.iter().map(String::as_str).collect();
            reranker.score(&query, &passages)
        })
        .await??;
        let order = rerank_order(&scores, self.config.rerank_weight);
        for (hit, score) in hits.iter_mut().zip(scores) {
            hit.rerank_score = Some(score);
        }
        let mut scored: Vec<Option<IndexHit>> = hits.drain(..count).map(Some).collect();
        let reordered: Vec<IndexHit> = order.into_iter().filter_map(|i| scored[i].take()).collect();
        hits.splice(0..0, reordered);
        Ok(hits)
    }

    /// Widens each hit with `window` chunks on either side, merging hits of
    /// the same document that touch so no text is given twice.
    pub async fn expand(&self, target: IndexTarget, hits: &[IndexHit], window: u32) -> Result<Vec<ContextPassage>> {
        Ok(expand_hits(self.index.as_ref(), target, hits, window)
            .instrument(tracing::info_span!("expand_context", hits = hits.len(), window))
            .await?)
    }
}

/// The order of candidates given in first-stage order with the reranker's
/// `scores`: by the weighted reciprocal rank fusion of both ranks, which at
/// `weight` 1 is the reranker's order alone. Ties keep the first-stage order.
fn rerank_order(scores: &[f32], weight: f64) -> Vec<usize> {
    let mut by_score: Vec<usize> = (0..scores.len()).collect();
    by_score.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut fused = vec![0.0; scores.len()];
    for (rerank_rank, &candidate) in by_score.iter().enumerate() {
        fused[candidate] =
            weight / (RERANK_RRF_K + rerank_rank as f64) + (1.0 - weight) / (RERANK_RRF_K + candidate as f64);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| fused[b].total_cmp(&fused[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::rerank_order;

    #[test]
    fn the_reranker_alone_orders_at_full_weight_and_ties_keep_the_first_stage_order() {
        assert_eq!(rerank_order(&[0.1, 0.9, 0.5, 0.9], 1.0), [1, 3, 2, 0]);
        assert!(rerank_order(&[], 0.5).is_empty());
    }

    #[test]
    fn below_full_weight_both_ranks_count() {
        // The reranker turns the first stage's order around.
        let scores = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(rerank_order(&scores, 1.0), [3, 2, 1, 0]);
        // Weighed alike, the two ends tie (the first stage's first stays
        // ahead) and beat the middle, where neither rank is high.
        assert_eq!(rerank_order(&scores, 0.5), [0, 3, 1, 2]);
        // Leaning to the reranker, its order wins; leaning away, the first stage's.
        assert_eq!(rerank_order(&scores, 0.6), [3, 2, 1, 0]);
        assert_eq!(rerank_order(&scores, 0.4), [0, 1, 2, 3]);
        // A candidate both place high beats one only the reranker likes best.
        assert_eq!(rerank_order(&[2.0, 0.0, 1.0, 3.0], 0.5)[0], 0);
    }
}
