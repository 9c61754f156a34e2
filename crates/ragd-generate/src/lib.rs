//! Text generation behind `ragd_core::Generator`: a local GGUF model on
//! candle ([`LocalGguf`]) or any OpenAI-compatible chat API
//! ([`OpenAiCompatible`]). This crate owns grounded prompts ([`prompt`]),
//! chat templating, the GGUF tokenizer, sampling, streaming and upstream
//! retries.
//!
//! Invariant: no retrieval, index, store or HTTP server dependency; it turns
//! chat messages into streamed text and nothing else. No environment
//! variables or files are read except the model file it is given.

mod error;
mod local;
mod openai;
pub mod prompt;
mod template;

pub use error::{Error, Result};
pub use local::{LocalGguf, LocalGgufConfig};
pub use openai::{OpenAiCompatible, OpenAiConfig};
