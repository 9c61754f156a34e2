//! Turning text into vectors on this machine: the local model registry
//! (`config/models.toml` and the files under the models directory), the
//! dense embedder (ONNX Runtime through fastembed) and the sparse BM25
//! encoder (Qdrant's text pipeline, CJK aware).
//!
//! Invariant: no vector index, no storage, no HTTP. The ONNX Runtime library
//! and the models directory are paths handed in by the caller; nothing here
//! reads environment variables or config files other than the model files
//! it is pointed at.

mod dense;
mod error;
mod registry;
mod sparse;

pub use dense::{EmbedConfig, OnnxEmbedder};
pub use error::{Error, Result};
pub use registry::{ModelEntry, ModelFile, ModelManifest, ModelRegistry, ResolvedModel};
pub use sparse::{Bm25Encoder, SparseConfig};
