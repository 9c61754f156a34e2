//! The `finetune-embedder` job: trains a copy of a base embedder on query
//! -> passage pairs (inline, or from a BEIR folder's qrels) with
//! `ragd-train`, reports every step to the store, checkpoints every epoch,
//! and registers the result as a model directory under
//! `<data_dir>/models/<name>`.
//!
//! A retried attempt resumes after the last checkpointed epoch (with fresh
//! optimizer moments); without a checkpoint it starts again from the base.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ragd_core::{ErrorKind, JobId};
use ragd_retrieve::Retriever;
use ragd_store::{JobControl, JobRecord, Store};
use ragd_train::{Checkpoint, Event, FinetuneConfig, TrainingPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::generator_job::{FinetuneGeneratorParams, FINETUNE_GENERATOR_KIND};
use crate::mining::{check_skip_hits, group_by_query};
use crate::quantize_job::{ModelDirs, QuantizeParams, QUANTIZE_KIND};
use crate::reindex_job::{ReindexParams, REINDEX_KIND};
use crate::reranker_job::{FinetuneRerankerParams, FINETUNE_RERANKER_KIND};
use crate::{Error, Result};

pub const FINETUNE_EMBEDDER_KIND: &str = "finetune-embedder";

/// The kind of the models this job produces (a `config/models.toml` kind).
const MODEL_KIND: &str = "embedder-safetensors";

/// The parameters of a `finetune-embedder` job, as posted and as stored
/// (with every default filled in).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneEmbedderParams {
    /// The trained model's name; default `<base_model>-ft-<job id prefix>`.
    #[serde(default)]
    pub name: Option<String>,
    /// A registry model (`config/models.toml`, safetensors) or a model
    /// trained earlier.
    #[serde(default = "default_base_model")]
    pub base_model: String,
    #[serde(default)]
    pub pairs: Vec<PairParams>,
    #[serde(default)]
    pub dataset: Option<DatasetParams>,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Mine a hard negative for every pair that has none: the query's top
    /// hybrid hit in this collection that is not a judged answer. Its id or
    /// name when posted, its id once stored.
    #[serde(default)]
    pub collection: Option<String>,
    /// Unjudged top hits passed over before the negative is taken: in a
    /// dataset that judges one or two answers per query, the very top hits
    /// are often unjudged answers, which would teach the model the wrong
    /// thing.
    #[serde(default)]
    pub skip_hits: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PairParams {
    pub query: String,
    pub positive: String,
    #[serde(default)]
    pub negative: Option<String>,
}

/// A BEIR folder under `jobs.datasets_dir`: every judged (query, document)
/// of the split with a grade above 0 becomes a pair.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetParams {
    /// Relative to `jobs.datasets_dir`, which callers cannot leave.
    pub beir_dir: PathBuf,
    #[serde(default = "default_split")]
    pub split: String,
    /// Use only the first this many pairs (in qrels order).
    #[serde(default)]
    pub limit: Option<usize>,
}

pub(crate) fn default_base_model() -> String {
    "all-minilm-l6-v2".to_owned()
}
pub(crate) fn default_epochs() -> usize {
    1
}
fn default_batch_size() -> usize {
    16
}
pub(crate) fn default_learning_rate() -> f64 {
    2e-5
}
pub(crate) fn default_max_seq_len() -> usize {
    128
}
pub(crate) fn default_seed() -> u64 {
    42
}
pub(crate) fn default_validation_fraction() -> f64 {
    0.1
}
fn default_split() -> String {
    "train".to_owned()
}

pub(crate) const MAX_INLINE_PAIRS: usize = 100_000;

/// How often a running job looks for a cancel request between reports.
pub(crate) const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

