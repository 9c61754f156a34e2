//! The ingest job: stored upload -> parse -> chunk -> embed -> index -> publish.
//!
//! Every stage is idempotent: point ids derive from (document, version,
//! chunk index), so a job retried after a crash overwrites its own points,
//! and the previous version's points are dropped only after the new ones are
//! all in the index, so search never sees neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ragd_core::{
    ChunkPayload, CollectionId, CollectionIndexSpec, DocumentId, Embedder, IndexPoint, SparseEncoder, VectorIndex,
    point_id,
};
use ragd_ingest::{Chunker, ExtractedDoc};
use ragd_store::{BlobStore, DocumentRecord, JobRecord, Store};
use serde::Deserialize;
use tracing::Instrument;

use crate::{Error, Result};

/// Work done by the pipeline since start, per stage.
#[derive(Debug, Default)]
pub struct IngestCounters {
    pub documents_ready: AtomicU64,
    pub documents_failed: AtomicU64,
    pub chunks_indexed: AtomicU64,
    pub parse_ms: AtomicU64,
    pub chunk_ms: AtomicU64,
    pub embed_ms: AtomicU64,
    pub index_ms: AtomicU64,
}

#[derive(Debug, Deserialize)]
struct IngestPayload {
    document: DocumentId,
    collection: CollectionId,
}

pub struct IngestPipeline {
    store: Store,
    blobs: BlobStore,
    chunker: Arc<Chunker>,
    embedder: Arc<dyn Embedder>,
    sparse: Arc<dyn SparseEncoder>,
    index: Arc<dyn VectorIndex>,
    batch_size: usize,
    counters: IngestCounters,
}

impl IngestPipeline {
    pub fn new(
        store: Store,
        blobs: BlobStore,
        chunker: Arc<Chunker>,
        embedder: Arc<dyn Embedder>,
        sparse: Arc<dyn SparseEncoder>,
        index: Arc<dyn VectorIndex>,
        batch_size: usize,
    ) -> Self {
        Self { store, blobs, chunker, embedder, sparse, index, batch_size: batch_size.max(1), counters: IngestCounters::default() }
    }

    pub fn counters(&self) -> &IngestCounters {
        &self.counters
    }

    fn payload(job: &JobRecord) -> Result<IngestPayload> {
        serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::Payload { job: job.id, reason: e.to_string() })
    }

    pub async fn run(&self, job: &JobRecord) -> Result<()> {
        let IngestPayload { document, collection } = Self::payload(job)?;
        let doc = match self.store.get_document(collection, document).await {
            Ok(doc) => doc,
            Err(ragd_store::Error::NotFound(_)) => {
                tracing::info!(%document, "document was deleted before ingestion; nothing to do");
                return Ok(());
            }
            Err(other) => return Err(other.into()),
        };
        // The API created the collection in its own index; a `ragd worker`
        // process may hold another one (a private Qdrant Edge directory), so
        // the collection is made sure of here. Creating an existing one is a
        // no-op.
        let spec = CollectionIndexSpec {
            collection,
            dimensions: self.embedder.dimensions(),
            settings: Default::default(),
        };
        self.index.create_collection(&spec).await?;
        self.store.mark_document_processing(doc.id).await?;

        let bytes = self.blobs.get(&doc.content_hash).await?;
        let started = Instant::now();
        let extracted = {
            let (name, media_type) = (doc.source_name.clone(), doc.media_type.clone());
            tokio::task::spawn_blocking(move || -> Result<ExtractedDoc> {
                let format = ragd_ingest::detect_format(name.as_deref(), Some(&media_type), &bytes)?;
                Ok(ragd_ingest::extract(&format, &bytes)?)
            })
            .instrument(tracing::info_span!("parse", document = %doc.id, bytes = doc.size_bytes))
            .await??
        };
        self.counters.parse_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);

        let started = Instant::now();
        let chunker = self.chunker.clone();
        let chunks = tokio::task::spawn_blocking(move || chunker.chunk(&extracted))
            .instrument(tracing::info_span!("chunk", document = %doc.id))
            .await?;
        self.counters.chunk_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);
        if chunks.is_empty() {
            return Err(ragd_ingest::Error::NoText.into());
        }

        for batch in chunks.chunks(self.batch_size) {
            let points = self.embed_batch(&doc, batch.to_vec()).await?;
            let started = Instant::now();
            self.index
                .upsert(collection, points)
                .instrument(tracing::info_span!("index", document = %doc.id, chunks = batch.len()))
                .await?;
            self.counters.index_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);
            self.counters.chunks_indexed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        self.publish(&doc, chunks.len()).await
    }

    async fn embed_batch(&self, doc: &DocumentRecord, chunks: Vec<ragd_core::Chunk>) -> Result<Vec<IndexPoint>> {
        let started = Instant::now();
        let (embedder, sparse) = (self.embedder.clone(), self.sparse.clone());
        let title = doc.title.clone();
        let count = chunks.len();
        let (chunks, dense, sparse_vectors) = tokio::task::spawn_blocking(move || -> Result<_> {
            let texts: Vec<String> = chunks.iter().map(|c| c.embedding_text(&title)).collect();
            let dense = embedder.embed_documents(&texts)?;
            let sparse_vectors: Vec<_> = texts.iter().map(|t| sparse.encode_document(t)).collect();
            Ok((chunks, dense, sparse_vectors))
        })
        .instrument(tracing::info_span!("embed", document = %doc.id, chunks = count))
        .await??;
        self.counters.embed_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);

        Ok(chunks
            .into_iter()
            .zip(dense)
            .zip(sparse_vectors)
            .map(|((chunk, dense), sparse)| IndexPoint {
                id: point_id(doc.id, doc.version, chunk.index),
                dense,
                sparse,
                payload: ChunkPayload {
                    tenant: doc.tenant.clone(),
                    collection: doc.collection,
                    document: doc.id,
                    version: doc.version,
                    chunk_index: chunk.index,
                    title: doc.title.clone(),
                    heading_path: chunk.heading_path_text(),
                    page: chunk.page,
                    text: chunk.text,
                    metadata: doc.metadata.clone(),
                    acl: doc.acl.clone(),
                },
            })
            .collect())
    }

    /// Makes the new version the searchable one: old versions' points go
    /// only now, after every new point is in the index.
    async fn publish(&self, doc: &DocumentRecord, chunk_count: usize) -> Result<()> {
        self.index.delete_document(doc.collection, doc.id, Some(doc.version)).await?;
        match self.store.mark_document_ready(doc.id, doc.version, chunk_count as i64).await {
            Ok(()) => {
                self.counters.documents_ready.fetch_add(1, Ordering::Relaxed);
                tracing::info!(document = %doc.id, chunks = chunk_count, "document ready");
                Ok(())
            }
            Err(ragd_store::Error::NotFound(_)) => {
                // Deleted while we worked: take back what we just indexed.
                self.index.delete_document(doc.collection, doc.id, None).await?;
                Ok(())
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Called when the job will not be retried: the reason is kept on the
    /// document, where the API shows it.
    pub async fn record_failure(&self, job: &JobRecord, reason: &str) {
        let Ok(payload) = Self::payload(job) else { return };
        self.counters.documents_failed.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.store.mark_document_failed(payload.document, reason).await {
            tracing::warn!(document = %payload.document, error = %ragd_core::Error::from(error).chain(), "recording document failure failed");
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}
