//! A GGUF model on candle, on the CPU.
//!
//! One generation runs at a time: the weights hold a single KV cache, so a
//! request waits (in `stream`, before its first token) for the one ahead of
//! it. On a small CPU box two interleaved generations would not finish sooner
//! anyway; each would get half the cores.

mod tokenizer;
mod training;

use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::{quantized_llama, quantized_qwen2};
use candle_transformers::utils::apply_repeat_penalty;
use ragd_core::{ChatMessage, GenerationRequest, Generator, TokenStream};
use serde::Deserialize;
use tokenizers::Tokenizer;
use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::template::ChatTemplate;

pub use training::{ChatTokenizer, TokenizedChat};

/// Weight types candle 0.11 multiplies without SIMD kernels on x86 (it has
/// AVX2 ones for Q4_0, Q8_0 and the K-quants): SmolLM2 in Q4_1 decodes about
/// 15 times slower than the same weights in Q8_0.
const SLOW_DTYPES: [GgmlDType; 3] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1];

/// Prompt tokens run through the model at once: bounds the attention scores'
/// memory (chunk by context) and how long a cancelled request keeps the model.
const PREFILL_CHUNK: usize = 256;

/// Text pieces buffered between the model and a slow reader before the
/// model waits for the reader.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalGgufConfig {
    /// A GGUF file of the llama or qwen2 architecture with a byte-level BPE
    /// (`gpt2`) vocabulary. Relative paths are relative to the working
    /// directory.
    pub model_path: PathBuf,
    /// The model name reported to callers; when absent, the name of the
    /// directory holding the model file (the registry lays models out as
    /// `<models_dir>/<name>/model.gguf`).
    pub name: Option<String>,
    /// Prompt and answer tokens together; capped by the context the model was
    /// trained for (and by candle's 4096 for llama).
    pub context_tokens: usize,
    /// Makes tokens already in the answer less likely (1.0 disables it).
    /// Prompt tokens are not penalised, so the model may quote its context.
    pub repeat_penalty: f32,
    /// How many of the latest answer tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Converts Q4_1, Q5_0 and Q5_1 weights to Q8_0 while loading: nearly
    /// lossless, about twice their memory, and an order of magnitude faster
    /// on CPUs with AVX2.
    pub requantize_slow_weights: bool,
}

impl Default for LocalGgufConfig {
    fn default() -> Self {
        Self {
            model_path: PathBuf::from("models/smollm2-135m-instruct/model.gguf"),
            name: None,
            context_tokens: 2048,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            requantize_slow_weights: true,
        }
    }
}

impl LocalGgufConfig {
    fn validate(&self) -> Result<()> {
        if self.context_tokens < 2 {
            return Err(Error::Config("context_tokens must be at least 2".into()));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(Error::Config("repeat_penalty must be a positive number".into()));
        }
        Ok(())
    }

    fn model_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| {
                let dir = self.model_path.parent()?.file_name()?;
                Some(dir.to_string_lossy().into_owned())
            })
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "local".to_owned())
    }
}

/// What [`LocalGguf::perplexity`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    /// Tokens predicted (the first of each window is only context).
    pub tokens: usize,
    pub perplexity: f64,
    /// Tokens read per second, one at a time.
    pub tokens_per_second: f64,
}

/// The GGUF architectures candle runs for us.
enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl Weights {
    /// The model ready for one generation, with an empty KV cache.
    fn session(&mut self) -> Session<'_> {
        match self {
            // A clone shares the weights (they are `Arc`s) but not the caches:
            // besides keys and values, candle keeps one attention mask per
            // prompt length it has seen and never frees them, which in a
            // server would grow without bound.
            Self::Llama(model) => Session::Llama(Box::new(model.clone())),
            // Not `Clone` in candle 0.11, so its mask cache does grow: by one
            // mask of at most PREFILL_CHUNK x context bytes per prompt length.
            Self::Qwen2(model) => {
                model.clear_kv_cache();
                Session::Qwen2(model)
            }
        }
    }
}

enum Session<'a> {
    Llama(Box<quantized_llama::ModelWeights>),
    Qwen2(&'a mut quantized_qwen2::ModelWeights),
}

