//! The vector index: implementations of `ragd_core::VectorIndex`:
//! [`EdgeIndex`], Qdrant Edge running in-process with one shard per
//! collection, and [`QdrantServerIndex`], a Qdrant server or cluster over
//! gRPC with one Qdrant collection per ragd collection. Both share the
//! schema, the filter semantics and the [`conformance`] suite.
//!
//! Invariant: this crate knows vectors, payloads and filters only. It never
//! depends on embedding, storage (SQL), job or HTTP crates, and never reads
//! configuration files or environment variables.
//!
//! # Schema (every backend)
//!
//! Each chunk is one point whose id is `ragd_core::point_id(document, version,
//! chunk_index)`, with
//! - named dense vector `dense`: cosine distance, dimensions from
//!   `CollectionIndexSpec`;
//! - named sparse vector `sparse` with the IDF modifier: the values written
//!   are BM25 term-frequency weights, the index multiplies in each term's IDF
//!   over the collection, so scores are BM25;
//! - payload `tenant` (keyword), `collection` (keyword, the collection id),
//!   `document` (keyword, the document id), `version` (integer),
//!   `chunk_index` (integer), `title`, `heading_path`, `text`, `metadata`
//!   (object: user metadata, filtered as `metadata.<key>`) and `acl`
//!   (keyword array; empty means the whole tenant).
//!
//! Payload indexes exist on `tenant`, `collection`, `document`, `acl`
//! (keyword) and `version` (integer).
//!
//! # Queries
//!
//! Every search filters inside the index: `tenant` and `collection` equal the
//! query's, each metadata condition holds (equals -> match value, any-of ->
//! match any per value type, range -> float range), and with principals the
//! `acl` is empty or names one of them. Hybrid search is two prefetches of
//! `candidates` points each (dense nearest, sparse nearest) fused with
//! reciprocal rank fusion (`1 / (rrf_k + rank)`, rank from 0), then cut to
//! `limit`. A hit's `dense_score` is its cosine to the query and its
//! `sparse_score` its BM25 score, each computed for the returned hits by the
//! branch's own query restricted to their ids; `sparse_score` is `None` when
//! the hit shares no term with the query. Dense-only and sparse-only searches
//! fill just their own branch's score.
//!
//! # Durability and optimisation (Qdrant Edge 0.7.1)
//!
//! Edge writes every update to a WAL but never replays it when a shard is
//! loaded, so data is durable only once the segments are flushed:
//! [`EdgeIndex`] flushes (fsync) after every upsert and delete, before
//! returning. Edge has no background optimiser either, so each write also
//! runs the optimisers synchronously; they return at once unless a segment
//! crossed a threshold (HNSW indexing, vacuum of deleted points, merging).
//! Search is correct without optimisation (an unindexed segment is scanned
//! exactly), only slower.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod edge;
mod error;
pub mod schema;
mod server;

pub use edge::{EdgeIndex, EdgeIndexConfig};
pub use server::{QdrantServerConfig, QdrantServerIndex};
pub use error::{Error, Result};
