//! Text generation behind `ragd_core::Generator`: a local GGUF model on
//! candle ([`LocalGguf`]) or any OpenAI-compatible chat API
//! ([`OpenAiCompatible`]). This crate owns grounded prompts ([`prompt`]),
//! chat templating, the GGUF tokenizer, sampling, streaming and upstream
//! retries, re-quantizing a GGUF generator ([`quantize_gguf`], or with
//! some tensors replaced, [`rewrite_gguf`]), and tokenising conversations
//! for training ([`ChatTokenizer`]).
//!
//! Invariant: no retrieval, index, store or HTTP server dependency; it turns
//! chat messages into streamed text, and model files into model files, and
//! nothing else. No environment variables or files are read except the model
//! files it is given, and none written but the one a conversion names.

mod error;
mod local;
mod openai;
pub mod prompt;
mod quantize;
mod template;

pub use error::{Error, Result};
pub use local::{ChatTokenizer, LocalGguf, LocalGgufConfig, Perplexity, TokenizedChat};
pub use openai::{OpenAiCompatible, OpenAiConfig};
pub use quantize::{quantize_gguf, rewrite_gguf, QuantType, QuantizeSummary};
