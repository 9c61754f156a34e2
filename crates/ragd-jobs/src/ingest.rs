//! The ingest job: stored upload -> parse -> chunk -> embed -> index -> publish.
//!
//! A worker hands the pipeline the jobs it claimed together. Each document is
//! parsed and chunked alone, and fails alone; the chunks of all of them are
//! embedded and indexed in shared batches, because bulk uploads are mostly
//! documents of a chunk or two and both an embedder call and a durable index
//! write cost little more for a full batch than for one chunk; then the
//! documents are published together.
//!
//! Every stage is idempotent: point ids derive from (document, version,
//! chunk index), so a job retried after a crash overwrites its own points,
//! and the previous version's points are dropped only after the new ones are
//! all in the index, so search never sees neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ragd_core::{
    Chunk, ChunkPayload, CollectionId, CollectionIndexSpec, DocumentId, Embedder, IndexPoint, JobId, SparseEncoder, VectorIndex,
    point_id,
};
use ragd_ingest::{Chunker, ExtractedDoc};
use ragd_store::{BlobStore, DocumentRecord, IndexedVersion, JobRecord, ReadyOutcome, Store};
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

/// What became of one job.
pub type JobOutcome = (JobId, Result<()>);

/// A document of the group whose chunks are on their way to the index.
struct Prepared {
    doc: DocumentRecord,
    jobs: Vec<JobId>,
    chunk_count: usize,
}

/// A chunk waiting for its batch; `doc` is its document's place in the
/// group's [`Prepared`] list.
struct Pending {
    doc: usize,
    chunk: Chunk,
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

