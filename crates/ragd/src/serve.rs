//! `ragd serve`: build the engines, start the workers, serve the API, and
//! stop cleanly on SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ragd_core::{Embedder, EmbedderSource, Generator, SparseEncoder, VectorIndex};
use ragd_embed::{Bm25Encoder, Embedders, ModelManifest, ModelRegistry, OnnxEmbedder, TrainedRerankers};
use ragd_generate::{LocalGguf, LocalGgufConfig, OpenAiCompatible};
use ragd_index::{EdgeIndex, QdrantServerIndex};
use ragd_ingest::Chunker;
use ragd_jobs::{IngestPipeline, TrainingJobs, Worker, WorkerHandle};
use ragd_retrieve::Retriever;
use ragd_server::{AppParts, AppState};
use ragd_store::{BlobStore, Store, StoreConfig};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogSection};

pub fn init_tracing(log: &LogSection) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&log.filter))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// The engines shared by every command that touches data.
pub struct Engines {
    pub store: Store,
    pub blobs: BlobStore,
    pub index: Arc<dyn VectorIndex>,
    pub embedder: Arc<dyn Embedder>,
    /// The configured embedder and the ones registered here, by name: a
    /// collection is searched with the embedder its vectors came from.
    pub embedders: Arc<dyn EmbedderSource>,
    /// The embedder as itself, for what the trait does not cover (the
    /// memory budget's batch limit).
    pub dense: Arc<OnnxEmbedder>,
    pub sparse: Arc<dyn SparseEncoder>,
    pub chunker: Arc<Chunker>,
    pub registry: ModelRegistry,
    /// The rerankers trained here, loaded by name on first use.
    pub rerankers: Arc<TrainedRerankers>,
}

impl Engines {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let manifest_text = std::fs::read_to_string(&config.models.manifest)
            .with_context(|| format!("reading model manifest {}", config.models.manifest.display()))?;
        let registry = ModelRegistry::new(ModelManifest::parse(&manifest_text)?, config.models.dir.clone());

        let started = Instant::now();
        let model = registry.resolve(&config.embedding.model)?;
        let runtime = registry.resolve(&config.embedding.runtime)?;
        if config.models.verify_checksums {
            registry.verify(&config.embedding.model)?;
            registry.verify(&config.embedding.runtime)?;
        }
        let embed_config = ragd_embed::EmbedConfig {
            batch_size: config.embedding.batch_size,
            threads: config.embedding.threads,
            memory_arena: config.embedding.memory_arena,
        };
        let runtime_lib = runtime.file("libonnxruntime.so");
        let dense = {
            let model = model.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || OnnxEmbedder::load(&model, &runtime_lib, &embed_config))
                    .await??,
            )
        };
        let chunker = Chunker::from_tokenizer_file(&model.file("tokenizer.json"), config.chunking.clone())?;
        tracing::info!(model = %config.embedding.model, elapsed_ms = started.elapsed().as_millis() as u64, "embedder loaded");

        let sparse = Bm25Encoder::new(&config.sparse)?;
        let index: Arc<dyn VectorIndex> = match config.index.backend.as_str() {
            "qdrant" => Arc::new(QdrantServerIndex::connect(config.index.qdrant.clone()).await?),
            _ => Arc::new(EdgeIndex::open(&config.data_dir.join("index"), config.index.edge.clone())?),
        };
        let blobs_dir = config.blobs_dir();
        let blobs = BlobStore::open(&blobs_dir)
            .with_context(|| format!("opening blobs dir {}", blobs_dir.display()))?;
        let store = Store::connect(&StoreConfig {
            url: config.store_url(),
            max_connections: config.store.max_connections.unwrap_or(8),
        })
        .await?;
        Ok(Self {
            store,
            blobs,
            index,
            embedder: dense.clone(),
            embedders: Arc::new(Embedders::new(dense.clone(), config.data_dir.join("models"), config.models.dir.clone())),
            dense,
            sparse: Arc::new(sparse),
            chunker: Arc::new(chunker),
            registry,
            rerankers: Arc::new(TrainedRerankers::new(config.data_dir.join("models"))),
        })
    }

    pub fn pipeline(&self, config: &Config) -> Arc<IngestPipeline> {
        Arc::new(IngestPipeline::new(
            self.store.clone(),
            self.blobs.clone(),
            self.chunker.clone(),
            self.embedders.clone(),
            self.sparse.clone(),
            self.index.clone(),
            config.jobs.embed_batch_size,
        ))
    }

    /// Starts `count` workers claiming jobs of `kinds` on this runtime; they
    /// stop when `shutdown` is cancelled.
    pub fn spawn_workers(
        &self,
        config: &Config,
        pipeline: &Arc<IngestPipeline>,
        count: usize,
        kinds: &[&'static str],
        handle: &WorkerHandle,
        shutdown: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let training = Arc::new(TrainingJobs::new(
            self.store.clone(),
            config.models.dir.clone(),
            config.data_dir.clone(),
            config.jobs.datasets_dir.clone(),
            self.retriever(config),
        ));
        let host = hostname();
        (0..count)
            .map(|n| {
                let worker = Worker::new(
                    format!("{host}/{}/{n}", std::process::id()),
                    self.store.clone(),
                    pipeline.clone(),
                    training.clone(),
                    config.jobs.clone(),
                    handle.clone(),
                )
                .only(kinds);
                tokio::spawn(worker.run(shutdown.clone()))
            })
            .collect()
    }

    pub fn retriever(&self, config: &Config) -> Retriever {
        Retriever::new(
            self.embedders.clone(),
            self.sparse.clone(),
            self.index.clone(),
            config.retrieval.clone(),
        )
        .with_rerankers(self.rerankers.clone())
    }
}

