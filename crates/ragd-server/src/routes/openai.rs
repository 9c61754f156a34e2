//! The OpenAI-compatible face, so that OpenAI clients and tools work against
//! ragd unchanged: `POST /v1/chat/completions`, `GET /v1/models` and
//! `POST /v1/embeddings`.
//!
//! Chat model `rag:<collection>` answers the last user message from that
//! collection with `[n]` citations (earlier turns are conversation history);
//! the generator's own model name chats without retrieval, and so does the
//! name of another GGUF generator (in the registry, or registered here by a
//! `quantize` job), loaded on first use. Grounded answers
//! carry extra top-level `sources` and `citations`, which OpenAI clients keep
//! as unknown fields. Failures stay problem details, except one that happens
//! mid-stream, which is sent as an OpenAI `{"error": ...}` chunk.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures::StreamExt;
use ragd_core::{ChatMessage, ChatRole, ErrorKind, Generator, TokenStream};
use ragd_store::CollectionRecord;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument;

use super::collections::resolve;
use super::search::{ModeParam, SearchBody};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{AppJson, Caller, OnBehalfOf};
use crate::rag::{self, Prepared, RagRequest, Sampling};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/models", get(list_models))
        .route("/models/{model}", get(show_model))
        .route("/embeddings", post(embeddings))
}

const RAG_PREFIX: &str = "rag:";
/// Model names listed in a "model not found" message, at most.
const MAX_NAMES_IN_ERROR: usize = 20;
const MAX_EMBEDDING_INPUTS: usize = 256;
const MAX_EMBEDDING_INPUT_CHARS: usize = 32_768;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChatBody {
    /// `rag:<collection id or name>`, the generator's model name, or
    /// another GGUF generator's.
    model: String,
    #[schema(min_items = 1)]
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 4096)]
    max_tokens: Option<u32>,
    /// Wins over `max_tokens`.
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 4096)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f32>,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    seed: Option<u64>,
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 1)]
    n: Option<u32>,
    /// ragd's own: the end user to answer for, as in `/query`.
    #[serde(default)]
    on_behalf_of: Option<OnBehalfOf>,
    // Accepted because common clients send them by default; they do not
    // change the answer. Anything else unsupported (tools, stop,
    // response_format) is rejected rather than silently ignored.
    #[serde(default, rename = "top_p")]
    #[schema(value_type = Option<serde_json::Value>)]
    _top_p: Option<IgnoredAny>,
    #[serde(default, rename = "presence_penalty")]
    #[schema(value_type = Option<serde_json::Value>)]
    _presence_penalty: Option<IgnoredAny>,
    #[serde(default, rename = "frequency_penalty")]
    #[schema(value_type = Option<serde_json::Value>)]
    _frequency_penalty: Option<IgnoredAny>,
    #[serde(default, rename = "user")]
    #[schema(value_type = Option<serde_json::Value>)]
    _user: Option<IgnoredAny>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    #[schema(pattern = "^(system|developer|user|assistant)$")]
    role: String,
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default, rename = "name")]
    #[schema(value_type = Option<serde_json::Value>)]
    _name: Option<IgnoredAny>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// Only `text` parts are supported.