    /// Runs a group of ingest jobs; every job gets an outcome. Two jobs of
    /// one document (see [`Store::claim_jobs`]) share one run.
    pub async fn run(&self, jobs: &[JobRecord]) -> Vec<JobOutcome> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut wanted: Vec<(CollectionId, DocumentId, Vec<JobId>)> = Vec::new();
        for job in jobs {
            match Self::payload(job) {
                Ok(IngestPayload { document, collection }) => {
                    match wanted.iter_mut().find(|(_, known, _)| *known == document) {
                        Some((_, _, ids)) => ids.push(job.id),
                        None => wanted.push((collection, document, vec![job.id])),
                    }
                }
                Err(error) => outcomes.push((job.id, Err(error))),
            }
        }
        let mut docs = Vec::with_capacity(wanted.len());
        for (collection, document, ids) in wanted {
            match self.store.get_document(collection, document).await {
                Ok(doc) => docs.push((doc, ids)),
                Err(ragd_store::Error::NotFound(_)) => {
                    tracing::info!(%document, "document was deleted before ingestion; nothing to do");
                    outcomes.extend(ids.into_iter().map(|id| (id, Ok(()))));
                }
                Err(error) => outcomes.extend(spread(error.into(), ids)),
            }
        }
        let group: Vec<JobId> = docs.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
        if let Err(error) = self.ingest(docs, &mut outcomes).await {
            let unfinished: Vec<JobId> =
                group.into_iter().filter(|id| !outcomes.iter().any(|(done, _)| done == id)).collect();
            outcomes.extend(spread(error, unfinished));
        }
        outcomes
    }

    /// Documents that cannot be read, parsed or chunked get their outcome
    /// here; an error returned fails the rest of the group.
    async fn ingest(
        &self,
        docs: Vec<(DocumentRecord, Vec<JobId>)>,
        outcomes: &mut Vec<JobOutcome>,
    ) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        // The API created each collection in its own index; a `ragd worker`
        // process may hold another one (a private Qdrant Edge directory), so
        // the collections are made sure of here. Creating an existing one is
        // a no-op.
        let mut collections: Vec<CollectionId> = docs.iter().map(|(doc, _)| doc.collection).collect();
        collections.sort_unstable();
        collections.dedup();
        for collection in collections {
            let spec =
                CollectionIndexSpec { collection, dimensions: self.embedder.dimensions(), settings: Default::default() };
            self.index.create_collection(&spec).await?;
        }
        let ids: Vec<DocumentId> = docs.iter().map(|(doc, _)| doc.id).collect();
        self.store.mark_documents_processing(&ids).await?;
        let mut prepared: Vec<Prepared> = Vec::with_capacity(docs.len());
        let mut pending: Vec<Pending> = Vec::with_capacity(self.batch_size);
        for (doc, jobs) in docs {
            let chunks = match self.chunks(&doc).await {
                Ok(chunks) => chunks,
                Err(error) => {
                    outcomes.extend(spread(error, jobs));
                    continue;
                }
            };
            let slot = prepared.len();
            prepared.push(Prepared { doc, jobs, chunk_count: chunks.len() });
            for chunk in chunks {
                pending.push(Pending { doc: slot, chunk });
                if pending.len() == self.batch_size {
                    let batch = std::mem::replace(&mut pending, Vec::with_capacity(self.batch_size));
                    self.embed_and_index(&prepared, batch).await?;
                }
            }
        }
        if !pending.is_empty() {
            self.embed_and_index(&prepared, pending).await?;
        }
        self.publish(prepared, outcomes).await
    }

    async fn chunks(&self, doc: &DocumentRecord) -> Result<Vec<Chunk>> {
        let bytes = self.blobs.get(&doc.content_hash).await?;
        let started = Instant::now();
        let extracted = {
            let (name, media_type) = (doc.source_name.clone(), doc.media_type.clone());
            tokio::task::spawn_blocking(move || parse(name.as_deref(), &media_type, &bytes))
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
        Ok(chunks)
    }

    /// Embeds one batch of chunks, of any documents of the group, and
    /// writes their points: one index write per collection in the batch.
    async fn embed_and_index(&self, prepared: &[Prepared], batch: Vec<Pending>) -> Result<()> {
        let started = Instant::now();
        let count = batch.len();
        let texts: Vec<String> = batch
            .iter()
            .map(|pending| pending.chunk.embedding_text(&prepared[pending.doc].doc.title))
            .collect();
        let (embedder, sparse) = (self.embedder.clone(), self.sparse.clone());
        let (dense, sparse_vectors) = tokio::task::spawn_blocking(move || -> Result<_> {
            let dense = embedder.embed_documents(&texts)?;
            let sparse_vectors: Vec<_> = texts.iter().map(|t| sparse.encode_document(t)).collect();
            Ok((dense, sparse_vectors))
        })
        .instrument(tracing::info_span!("embed", chunks = count))
        .await??;
        self.counters.embed_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);

        let mut by_collection: Vec<(CollectionId, Vec<IndexPoint>)> = Vec::new();
        for ((pending, dense), sparse) in batch.into_iter().zip(dense).zip(sparse_vectors) {
            let doc = &prepared[pending.doc].doc;
            let chunk = pending.chunk;
            let point = IndexPoint {
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
            };
            match by_collection.iter_mut().find(|(collection, _)| *collection == doc.collection) {
                Some((_, points)) => points.push(point),
                None => by_collection.push((doc.collection, vec![point])),
            }
        }
        let started = Instant::now();
        for (collection, points) in by_collection {
            let chunks = points.len();
            self.index
                .upsert(collection, points)
                .instrument(tracing::info_span!("index", %collection, chunks))
                .await?;
        }
        self.counters.index_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);
        self.counters.chunks_indexed.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the new versions the searchable ones: old versions' points go
    /// only now, after every new point is in the index; then the documents
    /// are marked ready in one transaction.
    async fn publish(&self, prepared: Vec<Prepared>, outcomes: &mut Vec<JobOutcome>) -> Result<()> {
        for Prepared { doc, .. } in &prepared {
            // Versions only grow, so a first version has no older points.
            if doc.version > 1 {
                self.index.delete_document(doc.collection, doc.id, Some(doc.version)).await?;
            }
        }
        let indexed: Vec<IndexedVersion> = prepared
            .iter()
            .map(|p| IndexedVersion {
                document: p.doc.id,
                version: p.doc.version,
                chunk_count: p.chunk_count as i64,
            })
            .collect();
        let results = self.store.mark_documents_ready(&indexed).await?;
        for (Prepared { doc, jobs, chunk_count }, result) in prepared.into_iter().zip(results) {
            match result {
                ReadyOutcome::Ready => {
                    self.counters.documents_ready.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(document = %doc.id, chunks = chunk_count, "document ready");
                }
                ReadyOutcome::Superseded => {}
                ReadyOutcome::Missing => {
                    // Deleted while we worked: take back what we just indexed.
                    self.index.delete_document(doc.collection, doc.id, None).await?;
                }
            }
            outcomes.extend(jobs.into_iter().map(|id| (id, Ok(()))));
        }
        Ok(())
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

/// The same error for each of `jobs`: the first gets it whole, the others a
/// copy without its cause chain (which the worker logs with the first).
fn spread(error: Error, jobs: Vec<JobId>) -> Vec<JobOutcome> {
    let mut outcomes: Vec<JobOutcome> = jobs.iter().skip(1).map(|id| (*id, Err(error.copy()))).collect();
    if let Some(first) = jobs.first() {
        outcomes.insert(0, (*first, Err(error)));
    }
    outcomes
}

/// The stored bytes as text with its structure; the format comes from the
/// content as well as the name and media type recorded at upload.
fn parse(name: Option<&str>, media_type: &str, bytes: &[u8]) -> Result<ExtractedDoc> {
    let format = ragd_ingest::detect_format(name, Some(media_type), bytes)?;
    Ok(ragd_ingest::extract(&format, bytes)?)
}

/// The chunks the pipeline embeds for a stored document, for tools that
/// need the same chunks without running a job.
pub fn chunk_document(
    chunker: &Chunker,
    name: Option<&str>,
    media_type: &str,
    bytes: &[u8],
) -> Result<Vec<Chunk>> {
    Ok(chunker.chunk(&parse(name, media_type, bytes)?))
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}
