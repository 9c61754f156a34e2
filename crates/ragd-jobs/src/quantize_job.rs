//! The `quantize` job: re-quantizes a GGUF generator (a registry model or
//! one registered here) with `ragd_generate::quantize_gguf`, or stores a
//! BERT embedder's or reranker's Linear weights as Q8_0 with
//! `ragd_embed::quantize_bert`; reports each tensor as a step, stops between
//! tensors when cancelled, and registers the result under
//! `<data_dir>/models/<name>/` (a generator with a manifest of kind
//! `generator-gguf`, a BERT model with its source's kind). A conversion
//! takes seconds, so a retried attempt starts again rather than resuming.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ragd_core::ErrorKind;
use ragd_generate::QuantType;
use ragd_store::{JobControl, JobRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::finetune::{check_model_name, remove_dir, TrainingJobs, CANCEL_POLL};
use crate::generator_job::FINETUNE_GENERATOR_KIND;
use crate::{Error, Result};

pub const QUANTIZE_KIND: &str = "quantize";

/// The manifest kind (a `config/models.toml` kind) of GGUF generators.
pub const GENERATOR_KIND: &str = "generator-gguf";

/// The file a GGUF generator's directory holds, in the registry and here.
const GGUF_FILE: &str = "model.gguf";

/// The manifest kinds of the BERT models the job quantizes.
const BERT_KINDS: [&str; 2] = ["embedder-safetensors", ragd_embed::RERANKER_KIND];

/// The parameters of a `quantize` job, as posted and as stored (with the
/// name filled in).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeParams {
    /// A generator (a registry model of kind `generator-gguf`, or a model
    /// registered here with that kind) or a BERT embedder or reranker.
    pub model: String,
    /// `q8_0`, `q4_k`, `f16` or `f32`; BERT models take `q8_0` only.
    #[serde(rename = "type")]
    pub dtype: String,
    /// The new model's name; default `<model>-<type>`.
    #[serde(default)]
    pub name: Option<String>,
}

impl QuantizeParams {
    /// Checks the parameters and fills in the default name.
    pub(crate) fn check(&mut self) -> std::result::Result<(), String> {
        check_model_name(&self.model).map_err(|reason| format!("model: {reason}"))?;
        if QuantType::parse(&self.dtype).is_none() {
            let known: Vec<&str> = QuantType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(format!("type {:?} is not one of {}", self.dtype, known.join(", ")));
        }
        let name = self.name.get_or_insert_with(|| format!("{}-{}", self.model, self.dtype));
        check_model_name(name)
    }
}

/// Where models are found: the registry's directory (`models.dir`) and the
/// models registered here (`<data_dir>/models`).
#[derive(Debug, Clone)]
pub struct ModelDirs {
    pub registry: PathBuf,
    pub registered: PathBuf,
}

/// A model the `quantize` job can read.
pub(crate) enum Source {
    /// Its GGUF file.
    Generator(PathBuf),
    /// Its directory (safetensors, config, tokenizer) and manifest (an
    /// embedder's defaults for a registry model, which has none).
    Bert { dir: PathBuf, manifest: Value },
}

impl ModelDirs {
    /// The GGUF file of generator `name`: a registry model's, or a
    /// registered model's whose manifest says `generator-gguf`.
    pub fn generator(&self, name: &str) -> Option<PathBuf> {
        match self.source(name)? {
            Source::Generator(path) => Some(path),
            Source::Bert { .. } => None,
        }
    }

