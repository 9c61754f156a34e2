//! HTML is rendered to plain text the way a reader sees the main content:
//! page chrome and scripts are dropped, headings become the heading path,
//! block elements become line breaks.

use scraper::{ElementRef, Html, Node};

use super::{collapse_whitespace, Block, ExtractedDoc};

/// Never content: code, styling, embedded media and page chrome.
const DROPPED: &[&str] = &[
    "head", "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "svg", "math",
    "iframe", "canvas", "object", "embed", "button", "select", "dialog",
];
/// Inside the main content, `header` and `footer` hold the article's own
/// heading and byline, not the site's chrome.
const CONTENT_ROOTS: &[&str] = &["main", "article"];
const KEPT_IN_CONTENT: &[&str] = &["header", "footer"];
/// Elements that end a paragraph.
const PARAGRAPHS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "blockquote",
    "pre",
    "ul",
    "ol",
    "dl",
    "table",
    "figure",
    "figcaption",
    "form",
    "fieldset",
    "details",
    "summary",
    "address",
    "hr",
    "header",
    "footer",
];
/// Elements that end a line.
const LINES: &[&str] = &["br", "li", "dt", "dd", "tr", "caption", "legend", "option"];

pub(super) fn extract(source: &str) -> ExtractedDoc {
    let html = Html::parse_document(source);
    let root = html.root_element();
    let mut walker = Walker::default();
    walker.walk(root, false, false);
    walker.flush();
    let title = document_title(root).or(walker.first_h1);
    ExtractedDoc { title, blocks: walker.blocks, pages: None }
}

fn document_title(root: ElementRef<'_>) -> Option<String> {
    let head = root.child_elements().find(|element| element.value().name() == "head")?;
    let title = head.descendent_elements().find(|element| element.value().name() == "title")?;
    Some(collapse_whitespace(&title.text().collect::<String>())).filter(|title| !title.is_empty())
}

#[derive(Default)]
struct Walker {
    blocks: Vec<Block>,
    path: Vec<(u8, String)>,
    text: String,
    pending_space: bool,
    first_h1: Option<String>,
}

impl Walker {
    fn walk(&mut self, element: ElementRef<'_>, in_content: bool, in_pre: bool) {
        for child in element.children() {
            match child.value() {
                Node::Text(text) => self.push_text(text, in_pre),
                Node::Element(_) => {
                    if let Some(child) = ElementRef::wrap(child) {
                        self.element(child, in_content, in_pre);
                    }
                }
                _ => {}
            }
        }
    }

    fn element(&mut self, element: ElementRef<'_>, in_content: bool, in_pre: bool) {
        let value = element.value();
        let name = value.name();
        let dropped = DROPPED.contains(&name) && !(in_content && KEPT_IN_CONTENT.contains(&name));
        if dropped || value.attr("hidden").is_some() || value.attr("aria-hidden") == Some("true") {
            return;
        }
        if let Some(level) = heading_level(name) {
            self.heading(level, element);
            return;
        }
        let breaks = if PARAGRAPHS.contains(&name) {
            2
        } else if LINES.contains(&name) {
            1
        } else {
            0
        };
        self.line_break(breaks);
        if matches!(name, "td" | "th") && !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text.push_str(" | ");
            self.pending_space = false;
        }
        self.walk(element, in_content || CONTENT_ROOTS.contains(&name), in_pre || name == "pre");
        self.line_break(breaks);
    }

    fn heading(&mut self, level: u8, element: ElementRef<'_>) {
        self.flush();
        let text = collapse_whitespace(&element.text().collect::<String>());
        if text.is_empty() {
            return;
        }
        if level == 1 && self.first_h1.is_none() {
            self.first_h1 = Some(text.clone());
        }
        self.path.retain(|(outer, _)| *outer < level);
        self.path.push((level, text));
    }

    fn push_text(&mut self, text: &str, in_pre: bool) {
        if in_pre {
            self.text.push_str(text);
            self.pending_space = false;
            return;
        }
        if text.starts_with(char::is_whitespace) {
            self.pending_space = true;
        }
        for word in text.split_whitespace() {
            if self.pending_space && !self.text.is_empty() && !self.text.ends_with(['\n', ' ']) {
                self.text.push(' ');
            }
            self.text.push_str(word);
            self.pending_space = true;
        }
        self.pending_space = text.ends_with(char::is_whitespace);
    }

    /// Ends the current line so that `count` newlines separate it from what
    /// follows; nothing at the start of a block.
    fn line_break(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        self.pending_space = false;
        let kept = self.text.trim_end_matches([' ', '\t']).len();
        self.text.truncate(kept);
        if self.text.is_empty() {
            return;
        }
        let present = self.text.len() - self.text.trim_end_matches('\n').len();
        for _ in present..count {
            self.text.push('\n');
        }
    }

    fn flush(&mut self) {
        let text = self.text.trim();
        if !text.is_empty() {
            let heading_path = self.path.iter().map(|(_, heading)| heading.clone()).collect();
            self.blocks.push(Block::plain(heading_path, text.to_owned()));
        }
        self.text.clear();
        self.pending_space = false;
    }
}

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::test_support::pairs;

    fn outline(source: &str) -> (Option<String>, Vec<(String, String)>) {
        super::super::test_support::outline(extract(source))
    }

    #[test]
    fn drops_boilerplate_and_keeps_headings() {
        let source = r#"<!DOCTYPE html>
<html><head><title> The  Page </title><style>p { color: red }</style><script>var x = 1;</script></head>
<body>
  <header><a href="/">Home</a> <nav>Menu Links</nav></header>
  <aside>Sidebar ad</aside>
  <main>
    <article>
      <header><h1>Guide</h1><p>by someone</p></header>
      <p>Intro   text with <b>bold</b>, <a href="x">a link</a>
         and a line<br>break.</p>
      <h2>Install</h2>
      <ul><li>first</li><li>second <em>item</em></li></ul>
      <h3>Linux</h3>
      <table><tr><th>Distro</th><th>Command</th></tr><tr><td>Debian</td><td>apt</td></tr></table>
      <pre>fn main() {
    run();
}</pre>
      <div hidden>hidden text</div><span aria-hidden="true">icon</span>
      <noscript>enable js</noscript><template><p>tpl</p></template>
      <h2>Configure</h2><p>Edit it.</p>
    </article>
  </main>
  <footer>Copyright footer</footer>
  <script>trackUser();</script>
</body></html>"#;
        let (title, blocks) = outline(source);
        assert_eq!(title.as_deref(), Some("The Page"));
        assert_eq!(
            blocks,
            pairs(&[
                ("Guide", "by someone\n\nIntro text with bold, a link and a line\nbreak."),
                ("Guide > Install", "first\nsecond item"),
                ("Guide > Install > Linux", "Distro | Command\nDebian | apt\n\nfn main() {\n    run();\n}"),
                ("Guide > Configure", "Edit it."),
            ])
        );
    }

    #[test]
    fn title_falls_back_to_first_h1() {
        let (title, blocks) =
            outline("<p>lead</p><h2>Sub</h2><p>a</p><h1>Main</h1><p>b</p><svg><title>icon</title></svg>");
        assert_eq!(title.as_deref(), Some("Main"));
        assert_eq!(blocks, pairs(&[("", "lead"), ("Sub", "a"), ("Main", "b")]));
    }
}
