//! LoRA fine-tuning of a GGUF generator of the llama architecture (the
//! default SmolLM2 is one).
//!
//! The base weights are read from the GGUF file and dequantized to f32, and
//! stay frozen; each chosen projection `W` of every layer gets a trainable
//! low-rank update, `W x + (alpha / rank) B A x`, with `A` (rank x in)
//! drawn uniformly from ±1/sqrt(in) by the seed and `B` (out x rank) zero,
//! so training starts from the base model exactly. The forward pass is the
//! one candle's `quantized_llama` runs (RMSNorm, interleaved RoPE, grouped
//! query attention, SwiGLU), written with differentiable ops only, since
//! candle's fused RMSNorm, RoPE and softmax kernels have no backward pass.
//!
//! Conversations are tokenised with the model's own tokenizer and chat
//! template ([`ChatTokenizer`]); the loss is the cross-entropy of the
//! assistant's tokens only. Weights keep the GGUF layout and names
//! (`blk.N.attn_q.weight`; llama.cpp stores Q and K rows permuted for its
//! RoPE), and so does the adapter: `blk.N.attn_q.weight.lora_a` and
//! `.lora_b`, the names llama.cpp's GGUF LoRA adapters use.

use std::collections::HashMap;
use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ragd_core::ChatMessage;
use ragd_generate::{ChatTokenizer, QuantType, QuantizeSummary, TokenizedChat};

use crate::embedder::{batch_bounds, held_out_count, require, shuffled, splitmix};
use crate::{Checkpoint, Error, Event, Result};

/// The adapter's file in the output directory.
pub const ADAPTER_FILE: &str = "adapter.safetensors";

/// A projection of a llama layer that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [Self; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// The Hugging Face name, which callers use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|target| target.as_str() == name)
    }

    /// The GGUF tensor of this projection in layer `layer`.
    fn tensor(self, layer: usize) -> String {
        let name = match self {
            Self::Q => "attn_q",
            Self::K => "attn_k",
            Self::V => "attn_v",
            Self::O => "attn_output",
            Self::Gate => "ffn_gate",
            Self::Up => "ffn_up",
            Self::Down => "ffn_down",
        };
        format!("blk.{layer}.{name}.weight")
    }
}

#[derive(Debug, Clone)]
pub struct LoraConfig {
    /// The base model's GGUF file (llama architecture, any weight type).
    pub base_gguf: PathBuf,
    /// Where the adapter ([`ADAPTER_FILE`]) is written.
    pub output_dir: PathBuf,
    /// Where each epoch's adapter is written.
    pub checkpoint_dir: PathBuf,
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
    pub epochs: usize,
    /// Conversations per step.
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Tokens of a conversation trained on; the rest is cut off.
    pub max_seq_len: usize,
    /// Decides the validation split, the order per epoch and `A`'s values.
    pub seed: u64,
    /// Share of the conversations held out for validation.
    pub validation_fraction: f64,
    /// Continue after this checkpoint instead of from a fresh adapter. The
    /// optimizer's moments are not part of it: they start again from zero.
    pub resume: Option<Checkpoint>,
}

/// The model's loss on the held-out conversations' assistant tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossValidation {
    /// Mean cross-entropy per assistant token, in nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    pub tokens: usize,
    pub conversations: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraOutcome {
    pub train_conversations: usize,
    pub validation_conversations: usize,
    /// Conversations left out because no assistant token falls within
    /// `max_seq_len`.
    pub skipped: usize,
    pub steps: usize,
    /// Trainable parameters: the adapter's size.
    pub parameters: usize,
    pub validation: Option<LossValidation>,
}