#[derive(Deserialize, utoipa::ToSchema)]
struct ContentPart {
    #[serde(rename = "type")]
    #[schema(pattern = "^text$")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

fn chat_messages(wire: Vec<WireMessage>) -> ApiResult<Vec<ChatMessage>> {
    if wire.is_empty() {
        return Err(ApiError::invalid("messages must not be empty"));
    }
    wire.into_iter()
        .enumerate()
        .map(|(i, message)| {
            let role = match message.role.as_str() {
                "system" | "developer" => ChatRole::System,
                "user" => ChatRole::User,
                "assistant" => ChatRole::Assistant,
                other => {
                    return Err(ApiError::invalid(format!(
                        "messages[{i}]: role {other:?} is not supported; use system, developer, user or assistant"
                    )));
                }
            };
            let content = match message.content {
                Some(WireContent::Text(text)) => text,
                Some(WireContent::Parts(parts)) => parts
                    .into_iter()
                    .map(|part| match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => Ok(text),
                        (kind, _) => Err(ApiError::invalid(format!(
                            "messages[{i}]: content part of type {kind:?} is not supported; only text is"
                        ))),
                    })
                    .collect::<ApiResult<Vec<_>>>()?
                    .join("\n"),
                None => return Err(ApiError::invalid(format!("messages[{i}] has no content"))),
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// A checked chat request.
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    stream: bool,
    include_usage: bool,
    sampling: Sampling,
    on_behalf_of: Option<OnBehalfOf>,
}

impl ChatRequest {
    fn parse(state: &AppState, body: ChatBody) -> ApiResult<Self> {
        if body.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n must be 1: one choice is generated per request"));
        }
        let messages = chat_messages(body.messages)?;
        let sampling = Sampling::parse(
            state,
            body.max_completion_tokens.or(body.max_tokens),
            body.temperature,
            body.seed,
        )?;
        Ok(Self {
            model: body.model,
            messages,
            stream: body.stream.unwrap_or(false),
            include_usage: body.stream_options.is_some_and(|o| o.include_usage),
            sampling,
            on_behalf_of: body.on_behalf_of,
        })
    }
}

enum Target {
    Grounded(CollectionRecord),
    Chat(Arc<dyn Generator>),
}

/// What `model` names: a collection to answer from, or the generator.
async fn target(state: &AppState, caller: &Caller, model: &str) -> ApiResult<Target> {
    if let Some(collection) = model.strip_prefix(RAG_PREFIX) {
        match resolve(state, &caller.tenant, collection).await {
            Ok(record) => return Ok(Target::Grounded(record)),
            Err(error) if error.0.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    } else if let Some(generator) = state.generator_named(model).await? {
        return Ok(Target::Chat(generator));
    }
    let names: Vec<String> = models(state, caller).await?.into_iter().map(|m| m.id).collect();
    Err(model_not_found(model, &names))
}

fn model_not_found(model: &str, available: &[String]) -> ApiError {
    let mut listed = available.iter().take(MAX_NAMES_IN_ERROR).cloned().collect::<Vec<_>>().join(", ");
    if available.len() > MAX_NAMES_IN_ERROR {
        listed.push_str(&format!(" and {} more", available.len() - MAX_NAMES_IN_ERROR));
    }
    ApiError::new(ErrorKind::NotFound, format!("model {model:?} not found; available: {listed}"))
}

enum AnswerText {
    Generated(TokenStream),
    /// Said without asking the generator.
    Fixed(String),
}

/// An answer under way.
struct Pending {
    text: AnswerText,
    prompt_tokens: usize,
    max_tokens: u32,
    /// What a grounded answer was given to work from.
    grounding: Option<Prepared>,
}

#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatBody,
    responses((status = 200, description = "an OpenAI `chat.completion` (grounded answers add `sources` and `citations`); \
        with `stream` `chat.completion.chunk` server-sent events ending with `data: [DONE]`", content(
            (ref("#/components/schemas/ChatCompletion") = "application/json"),
            (ref("#/components/schemas/ChatCompletionEvent") = "text/event-stream"))),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such model", body = Problem, content_type = "application/problem+json"), (status = 422, description = "well-formed JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<ChatBody>,
) -> ApiResult<Response> {
    let request = ChatRequest::parse(&state, body)?;
    // Checked before any model is chosen, so a key that may not act for
    // users is refused whichever model it names.
    caller.visibility(request.on_behalf_of.as_ref())?;
    let pending = match target(&state, &caller, &request.model).await? {
        Target::Grounded(collection) => {
            grounded(&state, &caller, &collection, request.messages, request.sampling, request.on_behalf_of)
                .await?
        }
        Target::Chat(generator) => plain(generator.as_ref(), request.messages, request.sampling).await?,
    };
    let head = Head {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: chrono::Utc::now().timestamp(),
        model: request.model,
    };
    if request.stream {
        Ok(stream_completion(head, pending, request.include_usage).into_response())
    } else {
        Ok(Json(complete(head, pending).await?).into_response())
    }
}

async fn grounded(
    state: &AppState,
    caller: &Caller,
    collection: &CollectionRecord,
    messages: Vec<ChatMessage>,
    sampling: Sampling,
    on_behalf_of: Option<OnBehalfOf>,
) -> ApiResult<Pending> {
    let Some((question, earlier)) = messages.split_last() else {
        return Err(ApiError::invalid("messages must not be empty"));
    };
    if question.role != ChatRole::User {
        return Err(ApiError::invalid("the last message must be the user's question"));
    }
    // The caller's instructions join the configured ones, which ask for
    // grounded, cited answers; the chat template expects one system message.
    let mut instructions = Vec::new();
    let mut history = Vec::with_capacity(earlier.len());
    for message in earlier {
        if message.role == ChatRole::System {
            instructions.push(message.content.as_str());
        } else {
            history.push(message.clone());
        }
    }
    let instructions = instructions.join("\n\n");
    let request = RagRequest {
        collection: &collection.id.to_string(),
        search: SearchBody {
            query: question.content.clone(),
            top_k: None,
            mode: ModeParam::default(),
            filter: Value::Null,
            candidates: None,
            rrf_k: None,
            on_behalf_of,
            rerank: None,
        },
        history: &history,
        instructions: &instructions,
        sampling,
        neighbour_window: None,
    };
    let mut prepared = rag::prepare(state, caller, request).await?;
    let text = match prepared.generation.take() {
        Some(pieces) => AnswerText::Generated(pieces),
        None => AnswerText::Fixed(prepared.no_context_answer.clone()),
    };
    Ok(Pending {
        text,
        prompt_tokens: prepared.prompt_tokens,
        max_tokens: sampling.max_tokens,
        grounding: Some(prepared),
    })
}

async fn plain(
    generator: &dyn Generator,
    messages: Vec<ChatMessage>,
    sampling: Sampling,
) -> ApiResult<Pending> {
    // The same per-message markup allowance as the grounded prompt's count.
    let prompt_tokens = messages.iter().map(|m| generator.count_tokens(&m.content) + 4).sum();
    let pieces = generator.stream(sampling.request(messages)).await?;
    Ok(Pending {
        text: AnswerText::Generated(pieces),
        prompt_tokens,
        max_tokens: sampling.max_tokens,
        grounding: None,
    })
}

/// What every response and chunk of one completion repeats.
struct Head {
    id: String,
    created: i64,
    model: String,
}

impl Head {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }
}

/// Pieces are counted as tokens: the local generator sends one per token.
fn finish_reason(completion_tokens: usize, max_tokens: u32) -> &'static str {
    if completion_tokens >= max_tokens as usize {
        "length"
    } else {
        "stop"
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// The sources `answer` cites, each with its text.
fn citations(prepared: &Prepared, answer: &str) -> Value {
    json!(prepared.cited(answer).into_iter().map(|n| prepared.source(n)).collect::<Vec<_>>())
}

async fn complete(head: Head, pending: Pending) -> ApiResult<Value> {
    let (content, completion_tokens) = match pending.text {
        AnswerText::Generated(pieces) => rag::collect(pieces).await?,
        AnswerText::Fixed(text) => (text, 0),
    };
    let content = content.trim();
    let mut body = json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": finish_reason(completion_tokens, pending.max_tokens),
        }],
        "usage": usage(pending.prompt_tokens, completion_tokens),
    });
    if let Some(prepared) = &pending.grounding {
        body["sources"] = json!(prepared.sources());
        body["citations"] = citations(prepared, content);
    }
    Ok(body)
}

