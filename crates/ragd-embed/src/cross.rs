//! The cross-encoder reranker: BERT reads a query and a passage together
//! (`[CLS] query [SEP] passage [SEP]`, token types 0 then 1), the pooler
//! (tanh of a dense layer over `[CLS]`) and a linear head with one output
//! give a relevance logit. Tensor names are those of Hugging Face's
//! `BertForSequenceClassification` (`bert.*`, `classifier.*`), so a model
//! trained by ragd loads in other tools, and theirs load here.
//!
//! Trained rerankers are registered by the `finetune-reranker` job as
//! `<data_dir>/models/<name>/` with `manifest.json` of kind `reranker`;
//! [`crate::TrainedRerankers`] loads them by name.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{EncodeInput, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::bert::{Bert, BertConfig, Dense, QuantizedLinears};
use crate::error::{Error, Result};
use crate::quantize::{load_quantized_weights, QUANTIZED_WEIGHTS_FILE};

/// The files of a model directory, base or trained.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// What the training job writes beside the weights: kind, base, settings.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The `kind` in the manifest of a trained reranker.
pub const RERANKER_KIND: &str = "reranker";
/// Where the encoder's tensors sit in a sequence classifier's checkpoint.
pub const ENCODER_PREFIX: &str = "bert";
/// The head's tensor names: `classifier.weight` (1, hidden) and
/// `classifier.bias` (1).
pub const CLASSIFIER_PREFIX: &str = "classifier";

/// Pairs scored per forward pass at inference; bounds memory for long
/// candidate lists.
const SCORE_BATCH: usize = 32;

/// BERT, its pooler and a one-output classification head.
pub struct CrossEncoderModel {
    bert: Bert,
    pooler: Dense,
    classifier: Dense,
}

impl CrossEncoderModel {
    pub fn load(config: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::load_quantized(config, vb, &QuantizedLinears::default())
    }

    /// The model with the Linear weights `quantized` holds taken from it.
    pub fn load_quantized(
        config: &BertConfig,
        vb: VarBuilder,
        quantized: &QuantizedLinears,
    ) -> candle_core::Result<Self> {
        let encoder = vb.pp(ENCODER_PREFIX);
        let hidden = config.hidden_size;
        Ok(Self {
            bert: Bert::load_quantized(config, encoder.clone(), quantized)?,
            pooler: Dense::load(hidden, hidden, encoder.pp("pooler").pp("dense"), quantized)?,
            classifier: Dense::load(hidden, 1, vb.pp(CLASSIFIER_PREFIX), quantized)?,
        })
    }

    /// One logit per pair, shaped (batch,); differentiable.
    pub fn forward(&self, ids: &Tensor, token_types: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let states = self.bert.forward(ids, Some(token_types), mask)?;
        let first = states.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        self.classifier.forward(&pooled)?.squeeze(1)
    }
}

/// A loaded cross-encoder with its tokenizer.
pub struct CrossEncoder {
    name: String,
    model: CrossEncoderModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for CrossEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossEncoder").field("name", &self.name).finish_non_exhaustive()
    }
}

impl CrossEncoder {
    /// Loads a model directory (`model.safetensors`, or `model.gguf` for
    /// a quantized one, `config.json`, `tokenizer.json`); pairs are cut to
    /// `max_seq_len` tokens, the longer text first.
    pub fn load(name: &str, dir: &Path, max_seq_len: usize) -> Result<Self> {
        let (vb, quantized) = model_weights(name, dir)?;
        Self::build(name, dir, vb, &quantized, max_seq_len)
    }

    /// The model of `dir`'s config and tokenizer over the weights `vb`
    /// provides; training passes its variables here.
    pub fn with_weights(name: &str, dir: &Path, vb: VarBuilder, max_seq_len: usize) -> Result<Self> {
        Self::build(name, dir, vb, &QuantizedLinears::default(), max_seq_len)
    }

