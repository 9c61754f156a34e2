//! The `finetune-generator` job: trains a LoRA adapter of a GGUF generator
//! (a registry model or one registered here) with `ragd-train` on chat
//! conversations, inline, from a JSONL file under `jobs.datasets_dir`, or
//! built from a collection's chunks as questions and answers. Reports,
//! checkpoints, cancellation and registration work as for
//! `finetune-embedder`; the adapter is registered under
//! `<data_dir>/models/<name>` with a manifest of kind `generator-lora`,
//! and on request the base model with the adapter merged in as a GGUF
//! generator (kind `generator-gguf`), which `/v1/chat/completions` serves
//! by name.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use ragd_core::{ChatMessage, ChatRole, ChunkPayload, CollectionId, DocumentStatus, ErrorKind, TenantId};
use ragd_generate::QuantType;
use ragd_store::JobRecord;
use ragd_train::{LoraConfig, LoraTarget, ADAPTER_FILE};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::finetune::{
    check_model_name, check_training_numbers, default_epochs, default_seed, default_validation_fraction,
    remove_dir, resume_point, TrainingJobs, TrainingNumbers,
};
use crate::quantize_job::GENERATOR_KIND;
use crate::{Error, Result};

pub const FINETUNE_GENERATOR_KIND: &str = "finetune-generator";

/// The manifest kind of a LoRA adapter.
pub const ADAPTER_KIND: &str = "generator-lora";

/// The file of a GGUF generator's directory.
const GGUF_FILE: &str = "model.gguf";

const MAX_INLINE_EXAMPLES: usize = 10_000;

/// Documents read per page when a collection becomes a dataset.
const DOCUMENT_PAGE: u32 = 200;

/// Characters of a chunk an answer takes at most, cut at a sentence end.
const ANSWER_CHARS: usize = 300;

/// The parameters of a `finetune-generator` job, as posted and as stored
/// (with every default filled in).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneGeneratorParams {
    /// The adapter's name; default `<base_model>-lora-<job id suffix>`.
    #[serde(default)]
    pub name: Option<String>,
    /// A GGUF generator of the llama architecture: a registry model or one
    /// registered here.
    #[serde(default = "default_base_model")]
    pub base_model: String,
    #[serde(default)]
    pub examples: Vec<ConversationParams>,
    #[serde(default)]
    pub dataset: Option<ConversationDataset>,
    #[serde(default = "default_rank")]
    pub rank: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Projections that get an adapter: q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Conversations per step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// Tokens of a conversation trained on (the chat template's included).
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Also register the base model with the adapter merged in.
    #[serde(default)]
    pub merge: bool,
    /// The merged model's weight type: q8_0, q4_k, f16 or f32.
    #[serde(default = "default_merge_type")]
    pub merge_type: String,
    /// The merged model's name; default `<name>-merged`.
    #[serde(default)]
    pub merged_name: Option<String>,
}

/// A conversation in the OpenAI chat format.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationParams {
    pub messages: Vec<MessageParams>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MessageParams {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// Where conversations come from when they are not inline: one of the two.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationDataset {
    /// A JSONL file of `{"messages": [...]}` lines, relative to
    /// `jobs.datasets_dir`, which callers cannot leave.
    #[serde(default)]
    pub jsonl: Option<PathBuf>,
    /// A collection (its id or name when posted, its id once stored) whose
    /// chunks become questions and answers: for the first chunk of each
    /// section, "what does <title> say about <section>?" answered with
    /// the chunk's opening sentences.
    #[serde(default)]
    pub collection: Option<String>,
    /// Use only the first this many conversations.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_base_model() -> String {
    "smollm2-135m-instruct".to_owned()
}
fn default_rank() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec![LoraTarget::Q.as_str().to_owned(), LoraTarget::V.as_str().to_owned()]
}
fn default_batch_size() -> usize {
    4
}
fn default_learning_rate() -> f64 {
    2e-4
}
fn default_max_seq_len() -> usize {
    256
}
fn default_merge_type() -> String {
    QuantType::Q8_0.as_str().to_owned()
}