fn stream_completion(
    head: Head,
    pending: Pending,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let Pending { text, prompt_tokens, max_tokens, grounding } = pending;
    let events = async_stream::stream! {
        let mut first = head.chunk(json!({"role": "assistant", "content": ""}), None);
        if let Some(prepared) = &grounding {
            first["sources"] = json!(prepared.sources());
        }
        yield Ok(data(&first));
        let mut answer = String::new();
        let mut completion_tokens = 0;
        match text {
            AnswerText::Generated(mut pieces) => {
                while let Some(piece) = pieces.next().await {
                    match piece {
                        Ok(piece) => {
                            completion_tokens += 1;
                            answer.push_str(&piece);
                            yield Ok(data(&head.chunk(json!({"content": piece}), None)));
                        }
                        Err(error) => {
                            tracing::warn!(error = %error.chain(), "generation failed mid-stream");
                            yield Ok(data(&json!({"error": {"message": error.message(), "type": "server_error"}})));
                            return;
                        }
                    }
                }
            }
            AnswerText::Fixed(fixed) => {
                yield Ok(data(&head.chunk(json!({"content": fixed}), None)));
                answer = fixed;
            }
        }
        let mut last = head.chunk(json!({}), Some(finish_reason(completion_tokens, max_tokens)));
        if let Some(prepared) = &grounding {
            last["citations"] = citations(prepared, answer.trim());
        }
        yield Ok(data(&last));
        if include_usage {
            let mut totals = head.chunk(json!({}), None);
            totals["choices"] = json!([]);
            totals["usage"] = usage(prompt_tokens, completion_tokens);
            yield Ok(data(&totals));
        }
        yield Ok(Event::default().data("[DONE]"));
    };
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

struct ModelEntry {
    id: String,
    /// Unix seconds; 0 where unknown.
    created: i64,
}

impl ModelEntry {
    fn to_json(&self) -> Value {
        json!({"id": self.id, "object": "model", "created": self.created, "owned_by": "ragd"})
    }
}

/// The generator, the GGUF generators registered here, then one grounded
/// model per collection of the caller.
async fn models(state: &AppState, caller: &Caller) -> ApiResult<Vec<ModelEntry>> {
    let collections = state.store.list_collections(&caller.tenant).await?;
    let mut models: Vec<ModelEntry> =
        state.generator_names().into_iter().map(|id| ModelEntry { id, created: 0 }).collect();
    models.extend(
        collections
            .iter()
            .map(|c| ModelEntry { id: format!("{RAG_PREFIX}{}", c.name), created: c.created_at / 1000 }),
    );
    Ok(models)
}

#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "the generator and one `rag:<collection>` model per collection", body = ref("#/components/schemas/ModelList"))))]
pub(crate) async fn list_models(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let data: Vec<Value> = models(&state, &caller).await?.iter().map(ModelEntry::to_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai", params(("model" = String, Path, description = "a model id from the list")),
    responses((status = 200, description = "the model", body = ref("#/components/schemas/Model")), (status = 404, description = "no such model", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn show_model(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    let models = models(&state, &caller).await?;
    match models.iter().find(|m| m.id == model) {
        Some(entry) => Ok(Json(entry.to_json())),
        None => Err(model_not_found(&model, &models.into_iter().map(|m| m.id).collect::<Vec<_>>())),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddingsBody {
    /// A string or an array of strings; checked by `embedding_inputs`.
    #[schema(schema_with = crate::openapi::embedding_input)]
    input: Value,
    /// The embedder's name.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<EncodingFormat>,
    /// The embedder's dimensions; vectors cannot be shortened.
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    dimensions: Option<usize>,
    #[serde(default, rename = "user")]
    #[schema(value_type = Option<serde_json::Value>)]
    _user: Option<IgnoredAny>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    Float,
    /// Little-endian `f32`s, base64 encoded; the official Python client asks
    /// for this unless told otherwise.
    Base64,
}

fn embedding_inputs(input: Value) -> ApiResult<Vec<String>> {
    let shape =
        || ApiError::invalid("input must be a string or an array of strings; token arrays are not supported");
    let texts = match input {
        Value::String(text) => vec![text],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(shape()),
            })
            .collect::<ApiResult<_>>()?,
        _ => return Err(shape()),
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("input must not be empty"));
    }
    if texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::invalid(format!(
            "input has {} texts; the limit is {MAX_EMBEDDING_INPUTS}",
            texts.len()
        )));
    }
    for (i, text) in texts.iter().enumerate() {
        if text.trim().is_empty() {
            return Err(ApiError::invalid(format!("input[{i}] is empty")));
        }
        let chars = text.chars().count();
        if chars > MAX_EMBEDDING_INPUT_CHARS {
            return Err(ApiError::invalid(format!(
                "input[{i}] is {chars} characters long; the limit is {MAX_EMBEDDING_INPUT_CHARS}"
            )));
        }
    }
    Ok(texts)
}

fn base64_floats(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An estimate, as the embedder's tokenizer is not exposed: a token per four
/// bytes of UTF-8, rounded up.
fn estimated_tokens(texts: &[String]) -> usize {
    texts.iter().map(|t| t.len().div_ceil(4)).sum()
}

#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbeddingsBody,
    responses((status = 200, description = "one embedding per input, in order", body = ref("#/components/schemas/EmbeddingList")),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"), (status = 404, description = "not the embedder's model", body = Problem, content_type = "application/problem+json"), (status = 422, description = "well-formed JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    AppJson(body): AppJson<EmbeddingsBody>,
) -> ApiResult<Json<Value>> {
    let embedder = state.retriever.embedder(&state.embedder_model)?;
    let model = embedder.model().to_owned();
    if body.model.as_ref().is_some_and(|m| *m != model) {
        return Err(model_not_found(body.model.as_deref().unwrap_or_default(), std::slice::from_ref(&model)));
    }
    if body.dimensions.is_some_and(|d| d != embedder.dimensions()) {
        return Err(ApiError::invalid(format!(
            "dimensions must be {}: this model's vectors cannot be shortened",
            embedder.dimensions()
        )));
    }
    let texts = embedding_inputs(body.input)?;
    let tokens = estimated_tokens(&texts);
    let count = texts.len();
    let started = Instant::now();
    // Embedding is CPU-bound model inference: keep it off the async threads.
    let vectors = tokio::task::spawn_blocking(move || embedder.embed_documents(&texts))
        .instrument(tracing::info_span!("embed_inputs", count))
        .await
        .map_err(|join| {
            ApiError(ragd_core::Error::with_source(ErrorKind::Internal, "embedding failed", join))
        })??;
    tracing::info!(count, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "embedded inputs");
    let format = body.encoding_format.unwrap_or(EncodingFormat::Float);
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => json!(base64_floats(vector)),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(value: Value) -> ApiResult<Vec<ChatMessage>> {
        chat_messages(serde_json::from_value(value).expect("wire shape"))
    }

    #[test]
    fn chat_messages_accept_text_in_either_shape() {
        let parsed = messages(json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"},
            {"role": "assistant", "content": "ok"},
        ]))
        .unwrap();
        let expected = [
            ChatMessage::new(ChatRole::System, "be brief"),
            ChatMessage::new(ChatRole::User, "a\nb"),
            ChatMessage::new(ChatRole::Assistant, "ok"),
        ];
        assert_eq!(parsed, expected);
    }

    #[test]
    fn chat_messages_reject_what_cannot_be_sent() {
        let cases = [
            (json!([]), "must not be empty"),
            (json!([{"role": "tool", "content": "x"}]), "role \"tool\" is not supported"),
            (json!([{"role": "user"}]), "has no content"),
            (
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
                "\"image_url\" is not supported",
            ),
        ];
        for (value, expected) in cases {
            let error = messages(value.clone()).unwrap_err();
            assert_eq!(error.0.kind(), ErrorKind::InvalidInput);
            assert!(error.0.message().contains(expected), "{value}: {}", error.0.message());
        }
    }

    #[test]
    fn embedding_inputs_are_bounded() {
        assert_eq!(embedding_inputs(json!("a")).unwrap(), ["a"]);
        assert_eq!(embedding_inputs(json!(["a", "b"])).unwrap(), ["a", "b"]);
        let too_long = "x".repeat(MAX_EMBEDDING_INPUT_CHARS + 1);
        let cases = [
            json!([]),
            json!(""),
            json!(["a", " "]),
            json!([[1, 2]]),
            json!(3),
            json!(vec!["a"; MAX_EMBEDDING_INPUTS + 1]),
            json!([too_long]),
        ];
        for input in cases {
            let error = embedding_inputs(input).unwrap_err();
            assert_eq!(error.0.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn base64_vectors_are_little_endian_f32() {
        // 1.0 is 0x3f800000, -2.0 is 0xc0000000.
        assert_eq!(base64_floats(&[1.0, -2.0]), "AACAPwAAAMA=");
    }

    #[test]
    fn finish_reason_is_length_at_the_limit() {
        assert_eq!(finish_reason(3, 4), "stop");
        assert_eq!(finish_reason(4, 4), "length");
    }

    #[test]
    fn model_not_found_lists_a_bounded_number_of_names() {
        let names: Vec<String> = (0..25).map(|i| format!("rag:c{i}")).collect();
        let error = model_not_found("gpt-x", &names);
        assert_eq!(error.0.kind(), ErrorKind::NotFound);
        let message = error.0.message();
        assert!(
            message.contains("rag:c19") && !message.contains("rag:c20") && message.ends_with("and 5 more"),
            "{message}"
        );
    }
}
