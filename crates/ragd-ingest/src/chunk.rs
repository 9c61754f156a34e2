//! Blocks -> chunks sized in the embedder's own tokens, so a chunk never
//! gets truncated by the embedder.

use std::path::Path;

use ragd_core::Chunk;
use serde::Deserialize;
use text_splitter::{ChunkConfig, ChunkSizer, CodeSplitter, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::extract::{ExtractedDoc, Syntax};

/// The smallest chunk budget: below it chunks are too small to mean anything.
pub const MIN_CHUNK_TOKENS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkingConfig {
    /// Tokens of a chunk including its title and heading-path header.
    pub max_tokens: usize,
    /// Tokens neighbouring chunks of a block share.
    pub overlap_tokens: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self { max_tokens: 256, overlap_tokens: 32 }
    }
}

impl ChunkingConfig {
    fn validate(&self) -> Result<()> {
        if self.max_tokens < MIN_CHUNK_TOKENS {
            return Err(Error::InvalidConfig(format!(
                "max_tokens is {} but must be at least {MIN_CHUNK_TOKENS}",
                self.max_tokens
            )));
        }
        if self.overlap_tokens >= self.max_tokens {
            return Err(Error::InvalidConfig(format!(
                "overlap_tokens ({}) must be smaller than max_tokens ({})",
                self.overlap_tokens, self.max_tokens
            )));
        }
        Ok(())
    }
}

pub struct Chunker {
    sizer: TokenSizer,
    config: ChunkingConfig,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Chunker {
    /// `tokenizer` is the embedder's; its padding and truncation are turned
    /// off here because they would distort the counts.
    pub fn new(mut tokenizer: Tokenizer, config: ChunkingConfig) -> Result<Self> {
        config.validate()?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|err| Error::Tokenizer(err.to_string()))?;
        Ok(Self { sizer: TokenSizer(tokenizer), config })
    }

    pub fn from_tokenizer_file(path: &Path, config: ChunkingConfig) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|err| Error::Tokenizer(format!("cannot load {}: {err}", path.display())))?;
        Self::new(tokenizer, config)
    }

    pub fn config(&self) -> &ChunkingConfig {
        &self.config
    }

    /// Tokens of `text` without the special tokens the embedder adds.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.sizer.size(text)
    }

    /// Chunks numbered from 0 in reading order across all blocks. Each
    /// chunk's text fits `max_tokens` together with the header
    /// [`Chunk::embedding_text`] adds for the document's title, unless the
    /// header alone leaves less than [`MIN_CHUNK_TOKENS`].
    pub fn chunk(&self, doc: &ExtractedDoc) -> Vec<Chunk> {
        let title = doc.title.as_deref().unwrap_or_default();
        let mut chunks = Vec::new();
        for block in &doc.blocks {
            let header = Chunk {
                index: 0,
                text: String::new(),
                heading_path: block.heading_path.clone(),
                token_count: 0,
                page: None,
            }
            .embedding_text(title);
            let budget =
                self.config.max_tokens.saturating_sub(self.count_tokens(&header)).max(MIN_CHUNK_TOKENS);
            let overlap = self.config.overlap_tokens.min(budget / 2);
            let config = || {
                ChunkConfig::new(budget)
                    .with_sizer(&self.sizer)
                    .with_overlap(overlap)
                    .expect("overlap is at most half the budget, which is positive")
            };
            let pieces: Vec<&str> = match block.syntax {
                Syntax::Markdown => MarkdownSplitter::new(config()).chunks(&block.text).collect(),
                Syntax::Plain => TextSplitter::new(config()).chunks(&block.text).collect(),
                Syntax::Code(language) => match CodeSplitter::new(language.grammar(), config()) {
                    Ok(splitter) => splitter.chunks(&block.text).collect(),
                    Err(err) => {
                        // Only a grammar built for another tree-sitter ABI
                        // fails here; prose splitting still keeps the text.
                        tracing::warn!(?language, error = %err, "code grammar unusable, splitting as text");
                        TextSplitter::new(config()).chunks(&block.text).collect()
                    }
                },
            };
            for piece in pieces.into_iter().filter(|piece| !piece.trim().is_empty()) {
                chunks.push(Chunk {
                    index: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
                    text: piece.to_owned(),
                    heading_path: block.heading_path.clone(),
                    token_count: self.count_tokens(piece),
                    page: block.page,
                });
            }
        }
        tracing::debug!(
            blocks = doc.blocks.len(),
            chunks = chunks.len(),
            max_tokens = self.config.max_tokens,
            "chunked document"
        );
        chunks
    }
}

/// Counts tokens without panicking: text-splitter's own `Tokenizer` sizer
/// panics when encoding fails.
struct TokenSizer(Tokenizer);

