//! The `reindex` job: switches a collection to another embedder without a
//! moment in which search is down or incomplete.
//!
//! The new vectors are built in the collection's next index generation,
//! beside the one searches read. While it runs, ingestion writes every new
//! chunk to both generations (a document whose ingestion began before the
//! reindex finds the collection changed when it publishes, and runs again),
//! and the job copies the ready documents' chunks into the new generation,
//! embedding them with the new model. After each page it reads the
//! documents back: one deleted meanwhile is removed again, and only a
//! document's current version is kept. Then one store update makes the new
//! generation the searched one, and the old one is dropped.

use std::time::Duration;

use ragd_core::{
    embedding_text, point_id, CollectionId, CollectionIndexSpec, DocumentStatus, ErrorKind, IndexPoint, IndexSettings,
    IndexTarget,
};
use ragd_store::{CollectionRecord, DocumentRecord, JobControl, JobRecord};
use serde::{Deserialize, Serialize};

use crate::finetune::{check_model_name, TrainingJobs};
use crate::{Error, Result};

pub const REINDEX_KIND: &str = "reindex";

/// Documents read, embedded and written per step.
const PAGE: u32 = 64;
/// How long the replaced generation stays after the swap: a search that
/// read it just before may still be widening its hits there.
const DROP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReindexParams {
    /// The collection, by id or name (the API stores its id).
    pub collection: String,
    /// The configured embedder or one registered here (`finetune-embedder`,
    /// or `quantize` of an embedder).
    pub embedder: String,
}

impl ReindexParams {
    pub(crate) fn check(&mut self) -> std::result::Result<(), String> {
        if self.collection.trim().is_empty() {
            return Err("collection must name a collection".to_owned());
        }
        check_model_name(&self.embedder).map_err(|reason| format!("embedder: {reason}"))
    }
}

impl TrainingJobs {
    pub async fn run_reindex(&self, job: &JobRecord, worker: &str) -> Result<()> {
        let params: ReindexParams = serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::Payload { job: job.id, reason: e.to_string() })?;
        let payload_error = |reason: &str| Error::Payload { job: job.id, reason: reason.to_owned() };
        let tenant = job.tenant.clone().ok_or_else(|| payload_error("the job has no owner"))?;
        let collection: CollectionId =
            params.collection.parse().map_err(|_| payload_error("collection is not an id"))?;
        let before = self.store.get_collection(&tenant, collection).await?;
        let resuming = before.pending.as_ref().is_some_and(|pending| pending.job == job.id);

