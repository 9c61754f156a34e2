//! DOCX: the paragraphs of `word/document.xml`, with headings recognised by
//! their paragraph style (resolved through `word/styles.xml`, because style
//! ids are localised: a German "Heading 1" has the id `berschrift1`).

use std::collections::HashMap;
use std::io::{Cursor, Read};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{collapse_whitespace, Block, ExtractedDoc};
use crate::detect::DOCX_MAIN_PART;
use crate::error::{Error, Result};

/// Bound on one decompressed XML part, so a zip bomb cannot exhaust memory.
const MAX_PART_BYTES: u64 = 64 * 1024 * 1024;
const STYLES_PART: &str = "word/styles.xml";
const CORE_PROPERTIES_PART: &str = "docProps/core.xml";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Title,
    Heading(u8),
}

pub(super) fn extract(bytes: &[u8]) -> Result<ExtractedDoc> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|err| Error::corrupt("DOCX", err))?;
    let document = read_part(&mut archive, DOCX_MAIN_PART)?
        .ok_or_else(|| Error::corrupt("DOCX", format!("the archive has no {DOCX_MAIN_PART}")))?;
    // Styles and properties only improve the result; a broken one is ignored.
    let styles = match read_part(&mut archive, STYLES_PART) {
        Ok(Some(xml)) => parse_styles(&xml).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "ignoring unreadable docx styles");
            HashMap::new()
        }),
        _ => HashMap::new(),
    };
    let core_title = match read_part(&mut archive, CORE_PROPERTIES_PART) {
        Ok(Some(xml)) => core_title(&xml),
        _ => None,
    };
    let mut doc = parse_document(&document, &styles).map_err(|err| Error::corrupt("DOCX", err))?;
    doc.title = doc.title.or(core_title);
    Ok(doc)
}

fn read_part<R: Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Option<String>> {
    let entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(err) => return Err(Error::corrupt("DOCX", format!("{name}: {err}"))),
    };
    let mut raw = Vec::new();
    entry
        .take(MAX_PART_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|err| Error::corrupt("DOCX", format!("{name}: {err}")))?;
    if raw.len() as u64 > MAX_PART_BYTES {
        return Err(Error::corrupt("DOCX", format!("{name} is larger than {} MiB", MAX_PART_BYTES >> 20)));
    }
    String::from_utf8(raw).map(Some).map_err(|_| Error::corrupt("DOCX", format!("{name} is not UTF-8 XML")))
}

/// Style id -> role, for paragraph styles that are a title or a heading.
fn parse_styles(xml: &str) -> quick_xml::Result<HashMap<String, Role>> {
    let mut reader = Reader::from_str(xml);
    let mut roles = HashMap::new();
    let mut current: Option<(String, Option<Role>)> = None;
    loop {
        match reader.read_event()? {
            Event::Start(element) if local(&element) == "style" => {
                current = attr(&element, "styleId").map(|id| (id, None));
            }
            Event::Empty(element) | Event::Start(element) => {
                let Some((_, role)) = current.as_mut() else { continue };
                match local(&element) {
                    "name" => {
                        if let Some(found) = attr(&element, "val").as_deref().and_then(role_from_name) {
                            *role = Some(found);
                        }
                    }
                    "outlineLvl" if role.is_none() => {
                        *role = attr(&element, "val").as_deref().and_then(role_from_outline)
                    }
                    _ => {}
                }
            }
            Event::End(element) if element.local_name().as_ref() == "style" => {
                if let Some((id, Some(role))) = current.take() {
                    roles.insert(id, role);
                }
            }
            Event::Eof => return Ok(roles),
            _ => {}
        }
    }
}

fn role_from_name(name: &str) -> Option<Role> {
    let name = name.trim().to_ascii_lowercase();
    if name == "title" {
        return Some(Role::Title);
    }
    let level = name.strip_prefix("heading")?.trim().parse::<u8>().ok()?;
    (1..=6).contains(&level).then_some(Role::Heading(level))
}

