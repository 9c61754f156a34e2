//! Bytes of a detected format -> a title and text blocks, each knowing the
//! headings it sits under.

mod docx;
mod html;
mod markdown;
mod pdf;

use crate::detect::{decode_text, Format};
use crate::error::{Error, Result};

/// A document reduced to its text, before chunking.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExtractedDoc {
    pub title: Option<String>,
    /// In reading order; never empty and never whitespace-only.
    pub blocks: Vec<Block>,
    /// Page count of paginated formats (PDF).
    pub pages: Option<usize>,
}

/// A run of text under one heading path.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Block {
    /// Outermost heading first, e.g. `["Guide", "Install", "Linux"]`.
    pub heading_path: Vec<String>,
    pub text: String,
    /// 1-based page number in paginated formats.
    pub page: Option<u32>,
    /// How `text` is written, so the chunker can split on its structure.
    pub syntax: Syntax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Syntax {
    #[default]
    Plain,
    Markdown,
    /// Source code in a language whose grammar ragd carries.
    Code(CodeLanguage),
}

/// The languages chunked on syntax boundaries (functions, classes, blocks)
/// rather than as prose; other code is chunked as plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeLanguage {
    C,
    Go,
    Java,
    JavaScript,
    Python,
    Rust,
}

impl CodeLanguage {
    /// The language a detected `Format::Code` names, if its grammar is here.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "c" => Self::C,
            "go" => Self::Go,
            "java" => Self::Java,
            "javascript" => Self::JavaScript,
            "python" => Self::Python,
            "rust" => Self::Rust,
            _ => return None,
        })
    }

    pub(crate) fn grammar(self) -> tree_sitter_language::LanguageFn {
        match self {
            Self::C => tree_sitter_c::LANGUAGE,
            Self::Go => tree_sitter_go::LANGUAGE,
            Self::Java => tree_sitter_java::LANGUAGE,
            Self::JavaScript => tree_sitter_javascript::LANGUAGE,
            Self::Python => tree_sitter_python::LANGUAGE,
            Self::Rust => tree_sitter_rust::LANGUAGE,
        }
    }
}

impl Block {
    pub(crate) fn plain(heading_path: Vec<String>, text: String) -> Self {
        Self { heading_path, text, page: None, syntax: Syntax::Plain }
    }
}

pub fn extract(format: &Format, bytes: &[u8]) -> Result<ExtractedDoc> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    let mut doc = match format {
        Format::Text => ExtractedDoc {
            blocks: vec![Block::plain(Vec::new(), decode_text(bytes)?.to_owned())],
            ..Default::default()
        },
        Format::Code(language) => {
            let syntax = CodeLanguage::from_name(language).map_or(Syntax::Plain, Syntax::Code);
            let block = Block { syntax, ..Block::plain(Vec::new(), decode_text(bytes)?.to_owned()) };
            ExtractedDoc { blocks: vec![block], ..Default::default() }
        }
        Format::Markdown => markdown::extract(decode_text(bytes)?),
        Format::Html => html::extract(decode_text(bytes)?),
        Format::Pdf => pdf::extract(bytes)?,
        Format::Docx => docx::extract(bytes)?,
    };
    remove_nul(&mut doc);
    doc.title = doc.title.map(|title| title.trim().to_owned()).filter(|title| !title.is_empty());
    doc.blocks.retain(|block| !block.text.trim().is_empty());
    tracing::debug!(
        format = %format,
        bytes = bytes.len(),
        blocks = doc.blocks.len(),
        pages = doc.pages,
        has_title = doc.title.is_some(),
        "extracted document"
    );
    if doc.blocks.is_empty() {
        return Err(Error::NoText);
    }
    Ok(doc)
}

/// A NUL carries no text, and PostgreSQL cannot store one; plain text
/// holding one is refused as binary, but a PDF or DOCX can still yield it.
fn remove_nul(doc: &mut ExtractedDoc) {
    let strings = doc.title.iter_mut().chain(
        doc.blocks
            .iter_mut()
            .flat_map(|block| std::iter::once(&mut block.text).chain(&mut block.heading_path)),
    );
    for text in strings {
        if text.contains('\0') {
            text.retain(|c| c != '\0');
        }
    }
}

