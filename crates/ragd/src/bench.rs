//! `ragd bench ingest`: the ingestion pipeline's throughput (store, worker,
//! parse, chunk, embed, index, publish) next to the raw embedder's on the
//! same chunk texts, in one run, with the process's peak memory.
//! `ragd bench perplexity`: a GGUF generator's perplexity on a text, with
//! its file size and decode speed, to compare quantizations of one model.
//! `ragd bench encoder`: a BERT embedder against its Q8_0 copy.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context};
use ragd_core::TenantId;
use ragd_jobs::ingest::chunk_document;
use serde::Serialize;

use crate::config::Config;
use crate::eval::{create_collection, queue_corpus, run_workers};
use crate::serve::Engines;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Ingest a BEIR corpus into a fresh data directory and compare the
    /// pipeline's throughput with the raw embedder's.
    Ingest(IngestBenchArgs),
    /// A GGUF generator's perplexity on a plain-text file, its size and
    /// decode speed.
    Perplexity(PerplexityArgs),
    /// A BERT embedder against its Q8_0 copy: cosine of their vectors on
    /// a corpus's passages, their speed and weight sizes.
    Encoder(EncoderArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct EncoderArgs {
    /// The f32 model directory (`model.safetensors`).
    #[arg(long)]
    pub model: PathBuf,
    /// The quantized copy's directory (`model.gguf`), from a `quantize` job.
    #[arg(long)]
    pub quantized: PathBuf,
    /// A BEIR corpus file: one {"_id", "title", "text"} object per line.
    #[arg(long, default_value = "../shared/eval/scifact/corpus.jsonl")]
    pub corpus: PathBuf,
    /// Only the first N passages.
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    #[arg(long, default_value_t = 256)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

/// Embeds the passages with both models and prints one JSON line.
pub fn encoder(args: EncoderArgs) -> anyhow::Result<()> {
    let mut corpus =
        ragd_eval::load_corpus(&args.corpus).with_context(|| format!("loading {}", args.corpus.display()))?;
    corpus.truncate(args.limit);
    let passages: Vec<String> = corpus.iter().map(|doc| format!("{} {}", doc.title, doc.text)).collect();
    let passages: Vec<&str> = passages.iter().map(String::as_str).collect();
    let embed = |dir: &PathBuf| -> anyhow::Result<(Vec<Vec<f32>>, f64)> {
        let model = ragd_embed::SentenceEncoder::load("bench", dir, args.max_seq_len)?;
        let started = Instant::now();
        let mut vectors = Vec::with_capacity(passages.len());
        for batch in passages.chunks(args.batch_size.max(1)) {
            vectors.extend(model.embed(batch)?);
        }
        Ok((vectors, started.elapsed().as_secs_f64()))
    };
    let (full, full_seconds) = embed(&args.model)?;
    let (small, small_seconds) = embed(&args.quantized)?;
    let cosines: Vec<f32> =
        full.iter().zip(&small).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum()).collect();
    let size =
        |path: PathBuf| std::fs::metadata(&path).map(|m| m.len()).with_context(|| path.display().to_string());
    let line = serde_json::json!({
        "passages": passages.len(),
        "cosine_mean": cosines.iter().sum::<f32>() / cosines.len().max(1) as f32,
        "cosine_min": cosines.iter().copied().fold(f32::INFINITY, f32::min),
        "f32_passages_per_second": passages.len() as f64 / full_seconds,
        "q8_0_passages_per_second": passages.len() as f64 / small_seconds,
        "f32_bytes": size(args.model.join(ragd_embed::WEIGHTS_FILE))?,
        "q8_0_bytes": size(args.quantized.join(ragd_embed::QUANTIZED_WEIGHTS_FILE))?,
    });
    println!("{line}");
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct PerplexityArgs {
    /// The GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// A plain-text file the model has not been trained on.
    #[arg(long)]
    pub text: PathBuf,
    /// Score only the first N tokens of the text.
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// Tokens per window; each window starts with an empty context.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Run Q4_1/Q5_x weights as they are instead of converting them to Q8_0
    /// at load, as `generation.local.requantize_slow_weights` does.
    #[arg(long)]
    pub keep_slow_weights: bool,
}

/// Loads the model and prints one JSON line: file, bytes, tokens,
/// perplexity, tokens/s.
pub fn perplexity(args: PerplexityArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let bytes =
        std::fs::metadata(&args.model).with_context(|| format!("reading {}", args.model.display()))?.len();
    let config = ragd_generate::LocalGgufConfig {
        model_path: args.model.clone(),
        context_tokens: args.window.max(2),
        requantize_slow_weights: !args.keep_slow_weights,
        ..Default::default()
    };
    let model = ragd_generate::LocalGguf::load(&config)?;
    let measured = model.perplexity(&text, args.tokens, args.window)?;
    let line = serde_json::json!({
        "model": args.model.display().to_string(),
        "bytes": bytes,
        "tokens": measured.tokens,
        "window": args.window,
        "perplexity": measured.perplexity,
        "tokens_per_second": measured.tokens_per_second,
    });
    println!("{line}");
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct IngestBenchArgs {
    /// A BEIR corpus file: one {"_id", "title", "text"} object per line.
    #[arg(long, default_value = "../shared/eval/scifact/corpus.jsonl")]
    pub corpus: PathBuf,
    /// Only the first N documents of the corpus.
    #[arg(long)]
    pub limit: Option<usize>,
    /// An empty or missing directory for the run's state (default: a
    /// temporary directory, deleted afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Ingestion workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl IngestBenchArgs {
    /// The data directory to use, and the temporary directory to delete
    /// when none was given.
    pub fn fresh_data_dir(&self) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
        match &self.data_dir {
            Some(dir) => {
                let empty = match std::fs::read_dir(dir) {
                    Ok(mut entries) => entries.next().is_none(),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
                    Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
                };
                if !empty {
                    bail!("{} is not empty; the benchmark needs a fresh data directory", dir.display());
                }
                Ok((dir.clone(), None))
            }
            None => {
                let dir = tempfile::Builder::new().prefix("ragd-bench-").tempdir()?;
                Ok((dir.path().to_owned(), Some(dir)))
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct IngestBench {
    documents: usize,
    failed: usize,
    chunks: usize,
    embed_batch_size: usize,
    workers: usize,
    queue_seconds: f64,
    pipeline_seconds: f64,
    pipeline_documents_per_second: f64,
    pipeline_chunks_per_second: f64,
    /// Time the workers spent in each stage, summed over workers.
    stage_seconds: StageSeconds,
    raw_embed_seconds: f64,
    raw_embed_chunks_per_second: f64,
    /// Pipeline chunks/s over raw embedder chunks/s.
    pipeline_share_of_raw: f64,
    /// Highest resident memory of the process before the raw pass (VmHWM).
    peak_rss_mib: f64,
}

#[derive(Debug, Serialize)]
struct StageSeconds {
    parse: f64,
    chunk: f64,
    embed: f64,
    index: f64,
}

pub async fn run(config: Config, args: IngestBenchArgs) -> anyhow::Result<()> {
    let mut corpus =
        ragd_eval::load_corpus(&args.corpus).with_context(|| format!("loading {}", args.corpus.display()))?;
    if let Some(limit) = args.limit {
        corpus.truncate(limit);
    }
    if corpus.is_empty() {
        bail!("{} holds no documents", args.corpus.display());
    }
    let engines = Engines::build(&config).await?;
    let name = args.corpus.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let collection = create_collection(&engines, &TenantId::default_tenant(), "bench", &name, None).await?;

    let started = Instant::now();
    queue_corpus(&engines, &collection, &corpus).await?;
    let queue_seconds = started.elapsed().as_secs_f64();

    let pipeline = engines.pipeline(&config);
    let started = Instant::now();
    let counts = run_workers(&engines, &config, &pipeline, &collection, corpus.len(), args.workers).await?;
    let pipeline_seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_mib()?;
    let points = engines.index.count(collection.index_target()).await?;
    if points != counts.chunks as u64 {
        bail!("the index holds {points} points but the documents have {} chunks", counts.chunks);
    }

    // The raw pass embeds exactly what the pipeline embedded, in batches of
    // the same size, with no store, index or worker around it.
    let batch_size = config.jobs.embed_batch_size;
    let (chunker, embedder) = (engines.chunker.clone(), engines.embedder.clone());
    let texts: Vec<String> = corpus
        .iter()
        .filter_map(|doc| {
            let chunks = chunk_document(&chunker, None, "text/plain", doc.text.as_bytes()).ok()?;
            Some(chunks.into_iter().map(|chunk| chunk.embedding_text(&doc.title)).collect::<Vec<_>>())
        })
        .flatten()
        .collect();
    if texts.len() != counts.chunks as usize {
        bail!("chunking again gave {} chunks; the pipeline made {}", texts.len(), counts.chunks);
    }
    let raw_embed_seconds = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let started = Instant::now();
        for batch in texts.chunks(batch_size) {
            embedder.embed_documents(batch)?;
        }
        Ok(started.elapsed().as_secs_f64())
    })
    .await??;

    let counters = pipeline.counters();
    let seconds = |ms: &std::sync::atomic::AtomicU64| ms.load(Ordering::Relaxed) as f64 / 1e3;
    let chunks = counts.chunks as usize;
    let pipeline_chunks_per_second = chunks as f64 / pipeline_seconds;
    let raw_embed_chunks_per_second = chunks as f64 / raw_embed_seconds;
    let result = IngestBench {
        documents: counts.ready as usize,
        failed: counts.failed as usize,
        chunks,
        embed_batch_size: batch_size,
        workers: args.workers.max(1),
        queue_seconds,
        pipeline_seconds,
        pipeline_documents_per_second: corpus.len() as f64 / pipeline_seconds,
        pipeline_chunks_per_second,
        stage_seconds: StageSeconds {
            parse: seconds(&counters.parse_ms),
            chunk: seconds(&counters.chunk_ms),
            embed: seconds(&counters.embed_ms),
            index: seconds(&counters.index_ms),
        },
        raw_embed_seconds,
        raw_embed_chunks_per_second,
        pipeline_share_of_raw: pipeline_chunks_per_second / raw_embed_chunks_per_second,
        peak_rss_mib,
    };
    println!("{}", render(&result));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn render(r: &IngestBench) -> String {
    let s = &r.stage_seconds;
    format!(
        "documents          {} ({} failed), {} chunks; embed batch {}, {} worker(s)\n\
         queueing           {:.1} s\n\
         pipeline           {:.1} s: {:.1} documents/s, {:.1} chunks/s\n\
         \x20 stages           parse {:.1} s, chunk {:.1} s, embed {:.1} s, index {:.1} s\n\
         raw embedder       {:.1} s: {:.1} chunks/s\n\
         pipeline / raw     {:.1}%\n\
         peak RSS           {:.0} MiB",
        r.documents,
        r.failed,
        r.chunks,
        r.embed_batch_size,
        r.workers,
        r.queue_seconds,
        r.pipeline_seconds,
        r.pipeline_documents_per_second,
        r.pipeline_chunks_per_second,
        s.parse,
        s.chunk,
        s.embed,
        s.index,
        r.raw_embed_seconds,
        r.raw_embed_chunks_per_second,
        r.pipeline_share_of_raw * 100.0,
        r.peak_rss_mib,
    )
}

/// The process's peak resident set size so far (VmHWM), in MiB.
fn peak_rss_mib() -> anyhow::Result<f64> {
    Ok(crate::memory::process_status_kib("VmHWM")? as f64 / 1024.0)
}