impl ChunkSizer for TokenSizer {
    fn size(&self, chunk: &str) -> usize {
        match self.0.encode_fast(chunk, false) {
            Ok(encoding) => encoding.len(),
            Err(err) => {
                // Every token covers at least one character, so this
                // over-counts and keeps chunks within budget.
                tracing::warn!(error = %err, chars = chunk.chars().count(), "tokenizer failed, counting characters");
                chunk.chars().count()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{Block, CodeLanguage};

    const TOKENIZER: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/minilm-l6-onnx/tokenizer.json");

    fn chunker(max_tokens: usize, overlap_tokens: usize) -> Chunker {
        let path = Path::new(TOKENIZER);
        assert!(path.exists(), "{TOKENIZER} is missing: run scripts/fetch-models");
        Chunker::from_tokenizer_file(path, ChunkingConfig { max_tokens, overlap_tokens }).unwrap()
    }

    /// Distinct numbered sentences, so any shared sentence is an overlap.
    fn prose(sentences: usize) -> String {
        (0..sentences)
            .map(|i| format!("Sentence {i} explains how component {i} talks to the indexer."))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn doc(title: Option<&str>, blocks: Vec<Block>) -> ExtractedDoc {
        ExtractedDoc { title: title.map(str::to_owned), blocks, pages: None }
    }

    #[test]
    fn rejects_invalid_config() {
        for (max, overlap) in [(15, 0), (16, 16), (100, 200), (0, 0)] {
            let config = ChunkingConfig { max_tokens: max, overlap_tokens: overlap };
            assert!(matches!(config.validate(), Err(Error::InvalidConfig(_))), "{max}/{overlap}");
        }
        assert!(ChunkingConfig { max_tokens: 16, overlap_tokens: 15 }.validate().is_ok());
        assert!(ChunkingConfig::default().validate().is_ok());
    }

    #[test]
    fn padding_and_truncation_do_not_distort_counts() {
        // The file pads and truncates to 128; a long text must count in full.
        let chunker = chunker(256, 32);
        assert_eq!(chunker.count_tokens("hello world"), 2);
        assert!(chunker.count_tokens(&prose(40)) > 300);
        assert_eq!(chunker.count_tokens(""), 0);
    }

    #[test]
    fn chunks_fit_the_budget_with_their_header() {
        let markdown =
            format!("{}\n\n- a list item\n- another\n\n```\ncode block\n```\n\n{}", prose(10), prose(15));
        for (max, overlap) in [(16, 0), (32, 8), (64, 16), (256, 32)] {
            let chunker = chunker(max, overlap);
            let doc = doc(
                Some("Ingestion Guide"),
                vec![
                    Block::plain(vec![], prose(30)),
                    Block::plain(vec!["Setup".into(), "Linux".into()], prose(25)),
                    Block {
                        syntax: Syntax::Markdown,
                        ..Block::plain(vec!["Markdown".into()], markdown.clone())
                    },
                ],
            );
            let chunks = chunker.chunk(&doc);
            assert!(chunks.len() > 3, "{max}: {} chunks", chunks.len());
            for chunk in &chunks {
                assert_eq!(chunk.token_count, chunker.count_tokens(&chunk.text));
                assert!(chunk.token_count <= max, "{max}: {} tokens in {:?}", chunk.token_count, chunk.text);
                assert!(!chunk.text.trim().is_empty());
                let header_fits = chunker.count_tokens(
                    &Chunk { text: String::new(), ..chunk.clone() }.embedding_text("Ingestion Guide"),
                ) + MIN_CHUNK_TOKENS
                    <= max;
                if header_fits {
                    let embedded = chunker.count_tokens(&chunk.embedding_text("Ingestion Guide"));
                    assert!(embedded <= max, "{max}: {embedded} tokens with header");
                }
            }
            let indices: Vec<u32> = chunks.iter().map(|c| c.index).collect();
            assert_eq!(indices, (0..chunks.len() as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn chunks_keep_block_order_and_heading_paths() {
        let chunker = chunker(32, 4);
        let doc = doc(
            None,
            vec![
                Block::plain(vec!["A".into()], prose(8)),
                Block::plain(vec!["A".into(), "B".into()], prose(8)),
            ],
        );
        let chunks = chunker.chunk(&doc);
        let first_b = chunks.iter().position(|c| c.heading_path.len() == 2).unwrap();
        assert!(first_b > 0);
        assert!(chunks[..first_b].iter().all(|c| c.heading_path == ["A"]));
        assert!(chunks[first_b..].iter().all(|c| c.heading_path == ["A", "B"]));
        assert!(chunks[0].text.starts_with("Sentence 0 "));
        assert!(chunks[first_b].text.starts_with("Sentence 0 "));
    }

    #[test]
    fn consecutive_chunks_overlap() {
        let chunker = chunker(48, 16);
        let chunks = chunker.chunk(&doc(None, vec![Block::plain(vec![], prose(20))]));
        assert!(chunks.len() > 3);
        for pair in chunks.windows(2) {
            let next_start: String = pair[1].text.split_inclusive('.').next().unwrap().to_owned();
            assert!(
                pair[0].text.contains(&next_start),
                "no overlap between {:?} and {:?}",
                pair[0].text,
                pair[1].text
            );
        }

        let without = self::chunker(48, 0).chunk(&doc(None, vec![Block::plain(vec![], prose(20))]));
        let joined: usize = without.iter().map(|c| c.text.len()).sum();
        assert!(joined < chunks.iter().map(|c| c.text.len()).sum::<usize>());
    }

    #[test]
    fn markdown_document_end_to_end() {
        let source = format!(
            "# Guide\n\nIntro.\n\n## Install\n\n### Linux\n\n{}\n\n```sh\napt install ragd\n```\n\n## Usage\n\n- run\n- query\n",
            prose(12)
        );
        let format = crate::detect_format(Some("guide.md"), None, source.as_bytes()).unwrap();
        let doc = crate::extract(&format, source.as_bytes()).unwrap();
        let chunks = chunker(64, 8).chunk(&doc);
        let paths: Vec<String> = chunks.iter().map(Chunk::heading_path_text).collect();
        assert_eq!(paths.first().map(String::as_str), Some("Guide"));
        assert!(paths.iter().filter(|p| *p == "Guide > Install > Linux").count() > 1, "{paths:?}");
        assert_eq!(paths.last().map(String::as_str), Some("Guide > Usage"));
        assert!(
            chunks.iter().any(|c| c.text.contains("```sh\napt install ragd\n```")),
            "code fences stay whole"
        );
        assert!(chunks.iter().all(|c| !c.text.starts_with('#')), "headings live in the path, not the text");
    }

    #[test]
    fn whitespace_only_blocks_give_no_chunks() {
        let chunker = chunker(64, 8);
        assert!(chunker.chunk(&doc(None, vec![Block::plain(vec![], " \n\t ".into())])).is_empty());
    }

    #[test]
    fn code_is_cut_between_functions_not_inside_them() {
        let functions: Vec<String> = (0..8)
            .map(|i| {
                format!(
                    "fn handler_{i}(request: Request) -> Response {{\n    let body = parse(request.body());\n    \
                     respond(body.field_{i}, {i})\n}}\n"
                )
            })
            .collect();
        // No blank lines between functions, which prose splitting would
        // take as paragraph breaks.
        let source = functions.concat();
        let chunker = chunker(64, 0);
        let code = |syntax| doc(None, vec![Block { syntax, ..Block::plain(vec![], source.clone()) }]);
        let chunks = chunker.chunk(&code(Syntax::Code(CodeLanguage::Rust)));
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(chunk.text.starts_with("fn handler_"), "starts mid-function: {:?}", chunk.text);
            assert!(chunk.text.trim_end().ends_with('}'), "ends mid-function: {:?}", chunk.text);
        }
        // The same budget as prose cuts through function bodies.
        let as_text = chunker.chunk(&code(Syntax::Plain));
        assert!(as_text.iter().any(|c| !c.text.starts_with("fn handler_")), "{as_text:#?}");
    }

    #[test]
    fn every_carried_grammar_loads() {
        let chunker = chunker(64, 0);
        for language in [
            CodeLanguage::C,
            CodeLanguage::Go,
            CodeLanguage::Java,
            CodeLanguage::JavaScript,
            CodeLanguage::Python,
            CodeLanguage::Rust,
        ] {
            assert!(CodeSplitter::new(language.grammar(), 64).is_ok(), "{language:?}");
            let block =
                Block { syntax: Syntax::Code(language), ..Block::plain(vec![], "x = 1\n".repeat(50)) };
            assert!(!chunker.chunk(&doc(None, vec![block])).is_empty(), "{language:?}");
        }
    }

    #[test]
    fn chunks_know_their_page() {
        let chunker = chunker(64, 0);
        let page = |number, text| Block { page: Some(number), ..Block::plain(vec![], text) };
        let chunks = chunker.chunk(&doc(None, vec![page(1, prose(3)), page(2, prose(12))]));
        assert_eq!(chunks[0].page, Some(1));
        assert!(chunks.len() > 2);
        assert!(chunks[1..].iter().all(|c| c.page == Some(2)), "{chunks:#?}");
    }
}
