//! A `tokenizers::Tokenizer` rebuilt from GGUF metadata, as llama.cpp builds
//! its own: the byte-level BPE vocabulary and merges, the pre-tokenizer named
//! by `tokenizer.ggml.pre`, and control tokens matched whole as special tokens.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// llama.cpp's `llama_token_type`.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Control tokens that end an assistant turn in the chat formats we know,
/// besides the GGUF's declared end-of-sequence and end-of-turn tokens.
const END_OF_TURN_TOKENS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"];

/// Qwen2's split pattern, from llama.cpp (`LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split pattern, from llama.cpp (`LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(crate) struct GgufTokenizer {
    pub(crate) tokenizer: Tokenizer,
    pub(crate) bos_token: String,
    pub(crate) eos_token: String,
    /// Sampling any of these ends the answer.
    pub(crate) stop_ids: Vec<u32>,
}

pub(crate) fn from_gguf(metadata: &HashMap<String, Value>) -> Result<GgufTokenizer> {
    let model = string(metadata, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "tokenizer model {model:?} is not supported, only byte-level BPE (gpt2)"
        )));
    }
    let tokens = array(metadata, "tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| Error::Tokenizer(format!("tokenizer.ggml.tokens: {e}")))?;
    let token_types = match metadata.get("tokenizer.ggml.token_type") {
        Some(value) => value
            .to_vec()
            .and_then(|types| types.iter().map(Value::to_i32).collect::<Result<Vec<i32>, _>>())
            .map_err(|e| Error::Tokenizer(format!("tokenizer.ggml.token_type: {e}")))?,
        None => Vec::new(),
    };
    let merges = array(metadata, "tokenizer.ggml.merges")?
        .iter()
        .map(|v| {
            let merge = v.to_string().map_err(|e| Error::Tokenizer(format!("tokenizer.ggml.merges: {e}")))?;
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| Error::Tokenizer(format!("merge {merge:?} is not a pair")))
        })
        .collect::<Result<Merges>>()?;

    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id).map_err(|_| Error::Tokenizer("vocabulary too large".into()))?;
        // Some vocabularies repeat a token; the first id is the one the
        // tokenizer encodes to, as in llama.cpp.
        vocab.entry(token.clone()).or_insert(id);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(format!("building bpe: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre = metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let of_type = |wanted: i32| {
        tokens.iter().zip(&token_types).filter(move |(_, t)| **t == wanted).map(|(token, _)| token.clone())
    };
    tokenizer
        .add_special_tokens(of_type(TOKEN_TYPE_CONTROL).map(|t| AddedToken::from(t, true).normalized(false)))
        .map_err(|e| Error::Tokenizer(format!("adding control tokens: {e}")))?;
    tokenizer
        .add_tokens(of_type(TOKEN_TYPE_USER_DEFINED).map(|t| AddedToken::from(t, false).normalized(false)))
        .map_err(|e| Error::Tokenizer(format!("adding user-defined tokens: {e}")))?;

    let token_at = |key: &str| -> Option<(u32, String)> {
        let id = metadata.get(key)?.to_u32().ok()?;
        Some((id, tokens.get(usize::try_from(id).ok()?)?.clone()))
    };
    let bos = token_at("tokenizer.ggml.bos_token_id");
    let eos = token_at("tokenizer.ggml.eos_token_id");
    let mut stop_ids: Vec<u32> = [eos.clone(), token_at("tokenizer.ggml.eot_token_id")]
        .into_iter()
        .flatten()
        .map(|(id, _)| id)
        .chain(END_OF_TURN_TOKENS.iter().filter_map(|t| tokenizer.token_to_id(t)))
        .collect();
    stop_ids.sort_unstable();
    stop_ids.dedup();
    if stop_ids.is_empty() {
        return Err(Error::Tokenizer("the vocabulary has no end-of-sequence token".into()));
    }

    Ok(GgufTokenizer {
        tokenizer,
        bos_token: bos.map(|(_, t)| t).unwrap_or_default(),
        eos_token: eos.map(|(_, t)| t).unwrap_or_default(),
        stop_ids,
    })
}

