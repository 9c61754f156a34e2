//! Any server speaking OpenAI's streaming chat completions (OpenAI, vLLM,
//! TGI, llama.cpp, ragd itself) through async-openai.

use std::sync::Arc;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::retry::OpenAIRetryLayer;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionStreamResponse,
};
use async_openai::Client;
use async_trait::async_trait;
use futures::StreamExt;
use ragd_core::{ChatMessage, ChatRole, GenerationRequest, Generator, TokenStream};
use serde::Deserialize;
use tower::Layer;
use tracing::Instrument;

use crate::error::{Error, Result};

/// Connecting takes at most this long, or the whole timeout if shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REDACTED: &str = "[redacted]";

#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// The API root, with its version: `https://api.openai.com/v1`,
    /// `http://vllm:8000/v1`.
    pub base_url: String,
    /// Sent as a bearer token; kept out of `Debug` output and error messages.
    pub api_key: Option<String>,
    pub model: String,
    /// Longest wait for the upstream to answer, and then between two streamed
    /// chunks (a long answer that keeps streaming is never cut off).
    pub timeout_secs: u64,
    /// Further attempts after a 429 (except `insufficient_quota`), a 5xx or
    /// a failed connection, made before any token was streamed. The wait is
    /// the upstream's `Retry-After`, else 100 ms doubling up to 8 s
    /// (async-openai's retry layer).
    pub max_retries: u32,
    /// The upstream model's context (prompt and answer tokens).
    pub context_tokens: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key: None,
            model: "gpt-4o-mini".to_owned(),
            timeout_secs: 60,
            max_retries: 3,
            context_tokens: 8192,
        }
    }
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| REDACTED))
            .field("model", &self.model)
            .field("timeout_secs", &self.timeout_secs)
            .field("max_retries", &self.max_retries)
            .field("context_tokens", &self.context_tokens)
            .finish()
    }
}

/// A remote OpenAI-compatible chat model.
#[derive(Debug)]
pub struct OpenAiCompatible {
    client: Client<OpenAIConfig>,
    config: Arc<OpenAiConfig>,
}

impl OpenAiCompatible {
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let url = reqwest::Url::parse(&config.base_url)
            .map_err(|e| Error::Config(format!("base_url {:?}: {e}", config.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Config(format!("base_url {:?} is not http(s)", config.base_url)));
        }
        if config.model.trim().is_empty() {
            return Err(Error::Config("model is empty".into()));
        }
        if config.timeout_secs == 0 {
            return Err(Error::Config("timeout_secs must be positive".into()));
        }
        if config.context_tokens == 0 {
            return Err(Error::Config("context_tokens must be positive".into()));
        }
        let timeout = Duration::from_secs(config.timeout_secs);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .read_timeout(timeout)
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        // Every field is set here so that async-openai's defaults, read from
        // OPENAI_* environment variables, never apply.
        let openai = OpenAIConfig::new()
            .with_api_base(config.base_url.trim_end_matches('/'))
            .with_api_key(config.api_key.clone().unwrap_or_default())
            .with_org_id("")
            .with_project_id("");
        let retries = OpenAIRetryLayer::new(usize::try_from(config.max_retries).unwrap_or(usize::MAX));
        let client =
            Client::build(http.clone(), openai).with_http_service(retries.layer(ReqwestService::new(http)));
        Ok(Self { client, config: Arc::new(config) })
    }

    fn chat_request(&self, request: GenerationRequest) -> CreateChatCompletionRequest {
        #[allow(deprecated)] // `seed` is deprecated by OpenAI yet honoured by vLLM and others
        CreateChatCompletionRequest {
            model: self.config.model.clone(),
            messages: request.messages.into_iter().map(chat_message).collect(),
            max_completion_tokens: Some(request.max_tokens),
            temperature: Some(request.temperature),
            seed: i64::try_from(request.seed).ok(),
            stream: Some(true),
            ..Default::default()
        }
    }
}

fn upstream_error(config: &OpenAiConfig, err: OpenAIError) -> Error {
    let (status, message) = match err {
        OpenAIError::ApiError(response) => (Some(response.status_code.as_u16()), response.api_error.message),
        OpenAIError::Reqwest(err) if err.is_connect() => {
            (None, format!("cannot connect to {}: {}", config.base_url, error_chain(&err)))
        }
        OpenAIError::Reqwest(err) if err.is_timeout() => {
            (None, format!("no answer within {}s", config.timeout_secs))
        }
        OpenAIError::Reqwest(err) => (err.status().map(|s| s.as_u16()), error_chain(&err)),
        OpenAIError::JSONDeserialize(err, _) => (None, format!("unreadable response: {err}")),
        other => (None, other.to_string()),
    };
    Error::Upstream { status, message: redact(config, message) }
}

