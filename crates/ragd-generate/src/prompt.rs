//! Grounded prompts: numbered sources packed into the generator's token
//! budget, and the citation markers read back out of the answer.

use ragd_core::{ChatMessage, ChatRole};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// The system message; it must ask for `[n]` citations.
    pub system: String,
    /// The user message; `{sources}` and `{question}` are replaced.
    pub user: String,
    /// What is answered, without calling the generator, when retrieval
    /// finds nothing to ground an answer in.
    pub no_context_answer: String,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            system: "You are a careful assistant. Answer the question using only the numbered sources. \
                     After each fact, cite its source number in square brackets, like [1]. \
                     If the sources do not contain the answer, say that you do not know."
                .to_owned(),
            // The closing line keeps small models from answering with a bare "[1]".
            user: "Sources:\n{sources}\n\nQuestion: {question}\nAnswer in full sentences and cite the sources you use, like [1]."
                .to_owned(),
            no_context_answer: "I could not find anything about this in the documents.".to_owned(),
        }
    }
}

/// A passage offered to the generator, in rank order.
#[derive(Debug, Clone, Copy)]
pub struct SourceText<'a> {
    pub title: &'a str,
    pub text: &'a str,
}

#[derive(Debug, Clone)]
pub struct PackedPrompt {
    pub messages: Vec<ChatMessage>,
    /// How many of the offered passages fit, from the first; source `n` in
    /// the prompt is passage `n - 1`.
    pub sources_used: usize,
    pub prompt_tokens: usize,
}

/// Packs whole passages, best first, until the next one would not fit in
/// `budget` tokens; a passage is never cut. At least the question is sent.
pub fn pack(
    config: &PromptConfig,
    history: &[ChatMessage],
    question: &str,
    passages: &[SourceText<'_>],
    budget: usize,
    count_tokens: &dyn Fn(&str) -> usize,
) -> PackedPrompt {
    let render = |sources: &str| {
        let mut messages = vec![ChatMessage::new(ChatRole::System, config.system.clone())];
        messages.extend(history.iter().cloned());
        let user = config.user.replace("{question}", question).replace("{sources}", sources);
        messages.push(ChatMessage::new(ChatRole::User, user));
        messages
    };
    let overhead = |messages: &[ChatMessage]| -> usize {
        // Chat templates add a few tokens of markup per message.
        messages.iter().map(|m| count_tokens(&m.content) + 4).sum()
    };

    let mut sources = String::new();
    let mut used = 0;
    let mut best = render("");
    let mut tokens = overhead(&best);
    for (i, passage) in passages.iter().enumerate() {
        let mut candidate = sources.clone();
        if !candidate.is_empty() {
            candidate.push_str("\n\n");
        }
        candidate.push_str(&format!("[{}] {}\n{}", i + 1, passage.title, passage.text.trim()));
        let messages = render(&candidate);
        let cost = overhead(&messages);
        if cost > budget {
            break;
        }
        sources = candidate;
        used = i + 1;
        best = messages;
        tokens = cost;
    }
    PackedPrompt { messages: best, sources_used: used, prompt_tokens: tokens }
}

/// The source numbers cited in `answer` as `[n]`, `[n, m]` or `[n][m]`, in
/// order of first appearance, limited to `1..=max`.
pub fn cited_sources(answer: &str, max: usize) -> Vec<usize> {
    let mut cited = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inside = &rest[..close];
        let numbers: Option<Vec<usize>> =
            inside.split(',').map(|part| part.trim().parse::<usize>().ok()).collect();
        for n in numbers.unwrap_or_default() {
            if (1..=max).contains(&n) && !cited.contains(&n) {
                cited.push(n);
            }
        }
        rest = &rest[close + 1..];
    }
    cited
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    #[test]
    fn citations_are_parsed_in_order_and_bounded() {
        let cases: &[(&str, usize, &[usize])] = &[
            ("Paris [1].", 3, &[1]),
            ("A [2][1] and B [1, 3].", 3, &[2, 1, 3]),
            ("Out of range [4] and [0].", 3, &[]),
            ("Not a citation [see above] or [1a].", 3, &[]),
            ("Unclosed [2", 3, &[]),
        ];
        for (answer, max, expected) in cases {
            assert_eq!(cited_sources(answer, *max), *expected, "{answer}");
        }
    }

    #[test]
    fn passages_are_packed_whole_until_the_budget() {
        let config = PromptConfig::default();
        let passages = [
            SourceText { title: "a", text: "one two three" },
            SourceText { title: "b", text: "four five six" },
            SourceText { title: "c", text: "seven eight nine" },
        ];
        let all = pack(&config, &[], "why?", &passages, 10_000, &words);
        assert_eq!(all.sources_used, 3);
        let user = &all.messages.last().unwrap().content;
        assert!(user.contains("[1] a\none two three") && user.contains("[3] c"));

        let budget = all.prompt_tokens - 1;
        let fewer = pack(&config, &[], "why?", &passages, budget, &words);
        assert_eq!(fewer.sources_used, 2);
        assert!(fewer.prompt_tokens <= budget);
        assert!(!fewer.messages.last().unwrap().content.contains("seven"), "a passage is never cut");
    }
}