async fn generator(config: &Config, registry: &ModelRegistry) -> anyhow::Result<Arc<dyn Generator>> {
    if config.generation.backend == "openai" {
        return Ok(Arc::new(OpenAiCompatible::new(config.generation.openai.clone())?));
    }
    let local = &config.generation.local;
    let model = registry.resolve(&local.model)?;
    if config.models.verify_checksums {
        registry.verify(&local.model)?;
    }
    let local_config = LocalGgufConfig {
        model_path: model.file("model.gguf"),
        name: Some(local.model.clone()),
        ..local_settings(config)
    };
    let generator = tokio::task::spawn_blocking(move || LocalGguf::load(&local_config)).await??;
    Ok(Arc::new(generator))
}

/// The configured local generation settings, for any GGUF model.
fn local_settings(config: &Config) -> LocalGgufConfig {
    let local = &config.generation.local;
    LocalGgufConfig {
        context_tokens: local.context_tokens,
        repeat_penalty: local.repeat_penalty,
        repeat_last_n: local.repeat_last_n,
        requantize_slow_weights: local.requantize_slow_weights,
        ..LocalGgufConfig::default()
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let engines = Engines::build(&config).await?;
    crate::keys::bootstrap(&engines.store, &config.auth).await?;
    let generator = generator(&config, &engines.registry).await?;
    crate::memory::fit(&config, &engines.dense)?;

    let shutdown = CancellationToken::new();
    crate::memory::spawn_guard(&config, engines.dense.clone(), shutdown.clone());
    let workers = WorkerHandle::default();
    let tasks = engines.spawn_workers(
        &config,
        &engines.pipeline(&config),
        config.jobs.workers,
        Worker::KINDS,
        &workers,
        &shutdown,
    );

    let state = AppState::new(AppParts {
        store: engines.store.clone(),
        blobs: engines.blobs.clone(),
        index: engines.index.clone(),
        retriever: engines.retriever(&config),
        generator,
        workers,
        models: ragd_jobs::ModelDirs {
            registry: config.models.dir.clone(),
            registered: config.data_dir.join("models"),
        },
        local_generation: local_settings(&config),
        embedder_model: engines.embedder.model().to_owned(),
        dimensions: engines.embedder.dimensions(),
        server: config.server.clone(),
        answer: config.answer.clone(),
        auth: config.auth.clone(),
    });
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, data_dir = %config.data_dir.display(), "listening");
    // Tests and scripts read the bound address (port 0 picks one) from here.
    println!("ragd listening on http://{address}");

    let stop = shutdown.clone();
    axum::serve(listener, ragd_server::router(state))
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            stop.cancel();
        })
        .await?;
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
