//! The sparse encoder: BM25 term-frequency weights over Qdrant's own text
//! pipeline (tokenizer, stop words, stemmer), so terms hash exactly as a
//! Qdrant server's BM25 would. IDF is not computed here: it needs corpus
//! statistics, which the index keeps (`Modifier::Idf` on the sparse vector).

use std::time::Instant;

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::external::ordered_float::NotNan;
use qdrant_edge::TokenizerType;
use ragd_core::SparseVector;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Changing any field changes the terms or weights of new vectors, so a
/// collection must be reindexed after a change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparseConfig {
    /// Term-frequency saturation.
    pub k1: f64,
    /// Length normalisation: 0 none, 1 full.
    pub b: f64,
    /// The average chunk length in BM25 terms (words left after stop-word
    /// removal), not in model tokens. The default suits chunks of about 256
    /// MiniLM tokens of English prose, which keep about 110 such terms.
    pub avg_len: f64,
    /// Language of the stop-word list and stemmer (`english`, `en`,
    /// `german`, ...).
    pub language: String,
    /// Segment with charabia (Chinese words via jieba, Japanese via
    /// vaporetto, Thai, ...) instead of splitting on non-alphanumerics,
    /// which leaves a whole CJK sentence as one term.
    pub multilingual: bool,
}

impl Default for SparseConfig {
    fn default() -> Self {
        Self { k1: 1.2, b: 0.75, avg_len: 110.0, language: "english".to_owned(), multilingual: true }
    }
}

pub struct Bm25Encoder {
    bm25: EdgeBm25,
}

impl std::fmt::Debug for Bm25Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Encoder").finish_non_exhaustive()
    }
}

impl Bm25Encoder {
    pub fn new(config: &SparseConfig) -> Result<Self> {
        let not_nan = |name: &str, value: f64| {
            NotNan::new(value).map_err(|_| Error::Config(format!("sparse {name} must be a number")))
        };
        let edge_config = EdgeBm25Config {
            k: not_nan("k1", config.k1)?,
            b: not_nan("b", config.b)?,
            avg_len: not_nan("avg_len", config.avg_len)?,
            tokenizer: if config.multilingual { TokenizerType::Multilingual } else { TokenizerType::Word },
            language: Some(config.language.clone()),
            ..EdgeBm25Config::default()
        };
        let bm25 =
            EdgeBm25::new(edge_config).map_err(|err| Error::Config(format!("sparse encoder: {err}")))?;
        Ok(Self { bm25 })
    }
}

impl ragd_core::SparseEncoder for Bm25Encoder {
    fn encode_document(&self, text: &str) -> SparseVector {
        let span = tracing::trace_span!(
            "encode_sparse_document",
            chars = text.len(),
            terms = tracing::field::Empty,
            elapsed_us = tracing::field::Empty
        );
        let _guard = span.enter();
        let started = Instant::now();
        let vector = convert(self.bm25.embed_document(text));
        span.record("terms", vector.indices.len());
        span.record("elapsed_us", started.elapsed().as_micros() as u64);
        vector
    }

    fn encode_query(&self, text: &str) -> SparseVector {
        let span =
            tracing::trace_span!("encode_sparse_query", chars = text.len(), terms = tracing::field::Empty);
        let _guard = span.enter();
        let vector = convert(self.bm25.embed_query(text));
        span.record("terms", vector.indices.len());
        vector
    }
}

/// EdgeBm25 already yields unique, sorted indices (it aggregates per term),
/// which is what `SparseVector` promises.
fn convert(vector: qdrant_edge::SparseVector) -> SparseVector {
    SparseVector { indices: vector.indices, values: vector.values }
}

#[cfg(test)]
mod tests {
    use ragd_core::SparseEncoder;

    use super::*;

    fn encoder(multilingual: bool) -> Bm25Encoder {
        Bm25Encoder::new(&SparseConfig { multilingual, ..SparseConfig::default() }).unwrap()
    }

    fn shared_terms(a: &SparseVector, b: &SparseVector) -> usize {
        a.indices.iter().filter(|i| b.indices.contains(i)).count()
    }

    #[test]
    fn english_is_stemmed_and_stop_words_dropped() {
        for multilingual in [true, false] {
            let bm25 = encoder(multilingual);
            let running = bm25.encode_document("running");
            assert_eq!(running.indices.len(), 1);
            assert_eq!(running.indices, bm25.encode_query("runs").indices, "multilingual={multilingual}");
            assert!(bm25.encode_query("the").indices.is_empty(), "multilingual={multilingual}");
            assert_eq!(bm25.encode_query("The cat and the dog").indices.len(), 2);
        }
    }

    #[test]
    fn vectors_have_unique_sorted_indices_and_tf_weights() {
        let bm25 = encoder(true);
        let doc = bm25.encode_document("Rust rust RUST safety speed, rust and speed.");
        assert_eq!(doc.indices.len(), 3);
        assert!(doc.indices.windows(2).all(|w| w[0] < w[1]));
        let weight = |term: &str| {
            let id = bm25.encode_query(term).indices[0];
            doc.values[doc.indices.iter().position(|&i| i == id).unwrap()]
        };
        assert!(weight("rust") > weight("speed") && weight("speed") > weight("safety"));
        let query = bm25.encode_query("rust rust speed");
        assert_eq!(query.values, vec![1.0, 1.0]);
        assert_eq!(bm25.encode_document(""), SparseVector::default());
        assert_eq!(bm25.encode_query(" ,.!? "), SparseVector::default());
    }

    #[test]
    fn chinese_is_segmented_into_words() {
        let text = "我们喜欢机器学习";
        let words = encoder(true).encode_document(text);
        assert!(words.indices.len() >= 3, "{words:?}");
        // The plain word tokenizer sees one alphanumeric run.
        assert_eq!(encoder(false).encode_document(text).indices.len(), 1);
        // A query shares terms with a document that contains its words.
        let bm25 = encoder(true);
        let doc = bm25.encode_document("深度学习是机器学习的一个分支。");
        assert!(shared_terms(&doc, &bm25.encode_query("机器学习")) >= 1);
    }

    #[test]
    fn rejects_bad_config() {
        let cases = [
            SparseConfig { k1: f64::NAN, ..SparseConfig::default() },
            SparseConfig { b: 1.5, ..SparseConfig::default() },
            SparseConfig { avg_len: 0.0, ..SparseConfig::default() },
            SparseConfig { language: "klingon".into(), ..SparseConfig::default() },
        ];
        for config in cases {
            let err = Bm25Encoder::new(&config).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{config:?}: {err}");
        }
    }
}
