//! The shared vocabulary of ragd: identifiers, the domain types that move
//! between stages, the traits each engine crate implements, and the error
//! kinds every crate maps its own errors to.
//!
//! Invariant: this crate depends on no engine (no ONNX, candle, Qdrant, sqlx,
//! axum). Every other ragd crate depends on it; it depends on none of them.

pub mod acl;
pub mod error;
pub mod filter;
pub mod generate;
pub mod ids;
pub mod index;
pub mod model;
pub mod numbers;

pub use acl::Visibility;
pub use error::{Error, ErrorKind, Result};
pub use filter::{Condition, Filter, FilterValue};
pub use generate::{ChatMessage, ChatRole, GenerationRequest, Generator, TokenStream};
pub use ids::{point_id, CollectionId, CollectionName, ContentHash, DocumentId, JobId, TenantId, TopK};
pub use index::{
    ChunkPayload, CollectionIndexSpec, HybridQuery, IndexHit, IndexPoint, IndexSettings, IndexTarget, Quantization,
    SearchMode, SparseVector, VectorIndex,
};
pub use model::{
    embedding_text, Chunk, DocumentStatus, Embedder, EmbedderSource, Reranker, RerankerSource, SparseEncoder,
};
