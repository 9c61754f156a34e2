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
    Chunk, ChunkPayload, CollectionId, CollectionIndexSpec, DocumentId, Embedder, EmbedderSource, IndexPoint,
    IndexTarget, JobId, SparseEncoder, VectorIndex, point_id,
};
use ragd_ingest::{Chunker, ExtractedDoc};
use ragd_store::{BlobStore, DocumentRecord, IndexLayout, IndexedVersion, JobRecord, ReadyOutcome, Store};
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

/// Where one collection's chunks go: every generation of its index that
/// must have them (two during a reindex), each with its own embedder.
struct Destinations {
    collection: CollectionId,
    layout: IndexLayout,
    targets: Vec<(IndexTarget, Arc<dyn Embedder>)>,
}

/// The destinations of every collection in a group.
struct Plan(Vec<Destinations>);

impl Plan {
    fn has(&self, collection: CollectionId) -> bool {
        self.0.iter().any(|d| d.collection == collection)
    }

    fn of(&self, collection: CollectionId) -> &Destinations {
        // Every document's collection was planned before its chunks exist.
        self.0.iter().find(|d| d.collection == collection).expect("collection planned")
    }
}

pub struct IngestPipeline {
    store: Store,
    blobs: BlobStore,
    chunker: Arc<Chunker>,
    embedders: Arc<dyn EmbedderSource>,
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
        embedders: Arc<dyn EmbedderSource>,
        sparse: Arc<dyn SparseEncoder>,
        index: Arc<dyn VectorIndex>,
        batch_size: usize,
    ) -> Self {
        Self { store, blobs, chunker, embedders, sparse, index, batch_size: batch_size.max(1), counters: IngestCounters::default() }
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
        let plan = self.plan(&docs).await?;
        let ids: Vec<DocumentId> = docs.iter().map(|(doc, _)| doc.id).collect();
        self.store.mark_documents_processing(&ids).await?;
        let mut prepared: Vec<Prepared> = Vec::with_capacity(docs.len());
        let mut pending: Vec<Pending> = Vec::with_capacity(self.batch_size);
        for (doc, jobs) in docs {
            if !plan.has(doc.collection) {
                tracing::info!(document = %doc.id, "collection was deleted before ingestion; nothing to do");
                outcomes.extend(jobs.into_iter().map(|id| (id, Ok(()))));
                continue;
            }
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
                    self.embed_and_index(&plan, &prepared, batch).await?;
                }
            }
        }
        if !pending.is_empty() {
            self.embed_and_index(&plan, &prepared, pending).await?;
        }
        self.publish(&plan, prepared, outcomes).await
    }

    /// Reads each collection's generations and loads their embedders. The
    /// API created each collection in its own index; a `ragd worker`
    /// process may hold another one (a private Qdrant Edge directory), so
    /// the generations are made sure of here. Creating an existing one is a
    /// no-op.
    async fn plan(&self, docs: &[(DocumentRecord, Vec<JobId>)]) -> Result<Plan> {
        let mut plan: Vec<Destinations> = Vec::new();
        for (doc, _) in docs {
            if plan.iter().any(|d| d.collection == doc.collection) {
                continue;
            }
            let record = match self.store.get_collection(&doc.tenant, doc.collection).await {
                Ok(record) => record,
                // Deleted with its documents since they were read.
                Err(ragd_store::Error::NotFound(_)) => continue,
                Err(error) => return Err(error.into()),
            };
            let mut targets = Vec::new();
            for write in record.write_targets() {
                let embedders = self.embedders.clone();
                let embedder = tokio::task::spawn_blocking(move || embedders.embedder(&write.embedder)).await??;
                let spec = CollectionIndexSpec {
                    target: write.target,
                    dimensions: embedder.dimensions(),
                    settings: Default::default(),
                };
                self.index.create_collection(&spec).await?;
                targets.push((write.target, embedder));
            }
            plan.push(Destinations { collection: record.id, layout: record.layout(), targets });
        }
        Ok(Plan(plan))
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

    /// Embeds one batch of chunks, of any documents of the group, with each
    /// embedder their collections' generations need, and writes their
    /// points: one index write per generation in the batch.
    async fn embed_and_index(&self, plan: &Plan, prepared: &[Prepared], batch: Vec<Pending>) -> Result<()> {
        let started = Instant::now();
        let count = batch.len();
        let texts: Vec<String> = batch
            .iter()
            .map(|pending| pending.chunk.embedding_text(&prepared[pending.doc].doc.title))
            .collect();
        // Each embedder with the chunks it encodes (usually one for all).
        let mut work: Vec<(Arc<dyn Embedder>, Vec<usize>)> = Vec::new();
        for (position, pending) in batch.iter().enumerate() {
            for (_, embedder) in &plan.of(prepared[pending.doc].doc.collection).targets {
                match work.iter_mut().find(|(known, _)| known.model() == embedder.model()) {
                    Some((_, positions)) if positions.last() == Some(&position) => {}
                    Some((_, positions)) => positions.push(position),
                    None => work.push((embedder.clone(), vec![position])),
                }
            }
        }
        let sparse = self.sparse.clone();
        let (dense, sparse_vectors) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut dense: Vec<(String, Vec<Option<Vec<f32>>>)> = Vec::with_capacity(work.len());
            for (embedder, positions) in work {
                let wanted: Vec<String> = positions.iter().map(|&p| texts[p].clone()).collect();
                let mut vectors = vec![None; texts.len()];
                for (position, vector) in positions.into_iter().zip(embedder.embed_documents(&wanted)?) {
                    vectors[position] = Some(vector);
                }
                dense.push((embedder.model().to_owned(), vectors));
            }
            let sparse_vectors: Vec<_> = texts.iter().map(|t| sparse.encode_document(t)).collect();
            Ok((dense, sparse_vectors))
        })
        .instrument(tracing::info_span!("embed", chunks = count))
        .await??;
        self.counters.embed_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);

        let mut by_target: Vec<(IndexTarget, Vec<IndexPoint>)> = Vec::new();
        for (position, (pending, sparse)) in batch.into_iter().zip(sparse_vectors).enumerate() {
            let doc = &prepared[pending.doc].doc;
            let chunk = pending.chunk;
            let payload = ChunkPayload {
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
            };
            for (target, embedder) in &plan.of(doc.collection).targets {
                let vectors = dense.iter().find(|(model, _)| model == embedder.model()).map(|(_, v)| v);
                let Some(Some(vector)) = vectors.map(|v| &v[position]) else {
                    return Err(ragd_core::Error::internal("a chunk was not embedded for one of its generations").into());
                };
                let point = IndexPoint {
                    id: point_id(doc.id, doc.version, chunk.index),
                    dense: vector.clone(),
                    sparse: sparse.clone(),
                    payload: payload.clone(),
                };
                match by_target.iter_mut().find(|(known, _)| known == target) {
                    Some((_, points)) => points.push(point),
                    None => by_target.push((*target, vec![point])),
                }
            }
        }
        let started = Instant::now();
        for (target, points) in by_target {
            let chunks = points.len();
            self.index
                .upsert(target, points)
                .instrument(tracing::info_span!("index", %target, chunks))
                .await
                .map_err(generation_gone)?;
        }
        self.counters.index_ms.fetch_add(elapsed_ms(started), Ordering::Relaxed);
        self.counters.chunks_indexed.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the new versions the searchable ones: old versions' points go
    /// only now, after every new point is in the index; then the documents
    /// are marked ready in one transaction.
    async fn publish(&self, plan: &Plan, prepared: Vec<Prepared>, outcomes: &mut Vec<JobOutcome>) -> Result<()> {
        for Prepared { doc, .. } in &prepared {
            // Versions only grow, so a first version has no older points.
            if doc.version > 1 {
                for (target, _) in &plan.of(doc.collection).targets {
                    self.index.delete_document(*target, doc.id, Some(doc.version)).await.map_err(generation_gone)?;
                }
            }
        }
        let indexed: Vec<IndexedVersion> = prepared
            .iter()
            .map(|p| IndexedVersion {
                document: p.doc.id,
                version: p.doc.version,
                chunk_count: p.chunk_count as i64,
                layout: plan.of(p.doc.collection).layout,
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
                    for (target, _) in &plan.of(doc.collection).targets {
                        self.index.delete_document(*target, doc.id, None).await.map_err(generation_gone)?;
                    }
                }
                ReadyOutcome::IndexMoved => {
                    outcomes.extend(spread(index_moved().into(), jobs));
                    continue;
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

fn index_moved() -> ragd_core::Error {
    ragd_core::Error::new(
        ragd_core::ErrorKind::Unavailable,
        "the collection's index generations changed (a reindex started or finished); ingesting again",
    )
}

/// A generation that vanished under a write was replaced by a reindex (or
/// its collection deleted): the job is run again, against what is there
/// now, instead of failing its documents.
fn generation_gone(error: ragd_core::Error) -> ragd_core::Error {
    if error.kind() == ragd_core::ErrorKind::NotFound { index_moved() } else { error }
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
