//! `ragd eval`: retrieval quality on a BEIR dataset, through the same
//! ingestion pipeline and query pipeline the server uses.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ragd_core::{CollectionIndexSpec, CollectionName, DocumentId, SearchMode, TenantId, TopK};
use ragd_eval::{IngestSummary, Latency, Report};
use ragd_jobs::{IngestPipeline, WorkerHandle};
use ragd_retrieve::SearchRequest;
use ragd_store::{CollectionRecord, NewCollection, NewDocument, StatusCounts};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::serve::Engines;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A BEIR-format directory: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Which qrels to score against; tune on train, report test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// dense, sparse, hybrid, hybrid+rerank or all (the first three, and
    /// hybrid+rerank too when a reranker is given).
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    /// The trained reranker (a `finetune-reranker` model under
    /// `<data_dir>/models`) of hybrid+rerank; `retrieval.reranker` when
    /// absent.
    #[arg(long)]
    pub reranker: Option<String>,
    /// Reuse this collection (ingested by an earlier run) instead of
    /// ingesting the corpus into a fresh one; it is searched with the
    /// embedder it was indexed (or reindexed) with.
    #[arg(long)]
    pub collection: Option<String>,
    /// Ingest with this embedder (one registered under `<data_dir>/models`
    /// by `finetune-embedder` or `quantize`) instead of the configured one.
    #[arg(long, conflicts_with = "collection")]
    pub embedder: Option<String>,
    /// Also write the report(s) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for all state, as for `ragd serve`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Ingestion workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

const RANKING_DEPTH: usize = 100;

/// The runs of `raw`: a label, a search mode and the reranker, if any.
fn modes(raw: &str, reranker: Option<&str>) -> anyhow::Result<Vec<(&'static str, SearchMode, Option<String>)>> {
    let reranked = || ("hybrid+rerank", SearchMode::Hybrid, reranker.map(str::to_owned));
    Ok(match raw {
        "dense" => vec![("dense", SearchMode::Dense, None)],
        "sparse" => vec![("sparse", SearchMode::Sparse, None)],
        "hybrid" => vec![("hybrid", SearchMode::Hybrid, None)],
        "all" => {
            let mut all = vec![
                ("dense", SearchMode::Dense, None),
                ("sparse", SearchMode::Sparse, None),
                ("hybrid", SearchMode::Hybrid, None),
            ];
            all.extend(reranker.map(|_| reranked()));
            all
        }
        "hybrid+rerank" if reranker.is_none() => {
            bail!("hybrid+rerank needs a reranker: pass --reranker NAME or set retrieval.reranker")
        }
        "hybrid+rerank" => vec![reranked()],
        other => bail!("unknown mode {other:?}: use dense, sparse, hybrid, hybrid+rerank or all"),
    })
}

pub async fn run(config: Config, args: EvalArgs) -> anyhow::Result<()> {
    let reranker = args.reranker.clone().or_else(|| config.retrieval.reranker.clone());
    let modes = modes(&args.mode, reranker.as_deref())?;
    let dataset = ragd_eval::load(&args.dataset, &args.split)
        .with_context(|| format!("loading {} ({} split)", args.dataset.display(), args.split))?;
    let name = args
        .dataset
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "dataset".to_owned());
    eprintln!(
        "{name} {}: {} documents, {} judged queries",
        args.split,
        dataset.corpus.len(),
        dataset.queries.len()
    );

    let engines = Engines::build(&config).await?;
    let tenant = TenantId::default_tenant();
    let (collection, ingest) = match &args.collection {
        Some(existing) => {
            let found = engines.store.list_collections(&tenant).await?.into_iter().find(|c| c.name.as_str() == existing);
            (found.with_context(|| format!("no collection named {existing:?}"))?, None)
        }
        None => {
            let collection = create_collection(&engines, &tenant, "eval", &name, args.embedder.as_deref()).await?;
            let summary = ingest_corpus(&engines, &config, &collection, &dataset.corpus, args.workers).await?;
            (collection, Some(summary))
        }
    };
    eprintln!("collection {} ({}), embedder {}", collection.name, collection.id, collection.embedder);

    let retriever = engines.retriever(&config);
    let mut reports = Vec::new();
    for (label, mode, reranker) in modes {
        let mut runs = HashMap::new();
        let mut encode = Vec::new();
        let mut search = Vec::new();
        let mut rerank = Vec::new();
        let mut total = Vec::new();
        for query in &dataset.queries {
            let started = Instant::now();
            let retrieved = retriever
                .search(SearchRequest {
                    tenant: tenant.clone(),
                    target: collection.index_target(),
                    embedder: collection.embedder.clone(),
                    query: query.text.clone(),
                    top_k: TopK::new(RANKING_DEPTH)?,
                    mode,
                    filter: Default::default(),
                    candidates: None,
                    rrf_k: None,
                    principals: None,
                    reranker: reranker.clone(),
                })
                .await?;
            total.push(started.elapsed());
            encode.push(Duration::from_secs_f64(retrieved.timings.encode_ms / 1e3));
            search.push(Duration::from_secs_f64(retrieved.timings.search_ms / 1e3));
            rerank.extend(retrieved.timings.rerank_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)));
            // Chunks rank documents: a document's rank is that of its best chunk.
            let ranked = ragd_eval::dedup_ranked(
                retrieved.hits.iter().filter_map(|hit| hit.payload.metadata.get("beir_id")?.as_str().map(str::to_owned)),
            );
            runs.insert(query.id.clone(), ranked);
        }
        let mut stages = BTreeMap::new();
        for (stage, samples) in [("encode", &encode), ("search", &search), ("rerank", &rerank), ("total", &total)] {
            if let Some(latency) = Latency::from_durations(samples) {
                stages.insert(stage.to_owned(), latency);
            }
        }
        let report = Report {
            dataset: name.clone(),
            split: args.split.clone(),
            mode: label.to_owned(),
            metrics: ragd_eval::evaluate(&dataset.qrels, &runs),
            stages,
            ingest: ingest.clone(),
        };
        println!("{}", ragd_eval::render_table(&report));
        reports.push(report);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A fresh collection for a run of the `purpose` tool (`eval`, `bench`),
