//! Uploaded bytes -> chunks: detects the format, extracts text with its
//! heading structure (text, Markdown, HTML, PDF, DOCX, source code) and
//! splits it into overlapping chunks sized in the embedder's tokens.
//!
//! Invariant: pure functions over the bytes and tokenizer it is handed. No
//! file or network I/O beyond loading a tokenizer from a given path, no
//! embedding, no storage, no HTTP; never depends on another engine crate.

mod archive;
mod chunk;
mod detect;
mod error;
mod extract;
mod rows;

pub use archive::{
    archive_kind, is_zip_archive, unpack, unpack_stream, unpack_zip, ArchiveEntry, ArchiveKind,
    ArchiveLimits, RejectedEntry, Unpacked,
};
pub use chunk::{Chunker, ChunkingConfig, MIN_CHUNK_TOKENS};
pub use detect::{detect_format, Format};
pub use error::{Error, Result};
pub use extract::{extract, Block, CodeLanguage, ExtractedDoc, Syntax};
pub use rows::{row_format, split_rows, RejectedRow, Row, RowDoc, RowFields, RowFormat};
