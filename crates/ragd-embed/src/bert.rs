//! A BERT encoder (MiniLM is one) whose every operation has a backward
//! pass. candle-transformers' `BertModel` is built for inference: its layer
//! norms use a fused kernel without gradients, which would stop training at
//! the last layer. It lives here rather than in `ragd-train` because the
//! cross-encoder reranker serves queries with the same model it is trained
//! as. Tensor names follow the Hugging Face checkpoints, so the same files
//! load here, in candle-transformers and in sentence-transformers.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, linear, Embedding, Init, Linear, VarBuilder};
use serde::Deserialize;

/// The Linear weights of a model stored quantized (Q8_0), by tensor name;
/// empty for a model in f32. Such a layer multiplies with candle's
/// `QMatMul` and has no backward pass: quantized models only serve.
#[derive(Clone, Default)]
pub struct QuantizedLinears(pub(crate) Arc<HashMap<String, Arc<QTensor>>>);

/// A Linear layer in f32, or with quantized weights and an f32 bias.
pub(crate) enum Dense {
    Float(Linear),
    Quantized { weight: QMatMul, bias: Tensor },
}

impl Dense {
    /// The layer under `vb`'s prefix: quantized when `quantized` holds its
    /// weight, else from `vb`.
    pub(crate) fn load(
        inputs: usize,
        outputs: usize,
        vb: VarBuilder,
        quantized: &QuantizedLinears,
    ) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        let Some(weight) = quantized.0.get(&name) else {
            return Ok(Self::Float(linear(inputs, outputs, vb)?));
        };
        if weight.shape().dims() != [outputs, inputs] {
            candle_core::bail!("{name} is {:?}, expected ({outputs}, {inputs})", weight.shape());
        }
        Ok(Self::Quantized { weight: QMatMul::from_arc(weight.clone())?, bias: vb.get(outputs, "bias")? })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(linear) => linear.forward(xs),
            // candle's quantized matmul reads its input as laid out in memory.
            Self::Quantized { weight, bias } => weight.forward(&xs.contiguous()?)?.broadcast_add(bias),
        }
    }
}

/// The fields of a Hugging Face `config.json` this encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let centred = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
    heads: usize,
    head_size: usize,
}

impl Layer {
    fn load(config: &BertConfig, vb: VarBuilder, q: &QuantizedLinears) -> Result<Self> {
        let hidden = config.hidden_size;
        let attention = vb.pp("attention");
        Ok(Self {
            query: Dense::load(hidden, hidden, attention.pp("self").pp("query"), q)?,
            key: Dense::load(hidden, hidden, attention.pp("self").pp("key"), q)?,
            value: Dense::load(hidden, hidden, attention.pp("self").pp("value"), q)?,
            attention_out: Dense::load(hidden, hidden, attention.pp("output").pp("dense"), q)?,
            attention_norm: LayerNorm::load(
                hidden,
                config.layer_norm_eps,
                attention.pp("output").pp("LayerNorm"),
            )?,
            intermediate: Dense::load(
                hidden,
                config.intermediate_size,
                vb.pp("intermediate").pp("dense"),
                q,
            )?,
            output: Dense::load(config.intermediate_size, hidden, vb.pp("output").pp("dense"), q)?,
            output_norm: LayerNorm::load(hidden, config.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: config.num_attention_heads,
            head_size: hidden / config.num_attention_heads,
        })
    }

    /// `mask` is additive, shaped (batch, 1, 1, tokens).
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens, hidden) = xs.dims3()?;
        let heads = |layer: &Dense| -> Result<Tensor> {
            layer
                .forward(xs)?
                .reshape((batch, tokens, self.heads, self.head_size))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (query, key, value) = (heads(&self.query)?, heads(&self.key)?, heads(&self.value)?);
        let scores = (query.matmul(&key.t()?)? / (self.head_size as f64).sqrt())?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = probs.matmul(&value)?.transpose(1, 2)?.reshape((batch, tokens, hidden))?;
        let attended = self.attention_norm.forward(&(self.attention_out.forward(&context)? + xs)?)?;
        let inner = self.intermediate.forward(&attended)?.gelu_erf()?;
        self.output_norm.forward(&(self.output.forward(&inner)? + attended)?)
    }
}

pub struct Bert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    pub fn load(config: &BertConfig, vb: VarBuilder) -> Result<Self> {
        Self::load_quantized(config, vb, &QuantizedLinears::default())
    }

    /// The model with the Linear weights `quantized` holds taken from it
    /// rather than from `vb`.
    pub fn load_quantized(config: &BertConfig, vb: VarBuilder, quantized: &QuantizedLinears) -> Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!(
                "unsupported hidden_act {:?}: only \"gelu\" is implemented",
                config.hidden_act
            );
        }
        if config.hidden_size.checked_rem(config.num_attention_heads) != Some(0) {
            candle_core::bail!("hidden_size is not a multiple of num_attention_heads");
        }
        let emb = vb.pp("embeddings");
        Ok(Self {
            word_embeddings: embedding(config.vocab_size, config.hidden_size, emb.pp("word_embeddings"))?,
            position_embeddings: embedding(
                config.max_position_embeddings,
                config.hidden_size,
                emb.pp("position_embeddings"),
            )?,
            token_type_embeddings: embedding(
                config.type_vocab_size,
                config.hidden_size,
                emb.pp("token_type_embeddings"),
            )?,
            embeddings_norm: LayerNorm::load(config.hidden_size, config.layer_norm_eps, emb.pp("LayerNorm"))?,
            layers: (0..config.num_hidden_layers)
                .map(|n| Layer::load(config, vb.pp("encoder").pp("layer").pp(n), quantized))
                .collect::<Result<_>>()?,
        })
    }

    /// Token states (batch, tokens, hidden) of `ids` (batch, tokens, u32);
    /// `mask` (batch, tokens, u32) is 1 on real tokens and 0 on padding.
    /// `token_types` (same shape) tells the segments of a text pair apart
    /// (0 for the first, 1 for the second); a single text is all 0.
    pub fn forward(&self, ids: &Tensor, token_types: Option<&Tensor>, mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let positions = Tensor::arange(0u32, tokens as u32, ids.device())?;
        let token_types = match token_types {
            Some(types) => types.clone(),
            None => ids.zeros_like()?,
        };
        let mut xs = self
            .word_embeddings
            .forward(ids)?
            .add(&self.token_type_embeddings.forward(&token_types)?)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        xs = self.embeddings_norm.forward(&xs)?;
        // Padding gets a large negative score before the softmax; finite, so
        // that no row is all -inf.
        let additive = ((mask.to_dtype(DType::F32)? - 1.0)? * 10_000.0)?.reshape((batch, 1, 1, tokens))?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &additive)?;
        }
        Ok(xs)
    }
}
