//! Retrieval-quality evaluation: loads BEIR-format datasets (corpus, queries,
//! graded relevance judgements), scores ranked document lists with the
//! trec_eval / BEIR definitions of nDCG@k, Recall@k and MRR@k, summarises
//! per-stage latencies, and renders the resulting report.
//!
//! Invariant: pure functions over data it is handed (the only I/O is reading
//! the dataset files in [`beir::load`] and [`beir::load_corpus`]). It never
//! depends on an engine crate (embedding, index, store, generation, HTTP) and
//! has no async code: the caller runs retrieval and maps chunks to document
//! ids.

pub mod beir;
mod error;
pub mod metrics;
pub mod report;

pub use beir::{load, load_corpus, BeirDataset, CorpusDoc, Qrels, Query};
pub use error::{Error, Result};
pub use metrics::{dedup_ranked, evaluate, mrr_at, ndcg_at, recall_at, Metrics};
pub use report::{render_table, IngestSummary, Latency, Report};
