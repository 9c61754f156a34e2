//! Re-quantizing a GGUF generator: every tensor is dequantized to f32 and
//! quantized again to one target type, and the file is written again with
//! all of its metadata (architecture, tokenizer, chat template), so the
//! result loads wherever the source did.
//!
//! Which type each tensor gets follows llama.cpp's rules: 1-D tensors (norms)
//! stay f32, since they are tiny and precision-critical; under Q4_K the
//! output projection gets more bits (see [`QuantType::for_tensor`]); a
//! matrix whose rows do not fill the target's blocks takes a fallback type. For `q4_k` (blocks
//! of 256) that fallback is llama.cpp's, Q5_0 (blocks of 32). SmolLM2's
//! hidden size (576) is not a multiple of 256, so most of its matrices take
//! it. Q4_0 would keep the file smaller, but measured 18.8% above f32's
//! perplexity against Q5_0's 9.4% (BENCHMARKS.md). candle has no SIMD
//! kernel for Q5_0, so the local generator holds those matrices as Q8_0 once
//! loaded: the file shrinks, the served model less.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// The types a generator can be quantized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    Q8_0,
    Q4K,
    F16,
    F32,
}

impl QuantType {
    pub const ALL: [QuantType; 4] = [Self::Q8_0, Self::Q4K, Self::F16, Self::F32];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4K => GgmlDType::Q4K,
            Self::F16 => GgmlDType::F16,
            Self::F32 => GgmlDType::F32,
        }
    }

    /// llama.cpp's `llama_ftype` for a file mostly of this type, the value of
    /// `general.file_type` (Q4_K alone is its "Q4_K_S").
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4K => 14,
        }
    }

    /// The type a tensor of `dims` (candle's order: rows last) is written
    /// as; `output` tells the output projection (`output.weight`, or the
    /// token embeddings of a model that reuses them as such), which under
    /// Q4_K gets Q6_K, or Q8_0 when its rows do not fill Q6_K's blocks, as
    /// llama.cpp does: every logit goes through it.
    pub fn for_tensor(self, dims: &[usize], output: bool) -> GgmlDType {
        let row = dims.last().copied().unwrap_or(0);
        if dims.len() < 2 {
            return GgmlDType::F32;
        }
        let fits = |dtype: GgmlDType| row % dtype.block_size() == 0;
        let candidates: &[GgmlDType] = match self {
            Self::Q4K if output => &[GgmlDType::Q6K, GgmlDType::Q8_0],
            Self::Q4K => &[GgmlDType::Q4K, GgmlDType::Q5_0],
            other => &[other.ggml()],
        };
        candidates.iter().copied().find(|dtype| fits(*dtype)).unwrap_or(GgmlDType::F32)
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct QuantizeSummary {
    pub tensors: usize,
    /// Tensors written in the target type; the others are 1-D, the output
    /// projection, or took a fallback.
    pub in_target_type: usize,
    pub architecture: String,
    pub bytes: u64,
}

/// Writes `source` re-quantized to `target` at `output`. `progress` hears of
/// each tensor (done, total, name) before it is converted and may stop the
/// conversion ([`Error::Stopped`]); nothing is left at `output` then.
pub fn quantize_gguf(
    source: &Path,
    output: &Path,
    target: QuantType,
    progress: &mut dyn FnMut(usize, usize, &str) -> ControlFlow<()>,
) -> Result<QuantizeSummary> {
    rewrite_gguf(source, output, target, &HashMap::new(), progress)
}

/// [`quantize_gguf`], with the tensors named in `replacements` taken from
/// there (values of the source's shape, any float type) instead of the
/// source: how a LoRA adapter is merged into its base model.
pub fn rewrite_gguf(
    source: &Path,
    output: &Path,
    target: QuantType,
    replacements: &HashMap<String, Tensor>,
    progress: &mut dyn FnMut(usize, usize, &str) -> ControlFlow<()>,
) -> Result<QuantizeSummary> {
    let written = convert(source, output, target, replacements, progress);
    if written.is_err() {
        let _ = std::fs::remove_file(output);
    }
    written
}

fn convert(
    source: &Path,
    output: &Path,
    target: QuantType,
    replacements: &HashMap<String, Tensor>,
    progress: &mut dyn FnMut(usize, usize, &str) -> ControlFlow<()>,
) -> Result<QuantizeSummary> {
    let unreadable = |e: candle_core::Error| Error::Quantize(format!("{}: {e}", source.display()));
    let mut file =
        File::open(source).map_err(|e| Error::Quantize(format!("cannot open {}: {e}", source.display())))?;
    let content = gguf_file::Content::read(&mut file).map_err(unreadable)?;
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| Error::Quantize(format!("{} has no general.architecture", source.display())))?;

    // Tensors in their order in the source file, so the layout stays alike.
    let mut names: Vec<(&String, u64)> =
        content.tensor_infos.iter().map(|(name, info)| (name, info.offset)).collect();
    names.sort_by_key(|(_, offset)| *offset);
    let projection = ["output.weight", "token_embd.weight"]
        .into_iter()
        .find(|name| content.tensor_infos.contains_key(*name));
    if let Some(unknown) = replacements.keys().find(|name| !content.tensor_infos.contains_key(*name)) {
        return Err(Error::Quantize(format!("{} has no tensor {unknown}", source.display())));
    }
    let device = Device::Cpu;
    let total = names.len();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(total);
    let mut in_target_type = 0;
    for (done, (name, _)) in names.iter().enumerate() {
        if progress(done, total, name).is_break() {
            return Err(Error::Stopped);
        }
        let tensor = content.tensor(&mut file, name, &device).map_err(unreadable)?;
        let dtype = target.for_tensor(tensor.shape().dims(), projection == Some(name.as_str()));
        in_target_type += usize::from(dtype == target.ggml());
        let values = match replacements.get(*name) {
            Some(values) if values.dims() != tensor.shape().dims() => {
                return Err(Error::Quantize(format!(
                    "tensor {name}: the replacement is {:?}, the source {:?}",
                    values.dims(),
                    tensor.shape().dims()
                )));
            }
            Some(values) => values.to_dtype(candle_core::DType::F32),
            None => tensor.dequantize(&device),
        };
        let converted = values
            .and_then(|values| QTensor::quantize(&values, dtype))
            .map_err(|e| Error::Quantize(format!("tensor {name}: {e}")))?;
        tensors.push((name.as_str(), converted));
    }

    let mut metadata = content.metadata.clone();
    metadata.insert("general.file_type".to_owned(), gguf_file::Value::U32(target.file_type()));
    // candle writes tensor data at candle's fixed alignment.
    if metadata.contains_key("general.alignment") {
        metadata.insert("general.alignment".to_owned(), gguf_file::Value::U32(32));
    }
    let mut metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    metadata.sort_by_key(|(key, _)| *key);
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, tensor)| (*name, tensor)).collect();

    let cannot_write = |e: std::io::Error| Error::Quantize(format!("writing {}: {e}", output.display()));
    let mut out = BufWriter::new(File::create(output).map_err(cannot_write)?);
    gguf_file::write(&mut out, &metadata, &tensors)
        .map_err(|e| Error::Quantize(format!("writing {}: {e}", output.display())))?;
    let file = out.into_inner().map_err(|e| cannot_write(e.into_error()))?;
    file.sync_all().map_err(cannot_write)?;
    let bytes = file.metadata().map_err(cannot_write)?.len();
    Ok(QuantizeSummary { tensors: total, in_target_type, architecture, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_stay_f32_and_short_rows_take_a_fallback() {
        assert_eq!(QuantType::Q8_0.for_tensor(&[576], false), GgmlDType::F32);
        assert_eq!(QuantType::Q8_0.for_tensor(&[192, 576], false), GgmlDType::Q8_0);
        assert_eq!(QuantType::Q8_0.for_tensor(&[49152, 576], true), GgmlDType::Q8_0);
        assert_eq!(QuantType::Q8_0.for_tensor(&[4, 20], false), GgmlDType::F32);
        assert_eq!(QuantType::Q4K.for_tensor(&[576, 1536], false), GgmlDType::Q4K);
        assert_eq!(QuantType::Q4K.for_tensor(&[1536, 576], false), GgmlDType::Q5_0);
        assert_eq!(QuantType::Q4K.for_tensor(&[49152, 576], true), GgmlDType::Q8_0);
        assert_eq!(QuantType::Q4K.for_tensor(&[49152, 512], true), GgmlDType::Q6K);
        assert_eq!(QuantType::F16.for_tensor(&[3, 5], false), GgmlDType::F16);
        assert_eq!(QuantType::F16.for_tensor(&[5], false), GgmlDType::F32);
        assert_eq!(QuantType::parse("q4_k"), Some(QuantType::Q4K));
        assert_eq!(QuantType::parse("q4_1"), None);
    }
}