/// Upstreams echo credentials back in some errors.
fn redact(config: &OpenAiConfig, message: String) -> String {
    match config.api_key.as_deref() {
        Some(key) if !key.is_empty() => message.replace(key, REDACTED),
        _ => message,
    }
}

fn chat_message(message: ChatMessage) -> ChatCompletionRequestMessage {
    match message.role {
        ChatRole::System => ChatCompletionRequestSystemMessage::from(message.content).into(),
        ChatRole::User => ChatCompletionRequestUserMessage::from(message.content).into(),
        ChatRole::Assistant => ChatCompletionRequestAssistantMessage::from(message.content).into(),
    }
}

/// reqwest's top-level message ("error sending request") hides the cause.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn text_of(chunk: CreateChatCompletionStreamResponse) -> Option<String> {
    chunk.choices.into_iter().next()?.delta.content.filter(|text| !text.is_empty())
}

#[async_trait]
impl Generator for OpenAiCompatible {
    fn model(&self) -> &str {
        &self.config.model
    }

    fn context_tokens(&self) -> usize {
        self.config.context_tokens
    }

    /// An estimate, as the upstream's tokenizer is unknown: a token per four
    /// bytes of UTF-8, rounded up, which is about right for English text on
    /// current BPE vocabularies and high for code and most other scripts'
    /// words (callers budget with it, so high is the safe side).
    fn count_tokens(&self, text: &str) -> usize {
        text.len().div_ceil(4)
    }

    async fn stream(&self, request: GenerationRequest) -> ragd_core::Result<TokenStream> {
        let span =
            tracing::info_span!("generate", model = %self.config.model, max_tokens = request.max_tokens);
        let request = self.chat_request(request);
        let upstream =
            self.client.chat().create_stream(request).instrument(span.clone()).await.map_err(|err| {
                let err = upstream_error(&self.config, err);
                span.in_scope(|| tracing::error!(error = %err, "upstream generator failed"));
                err
            })?;

        let config = Arc::clone(&self.config);
        // Ends the stream after the first error: what would follow a broken
        // chunk cannot be trusted to continue the text.
        let pieces = upstream
            .scan(false, move |failed, item| {
                let out = match item {
                    _ if *failed => None,
                    Ok(chunk) => Some(text_of(chunk).map(Ok)),
                    Err(err) => {
                        *failed = true;
                        Some(Some(Err(ragd_core::Error::from(upstream_error(&config, err)))))
                    }
                };
                futures::future::ready(out)
            })
            .filter_map(futures::future::ready);
        Ok(Box::pin(pieces))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OpenAiConfig {
        OpenAiConfig { api_key: Some("sk-very-secret".into()), ..OpenAiConfig::default() }
    }

    #[test]
    fn api_key_never_printed() {
        let config = config();
        assert!(!format!("{config:?}").contains("sk-very-secret"));
        let generator = OpenAiCompatible::new(config.clone()).unwrap();
        assert!(!format!("{generator:?}").contains("sk-very-secret"));
        let err =
            Error::Upstream { status: Some(401), message: redact(&config, "bad key sk-very-secret".into()) };
        assert_eq!(
            ragd_core::Error::from(err).message(),
            "upstream generator answered 401: bad key [redacted]"
        );
    }

    #[test]
    fn rejects_bad_config() {
        let cases = [
            OpenAiConfig { base_url: "not a url".into(), ..config() },
            OpenAiConfig { base_url: "ftp://example.com/v1".into(), ..config() },
            OpenAiConfig { model: " ".into(), ..config() },
            OpenAiConfig { timeout_secs: 0, ..config() },
            OpenAiConfig { context_tokens: 0, ..config() },
        ];
        for case in cases {
            assert!(matches!(OpenAiCompatible::new(case.clone()), Err(Error::Config(_))), "{case:?}");
        }
    }

    #[test]
    fn counts_four_bytes_a_token() {
        let generator = OpenAiCompatible::new(config()).unwrap();
        for (text, tokens) in [("", 0), ("abcd", 1), ("abcde", 2), ("é", 1), ("日本語", 3)] {
            assert_eq!(generator.count_tokens(text), tokens, "{text:?}");
        }
    }

    #[test]
    fn config_from_toml_shape() {
        let config: OpenAiConfig =
            serde_json::from_str(r#"{"base_url": "http://vllm:8000/v1", "model": "qwen"}"#).unwrap();
        assert_eq!(config.timeout_secs, 60);
        assert_eq!(config.max_retries, 3);
        assert!(serde_json::from_str::<OpenAiConfig>(r#"{"modle": "qwen"}"#).is_err());
    }
}
