//! PDF: the text layer of each page, one block per page. Scanned pages
//! without a text layer yield nothing (no OCR).

use std::panic::{catch_unwind, AssertUnwindSafe};

use pdf_extract::{output_doc_page, Document, Object, PlainTextOutput};

use super::{collapse_whitespace, Block, ExtractedDoc};
use crate::error::{Error, Result};

pub(super) fn extract(bytes: &[u8]) -> Result<ExtractedDoc> {
    // pdf-extract and lopdf panic on many malformed files.
    let mut doc = catch_unwind(AssertUnwindSafe(|| Document::load_mem(bytes)))
        .map_err(|_| Error::corrupt("PDF", "its structure cannot be parsed"))?
        .map_err(|err| Error::corrupt("PDF", err))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(Error::UnsupportedType("password-protected PDF".to_owned()));
    }
    let pages = doc.get_pages();
    let mut blocks = Vec::with_capacity(pages.len());
    let mut first_error = None;
    for &number in pages.keys() {
        match page_text(&doc, number) {
            Ok(text) => blocks.push(Block { page: Some(number), ..Block::plain(Vec::new(), text) }),
            Err(reason) => {
                tracing::warn!(page = number, reason = %reason, "skipping unreadable pdf page");
                first_error.get_or_insert(reason);
            }
        }
    }
    if blocks.is_empty() {
        if let Some(reason) = first_error {
            return Err(Error::corrupt("PDF", reason));
        }
    }
    Ok(ExtractedDoc { title: info_title(&doc), blocks, pages: Some(pages.len()) })
}

/// One page's text; a page that fails is skipped rather than failing the
/// whole document.
fn page_text(doc: &Document, number: u32) -> std::result::Result<String, String> {
    let mut raw = String::new();
    let outcome =
        catch_unwind(AssertUnwindSafe(|| output_doc_page(doc, &mut PlainTextOutput::new(&mut raw), number)));
    match outcome {
        Ok(Ok(())) => Ok(tidy(&raw)),
        Ok(Err(err)) => Err(format!("page {number}: {err}")),
        Err(_) => Err(format!("page {number} cannot be parsed")),
    }
}

/// Trailing spaces and runs of blank lines are layout, not content.
fn tidy(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut blank_lines = 0;
    for line in raw.lines().map(str::trim_end) {
        if line.trim().is_empty() {
            blank_lines += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_lines > 0 { "\n\n" } else { "\n" });
        }
        out.push_str(line);
        blank_lines = 0;
    }
    out
}

fn info_title(doc: &Document) -> Option<String> {
    let info = match doc.trailer.get(b"Info").ok()? {
        Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        Object::Dictionary(info) => info,
        _ => return None,
    };
    let title = pdf_extract::decode_text_string(info.get(b"Title").ok()?).ok()?;
    Some(collapse_whitespace(&title)).filter(|title| !title.is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid PDF whose pages show the given lines in Helvetica, with a
    /// correct cross-reference table.
    pub(crate) fn pdf(title: Option<&str>, pages: &[&[&str]]) -> Vec<u8> {
        let font_id = 3;
        let first_page_id = 4;
        let mut objects: Vec<String> = Vec::new();
        let kids: Vec<String> = (0..pages.len()).map(|i| format!("{} 0 R", first_page_id + 2 * i)).collect();
        objects.push("<< /Type /Catalog /Pages 2 0 R >>".to_owned());
        objects.push(format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), pages.len()));
        objects.push(
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_owned(),
        );
        for (i, lines) in pages.iter().enumerate() {
            let content_id = first_page_id + 2 * i + 1;
            objects.push(format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {content_id} 0 R >>"
            ));
            let mut stream = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
            for line in lines.iter() {
                stream.push_str(&format!("({line}) Tj T*\n"));
            }
            stream.push_str("ET");
            objects.push(format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()));
        }
        let info_id = title.map(|title| {
            objects.push(format!("<< /Title ({title}) >>"));
            objects.len()
        });

        let mut out = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (i, object) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
        }
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
        for offset in offsets {
            out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        let info = info_id.map(|id| format!(" /Info {id} 0 R")).unwrap_or_default();
        out.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        out
    }

    #[test]
    fn pages_keep_their_numbers() {
        let bytes = pdf(Some("Annual Report"), &[&["First page line one", "line two"], &[], &["Third page"]]);
        let doc = extract(&bytes).unwrap();
        assert_eq!(doc.title.as_deref(), Some("Annual Report"));
        assert_eq!(doc.pages, Some(3));
        let pages: Vec<(Option<u32>, String)> =
            doc.blocks.iter().map(|b| (b.page, collapse_whitespace(&b.text))).collect();
        assert_eq!(
            pages,
            vec![
                (Some(1), "First page line one line two".to_owned()),
                (Some(2), String::new()),
                (Some(3), "Third page".to_owned()),
            ]
        );
        assert!(doc.blocks[0].text.contains('\n'), "lines are kept apart: {:?}", doc.blocks[0].text);
    }

    #[test]
    fn corrupt_pdfs_are_errors_not_panics() {
        let valid = pdf(None, &[&["Hello"]]);
        let mut cases: Vec<Vec<u8>> = vec![
            b"%PDF-1.4\n".to_vec(),
            b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF".to_vec(),
            valid[..valid.len() / 2].to_vec(),
        ];
        // Every truncation and a few byte flips must fail cleanly or succeed.
        for cut in (10..valid.len()).step_by(37) {
            cases.push(valid[..cut].to_vec());
        }
        for at in (9..valid.len()).step_by(23) {
            let mut flipped = valid.clone();
            flipped[at] ^= 0x5A;
            cases.push(flipped);
        }
        for (i, bytes) in cases.iter().enumerate() {
            if let Err(err) = extract(bytes) {
                assert!(
                    matches!(err, Error::Corrupt { format: "PDF", .. } | Error::UnsupportedType(_)),
                    "case {i}: {err}"
                );
            }
        }
        for bytes in &cases[..3] {
            assert!(extract(bytes).is_err());
        }
    }
}
