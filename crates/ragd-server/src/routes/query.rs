//! `POST /v1/collections/{collection}/query`: retrieve, widen the hits with
//! their neighbours, pack them into the generator's budget as numbered
//! sources, generate an answer that cites them as `[n]`, and map each cited
//! number back to the chunks it came from. `"stream": true` sends the same
//! as server-sent events: `sources`, then `delta`s, then `done`.

use std::convert::Infallible;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use ragd_core::{GenerationRequest, IndexHit, TokenStream, point_id};
use ragd_generate::prompt::{self, SourceText};
use ragd_retrieve::{ContextPassage, Retrieved};
use serde::Deserialize;
use serde_json::{Value, json};

use super::search::{ModeParam, SearchBody};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, Caller};
use crate::state::AppState;
use crate::wire::HitView;

pub fn router() -> Router<AppState> {
    Router::new().route("/collections/{collection}/query", post(query))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    query: String,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    mode: ModeParam,
    #[serde(default)]
    filter: Value,
    #[serde(default)]
    candidates: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    neighbour_window: Option<u32>,
}

const MAX_ANSWER_TOKENS: u32 = 4096;
const MAX_NEIGHBOUR_WINDOW: u32 = 5;

/// Everything known before the first generated token.
struct Prepared {
    retrieved: Retrieved,
    passages: Vec<ContextPassage>,
    sources_used: usize,
    prompt_tokens: usize,
    expand_ms: f64,
    generation: Option<TokenStream>,
    started: Instant,
}

async fn query(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    AppJson(body): AppJson<QueryBody>,
) -> ApiResult<Response> {
    if body.query.trim().is_empty() {
        return Err(ApiError::invalid("query must not be empty"));
    }
    let max_tokens = body.max_tokens.unwrap_or(state.answer.max_tokens);
    if max_tokens == 0 || max_tokens > MAX_ANSWER_TOKENS {
        return Err(ApiError::invalid(format!("max_tokens must be between 1 and {MAX_ANSWER_TOKENS}")));
    }
    let temperature = body.temperature.unwrap_or(state.answer.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature must be between 0 and 2"));
    }
    let window = body.neighbour_window.unwrap_or(state.retriever.config().neighbour_window);
    if window > MAX_NEIGHBOUR_WINDOW {
        return Err(ApiError::invalid(format!("neighbour_window must be at most {MAX_NEIGHBOUR_WINDOW}")));
    }
    let search = SearchBody {
        query: body.query.clone(),
        top_k: body.top_k,
        mode: body.mode,
        filter: body.filter.clone(),
        candidates: body.candidates,
    };
    let started = Instant::now();
    let retrieved = search.retrieve(&state, &caller, &collection, state.answer.top_k).await?;

    let expand_started = Instant::now();
    let passages = state.retriever.expand(&retrieved.hits, window).await?;
    let expand_ms = expand_started.elapsed().as_secs_f64() * 1e3;

    let generator = state.generator.clone();
    let budget = generator.context_tokens().saturating_sub(max_tokens as usize);
    let sources: Vec<SourceText<'_>> =
        passages.iter().map(|p| SourceText { title: &p.title, text: &p.text }).collect();
    let packed = prompt::pack(&state.answer.prompt, &[], body.query.trim(), &sources, budget, &|t| generator.count_tokens(t));
    // With nothing to ground an answer in, the generator is not asked: a
    // small model would invent one.
    let generation = if packed.sources_used == 0 {
        None
    } else {
        let request = GenerationRequest { messages: packed.messages, max_tokens, temperature, seed: 0 };
        Some(generator.stream(request).await?)
    };
    let prepared = Prepared {
        retrieved,
        passages,
        sources_used: packed.sources_used,
        prompt_tokens: packed.prompt_tokens,
        expand_ms,
        generation,
        started,
    };
    if body.stream {
        Ok(stream_answer(state, prepared).into_response())
    } else {
        Ok(Json(collect_answer(&state, prepared).await?).into_response())
    }
}

