//! The grounded answer pipeline shared by `/query` and the OpenAI-compatible
//! `/chat/completions`: retrieve, widen the hits with their neighbours, pack
//! them into the generator's budget as numbered sources, start generation,
//! and map the `[n]` an answer cites back to the chunks behind them.

use std::time::Instant;

use futures::StreamExt;
use ragd_core::{ChatMessage, ChatRole, GenerationRequest, TokenStream, point_id};
use ragd_generate::prompt::{self, SourceText};
use ragd_retrieve::{ContextPassage, Retrieved};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::extract::Caller;
use crate::routes::collections::resolve;
use crate::routes::search::SearchBody;
use crate::settings::CollectionSettings;
use crate::state::AppState;

pub const MAX_ANSWER_TOKENS: u32 = 4096;
pub const MAX_NEIGHBOUR_WINDOW: u32 = 5;

/// How an answer is generated: the request's numbers, or the configured
/// defaults, checked against their limits.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub max_tokens: u32,
    pub temperature: f32,
    pub seed: u64,
}

impl Sampling {
    pub fn parse(state: &AppState, max_tokens: Option<u32>, temperature: Option<f32>, seed: Option<u64>) -> ApiResult<Self> {
        let max_tokens = max_tokens.unwrap_or(state.answer.max_tokens);
        if max_tokens == 0 || max_tokens > MAX_ANSWER_TOKENS {
            return Err(ApiError::invalid(format!("max_tokens must be between 1 and {MAX_ANSWER_TOKENS}")));
        }
        let temperature = temperature.unwrap_or(state.answer.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid("temperature must be between 0 and 2"));
        }
        Ok(Self { max_tokens, temperature, seed: seed.unwrap_or(0) })
    }

    pub fn request(&self, messages: Vec<ChatMessage>) -> GenerationRequest {
        GenerationRequest { messages, max_tokens: self.max_tokens, temperature: self.temperature, seed: self.seed }
    }
}

pub struct RagRequest<'a> {
    /// The collection's id or name.
    pub collection: &'a str,
    /// The question, and how to search for it.
    pub search: SearchBody,
    /// Earlier turns of a conversation, oldest first.
    pub history: &'a [ChatMessage],
    /// The caller's own instructions, added to the system message.
    pub instructions: &'a str,
    pub sampling: Sampling,
    pub neighbour_window: Option<u32>,
}

/// Everything known before the first generated token.
pub struct Prepared {
    /// The generator that answers.
    pub model: String,
    pub retrieved: Retrieved,
    pub passages: Vec<ContextPassage>,
    pub sources_used: usize,
    pub prompt_tokens: usize,
    pub expand_ms: f64,
    /// `None` when nothing was found to ground an answer in: the generator
    /// is not asked, as a small model would invent one.
    pub generation: Option<TokenStream>,
    /// What to answer instead when `generation` is `None`.
    pub no_context_answer: String,
    pub started: Instant,
}

pub async fn prepare(state: &AppState, caller: &Caller, request: RagRequest<'_>) -> ApiResult<Prepared> {
    let question = request.search.query.trim().to_owned();
    if question.is_empty() {
        return Err(ApiError::invalid("query must not be empty"));
    }
    let settings = CollectionSettings::of(&resolve(state, &caller.tenant, request.collection).await?)?;
    let mut prompt = settings.prompt.apply(&state.answer.prompt);
    if !request.instructions.is_empty() {
        prompt.system.push_str("\n\n");
        prompt.system.push_str(request.instructions);
    }
    let window = request
        .neighbour_window
        .or(settings.retrieval.neighbour_window)
        .unwrap_or(state.retriever.config().neighbour_window);
    if window > MAX_NEIGHBOUR_WINDOW {
        return Err(ApiError::invalid(format!("neighbour_window must be at most {MAX_NEIGHBOUR_WINDOW}")));
    }
    let started = Instant::now();
    let search = SearchBody {
        query: with_earlier_questions(
            request.history,
            &question,
            state.answer.history_turns_in_query,
            state.retriever.config().max_query_chars,
        ),
        ..request.search
    };
    let retrieved = search.retrieve(state, caller, request.collection, state.answer.top_k).await?;

    let expand_started = Instant::now();
    let passages = state.retriever.expand(retrieved.target, &retrieved.hits, window).await?;
    let expand_ms = expand_started.elapsed().as_secs_f64() * 1e3;

    let generator = match &settings.generation.model {
        None => state.generator.clone(),
        Some(model) => state.generator_named(model).await?.ok_or_else(|| {
            ApiError(ragd_core::Error::new(
                ragd_core::ErrorKind::Conflict,
                format!(
                    "the collection's settings.generation.model {model:?} is no longer registered; \
                     change the setting or register the model again"
                ),
            ))
        })?,
    };
    let count = |text: &str| generator.count_tokens(text);
    let budget = generator.context_tokens().saturating_sub(request.sampling.max_tokens as usize);
    let history = recent_history(request.history, budget / 2, &count);
    let sources: Vec<SourceText<'_>> = passages.iter().map(|p| SourceText { title: &p.title, text: &p.text }).collect();
    let packed = prompt::pack(&prompt, history, &question, &sources, budget, &count);
    let generation = if packed.sources_used == 0 {
        None
    } else {
        Some(generator.stream(request.sampling.request(packed.messages)).await?)
    };
    Ok(Prepared {
        model: generator.model().to_owned(),
        retrieved,
        passages,
        sources_used: packed.sources_used,
        prompt_tokens: packed.prompt_tokens,
        expand_ms,
        generation,
        no_context_answer: prompt.no_context_answer.clone(),
        started,
    })
}

