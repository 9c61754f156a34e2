//! Models trained or quantized here, registered by their jobs as
//! `<data_dir>/models/<name>/` with a `manifest.json` naming their kind,
//! loaded by name once each and kept: a registered model directory never
//! changes.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ragd_core::{Embedder, EmbedderSource};

use crate::cross::{CrossEncoder, CONFIG_FILE, MANIFEST_FILE, RERANKER_KIND, WEIGHTS_FILE};
use crate::error::{Error, Result};
use crate::sentence::SentenceEncoder;

/// The `kind` in the manifest of an embedder trained or quantized here.
pub const EMBEDDER_KIND: &str = "embedder-safetensors";

/// A model kind that can be registered under the models directory.
pub trait TrainedModel: Sized + Send + Sync + 'static {
    /// The manifest `kind` of such models.
    const KIND: &'static str;
    /// The token limit at inference, from the one the manifest says the
    /// model was trained with (none for a base model or a quantized one).
    fn serving_max_seq_len(trained: Option<usize>) -> usize;
    fn load(name: &str, dir: &Path, max_seq_len: usize) -> Result<Self>;
}

impl TrainedModel for CrossEncoder {
    const KIND: &'static str = RERANKER_KIND;
    /// A reranker reads pairs as it was trained to, cut the same way.
    fn serving_max_seq_len(trained: Option<usize>) -> usize {
        trained.unwrap_or(512)
    }
    fn load(name: &str, dir: &Path, max_seq_len: usize) -> Result<Self> {
        CrossEncoder::load(name, dir, max_seq_len)
    }
}

/// sentence-transformers' limit for MiniLM embedders, which ingestion's
/// chunks (`chunking.max_tokens`) are sized to.
const EMBEDDER_MAX_SEQ_LEN: usize = 256;

impl TrainedModel for SentenceEncoder {
    const KIND: &'static str = EMBEDDER_KIND;
    /// Fine-tuning on shorter texts does not make whole chunks shorter:
    /// they are embedded up to the usual limit, or the trained one if
    /// longer.
    fn serving_max_seq_len(trained: Option<usize>) -> usize {
        trained.map_or(EMBEDDER_MAX_SEQ_LEN, |trained| trained.max(EMBEDDER_MAX_SEQ_LEN))
    }
    fn load(name: &str, dir: &Path, max_seq_len: usize) -> Result<Self> {
        SentenceEncoder::load(name, dir, max_seq_len)
    }
}

/// The fields of a registered model's `manifest.json` that loading needs.
#[derive(Debug, serde::Deserialize)]
struct Manifest {
    kind: String,
    max_seq_len: Option<usize>,
}

/// The registered models of one kind, by name.
pub struct TrainedModels<M> {
    models_dir: PathBuf,
    /// Where base models without a manifest live (the registry's), if
    /// they may be loaded too.
    bases_dir: Option<PathBuf>,
    loaded: Mutex<HashMap<String, Arc<M>>>,
    kind: PhantomData<M>,
}

pub type TrainedRerankers = TrainedModels<CrossEncoder>;
pub type TrainedEmbedders = TrainedModels<SentenceEncoder>;

impl<M: TrainedModel> TrainedModels<M> {
    pub fn new(models_dir: PathBuf) -> Self {
        Self { models_dir, bases_dir: None, loaded: Mutex::new(HashMap::new()), kind: PhantomData }
    }

    /// Also loads the base models of `bases_dir` (`<bases_dir>/<name>/`
    /// with the model's weights, config and tokenizer); a registered model
    /// of the same name wins.
    pub fn with_bases(mut self, bases_dir: PathBuf) -> Self {
        self.bases_dir = Some(bases_dir);
        self
    }

    pub fn load(&self, name: &str) -> Result<Arc<M>> {
        if let Some(found) = self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(found.clone());
        }
        let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']);
        let dir = self.models_dir.join(name);
        let manifest_path = dir.join(MANIFEST_FILE);
        if plain && !manifest_path.is_file() {
            if let Some(base) = self.bases_dir.as_ref().map(|bases| bases.join(name)) {
                if base.join(WEIGHTS_FILE).is_file() && base.join(CONFIG_FILE).is_file() {
                    return self.keep(name, &base, M::serving_max_seq_len(None));
                }
            }
        }
        if !plain || !manifest_path.is_file() {
            return Err(Error::UnknownModel { name: name.to_owned(), known: self.known() });
        }
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|source| Error::Io { path: manifest_path.clone(), source })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("model {name:?}: manifest.json: {e}")))?;
        if manifest.kind != M::KIND {
            return Err(Error::Config(format!("model {name:?} is of kind {:?}, not a {}", manifest.kind, M::KIND)));
        }
        self.keep(name, &dir, M::serving_max_seq_len(manifest.max_seq_len))
    }

    fn keep(&self, name: &str, dir: &Path, max_seq_len: usize) -> Result<Arc<M>> {
        let started = Instant::now();
        let model = Arc::new(M::load(name, dir, max_seq_len)?);
        tracing::info!(model = name, kind = M::KIND, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(loaded.entry(name.to_owned()).or_insert(model).clone())
    }

    /// The names of the registered models of this kind and of the base
    /// models that may be loaded, sorted.
    fn known(&self) -> Vec<String> {
        let entries = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten();
        let registered = entries(&self.models_dir).filter(|entry| {
            std::fs::read_to_string(entry.path().join(MANIFEST_FILE))
                .ok()
                .and_then(|text| serde_json::from_str::<Manifest>(&text).ok())
                .is_some_and(|manifest| manifest.kind == M::KIND)
        });
        let bases = self.bases_dir.iter().flat_map(|dir| entries(dir)).filter(|entry| {
            entry.path().join(WEIGHTS_FILE).is_file() && entry.path().join(CONFIG_FILE).is_file()
        });
        let mut names: Vec<String> =
            registered.chain(bases).map(|entry| entry.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

impl ragd_core::RerankerSource for TrainedRerankers {
    fn reranker(&self, name: &str) -> ragd_core::Result<Arc<dyn ragd_core::Reranker>> {
        Ok(self.load(name)?)
    }
}

/// The configured embedder, the embedders registered here and the
/// registry's base embedders (safetensors, on candle), by name.
pub struct Embedders {
    configured: Arc<dyn Embedder>,
    trained: TrainedEmbedders,
}

impl Embedders {
    pub fn new(configured: Arc<dyn Embedder>, models_dir: PathBuf, registry_dir: PathBuf) -> Self {
        Self { configured, trained: TrainedEmbedders::new(models_dir).with_bases(registry_dir) }
    }
}

impl EmbedderSource for Embedders {
    fn embedder(&self, name: &str) -> ragd_core::Result<Arc<dyn Embedder>> {
        if name == self.configured.model() {
            return Ok(self.configured.clone());
        }
        match self.trained.load(name) {
            Ok(trained) => Ok(trained),
            Err(Error::UnknownModel { name, mut known }) => {
                known.insert(0, self.configured.model().to_owned());
                Err(Error::UnknownModel { name, known }.into())
            }
            Err(other) => Err(other.into()),
        }
    }
}
