//! What an upload is. The bytes decide first (a PDF named `.txt` is a PDF);
//! the file name and content type only choose between text flavours that
//! bytes cannot tell apart (Markdown, source code, plain text).

use std::fmt;
use std::io::Cursor;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
    Markdown,
    Html,
    Pdf,
    Docx,
    /// Source code; the language is a lowercase name such as `rust`.
    Code(String),
}

impl Format {
    /// The media type a document of this format is stored and served as.
    pub fn media_type(&self) -> String {
        match self {
            Self::Text => "text/plain".to_owned(),
            Self::Markdown => "text/markdown".to_owned(),
            Self::Html => "text/html".to_owned(),
            Self::Pdf => "application/pdf".to_owned(),
            Self::Docx => "application/vnd.openxmlformats-officedocument.wordprocessingml.document".to_owned(),
            Self::Code(language) => format!("text/x-{language}"),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text => f.write_str("text"),
            Self::Markdown => f.write_str("markdown"),
            Self::Html => f.write_str("html"),
            Self::Pdf => f.write_str("pdf"),
            Self::Docx => f.write_str("docx"),
            Self::Code(language) => write!(f, "code:{language}"),
        }
    }
}

pub(crate) const DOCX_MAIN_PART: &str = "word/document.xml";

/// PDF readers accept the header anywhere in the first KiB, after junk.
const PDF_HEADER_WINDOW: usize = 1024;
/// Enough bytes to tell binary data from text in a legacy encoding.
const BINARY_SNIFF_LEN: usize = 8192;

const CODE_EXTENSIONS: &[(&str, &str)] = &[
    ("rs", "rust"),
    ("py", "python"),
    ("pyi", "python"),
    ("js", "javascript"),
    ("mjs", "javascript"),
    ("cjs", "javascript"),
    ("jsx", "javascript"),
    ("ts", "typescript"),
    ("tsx", "typescript"),
    ("go", "go"),
    ("java", "java"),
    ("kt", "kotlin"),
    ("kts", "kotlin"),
    ("scala", "scala"),
    ("c", "c"),
    ("h", "c"),
    ("cc", "cpp"),
    ("cpp", "cpp"),
    ("cxx", "cpp"),
    ("hpp", "cpp"),
    ("hh", "cpp"),
    ("cs", "csharp"),
    ("rb", "ruby"),
    ("php", "php"),
    ("swift", "swift"),
    ("lua", "lua"),
    ("sh", "shell"),
    ("bash", "shell"),
    ("zsh", "shell"),
    ("sql", "sql"),
    ("r", "r"),
    ("hs", "haskell"),
    ("ex", "elixir"),
    ("exs", "elixir"),
    ("erl", "erlang"),
    ("clj", "clojure"),
    ("dart", "dart"),
    ("zig", "zig"),
    ("css", "css"),
    ("scss", "scss"),
    ("json", "json"),
    ("yaml", "yaml"),
    ("yml", "yaml"),
    ("toml", "toml"),
    ("xml", "xml"),
    ("proto", "protobuf"),
];

pub fn detect_format(file_name: Option<&str>, content_type: Option<&str>, bytes: &[u8]) -> Result<Format> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    let declared = declared_format(file_name, content_type);
    let format = sniff(bytes, declared.as_ref())?.or(declared).unwrap_or(Format::Text);
    tracing::debug!(
        file_name,
        content_type,
        bytes = bytes.len(),
        format = %format,
        "detected document format"
    );
    Ok(format)
}

