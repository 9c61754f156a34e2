//! Documents, chunks and the encoders that turn chunk text into vectors.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::index::SparseVector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentStatus {
    Queued,
    Processing,
    Ready,
    Failed,
}

impl DocumentStatus {
    pub const ALL: [DocumentStatus; 4] = [Self::Queued, Self::Processing, Self::Ready, Self::Failed];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for DocumentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DocumentStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| Error::invalid(format!("unknown document status {s:?}")))
    }
}

/// A piece of a document sized for the embedder, with the context it needs
/// to stand on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub index: u32,
    pub text: String,
    pub heading_path: Vec<String>,
    pub token_count: usize,
    /// 1-based page the chunk starts on, in paginated formats (PDF).
    pub page: Option<u32>,
}

impl Chunk {
    pub fn heading_path_text(&self) -> String {
        self.heading_path.join(" > ")
    }

    /// What is embedded: the title and heading path give a chunk the context
    /// its own text often lacks ("it", "this setting").
    pub fn embedding_text(&self, title: &str) -> String {
        embedding_text(title, &self.heading_path_text(), &self.text)
    }
}

/// A chunk's text with its title and heading path (`A > B`) above it, as
/// ingestion embeds it and a reindex embeds it again.
pub fn embedding_text(title: &str, heading_path: &str, text: &str) -> String {
    let mut out = String::with_capacity(title.len() + heading_path.len() + text.len() + 2);
    for part in [title, heading_path] {
        if !part.is_empty() {
            out.push_str(part);
            out.push('\n');
        }
    }
    out.push_str(text);
    out
}

/// A dense text embedder. Calls are CPU-bound and blocking: run them off the
/// async threads.
pub trait Embedder: Send + Sync {
    fn model(&self) -> &str;
    fn dimensions(&self) -> usize;
    fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
    fn embed_query(&self, text: &str) -> Result<Vec<f32>>;
}

/// Embedders by model name: the configured one, and models trained or
/// quantized here (loading reads model files: blocking).
pub trait EmbedderSource: Send + Sync {
    fn embedder(&self, name: &str) -> Result<Arc<dyn Embedder>>;
}

/// Sparse lexical weights (BM25 term frequencies; the index applies IDF).
pub trait SparseEncoder: Send + Sync {
    fn encode_document(&self, text: &str) -> SparseVector;
    fn encode_query(&self, text: &str) -> SparseVector;
}

/// Scores how well passages answer a query by reading each pair together (a
/// cross-encoder); higher is more relevant. Calls are CPU-bound and
/// blocking: run them off the async threads.
pub trait Reranker: Send + Sync {
    fn model(&self) -> &str;
    /// One score per passage, in the passages' order.
    fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>>;
}

/// Rerankers by model name, loaded on first use (loading reads model files:
/// blocking).
pub trait RerankerSource: Send + Sync {
    fn reranker(&self, name: &str) -> Result<Arc<dyn Reranker>>;
}