        let embedders = self.retriever.clone();
        let name = params.embedder.clone();
        let embedder = tokio::task::spawn_blocking(move || embedders.embedder(&name)).await??;
        let dimensions = i64::try_from(embedder.dimensions()).unwrap_or(i64::MAX);
        let record = self.store.begin_reindex(&tenant, collection, &params.embedder, dimensions, job.id).await?;
        let Some(pending) = record.pending.clone() else {
            return Err(ragd_core::Error::internal("the reindex did not start").into());
        };
        let target = IndexTarget::new(collection, pending.generation);
        if !resuming {
            // Left by a reindex that was abandoned or taken over.
            self.retriever.index().drop_collection(target).await?;
        }
        let settings: IndexSettings = match record.settings.get("index") {
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|e| ragd_core::Error::new(ErrorKind::Unprocessable, format!("settings.index: {e}")))?,
            None => IndexSettings::default(),
        };
        let spec = CollectionIndexSpec { target, dimensions: embedder.dimensions(), settings };
        self.retriever.index().create_collection(&spec).await?;
        self.store
            .append_job_log(
                job.id,
                &format!(
                    "attempt {}: building generation {} with {} ({} dimensions) beside generation {} ({})",
                    job.attempts,
                    pending.generation,
                    params.embedder,
                    embedder.dimensions(),
                    record.index_generation,
                    record.embedder
                ),
            )
            .await?;

        let copied = match self.copy_documents(job, worker, &record, target, embedder).await {
            Ok(copied) => copied,
            Err(error) => {
                // Nothing half-built is left behind; a retry starts over.
                if let Some(generation) = self.store.abandon_reindex(collection, job.id).await? {
                    self.retriever.index().drop_collection(IndexTarget::new(collection, generation)).await?;
                }
                return Err(error);
            }
        };
        let previous = self.store.finish_reindex(collection, job.id).await?;
        self.store
            .append_job_log(
                job.id,
                &format!(
                    "{} documents ({} chunks) copied; searches now read generation {} with {}",
                    copied.documents, copied.chunks, pending.generation, params.embedder
                ),
            )
            .await?;
        tokio::time::sleep(DROP_GRACE).await;
        let old = IndexTarget::new(collection, previous);
        if let Err(error) = self.retriever.index().drop_collection(old).await {
            // The swap is done; a leftover generation only takes space.
            tracing::warn!(%old, error = %error.chain(), "dropping the replaced index generation failed");
        }
        self.store.report_job_progress(job.id, worker, 1.0, "done", &[]).await?;
        Ok(())
    }

    /// Embeds the ready documents' chunks with `embedder` into `target`,
    /// a page at a time, reporting progress and stopping on cancel.
    async fn copy_documents(
        &self,
        job: &JobRecord,
        worker: &str,
        record: &CollectionRecord,
        target: IndexTarget,
        embedder: std::sync::Arc<dyn ragd_core::Embedder>,
    ) -> Result<Copied> {
        let index = self.retriever.index().clone();
        let total = self.store.document_status_counts(record.id).await?.ready.max(1);
        let mut copied = Copied::default();
        let mut after = None;
        loop {
            let page = self.store.list_documents(record.id, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let ready: Vec<&DocumentRecord> =
                page.iter().filter(|d| d.status == DocumentStatus::Ready && d.chunk_count > 0).collect();
            let mut payloads = Vec::new();
            for document in &ready {
                let indices: Vec<u32> = (0..u32::try_from(document.chunk_count).unwrap_or(u32::MAX)).collect();
                payloads.extend(index.chunks(record.index_target(), document.id, document.version, &indices).await?);
            }
            let texts: Vec<String> =
                payloads.iter().map(|p| embedding_text(&p.title, &p.heading_path, &p.text)).collect();
            let (embedder_for_page, sparse) = (embedder.clone(), self.retriever.sparse().clone());
            let (dense, sparse_vectors) = tokio::task::spawn_blocking(move || -> ragd_core::Result<_> {
                let dense = embedder_for_page.embed_documents(&texts)?;
                let sparse_vectors: Vec<_> = texts.iter().map(|t| sparse.encode_document(t)).collect();
                Ok((dense, sparse_vectors))
            })
            .await??;
            let chunks = payloads.len();
            let points: Vec<IndexPoint> = payloads
                .into_iter()
                .zip(dense)
                .zip(sparse_vectors)
                .map(|((payload, dense), sparse)| IndexPoint {
                    id: point_id(payload.document, payload.version, payload.chunk_index),
                    dense,
                    sparse,
                    payload,
                })
                .collect();
            index.upsert(target, points).await?;
            // A document deleted or replaced while it was copied: ingestion
            // and deletion already wrote its current state to `target`, so
            // only what this page brought back is undone.
            for document in &ready {
                match self.store.get_document(record.id, document.id).await {
                    Ok(current) if current.version == document.version => {}
                    Ok(current) => index.delete_document(target, document.id, Some(current.version)).await?,
                    Err(ragd_store::Error::NotFound(_)) => index.delete_document(target, document.id, None).await?,
                    Err(error) => return Err(error.into()),
                }
            }
            copied.documents += ready.len() as i64;
            copied.chunks += chunks;
            let step = format!("{} of {total} documents", copied.documents);
            let progress = 0.99 * copied.documents as f64 / total as f64;
            let metrics = [("chunks", copied.documents, copied.chunks as f64)];
            if self.store.report_job_progress(job.id, worker, progress, &step, &metrics).await? == JobControl::Stop {
                self.store.append_job_log(job.id, "stopped at the owner's request").await?;
                return Err(Error::Cancelled);
            }
        }
        Ok(copied)
    }
}

#[derive(Debug, Default)]
struct Copied {
    documents: i64,
    chunks: usize,
}