impl FinetuneGeneratorParams {
    pub(crate) fn check(&mut self) -> std::result::Result<(), String> {
        if let Some(name) = &self.name {
            check_model_name(name)?;
        }
        check_model_name(&self.base_model).map_err(|reason| format!("base_model: {reason}"))?;
        match (&self.dataset, self.examples.len()) {
            (Some(_), 0) => {}
            (Some(_), _) => return Err("give either examples or dataset, not both".to_owned()),
            (None, 0 | 1) => {
                return Err("examples needs at least 2 conversations (or give a dataset)".to_owned())
            }
            (None, n) if n > MAX_INLINE_EXAMPLES => {
                return Err(format!("at most {MAX_INLINE_EXAMPLES} inline examples; use a dataset for more"))
            }
            (None, _) => {}
        }
        for (n, example) in self.examples.iter().enumerate() {
            example.check().map_err(|reason| format!("examples[{n}]: {reason}"))?;
        }
        if let Some(dataset) = &self.dataset {
            dataset.check()?;
        }
        if !(1..=256).contains(&self.rank) {
            return Err("rank must be between 1 and 256".to_owned());
        }
        if !(self.alpha > 0.0 && self.alpha <= 4096.0) {
            return Err("alpha must be above 0 and at most 4096".to_owned());
        }
        self.lora_targets()?;
        check_training_numbers(TrainingNumbers {
            epochs: self.epochs,
            batch_size: self.batch_size,
            min_batch_size: 1,
            max_seq_len: self.max_seq_len,
            learning_rate: self.learning_rate,
            validation_fraction: self.validation_fraction,
        })?;
        self.merge_type().ok_or_else(|| {
            let known: Vec<&str> = QuantType::ALL.iter().map(|t| t.as_str()).collect();
            format!("merge_type {:?} is not one of {}", self.merge_type, known.join(", "))
        })?;
        match (&self.merged_name, self.merge) {
            (Some(_), false) => Err("merged_name needs merge: true".to_owned()),
            (Some(name), true) => check_model_name(name).map_err(|reason| format!("merged_name: {reason}")),
            (None, _) => Ok(()),
        }
    }

    fn lora_targets(&self) -> std::result::Result<Vec<LoraTarget>, String> {
        if self.targets.is_empty() {
            return Err("targets must name at least one projection".to_owned());
        }
        let mut targets = Vec::with_capacity(self.targets.len());
        for name in &self.targets {
            let target = LoraTarget::parse(name).ok_or_else(|| {
                let known: Vec<&str> = LoraTarget::ALL.iter().map(|t| t.as_str()).collect();
                format!("target {name:?} is not one of {}", known.join(", "))
            })?;
            if targets.contains(&target) {
                return Err(format!("target {name:?} is named twice"));
            }
            targets.push(target);
        }
        Ok(targets)
    }

    fn merge_type(&self) -> Option<QuantType> {
        QuantType::parse(&self.merge_type)
    }
}

impl ConversationParams {
    fn check(&self) -> std::result::Result<(), String> {
        if !self.messages.iter().any(|m| m.role == Role::Assistant && !m.content.trim().is_empty()) {
            return Err("a conversation needs an assistant message with content: only those are trained on"
                .to_owned());
        }
        Ok(())
    }

    fn into_messages(self) -> Vec<ChatMessage> {
        self.messages
            .into_iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => ChatRole::System,
                    Role::User => ChatRole::User,
                    Role::Assistant => ChatRole::Assistant,
                };
                ChatMessage::new(role, m.content)
            })
            .collect()
    }
}