/// `w:outlineLvl` counts from 0; 9 is body text.
fn role_from_outline(value: &str) -> Option<Role> {
    let level = value.trim().parse::<u8>().ok()?;
    (level < 6).then_some(Role::Heading(level + 1))
}

#[derive(Default)]
struct Paragraph {
    text: String,
    style: Option<String>,
    outline: Option<Role>,
}

#[derive(Default)]
struct DocumentWalker {
    title: Option<String>,
    blocks: Vec<Block>,
    path: Vec<(u8, String)>,
    section: String,
}

fn parse_document(xml: &str, styles: &HashMap<String, Role>) -> quick_xml::Result<ExtractedDoc> {
    let mut reader = Reader::from_str(xml);
    let mut walker = DocumentWalker::default();
    let mut paragraph: Option<Paragraph> = None;
    let mut paragraph_depth = 0usize;
    let mut table_depth = 0usize;
    let mut in_text = false;
    // Tab stops in paragraph properties are also called `tab`.
    let mut in_properties = false;
    // Fallback content repeats its alternative (text boxes in VML).
    let mut skipped_depth = 0usize;
    loop {
        let event = reader.read_event()?;
        if skipped_depth > 0 {
            match event {
                Event::Start(_) => skipped_depth += 1,
                Event::End(_) => skipped_depth -= 1,
                Event::Eof => break,
                _ => {}
            }
            continue;
        }
        match event {
            Event::Start(element) => match local(&element) {
                "Fallback" | "delText" | "instrText" => skipped_depth = 1,
                "p" => {
                    paragraph_depth += 1;
                    paragraph.get_or_insert_with(Paragraph::default);
                }
                "t" => in_text = true,
                "tbl" => table_depth += 1,
                "pPr" => in_properties = true,
                _ => paragraph_property(paragraph.as_mut(), &element, in_properties),
            },
            Event::Empty(element) => paragraph_property(paragraph.as_mut(), &element, in_properties),
            Event::Text(text) if in_text => {
                if let Some(paragraph) = paragraph.as_mut() {
                    paragraph.text.push_str(&text.xml10_content());
                }
            }
            Event::GeneralRef(reference) if in_text => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    _ => quick_xml::escape::resolve_predefined_entity(&reference).map(str::to_owned),
                };
                if let (Some(paragraph), Some(resolved)) = (paragraph.as_mut(), resolved) {
                    paragraph.text.push_str(&resolved);
                }
            }
            Event::End(element) => match element.local_name().as_ref() {
                "t" => in_text = false,
                "pPr" => in_properties = false,
                "p" => {
                    paragraph_depth = paragraph_depth.saturating_sub(1);
                    if paragraph_depth == 0 {
                        if let Some(finished) = paragraph.take() {
                            walker.paragraph(finished, styles, table_depth > 0);
                        }
                    }
                }
                "tc" => walker.cell_end(),
                "tr" => walker.row_end(),
                "tbl" => {
                    table_depth = table_depth.saturating_sub(1);
                    walker.row_end();
                    walker.section.push('\n');
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    walker.flush();
    Ok(ExtractedDoc { title: walker.title, blocks: walker.blocks, pages: None })
}

/// Paragraph properties, and run content that is an element, not text.
fn paragraph_property(paragraph: Option<&mut Paragraph>, element: &BytesStart<'_>, in_properties: bool) {
    let Some(paragraph) = paragraph else { return };
    match (in_properties, local(element)) {
        (true, "pStyle") => paragraph.style = attr(element, "val"),
        (true, "outlineLvl") => {
            paragraph.outline = attr(element, "val").as_deref().and_then(role_from_outline)
        }
        (false, "tab") => paragraph.text.push('\t'),
        (false, "br" | "cr") => paragraph.text.push('\n'),
        (false, "noBreakHyphen") => paragraph.text.push('-'),
        _ => {}
    }
}

impl DocumentWalker {
    fn paragraph(&mut self, paragraph: Paragraph, styles: &HashMap<String, Role>, in_table: bool) {
        let role = paragraph
            .style
            .as_deref()
            .and_then(|style| styles.get(style).copied().or_else(|| role_from_name(&style_words(style))))
            .or(paragraph.outline);
        if in_table {
            let text = collapse_whitespace(&paragraph.text);
            if !text.is_empty() {
                if !self.section.is_empty() && !self.section.ends_with(['\n', ' ']) {
                    self.section.push(' ');
                }
                self.section.push_str(&text);
            }
            return;
        }
        match role {
            Some(Role::Title) if self.title.is_none() => {
                self.title = Some(collapse_whitespace(&paragraph.text)).filter(|title| !title.is_empty());
            }
            Some(Role::Heading(level)) => {
                let heading = collapse_whitespace(&paragraph.text);
                if heading.is_empty() {
                    return;
                }
                self.flush();
                self.path.retain(|(outer, _)| *outer < level);
                self.path.push((level, heading));
            }
            _ => {
                let text = paragraph.text.trim();
                if !text.is_empty() {
                    self.section.push_str(text);
                    self.section.push_str("\n\n");
                }
            }
        }
    }

    fn cell_end(&mut self) {
        self.section.push_str(" | ");
    }

    fn row_end(&mut self) {
        let kept = self.section.trim_end_matches([' ', '|']).len();
        self.section.truncate(kept);
        if !self.section.is_empty() && !self.section.ends_with('\n') {
            self.section.push('\n');
        }
    }

    fn flush(&mut self) {
        let text = self.section.trim();
        if !text.is_empty() {
            let heading_path = self.path.iter().map(|(_, heading)| heading.clone()).collect();
            self.blocks.push(Block::plain(heading_path, text.to_owned()));
        }
        self.section.clear();
    }
}

/// `Heading1` -> `Heading 1`, so built-in style ids read like style names
/// when `styles.xml` is missing.
fn style_words(id: &str) -> String {
    match id.find(|c: char| c.is_ascii_digit()) {
        Some(at) => format!("{} {}", &id[..at], &id[at..]),
        None => id.to_owned(),
    }
}

fn core_title(xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    let mut in_title = false;
    let mut title = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(element) if local(&element) == "title" => in_title = true,
            Event::Text(text) if in_title => title.push_str(&text.xml10_content()),
            Event::GeneralRef(reference) if in_title => {
                if let Some(resolved) = quick_xml::escape::resolve_predefined_entity(&reference) {
                    title.push_str(resolved);
                }
            }
            Event::End(element) if element.local_name().as_ref() == "title" => {
                return Some(collapse_whitespace(&title)).filter(|title| !title.is_empty());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

fn local<'a>(element: &'a BytesStart<'_>) -> &'a str {
    let name = element.name().0;
    name.rsplit_once(':').map_or(name, |(_, local)| local)
}

/// An attribute by local name: producers differ in namespace prefixes.
fn attr(element: &BytesStart<'_>, name: &str) -> Option<String> {
    element
        .attributes()
        .with_checks(false)
        .flatten()
        .find(|attribute| attribute.key.local_name().as_ref() == name)
        .and_then(|attribute| {
            attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|value| value.into_owned())
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// A DOCX archive with the given parts, as Word lays them out.
    pub(crate) fn docx(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in parts {
            writer.start_file(*name, options).unwrap();
            writer.write_all(content.as_bytes()).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn body(paragraphs: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"
  xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"><w:body>{paragraphs}</w:body></w:document>"#
        )
    }

    fn p(style: Option<&str>, text: &str) -> String {
        let style = style.map(|s| format!(r#"<w:pPr><w:pStyle w:val="{s}"/></w:pPr>"#)).unwrap_or_default();
        format!(r#"<w:p>{style}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>"#)
    }

    const STYLES: &str = r#"<?xml version="1.0"?>
<w:styles xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">
  <w:style w:type="paragraph" w:styleId="berschrift1"><w:name w:val="heading 1"/></w:style>
  <w:style w:type="paragraph" w:styleId="Custom"><w:name w:val="My Section"/><w:pPr><w:outlineLvl w:val="1"/></w:pPr></w:style>
  <w:style w:type="paragraph" w:styleId="Titel"><w:name w:val="Title"/></w:style>
</w:styles>"#;

    fn outline(doc: &ExtractedDoc) -> Vec<(String, String)> {
        doc.blocks.iter().map(|b| (b.heading_path.join(" > "), b.text.clone())).collect()
    }

    #[test]
    fn headings_come_from_paragraph_styles() {
        let paragraphs = [
            p(Some("Title"), "Handbook"),
            p(None, "Preface text."),
            p(Some("Heading1"), "Install"),
            r#"<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr><w:r><w:t>tab stops are no text</w:t></w:r></w:p>"#.to_owned(),
            p(None, "Step &amp; more"),
            r#"<w:p><w:r><w:t>a</w:t><w:tab/><w:t>b</w:t><w:br/><w:t>c</w:t></w:r><w:r><w:delText>gone</w:delText></w:r></w:p>"#.to_owned(),
            p(Some("Heading2"), "Linux"),
            r#"<w:tbl><w:tr><w:tc><w:p><w:r><w:t>k</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>v</w:t></w:r></w:p></w:tc></w:tr><w:tr><w:tc><w:p><w:r><w:t>k2</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>v2</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"#.to_owned(),
            r#"<w:p><w:r><mc:AlternateContent><mc:Choice><w:t>boxed</w:t></mc:Choice><mc:Fallback><w:t>boxed</w:t></mc:Fallback></mc:AlternateContent></w:r></w:p>"#.to_owned(),
            p(Some("Heading1"), "Usage"),
            p(None, "Run it."),
        ];
        let bytes = docx(&[(DOCX_MAIN_PART, &body(&paragraphs.concat()))]);
        let doc = extract(&bytes).unwrap();
        assert_eq!(doc.title.as_deref(), Some("Handbook"));
        let expected = [
            ("", "Preface text."),
            ("Install", "tab stops are no text\n\nStep & more\n\na\tb\nc"),
            ("Install > Linux", "k | v\nk2 | v2\n\nboxed"),
            ("Usage", "Run it."),
        ];
        let expected: Vec<_> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(outline(&doc), expected);
    }

    #[test]
    fn localised_styles_resolve_through_styles_xml() {
        let paragraphs = [
            p(Some("Titel"), "Handbuch"),
            p(Some("berschrift1"), "Kapitel"),
            p(Some("Custom"), "Teil"),
            p(None, "Text."),
        ];
        let core = r#"<cp:coreProperties xmlns:cp="x" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Core Title</dc:title></cp:coreProperties>"#;
        let bytes = docx(&[
            (DOCX_MAIN_PART, &body(&paragraphs.concat())),
            (STYLES_PART, STYLES),
            (CORE_PROPERTIES_PART, core),
        ]);
        let doc = extract(&bytes).unwrap();
        assert_eq!(doc.title.as_deref(), Some("Handbuch"));
        assert_eq!(outline(&doc), vec![("Kapitel > Teil".to_owned(), "Text.".to_owned())]);

        let bytes = docx(&[(DOCX_MAIN_PART, &body(&p(None, "x"))), (CORE_PROPERTIES_PART, core)]);
        assert_eq!(extract(&bytes).unwrap().title.as_deref(), Some("Core Title"));
    }

    #[test]
    fn broken_archives_are_corrupt() {
        let cases: Vec<Vec<u8>> = vec![
            b"PK\x03\x04garbage".to_vec(),
            docx(&[("other.xml", "<a/>")]),
            docx(&[(DOCX_MAIN_PART, "<w:document><w:body><w:p></w:body>")]),
        ];
        for bytes in cases {
            let err = extract(&bytes).unwrap_err();
            assert!(matches!(err, Error::Corrupt { format: "DOCX", .. }), "{err}");
        }
    }
}