impl FinetuneEmbedderParams {
    fn check(&self) -> std::result::Result<(), String> {
        if let Some(name) = &self.name {
            check_model_name(name)?;
        }
        check_model_name(&self.base_model).map_err(|reason| format!("base_model: {reason}"))?;
        match (&self.dataset, self.pairs.len()) {
            (Some(_), 0) => {}
            (Some(_), _) => return Err("give either pairs or dataset, not both".to_owned()),
            (None, 0 | 1) => return Err("pairs needs at least 2 pairs (or give a dataset)".to_owned()),
            (None, n) if n > MAX_INLINE_PAIRS => {
                return Err(format!("at most {MAX_INLINE_PAIRS} inline pairs; use a dataset for more"))
            }
            (None, _) => {}
        }
        if let Some(n) =
            self.pairs.iter().position(|p| p.query.trim().is_empty() || p.positive.trim().is_empty())
        {
            return Err(format!("pairs[{n}]: query and positive must not be empty"));
        }
        if let Some(dataset) = &self.dataset {
            dataset.check()?;
        }
        if self.collection.as_ref().is_some_and(|c| c.trim().is_empty()) {
            return Err("collection must be a collection's id or name (hard negatives are mined from it)".to_owned());
        }
        check_skip_hits(self.skip_hits)?;
        check_training_numbers(TrainingNumbers {
            epochs: self.epochs,
            batch_size: self.batch_size,
            min_batch_size: 2,
            max_seq_len: self.max_seq_len,
            learning_rate: self.learning_rate,
            validation_fraction: self.validation_fraction,
        })
    }
}

impl DatasetParams {
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let inside = self.beir_dir.components().all(|part| matches!(part, std::path::Component::Normal(_)));
        if !inside || self.beir_dir.as_os_str().is_empty() {
            return Err("dataset.beir_dir must be a relative path inside the server's datasets directory, \
                        without '..'"
                .to_owned());
        }
        if self.split.is_empty() || self.split.contains(['/', '\\']) || self.split.contains("..") {
            return Err("dataset.split must be a plain name such as \"train\"".to_owned());
        }
        if self.limit.is_some_and(|limit| limit < 2) {
            return Err("dataset.limit must be at least 2".to_owned());
        }
        Ok(())
    }
}

/// The numbers every training job takes.
pub(crate) struct TrainingNumbers {
    pub epochs: usize,
    pub batch_size: usize,
    pub min_batch_size: usize,
    pub max_seq_len: usize,
    pub learning_rate: f64,
    pub validation_fraction: f64,
}

pub(crate) fn check_training_numbers(n: TrainingNumbers) -> std::result::Result<(), String> {
    if !(1..=100).contains(&n.epochs) {
        return Err("epochs must be between 1 and 100".to_owned());
    }
    if !(n.min_batch_size..=512).contains(&n.batch_size) {
        return Err(format!("batch_size must be between {} and 512", n.min_batch_size));
    }
    if !(8..=512).contains(&n.max_seq_len) {
        return Err("max_seq_len must be between 8 and 512".to_owned());
    }
    if !(n.learning_rate > 0.0 && n.learning_rate <= 0.1) {
        return Err("learning_rate must be above 0 and at most 0.1".to_owned());
    }
    if !(0.0..=0.5).contains(&n.validation_fraction) {
        return Err("validation_fraction must be between 0 and 0.5".to_owned());
    }
    Ok(())
}

/// Model names are directory names: lowercase letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit.
pub fn check_model_name(name: &str) -> std::result::Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid model name: 1 to 64 lowercase letters, digits, '.', '_' or '-', \
             starting with a letter or digit"
        ))
    }
}

/// Checks a job posted through the API and returns the payload to store:
/// the parameters with every default filled in.
/// A `finetune-reranker` job's `collection` is still the caller's id or
/// name here; the API resolves it for the caller's tenant.
pub fn validate_submission(kind: &str, params: Value) -> ragd_core::Result<Value> {
    fn checked<P: serde::de::DeserializeOwned + Serialize>(
        params: Value,
        check: fn(&mut P) -> std::result::Result<(), String>,
    ) -> ragd_core::Result<Value> {
        let mut params: P = serde_json::from_value(params)
            .map_err(|e| ragd_core::Error::new(ErrorKind::Unprocessable, format!("params: {e}")))?;
        check(&mut params).map_err(|reason| ragd_core::Error::new(ErrorKind::Unprocessable, reason))?;
        serde_json::to_value(&params)
            .map_err(|e| ragd_core::Error::with_source(ErrorKind::Internal, "job", e))
    }
    match kind {
        FINETUNE_EMBEDDER_KIND => checked(params, |p: &mut FinetuneEmbedderParams| p.check()),
        FINETUNE_RERANKER_KIND => checked(params, |p: &mut FinetuneRerankerParams| p.check()),
        FINETUNE_GENERATOR_KIND => checked(params, FinetuneGeneratorParams::check),
        QUANTIZE_KIND => checked(params, QuantizeParams::check),
        REINDEX_KIND => checked(params, ReindexParams::check),
        other => Err(ragd_core::Error::invalid(format!(
            "unknown job kind {other:?}; jobs that can be submitted: {FINETUNE_EMBEDDER_KIND}, \
             {FINETUNE_RERANKER_KIND}, {FINETUNE_GENERATOR_KIND}, {QUANTIZE_KIND}, {REINDEX_KIND}"
        ))),
    }
}

