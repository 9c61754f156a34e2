//! Per-collection settings: defaults for retrieval and prompt overrides that
//! a request's own values still win over, and the vector index layout chosen
//! when the collection was created. Stored as JSON on the collection row.

use ragd_core::{IndexSettings, TopK};
use ragd_generate::prompt::PromptConfig;
use ragd_store::CollectionRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::rag::MAX_NEIGHBOUR_WINDOW;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CollectionSettings {
    pub retrieval: RetrievalDefaults,
    pub prompt: PromptOverrides,
    pub generation: GenerationDefaults,
    /// Fixed at creation: shards, replicas, on-disk storage, quantization.
    #[schema(schema_with = crate::openapi::index_settings)]
    pub index: IndexSettings,
}

/// Unset fields fall back to the server's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalDefaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 1000)]
    pub top_k: Option<usize>,
    /// At least `top_k`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 2000)]
    pub candidates: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 10000)]
    pub rrf_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "ragd_core::numbers::whole")]
    #[schema(maximum = 5)]
    pub neighbour_window: Option<u32>,
    /// A reranker trained by a `finetune-reranker` job, which orders the top
    /// hits of this collection's searches (the server's
    /// `retrieval.reranker` otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[a-z0-9][a-z0-9._-]*$")]
    pub reranker: Option<String>,
}

impl RetrievalDefaults {
    /// The reranker a search uses: none when the request turns reranking
    /// off, else the collection's, else the server's (`configured`). A
    /// request that asks for reranking where none is configured is refused.
    pub fn reranker(&self, configured: Option<&str>, requested: Option<bool>) -> ApiResult<Option<String>> {
        let chosen = self.reranker.as_deref().or(configured);
        match (requested, chosen) {
            (Some(false), _) => Ok(None),
            (Some(true), None) => Err(ApiError::invalid(
                "rerank is true but no reranker is configured: set the collection's \
                 settings.retrieval.reranker or the server's retrieval.reranker",
            )),
            (_, chosen) => Ok(chosen.map(str::to_owned)),
        }
    }
}

/// Which model writes this collection's grounded answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationDefaults {
    /// The configured generator or a GGUF generator registered in the
    /// models directory (by a `quantize` or `finetune-generator` job, say);
    /// the configured generator when absent. Checked when the settings are
    /// written; a model deleted since then fails the collection's answers
    /// with a 409 that names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub model: Option<String>,
}

/// Replaces the configured prompt's parts for this collection, e.g. a
/// domain-specific system message or another language.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PromptOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 16384, pattern = "\\S")]
    pub system: Option<String>,
    /// Must contain `{sources}` and `{question}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 16384,
        pattern = "\\{sources\\}[\\s\\S]*\\{question\\}|\\{question\\}[\\s\\S]*\\{sources\\}"
    )]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 16384, pattern = "\\S")]
    pub no_context_answer: Option<String>,
}

const MAX_PROMPT_PART: usize = 16 * 1024;

impl PromptOverrides {
    pub fn apply(&self, base: &PromptConfig) -> PromptConfig {
        PromptConfig {
            system: self.system.clone().unwrap_or_else(|| base.system.clone()),
            user: self.user.clone().unwrap_or_else(|| base.user.clone()),
            no_context_answer: self
                .no_context_answer
                .clone()
                .unwrap_or_else(|| base.no_context_answer.clone()),
        }
    }
}

impl CollectionSettings {
    /// Parses and checks settings sent by a client.
    pub fn from_request(value: Value) -> ApiResult<Self> {
        // serde would read a section from an array of its fields in order.
        let objects = value.as_object().is_some_and(|sections| sections.values().all(|v| !v.is_array()));
        if !objects {
            return Err(ApiError::invalid("settings and each of its sections must be JSON objects"));
        }
        let settings: Self =
            serde_json::from_value(value).map_err(|err| ApiError::invalid(format!("settings: {err}")))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The settings stored on a collection; rows written before settings
    /// existed hold `{}`, which is every default.
    pub fn of(collection: &CollectionRecord) -> ApiResult<Self> {
        serde_json::from_value(Value::Object(collection.settings.clone())).map_err(|err| {
            ApiError(ragd_core::Error::with_source(
                ragd_core::ErrorKind::Internal,
                "the collection's stored settings are unreadable",
                err,
            ))
        })
    }

    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    fn validate(&self) -> ApiResult<()> {
        self.index.validate()?;
        let retrieval = &self.retrieval;
        if let Some(top_k) = retrieval.top_k {
            TopK::new(top_k)?;
        }
        if retrieval.candidates == Some(0) || retrieval.rrf_k == Some(0) {
            return Err(ApiError::invalid("settings.retrieval: candidates and rrf_k must be at least 1"));
        }
        if retrieval.rrf_k.is_some_and(|rrf_k| rrf_k > ragd_retrieve::MAX_RRF_K) {
            return Err(ApiError::invalid(format!(
                "settings.retrieval.rrf_k must be at most {}",
                ragd_retrieve::MAX_RRF_K
            )));
        }
        if retrieval.candidates.is_some_and(|candidates| candidates > ragd_retrieve::MAX_CANDIDATES) {
            return Err(ApiError::invalid(format!(
                "settings.retrieval.candidates must be at most {}",
                ragd_retrieve::MAX_CANDIDATES
            )));
        }
        if let Some(reranker) = &retrieval.reranker {
            ragd_jobs::finetune::check_model_name(reranker)
                .map_err(|reason| ApiError::invalid(format!("settings.retrieval.reranker: {reason}")))?;
        }
        if retrieval.neighbour_window.is_some_and(|window| window > MAX_NEIGHBOUR_WINDOW) {
            return Err(ApiError::invalid(format!(
                "settings.retrieval.neighbour_window must be at most {MAX_NEIGHBOUR_WINDOW}"
            )));
        }
        if let (Some(top_k), Some(candidates)) = (retrieval.top_k, retrieval.candidates) {
            if candidates < top_k {
                return Err(ApiError::invalid("settings.retrieval: candidates must be at least top_k"));
            }
        }
        let prompt = &self.prompt;
        for (name, part) in [
            ("system", &prompt.system),
            ("user", &prompt.user),
            ("no_context_answer", &prompt.no_context_answer),
        ] {
            if part.as_ref().is_some_and(|text| text.trim().is_empty() || text.len() > MAX_PROMPT_PART) {
                return Err(ApiError::invalid(format!(
                    "settings.prompt.{name} must be 1-{MAX_PROMPT_PART} bytes of text"
                )));
            }
        }
        if let Some(user) = &prompt.user {
            if !user.contains("{sources}") || !user.contains("{question}") {
                return Err(ApiError::invalid(
                    "settings.prompt.user must contain {sources} and {question}, where the sources and the question go",
                ));
            }
        }
        Ok(())
    }
}
