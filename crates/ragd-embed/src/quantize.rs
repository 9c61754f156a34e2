//! BERT models (embedders and cross-encoders) with Q8_0 Linear weights.
//!
//! The weights go in a GGUF file, `model.gguf`, under their Hugging Face
//! names, beside the source's `config.json` and tokenizer: GGUF is the
//! container candle reads quantized tensors from, and one file keeps the
//! model whole. The Linear weights (attention, feed-forward, pooler, head)
//! are Q8_0; embeddings, layer norms and biases stay f32, since they are
//! small or looked up rather than multiplied. It is not a llama.cpp BERT
//! file (those rename every tensor); only ragd reads it.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::bert::QuantizedLinears;
use crate::cross::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use crate::error::{Error, Result};

/// The weights of a quantized BERT model directory.
pub const QUANTIZED_WEIGHTS_FILE: &str = "model.gguf";

/// Copied along when the source has it, for tools that read the vocabulary.
const VOCAB_FILE: &str = "vocab.txt";

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct BertQuantizeSummary {
    pub tensors: usize,
    /// Tensors written as Q8_0.
    pub quantized: usize,
    /// Size of the weights file.
    pub bytes: u64,
}

/// A Linear weight: (outputs, inputs) rows that fill Q8_0's blocks. Word,
/// position and token-type embeddings are looked up, not multiplied.
fn quantizes(name: &str, dims: &[usize]) -> bool {
    dims.len() == 2
        && name.ends_with(".weight")
        && !name.contains("embeddings")
        && dims[1] % GgmlDType::Q8_0.block_size() == 0
}

/// Writes the model of `source` (`model.safetensors`, config, tokenizer)
/// into `output` (an existing directory) with Q8_0 Linear weights.
/// `progress` hears of each tensor (done, total, name) before it is
/// converted and may stop the conversion ([`Error::Stopped`]).
pub fn quantize_bert(
    source: &Path,
    output: &Path,
    progress: &mut dyn FnMut(usize, usize, &str) -> ControlFlow<()>,
) -> Result<BertQuantizeSummary> {
    let weights_path = source.join(WEIGHTS_FILE);
    let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let total = names.len();
    let mut tensors = Vec::with_capacity(total);
    let mut quantized = 0;
    for (done, name) in names.into_iter().enumerate() {
        if progress(done, total, name).is_break() {
            return Err(Error::Stopped);
        }
        let tensor = &weights[name];
        // Integer buffers (BERT's `position_ids`) are not weights.
        if !tensor.dtype().is_float() {
            continue;
        }
        let dtype = if quantizes(name, tensor.dims()) { GgmlDType::Q8_0 } else { GgmlDType::F32 };
        quantized += usize::from(dtype == GgmlDType::Q8_0);
        tensors.push((name.as_str(), QTensor::quantize(&tensor.to_dtype(DType::F32)?, dtype)?));
    }
    let metadata = [
        ("general.file_type", gguf_file::Value::U32(7)),
        ("ragd.tensor_names", gguf_file::Value::String("huggingface".to_owned())),
    ];
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, tensor)| (*name, tensor)).collect();
    let path = output.join(QUANTIZED_WEIGHTS_FILE);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
    gguf_file::write(&mut file, &metadata, &tensors)?;
    let file = file.into_inner().map_err(|e| Error::Io { path: path.clone(), source: e.into_error() })?;
    file.sync_all().map_err(io(&path))?;
    let bytes = file.metadata().map_err(io(&path))?.len();
    for extra in [CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE] {
        let from = source.join(extra);
        if from.is_file() || extra != VOCAB_FILE {
            std::fs::copy(&from, output.join(extra)).map_err(io(&from))?;
        }
    }
    Ok(BertQuantizeSummary { tensors: tensors.len(), quantized, bytes })
}

/// Reads a quantized model's `model.gguf`: its f32 tensors as a
/// `VarBuilder`, its quantized ones apart, for [`crate::bert::Bert::load_quantized`].
pub fn load_quantized_weights(
    path: &Path,
    device: &Device,
) -> Result<(VarBuilder<'static>, QuantizedLinears)> {
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut plain = HashMap::new();
    let mut quantized = HashMap::new();
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(&mut file, name, device)?;
        if tensor.dtype() == GgmlDType::F32 {
            plain.insert(name.clone(), tensor.dequantize(device)?);
        } else {
            quantized.insert(name.clone(), Arc::new(tensor));
        }
    }
    Ok((VarBuilder::from_tensors(plain, DType::F32, device), QuantizedLinears(Arc::new(quantized))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_linear_weights_are_quantized() {
        assert!(quantizes("encoder.layer.0.attention.self.query.weight", &[384, 384]));
        assert!(quantizes("classifier.weight", &[1, 384]));
        assert!(!quantizes("embeddings.word_embeddings.weight", &[30522, 384]));
        assert!(!quantizes("encoder.layer.0.attention.self.query.bias", &[384]));
        assert!(!quantizes("encoder.layer.0.output.LayerNorm.weight", &[384]));
        assert!(!quantizes("odd.weight", &[4, 20]));
    }
}
