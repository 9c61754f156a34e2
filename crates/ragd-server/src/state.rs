//! The one place where the application state is assembled.

use std::sync::Arc;

use ragd_core::{Generator, VectorIndex};
use ragd_generate::prompt::PromptConfig;
use ragd_jobs::WorkerHandle;
use ragd_retrieve::Retriever;
use ragd_store::{BlobStore, Store};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the API listens on; port 0 picks a free port.
    pub listen: String,
    /// Largest JSON or multipart request body, in bytes. NDJSON bulk uploads
    /// are streamed and bounded per line by `max_document_bytes` instead.
    pub max_body_bytes: usize,
    /// Largest single uploaded document, in bytes.
    pub max_document_bytes: usize,
    /// Most documents listed per page.
    pub max_page_size: u32,
    /// Most files taken from one uploaded ZIP archive.
    pub max_archive_files: usize,
    /// Most bytes one uploaded ZIP archive may expand to (a zip-bomb guard;
    /// each file is also bounded by `max_document_bytes`).
    pub max_archive_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 64 * 1024 * 1024,
            max_document_bytes: 32 * 1024 * 1024,
            max_page_size: 500,
            max_archive_files: 10_000,
            max_archive_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Defaults of `/query`; a request may override the numbers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerConfig {
    pub top_k: usize,
    pub max_tokens: u32,
    pub temperature: f32,
    /// Earlier user turns of a chat searched together with the last one.
    pub history_turns_in_query: usize,
    pub prompt: PromptConfig,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self { top_k: 5, max_tokens: 256, temperature: 0.0, history_turns_in_query: 1, prompt: PromptConfig::default() }
    }
}

/// The engines and settings the server is built from; `ragd` constructs
/// them from the configuration.
pub struct AppParts {
    pub store: Store,
    pub blobs: BlobStore,
    pub index: Arc<dyn VectorIndex>,
    pub retriever: Retriever,
    pub generator: Arc<dyn Generator>,
    pub workers: WorkerHandle,
    pub embedder_model: String,
    pub dimensions: usize,
    pub server: ServerConfig,
    pub answer: AnswerConfig,
}

#[derive(Clone)]
pub struct AppState(pub(crate) Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}
