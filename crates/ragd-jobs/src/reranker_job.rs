//! The `finetune-reranker` job: trains a cross-encoder with `ragd-train`
//! on queries and the passages that answer them (inline, or a BEIR
//! folder's qrels), with hard negatives mined from a collection by ragd's
//! own hybrid search: the top hits that are not a judged answer. Reports,
//! checkpoints, cancellation and registration work as for
//! `finetune-embedder`; the model is registered under
//! `<data_dir>/models/<name>` with a manifest of kind `reranker`, which is
//! what `retrieval.reranker` names.

use ragd_core::{CollectionId, ErrorKind};
use ragd_store::JobRecord;
use ragd_train::{RerankExample, RerankerConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::finetune::{
    DatasetParams, MAX_INLINE_PAIRS, TrainingJobs, TrainingNumbers, check_model_name,
    check_training_numbers, default_base_model, default_epochs, default_learning_rate, default_seed,
    default_validation_fraction, judged_pairs, remove_dir, resume_point,
};
use crate::mining::{check_skip_hits, group_by_query, Judged};
use crate::{Error, Result};

pub const FINETUNE_RERANKER_KIND: &str = "finetune-reranker";

/// The parameters of a `finetune-reranker` job, as posted and as stored
/// (with every default filled in).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneRerankerParams {
    /// The collection hard negatives are mined from: its id or name when
    /// posted, its id once stored.
    pub collection: String,
    /// The trained model's name; default `<base_model>-rr-<job id prefix>`.
    #[serde(default)]
    pub name: Option<String>,
    /// A BERT encoder (`config/models.toml`, safetensors) or a reranker
    /// trained earlier.
    #[serde(default = "default_base_model")]
    pub base_model: String,
    #[serde(default)]
    pub pairs: Vec<RerankPairParams>,
    #[serde(default)]
    pub dataset: Option<DatasetParams>,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Queries per step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Negatives scored against each positive.
    #[serde(default = "default_negatives")]
    pub negatives: usize,
    /// Unjudged top hits passed over before negatives are taken (the very
    /// top ones are often answers the dataset never judged).
    #[serde(default)]
    pub skip_hits: usize,
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RerankPairParams {
    pub query: String,
    pub positive: String,
}

fn default_batch_size() -> usize {
    4
}
/// Query and passage together: a passage needs more room than in the
/// embedder's pairs.
fn default_max_seq_len() -> usize {
    256
}
fn default_negatives() -> usize {
    7
}

const MAX_NEGATIVES: usize = 63;

impl FinetuneRerankerParams {
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.collection.trim().is_empty() {
            return Err("collection (id or name) is required: hard negatives are mined from it".to_owned());
        }
        if let Some(name) = &self.name {
            check_model_name(name)?;
        }
        check_model_name(&self.base_model).map_err(|reason| format!("base_model: {reason}"))?;
        match (&self.dataset, self.pairs.len()) {
            (Some(dataset), 0) => dataset.check()?,
            (Some(_), _) => return Err("give either pairs or dataset, not both".to_owned()),
            (None, 0 | 1) => return Err("pairs needs at least 2 pairs (or give a dataset)".to_owned()),
            (None, n) if n > MAX_INLINE_PAIRS => {
                return Err(format!("at most {MAX_INLINE_PAIRS} inline pairs; use a dataset for more"));
            }
            (None, _) => {}
        }
        if let Some(n) = self.pairs.iter().position(|p| p.query.trim().is_empty() || p.positive.trim().is_empty())
        {
            return Err(format!("pairs[{n}]: query and positive must not be empty"));
        }
        if !(1..=MAX_NEGATIVES).contains(&self.negatives) {
            return Err(format!("negatives must be between 1 and {MAX_NEGATIVES}"));
        }
        check_skip_hits(self.skip_hits)?;
        check_training_numbers(TrainingNumbers {
            epochs: self.epochs,
            batch_size: self.batch_size,
            min_batch_size: 1,
            max_seq_len: self.max_seq_len,
            learning_rate: self.learning_rate,
            validation_fraction: self.validation_fraction,
        })
    }
}