impl ConversationDataset {
    fn check(&self) -> std::result::Result<(), String> {
        match (&self.jsonl, &self.collection) {
            (Some(path), None) => {
                let inside = path.components().all(|part| matches!(part, Component::Normal(_)));
                if !inside || path.as_os_str().is_empty() {
                    return Err(
                        "dataset.jsonl must be a relative path inside the server's datasets directory, \
                                without '..'"
                            .to_owned(),
                    );
                }
            }
            (None, Some(collection)) if collection.trim().is_empty() => {
                return Err("dataset.collection must name a collection".to_owned());
            }
            (None, Some(_)) => {}
            _ => return Err("dataset needs exactly one of jsonl and collection".to_owned()),
        }
        if self.limit.is_some_and(|limit| limit < 2) {
            return Err("dataset.limit must be at least 2".to_owned());
        }
        Ok(())
    }
}

/// A JSONL line: the conversation; other fields (ids, sources) are ignored.
#[derive(Deserialize)]
struct JsonlLine {
    messages: Vec<MessageParams>,
}

impl TrainingJobs {
    pub async fn run_generator(&self, job: &JobRecord, worker: &str) -> Result<()> {
        let mut params: FinetuneGeneratorParams = serde_json::from_value(job.payload.clone())
            .map_err(|e| Error::Payload { job: job.id, reason: e.to_string() })?;
        params.check().map_err(|reason| Error::Payload { job: job.id, reason })?;
        let name = params.name.clone().unwrap_or_else(|| {
            let id = job.id.to_string();
            format!("{}-lora-{}", params.base_model, &id[id.len() - 8..])
        });
        let merged_name =
            params.merge.then(|| params.merged_name.clone().unwrap_or_else(|| format!("{name}-merged")));
        for taken in std::iter::once(&name).chain(&merged_name) {
            if self.trained_models_dir().join(taken).exists() {
                let message = format!("a model named {taken:?} already exists");
                return Err(ragd_core::Error::new(ErrorKind::Conflict, message).into());
            }
        }
        let base_gguf = self.model_dirs().generator(&params.base_model).ok_or_else(|| {
            let message = format!("generator {:?} is no longer there", params.base_model);
            ragd_core::Error::new(ErrorKind::NotFound, message)
        })?;
        let conversations = self.conversations(job, &params).await?;
        let scratch = self.scratch_dir(job.id);
        let resume = resume_point(job);
        let message = match &resume {
            Some(checkpoint) => {
                format!("attempt {}: resuming after epoch {}", job.attempts, checkpoint.epoch)
            }
            None => format!(
                "attempt {}: training LoRA adapter {name} of {} on {} conversations",
                job.attempts,
                params.base_model,
                conversations.len()
            ),
        };
        self.store.append_job_log(job.id, &message).await?;
        let targets = params.lora_targets().map_err(|reason| Error::Payload { job: job.id, reason })?;
        let config = LoraConfig {
            base_gguf: base_gguf.clone(),
            output_dir: scratch.join("adapter"),
            checkpoint_dir: scratch.join("checkpoints"),
            rank: params.rank,
            alpha: params.alpha,
            targets,
            epochs: params.epochs,
            batch_size: params.batch_size,
            learning_rate: params.learning_rate,
            max_seq_len: params.max_seq_len,
            seed: params.seed,
            validation_fraction: params.validation_fraction,
            resume,
        };
        let outcome = {
            let config = config.clone();
            self.drive(job.id, worker, &scratch, move |stop, observe| {
                ragd_train::finetune_lora(&config, &conversations, stop, observe)
            })
            .await?
        };

        // Merged before anything is registered, so a failed merge leaves
        // no adapter without the model that was asked for.
        let merged = match (&merged_name, params.merge_type()) {
            (Some(merged_name), Some(dtype)) => {
                let staged = scratch.join("merged");
                tokio::fs::create_dir_all(&staged).await.map_err(|e| {
                    ragd_core::Error::with_source(ErrorKind::Internal, "creating the job's scratch", e)
                })?;
                self.store.append_job_log(job.id, &format!("merging the adapter into {merged_name}")).await?;
                let (adapter, output, alpha) =
                    (config.output_dir.join(ADAPTER_FILE), staged.join(GGUF_FILE), params.alpha);
                let summary = self
                    .convert(job, worker, &scratch, (1.0, 1.0), move |progress| {
                        ragd_train::merge_lora(&base_gguf, &adapter, alpha, &output, dtype, progress)
                            .map_err(Into::into)
                    })
                    .await?;
                Some((merged_name, staged, summary))
            }
            _ => None,
        };

        let manifest = json!({
            "name": name,
            "kind": ADAPTER_KIND,
            "base_model": params.base_model,
            "lora": {
                "rank": params.rank,
                "alpha": params.alpha,
                "targets": params.targets,
                "tensor_names": "gguf",
            },
            "max_seq_len": params.max_seq_len,
            "merged_model": merged.as_ref().map(|(merged_name, _, _)| merged_name),
            "job": job.id.to_string(),
            "training": {
                "train_conversations": outcome.train_conversations,
                "validation_conversations": outcome.validation_conversations,
                "skipped_conversations": outcome.skipped,
                "trainable_parameters": outcome.parameters,
                "steps": outcome.steps,
                "epochs": params.epochs,
                "batch_size": params.batch_size,
                "learning_rate": params.learning_rate,
                "seed": params.seed,
                "loss": "cross-entropy of the assistant's tokens",
            },
            "validation": outcome.validation.map(|v| json!({
                "loss": v.loss, "perplexity": v.perplexity, "tokens": v.tokens, "conversations": v.conversations,
            })),
        });
        self.register(job.id, worker, &name, &config.output_dir, &manifest, &[ADAPTER_FILE]).await?;
        if let Some((merged_name, staged, summary)) = merged {
            let manifest = json!({
                "name": merged_name,
                "kind": GENERATOR_KIND,
                "architecture": summary.architecture,
                "base_model": params.base_model,
                "adapter": name,
                "job": job.id.to_string(),
                "quantization": {
                    "type": params.merge_type,
                    "tensors": summary.tensors,
                    "tensors_in_type": summary.in_target_type,
                    "bytes": summary.bytes,
                },
            });
            self.register(job.id, worker, merged_name, &staged, &manifest, &[GGUF_FILE]).await?;
        }
        remove_dir(&scratch).await;
        Ok(())
    }

