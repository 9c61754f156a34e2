//! The whole configuration: `config/ragd.toml` (or `--config`), then `RAGD_*`
//! environment variables (`RAGD_SERVER__LISTEN=...`: sections and keys joined
//! by `__`), then command-line flags. Unknown keys are errors; everything is
//! validated here, once, and each crate receives only its own typed section.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where all state lives: the SQLite file, blobs, index shards.
    pub data_dir: PathBuf,
    pub server: ragd_server::ServerConfig,
    pub auth: ragd_server::AuthConfig,
    pub store: StoreSection,
    pub models: ModelsSection,
    pub embedding: EmbeddingSection,
    pub sparse: ragd_embed::SparseConfig,
    pub index: IndexSection,
    pub chunking: ragd_ingest::ChunkingConfig,
    pub retrieval: ragd_retrieve::RetrievalConfig,
    pub generation: GenerationSection,
    pub answer: ragd_server::AnswerConfig,
    pub jobs: ragd_jobs::JobsConfig,
    pub memory: crate::memory::MemorySection,
    pub log: LogSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            server: Default::default(),
            auth: Default::default(),
            store: Default::default(),
            models: Default::default(),
            embedding: Default::default(),
            sparse: Default::default(),
            index: Default::default(),
            chunking: Default::default(),
            retrieval: Default::default(),
            generation: Default::default(),
            answer: Default::default(),
            jobs: Default::default(),
            memory: Default::default(),
            log: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite://PATH` or `postgres://...`; empty means `<data_dir>/ragd.sqlite`.
    pub url: String,
    pub max_connections: Option<u32>,
    /// Uploaded originals; empty means `<data_dir>/blobs`. Every process on
    /// one database must see the same directory: the API writes, workers read.
    pub blobs_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSection {
    pub dir: PathBuf,
    pub manifest: PathBuf,
    /// Check every model file's sha256 at start.
    pub verify_checksums: bool,
}