/// Where models live: the registry's files and the ones trained here.
pub struct TrainingJobs {
    pub(crate) store: Store,
    /// `models.dir`: base models laid out by `scripts/fetch-models`.
    registry_dir: PathBuf,
    /// `<data_dir>`: trained models go to `models/`, job scratch to `jobs/`.
    data_dir: PathBuf,
    /// `jobs.datasets_dir`: the root of every `dataset.beir_dir`.
    pub(crate) datasets_dir: PathBuf,
    /// Mines hard negatives for training: what hybrid search ranks high.
    pub(crate) retriever: Retriever,
}

impl TrainingJobs {
    pub fn new(
        store: Store,
        registry_dir: PathBuf,
        data_dir: PathBuf,
        datasets_dir: PathBuf,
        retriever: Retriever,
    ) -> Self {
        Self { store, registry_dir, data_dir, datasets_dir, retriever }
    }

    /// Where trained models are registered.
    pub fn trained_models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }

    pub(crate) fn model_dirs(&self) -> ModelDirs {
        ModelDirs { registry: self.registry_dir.clone(), registered: self.trained_models_dir() }
    }

    pub(crate) fn scratch_dir(&self, job: JobId) -> PathBuf {
        self.data_dir.join("jobs").join(job.to_string())
    }

    pub(crate) fn base_dir(&self, name: &str) -> Result<PathBuf> {
        [self.registry_dir.join(name), self.trained_models_dir().join(name)]
            .into_iter()
            .find(|dir| dir.join(ragd_train::WEIGHTS_FILE).is_file())
            .ok_or_else(|| {
                ragd_core::Error::new(
                    ErrorKind::Unprocessable,
                    format!("base model {name:?} has no {} here", ragd_train::WEIGHTS_FILE),
                )
                .into()
            })
    }

    pub async fn run(&self, job: &JobRecord, worker: &str) -> Result<()> {
        let params: FinetuneEmbedderParams = serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::Payload { job: job.id, reason: e.to_string() })?;
        let name = params.name.clone().unwrap_or_else(|| {
            let id = job.id.to_string();
            format!("{}-ft-{}", params.base_model, &id[id.len() - 8..])
        });
        let target = self.trained_models_dir().join(&name);
        if target.exists() {
            return Err(ragd_core::Error::new(
                ErrorKind::Conflict,
                format!("a model named {name:?} already exists"),
            )
            .into());
        }
        let base_dir = self.base_dir(&params.base_model)?;
        let (mut pairs, documents) = load_pairs(&params, &self.datasets_dir).await?;
        let mined = match &params.collection {
            Some(collection) => {
                self.add_hard_negatives(job, collection, params.skip_hits, &mut pairs, documents).await?
            }
            None => 0,
        };
        let scratch = self.scratch_dir(job.id);
        let resume = resume_point(job);
        let message = match &resume {
            Some(checkpoint) => {
                format!("attempt {}: resuming after epoch {}", job.attempts, checkpoint.epoch)
            }
            None => format!(
                "attempt {}: training {name} from {} on {} pairs",
                job.attempts,
                params.base_model,
                pairs.len()
            ),
        };
        self.store.append_job_log(job.id, &message).await?;
        let config = FinetuneConfig {
            base_dir,
            output_dir: scratch.join("model"),
            checkpoint_dir: scratch.join("checkpoints"),
            epochs: params.epochs,
            batch_size: params.batch_size,
            learning_rate: params.learning_rate,
            max_seq_len: params.max_seq_len,
            seed: params.seed,
            validation_fraction: params.validation_fraction,
            resume,
        };

        let outcome = {
            let (config, pairs) = (config.clone(), pairs);
            self.drive(job.id, worker, &scratch, move |stop, observe| {
                ragd_train::finetune(&config, &pairs, stop, observe)
            })
            .await?
        };

        let manifest = json!({
            "name": name,
            "kind": MODEL_KIND,
            "base_model": params.base_model,
            "dimensions": outcome.dimensions,
            "pooling": "mean",
            "normalized": true,
            "max_seq_len": params.max_seq_len,
            "job": job.id.to_string(),
            "training": {
                "train_pairs": outcome.train_pairs,
                "validation_pairs": outcome.validation_pairs,
                "steps": outcome.steps,
                "epochs": params.epochs,
                "batch_size": params.batch_size,
                "learning_rate": params.learning_rate,
                "seed": params.seed,
                "mined_negatives": mined,
                "collection": params.collection,
                "skip_hits": params.skip_hits,
            },
            "validation": outcome.validation.map(|v| json!({"mrr": v.mrr, "recall_at_1": v.recall_at_1, "pairs": v.pairs})),
        });
        let files = [ragd_train::WEIGHTS_FILE, ragd_train::CONFIG_FILE, ragd_train::TOKENIZER_FILE];
        self.register(job.id, worker, &name, &config.output_dir, &manifest, &files).await?;
        remove_dir(&scratch).await;
        Ok(())
    }

    /// Runs `train` off the async threads, stores each event it reports,
    /// and stops it before its next step once the owner asks to cancel
    /// (looked for between events, since steps take seconds). A stopped
    /// run leaves no scratch behind and ends in [`Error::Cancelled`].
    pub(crate) async fn drive<T, F>(&self, job: JobId, worker: &str, scratch: &Path, train: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&AtomicBool, &mut dyn FnMut(Event) -> ControlFlow<()>) -> ragd_train::Result<T>
            + Send
            + 'static,
    {
        let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let training = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                // A dropped receiver (the job was abandoned) stops the run too.
                train(stop.as_ref(), &mut |event| {
                    if sender.send(event).is_err() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
            })
        };
        let mut poll = tokio::time::interval(CANCEL_POLL);
        loop {
            let control = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.record(job, worker, event).await?,
                    None => break,
                },
                _ = poll.tick() => {
                    if self.store.get_job(job).await?.cancel_requested { JobControl::Stop } else { JobControl::Continue }
                }
            };
            if control == JobControl::Stop {
                stop.store(true, Ordering::Relaxed);
            }
        }
        match training.await? {
            Ok(outcome) => Ok(outcome),
            Err(ragd_train::Error::Stopped) => {
                self.store.append_job_log(job, "stopped at the owner's request").await?;
                remove_dir(scratch).await;
                Err(Error::Cancelled)
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Writes `manifest` beside the staged model files, moves them to
    /// `<data_dir>/models/<name>` and records the artifact.
    pub(crate) async fn register(
        &self,
        job: JobId,
        worker: &str,
        name: &str,
        staged: &Path,
        manifest: &Value,
        files: &[&str],
    ) -> Result<()> {
        let kind = manifest["kind"].as_str().unwrap_or_default();
        let target = self.trained_models_dir().join(name);
        let published = {
            let (staged, target) = (staged.to_owned(), target.clone());
            let manifest = serde_json::to_vec_pretty(manifest).unwrap_or_default();
            tokio::task::spawn_blocking(move || publish(&staged, &target, &manifest)).await?
        };
        published.map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::AlreadyExists {
                ErrorKind::Conflict
            } else {
                ErrorKind::Internal
            };
            ragd_core::Error::with_source(kind, format!("registering model {name:?} failed"), e)
        })?;
        let mut listed: Vec<&str> = files.to_vec();
        listed.push("manifest.json");
        self.store
            .add_job_artifact(
                job,
                worker,
                json!({
                    "id": name,
                    "kind": kind,
                    "name": name,
                    "path": target.display().to_string(),
                    "files": listed,
                }),
            )
            .await?;
        self.store.report_job_progress(job, worker, 1.0, &format!("registered model {name}"), &[]).await?;
        self.store.append_job_log(job, &format!("model {name} registered at {}", target.display())).await?;
        Ok(())
    }

    /// Stores one training event; tells whether the owner asked to stop.
    async fn record(&self, job: JobId, worker: &str, event: Event) -> Result<JobControl> {
        Ok(match event {
            Event::Step { epoch, step, total_steps, loss, elapsed_ms } => {
                let progress = step as f64 / total_steps.max(1) as f64;
                let label = format!("epoch {epoch}, step {step}/{total_steps}");
                let step = step as i64;
                let metrics = [("loss", step, f64::from(loss)), ("step_ms", step, elapsed_ms as f64)];
                self.store.report_job_progress(job, worker, progress, &label, &metrics).await?
            }
            Event::Epoch { epoch, validation, checkpoint } => {
                let summary = validation.map(|v| {
                    let line = format!(
                        "epoch {epoch}: validation mrr {:.4}, recall@1 {:.4} on {} pairs",
                        v.mrr, v.recall_at_1, v.pairs
                    );
                    (line, [("val_mrr", v.mrr), ("val_recall_at_1", v.recall_at_1)])
                });
                self.epoch_ended(job, worker, epoch, checkpoint, summary).await?
            }
            Event::LossEpoch { epoch, validation, checkpoint } => {
                let summary = validation.map(|v| {
                    let line = format!(
                        "epoch {epoch}: validation loss {:.4}, perplexity {:.3} on {} assistant tokens of {} \
                         conversations",
                        v.loss, v.perplexity, v.tokens, v.conversations
                    );
                    (line, [("val_loss", v.loss), ("val_perplexity", v.perplexity)])
                });
                self.epoch_ended(job, worker, epoch, checkpoint, summary).await?
            }
            Event::Log(message) => {
                self.store.append_job_log(job, &message).await?;
                JobControl::Continue
            }
        })
    }
}

