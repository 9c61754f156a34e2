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
use ragd_store::{JobControl, JobRecord, Store};
use ragd_train::{Checkpoint, Event, FinetuneConfig, TrainingPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

fn default_base_model() -> String {
    "all-minilm-l6-v2".to_owned()
}
fn default_epochs() -> usize {
    1
}
fn default_batch_size() -> usize {
    16
}
fn default_learning_rate() -> f64 {
    2e-5
}
fn default_max_seq_len() -> usize {
    128
}
fn default_seed() -> u64 {
    42
}
fn default_validation_fraction() -> f64 {
    0.1
}
fn default_split() -> String {
    "train".to_owned()
}

const MAX_INLINE_PAIRS: usize = 100_000;

/// How often a running job looks for a cancel request between reports.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

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
            let inside =
                dataset.beir_dir.components().all(|part| matches!(part, std::path::Component::Normal(_)));
            if !inside || dataset.beir_dir.as_os_str().is_empty() {
                return Err(
                    "dataset.beir_dir must be a relative path inside the server's datasets directory, \
                            without '..'"
                        .to_owned(),
                );
            }
            if dataset.split.is_empty() || dataset.split.contains(['/', '\\']) || dataset.split.contains("..")
            {
                return Err("dataset.split must be a plain name such as \"train\"".to_owned());
            }
            if dataset.limit.is_some_and(|limit| limit < 2) {
                return Err("dataset.limit must be at least 2".to_owned());
            }
        }
        let ranges = [
            ("epochs", (1..=100).contains(&self.epochs)),
            ("batch_size", (2..=512).contains(&self.batch_size)),
            ("max_seq_len", (8..=512).contains(&self.max_seq_len)),
            ("learning_rate", self.learning_rate > 0.0 && self.learning_rate <= 0.1),
            ("validation_fraction", (0.0..=0.5).contains(&self.validation_fraction)),
        ];
        match ranges.iter().find(|(_, ok)| !ok) {
            Some(("epochs", _)) => Err("epochs must be between 1 and 100".to_owned()),
            Some(("batch_size", _)) => Err("batch_size must be between 2 and 512".to_owned()),
            Some(("max_seq_len", _)) => Err("max_seq_len must be between 8 and 512".to_owned()),
            Some(("learning_rate", _)) => Err("learning_rate must be above 0 and at most 0.1".to_owned()),
            Some(_) => Err("validation_fraction must be between 0 and 0.5".to_owned()),
            None => Ok(()),
        }
    }
}