/// The format the content proves, if it proves one; errors when the bytes
/// cannot be a supported document whatever the name says.
fn sniff(bytes: &[u8], declared: Option<&Format>) -> Result<Option<Format>> {
    if has_pdf_header(bytes) {
        return Ok(Some(Format::Pdf));
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return zip_format(bytes, declared).map(Some);
    }
    match declared {
        Some(Format::Pdf) => return Err(Error::corrupt("PDF", "the file does not start with a PDF header")),
        Some(Format::Docx) => return Err(Error::corrupt("DOCX", "the file is not a ZIP archive")),
        _ => {}
    }
    let text = match decode_text(bytes) {
        Ok(text) => text,
        // Only non-text is checked against magic numbers: many are two
        // bytes long ("BM", "MZ") and would misfire on ordinary text.
        Err(err) => return Err(infer_binary(bytes).map_or(err, Error::UnsupportedType)),
    };
    if text.trim_start().starts_with("{\\rtf") {
        return Err(Error::UnsupportedType("RTF document".to_owned()));
    }
    Ok(looks_like_html(text).then_some(Format::Html))
}

fn has_pdf_header(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(PDF_HEADER_WINDOW)].windows(5).any(|w| w == b"%PDF-")
}

fn zip_format(bytes: &[u8], declared: Option<&Format>) -> Result<Format> {
    let archive = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(archive) => archive,
        Err(err) if declared == Some(&Format::Docx) => return Err(Error::corrupt("DOCX", err)),
        Err(_) => return Err(Error::UnsupportedType("ZIP archive".to_owned())),
    };
    if archive.index_for_name(DOCX_MAIN_PART).is_some() {
        return Ok(Format::Docx);
    }
    let has = |name: &str| archive.index_for_name(name).is_some();
    let what = if has("xl/workbook.xml") {
        "Excel workbook (XLSX)"
    } else if has("ppt/presentation.xml") {
        "PowerPoint presentation (PPTX)"
    } else if has("content.xml") {
        "OpenDocument file"
    } else if declared == Some(&Format::Docx) {
        return Err(Error::corrupt("DOCX", format!("the archive has no {DOCX_MAIN_PART}")));
    } else {
        "ZIP archive"
    };
    Err(Error::UnsupportedType(what.to_owned()))
}

/// The text of a text document, without a byte order mark.
pub(crate) fn decode_text(bytes: &[u8]) -> Result<&str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| {
        if looks_binary(bytes) {
            Error::UnsupportedType("binary data".to_owned())
        } else {
            Error::InvalidUtf8
        }
    })?;
    if text.contains('\0') {
        return Err(Error::UnsupportedType("binary data".to_owned()));
    }
    Ok(text)
}

fn looks_binary(bytes: &[u8]) -> bool {
    // UTF-16 is full of NULs but is text in the wrong encoding.
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return false;
    }
    let head = &bytes[..bytes.len().min(BINARY_SNIFF_LEN)];
    let control = head
        .iter()
        .filter(|&&b| b == 0 || (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C | 0x1B)))
        .count();
    head.contains(&0) || control * 10 > head.len()
}

fn infer_binary(bytes: &[u8]) -> Option<String> {
    infer::get(bytes)
        .filter(|kind| kind.matcher_type() != infer::MatcherType::Text)
        .map(|kind| format!("{} (.{})", kind.mime_type(), kind.extension()))
}

fn looks_like_html(text: &str) -> bool {
    let mut rest = text.trim_start();
    // Prologs that may precede the root element.
    loop {
        let skipped = if rest.starts_with("<?xml") {
            rest.find("?>").map(|end| &rest[end + 2..])
        } else if rest.starts_with("<!--") {
            rest.find("-->").map(|end| &rest[end + 3..])
        } else {
            None
        };
        match skipped {
            Some(after) => rest = after.trim_start(),
            None => break,
        }
    }
    let head: String = rest.chars().take(15).flat_map(char::to_lowercase).collect();
    if head.starts_with("<!doctype html") {
        return true;
    }
    head.strip_prefix("<html")
        .is_some_and(|after| after.chars().next().is_none_or(|c| c == '>' || c.is_whitespace()))
}

fn declared_format(file_name: Option<&str>, content_type: Option<&str>) -> Option<Format> {
    file_name.and_then(format_from_name).or_else(|| content_type.and_then(format_from_content_type))
}

