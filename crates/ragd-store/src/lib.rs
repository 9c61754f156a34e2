//! All of ragd's persistent metadata and original bytes: the SQL schema and
//! every query (collections, documents with their versions, upload batches,
//! the durable job queue and its leases, and the progress, metrics, log
//! lines, checkpoints and artifacts that API-submitted jobs report, API keys
//! and the audit log), for SQLite and PostgreSQL through one code path, plus
//! the content-addressed blob store on the local filesystem.
//!
//! Invariant: no other crate writes SQL; this one knows nothing of HTTP,
//! embedding, chunking or the vector index (it must never depend on axum,
//! ragd-embed, ragd-index or ragd-ingest).

mod audit;
mod batches;
mod blob;
mod collections;
mod documents;
mod error;
mod job_reports;
mod jobs;
mod keys;
mod store;

pub use audit::{AuditRecord, NewAuditEntry};
pub use batches::{BatchId, BatchRecord, NewBatch};
pub use blob::BlobStore;
pub use collections::{
    CollectionRecord, CollectionUpdate, IndexLayout, NewCollection, PendingIndex, WriteTarget,
};
pub use documents::{AddOutcome, DocumentRecord, IndexedVersion, NewDocument, ReadyOutcome, StatusCounts};
pub use error::{Error, Result};
pub use job_reports::{JobControl, JobLogLine, JobMetric};
pub use jobs::{JobRecord, JobState, INGEST_JOB_KIND};
pub use keys::{KeyId, KeyRecord, KeyRejection, KeyToken, NewKey, Role};
pub use store::{Backend, QueuePolicy, Store, StoreConfig};