/// embedded with `embedder` (the configured one when `None`).
pub(crate) async fn create_collection(
    engines: &Engines,
    tenant: &TenantId,
    purpose: &str,
    dataset: &str,
    embedder: Option<&str>,
) -> anyhow::Result<CollectionRecord> {
    let slug: String =
        dataset.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(40).collect();
    let name = CollectionName::parse(&format!("{purpose}-{slug}-{}", &DocumentId::new().to_string()[24..]))?;
    let embedder = match embedder {
        None => engines.embedder.clone(),
        Some(named) => {
            let (embedders, named) = (engines.embedders.clone(), named.to_owned());
            tokio::task::spawn_blocking(move || embedders.embedder(&named)).await??
        }
    };
    let dimensions = embedder.dimensions();
    let collection = engines
        .store
        .create_collection(&NewCollection {
            settings: Default::default(),
            tenant: tenant.clone(),
            name,
            description: format!("ragd {purpose} of {dataset}"),
            embedder: embedder.model().to_owned(),
            dimensions: dimensions as i64,
        })
        .await?;
    let spec = CollectionIndexSpec { target: collection.index_target(), dimensions, settings: Default::default() };
    engines.index.create_collection(&spec).await?;
    Ok(collection)
}

/// Queues every corpus document as an upload would, then runs ingestion
/// workers until none is left queued or processing.
async fn ingest_corpus(
    engines: &Engines,
    config: &Config,
    collection: &CollectionRecord,
    corpus: &[ragd_eval::CorpusDoc],
    workers: usize,
) -> anyhow::Result<IngestSummary> {
    let started = Instant::now();
    queue_corpus(engines, collection, corpus).await?;
    let pipeline = engines.pipeline(config);
    let counts = run_workers(engines, config, &pipeline, collection, corpus.len(), workers).await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "ingested {} documents ({} failed) into {} chunks in {seconds:.1} s",
        counts.ready, counts.failed, counts.chunks
    );
    Ok(IngestSummary { documents: counts.ready as usize, chunks: counts.chunks as usize, seconds })
}

fn progress_bar(len: usize, message: &'static str) -> anyhow::Result<ProgressBar> {
    let bar = ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")?.progress_chars("=> "),
    );
    bar.set_message(message);
    Ok(bar)
}

/// Stores every corpus document and its ingest job, as an upload would.
pub(crate) async fn queue_corpus(
    engines: &Engines,
    collection: &CollectionRecord,
    corpus: &[ragd_eval::CorpusDoc],
) -> anyhow::Result<()> {
    let bar = progress_bar(corpus.len(), "queueing")?;
    for doc in corpus {
        let mut metadata = Map::new();
        metadata.insert("beir_id".to_owned(), Value::String(doc.id.clone()));
        let content_hash = engines.blobs.put(doc.text.as_bytes()).await?;
        engines
            .store
            .insert_document_with_job(&NewDocument {
                id: DocumentId::new(),
                collection: collection.id,
                tenant: collection.tenant.clone(),
                external_id: Some(doc.id.clone()),
                title: doc.title.clone(),
                source_name: None,
                media_type: "text/plain".to_owned(),
                content_hash,
                size_bytes: doc.text.len() as i64,
                metadata,
                acl: Vec::new(),
            })
            .await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Runs `workers` ingestion workers until none of the collection's
/// `documents` is left queued or processing.
pub(crate) async fn run_workers(
    engines: &Engines,
    config: &Config,
    pipeline: &Arc<IngestPipeline>,
    collection: &CollectionRecord,
    documents: usize,
    workers: usize,
) -> anyhow::Result<StatusCounts> {
    let bar = progress_bar(documents, "ingesting")?;
    let shutdown = CancellationToken::new();
    let handle = WorkerHandle::default();
    let tasks = engines.spawn_workers(config, pipeline, workers.max(1), ragd_jobs::Worker::KINDS, &handle, &shutdown);
    handle.job_queued();
    let counts = loop {
        let counts = engines.store.document_status_counts(collection.id).await?;
        bar.set_position((counts.ready + counts.failed) as u64);
        if counts.queued + counts.processing == 0 {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    bar.finish_and_clear();
    Ok(counts)
}