    pub(crate) fn source(&self, name: &str) -> Option<Source> {
        check_model_name(name).ok()?;
        let in_registry = self.registry.join(name);
        if in_registry.join(GGUF_FILE).is_file() {
            return Some(Source::Generator(in_registry.join(GGUF_FILE)));
        }
        if in_registry.join(ragd_embed::WEIGHTS_FILE).is_file() {
            // The registry's safetensors models are the base embedders.
            let manifest = json!({"kind": BERT_KINDS[0], "pooling": "mean", "normalized": true});
            return Some(Source::Bert { dir: in_registry, manifest });
        }
        let dir = self.registered.join(name);
        let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
        let kind = manifest["kind"].as_str().unwrap_or_default();
        if kind == GENERATOR_KIND && dir.join(GGUF_FILE).is_file() {
            Some(Source::Generator(dir.join(GGUF_FILE)))
        } else if BERT_KINDS.contains(&kind) && dir.join(ragd_embed::WEIGHTS_FILE).is_file() {
            Some(Source::Bert { dir, manifest })
        } else {
            None
        }
    }

    /// The names of the GGUF generators registered here, sorted.
    pub fn registered_generators(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.registered)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| self.generator(name).is_some())
            .collect();
        names.sort();
        names
    }

    /// Checks, when a job is submitted, that the model it reads exists and
    /// takes the type asked for, so a mistake fails the request rather
    /// than the job.
    pub fn check_submission(&self, kind: &str, payload: &Value) -> ragd_core::Result<()> {
        if kind == FINETUNE_GENERATOR_KIND {
            let base = payload["base_model"].as_str().unwrap_or_default();
            return match self.generator(base) {
                Some(_) => Ok(()),
                None => Err(ragd_core::Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "base_model {base:?} is not a GGUF generator: name a registry model of kind \
                         {GENERATOR_KIND} or one registered here"
                    ),
                )),
            };
        }
        if kind != QUANTIZE_KIND {
            return Ok(());
        }
        let model = payload["model"].as_str().unwrap_or_default();
        match self.source(model) {
            Some(Source::Generator(_)) => Ok(()),
            Some(Source::Bert { .. }) if payload["type"] == QuantType::Q8_0.as_str() => Ok(()),
            Some(Source::Bert { .. }) => Err(ragd_core::Error::new(
                ErrorKind::Unprocessable,
                format!("model {model:?} is a BERT model: its type can only be q8_0"),
            )),
            None => Err(ragd_core::Error::new(
                ErrorKind::NotFound,
                format!(
                    "model {model:?} is neither a GGUF generator nor a BERT embedder or reranker: name a \
                     registry model of kind {GENERATOR_KIND} or embedder-safetensors, or one registered here"
                ),
            )),
        }
    }
}

/// Tells a conversion of each tensor (done, total, name) before it is
/// converted; a `Break` stops it.
type Progress<'a> = &'a mut dyn FnMut(usize, usize, &str) -> ControlFlow<()>;

impl TrainingJobs {
    pub async fn run_quantize(&self, job: &JobRecord, worker: &str) -> Result<()> {
        let mut params: QuantizeParams = serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::Payload { job: job.id, reason: e.to_string() })?;
        params.check().map_err(|reason| Error::Payload { job: job.id, reason })?;
        let name = params.name.clone().unwrap_or_default();
        let dtype = QuantType::parse(&params.dtype).ok_or_else(|| Error::Payload {
            job: job.id,
            reason: format!("unknown type {:?}", params.dtype),
        })?;
        if self.trained_models_dir().join(&name).exists() {
            return Err(ragd_core::Error::new(
                ErrorKind::Conflict,
                format!("a model named {name:?} already exists"),
            )
            .into());
        }
        let source = self.model_dirs().source(&params.model).ok_or_else(|| {
            ragd_core::Error::new(ErrorKind::NotFound, format!("model {:?} is no longer there", params.model))
        })?;
        if matches!(source, Source::Bert { .. }) && dtype != QuantType::Q8_0 {
            let reason = format!("model {:?} is a BERT model: its type can only be q8_0", params.model);
            return Err(ragd_core::Error::new(ErrorKind::Unprocessable, reason).into());
        }
        self.store
            .append_job_log(
                job.id,
                &format!(
                    "attempt {}: quantizing {} to {} as {name}",
                    job.attempts, params.model, params.dtype
                ),
            )
            .await?;
        let scratch = self.scratch_dir(job.id);
        let staged = scratch.join("model");
        tokio::fs::create_dir_all(&staged).await.map_err(|e| {
            ragd_core::Error::with_source(ErrorKind::Internal, "creating the job's scratch", e)
        })?;