fn format_from_name(file_name: &str) -> Option<Format> {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let (_, extension) = base.rsplit_once('.')?;
    let extension = extension.to_ascii_lowercase();
    let format = match extension.as_str() {
        "md" | "markdown" | "mdown" | "mkd" => Format::Markdown,
        "html" | "htm" | "xhtml" => Format::Html,
        "pdf" => Format::Pdf,
        "docx" => Format::Docx,
        "txt" | "text" | "log" | "csv" | "tsv" | "jsonl" | "rst" => Format::Text,
        other => {
            let (_, language) = CODE_EXTENSIONS.iter().find(|(ext, _)| *ext == other)?;
            Format::Code((*language).to_owned())
        }
    };
    Some(format)
}

fn format_from_content_type(content_type: &str) -> Option<Format> {
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let format = match mime.as_str() {
        "text/markdown" | "text/x-markdown" => Format::Markdown,
        "text/html" | "application/xhtml+xml" => Format::Html,
        "application/pdf" => Format::Pdf,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Format::Docx,
        "text/plain" | "text/csv" => Format::Text,
        "application/json" => Format::Code("json".to_owned()),
        _ => return None,
    };
    Some(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a [u8], &'a str);

    fn detect(name: Option<&str>, content_type: Option<&str>, bytes: &[u8]) -> String {
        match detect_format(name, content_type, bytes) {
            Ok(format) => format.to_string(),
            Err(err) => format!("error: {err}"),
        }
    }

    #[test]
    fn content_decides_before_name() {
        let cases: &[Case<'_>] = &[
            (Some("notes.txt"), None, b"%PDF-1.4\n%...", "pdf"),
            (Some("x.bin"), None, b"\n\n%PDF-1.7\n", "pdf"),
            (Some("page.txt"), None, b"  <!DOCTYPE html><p>hi</p>", "html"),
            (Some("page.txt"), None, b"<HTML lang=en><body>hi</body></HTML>", "html"),
            (None, None, b"<?xml version=\"1.0\"?>\n<!-- c --><html>", "html"),
            (Some("page.txt"), None, b"<htmlish> is not a tag we know", "text"),
            (Some("a.md"), Some("text/html"), b"# Title\n", "markdown"),
            (None, Some("text/markdown; charset=utf-8"), b"# Title\n", "markdown"),
            (Some("frag.html"), None, b"<p>fragment</p>", "html"),
            (Some("dir/main.RS"), None, b"fn main() {}", "code:rust"),
            (Some("C:\\docs\\notes"), None, b"plain", "text"),
            (None, None, b"BMW makes cars", "text"),
            (None, Some("application/octet-stream"), b"plain words", "text"),
            (Some("a.txt"), None, b"\xEF\xBB\xBFbom text", "text"),
        ];
        for (name, content_type, bytes, expected) in cases {
            assert_eq!(detect(*name, *content_type, bytes), *expected, "{name:?} {content_type:?}");
        }
    }

    #[test]
    fn rejects_what_cannot_be_read() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01";
        let cases: &[(Option<&str>, &[u8], &str)] = &[
            (Some("a.txt"), b"", "the file is empty"),
            (Some("a.txt"), png, "unsupported file type: image/png (.png)"),
            (None, b"\x00\x01\x02\x03\xff\xfe\x00\x00garbage\x00", "unsupported file type: binary data"),
            (None, b"caf\xe9 au lait", "not valid UTF-8"),
            (None, b"\xFF\xFEh\0i\0", "not valid UTF-8"),
            (None, b"text with a \0 inside", "binary data"),
            (Some("report.pdf"), b"just text", "PDF file is corrupt"),
            (Some("report.docx"), b"just text", "DOCX file is corrupt"),
            (Some("report.docx"), b"PK\x03\x04 truncated", "DOCX file is corrupt"),
            (Some("x.zip"), b"PK\x03\x04 truncated", "ZIP archive"),
            (None, b"{\\rtf1\\ansi hello}", "RTF document"),
        ];
        for (name, bytes, expected) in cases {
            let got = detect(*name, None, bytes);
            assert!(got.starts_with("error: ") && got.contains(expected), "{name:?}: {got}");
        }
    }
}