impl TrainingJobs {
    /// Stores an epoch's checkpoint, then its validation (a log line and
    /// metrics), leaving progress and step as they are.
    async fn epoch_ended(
        &self,
        job: JobId,
        worker: &str,
        epoch: usize,
        checkpoint: Option<Checkpoint>,
        validation: Option<(String, [(&str, f64); 2])>,
    ) -> Result<JobControl> {
        if let Some(checkpoint) = checkpoint {
            let value = json!({"epoch": checkpoint.epoch, "weights": checkpoint.weights.display().to_string()});
            self.store.record_job_checkpoint(job, worker, &value).await?;
        }
        let Some((line, metrics)) = validation else { return Ok(JobControl::Continue) };
        self.store.append_job_log(job, &line).await?;
        let metrics = metrics.map(|(name, value)| (name, epoch as i64, value));
        let current = self.store.get_job(job).await?;
        let label = current.step.unwrap_or_else(|| "validating the base model".to_owned());
        Ok(self.store.report_job_progress(job, worker, current.progress, &label, &metrics).await?)
    }
}

/// The checkpoint a previous attempt left, if its weights are still there.
pub(crate) fn resume_point(job: &JobRecord) -> Option<Checkpoint> {
    let checkpoint = job.checkpoint.as_ref()?;
    let epoch = usize::try_from(checkpoint.get("epoch")?.as_u64()?).ok()?;
    let weights = PathBuf::from(checkpoint.get("weights")?.as_str()?);
    weights.is_file().then_some(Checkpoint { epoch, weights })
}

