//! Markdown is split at its top-level headings; each section keeps its
//! Markdown source so the chunker can split along lists, code and tables.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::{collapse_whitespace, Block, ExtractedDoc, Syntax};

pub(super) fn extract(source: &str) -> ExtractedDoc {
    // Smart punctuation would rewrite quotes in heading text.
    let options = Options::all() - Options::ENABLE_SMART_PUNCTUATION;
    let mut sections = Sections { source, blocks: Vec::new(), path: Vec::new() };
    let mut title = None;
    let mut front_matter_title = None;
    let mut body_start = 0;
    let mut depth = 0usize;
    let mut heading: Option<(HeadingLevel, String)> = None;
    let mut metadata: Option<String> = None;

    for (event, range) in Parser::new_ext(source, options).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) if depth == 0 => {
                sections.close(body_start, range.start);
                heading = Some((level, String::new()));
                depth += 1;
            }
            Event::End(TagEnd::Heading(_)) if depth == 1 => {
                if let Some((level, text)) = heading.take() {
                    let text = collapse_whitespace(&text);
                    if level == HeadingLevel::H1 && title.is_none() && !text.is_empty() {
                        title = Some(text.clone());
                    }
                    sections.enter(level, text);
                }
                body_start = range.end;
                depth -= 1;
            }
            Event::Start(Tag::MetadataBlock(_)) if depth == 0 => {
                sections.close(body_start, range.start);
                metadata = Some(String::new());
                depth += 1;
            }
            Event::End(TagEnd::MetadataBlock(_)) => {
                front_matter_title = metadata.take().as_deref().and_then(metadata_title);
                body_start = range.end;
                depth = depth.saturating_sub(1);
            }
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(text) | Event::Code(text) | Event::InlineMath(text) => {
                if let Some((_, heading_text)) = heading.as_mut() {
                    heading_text.push_str(&text);
                } else if let Some(metadata) = metadata.as_mut() {
                    metadata.push_str(&text);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some((_, heading_text)) = heading.as_mut() {
                    heading_text.push(' ');
                }
            }
            _ => {}
        }
    }
    sections.close(body_start, source.len());
    ExtractedDoc { title: title.or(front_matter_title), blocks: sections.blocks, pages: None }
}

struct Sections<'a> {
    source: &'a str,
    blocks: Vec<Block>,
    path: Vec<(HeadingLevel, String)>,
}

impl Sections<'_> {
    fn close(&mut self, start: usize, end: usize) {
        let Some(text) = self.source.get(start..end).map(str::trim) else {
            return;
        };
        if text.is_empty() {
            return;
        }
        self.blocks.push(Block {
            heading_path: self.path.iter().map(|(_, heading)| heading.clone()).collect(),
            text: text.to_owned(),
            page: None,
            syntax: Syntax::Markdown,
        });
    }

    fn enter(&mut self, level: HeadingLevel, heading: String) {
        if heading.is_empty() {
            return;
        }
        self.path.retain(|(outer, _)| *outer < level);
        self.path.push((level, heading));
    }
}

/// `title:` of YAML front matter, for documents without an H1.
fn metadata_title(metadata: &str) -> Option<String> {
    metadata.lines().find_map(|line| {
        let value = line.strip_prefix("title:")?.trim().trim_matches(['"', '\'']).trim();
        (!value.is_empty()).then(|| value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::test_support::pairs;

    fn outline(source: &str) -> (Option<String>, Vec<(String, String)>) {
        super::super::test_support::outline(extract(source))
    }

    #[test]
    fn sections_know_their_heading_path() {
        let source = "Intro before any heading.\n\n# Guide\n\nWelcome.\n\n## Install\n\n### Linux\n\nRun `apt install`.\n\n- one\n- two\n\n### macOS *(beta)*\n\nUse brew.\n\n## Configure\n\nEdit the file.\n\n# Appendix\n\nMore.\n";
        let (title, blocks) = outline(source);
        assert_eq!(title.as_deref(), Some("Guide"));
        assert_eq!(
            blocks,
            pairs(&[
                ("", "Intro before any heading."),
                ("Guide", "Welcome."),
                ("Guide > Install > Linux", "Run `apt install`.\n\n- one\n- two"),
                ("Guide > Install > macOS (beta)", "Use brew."),
                ("Guide > Configure", "Edit the file."),
                ("Appendix", "More."),
            ])
        );
    }

    #[test]
    fn edge_cases() {
        // Setext headings, skipped levels, a heading inside a quote (not a
        // section), a `#` inside a code block, front matter.
        let source = "---\ntitle: \"From Front Matter\"\n---\n\nTop\n===\n\n#### Deep\n\n> # quoted\n> text\n\n```\n# not a heading\n```\n\n## Back\n\nx\n";
        let (title, blocks) = outline(source);
        assert_eq!(title.as_deref(), Some("Top"));
        assert_eq!(
            blocks,
            pairs(&[("Top > Deep", "> # quoted\n> text\n\n```\n# not a heading\n```"), ("Top > Back", "x"),])
        );

        let (title, blocks) = outline("---\ntitle: Only Meta\n---\nbody\n");
        assert_eq!(title.as_deref(), Some("Only Meta"));
        assert_eq!(blocks, pairs(&[("", "body")]));

        let (title, blocks) = outline("## Sub only\n\ntext\n\n#\n\nafter empty heading\n");
        assert_eq!(title, None);
        assert_eq!(blocks, pairs(&[("Sub only", "text"), ("Sub only", "after empty heading")]));
    }
}