        let mut manifest = json!({
            "name": name,
            "base_model": params.model,
            "job": job.id.to_string(),
        });
        let files: &[&str] = match source {
            Source::Generator(gguf) => {
                let output = staged.join(GGUF_FILE);
                let summary = self
                    .convert(job, worker, &scratch, (0.0, 1.0), move |progress| {
                        ragd_generate::quantize_gguf(&gguf, &output, dtype, progress).map_err(Into::into)
                    })
                    .await?;
                let message = format!(
                    "wrote {} tensors, {} of them {} (1-D tensors stay f32; rows too short for its \
                     blocks take a fallback), {} bytes",
                    summary.tensors, summary.in_target_type, params.dtype, summary.bytes
                );
                self.store.append_job_log(job.id, &message).await?;
                manifest["kind"] = json!(GENERATOR_KIND);
                manifest["architecture"] = json!(summary.architecture);
                manifest["quantization"] = json!({
                    "type": params.dtype,
                    "tensors": summary.tensors,
                    "tensors_in_type": summary.in_target_type,
                    "bytes": summary.bytes,
                });
                &[GGUF_FILE]
            }
            Source::Bert { dir, manifest: source_manifest } => {
                let output = staged.clone();
                let summary = self
                    .convert(job, worker, &scratch, (0.0, 1.0), move |progress| {
                        ragd_embed::quantize_bert(&dir, &output, progress).map_err(Into::into)
                    })
                    .await?;
                let message = format!(
                    "wrote {} tensors, the {} Linear weights as q8_0 (embeddings, norms and biases \
                     stay f32), {} bytes",
                    summary.tensors, summary.quantized, summary.bytes
                );
                self.store.append_job_log(job.id, &message).await?;
                // What loading and using the model needs carries over.
                for key in ["kind", "dimensions", "pooling", "normalized", "max_seq_len"] {
                    if let Some(value) = source_manifest.get(key) {
                        manifest[key] = value.clone();
                    }
                }
                manifest["quantization"] = json!({
                    "type": params.dtype,
                    "weights": ragd_embed::QUANTIZED_WEIGHTS_FILE,
                    "tensors": summary.tensors,
                    "tensors_in_type": summary.quantized,
                    "bytes": summary.bytes,
                });
                &[ragd_embed::QUANTIZED_WEIGHTS_FILE, ragd_embed::CONFIG_FILE, ragd_embed::TOKENIZER_FILE]
            }
        };
        self.register(job.id, worker, &name, &staged, &manifest, files).await?;
        remove_dir(&scratch).await;
        Ok(())
    }

    /// Runs `conversion` off the async threads, reports each tensor as a
    /// step (progress moving across `span`, the job's share of the work it
    /// is), and stops it at the next tensor once the owner asks to cancel.
    /// A stopped or failed conversion leaves no scratch behind.
    pub(crate) async fn convert<T, F>(
        &self,
        job: &JobRecord,
        worker: &str,
        scratch: &Path,
        span: (f64, f64),
        conversion: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Progress<'_>) -> ragd_core::Result<T> + Send + 'static,
    {
        // One tensor in flight: the conversion waits for each report to be
        // stored, so the progress shown is where it is and a cancel lands
        // on the next tensor.
        let (sender, mut tensors) = tokio::sync::mpsc::channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let running = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                conversion(&mut |done, total, tensor| {
                    // A dropped receiver (the job was abandoned) stops it too.
                    if stop.load(Ordering::Relaxed)
                        || sender.blocking_send((done, total, tensor.to_owned())).is_err()
                    {
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
                tensor = tensors.recv() => match tensor {
                    Some((done, total, tensor)) => {
                        let label = format!("tensor {}/{total}: {tensor}", done + 1);
                        // The last step is registering the model.
                        let progress = span.0 + (span.1 - span.0) * done as f64 / (total + 1) as f64;
                        self.store.report_job_progress(job.id, worker, progress, &label, &[]).await?
                    }
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
        match running.await? {
            Ok(done) => Ok(done),
            Err(_) if stop.load(Ordering::Relaxed) => {
                self.store.append_job_log(job.id, "stopped at the owner's request").await?;
                remove_dir(scratch).await;
                Err(Error::Cancelled)
            }
            Err(other) => {
                remove_dir(scratch).await;
                Err(other.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate_submission;

    #[test]
    fn submissions_get_a_name_and_bad_ones_clear_reasons() {
        let payload =
            validate_submission(QUANTIZE_KIND, json!({"model": "smollm2", "type": "q8_0"})).expect("valid");
        assert_eq!(payload["name"], "smollm2-q8_0");
        let cases = [
            (json!({"model": "smollm2", "type": "q3_k"}), "q8_0, q4_k, f16, f32"),
            (json!({"model": "smollm2"}), "type"),
            (json!({"type": "q8_0"}), "model"),
            (json!({"model": "../x", "type": "q8_0"}), "model:"),
            (json!({"model": "smollm2", "type": "f16", "name": "Big Name"}), "not a valid model name"),
            (json!({"model": "smollm2", "type": "f16", "bits": 8}), "unknown field"),
        ];
        for (params, expected) in cases {
            let err = validate_submission(QUANTIZE_KIND, params.clone()).expect_err("invalid");
            assert_eq!(err.kind(), ErrorKind::Unprocessable, "{params}");
            assert!(err.message().contains(expected), "{params}: {}", err.message());
        }
    }

    #[test]
    fn generators_are_found_in_the_registry_or_by_manifest() {
        let root = tempfile_dir();
        let dirs = ModelDirs { registry: root.join("registry"), registered: root.join("registered") };
        for (dir, kind) in [
            ("registry/base", None),
            ("registered/small", Some(GENERATOR_KIND)),
            ("registered/ft", Some("reranker")),
        ] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(GGUF_FILE), b"gguf").unwrap();
            if let Some(kind) = kind {
                std::fs::write(dir.join("manifest.json"), json!({"kind": kind}).to_string()).unwrap();
            }
        }
        assert_eq!(dirs.generator("base"), Some(root.join("registry/base/model.gguf")));
        assert_eq!(dirs.generator("small"), Some(root.join("registered/small/model.gguf")));
        assert_eq!(dirs.generator("ft"), None);
        assert_eq!(dirs.generator("missing"), None);
        let err = dirs.check_submission(QUANTIZE_KIND, &json!({"model": "ft"})).expect_err("no weights");
        assert_eq!(err.kind(), ErrorKind::NotFound);

        let bert = root.join("registry/minilm");
        std::fs::create_dir_all(&bert).unwrap();
        std::fs::write(bert.join(ragd_embed::WEIGHTS_FILE), b"weights").unwrap();
        assert!(matches!(dirs.source("minilm"), Some(Source::Bert { .. })));
        assert_eq!(dirs.generator("minilm"), None);
        dirs.check_submission(QUANTIZE_KIND, &json!({"model": "minilm", "type": "q8_0"})).expect("q8_0 BERT");
        let err = dirs
            .check_submission(QUANTIZE_KIND, &json!({"model": "minilm", "type": "q4_k"}))
            .expect_err("q4_k");
        assert_eq!(err.kind(), ErrorKind::Unprocessable);
        assert_eq!(dirs.registered_generators(), vec!["small".to_owned()]);
        std::fs::remove_dir_all(root).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ragd-quantize-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