fn pre_tokenizer(pre: Option<&str>) -> Result<Sequence> {
    let byte_level = |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        Split::new(SplitPattern::Regex(pattern.to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map(PreTokenizerWrapper::from)
            .map_err(|e| Error::Tokenizer(format!("split pattern: {e}")))
    };
    let steps = match pre {
        None | Some("default" | "gpt2" | "gpt-2") => vec![byte_level(true)],
        Some("smollm" | "starcoder" | "refact") => {
            vec![PreTokenizerWrapper::from(Digits::new(true)), byte_level(true)]
        }
        Some("qwen2") => vec![split(QWEN2_PATTERN)?, byte_level(false)],
        Some("llama3" | "llama-bpe") => vec![split(LLAMA3_PATTERN)?, byte_level(false)],
        Some(other) => {
            return Err(Error::Tokenizer(format!("pre-tokenizer {other:?} is not supported")));
        }
    };
    Ok(Sequence::new(steps))
}

fn string<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a String> {
    metadata
        .get(key)
        .ok_or_else(|| Error::Tokenizer(format!("{key} is missing")))?
        .to_string()
        .map_err(|e| Error::Tokenizer(format!("{key}: {e}")))
}

fn array<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> Result<&'a Vec<Value>> {
    metadata
        .get(key)
        .ok_or_else(|| Error::Tokenizer(format!("{key} is missing")))?
        .to_vec()
        .map_err(|e| Error::Tokenizer(format!("{key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level vocabulary small enough to reason about: single bytes
    /// in GPT-2's byte-to-char mapping (`Ġ` is the space), a few merges,
    /// and two control tokens.
    fn metadata(pre: &str) -> HashMap<String, Value> {
        let tokens =
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "Ġ", "1", "2", "ab", "Ġab", "12"];
        let types = [3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1];
        let merges = ["a b", "Ġ ab", "1 2"];
        let strings =
            |items: &[&str]| Value::Array(items.iter().map(|s| Value::String((*s).to_owned())).collect());
        HashMap::from([
            ("tokenizer.ggml.model".to_owned(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".to_owned(), Value::String(pre.into())),
            ("tokenizer.ggml.tokens".to_owned(), strings(&tokens)),
            (
                "tokenizer.ggml.token_type".to_owned(),
                Value::Array(types.iter().map(|t| Value::I32(*t)).collect()),
            ),
            ("tokenizer.ggml.merges".to_owned(), strings(&merges)),
            ("tokenizer.ggml.bos_token_id".to_owned(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".to_owned(), Value::U32(2)),
        ])
    }

    fn ids(tok: &GgufTokenizer, text: &str) -> Vec<u32> {
        tok.tokenizer.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    #[test]
    fn encodes_with_merges_and_special_tokens() {
        let tok = from_gguf(&metadata("smollm")).unwrap();
        let cases: [(&str, &[u32]); 4] = [
            ("ab ab", &[8, 9]),
            ("<|im_start|>ab<|im_end|>", &[1, 8, 2]),
            // individual digits: "12" is never merged
            ("12", &[6, 7]),
            ("", &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(ids(&tok, text), expected, "{text:?}");
        }
        assert_eq!(tok.tokenizer.decode(&[8, 9], true).unwrap(), "ab ab");
        assert_eq!(tok.bos_token, "<|im_start|>");
        assert_eq!(tok.eos_token, "<|im_end|>");
        assert_eq!(tok.stop_ids, vec![0, 2]);
    }

    #[test]
    fn digit_grouping_follows_the_pre_tokenizer() {
        assert_eq!(ids(&from_gguf(&metadata("gpt2")).unwrap(), "12"), vec![10]);
        assert_eq!(ids(&from_gguf(&metadata("qwen2")).unwrap(), "12"), vec![6, 7]);
        assert_eq!(ids(&from_gguf(&metadata("llama-bpe")).unwrap(), "12"), vec![10]);
    }

    #[test]
    fn rejects_what_it_cannot_build() {
        let mut sentencepiece = metadata("smollm");
        sentencepiece.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        let mut no_tokens = metadata("smollm");
        no_tokens.remove("tokenizer.ggml.tokens");
        let mut bad_merge = metadata("smollm");
        bad_merge.insert("tokenizer.ggml.merges".into(), Value::Array(vec![Value::String("ab".into())]));
        for md in [metadata("mystery"), sentencepiece, no_tokens, bad_merge] {
            assert!(matches!(from_gguf(&md), Err(Error::Tokenizer(_))));
        }
    }
}
