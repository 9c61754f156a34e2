//! The generation boundary: chat messages in, a stream of text out.
//! Implemented by `ragd-generate` (local GGUF on candle, OpenAI-compatible APIs).

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
    /// 0 means greedy decoding.
    pub temperature: f32,
    pub seed: u64,
}

/// Text pieces in the order they are produced; the stream ends when
/// generation ends. Dropping it stops generation.
pub type TokenStream = Pin<Box<dyn Stream<Item = Result<String>> + Send>>;

#[async_trait]
pub trait Generator: Send + Sync {
    /// The model name reported to callers.
    fn model(&self) -> &str;

    /// Tokens the model can attend to, prompt and answer together.
    fn context_tokens(&self) -> usize;

    /// Tokens `text` takes in this model's prompt (exact where the tokenizer
    /// is known, an upper estimate otherwise).
    fn count_tokens(&self, text: &str) -> usize;

    async fn stream(&self, request: GenerationRequest) -> Result<TokenStream>;
}