/// The training pairs, and beside each the BEIR id of its positive when it
/// comes from a dataset.
async fn load_pairs(
    params: &FinetuneEmbedderParams,
    datasets_dir: &Path,
) -> Result<(Vec<TrainingPair>, Vec<Option<String>>)> {
    let Some(dataset) = params.dataset.clone() else {
        return Ok(params
            .pairs
            .iter()
            .map(|p| {
                let pair = TrainingPair {
                    query: p.query.clone(),
                    positive: p.positive.clone(),
                    negative: p.negative.clone(),
                };
                (pair, None)
            })
            .unzip());
    };
    Ok(judged_pairs(datasets_dir, dataset)
        .await?
        .into_iter()
        .map(|judged| {
            (TrainingPair { query: judged.query, positive: judged.positive, negative: None }, Some(judged.document))
        })
        .unzip())
}

impl TrainingJobs {
    /// Gives every pair without a negative the top hybrid hit of
    /// `collection` (an id) for its query that answers none of the query's
    /// pairs, after `skip_hits` such hits; returns how many pairs got one.
    async fn add_hard_negatives(
        &self,
        job: &JobRecord,
        collection: &str,
        skip_hits: usize,
        pairs: &mut [TrainingPair],
        documents: Vec<Option<String>>,
    ) -> Result<usize> {
        let payload_error = |reason: &str| Error::Payload { job: job.id, reason: reason.to_owned() };
        let tenant = job.tenant.clone().ok_or_else(|| payload_error("the job has no owner"))?;
        let id: ragd_core::CollectionId = collection.parse().map_err(|_| payload_error("collection is not an id"))?;
        // The collection may have been deleted since the job was posted.
        let record = self.store.get_collection(&tenant, id).await?;
        let judged = group_by_query(
            pairs.iter().zip(documents).map(|(pair, document)| (pair.query.clone(), pair.positive.clone(), document)),
        );
        self.store.append_job_log(job.id, &format!("mining hard negatives for {} queries", judged.len())).await?;
        let mined = self.mine(&tenant, &record, &judged, skip_hits, 1).await?;
        let negatives: std::collections::HashMap<&str, &String> = judged
            .iter()
            .zip(&mined)
            .filter_map(|(item, negatives)| Some((item.query.as_str(), negatives.first()?)))
            .collect();
        let mut count = 0;
        for pair in pairs.iter_mut().filter(|pair| pair.negative.is_none()) {
            if let Some(negative) = negatives.get(pair.query.as_str()) {
                pair.negative = Some((*negative).clone());
                count += 1;
            }
        }
        self.store.append_job_log(job.id, &format!("{count} of {} pairs have a mined negative", pairs.len())).await?;
        Ok(count)
    }
}