    async fn conversations(
        &self,
        job: &JobRecord,
        params: &FinetuneGeneratorParams,
    ) -> Result<Vec<Vec<ChatMessage>>> {
        let Some(dataset) = &params.dataset else {
            return Ok(params.examples.iter().cloned().map(ConversationParams::into_messages).collect());
        };
        let limit = dataset.limit.unwrap_or(usize::MAX);
        let conversations = match (&dataset.jsonl, &dataset.collection) {
            (Some(path), _) => read_jsonl(&self.datasets_dir.join(path), path, limit).await?,
            (None, Some(collection)) => {
                let payload_error = |reason: String| Error::Payload { job: job.id, reason };
                let tenant =
                    job.tenant.clone().ok_or_else(|| payload_error("the job has no owner".to_owned()))?;
                let collection: CollectionId = collection
                    .parse()
                    .map_err(|_| payload_error("dataset.collection is not an id".to_owned()))?;
                let conversations = self.collection_conversations(&tenant, collection, limit).await?;
                self.store
                    .append_job_log(
                        job.id,
                        &format!(
                            "built {} questions and answers from the collection's chunks",
                            conversations.len()
                        ),
                    )
                    .await?;
                conversations
            }
            (None, None) => Vec::new(),
        };
        if conversations.len() < 2 {
            let message = format!("the dataset has {} conversations; training needs 2", conversations.len());
            return Err(ragd_core::Error::new(ErrorKind::Unprocessable, message).into());
        }
        Ok(conversations)
    }

