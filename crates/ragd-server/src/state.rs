//! The one place where the application state is assembled.

use std::sync::Arc;

use ragd_core::{ErrorKind, Generator, VectorIndex};
use ragd_generate::prompt::PromptConfig;
use ragd_generate::{LocalGguf, LocalGgufConfig};
use ragd_jobs::WorkerHandle;
use ragd_retrieve::Retriever;
use ragd_store::{BlobStore, Store};
use serde::Deserialize;

use crate::auth::Guard;
use crate::error::ApiResult;

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
    /// Most documents one NDJSON upload may add; further lines are
    /// rejected. (Multipart uploads are bounded by `max_body_bytes` and
    /// the archive limits.)
    pub max_batch_documents: usize,
    /// Largest `top_k` a search, query or chat may ask for.
    pub max_top_k: usize,
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
            max_batch_documents: 100_000,
            max_top_k: 100,
        }
    }
}

/// Who may call the API, and how often.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// An operator admin key set by configuration (`RAGD_ADMIN_KEY` or
    /// `RAGD_AUTH__ADMIN_KEY`); empty: none, and the first start makes one
    /// in the database and prints it.
    pub admin_key: String,
    /// Requests per second each key may make, on average; 0 turns rate
    /// limiting off.
    pub rate_limit_per_second: u32,
    /// Requests a key may make at once before the rate applies.
    pub rate_limit_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { admin_key: String::new(), rate_limit_per_second: 50, rate_limit_burst: 100 }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let admin_key = if self.admin_key.is_empty() { "<unset>" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("admin_key", &admin_key)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .finish()
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
        Self {
            top_k: 5,
            max_tokens: 256,
            temperature: 0.0,
            history_turns_in_query: 1,
            prompt: PromptConfig::default(),
        }
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
    /// Where the models that jobs read and chats name are found.
    pub models: ragd_jobs::ModelDirs,
    /// The settings of the GGUF generators a chat names other than
    /// `generator` (their path and name aside).
    pub local_generation: ragd_generate::LocalGgufConfig,
    pub embedder_model: String,
    pub dimensions: usize,
    pub server: ServerConfig,
    pub answer: AnswerConfig,
    pub auth: AuthConfig,
}

#[derive(Clone)]
pub struct AppState {
    parts: Arc<AppParts>,
    pub(crate) guard: Arc<Guard>,
    /// The last other GGUF generator a chat named, by name.
    pub(crate) other_generator: Arc<tokio::sync::Mutex<Option<(String, Arc<dyn Generator>)>>>,
}

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        let guard = Arc::new(Guard::new(&parts.auth));
        Self { parts: Arc::new(parts), guard, other_generator: Arc::default() }
    }
}

impl AppState {
    /// The configured generator, or another GGUF generator registered in
    /// the models directory, by name; `None` when neither is called `name`.
    /// Another generator is loaded on first use with the configured one's
    /// settings, and only the latest one asked for stays loaded, so trying
    /// many models costs load time, not memory.
    pub(crate) async fn generator_named(&self, name: &str) -> ApiResult<Option<Arc<dyn Generator>>> {
        if name == self.generator.model() {
            return Ok(Some(self.generator.clone()));
        }
        let Some(path) = self.models.generator(name) else { return Ok(None) };
        let mut loaded = self.other_generator.lock().await;
        if let Some((_, generator)) = loaded.as_ref().filter(|(loaded, _)| loaded == name) {
            return Ok(Some(generator.clone()));
        }
        let config =
            LocalGgufConfig { model_path: path, name: Some(name.to_owned()), ..self.local_generation.clone() };
        let generator = tokio::task::spawn_blocking(move || LocalGguf::load(&config))
            .await
            .map_err(|e| ragd_core::Error::with_source(ErrorKind::Internal, "loading a model failed", e))?
            .map_err(ragd_core::Error::from)?;
        let generator: Arc<dyn Generator> = Arc::new(generator);
        *loaded = Some((name.to_owned(), generator.clone()));
        Ok(Some(generator))
    }

    /// The names [`AppState::generator_named`] finds: the configured
    /// generator's, then the registered GGUF generators'.
    pub(crate) fn generator_names(&self) -> Vec<String> {
        let mut names = vec![self.generator.model().to_owned()];
        names.extend(self.models.registered_generators());
        names
    }

    /// Whether `name` is a generator [`AppState::generator_named`] finds,
    /// without loading it.
    pub(crate) fn has_generator(&self, name: &str) -> bool {
        name == self.generator.model() || self.models.generator(name).is_some()
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.parts
    }
}
