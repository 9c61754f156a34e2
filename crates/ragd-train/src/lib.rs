//! Training of ragd's models with candle on the CPU: pure functions over
//! model files and training pairs, run by the job workers. Today that is
//! fine-tuning a BERT sentence embedder (MiniLM) with in-batch negatives,
//! a cross-encoder reranker with hard negatives, and LoRA adapters of a
//! GGUF generator on chat conversations.
//!
//! Invariant: no HTTP, no database, no job queue; it depends only on
//! `ragd-core`, `ragd-embed` (the BERT and cross-encoder models it trains
//! are the ones served), `ragd-generate` (the GGUF tokenizer, chat template
//! and writer of the generator it adapts), candle and the tokenizer. Progress leaves through a callback,
//! which is also how a caller stops a run.

mod embedder;
mod lora;
mod reranker;

use ragd_core::ErrorKind;

pub use embedder::{
    finetune, Checkpoint, Event, FinetuneConfig, FinetuneOutcome, TrainingPair, Validation,
    CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
pub use lora::{finetune_lora, merge_lora, LoraConfig, LoraOutcome, LoraTarget, LossValidation, ADAPTER_FILE};
pub use reranker::{finetune_reranker, RerankExample, RerankerConfig, RerankerOutcome};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file {0} is missing")]
    MissingFile(String),
    #[error("model config.json is not a BERT config: {0}")]
    Config(String),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("training needs at least 2 pairs, got {0}")]
    TooFewPairs(usize),
    #[error("generator model: {0}")]
    Generator(String),
    #[error("training was stopped")]
    Stopped,
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ragd_embed::Error),
    #[error("model file i/o failed")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for ragd_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::MissingFile(_)
            | Error::Config(_)
            | Error::Tokenizer(_)
            | Error::TooFewPairs(_)
            | Error::Generator(_) => {
                ragd_core::Error::new(ErrorKind::Unprocessable, err.to_string())
            }
            Error::Stopped => ragd_core::Error::new(ErrorKind::Conflict, err.to_string()),
            Error::Model(inner) => inner.into(),
            Error::Candle(_) => ragd_core::Error::with_source(ErrorKind::Internal, "training failed", err),
            Error::Io(source) => {
                ragd_core::Error::with_source(ErrorKind::Internal, "writing model files failed", source)
            }
        }
    }
}