/// Trains a LoRA adapter of `config.base_gguf` on `conversations` and
/// writes it to `config.output_dir`. `observe` hears every step and epoch
/// (epoch 0 is the base model); the run ends with [`Error::Stopped`] when
/// `observe` returns `Break` or when `stop` is set, which is looked at
/// before every step.
pub fn finetune_lora(
    config: &LoraConfig,
    conversations: &[Vec<ChatMessage>],
    stop: &AtomicBool,
    observe: &mut dyn FnMut(Event) -> ControlFlow<()>,
) -> Result<LoraOutcome> {
    let check = |flow: ControlFlow<()>| {
        if flow.is_break() || stop.load(Ordering::Relaxed) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    };
    let started = Instant::now();
    let model = LoraModel::load(&config.base_gguf, config.rank, config.alpha, &config.targets, config.seed)?;
    check(observe(Event::Log(format!(
        "base model loaded and dequantized to f32 in {} ms: {} layers, adapters of rank {} on {}, {} trainable \
         parameters",
        started.elapsed().as_millis(),
        model.layers.len(),
        config.rank,
        config.targets.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "),
        model.parameters()
    ))))?;
    let start_epoch = config.resume.as_ref().map_or(0, |c| c.epoch);
    if let Some(checkpoint) = &config.resume {
        model.load_adapter(&checkpoint.weights)?;
    }

    let mut encoded = Vec::with_capacity(conversations.len());
    for conversation in conversations {
        let mut chat = model.tokenizer.encode(conversation).map_err(|e| Error::Tokenizer(e.to_string()))?;
        chat.ids.truncate(config.max_seq_len);
        chat.assistant.truncate(config.max_seq_len);
        encoded.push(chat);
    }
    let total = encoded.len();
    // Position 0 is never predicted: a conversation needs an assistant token after it.
    encoded.retain(|chat| chat.assistant.iter().skip(1).any(|a| *a));
    let skipped = total - encoded.len();
    if encoded.len() < 2 {
        return Err(Error::Generator(format!(
            "training needs at least 2 conversations with an assistant token within {} tokens, got {}",
            config.max_seq_len,
            encoded.len()
        )));
    }
    let order = shuffled(encoded.len(), config.seed);
    let held_out = held_out_count(encoded.len(), config.validation_fraction);
    let validation: Vec<&TokenizedChat> = order[..held_out].iter().map(|&i| &encoded[i]).collect();
    let train: Vec<&TokenizedChat> = order[held_out..].iter().map(|&i| &encoded[i]).collect();

    let batch_size = config.batch_size.max(1);
    let batches_per_epoch = batch_bounds(train.len(), batch_size).len();
    let total_steps = batches_per_epoch * config.epochs;
    check(observe(Event::Log(format!(
        "{} training conversations, {} held out, {skipped} skipped (no assistant token within {} tokens), \
         {batches_per_epoch} steps per epoch, starting after epoch {start_epoch}",
        train.len(),
        validation.len(),
        config.max_seq_len
    ))))?;
    let mut last_validation = None;
    if start_epoch == 0 {
        last_validation = model.validate(&validation, batch_size, &check)?;
        check(observe(Event::LossEpoch { epoch: 0, validation: last_validation, checkpoint: None }))?;
    }

    let params = ParamsAdamW { lr: config.learning_rate, weight_decay: 0.0, ..Default::default() };
    let mut optimizer = AdamW::new(model.vars.iter().map(|(_, var)| var.clone()).collect(), params)?;
    let mut step = start_epoch * batches_per_epoch;
    std::fs::create_dir_all(&config.checkpoint_dir)?;
    for epoch in start_epoch + 1..=config.epochs {
        let order = shuffled(train.len(), config.seed.wrapping_add(epoch as u64));
        for (from, to) in batch_bounds(train.len(), batch_size) {
            check(ControlFlow::Continue(()))?;
            let started = Instant::now();
            let chats: Vec<&TokenizedChat> = order[from..to].iter().map(|&i| train[i]).collect();
            let (loss, _) = model.loss(&Batch::new(&chats)?)?;
            optimizer.backward_step(&loss)?;
            step += 1;
            let loss = loss.to_scalar::<f32>()?;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            check(observe(Event::Step { epoch, step, total_steps, loss, elapsed_ms }))?;
        }
        let weights = config.checkpoint_dir.join(format!("epoch-{epoch}.safetensors"));
        model.save_adapter(&weights)?;
        if epoch > 1 {
            let previous = config.checkpoint_dir.join(format!("epoch-{}.safetensors", epoch - 1));
            if let Err(error) = std::fs::remove_file(&previous) {
                tracing::debug!(%error, "no previous checkpoint to remove");
            }
        }
        last_validation = model.validate(&validation, batch_size, &check)?;
        let checkpoint = Some(Checkpoint { epoch, weights });
        check(observe(Event::LossEpoch { epoch, validation: last_validation, checkpoint }))?;
    }

    std::fs::create_dir_all(&config.output_dir)?;
    model.save_adapter(&config.output_dir.join(ADAPTER_FILE))?;
    Ok(LoraOutcome {
        train_conversations: train.len(),
        validation_conversations: validation.len(),
        skipped,
        steps: step,
        parameters: model.parameters(),
        validation: last_validation,
    })
}

