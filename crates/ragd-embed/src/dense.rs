//! The dense embedder: a sentence-transformer ONNX export run by fastembed on
//! ONNX Runtime, mean pooled and L2 normalised.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use fastembed::{InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel};
use ort::environment::Environment;
use serde::Deserialize;

use crate::batches::{longest_first, restore};
use crate::error::{Error, Result};
use crate::registry::ResolvedModel;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedConfig {
    /// Texts per ONNX Runtime call. Larger batches amortise call overhead but
    /// pad every text to the longest one in the batch (texts are batched
    /// longest first, so a call's texts are of similar length).
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose (one per
    /// physical core).
    pub threads: usize,
    /// Whether ONNX Runtime keeps freed activation memory in its arena for
    /// the next call. The arena grows in doubling steps and never shrinks,
    /// so with it the process holds about twice the largest batch's
    /// activations for good; without it memory is returned after each call.
    pub memory_arena: bool,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self { batch_size: 8, threads: 0, memory_arena: false }
    }
}

pub struct OnnxEmbedder {
    name: String,
    dimensions: usize,
    /// Lowered after loading when the process has a memory budget.
    batch_size: AtomicUsize,
    // fastembed's `embed` takes `&mut self`; ONNX Runtime already uses every
    // configured thread per call, so serialising calls costs no throughput.
    model: Mutex<TextEmbedding>,
}