/// A query of a BEIR dataset and a document judged relevant to it.
pub(crate) struct JudgedPair {
    pub query: String,
    /// The document's title and text.
    pub positive: String,
    pub document: String,
}

/// Every judged (query, document) of the dataset's split with a grade above
/// 0, in query order, cut to the dataset's limit.
pub(crate) async fn judged_pairs(datasets_dir: &Path, dataset: DatasetParams) -> Result<Vec<JudgedPair>> {
    let dir = datasets_dir.join(&dataset.beir_dir);
    tokio::task::spawn_blocking(move || -> Result<Vec<JudgedPair>> {
        let beir = ragd_eval::beir::load(&dir, &dataset.split).map_err(ragd_core::Error::from)?;
        let passages: std::collections::HashMap<&str, String> = beir
            .corpus
            .iter()
            .map(|doc| (doc.id.as_str(), format!("{} {}", doc.title, doc.text).trim().to_owned()))
            .collect();
        let mut pairs = Vec::new();
        for query in &beir.queries {
            let mut judged: Vec<(&String, &u32)> = beir.qrels.get(&query.id).into_iter().flatten().collect();
            judged.sort();
            for (doc, grade) in judged {
                if let (true, Some(passage)) = (*grade > 0, passages.get(doc.as_str())) {
                    pairs.push(JudgedPair {
                        query: query.text.clone(),
                        positive: passage.clone(),
                        document: doc.clone(),
                    });
                }
            }
        }
        pairs.truncate(dataset.limit.unwrap_or(usize::MAX));
        if pairs.len() < 2 {
            return Err(ragd_core::Error::new(
                ErrorKind::Unprocessable,
                format!(
                    "the dataset's {} split has {} relevant pairs; training needs 2",
                    dataset.split,
                    pairs.len()
                ),
            )
            .into());
        }
        Ok(pairs)
    })
    .await?
}

/// Writes the manifest beside the staged files and moves the directory to
/// its registered place in one rename, so a model is never seen half
/// written.
fn publish(staged: &Path, target: &Path, manifest: &[u8]) -> std::io::Result<()> {
    let manifest_path = staged.join("manifest.json");
    std::fs::write(&manifest_path, manifest)?;
    give_files_mode_of(staged, &std::fs::metadata(&manifest_path)?.permissions())?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if target.exists() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "model directory exists"));
    }
    std::fs::rename(staged, target)
}

/// safetensors saves through a temporary file, which is created 0600, so
/// a trained model's weights would be unreadable to a worker or a backup
/// running as another user while its other files are not. Every file takes
/// the mode of one the server wrote plainly, which honours the umask.
fn give_files_mode_of(dir: &Path, permissions: &std::fs::Permissions) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            give_files_mode_of(&entry.path(), permissions)?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), permissions.clone())?;
        }
    }
    Ok(())
}

