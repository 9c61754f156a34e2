//! Turning text into vectors and scores on this machine: the local model
//! registry (`config/models.toml` and the files under the models directory),
//! the dense embedder (ONNX Runtime through fastembed), the sparse BM25
//! encoder (Qdrant's text pipeline, CJK aware), and the cross-encoder
//! reranker and the sentence embedder on candle (BERTs shared with
//! `ragd-train`, which trains them), the models registered by jobs
//! (`trained.rs`), and BERT models with Q8_0 Linear weights (`quantize.rs`).
//!
//! Invariant: no vector index, no storage, no HTTP. The ONNX Runtime library
//! and the models directory are paths handed in by the caller; nothing here
//! reads environment variables or config files other than the model files
//! it is pointed at, and nothing is written but the directory a conversion
//! is given.

mod batches;
pub mod bert;
mod cross;
mod dense;
mod error;
mod quantize;
mod registry;
mod sentence;
mod sparse;
mod trained;

pub use cross::{
    load_tokenizer, read_bert_config, CrossEncoder, CrossEncoderModel, CLASSIFIER_PREFIX,
    CONFIG_FILE, ENCODER_PREFIX, MANIFEST_FILE, RERANKER_KIND, TOKENIZER_FILE, WEIGHTS_FILE,
};
pub use dense::{EmbedConfig, OnnxEmbedder};
pub use error::{Error, Result};
pub use quantize::{load_quantized_weights, quantize_bert, BertQuantizeSummary, QUANTIZED_WEIGHTS_FILE};
pub use registry::{ModelEntry, ModelFile, ModelManifest, ModelRegistry, ResolvedModel};
pub use sentence::SentenceEncoder;
pub use sparse::{Bm25Encoder, SparseConfig};
pub use trained::{
    Embedders, TrainedEmbedders, TrainedModel, TrainedModels, TrainedRerankers, EMBEDDER_KIND,
};