impl Session<'_> {
    /// Logits for the token after `tokens`, which start at `position`.
    fn forward(&mut self, tokens: &[u32], position: usize, device: &Device) -> Result<Tensor> {
        let inference = |e: candle_core::Error| Error::Inference(e.to_string());
        let input = Tensor::new(tokens, device).and_then(|t| t.unsqueeze(0)).map_err(inference)?;
        let logits = match self {
            Self::Llama(model) => model.forward(&input, position),
            Self::Qwen2(model) => model.forward(&input, position),
        };
        logits.and_then(|t| t.squeeze(0)).map_err(inference)
    }
}

struct Shared {
    name: String,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
    context_tokens: usize,
    repeat_penalty: f32,
    repeat_last_n: usize,
    device: Device,
}

/// A local GGUF chat model; see the module documentation for concurrency.
pub struct LocalGguf {
    shared: Arc<Shared>,
    weights: Arc<Mutex<Weights>>,
}

impl std::fmt::Debug for LocalGguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGguf")
            .field("name", &self.shared.name)
            .field("context_tokens", &self.shared.context_tokens)
            .finish_non_exhaustive()
    }
}

impl LocalGguf {
    /// Reads the model and its tokenizer; blocking, seconds for large files.
    pub fn load(config: &LocalGgufConfig) -> Result<Self> {
        config.validate()?;
        let started = Instant::now();
        let path = &config.model_path;
        let mut file =
            File::open(path).map_err(|e| Error::ModelLoad(format!("cannot open {}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::ModelLoad(format!("{} is not a readable gguf file: {e}", path.display())))?;
        let metadata = &content.metadata;
        let architecture = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if !matches!(architecture.as_str(), "llama" | "qwen2") {
            return Err(Error::ModelLoad(format!(
                "{}: architecture {architecture:?} is not supported (llama, qwen2)",
                path.display()
            )));
        }
        let vocab = tokenizer::from_gguf(metadata)?;
        let template_source =
            metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
        let trained_context = metadata
            .get(&format!("{architecture}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .and_then(|n| usize::try_from(n).ok());

        let device = Device::Cpu;
        let slow = content.tensor_infos.values().filter(|t| SLOW_DTYPES.contains(&t.ggml_dtype)).count();
        let (weights, arch_limit) = if config.requantize_slow_weights && slow > 0 {
            let requantizing = Instant::now();
            let mut gguf =
                Cursor::new(requantize(content, &mut file, &device).map_err(|e| load_error(path, e))?);
            tracing::info!(
                tensors = slow,
                elapsed_ms = requantizing.elapsed().as_millis() as u64,
                "slow weight types requantized to q8_0"
            );
            let content = gguf_file::Content::read(&mut gguf).map_err(|e| load_error(path, e))?;
            weights(&architecture, content, &mut gguf, &device).map_err(|e| load_error(path, e))?
        } else {
            weights(&architecture, content, &mut file, &device).map_err(|e| load_error(path, e))?
        };
        let context_tokens = [Some(config.context_tokens), trained_context, arch_limit]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(config.context_tokens);

        let shared = Shared {
            name: config.model_name(),
            template: ChatTemplate::new(template_source, vocab.bos_token, vocab.eos_token),
            tokenizer: vocab.tokenizer,
            stop_ids: vocab.stop_ids,
            context_tokens,
            repeat_penalty: config.repeat_penalty,
            repeat_last_n: config.repeat_last_n,
            device,
        };
        tracing::info!(
            model = %shared.name,
            path = %path.display(),
            architecture = %architecture,
            context_tokens,
            vocab_size = shared.tokenizer.get_vocab_size(true),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local model loaded"
        );
        Ok(Self { shared: Arc::new(shared), weights: Arc::new(Mutex::new(weights)) })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// The model's perplexity on `text` (its first `max_tokens` tokens): the
    /// exponential of the mean negative log-likelihood of each token given
    /// the ones before it in its window of `window` tokens, each window read
    /// from an empty cache. Tokens go in one at a time, as in decoding
    /// (candle's models return only the last position's logits), so the
    /// rate doubles as decode speed. Blocking; waits for any generation.
    pub fn perplexity(&self, text: &str, max_tokens: usize, window: usize) -> Result<Perplexity> {
        let inference = |e: candle_core::Error| Error::Inference(e.to_string());
        let encoding =
            self.shared.tokenizer.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = &encoding.get_ids()[..encoding.len().min(max_tokens)];
        let window = window.clamp(2, self.shared.context_tokens);
        let mut weights = self.weights.blocking_lock();
        let (mut scored, mut nll) = (0usize, 0f64);
        let started = Instant::now();
        for part in ids.chunks(window).filter(|part| part.len() > 1) {
            let mut model = weights.session();
            for (position, pair) in part.windows(2).enumerate() {
                let logits = model.forward(&pair[..1], position, &self.shared.device)?;
                let logits = logits
                    .to_dtype(candle_core::DType::F32)
                    .and_then(|l| l.to_vec1::<f32>())
                    .map_err(inference)?;
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let log_sum =
                    f64::from(max) + logits.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln();
                nll += log_sum - f64::from(logits[pair[1] as usize]);
                scored += 1;
            }
        }
        if scored == 0 {
            return Err(Error::Tokenizer("the text has fewer than 2 tokens".into()));
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(Perplexity {
            tokens: scored,
            perplexity: (nll / scored as f64).exp(),
            tokens_per_second: scored as f64 / seconds,
        })
    }

    /// The prompt text the model sees for `messages`, ending with the cue for
    /// the assistant's turn.
    pub fn render_prompt(&self, messages: &[ChatMessage]) -> String {
        self.shared.template.render(messages)
    }
}

#[async_trait]
impl Generator for LocalGguf {
    fn model(&self) -> &str {
        &self.shared.name
    }

    fn context_tokens(&self) -> usize {
        self.shared.context_tokens
    }

    /// Exact: the model's own tokenizer, special tokens matched whole.
    fn count_tokens(&self, text: &str) -> usize {
        match self.shared.tokenizer.encode_fast(text, false) {
            Ok(encoding) => encoding.len(),
            // A byte-level vocabulary never needs more than a token per byte.
            Err(_) => text.len(),
        }
    }

    async fn stream(&self, request: GenerationRequest) -> ragd_core::Result<TokenStream> {
        let span =
            tracing::info_span!("generate", model = %self.shared.name, max_tokens = request.max_tokens);
        let shared = Arc::clone(&self.shared);
        let messages = request.messages;
        let prompt = tokio::task::spawn_blocking(move || shared.prompt_ids(&messages))
            .instrument(span.clone())
            .await
            .map_err(|e| Error::Inference(format!("prompt task failed: {e}")))??;
        let limit = self.shared.context_tokens;
        if prompt.len() >= limit {
            return Err(Error::ContextOverflow { prompt_tokens: prompt.len(), limit }.into());
        }
        let job = Job {
            max_new: limit
                .saturating_sub(prompt.len())
                .min(usize::try_from(request.max_tokens).unwrap_or(usize::MAX)),
            prompt,
            sampling: if request.temperature > 0.0 {
                Sampling::All { temperature: f64::from(request.temperature) }
            } else {
                Sampling::ArgMax
            },
            seed: request.seed,
        };

        let weights = Arc::clone(&self.weights).lock_owned().instrument(span.clone()).await;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            run(&shared, weights, job, &tx);
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

fn load_error(path: &Path, err: candle_core::Error) -> Error {
    Error::ModelLoad(format!("{}: {err}", path.display()))
}

/// Candle's model for `architecture`, and the context it is limited to.
fn weights<R: Read + Seek>(
    architecture: &str,
    content: gguf_file::Content,
    reader: &mut R,
    device: &Device,
) -> candle_core::Result<(Weights, Option<usize>)> {
    match architecture {
        "llama" => Ok((
            Weights::Llama(quantized_llama::ModelWeights::from_gguf(content, reader, device)?),
            // candle precomputes llama's rotary tables for this many positions
            Some(quantized_llama::MAX_SEQ_LEN),
        )),
        "qwen2" => {
            Ok((Weights::Qwen2(quantized_qwen2::ModelWeights::from_gguf(content, reader, device)?), None))
        }
        other => candle_core::bail!("architecture {other:?} is not supported (llama, qwen2)"),
    }
}

/// The GGUF rewritten in memory with its slow weight types as Q8_0; the
/// model constructors only read GGUF, so this is how they get the new types.
fn requantize(content: gguf_file::Content, file: &mut File, device: &Device) -> candle_core::Result<Vec<u8>> {
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(file, name, device)?;
        let tensor = if SLOW_DTYPES.contains(&tensor.dtype()) {
            QTensor::quantize(&tensor.dequantize(device)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, tensor)| (*name, tensor)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors)?;
    Ok(out.into_inner())
}

impl Shared {
    fn prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let prompt = self.template.render(messages);
        let encoding =
            self.tokenizer.encode_fast(prompt, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        if encoding.is_empty() {
            return Err(Error::Tokenizer("the prompt is empty".into()));
        }
        Ok(encoding.get_ids().to_vec())
    }
}

struct Job {
    prompt: Vec<u32>,
    /// Answer tokens allowed, already capped by the context left.
    max_new: usize,
    sampling: Sampling,
    seed: u64,
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    EndOfTurn,
    Length,
    Cancelled,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Self::EndOfTurn => "end_of_turn",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

struct Outcome {
    stop: Stop,
    answer_tokens: usize,
    prefill: Duration,
    decode: Duration,
}

impl Outcome {
    fn unanswered(stop: Stop, prefill: Duration) -> Self {
        Self { stop, answer_tokens: 0, prefill, decode: Duration::ZERO }
    }
}

type Sender = mpsc::Sender<ragd_core::Result<String>>;

fn run(shared: &Shared, mut weights: OwnedMutexGuard<Weights>, job: Job, tx: &Sender) {
    let prompt_tokens = job.prompt.len();
    match decode(shared, &mut weights, job, tx) {
        Ok(outcome) => {
            let per_s = |tokens: usize, time: Duration| tokens as f64 / time.as_secs_f64().max(1e-9);
            tracing::info!(
                prompt_tokens,
                answer_tokens = outcome.answer_tokens,
                stop = outcome.stop.as_str(),
                prefill_ms = outcome.prefill.as_millis() as u64,
                decode_ms = outcome.decode.as_millis() as u64,
                prefill_tokens_per_s = per_s(prompt_tokens, outcome.prefill),
                decode_tokens_per_s = per_s(outcome.answer_tokens, outcome.decode),
                "generation finished"
            );
        }
        Err(err) => {
            tracing::error!(error = %err, prompt_tokens, "generation failed");
            // The reader may be gone already; then nobody needs the error.
            let _ = tx.blocking_send(Err(err.into()));
        }
    }
}

/// Prefill, then sample token by token until a stop token, the token budget,
/// or the reader going away.
fn decode(shared: &Shared, weights: &mut Weights, job: Job, tx: &Sender) -> Result<Outcome> {
    let inference = |e: candle_core::Error| Error::Inference(e.to_string());
    let started = Instant::now();
    if job.max_new == 0 {
        return Ok(Outcome::unanswered(Stop::Length, Duration::ZERO));
    }
    let mut model = weights.session();
    let mut logits = None;
    for (i, chunk) in job.prompt.chunks(PREFILL_CHUNK).enumerate() {
        if tx.is_closed() {
            return Ok(Outcome::unanswered(Stop::Cancelled, started.elapsed()));
        }
        logits = Some(model.forward(chunk, i * PREFILL_CHUNK, &shared.device)?);
    }
    let mut logits = logits.ok_or_else(|| Error::Tokenizer("the prompt is empty".into()))?;
    let prefill = started.elapsed();

    let decode_started = Instant::now();
    let mut sampler = LogitsProcessor::from_sampling(job.seed, job.sampling);
    let mut text = shared.tokenizer.decode_stream(true);
    let mut answer: Vec<u32> = Vec::with_capacity(job.max_new.min(1024));
    let stop = loop {
        if shared.repeat_penalty != 1.0 && !answer.is_empty() {
            let recent = &answer[answer.len().saturating_sub(shared.repeat_last_n)..];
            logits = apply_repeat_penalty(&logits, shared.repeat_penalty, recent).map_err(inference)?;
        }
        let next = sampler.sample(&logits).map_err(inference)?;
        if shared.stop_ids.contains(&next) {
            break Stop::EndOfTurn;
        }
        answer.push(next);
        // `step` holds back tokens that end inside a multi-byte character.
        if let Some(piece) = text.step(next).map_err(|e| Error::Tokenizer(e.to_string()))? {
            if tx.blocking_send(Ok(piece)).is_err() {
                break Stop::Cancelled;
            }
        }
        if answer.len() >= job.max_new {
            break Stop::Length;
        }
        if tx.is_closed() {
            break Stop::Cancelled;
        }
        logits = model.forward(&[next], job.prompt.len() + answer.len() - 1, &shared.device)?;
    };
    Ok(Outcome { stop, answer_tokens: answer.len(), prefill, decode: decode_started.elapsed() })
}