/// Writes `base_gguf` with `adapter` merged into its weights
/// (`W + alpha / rank * B A`, the rank read from the adapter) as one GGUF
/// of weight type `dtype` at `output`, metadata (tokenizer, chat template)
/// carried over. `progress` hears of each tensor as [`ragd_generate::quantize_gguf`]'s does.
pub fn merge_lora(
    base_gguf: &Path,
    adapter: &Path,
    alpha: f64,
    output: &Path,
    dtype: QuantType,
    progress: &mut dyn FnMut(usize, usize, &str) -> ControlFlow<()>,
) -> Result<QuantizeSummary> {
    require(adapter)?;
    let device = Device::Cpu;
    let tensors = candle_core::safetensors::load(adapter, &device)?;
    let mut file = File::open(base_gguf)?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| gguf_error(base_gguf, e))?;
    let mut merged = HashMap::new();
    for (name, a) in &tensors {
        let Some(base) = name.strip_suffix(".lora_a") else { continue };
        let b = tensors
            .get(&format!("{base}.lora_b"))
            .ok_or_else(|| Error::Generator(format!("the adapter has {name} but no {base}.lora_b")))?;
        let rank = a.dim(0)?;
        let weight = content.tensor(&mut file, base, &device).and_then(|t| t.dequantize(&device));
        let weight = weight.map_err(|e| gguf_error(base_gguf, e))?;
        let delta = (b.matmul(a)? * (alpha / rank as f64))?;
        merged.insert(base.to_owned(), (weight + delta)?);
    }
    ragd_generate::rewrite_gguf(base_gguf, output, dtype, &merged, progress).map_err(|e| match e {
        ragd_generate::Error::Stopped => Error::Stopped,
        other => Error::Generator(other.to_string()),
    })
}

fn gguf_error(path: &Path, error: candle_core::Error) -> Error {
    Error::Generator(format!("{}: {error}", path.display()))
}

/// `x Wᵀ` for a frozen `W`: candle's matmul backward computes the
/// gradient of both operands, and the weight's alone would cost as much as
/// the forward pass (and keep a gradient the size of the model); this op's
/// backward computes only the input's.
struct Frozen(Tensor);

impl candle_core::CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(data), Some((from, to))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("frozen-linear takes a contiguous f32 input")
        };
        let x = Tensor::from_slice(&data[from..to], layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.0.t()?)?;
        let shape = y.shape().clone();
        Ok((candle_core::CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.0)?))
    }
}

/// `x Wᵀ`, `x` (rows, in), `weight` (out, in), differentiable in `x` only.
fn frozen_linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Frozen(weight.clone()))
}

/// A frozen base weight and, when it is a target, its adapter.
struct Projection {
    /// (out, in)
    weight: Tensor,
    adapter: Option<(Var, Var, f64)>,
}