async fn collect_answer(state: &AppState, mut prepared: Prepared) -> ApiResult<Value> {
    let generate_started = Instant::now();
    let mut answer = String::new();
    let mut completion_tokens = 0;
    match prepared.generation.take() {
        Some(mut pieces) => {
            while let Some(piece) = pieces.next().await {
                answer.push_str(&piece?);
                completion_tokens += 1;
            }
        }
        None => answer = state.answer.prompt.no_context_answer.clone(),
    }
    let generate_ms = generate_started.elapsed().as_secs_f64() * 1e3;
    let mut body = sources_json(&prepared);
    finish_json(&mut body, &prepared, answer.trim(), completion_tokens, generate_ms);
    Ok(body)
}

fn stream_answer(state: AppState, mut prepared: Prepared) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let events = async_stream::stream! {
        yield Ok(json_event("sources", &sources_json(&prepared)));
        let generate_started = Instant::now();
        let mut answer = String::new();
        let mut completion_tokens = 0;
        match prepared.generation.take() {
            Some(mut pieces) => {
                while let Some(piece) = pieces.next().await {
                    match piece {
                        Ok(text) => {
                            completion_tokens += 1;
                            answer.push_str(&text);
                            yield Ok(json_event("delta", &json!({"text": text})));
                        }
                        Err(error) => {
                            tracing::warn!(error = %error.chain(), "generation failed mid-stream");
                            yield Ok(json_event("error", &json!({"detail": error.message()})));
                            return;
                        }
                    }
                }
            }
            None => {
                answer = state.answer.prompt.no_context_answer.clone();
                yield Ok(json_event("delta", &json!({"text": answer})));
            }
        }
        let generate_ms = generate_started.elapsed().as_secs_f64() * 1e3;
        let mut done = json!({});
        finish_json(&mut done, &prepared, answer.trim(), completion_tokens, generate_ms);
        yield Ok(json_event("done", &done));
    };
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn json_event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

fn chunk_ids(passage: &ContextPassage) -> Vec<String> {
    passage.chunk_indices.iter().map(|&i| point_id(passage.document, passage.version, i).to_string()).collect()
}

/// The numbered sources given to the generator and the hits behind them.
fn sources_json(prepared: &Prepared) -> Value {
    let sources: Vec<Value> = prepared.passages[..prepared.sources_used]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "source": i + 1,
                "document_id": p.document.to_string(),
                "title": p.title,
                "heading_path": p.heading_path,
                "chunk_ids": chunk_ids(p),
                "hit_ranks": p.hit_ranks.iter().map(|r| r + 1).collect::<Vec<_>>(),
                "text": p.text,
            })
        })
        .collect();
    let hits: Vec<HitView> =
        prepared.retrieved.hits.iter().enumerate().map(|(rank, hit): (usize, &IndexHit)| HitView::new(rank, hit)).collect();
    json!({"sources": sources, "hits": hits})
}

/// Adds the answer, the citations it makes, usage and timings.
fn finish_json(body: &mut Value, prepared: &Prepared, answer: &str, completion_tokens: usize, generate_ms: f64) {
    let citations: Vec<Value> = prompt::cited_sources(answer, prepared.sources_used)
        .into_iter()
        .map(|n| {
            let passage = &prepared.passages[n - 1];
            json!({
                "source": n,
                "document_id": passage.document.to_string(),
                "title": passage.title,
                "chunk_ids": chunk_ids(passage),
            })
        })
        .collect();
    let timings = prepared.retrieved.timings;
    body["answer"] = json!(answer);
    body["citations"] = json!(citations);
    body["usage"] = json!({
        "prompt_tokens": prepared.prompt_tokens,
        "completion_tokens": completion_tokens,
        "sources_used": prepared.sources_used,
        "hits": prepared.retrieved.hits.len(),
    });
    body["timings"] = json!({
        "encode_ms": timings.encode_ms,
        "search_ms": timings.search_ms,
        "expand_ms": prepared.expand_ms,
        "generate_ms": generate_ms,
        "total_ms": prepared.started.elapsed().as_secs_f64() * 1e3,
    });
}