impl TrainingJobs {
    pub async fn run_reranker(&self, job: &JobRecord, worker: &str) -> Result<()> {
        let params: FinetuneRerankerParams = serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::Payload { job: job.id, reason: e.to_string() })?;
        let payload_error = |reason: String| Error::Payload { job: job.id, reason };
        let tenant = job.tenant.clone().ok_or_else(|| payload_error("the job has no owner".to_owned()))?;
        let collection: CollectionId =
            params.collection.parse().map_err(|_| payload_error("collection is not an id".to_owned()))?;
        // The collection may have been deleted since the job was posted.
        let record = self.store.get_collection(&tenant, collection).await?;
        let name = params.name.clone().unwrap_or_else(|| {
            let id = job.id.to_string();
            format!("{}-rr-{}", params.base_model, &id[id.len() - 8..])
        });
        if self.trained_models_dir().join(&name).exists() {
            return Err(
                ragd_core::Error::new(ErrorKind::Conflict, format!("a model named {name:?} already exists")).into()
            );
        }
        let base_dir = self.base_dir(&params.base_model)?;
        let judged = self.judged(&params).await?;
        self.store
            .append_job_log(job.id, &format!("mining hard negatives for {} queries", judged.len()))
            .await?;
        let mined = self.mine(&tenant, &record, &judged, params.skip_hits, params.negatives).await?;
        let examples: Vec<RerankExample> = judged
            .iter()
            .zip(mined)
            .flat_map(|(item, negatives)| {
                item.positives.iter().map(move |positive| RerankExample {
                    query: item.query.clone(),
                    positive: positive.clone(),
                    negatives: negatives.clone(),
                })
            })
            .collect();
        let mined: usize = examples.iter().map(|e| e.negatives.len()).sum();
        let scratch = self.scratch_dir(job.id);
        let resume = resume_point(job);
        let message = match &resume {
            Some(checkpoint) => format!("attempt {}: resuming after epoch {}", job.attempts, checkpoint.epoch),
            None => format!(
                "attempt {}: training {name} from {} on {} examples with {mined} mined negatives",
                job.attempts,
                params.base_model,
                examples.len()
            ),
        };
        self.store.append_job_log(job.id, &message).await?;
        let config = RerankerConfig {
            base_dir,
            output_dir: scratch.join("model"),
            checkpoint_dir: scratch.join("checkpoints"),
            epochs: params.epochs,
            batch_size: params.batch_size,
            learning_rate: params.learning_rate,
            max_seq_len: params.max_seq_len,
            seed: params.seed,
            negatives: params.negatives,
            validation_fraction: params.validation_fraction,
            resume,
        };
        let outcome = {
            let config = config.clone();
            self.drive(job.id, worker, &scratch, move |stop, observe| {
                ragd_train::finetune_reranker(&config, &examples, stop, observe)
            })
            .await?
        };
        let manifest = json!({
            "name": name,
            "kind": ragd_embed::RERANKER_KIND,
            "base_model": params.base_model,
            "max_seq_len": params.max_seq_len,
            "collection": collection.to_string(),
            "job": job.id.to_string(),
            "training": {
                "train_examples": outcome.train_examples,
                "validation_examples": outcome.validation_examples,
                "mined_negatives": mined,
                "negatives": params.negatives,
                "skip_hits": params.skip_hits,
                "steps": outcome.steps,
                "epochs": params.epochs,
                "batch_size": params.batch_size,
                "learning_rate": params.learning_rate,
                "seed": params.seed,
                "loss": "listwise softmax cross-entropy",
            },
            "validation": outcome.validation.map(|v| json!({"mrr": v.mrr, "recall_at_1": v.recall_at_1, "queries": v.pairs})),
        });
        let files = [ragd_train::WEIGHTS_FILE, ragd_train::CONFIG_FILE, ragd_train::TOKENIZER_FILE];
        self.register(job.id, worker, &name, &config.output_dir, &manifest, &files).await?;
        remove_dir(&scratch).await;
        Ok(())
    }

    /// The queries with their positives, in first-seen order.
    async fn judged(&self, params: &FinetuneRerankerParams) -> Result<Vec<Judged>> {
        Ok(group_by_query(match params.dataset.clone() {
            Some(dataset) => judged_pairs(&self.datasets_dir, dataset)
                .await?
                .into_iter()
                .map(|pair| (pair.query, pair.positive, Some(pair.document)))
                .collect::<Vec<_>>(),
            None => params.pairs.iter().map(|p| (p.query.clone(), p.positive.clone(), None)).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::validate_submission;

    fn pairs(n: usize) -> Value {
        Value::Array((0..n).map(|i| json!({"query": format!("q{i}"), "positive": format!("p{i}")})).collect())
    }

    #[test]
    fn submissions_get_defaults_and_bad_ones_clear_reasons() {
        let payload =
            validate_submission(FINETUNE_RERANKER_KIND, json!({"collection": "docs", "pairs": pairs(2)})).expect("valid");
        assert_eq!(payload["base_model"], "all-minilm-l6-v2");
        assert_eq!(
            (payload["negatives"].as_u64(), payload["batch_size"].as_u64(), payload["max_seq_len"].as_u64()),
            (Some(7), Some(4), Some(256))
        );
        let with = |extra: Value| {
            let mut params = json!({"collection": "docs", "pairs": pairs(2)});
            for (key, value) in extra.as_object().unwrap() {
                params[key] = value.clone();
            }
            params
        };
        let cases = [
            (json!({"pairs": pairs(2)}), "collection"),
            (with(json!({"collection": " "})), "collection"),
            (with(json!({"pairs": pairs(1)})), "at least 2 pairs"),
            (with(json!({"dataset": {"beir_dir": "x"}})), "not both"),
            (json!({"collection": "c", "dataset": {"beir_dir": "../x"}}), "dataset.beir_dir"),
            (with(json!({"negatives": 0})), "negatives"),
            (with(json!({"negatives": 64})), "negatives"),
            (with(json!({"skip_hits": 51})), "skip_hits"),
            (with(json!({"batch_size": 0})), "batch_size"),
            (with(json!({"epochs": 0})), "epochs"),
            (with(json!({"name": "Bad Name"})), "not a valid model name"),
            (with(json!({"pairs": [{"query": "q", "positive": "p", "negative": "n"}]})), "unknown field"),
        ];
        for (params, expected) in cases {
            let err = validate_submission(FINETUNE_RERANKER_KIND, params.clone()).expect_err("invalid");
            assert_eq!(err.kind(), ErrorKind::Unprocessable, "{params}");
            assert!(err.message().contains(expected), "{params}: {}", err.message());
        }
    }
}