    /// Questions and answers from the first chunk of each section of the
    /// collection's ready documents, in document order.
    async fn collection_conversations(
        &self,
        tenant: &TenantId,
        collection: CollectionId,
        limit: usize,
    ) -> Result<Vec<Vec<ChatMessage>>> {
        // The collection may have been deleted since the job was posted.
        let target = self.store.get_collection(tenant, collection).await?.index_target();
        let index = self.retriever.index();
        let mut conversations = Vec::new();
        let mut seen = HashSet::new();
        let mut after = None;
        loop {
            let documents = self.store.list_documents(collection, after, DOCUMENT_PAGE).await?;
            let Some(last) = documents.last() else { break };
            after = Some(last.id);
            for document in
                documents.iter().filter(|d| d.status == DocumentStatus::Ready && d.chunk_count > 0)
            {
                let indices: Vec<u32> =
                    (0..u32::try_from(document.chunk_count).unwrap_or(u32::MAX)).collect();
                let chunks = index.chunks(target, document.id, document.version, &indices).await?;
                for chunk in &chunks {
                    if !seen.insert((chunk.document, chunk.heading_path.clone())) {
                        continue;
                    }
                    if let Some(conversation) = question_and_answer(chunk) {
                        conversations.push(conversation);
                        if conversations.len() >= limit {
                            return Ok(conversations);
                        }
                    }
                }
            }
        }
        Ok(conversations)
    }
}

/// "What does <title> say about <section>?" and the chunk's opening
/// sentences, up to [`ANSWER_CHARS`]; none for a chunk too short to answer.
fn question_and_answer(chunk: &ChunkPayload) -> Option<Vec<ChatMessage>> {
    let text = chunk.text.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = chunk.title.trim();
    let section = chunk.heading_path.rsplit(" > ").next().unwrap_or_default().trim();
    let question = if section.is_empty() || section == title {
        format!("What does \"{title}\" say?")
    } else {
        format!("What does \"{title}\" say about {section}?")
    };
    let mut answer = String::new();
    for sentence in text.split_inclusive(". ") {
        if !answer.is_empty() && answer.len() + sentence.len() > ANSWER_CHARS {
            break;
        }
        answer.push_str(sentence);
    }
    if answer.chars().count() > ANSWER_CHARS {
        answer = answer.chars().take(ANSWER_CHARS).collect();
    }
    let answer = answer.trim();
    (answer.len() >= 20).then(|| {
        vec![ChatMessage::new(ChatRole::User, question), ChatMessage::new(ChatRole::Assistant, answer)]
    })
}