/// What a chat turn is searched with: the question, after up to `turns`
/// earlier user questions (most recent first in priority), as long as the
/// whole stays within `max_chars`. A follow-up ("and its side effects?")
/// names too little to be found alone.
fn with_earlier_questions(history: &[ChatMessage], question: &str, turns: usize, max_chars: usize) -> String {
    let mut parts = vec![question.to_owned()];
    let mut chars = question.chars().count();
    for earlier in history.iter().rev().filter(|m| m.role == ChatRole::User).take(turns) {
        let text = earlier.content.trim();
        chars += text.chars().count() + 1;
        if chars > max_chars {
            break;
        }
        parts.push(text.to_owned());
    }
    parts.reverse();
    parts.join("\n")
}

/// The latest turns that fit in `budget` tokens: a long conversation must
/// not crowd the sources out of the prompt.
fn recent_history<'a>(history: &'a [ChatMessage], budget: usize, count_tokens: &dyn Fn(&str) -> usize) -> &'a [ChatMessage] {
    let mut used = 0;
    let mut start = history.len();
    for (i, message) in history.iter().enumerate().rev() {
        // The same per-message markup allowance as `prompt::pack`.
        used += count_tokens(&message.content) + 4;
        if used > budget {
            break;
        }
        start = i;
    }
    &history[start..]
}

/// Drains a generation into its text and the number of pieces it came in.
pub async fn collect(mut pieces: TokenStream) -> ApiResult<(String, usize)> {
    let mut text = String::new();
    let mut count = 0;
    while let Some(piece) = pieces.next().await {
        text.push_str(&piece?);
        count += 1;
    }
    Ok((text, count))
}

pub fn chunk_ids(passage: &ContextPassage) -> Vec<String> {
    passage.chunk_indices.iter().map(|&i| point_id(passage.document, passage.version, i).to_string()).collect()
}

impl Prepared {
    /// Source `n` as given to the generator, with the hits behind it.
    pub fn source(&self, n: usize) -> Value {
        let p = &self.passages[n - 1];
        json!({
            "source": n,
            "document_id": p.document.to_string(),
            "title": p.title,
            "heading_path": p.heading_path,
            "page": p.page,
            "chunk_ids": chunk_ids(p),
            "hit_ranks": p.hit_ranks.iter().map(|r| r + 1).collect::<Vec<_>>(),
            "text": p.text,
        })
    }

    pub fn sources(&self) -> Vec<Value> {
        (1..=self.sources_used).map(|n| self.source(n)).collect()
    }

    /// The source numbers `answer` cites, in order of first appearance.
    pub fn cited(&self, answer: &str) -> Vec<usize> {
        prompt::cited_sources(answer, self.sources_used)
    }

    /// A cited source, without its text.
    pub fn citation(&self, n: usize) -> Value {
        let p = &self.passages[n - 1];
        json!({
            "source": n,
            "document_id": p.document.to_string(),
            "title": p.title,
            "chunk_ids": chunk_ids(p),
        })
    }
}

#[cfg(test)]
mod tests {
    use ragd_core::ChatRole;

    use super::*;

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    #[test]
    fn history_keeps_the_latest_turns_that_fit() {
        let history = [
            ChatMessage::new(ChatRole::User, "one two three"),
            ChatMessage::new(ChatRole::Assistant, "four five"),
            ChatMessage::new(ChatRole::User, "six"),
        ];
        // Each message costs its words plus 4.
        let cases: &[(usize, usize)] = &[(100, 3), (18, 3), (17, 2), (11, 2), (10, 1), (5, 1), (4, 0), (0, 0)];
        for &(budget, kept) in cases {
            let recent = recent_history(&history, budget, &words);
            assert_eq!(recent.len(), kept, "budget {budget}");
            assert_eq!(recent, &history[3 - kept..]);
        }
    }
}