/// Model names are directory names: lowercase letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit.
fn check_model_name(name: &str) -> std::result::Result<(), String> {
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
pub fn validate_submission(kind: &str, params: Value) -> ragd_core::Result<Value> {
    match kind {
        FINETUNE_EMBEDDER_KIND => {
            let params: FinetuneEmbedderParams = serde_json::from_value(params)
                .map_err(|e| ragd_core::Error::new(ErrorKind::Unprocessable, format!("params: {e}")))?;
            params.check().map_err(|reason| ragd_core::Error::new(ErrorKind::Unprocessable, reason))?;
            serde_json::to_value(&params)
                .map_err(|e| ragd_core::Error::with_source(ErrorKind::Internal, "job", e))
        }
        other => Err(ragd_core::Error::invalid(format!(
            "unknown job kind {other:?}; jobs that can be submitted: {FINETUNE_EMBEDDER_KIND}"
        ))),
    }
}

/// Where models live: the registry's files and the ones trained here.
pub struct TrainingJobs {
    store: Store,
    /// `models.dir`: base models laid out by `scripts/fetch-models`.
    registry_dir: PathBuf,
    /// `<data_dir>`: trained models go to `models/`, job scratch to `jobs/`.
    data_dir: PathBuf,
    /// `jobs.datasets_dir`: the root of every `dataset.beir_dir`.
    datasets_dir: PathBuf,
}

impl TrainingJobs {
    pub fn new(store: Store, registry_dir: PathBuf, data_dir: PathBuf, datasets_dir: PathBuf) -> Self {
        Self { store, registry_dir, data_dir, datasets_dir }
    }

    /// Where trained models are registered.
    pub fn trained_models_dir(&self) -> PathBuf {
        self.data_dir.join("models")
    }

    fn scratch_dir(&self, job: JobId) -> PathBuf {
        self.data_dir.join("jobs").join(job.to_string())
    }

    fn base_dir(&self, name: &str) -> Result<PathBuf> {
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
        let pairs = load_pairs(&params, &self.datasets_dir).await?;
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

        let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let training = {
            let (config, stop) = (config.clone(), stop.clone());
            tokio::task::spawn_blocking(move || {
                // A dropped receiver (the job was abandoned) stops the run too.
                ragd_train::finetune(&config, &pairs, &stop, &mut |event| {
                    if sender.send(event).is_err() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
            })
        };
        // Steps take seconds, so a cancel request is also looked for between
        // them; the run stops before its next step.
        let mut poll = tokio::time::interval(CANCEL_POLL);
        loop {
            let control = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.record(job.id, worker, event).await?,
                    None => break,
                },
                _ = poll.tick() => {
                    if self.store.get_job(job.id).await?.cancel_requested { JobControl::Stop } else { JobControl::Continue }
                }
            };
            if control == JobControl::Stop {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let outcome = match training.await? {
            Ok(outcome) => outcome,
            Err(ragd_train::Error::Stopped) => {
                self.store.append_job_log(job.id, "stopped at the owner's request").await?;
                remove_dir(&scratch).await;
                return Err(Error::Cancelled);
            }
            Err(other) => return Err(other.into()),
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
            },
            "validation": outcome.validation.map(|v| json!({"mrr": v.mrr, "recall_at_1": v.recall_at_1, "pairs": v.pairs})),
        });
        let staged = config.output_dir.clone();
        let published = {
            let (staged, target) = (staged.clone(), target.clone());
            let manifest = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
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
        self.store
            .add_job_artifact(
                job.id,
                worker,
                json!({
                    "id": name,
                    "kind": MODEL_KIND,
                    "name": name,
                    "path": target.display().to_string(),
                    "files": [ragd_train::WEIGHTS_FILE, ragd_train::CONFIG_FILE, ragd_train::TOKENIZER_FILE, "manifest.json"],
                }),
            )
            .await?;
        self.store.report_job_progress(job.id, worker, 1.0, &format!("registered model {name}"), &[]).await?;
        self.store
            .append_job_log(job.id, &format!("model {name} registered at {}", target.display()))
            .await?;
        remove_dir(&scratch).await;
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
                if let Some(checkpoint) = &checkpoint {
                    let value = json!({"epoch": checkpoint.epoch, "weights": checkpoint.weights.display().to_string()});
                    self.store.record_job_checkpoint(job, worker, &value).await?;
                }
                let Some(v) = validation else { return Ok(JobControl::Continue) };
                self.store
                    .append_job_log(
                        job,
                        &format!(
                            "epoch {epoch}: validation mrr {:.4}, recall@1 {:.4} on {} pairs",
                            v.mrr, v.recall_at_1, v.pairs
                        ),
                    )
                    .await?;
                let epoch = epoch as i64;
                let metrics = [("val_mrr", epoch, v.mrr), ("val_recall_at_1", epoch, v.recall_at_1)];
                let current = self.store.get_job(job).await?;
                let label = current.step.unwrap_or_else(|| "validating the base model".to_owned());
                self.store.report_job_progress(job, worker, current.progress, &label, &metrics).await?
            }
            Event::Log(message) => {
                self.store.append_job_log(job, &message).await?;
                JobControl::Continue
            }
        })
    }
}

/// The checkpoint a previous attempt left, if its weights are still there.
fn resume_point(job: &JobRecord) -> Option<Checkpoint> {
    let checkpoint = job.checkpoint.as_ref()?;
    let epoch = usize::try_from(checkpoint.get("epoch")?.as_u64()?).ok()?;
    let weights = PathBuf::from(checkpoint.get("weights")?.as_str()?);
    weights.is_file().then_some(Checkpoint { epoch, weights })
}

async fn load_pairs(params: &FinetuneEmbedderParams, datasets_dir: &Path) -> Result<Vec<TrainingPair>> {
    let Some(dataset) = params.dataset.clone() else {
        return Ok(params
            .pairs
            .iter()
            .map(|p| TrainingPair {
                query: p.query.clone(),
                positive: p.positive.clone(),
                negative: p.negative.clone(),
            })
            .collect());
    };
    let dir = datasets_dir.join(&dataset.beir_dir);
    tokio::task::spawn_blocking(move || -> Result<Vec<TrainingPair>> {
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
                    pairs.push(TrainingPair {
                        query: query.text.clone(),
                        positive: passage.clone(),
                        negative: None,
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
    std::fs::write(staged.join("manifest.json"), manifest)?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if target.exists() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "model directory exists"));
    }
    std::fs::rename(staged, target)
}

async fn remove_dir(dir: &Path) {
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
        ];
        for (params, expected) in cases {
            let err = validate_submission(FINETUNE_EMBEDDER_KIND, params.clone()).expect_err("invalid");
            assert_eq!(err.kind(), ErrorKind::Unprocessable, "{params}");
            assert!(err.message().contains(expected), "{params}: {}", err.message());
        }
        let err = validate_submission("ingest", json!({})).expect_err("not submittable");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