async fn read_jsonl(path: &Path, shown: &Path, limit: usize) -> Result<Vec<Vec<ChatMessage>>> {
    let unprocessable =
        |message: String| Error::from(ragd_core::Error::new(ErrorKind::Unprocessable, message));
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| unprocessable(format!("cannot read dataset {}: {e}", shown.display())))?;
    let mut conversations = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        if conversations.len() >= limit {
            break;
        }
        let line: JsonlLine = serde_json::from_str(line)
            .map_err(|e| unprocessable(format!("{} line {}: {e}", shown.display(), n + 1)))?;
        let conversation = ConversationParams { messages: line.messages };
        conversation
            .check()
            .map_err(|reason| unprocessable(format!("{} line {}: {reason}", shown.display(), n + 1)))?;
        conversations.push(conversation.into_messages());
    }
    Ok(conversations)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::validate_submission;

    fn examples(n: usize) -> Value {
        Value::Array(
            (0..n)
                .map(|i| {
                    json!({"messages": [
                        {"role": "user", "content": format!("q{i}")},
                        {"role": "assistant", "content": format!("a{i}")},
                    ]})
                })
                .collect(),
        )
    }

    #[test]
    fn submissions_get_defaults_and_bad_ones_clear_reasons() {
        let payload =
            validate_submission(FINETUNE_GENERATOR_KIND, json!({"examples": examples(2)})).expect("valid");
        assert_eq!(payload["base_model"], "smollm2-135m-instruct");
        assert_eq!(payload["targets"], json!(["q_proj", "v_proj"]));
        assert_eq!((payload["rank"].as_u64(), payload["merge"].as_bool()), (Some(8), Some(false)));

        let with = |extra: Value| {
            let mut params = json!({"examples": examples(2)});
            params.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            params
        };
        let cases = [
            (json!({"examples": examples(1)}), "at least 2"),
            (json!({}), "at least 2"),
            (with(json!({"dataset": {"jsonl": "x.jsonl"}})), "not both"),
            (json!({"dataset": {"jsonl": "../x.jsonl"}}), "dataset.jsonl"),
            (json!({"dataset": {"jsonl": "/etc/passwd"}}), "dataset.jsonl"),
            (json!({"dataset": {}}), "exactly one"),
            (json!({"dataset": {"jsonl": "x", "collection": "c"}}), "exactly one"),
            (json!({"dataset": {"collection": "c", "limit": 1}}), "dataset.limit"),
            (with(json!({"rank": 0})), "rank"),
            (with(json!({"alpha": -1.0})), "alpha"),
            (with(json!({"targets": []})), "at least one"),
            (with(json!({"targets": ["q_proj", "lm_head"]})), "lm_head"),
            (with(json!({"targets": ["q_proj", "q_proj"]})), "twice"),
            (with(json!({"merge": true, "merge_type": "q2_k"})), "merge_type"),
            (with(json!({"merged_name": "m"})), "merge: true"),
            (with(json!({"merge": true, "merged_name": "Bad Name"})), "merged_name"),
            (with(json!({"batch_size": 0})), "batch_size"),
            (with(json!({"max_seq_len": 4})), "max_seq_len"),
            (with(json!({"lora_dropout": 0.1})), "unknown field"),
            (
                json!({"examples": [{"messages": [{"role": "user", "content": "q"}]}, {"messages": []}]}),
                "examples[0]",
            ),
            (json!({"examples": [{"messages": [{"role": "robot", "content": "q"}]}]}), "robot"),
        ];
        for (params, expected) in cases {
            let err = validate_submission(FINETUNE_GENERATOR_KIND, params.clone()).expect_err("invalid");
            assert_eq!(err.kind(), ErrorKind::Unprocessable, "{params}");
            assert!(err.message().contains(expected), "{params}: {}", err.message());
        }
    }

    fn chunk(title: &str, heading_path: &str, text: &str) -> ChunkPayload {
        ChunkPayload {
            tenant: TenantId::parse("tenant").expect("tenant"),
            collection: CollectionId::new(),
            document: ragd_core::DocumentId::new(),
            version: 1,
            chunk_index: 0,
            title: title.to_owned(),
            heading_path: heading_path.to_owned(),
            page: None,
            text: text.to_owned(),
            metadata: serde_json::Map::new(),
            acl: Vec::new(),
        }
    }

    #[test]
    fn chunks_become_questions_with_their_opening_sentences() {
        let long = "The index is one shard per collection. ".repeat(20);
        let qa = question_and_answer(&chunk("Guide", "Guide > Install > Linux", &long)).expect("qa");
        assert_eq!(qa[0].content, "What does \"Guide\" say about Linux?");
        assert!(
            qa[1].content.len() <= ANSWER_CHARS && qa[1].content.ends_with("collection."),
            "{}",
            qa[1].content
        );
        let qa = question_and_answer(&chunk("Notes", "", "Workers  claim\njobs under a lease.")).expect("qa");
        assert_eq!(
            (qa[0].content.as_str(), qa[1].content.as_str()),
            ("What does \"Notes\" say?", "Workers claim jobs under a lease.")
        );
        assert!(question_and_answer(&chunk("Notes", "", "Too short.")).is_none());
    }
}