    fn build(
        name: &str,
        dir: &Path,
        vb: VarBuilder,
        quantized: &QuantizedLinears,
        max_seq_len: usize,
    ) -> Result<Self> {
        let config = read_bert_config(name, dir)?;
        let device = vb.device().clone();
        let model = CrossEncoderModel::load_quantized(&config, vb, quantized)?;
        let tokenizer = load_tokenizer(name, dir, max_seq_len.min(config.max_position_embeddings))?;
        Ok(Self { name: name.to_owned(), model, tokenizer, device })
    }

    /// One logit per (query, passage) pair, shaped (pairs,); differentiable.
    pub fn logits(&self, pairs: &[(&str, &str)]) -> Result<Tensor> {
        let inputs: Vec<EncodeInput> = pairs.iter().map(|&(q, p)| (q, p).into()).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::Runtime(format!("tokenizer: {e}")))?;
        let tokens = encodings.first().map_or(0, |e| e.get_ids().len());
        let column = |part: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor> {
            let values: Vec<u32> = encodings.iter().flat_map(|e| part(e).iter().copied()).collect();
            Ok(Tensor::from_vec(values, (pairs.len(), tokens), &self.device)?)
        };
        let ids = column(tokenizers::Encoding::get_ids)?;
        let types = column(tokenizers::Encoding::get_type_ids)?;
        let mask = column(tokenizers::Encoding::get_attention_mask)?;
        Ok(self.model.forward(&ids, &types, &mask)?)
    }

    /// The logit of each pair, scored in batches.
    pub fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
        let mut scores = Vec::with_capacity(pairs.len());
        for part in pairs.chunks(SCORE_BATCH) {
            scores.extend(self.logits(part)?.detach().to_vec1::<f32>()?);
        }
        Ok(scores)
    }
}

impl ragd_core::Reranker for CrossEncoder {
    fn model(&self) -> &str {
        &self.name
    }

    fn score(&self, query: &str, passages: &[&str]) -> ragd_core::Result<Vec<f32>> {
        let pairs: Vec<(&str, &str)> = passages.iter().map(|passage| (query, *passage)).collect();
        Ok(self.score_pairs(&pairs)?)
    }
}

/// A BERT model directory's weights on the CPU: the Q8_0 Linear weights of
/// `model.gguf` (with the rest in f32) when it has one, else
/// `model.safetensors`.
pub(crate) fn model_weights(name: &str, dir: &Path) -> Result<(VarBuilder<'static>, QuantizedLinears)> {
    let device = Device::Cpu;
    let quantized_weights = dir.join(QUANTIZED_WEIGHTS_FILE);
    if quantized_weights.is_file() {
        return load_quantized_weights(&quantized_weights, &device);
    }
    let weights = require(name, &dir.join(WEIGHTS_FILE))?;
    // SAFETY: the file is mapped read-only and nothing in ragd writes a
    // model file in place (trained models are written beside and renamed).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
    Ok((vb, QuantizedLinears::default()))
}

pub(crate) fn require(name: &str, path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(Error::ModelMissing { name: name.to_owned(), path: path.to_owned() })
    }
}

/// The BERT fields of a model directory's `config.json`.
pub fn read_bert_config(name: &str, dir: &Path) -> Result<BertConfig> {
    let path = require(name, &dir.join(CONFIG_FILE))?;
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("model {name:?}: config.json is not a BERT config: {e}")))
}

/// The directory's tokenizer, truncating to `max_seq_len` and padding each
/// batch to its longest text.
pub fn load_tokenizer(name: &str, dir: &Path, max_seq_len: usize) -> Result<Tokenizer> {
    let path = require(name, &dir.join(TOKENIZER_FILE))?;
    let invalid = |e: tokenizers::Error| Error::Config(format!("model {name:?}: tokenizer.json: {e}"));
    let mut tokenizer = Tokenizer::from_file(&path).map_err(invalid)?;
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: max_seq_len, ..Default::default() }))
        .map_err(invalid)?;
    tokenizer
        .with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
    Ok(tokenizer)
}