impl Projection {
    /// `x` is (tokens, in).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = frozen_linear(x, &self.weight)?;
        match &self.adapter {
            None => Ok(y),
            Some((a, b, scale)) => {
                let update = x.matmul(&a.as_tensor().t()?)?.matmul(&b.as_tensor().t()?)?;
                y + (update * *scale)?
            }
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
    ffn_norm: Tensor,
    gate: Projection,
    up: Projection,
    down: Projection,
}

/// A llama model with f32 base weights and LoRA adapters.
pub(crate) struct LoraModel {
    embeddings: Tensor,
    /// The output projection: `output.weight`, or the embeddings when the
    /// model ties them (SmolLM2 does).
    output: Tensor,
    output_norm: Tensor,
    layers: Vec<Layer>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    /// RoPE tables, (positions, head_dim / 2).
    cos: Tensor,
    sin: Tensor,
    /// Every adapter matrix by its tensor name.
    vars: Vec<(String, Var)>,
    tokenizer: ChatTokenizer,
}

/// The longest sequence the RoPE tables cover (candle's llama has the same
/// bound).
const MAX_POSITIONS: usize = 4096;

impl LoraModel {
    pub(crate) fn load(
        path: &Path,
        rank: usize,
        alpha: f64,
        targets: &[LoraTarget],
        seed: u64,
    ) -> Result<Self> {
        require(path)?;
        let device = Device::Cpu;
        let mut file = File::open(path)?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| gguf_error(path, e))?;
        let text = |key: &str| content.metadata.get(key).and_then(|v| v.to_string().ok()).cloned();
        let architecture = text("general.architecture").unwrap_or_default();
        if architecture != "llama" {
            return Err(Error::Generator(format!(
                "LoRA training supports the llama architecture; {} is {architecture:?}",
                path.display()
            )));
        }
        let number = |key: &str| -> Result<f64> {
            let value = content
                .metadata
                .get(&format!("llama.{key}"))
                .ok_or_else(|| Error::Generator(format!("llama.{key} is missing")))?;
            value
                .to_u32()
                .map(f64::from)
                .or_else(|_| value.to_f32().map(f64::from))
                .map_err(|e| Error::Generator(format!("llama.{key}: {e}")))
        };
        let layers = number("block_count")? as usize;
        let hidden = number("embedding_length")? as usize;
        let heads = number("attention.head_count")? as usize;
        let kv_heads = number("attention.head_count_kv")? as usize;
        let eps = number("attention.layer_norm_rms_epsilon")?;
        let rope_base = number("rope.freq_base").unwrap_or(10_000.0);
        if heads == 0 || kv_heads == 0 || !hidden.is_multiple_of(heads) || !heads.is_multiple_of(kv_heads) {
            return Err(Error::Generator(format!(
                "{heads} heads, {kv_heads} key/value heads, {hidden} wide"
            )));
        }
        let head_dim = hidden / heads;

        let mut read = |name: &str| -> Result<Tensor> {
            content
                .tensor(&mut file, name, &device)
                .and_then(|t| t.dequantize(&device))
                .map_err(|e| gguf_error(path, e))
        };
        let embeddings = read("token_embd.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            read("output.weight")?
        } else {
            embeddings.clone()
        };
        let output_norm = read("output_norm.weight")?;
        let mut vars = Vec::new();
        let mut state = seed;
        let mut projection = |target: LoraTarget,
                              layer: usize,
                              read: &mut dyn FnMut(&str) -> Result<Tensor>|
         -> Result<Projection> {
            let name = target.tensor(layer);
            let weight = read(&name)?;
            if !targets.contains(&target) {
                return Ok(Projection { weight, adapter: None });
            }
            let (out, inputs) = weight.dims2()?;
            let bound = 1.0 / (inputs as f64).sqrt();
            let values: Vec<f32> = (0..rank * inputs)
                .map(|_| {
                    (((splitmix(&mut state) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * bound) as f32
                })
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(values, (rank, inputs), &device)?)?;
            let b = Var::zeros((out, rank), DType::F32, &device)?;
            vars.push((format!("{name}.lora_a"), a.clone()));
            vars.push((format!("{name}.lora_b"), b.clone()));
            Ok(Projection { weight, adapter: Some((a, b, alpha / rank as f64)) })
        };
        let mut blocks = Vec::with_capacity(layers);
        for layer in 0..layers {
            blocks.push(Layer {
                attn_norm: read(&format!("blk.{layer}.attn_norm.weight"))?,
                q: projection(LoraTarget::Q, layer, &mut read)?,
                k: projection(LoraTarget::K, layer, &mut read)?,
                v: projection(LoraTarget::V, layer, &mut read)?,
                o: projection(LoraTarget::O, layer, &mut read)?,
                ffn_norm: read(&format!("blk.{layer}.ffn_norm.weight"))?,
                gate: projection(LoraTarget::Gate, layer, &mut read)?,
                up: projection(LoraTarget::Up, layer, &mut read)?,
                down: projection(LoraTarget::Down, layer, &mut read)?,
            });
        }
        let tokenizer = ChatTokenizer::from_gguf_metadata(&content.metadata)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;

        let inverse: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / rope_base.powf(2.0 * i as f64 / head_dim as f64) as f32)
            .collect();
        let inverse = Tensor::from_vec(inverse, (1, head_dim / 2), &device)?;
        let positions = Tensor::arange(0u32, MAX_POSITIONS as u32, &device)?
            .to_dtype(DType::F32)?
            .reshape((MAX_POSITIONS, 1))?;
        let angles = positions.matmul(&inverse)?;
        Ok(Self {
            embeddings,
            output,
            output_norm,
            layers: blocks,
            heads,
            kv_heads,
            head_dim,
            eps,
            cos: angles.cos()?,
            sin: angles.sin()?,
            vars,
            tokenizer,
        })
    }