pub(crate) async fn remove_dir(dir: &Path) {
    if let Err(error) = tokio::fs::remove_dir_all(dir).await {
        tracing::warn!(dir = %dir.display(), %error, "removing job scratch failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Value {
        Value::Array((0..n).map(|i| json!({"query": format!("q{i}"), "positive": format!("p{i}")})).collect())
    }

    #[cfg(unix)]
    #[test]
    fn published_model_files_are_as_readable_as_any_other() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = std::env::temp_dir().join(format!("ragd-publish-{}", std::process::id()));
        // A run killed mid-way may have left it behind.
        let _ = std::fs::remove_dir_all(&scratch);
        let (staged, target) = (scratch.join("staged"), scratch.join("models/trained"));
        std::fs::create_dir_all(staged.join("1_Pooling")).expect("staged dir");
        for file in ["model.safetensors", "1_Pooling/config.json"] {
            std::fs::write(staged.join(file), b"{}").expect("staged file");
            std::fs::set_permissions(staged.join(file), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        publish(&staged, &target, b"{}").expect("published");
        let mode = |file: &str| std::fs::metadata(target.join(file)).expect("file").permissions().mode() & 0o777;
        let plain = mode("manifest.json");
        assert_eq!((mode("model.safetensors"), mode("1_Pooling/config.json")), (plain, plain));
        std::fs::remove_dir_all(&scratch).expect("cleaned up");
    }

    #[test]
    fn submissions_get_defaults_and_bad_ones_clear_reasons() {
        let payload = validate_submission(FINETUNE_EMBEDDER_KIND, json!({"pairs": pairs(2)})).expect("valid");
        assert_eq!(payload["base_model"], "all-minilm-l6-v2");
        assert_eq!((payload["epochs"].as_u64(), payload["batch_size"].as_u64()), (Some(1), Some(16)));

        let cases = [
            (json!({"pairs": pairs(1)}), "at least 2 pairs"),
            (json!({}), "at least 2 pairs"),
            (json!({"pairs": pairs(2), "dataset": {"beir_dir": "x"}}), "not both"),
            (json!({"dataset": {"beir_dir": "/etc"}}), "dataset.beir_dir"),
            (json!({"dataset": {"beir_dir": "scifact/../../etc"}}), "dataset.beir_dir"),
            (json!({"dataset": {"beir_dir": ""}}), "dataset.beir_dir"),
            (json!({"pairs": pairs(2), "epochs": 0}), "epochs"),
            (json!({"pairs": pairs(2), "batch_size": 1}), "batch_size"),
            (json!({"pairs": pairs(2), "learning_rate": 0.0}), "learning_rate"),
            (json!({"pairs": pairs(2), "validation_fraction": 0.9}), "validation_fraction"),
            (json!({"pairs": pairs(2), "max_seq_len": 4}), "max_seq_len"),
            (json!({"pairs": pairs(2), "name": "../etc"}), "not a valid model name"),
            (json!({"pairs": pairs(2), "base_model": "A B"}), "base_model"),
            (
                json!({"pairs": [{"query": " ", "positive": "p"}, {"query": "q", "positive": "p"}]}),
                "pairs[0]",
            ),
            (json!({"pairs": pairs(2), "dataset": null, "colour": "red"}), "unknown field"),
            (json!({"dataset": {"beir_dir": "x", "split": "../train"}}), "dataset.split"),
            (json!({"pairs": pairs(2), "collection": " "}), "collection"),
            (json!({"pairs": pairs(2), "collection": "c", "skip_hits": 51}), "skip_hits"),
        ];
        for (params, expected) in cases {
            let err = validate_submission(FINETUNE_EMBEDDER_KIND, params.clone()).expect_err("invalid");
            assert_eq!(err.kind(), ErrorKind::Unprocessable, "{params}");
            assert!(err.message().contains(expected), "{params}: {}", err.message());
        }
        let err = validate_submission("ingest", json!({})).expect_err("not submittable");
        assert!(err.message().contains(FINETUNE_RERANKER_KIND), "{}", err.message());
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