impl Default for ModelsSection {
    fn default() -> Self {
        Self { dir: PathBuf::from("models"), manifest: PathBuf::from("config/models.toml"), verify_checksums: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingSection {
    /// A model of kind `embedder` in the manifest.
    pub model: String,
    /// The manifest entry holding `libonnxruntime.so`.
    pub runtime: String,
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads; 0 lets it choose.
    pub threads: usize,
    /// Keep ONNX Runtime's memory arena between calls (see `EmbedConfig`).
    pub memory_arena: bool,
}

impl Default for EmbeddingSection {
    fn default() -> Self {
        Self {
            model: "minilm-l6-onnx".into(),
            runtime: "onnxruntime".into(),
            batch_size: 8,
            threads: 0,
            memory_arena: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexSection {
    /// `edge`: Qdrant Edge shards in-process under `<data_dir>/index`;
    /// `qdrant`: a Qdrant server or cluster at `qdrant.url`.
    pub backend: String,
    pub edge: ragd_index::EdgeIndexConfig,
    pub qdrant: ragd_index::QdrantServerConfig,
}

impl Default for IndexSection {
    fn default() -> Self {
        Self { backend: "edge".into(), edge: Default::default(), qdrant: Default::default() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationSection {
    /// `local` (a GGUF model on candle) or `openai` (any OpenAI-compatible API).
    pub backend: String,
    pub local: LocalGenerationSection,
    pub openai: ragd_generate::OpenAiConfig,
}

impl Default for GenerationSection {
    fn default() -> Self {
        Self { backend: "local".into(), local: Default::default(), openai: Default::default() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalGenerationSection {
    /// A model of kind `generator-gguf` in the manifest.
    pub model: String,
    pub context_tokens: usize,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    /// Convert Q4_1/Q5_x weights to Q8_0 at load: about twice the memory,
    /// much faster on CPUs with AVX2, nearly lossless.
    pub requantize_slow_weights: bool,
}

impl Default for LocalGenerationSection {
    fn default() -> Self {
        Self {
            model: "smollm2-135m-instruct".into(),
            context_tokens: 2048,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            requantize_slow_weights: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `ragd_jobs=debug,info`; `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: "text".into(), filter: "info".into() }
    }
}

/// Command-line values that take precedence over file and environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerOverrides>,
}

#[derive(Debug, Serialize)]
pub struct ServerOverrides {
    pub listen: String,
}

const SECTIONS: &[&str] = &[
    "data_dir",
    "memory",
    "server",
    "auth",
    "store",
    "models",
    "embedding",
    "sparse",
    "index",
    "chunking",
    "retrieval",
    "generation",
    "answer",
    "jobs",
    "log",
];

pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
    let default_file = Path::new("config/ragd.toml");
    let mut figment = Figment::new();
    match file {
        Some(path) if !path.exists() => bail!("config file {} does not exist", path.display()),
        Some(path) => figment = figment.merge(Toml::file(path)),
        None if default_file.exists() => figment = figment.merge(Toml::file(default_file)),
        None => {}
    }
    // Only variables naming a config section are config; others such as
    // RAGD_ADMIN_KEY have their own meaning.
    let env = Env::prefixed("RAGD_").split("__").filter(|key| is_config_key(key.as_str()));
    let mut config: Config = figment
        .merge(env)
        .merge(Serialized::defaults(overrides))
        .extract()
        .context("invalid configuration")?;
    // The short name of RAGD_AUTH__ADMIN_KEY, and like it above the file.
    if let Some(key) = std::env::var("RAGD_ADMIN_KEY").ok().filter(|key| !key.is_empty()) {
        config.auth.admin_key = key;
    }
    config.validate()?;
    Ok(config)
}

/// Whether `key` (an environment variable's name after the prefix, with
/// `__` already turned into `.`; figment lowercases it only later) names a
/// config section or key.
pub fn is_config_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECTIONS.iter().any(|section| key == *section || key.starts_with(&format!("{section}.")))
}

/// A configured admin key is a password chosen by a person: it must at
/// least be too long to guess.
const MIN_ADMIN_KEY_BYTES: usize = 32;

impl Config {
    fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.generation.backend.as_str(), "local" | "openai") {
            bail!("generation.backend must be \"local\" or \"openai\", not {:?}", self.generation.backend);
        }
        if !matches!(self.index.backend.as_str(), "edge" | "qdrant") {
            bail!("index.backend must be \"edge\" or \"qdrant\", not {:?}", self.index.backend);
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be \"text\" or \"json\", not {:?}", self.log.format);
        }
        if self.embedding.batch_size == 0 || self.jobs.embed_batch_size == 0 {
            bail!("batch sizes must be at least 1");
        }
        let admin_key = &self.auth.admin_key;
        if !admin_key.is_empty()
            && (admin_key.len() < MIN_ADMIN_KEY_BYTES || admin_key.chars().any(|c| !c.is_ascii_graphic()))
        {
            bail!("auth.admin_key (RAGD_ADMIN_KEY) must be at least {MIN_ADMIN_KEY_BYTES} printable ASCII characters without spaces");
        }
        let rerank_weight = self.retrieval.rerank_weight;
        if !(rerank_weight > 0.0 && rerank_weight <= 1.0) {
            bail!("retrieval.rerank_weight must be above 0 and at most 1, not {rerank_weight}");
        }
        if self.server.max_top_k == 0 || self.server.max_top_k > ragd_core::TopK::MAX {
            bail!("server.max_top_k must be between 1 and {}", ragd_core::TopK::MAX);
        }
        Ok(())
    }

    pub fn blobs_dir(&self) -> PathBuf {
        if self.store.blobs_dir.as_os_str().is_empty() {
            self.data_dir.join("blobs")
        } else {
            self.store.blobs_dir.clone()
        }
    }

    pub fn store_url(&self) -> String {
        if self.store.url.is_empty() {
            format!("sqlite://{}?mode=rwc", self.data_dir.join("ragd.sqlite").display())
        } else {
            self.store.url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_keys_are_recognised_in_any_case() {
        for key in ["SERVER.LISTEN", "log.filter", "GENERATION.OPENAI.API_KEY", "DATA_DIR"] {
            assert!(is_config_key(key), "{key}");
        }
        for key in ["ADMIN_KEY", "TEST_SKIP_POSTGRES", "SERVERX.LISTEN", "WHEEL_CACHE"] {
            assert!(!is_config_key(key), "{key}");
        }
    }

    #[test]
    fn the_shipped_config_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/ragd.toml");
        let from_file: Config = Figment::new().merge(Toml::file(&path)).extract().expect("config/ragd.toml parses");
        assert_eq!(format!("{from_file:?}"), format!("{:?}", Config::default()), "config/ragd.toml documents every default");
    }
}