impl std::fmt::Debug for OnnxEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxEmbedder")
            .field("name", &self.name)
            .field("dimensions", &self.dimensions)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl OnnxEmbedder {
    /// Loads `model` (kind `embedder`, with `dimensions` and `max_tokens` in
    /// the manifest). The first call in a process also loads ONNX Runtime
    /// from `onnxruntime_lib`; later calls must pass the same library.
    pub fn load(model: &ResolvedModel, onnxruntime_lib: &Path, config: &EmbedConfig) -> Result<Self> {
        let entry = &model.entry;
        if entry.kind != "embedder" {
            return Err(Error::Config(format!(
                "model {:?} is of kind {:?}, not an ONNX embedder",
                entry.name, entry.kind
            )));
        }
        let (Some(dimensions), Some(max_tokens)) = (entry.dimensions, entry.max_tokens) else {
            return Err(Error::Config(format!(
                "model {:?} needs `dimensions` and `max_tokens` in the model manifest",
                entry.name
            )));
        };
        if config.batch_size == 0 {
            return Err(Error::Config("embedding batch_size must be at least 1".to_owned()));
        }

        let span = tracing::info_span!(
            "load_embedder",
            model = %entry.name,
            threads = config.threads,
            elapsed_ms = tracing::field::Empty
        );
        let _guard = span.enter();
        let started = Instant::now();

        let environment = ort_environment(onnxruntime_lib)?;
        let read = |path: &str| {
            let path = model.file(path);
            std::fs::read(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    Error::ModelMissing { name: entry.name.clone(), path }
                } else {
                    Error::Io { path, source }
                }
            })
        };
        // fastembed rebuilds the tokenizer's padding and truncation from the
        // sentence-transformers files, not from tokenizer.json alone.
        let files = TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let user_model =
            UserDefinedEmbeddingModel::new(read("model.onnx")?, files).with_pooling(Pooling::Mean);
        let cpu = ort::ep::CPU::default().with_arena_allocator(config.memory_arena).build();
        let options = InitOptionsUserDefined::new()
            .with_environment(environment)
            .with_execution_providers(vec![cpu])
            .with_max_length(max_tokens)
            .with_intra_threads(config.threads);
        let text_embedding = TextEmbedding::try_new_from_user_defined(user_model, options)
            .map_err(|err| Error::Runtime(format!("loading model {:?}: {err}", entry.name)))?;

        let embedder = Self {
            name: entry.name.clone(),
            dimensions,
            batch_size: AtomicUsize::new(config.batch_size),
            model: Mutex::new(text_embedding),
        };
        // A manifest that disagrees with the model would otherwise surface
        // only when the index rejects the first upsert.
        let probe = embedder.run(&["dimension probe"])?;
        if probe.first().map(Vec::len) != Some(dimensions) {
            return Err(Error::Config(format!(
                "model {:?} produces {} dimensions but the manifest says {dimensions}",
                entry.name,
                probe.first().map_or(0, Vec::len)
            )));
        }
        span.record("elapsed_ms", started.elapsed().as_millis() as u64);
        tracing::info!(dimensions, max_tokens, "embedder loaded");
        Ok(embedder)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.load(Ordering::Relaxed)
    }

    /// Runs at most `max` texts per ONNX Runtime call from now on: its
    /// working memory grows with the texts in one call.
    pub fn limit_batch_size(&self, max: usize) {
        self.batch_size.fetch_min(max.max(1), Ordering::Relaxed);
    }

    fn run<S: AsRef<str> + Send + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let order = longest_first(texts);
        let sorted: Vec<&str> = order.iter().map(|&i| texts[i].as_ref()).collect();
        let vectors = self
            .model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .embed(&sorted, Some(self.batch_size()))
            .map_err(|err| Error::Runtime(format!("embedding with {:?}: {err}", self.name)))?;
        let vectors = restore(&order, vectors);
        if vectors.len() != texts.len() {
            return Err(Error::Runtime(format!(
                "model {:?} returned {} vectors for {} texts",
                self.name,
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }
}

impl ragd_core::Embedder for OnnxEmbedder {
    fn model(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed_documents(&self, texts: &[String]) -> ragd_core::Result<Vec<Vec<f32>>> {
        let span = tracing::debug_span!(
            "embed_documents",
            model = %self.name,
            count = texts.len(),
            chars = texts.iter().map(String::len).sum::<usize>(),
            elapsed_ms = tracing::field::Empty
        );
        let _guard = span.enter();
        let started = Instant::now();
        let vectors = self.run(texts)?;
        span.record("elapsed_ms", started.elapsed().as_millis() as u64);
        Ok(vectors)
    }

    fn embed_query(&self, text: &str) -> ragd_core::Result<Vec<f32>> {
        let span = tracing::debug_span!("embed_query", model = %self.name, chars = text.len(), elapsed_ms = tracing::field::Empty);
        let _guard = span.enter();
        let started = Instant::now();
        // all-MiniLM was trained symmetric: queries get no instruction prefix.
        let vector = self
            .run(&[text])?
            .pop()
            .ok_or_else(|| Error::Runtime(format!("model {:?} returned no vector", self.name)))?;
        span.record("elapsed_ms", started.elapsed().as_millis() as u64);
        Ok(vector)
    }
}

/// The process's one ONNX Runtime environment. ort allows a single
/// environment per process and loads the shared library once, so the first
/// caller's library wins; a failed attempt is not remembered, so it can be
/// retried once the file is fixed.
fn ort_environment(lib: &Path) -> Result<Environment> {
    static LOADED: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

    if !lib.is_file() {
        return Err(Error::ModelMissing { name: "onnxruntime".to_owned(), path: lib.to_owned() });
    }
    let lib = std::fs::canonicalize(lib).map_err(|source| Error::Io { path: lib.to_owned(), source })?;
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((path, environment)) = loaded.as_ref() {
        if *path != lib {
            return Err(Error::Config(format!(
                "ONNX Runtime is already loaded from {}; cannot also load {}",
                path.display(),
                lib.display()
            )));
        }
        return Ok(environment.clone());
    }
    let environment = ort::init_from(&lib)
        .map_err(|err| Error::Runtime(format!("loading ONNX Runtime from {}: {err}", lib.display())))?
        .with_name("ragd")
        .build()
        .map_err(|err| Error::Runtime(format!("creating the ONNX Runtime environment: {err}")))?;
    tracing::info!(path = %lib.display(), "onnx runtime loaded");
    *loaded = Some((lib, environment.clone()));
    Ok(environment)
}

#[cfg(test)]
mod tests {
    use ragd_core::Embedder;

    use super::*;
    use crate::registry::{ModelManifest, ModelRegistry};

    fn models_dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))
    }

    fn load_minilm() -> OnnxEmbedder {
        let manifest = ModelManifest::parse(include_str!("../../../config/models.toml")).unwrap();
        let registry = ModelRegistry::new(manifest, models_dir());
        let resolve = |name| {
            registry
                .resolve(name)
                .unwrap_or_else(|err| panic!("{err} (run scripts/fetch-models to lay out the models)"))
        };
        let runtime = resolve("onnxruntime");
        OnnxEmbedder::load(
            &resolve("minilm-l6-onnx"),
            &runtime.file("libonnxruntime.so"),
            &EmbedConfig::default(),
        )
        .unwrap()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn minilm_embeds_by_meaning() {
        let embedder = load_minilm();
        assert_eq!((embedder.model(), embedder.dimensions()), ("minilm-l6-onnx", 384));

        let texts: Vec<String> =
            ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
                .map(String::from)
                .to_vec();
        let vectors = embedder.embed_documents(&texts).unwrap();
        assert_eq!(vectors.len(), 3);
        for vector in &vectors {
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert_eq!(vector.len(), 384);
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
        let related = cosine(&vectors[0], &vectors[1]);
        let unrelated = cosine(&vectors[0], &vectors[2]);
        assert!(related > 0.6 && unrelated < 0.2, "related {related}, unrelated {unrelated}");

        // Batching pads texts to the longest in the batch; the attention mask
        // must keep that from changing a text's vector.
        let query = embedder.embed_query(&texts[0]).unwrap();
        assert!(cosine(&query, &vectors[0]) > 0.999);
        assert!(embedder.embed_documents(&[]).unwrap().is_empty());

        // ORT is loaded once per process; a second library path is refused.
        let other = std::env::temp_dir().join("ragd-embed-test-other-libonnxruntime.so");
        std::fs::write(&other, b"not a library").unwrap();
        assert!(matches!(ort_environment(&other), Err(Error::Config(_))));
        std::fs::remove_file(&other).unwrap();
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let manifest = ModelManifest::parse(include_str!("../../../config/models.toml")).unwrap();
        let registry = ModelRegistry::new(manifest, models_dir());
        let resolve = |name| {
            registry
                .resolve(name)
                .unwrap_or_else(|err| panic!("{err} (run scripts/fetch-models to lay out the models)"))
        };
        let lib = resolve("onnxruntime").file("libonnxruntime.so");
        let err =
            OnnxEmbedder::load(&resolve("smollm2-135m-instruct"), &lib, &EmbedConfig::default()).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        let err = OnnxEmbedder::load(
            &resolve("minilm-l6-onnx"),
            Path::new("/nonexistent/libonnxruntime.so"),
            &EmbedConfig::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::ModelMissing { .. }) && err.to_string().contains("scripts/fetch-models"),
            "{err}"
        );
    }
}