/// Collapses runs of whitespace to single spaces, as a browser renders them.
pub(crate) fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What the format tests compare: the title and each block as (heading
/// path, text).
#[cfg(test)]
mod test_support {
    use super::ExtractedDoc;

    pub fn outline(doc: ExtractedDoc) -> (Option<String>, Vec<(String, String)>) {
        let blocks = doc.blocks.into_iter().map(|b| (b.heading_path.join(" > "), b.text)).collect();
        (doc.title, blocks)
    }

    pub fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{detect_format, DOCX_MAIN_PART};

    const EMPTY_BODY: &str =
        r#"<w:document xmlns:w="w"><w:body><w:p><w:r><w:t> </w:t></w:r></w:p></w:body></w:document>"#;

    #[test]
    fn nul_characters_are_dropped_from_extracted_text() {
        let pdf = pdf::tests::pdf(Some("Ti\\000tle"), &[&["Tide\\000 tables"]]);
        let doc = extract(&Format::Pdf, &pdf).unwrap();
        assert_eq!(doc.title.as_deref(), Some("Title"));
        assert!(doc.blocks.iter().all(|block| !block.text.contains('\0')), "{doc:?}");
        assert!(doc.blocks.iter().any(|block| block.text.contains("Tide tables")), "{doc:?}");
    }

    #[test]
    fn documents_without_text_are_errors() {
        let empty_pdf = pdf::tests::pdf(Some("Scanned"), &[&[], &[]]);
        let empty_docx = docx::tests::docx(&[(DOCX_MAIN_PART, EMPTY_BODY)]);
        let cases: &[(Format, &[u8])] = &[
            (Format::Text, b" \n\t \r\n"),
            (Format::Code("rust".into()), b"\n\n"),
            (Format::Markdown, b"# Only\n\n## Headings\n"),
            (Format::Markdown, b"---\ntitle: x\n---\n"),
            (
                Format::Html,
                b"<html><head><title>T</title></head><body><nav>menu</nav><script>x()</script></body></html>",
            ),
            (Format::Pdf, &empty_pdf),
            (Format::Docx, &empty_docx),
        ];
        for (format, bytes) in cases {
            let result = extract(format, bytes);
            assert!(matches!(result, Err(Error::NoText)), "{format}: {result:?}");
        }
        assert!(matches!(extract(&Format::Text, b""), Err(Error::Empty)));
        assert!(matches!(extract(&Format::Text, b"caf\xe9"), Err(Error::InvalidUtf8)));
    }

    #[test]
    fn binary_formats_are_detected_by_content() {
        let pdf = pdf::tests::pdf(None, &[&["Hello"]]);
        let docx = docx::tests::docx(&[(DOCX_MAIN_PART, EMPTY_BODY)]);
        let xlsx = docx::tests::docx(&[("xl/workbook.xml", "<workbook/>")]);
        let zip = docx::tests::docx(&[("notes.txt", "hi")]);
        let cases: &[(&str, &[u8], &str)] = &[
            ("upload.txt", &pdf, "pdf"),
            ("upload.txt", &docx, "docx"),
            ("report.docx", &docx, "docx"),
            ("sheet.xlsx", &xlsx, "Excel workbook"),
            ("report.docx", &zip, "DOCX file is corrupt"),
            ("archive.zip", &zip, "unsupported file type: ZIP archive"),
        ];
        for (name, bytes, expected) in cases {
            let got = match detect_format(Some(name), None, bytes) {
                Ok(format) => format.to_string(),
                Err(err) => err.to_string(),
            };
            assert!(got.contains(expected), "{name}: {got}");
        }
    }

    #[test]
    fn text_is_one_block_without_title() {
        let doc = extract(&Format::Text, "\u{feff}Line one\nLine two\n".as_bytes()).unwrap();
        assert_eq!(doc.title, None);
        assert_eq!(doc.blocks, vec![Block::plain(Vec::new(), "Line one\nLine two\n".to_owned())]);
    }
}
