//! Wire types: the JSON shapes of the API, converted from engine types here.

use ragd_core::IndexHit;
use ragd_retrieve::Retrieved;
use ragd_store::{
    AddOutcome, AuditRecord, BatchRecord, CollectionRecord, DocumentRecord, KeyRecord, StatusCounts,
};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub fn timestamp(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Serialize, ToSchema)]
pub struct CollectionView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub embedder: String,
    pub dimensions: i64,
    pub created_at: String,
    #[schema(value_type = Object)]
    pub settings: Map<String, Value>,
    /// A `reindex` job building the collection's vectors with another
    /// embedder; searches use `embedder` until it finishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reindex: Option<ReindexView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<CollectionStats>,
}

#[derive(Serialize, ToSchema)]
pub struct ReindexView {
    pub job: String,
    pub embedder: String,
    pub dimensions: i64,
}

#[derive(Serialize, ToSchema)]
pub struct CollectionStats {
    pub documents: DocumentCounts,
    /// Chunks of ready documents, as recorded by ingestion.
    pub chunk_count: i64,
    /// Points in the vector index; equals `chunk_count` once no document is
    /// being processed. Only for callers that see every document, as it
    /// counts the chunks of documents with an ACL too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point_count: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct DocumentCounts {
    pub total: i64,
    pub queued: i64,
    pub processing: i64,
    pub ready: i64,
    pub failed: i64,
}

impl From<&StatusCounts> for DocumentCounts {
    fn from(c: &StatusCounts) -> Self {
        Self {
            total: c.queued + c.processing + c.ready + c.failed,
            queued: c.queued,
            processing: c.processing,
            ready: c.ready,
            failed: c.failed,
        }
    }
}