    fn parameters(&self) -> usize {
        self.vars.iter().map(|(_, var)| var.elem_count()).sum()
    }

    fn save_adapter(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> =
            self.vars.iter().map(|(name, var)| (name.clone(), var.as_tensor().clone())).collect();
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    fn load_adapter(&self, path: &Path) -> Result<()> {
        require(path)?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        for (name, var) in &self.vars {
            let tensor = tensors
                .get(name)
                .ok_or_else(|| Error::Generator(format!("the checkpoint has no tensor {name}")))?;
            var.set(tensor)?;
        }
        Ok(())
    }

    /// The last hidden states, normed, of `ids` (batch, tokens): one row
    /// per token, (batch * tokens, hidden).
    fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let device = ids.device();
        let mut x = self.embeddings.index_select(&ids.flatten_all()?, 0)?;
        let mask: Vec<f32> = (0..tokens)
            .flat_map(|i| (0..tokens).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (tokens, tokens), device)?;
        let (cos, sin) = (self.cos.narrow(0, 0, tokens)?, self.sin.narrow(0, 0, tokens)?);
        let heads = |x: Tensor, count: usize| -> candle_core::Result<Tensor> {
            x.reshape((batch, tokens, count, self.head_dim))?.transpose(1, 2)?.contiguous()
        };
        for layer in &self.layers {
            let h = rms_norm(&x, &layer.attn_norm, self.eps)?;
            let q =
                candle_nn::rotary_emb::rope_i_slow(&heads(layer.q.forward(&h)?, self.heads)?, &cos, &sin)?;
            let k =
                candle_nn::rotary_emb::rope_i_slow(&heads(layer.k.forward(&h)?, self.kv_heads)?, &cos, &sin)?;
            let v = heads(layer.v.forward(&h)?, self.kv_heads)?;
            let (k, v) = (self.repeat_kv(k)?, self.repeat_kv(v)?);
            let scores =
                (q.matmul(&k.t()?)? * (1.0 / (self.head_dim as f64).sqrt()))?.broadcast_add(&mask)?;
            let attention = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?;
            let attention =
                attention.transpose(1, 2)?.reshape((batch * tokens, self.heads * self.head_dim))?;
            x = (x + layer.o.forward(&attention)?)?;
            let h = rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let gated = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&gated)?)?;
        }
        rms_norm(&x, &self.output_norm, self.eps)
    }

    /// Each key/value head shared by `heads / kv_heads` query heads, in
    /// candle's order (`candle_transformers::utils::repeat_kv`).
    fn repeat_kv(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let repeats = self.heads / self.kv_heads;
        if repeats == 1 {
            return Ok(x);
        }
        let (batch, kv_heads, tokens, dim) = x.dims4()?;
        Tensor::cat(&vec![&x; repeats], 2)?.reshape((batch, kv_heads * repeats, tokens, dim))
    }

    /// Logits of every position of `ids` (batch, tokens): (batch, tokens, vocab).
    #[cfg(test)]
    fn logits(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let logits = self.hidden(ids)?.matmul(&self.output.t()?)?;
        logits.reshape((batch, tokens, ()))
    }

    /// Mean cross-entropy of the batch's assistant tokens, and their count.
    /// Only the rows that predict one go through the output projection,
    /// the largest matrix of a small model.
    fn loss(&self, batch: &Batch) -> Result<(Tensor, usize)> {
        let rows = self.hidden(&batch.ids)?.index_select(&batch.positions, 0)?;
        let logits = frozen_linear(&rows, &self.output)?;
        Ok((candle_nn::loss::cross_entropy(&logits, &batch.targets)?, batch.count))
    }

    fn validate(
        &self,
        held_out: &[&TokenizedChat],
        batch_size: usize,
        check: &dyn Fn(ControlFlow<()>) -> Result<()>,
    ) -> Result<Option<LossValidation>> {
        if held_out.is_empty() {
            return Ok(None);
        }
        let (mut total, mut tokens) = (0f64, 0usize);
        for (from, to) in batch_bounds(held_out.len(), batch_size) {
            check(ControlFlow::Continue(()))?;
            let (loss, count) = self.loss(&Batch::new(&held_out[from..to])?)?;
            total += f64::from(loss.to_scalar::<f32>()?) * count as f64;
            tokens += count;
        }
        let loss = total / tokens as f64;
        Ok(Some(LossValidation { loss, perplexity: loss.exp(), tokens, conversations: held_out.len() }))
    }
}

