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
use ragd_core::IndexHit;
use serde::Deserialize;
use serde_json::{Value, json};

use super::search::{ModeParam, SearchBody};
use crate::error::{ApiResult, Problem};
use crate::extract::{AppJson, Caller, OnBehalfOf};
use crate::rag::{self, Prepared, RagRequest, Sampling};
use crate::state::AppState;
use crate::wire::HitView;

pub fn router() -> Router<AppState> {
    Router::new().route("/collections/{collection}/query", post(query))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryBody {
    #[schema(min_length = 1, pattern = "\\S")]
    query: String,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 1000)]
    top_k: Option<usize>,
    #[serde(default)]
    mode: ModeParam,
    /// As in search.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    filter: Value,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 2000)]
    candidates: Option<usize>,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 10000)]
    rrf_k: Option<u32>,
    /// As in search.
    #[serde(default)]
    rerank: Option<bool>,
    #[serde(default)]
    stream: bool,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 4096)]
    max_tokens: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f32>,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(maximum = 5)]
    neighbour_window: Option<u32>,
    #[serde(default)]
    on_behalf_of: Option<OnBehalfOf>,
}

#[utoipa::path(post, path = "/v1/collections/{collection}/query", tag = "query", params(("collection" = String, Path, description = "collection id or name")), request_body = QueryBody,
    responses((status = 200, description = "the answer with its sources and citations; with `stream` server-sent events \
        `sources`, `delta` and `done` carrying the same fields", content(
            (ref("#/components/schemas/QueryAnswer") = "application/json"),
            (ref("#/components/schemas/QueryEvent") = "text/event-stream"))),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such collection", body = Problem, content_type = "application/problem+json"), (status = 422, description = "well-formed JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn query(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    AppJson(body): AppJson<QueryBody>,
) -> ApiResult<Response> {
    let sampling = Sampling::parse(&state, body.max_tokens, body.temperature, None)?;
    let request = RagRequest {
        collection: &collection,
        search: SearchBody {
            query: body.query,
            top_k: body.top_k,
            mode: body.mode,
            filter: body.filter,
            candidates: body.candidates,
            rrf_k: body.rrf_k,
            on_behalf_of: body.on_behalf_of,
            rerank: body.rerank,
        },
        history: &[],
        instructions: "",
        sampling,
        neighbour_window: body.neighbour_window,
    };
    let prepared = rag::prepare(&state, &caller, request).await?;
    if body.stream {
        Ok(stream_answer(prepared).into_response())
    } else {
        Ok(Json(collect_answer(prepared).await?).into_response())
    }
}

async fn collect_answer(mut prepared: Prepared) -> ApiResult<Value> {
    let generate_started = Instant::now();
    let (answer, completion_tokens) = match prepared.generation.take() {
        Some(pieces) => rag::collect(pieces).await?,
        None => (prepared.no_context_answer.clone(), 0),
    };
    let generate_ms = generate_started.elapsed().as_secs_f64() * 1e3;
    let mut body = sources_json(&prepared);
    finish_json(&mut body, &prepared, answer.trim(), completion_tokens, generate_ms);
    Ok(body)
}

fn stream_answer(mut prepared: Prepared) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
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
                answer = prepared.no_context_answer.clone();
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

/// The numbered sources given to the generator and the hits behind them.
fn sources_json(prepared: &Prepared) -> Value {
    let hits: Vec<HitView> =
        prepared.retrieved.hits.iter().enumerate().map(|(rank, hit): (usize, &IndexHit)| HitView::new(rank, hit)).collect();
    json!({"sources": prepared.sources(), "hits": hits})
}

/// Adds the answer, the citations it makes, usage and timings.
fn finish_json(body: &mut Value, prepared: &Prepared, answer: &str, completion_tokens: usize, generate_ms: f64) {
    let citations: Vec<Value> = prepared.cited(answer).into_iter().map(|n| prepared.citation(n)).collect();
    let timings = prepared.retrieved.timings;
    body["answer"] = json!(answer);
    body["model"] = json!(prepared.model);
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
        "rerank_ms": timings.rerank_ms,
        "expand_ms": prepared.expand_ms,
        "generate_ms": generate_ms,
        "total_ms": prepared.started.elapsed().as_secs_f64() * 1e3,
    });
}