impl From<&CollectionRecord> for CollectionView {
    fn from(c: &CollectionRecord) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.name.to_string(),
            description: c.description.clone(),
            embedder: c.embedder.clone(),
            dimensions: c.dimensions,
            created_at: timestamp(c.created_at),
            // Shown with every default filled in; stored as sent.
            settings: crate::settings::CollectionSettings::of(c)
                .map(|settings| settings.to_map())
                .unwrap_or_else(|_| c.settings.clone()),
            reindex: c.pending.as_ref().map(|p| ReindexView {
                job: p.job.to_string(),
                embedder: p.embedder.clone(),
                dimensions: p.dimensions,
            }),
            stats: None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub collection_id: String,
    pub title: String,
    pub external_id: Option<String>,
    pub source_name: Option<String>,
    pub media_type: String,
    pub size_bytes: i64,
    pub content_hash: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[schema(value_type = String, pattern = "^(queued|processing|ready|failed)$")]
    pub status: &'static str,
    /// Why ingestion failed, when `status` is `failed`.
    pub failure: Option<String>,
    pub version: i64,
    pub chunk_count: i64,
    /// The batch that queued the current version, if any.
    pub batch_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Set on an upload answered with the document that already held its
    /// content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

impl From<&DocumentRecord> for DocumentView {
    fn from(d: &DocumentRecord) -> Self {
        Self {
            id: d.id.to_string(),
            collection_id: d.collection.to_string(),
            title: d.title.clone(),
            external_id: d.external_id.clone(),
            source_name: d.source_name.clone(),
            media_type: d.media_type.clone(),
            size_bytes: d.size_bytes,
            content_hash: d.content_hash.to_string(),
            metadata: d.metadata.clone(),
            status: d.status.as_str(),
            failure: d.failure.clone(),
            version: d.version,
            chunk_count: d.chunk_count,
            batch_id: d.batch.map(|id| id.to_string()),
            created_at: timestamp(d.created_at),
            updated_at: timestamp(d.updated_at),
            job_id: None,
            duplicate: None,
        }
    }
}

impl From<&AddOutcome> for DocumentView {
    fn from(outcome: &AddOutcome) -> Self {
        match outcome {
            AddOutcome::Created { record, job } | AddOutcome::NewVersion { record, job } => {
                Self { job_id: Some(job.to_string()), ..Self::from(record) }
            }
            AddOutcome::Duplicate(existing) => Self { duplicate: Some(true), ..Self::from(existing) },
        }
    }
}

/// The answer to an NDJSON upload. `accepted` entries were queued (new
/// documents or new versions), `duplicates` were already in the collection,
/// `rejected_count` were invalid; the `documents` and `rejected` lists are
/// capped, and their `*_truncated` flags say when they were.
#[derive(Serialize, ToSchema)]
pub struct BulkAddView {
    pub batch_id: String,
    pub accepted: i64,
    pub duplicates: i64,
    pub rejected_count: i64,
    pub rejected: Vec<RejectedLine>,
    pub rejected_truncated: bool,
    pub documents: Vec<BulkDocumentView>,
    pub documents_truncated: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RejectedLine {
    pub line: usize,
    pub reason: String,
}

/// What became of one line: `queued` (a new document, or a new `version`
/// of the document with its `external_id`) or `duplicate` (`id` and
/// `duplicate_of` name the document that already holds the content).
#[derive(Serialize, ToSchema)]
pub struct BulkDocumentView {
    pub line: usize,
    pub id: String,
    pub external_id: Option<String>,
    #[schema(value_type = String, pattern = "^(queued|processing|ready|failed|duplicate)$")]
    pub status: &'static str,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
}

impl BulkDocumentView {
    pub fn new(line: usize, outcome: &AddOutcome) -> Self {
        let (record, status, duplicate_of) = match outcome {
            AddOutcome::Created { record, .. } | AddOutcome::NewVersion { record, .. } => {
                (record, record.status.as_str(), None)
            }
            AddOutcome::Duplicate(existing) => (existing, "duplicate", Some(existing.id.to_string())),
        };
        Self {
            line,
            id: record.id.to_string(),
            external_id: record.external_id.clone(),
            status,
            version: record.version,
            duplicate_of,
        }
    }
}

/// A batch with the statuses of its documents. `progress` is the share of
/// them that finished (ready or failed); `done` is true once none is
/// waiting or being processed.
#[derive(Serialize, ToSchema)]
pub struct BatchView {
    pub id: String,
    pub collection_id: String,
    pub accepted: i64,
    pub duplicates: i64,
    pub rejected: i64,
    pub documents: DocumentCounts,
    pub progress: f64,
    pub done: bool,
    pub created_at: String,
}

impl BatchView {
    pub fn new(batch: &BatchRecord, counts: &StatusCounts) -> Self {
        let documents = DocumentCounts::from(counts);
        let finished = documents.ready + documents.failed;
        // Documents leave a batch when a later upload versions them or they
        // are deleted, so progress is counted over those still in it.
        let progress = if documents.total == 0 { 1.0 } else { finished as f64 / documents.total as f64 };
        Self {
            id: batch.id.to_string(),
            collection_id: batch.collection.to_string(),
            accepted: batch.accepted,
            duplicates: batch.duplicates,
            rejected: batch.rejected,
            done: documents.queued + documents.processing == 0,
            documents,
            progress,
            created_at: timestamp(batch.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct HitView {
    pub rank: usize,
    pub chunk_id: String,
    pub document_id: String,
    pub title: String,
    pub heading_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    pub chunk_index: u32,
    pub text: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub scores: ScoresView,
}

/// Each stage's score: `fused` orders the hits (RRF in hybrid mode), `dense`
/// is cosine similarity, `sparse` is BM25; a stage that did not find the
/// hit has no score. `rerank`, the reranker's logit, is there when a
/// reranker ordered the hit, and then orders the hits instead of `fused`.
#[derive(Serialize, ToSchema)]
pub struct ScoresView {
    pub fused: f32,
    pub dense: Option<f32>,
    pub sparse: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<f32>,
}

/// Whether a reranker ordered the hits: `applied` with its `model` and the
/// `candidates` it scored, or `skipped` with the `reason`.
#[derive(Serialize, ToSchema)]
pub struct RerankView {
    #[schema(pattern = "^(applied|skipped)$")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl RerankView {
    /// `requested` is the request's `rerank`.
    pub fn new(retrieved: &Retrieved, requested: Option<bool>) -> Self {
        match &retrieved.reranked {
            Some(reranked) => Self {
                status: "applied",
                model: Some(reranked.model.clone()),
                candidates: Some(reranked.candidates),
                reason: None,
            },
            None => Self {
                status: "skipped",
                model: None,
                candidates: None,
                reason: Some(if requested == Some(false) {
                    "turned off by the request"
                } else {
                    "no reranker is configured"
                }),
            },
        }
    }
}

impl HitView {
    pub fn new(rank: usize, hit: &IndexHit) -> Self {
        let p = &hit.payload;
        Self {
            rank: rank + 1,
            chunk_id: hit.id.to_string(),
            document_id: p.document.to_string(),
            title: p.title.clone(),
            heading_path: p.heading_path.clone(),
            page: p.page,
            chunk_index: p.chunk_index,
            text: p.text.clone(),
            metadata: p.metadata.clone(),
            scores: ScoresView {
                fused: hit.score,
                dense: hit.dense_score,
                sparse: hit.sparse_score,
                rerank: hit.rerank_score,
            },
        }
    }
}

/// An API key without its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: &'static str,
    /// `None` for an operator key.
    pub tenant: Option<String>,
    pub on_behalf_of: bool,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<&KeyRecord> for KeyView {
    fn from(k: &KeyRecord) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            role: k.role.as_str(),
            tenant: k.tenant.as_ref().map(ToString::to_string),
            on_behalf_of: k.on_behalf_of,
            created_at: timestamp(k.created_at),
            expires_at: k.expires_at.map(timestamp),
            revoked_at: k.revoked_at.map(timestamp),
        }
    }
}

/// Who did what: one write or admin action.
#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub id: String,
    pub at: String,
    /// `admin` for the configured admin key, `None` for the command line.
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub status: i64,
}

impl From<&AuditRecord> for AuditView {
    fn from(a: &AuditRecord) -> Self {
        let e = &a.entry;
        Self {
            id: a.id.clone(),
            at: timestamp(a.at),
            key_id: e.key_id.clone(),
            tenant: e.tenant.as_ref().map(ToString::to_string),
            action: e.action.clone(),
            target: e.target.clone(),
            outcome: e.outcome.clone(),
            status: e.status,
        }
    }
}