/// `x * w / sqrt(mean(x²) + eps)` over the last dimension.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&scale)?.broadcast_mul(weight)
}

/// Conversations padded to one length (the padding is after each one, so
/// causal attention never reads it), and the positions whose next token is
/// the assistant's, with those tokens.
struct Batch {
    ids: Tensor,
    /// Rows of the flattened (batch * tokens) hidden states.
    positions: Tensor,
    targets: Tensor,
    count: usize,
}

impl Batch {
    fn new(chats: &[&TokenizedChat]) -> candle_core::Result<Self> {
        let device = Device::Cpu;
        let tokens = chats.iter().map(|chat| chat.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(chats.len() * tokens);
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (row, chat) in chats.iter().enumerate() {
            ids.extend_from_slice(&chat.ids);
            ids.resize((row + 1) * tokens, 0);
            for at in 1..chat.ids.len() {
                if chat.assistant[at] {
                    positions.push((row * tokens + at - 1) as u32);
                    targets.push(chat.ids[at]);
                }
            }
        }
        let count = targets.len();
        Ok(Self {
            ids: Tensor::from_vec(ids, (chats.len(), tokens), &device)?,
            positions: Tensor::from_vec(positions, count, &device)?,
            targets: Tensor::from_vec(targets, count, &device)?,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use candle_core::quantized::QTensor;
    use candle_transformers::models::quantized_llama;
    use ragd_core::ChatRole;

    use super::*;

    fn base_gguf() -> PathBuf {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/smollm2-135m-instruct/model.gguf");
        assert!(path.is_file(), "model files are missing: run scripts/fetch-models first");
        path
    }

    /// The base model cut to its first `layers` layers, every tensor f32,
    /// so candle's `quantized_llama` multiplies exactly as this model does.
    fn truncated_f32_copy(dir: &Path, layers: usize) -> PathBuf {
        let device = Device::Cpu;
        let mut file = File::open(base_gguf()).unwrap();
        let content = gguf_file::Content::read(&mut file).unwrap();
        let mut metadata = content.metadata.clone();
        metadata.insert("llama.block_count".to_owned(), gguf_file::Value::U32(layers as u32));
        let kept = |name: &str| {
            !name.starts_with("blk.")
                || name.split('.').nth(1).and_then(|n| n.parse::<usize>().ok()) < Some(layers)
        };
        let tensors: Vec<(String, QTensor)> = content
            .tensor_infos
            .keys()
            .filter(|name| kept(name))
            .map(|name| {
                let values = content.tensor(&mut file, name, &device).unwrap().dequantize(&device).unwrap();
                (name.clone(), QTensor::quantize(&values, candle_core::quantized::GgmlDType::F32).unwrap())
            })
            .collect();
        let metadata: Vec<(&str, &gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let path = dir.join("truncated.gguf");
        let mut out = File::create(&path).unwrap();
        gguf_file::write(&mut out, &metadata, &tensors).unwrap();
        path
    }

    #[test]
    fn the_forward_pass_matches_candles_llama() {
        let dir = tempfile::tempdir().unwrap();
        let path = truncated_f32_copy(dir.path(), 4);
        let model = LoraModel::load(&path, 4, 8.0, &[LoraTarget::Q, LoraTarget::V], 1).expect("load");
        let chat = model
            .tokenizer
            .encode(&[
                ChatMessage::new(ChatRole::User, "What is the capital of France?"),
                ChatMessage::new(ChatRole::Assistant, "Paris"),
            ])
            .unwrap();
        let ids = Tensor::new(chat.ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let ours = model.logits(&ids).unwrap().squeeze(0).unwrap();
        let last = ours.get(chat.ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let mut reader = Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut reader).unwrap();
        let mut llama = quantized_llama::ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).unwrap();
        let theirs = llama.forward(&ids, 0).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();

        let largest = theirs.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = last.iter().zip(&theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("largest logit difference {worst}, largest logit {largest}");
        assert!(worst < 1e-3 * largest.max(1.0), "largest difference {worst}, largest logit {largest}");
        let argmax = |xs: &[f32]| xs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        assert_eq!(argmax(&last), argmax(&theirs));
    }

    fn conversations() -> Vec<Vec<ChatMessage>> {
        let facts = [
            ("Zorblat", "blue"),
            ("Quintex", "green"),
            ("Mavrin", "red"),
            ("Tolsk", "yellow"),
            ("Brevik", "purple"),
            ("Ondra", "orange"),
        ];
        facts
            .iter()
            .map(|(name, colour)| {
                vec![
                    ChatMessage::new(ChatRole::User, format!("What colour is the {name} flag?")),
                    ChatMessage::new(ChatRole::Assistant, format!("The {name} flag is {colour}.")),
                ]
            })
            .collect()
    }

    #[test]
    fn training_lowers_the_loss_resumes_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = truncated_f32_copy(dir.path(), 2);
        let config = LoraConfig {
            base_gguf: gguf.clone(),
            output_dir: dir.path().join("adapter"),
            checkpoint_dir: dir.path().join("checkpoints"),
            rank: 4,
            alpha: 8.0,
            targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
            epochs: 3,
            batch_size: 2,
            learning_rate: 1e-2,
            max_seq_len: 64,
            seed: 3,
            validation_fraction: 0.0,
            resume: None,
        };
        let never = AtomicBool::new(false);
        let mut losses = Vec::new();
        let mut saved = None;
        let outcome = finetune_lora(&config, &conversations(), &never, &mut |event| {
            match event {
                Event::Step { loss, .. } => losses.push(loss),
                Event::LossEpoch { checkpoint, .. } => saved = checkpoint,
                _ => {}
            }
            ControlFlow::Continue(())
        })
        .expect("training");
        assert_eq!((outcome.train_conversations, outcome.steps, outcome.skipped), (6, 9, 0));
        // 2 layers, 3 targets: A and B each.
        assert_eq!(outcome.parameters, 2 * (4 * (576 + 576) + 4 * (576 + 192) + 4 * (1536 + 576)));
        let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len() as f32;
        assert!(mean(&losses[6..]) < mean(&losses[..3]) * 0.8, "loss did not go down: {losses:?}");

        let resumed = LoraConfig { resume: saved, epochs: 5, validation_fraction: 0.34, ..config.clone() };
        let mut steps = Vec::new();
        let mut validations = Vec::new();
        finetune_lora(&resumed, &conversations(), &never, &mut |event| {
            match event {
                Event::Step { step, .. } => steps.push(step),
                Event::LossEpoch { validation, .. } => validations.push(validation),
                Event::Epoch { .. } | Event::Log(_) => {}
            }
            ControlFlow::Continue(())
        })
        .expect("resumed");
        // 4 conversations left for training, 2 steps per epoch, after epoch 3.
        assert_eq!(steps, [7, 8, 9, 10]);
        assert_eq!(validations.len(), 2);
        let validation = validations[1].expect("held out");
        assert_eq!(validation.conversations, 2);
        assert!((validation.perplexity - validation.loss.exp()).abs() < 1e-9);

        // The merged model's weights are the base plus the scaled update.
        let adapter = config.output_dir.join(ADAPTER_FILE);
        let merged = dir.path().join("merged.gguf");
        merge_lora(&gguf, &adapter, 8.0, &merged, QuantType::F32, &mut |_, _, _| ControlFlow::Continue(()))
            .expect("merge");
        let device = Device::Cpu;
        let read = |path: &Path, name: &str| {
            let mut file = File::open(path).unwrap();
            let content = gguf_file::Content::read(&mut file).unwrap();
            content.tensor(&mut file, name, &device).unwrap().dequantize(&device).unwrap()
        };
        let tensors = candle_core::safetensors::load(&adapter, &device).unwrap();
        let name = "blk.1.ffn_down.weight";
        let (a, b) = (&tensors[&format!("{name}.lora_a")], &tensors[&format!("{name}.lora_b")]);
        let expected = (read(&gguf, name) + (b.matmul(a).unwrap() * 2.0).unwrap()).unwrap();
        let difference = (read(&merged, name) - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert!(difference.to_scalar::<f32>().unwrap() < 1e-6);
        assert!(b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "B was trained");
        let untouched = "blk.0.ffn_up.weight";
        let same =
            (read(&merged, untouched) - read(&gguf, untouched)).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);

        let stop = AtomicBool::new(true);
        let stopped = finetune_lora(&config, &conversations(), &stop, &mut |_| ControlFlow::Continue(()));
        assert!(matches!(stopped, Err(Error::Stopped)), "{stopped:?}");
    }
}
