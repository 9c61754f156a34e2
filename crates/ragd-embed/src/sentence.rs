//! Sentence embeddings from a BERT encoder on candle: mean pooling over the
//! tokens, then L2 normalisation (sentence-transformers' MiniLM recipe).
//! The same model serves search (as an [`ragd_core::Embedder`]) and is what
//! `ragd-train` fine-tunes, so what is trained is what serves.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use crate::batches::{longest_first, restore};
use crate::bert::{Bert, QuantizedLinears};
use crate::cross::{load_tokenizer, model_weights, read_bert_config};
use crate::error::{Error, Result};

/// Texts per forward pass at inference; bounds the attention's memory.
const EMBED_BATCH: usize = 16;

/// A text encoder producing unit-length sentence vectors.
pub struct SentenceEncoder {
    name: String,
    bert: Bert,
    tokenizer: Tokenizer,
    device: Device,
    dimensions: usize,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder").field("name", &self.name).finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Loads a model directory (`model.safetensors`, or `model.gguf` for a
    /// quantized one, `config.json`, `tokenizer.json`) for inference; texts
    /// are cut at `max_seq_len` tokens.
    pub fn load(name: &str, dir: &Path, max_seq_len: usize) -> Result<Self> {
        let (vb, quantized) = model_weights(name, dir)?;
        Self::build(name, dir, vb, &quantized, max_seq_len)
    }

    /// The model of `dir`'s config and tokenizer over the weights `vb`
    /// provides; training passes its variables here.
    pub fn with_weights(name: &str, dir: &Path, vb: VarBuilder, max_seq_len: usize) -> Result<Self> {
        Self::build(name, dir, vb, &QuantizedLinears::default(), max_seq_len)
    }

    fn build(name: &str, dir: &Path, vb: VarBuilder, quantized: &QuantizedLinears, max_seq_len: usize) -> Result<Self> {
        let config = read_bert_config(name, dir)?;
        let device = vb.device().clone();
        let bert = Bert::load_quantized(&config, vb, quantized)?;
        let tokenizer = load_tokenizer(name, dir, max_seq_len.min(config.max_position_embeddings))?;
        Ok(Self { name: name.to_owned(), bert, tokenizer, device, dimensions: config.hidden_size })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One unit vector per text, in batches of texts of similar length.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let order = longest_first(texts);
        let mut vectors = Vec::with_capacity(texts.len());
        for part in order.chunks(EMBED_BATCH) {
            let batch: Vec<&str> = part.iter().map(|&i| texts[i]).collect();
            vectors.extend(self.forward(&batch)?.detach().to_vec2::<f32>()?);
        }
        Ok(restore(&order, vectors))
    }

    /// (texts, dimensions), each row of unit length; differentiable.
    pub fn forward(&self, texts: &[&str]) -> Result<Tensor> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Runtime(format!("tokenizer: {e}")))?;
        let tokens = encodings.first().map_or(0, |e| e.get_ids().len());
        let ids: Vec<u32> = encodings.iter().flat_map(|e| e.get_ids().iter().copied()).collect();
        let mask: Vec<u32> = encodings.iter().flat_map(|e| e.get_attention_mask().iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (texts.len(), tokens), &self.device)?;
        let mask = Tensor::from_vec(mask, (texts.len(), tokens), &self.device)?;
        let states = self.bert.forward(&ids, None, &mask)?;
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = states.broadcast_mul(&weights)?.sum(1)?;
        let pooled = summed.broadcast_div(&weights.sum(1)?.clamp(1.0, f64::MAX)?)?;
        let norms = (pooled.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
        Ok(pooled.broadcast_div(&norms)?)
    }
}

impl ragd_core::Embedder for SentenceEncoder {
    fn model(&self) -> &str {
        &self.name
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed_documents(&self, texts: &[String]) -> ragd_core::Result<Vec<Vec<f32>>> {
        let started = Instant::now();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = self.embed(&texts)?;
        tracing::debug!(model = %self.name, count = texts.len(), elapsed_ms = started.elapsed().as_millis() as u64, "embedded documents");
        Ok(vectors)
    }

    fn embed_query(&self, text: &str) -> ragd_core::Result<Vec<f32>> {
        self.embed(&[text])?
            .pop()
            .ok_or_else(|| ragd_core::Error::new(ragd_core::ErrorKind::Internal, "the embedder returned no vector"))
    }
}
