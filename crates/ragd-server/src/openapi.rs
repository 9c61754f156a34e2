//! The OpenAPI 3.1 document of the whole API, served at `/openapi.json`.
//! Handlers carry their own `#[utoipa::path]`; bodies that handlers build
//! with `json!` (lists, search results, the OpenAI shapes) are described
//! here as named schemas, so the document says what the wire carries.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{ResponseBuilder, Responses};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ragd",
        description = "Retrieval-augmented generation server: collections of documents, hybrid search, \
            grounded answers with citations, and an OpenAI-compatible face. Every error is an RFC 9457 \
            problem-details body (`application/problem+json`) with a stable `type`."
    ),
    paths(
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        serve,
        crate::routes::keys::create,
        crate::routes::keys::list,
        crate::routes::keys::revoke,
        crate::routes::audit::list,
        crate::routes::collections::create,
        crate::routes::collections::list,
        crate::routes::collections::show,
        crate::routes::collections::update,
        crate::routes::collections::remove,
        crate::routes::documents::add,
        crate::routes::documents::list,
        crate::routes::documents::show,
        crate::routes::documents::remove,
        crate::routes::batches::show,
        crate::routes::jobs::submit,
        crate::routes::jobs::list,
        crate::routes::jobs::show,
        crate::routes::jobs::cancel,
        crate::routes::search::search,
        crate::routes::query::query,
        crate::routes::openai::chat_completions,
        crate::routes::openai::list_models,
        crate::routes::openai::show_model,
        crate::routes::openai::embeddings,
    ),
    components(schemas(
        crate::error::Problem,
        crate::wire::BulkAddView,
        crate::wire::HitView,
        crate::wire::ScoresView,
        crate::wire::KeyView,
        crate::wire::AuditView,
        crate::wire::RerankView
    )),
    modifiers(&Described),
    tags(
        (name = "health", description = "liveness, readiness and this document, without authentication"),
        (name = "keys", description = "API keys and the audit log, for admin keys"),
        (name = "collections", description = "collections and their settings"),
        (name = "documents", description = "adding, listing and deleting documents; upload batches"),
        (name = "search", description = "retrieval without generation"),
        (name = "query", description = "grounded answers with citations"),
        (name = "jobs", description = "long-running jobs: fine-tuning, with progress, metrics and cancellation"),
        (name = "openai", description = "OpenAI-compatible chat completions, models and embeddings"),
    )
)]
struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(serve))
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "this document", content_type = "application/json", body = Object)))]
async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document(&state).to_string())
}

/// The document with the limits this server was configured with.
fn document(state: &AppState) -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let dimensions = &mut document["components"]["schemas"]["EmbeddingsBody"]["properties"]["dimensions"];
    dimensions["minimum"] = json!(state.dimensions);
    dimensions["maximum"] = json!(state.dimensions);
    for paged in ["/v1/collections/{collection}/documents", "/v1/audit"] {
        let parameters = &mut document["paths"][paged]["get"]["parameters"];
        if let Some(limit) = parameters.as_array_mut().and_then(|ps| ps.iter_mut().find(|p| p["name"] == "limit")) {
            limit["schema"]["maximum"] = json!(state.server.max_page_size);
        }
    }
    document
}

/// Adds the bearer scheme (required everywhere except where an operation
/// says `security(())`), the answers every authenticated operation can
/// give (no or a bad key, a role too low, the key's rate limit), and the
/// schemas written out below.
struct Described;

impl Modify for Described {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("an API key")).build(),
            ),
        );
        for (name, schema) in named_schemas() {
            components.schemas.insert(name.to_owned(), schema_from(schema));
        }
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.is_none() {
                    add_auth_responses(&mut operation.responses);
                }
            }
        }
    }
}

fn add_auth_responses(responses: &mut Responses) {
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/problem+json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
    };
    let answers = [
        ("401", problem("no API key, or an unknown, revoked or expired one").build()),
        ("403", problem("the key's role or tenant does not allow this").build()),
        (
            "429",
            problem("the key's rate limit is spent")
                .header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("seconds until a request is accepted again"))
                        .build(),
                )
                .build(),
        ),
    ];
    for (status, response) in answers {
        responses.responses.entry(status.to_owned()).or_insert(RefOr::T(response));
    }
}

fn schema_from(value: Value) -> RefOr<Schema> {
    serde_json::from_value(value).expect("the schemas written here are valid")
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn named_schemas() -> Vec<(&'static str, Value)> {
    let number = json!({"type": "number"});
    vec![
        (
            "Health",
            json!({
                "type": "object", "required": ["status"],
                "properties": {"status": {"type": "string", "enum": ["ok"]}},
            }),
        ),
        (
            "Readiness",
            json!({
                "type": "object", "required": ["status", "pending_jobs"],
                "properties": {
                    "status": {"type": "string", "enum": ["ready"]},
                    "pending_jobs": {"type": "integer", "description": "ingest jobs queued or running"},
                },
            }),
        ),
        (
            "KeyList",
            json!({
                "type": "object", "required": ["keys"],
                "properties": {"keys": {"type": "array", "items": reference("KeyView")}},
            }),
        ),
        (
            "CreatedKey",
            json!({
                "allOf": [reference("KeyView"), {
                    "type": "object", "required": ["key"],
                    "properties": {"key": {"type": "string", "description": "the bearer token, `ragd_<id>_<secret>`; shown only here"}},
                }],
            }),
        ),
        (
            "AuditList",
            json!({
                "type": "object", "required": ["entries", "next_before"],
                "properties": {
                    "entries": {"type": "array", "items": reference("AuditView")},
                    "next_before": {"type": ["string", "null"], "description": "the `before` of the next page; null on the last"},
                },
            }),
        ),
        (
            "CollectionList",
            json!({
                "type": "object", "required": ["collections"],
                "properties": {"collections": {"type": "array", "items": reference("CollectionView")}},
            }),
        ),
        (
            "JobList",
            json!({
                "type": "object", "required": ["jobs", "next_after"],
                "properties": {
                    "jobs": {"type": "array", "items": reference("JobView")},
                    "next_after": {"type": ["string", "null"], "description": "the `after` of the next page; null on the last"},
                },
            }),
        ),
        (
            "DocumentList",
            json!({
                "type": "object", "required": ["documents", "next_after"],
                "properties": {
                    "documents": {"type": "array", "items": reference("DocumentView")},
                    "next_after": {"type": ["string", "null"], "description": "the `after` of the next page; null on the last"},
                },
            }),
        ),
        (
            "SearchResult",
            json!({
                "type": "object", "required": ["mode", "hits", "rerank", "timings"],
                "properties": {
                    "mode": reference("ModeParam"),
                    "hits": {"type": "array", "items": reference("HitView")},
                    "rerank": reference("RerankView"),
                    "timings": {
                        "type": "object", "required": ["encode_ms", "search_ms", "rerank_ms"],
                        "properties": {
                            "encode_ms": number, "search_ms": number,
                            "rerank_ms": {"type": ["number", "null"], "description": "null when the rerank stage was skipped"},
                        },
                    },
                },
            }),
        ),
        (
            "FileUpload",
            json!({
                "type": "object",
                "description": "Files (documents, or ZIP/tar archives of them); `text_field`, `title_field`, \
                    `metadata` and `acl` apply to the files after them. A `.csv` or `.jsonl` file is one document per row.",
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "text_field": {"type": "string", "minLength": 1, "maxLength": 64, "description": "the column holding a row's text (default `text`)"},
                    "title_field": {"type": "string", "minLength": 1, "maxLength": 64, "description": "the column holding a row's title (default `title`)"},
                    "metadata": {"type": "string", "description": "a JSON object of metadata for the files"},
                    "acl": {"type": "string", "description": "a JSON array of the principals (users, groups) who may see the files; absent: the whole tenant"},
                },
            }),
        ),
        (
            "Archive",
            json!({"type": "string", "format": "binary", "description": "a ZIP, tar or gzipped tar archive"}),
        ),
        (
            "FileBatch",
            json!({
                "type": "object", "required": ["batch_id", "documents", "rejected", "rejected_count"],
                "properties": {
                    "batch_id": {"type": "string"},
                    "documents": {"type": "array", "items": reference("DocumentView")},
                    "rejected_count": {"type": "integer", "minimum": 0},
                    "rejected": {
                        "type": "array",
                        "description":
                            "the first 1,000 rejected files or rows; `rejected_count` counts them all",
                        "items": {
                            "type": "object", "required": ["file", "reason"],
                            "properties": {"file": {"type": "string"}, "reason": {"type": "string"}},
                        },
                    },
                },
            }),
        ),
        (
            "DocumentsAccepted",
            json!({
                "anyOf": [reference("DocumentView"), reference("BulkAddView"), reference("FileBatch")],
            }),
        ),
        (
            "Source",
            json!({
                "type": "object",
                "description": "A numbered source given to the generator: one or more neighbouring chunks of a document",
                "required": ["source", "document_id", "title", "heading_path", "page", "chunk_ids", "hit_ranks", "text"],
                "properties": {
                    "source": {"type": "integer", "description": "the `n` the answer cites as `[n]`"},
                    "document_id": {"type": "string"},
                    "title": {"type": "string"},
                    "heading_path": {"type": "string"},
                    "page": {"type": ["integer", "null"]},
                    "chunk_ids": {"type": "array", "items": {"type": "string"}},
                    "hit_ranks": {"type": "array", "items": {"type": "integer"}, "description": "the ranks of the hits it holds"},
                    "text": {"type": "string"},
                },
            }),
        ),
        (
            "Citation",
            json!({
                "type": "object",
                "description": "A source the answer cites, without its text",
                "required": ["source", "document_id", "title", "chunk_ids"],
                "properties": {
                    "source": {"type": "integer"},
                    "document_id": {"type": "string"},
                    "title": {"type": "string"},
                    "chunk_ids": {"type": "array", "items": {"type": "string"}},
                },
            }),
        ),
        (
            "QueryAnswer",
            json!({
                "type": "object",
                "required": ["sources", "hits", "answer", "model", "citations", "usage", "timings"],
                "properties": {
                    "sources": {"type": "array", "items": reference("Source")},
                    "hits": {"type": "array", "items": reference("HitView")},
                    "answer": {"type": "string"},
                    "model": {"type": "string", "description": "the generator that answered (the collection's settings.generation.model, else the configured one)"},
                    "citations": {"type": "array", "items": reference("Citation")},
                    "usage": {
                        "type": "object", "required": ["prompt_tokens", "completion_tokens", "sources_used", "hits"],
                        "properties": {
                            "prompt_tokens": {"type": "integer"},
                            "completion_tokens": {"type": "integer"},
                            "sources_used": {"type": "integer"},
                            "hits": {"type": "integer"},
                        },
                    },
                    "timings": {
                        "type": "object",
                        "required": ["encode_ms", "search_ms", "rerank_ms", "expand_ms", "generate_ms", "total_ms"],
                        "properties": {
                            "encode_ms": number, "search_ms": number,
                            "rerank_ms": {"type": ["number", "null"], "description": "null when the rerank stage was skipped"},
                            "expand_ms": number, "generate_ms": number, "total_ms": number,
                        },
                    },
                },
            }),
        ),
        (
            "QueryEvent",
            json!({
                "type": "object",
                "description": "A server-sent event of a streamed answer, with JSON `data`: `sources` (`sources`, `hits`), \
                    `delta`s (`text`), then `done` (`answer`, `model`, `citations`, `usage`, `timings`), or `error` (`detail`)",
                "required": ["event", "data"],
                "properties": {
                    "event": {"type": "string", "enum": ["sources", "delta", "done", "error"]},
                    "data": {"type": "string"},
                },
            }),
        ),
        (
            "ChatCompletion",
            json!({
                "type": "object",
                "required": ["id", "object", "created", "model", "choices", "usage"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"type": "string", "enum": ["chat.completion"]},
                    "created": {"type": "integer"},
                    "model": {"type": "string"},
                    "choices": {"type": "array", "items": {
                        "type": "object", "required": ["index", "message", "finish_reason"],
                        "properties": {
                            "index": {"type": "integer"},
                            "message": {
                                "type": "object", "required": ["role", "content"],
                                "properties": {
                                    "role": {"type": "string", "enum": ["assistant"]},
                                    "content": {"type": "string"},
                                },
                            },
                            "logprobs": {"type": "null"},
                            "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                        },
                    }},
                    "usage": {
                        "type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                        "properties": {
                            "prompt_tokens": {"type": "integer"},
                            "completion_tokens": {"type": "integer"},
                            "total_tokens": {"type": "integer"},
                        },
                    },
                    "sources": {"type": "array", "items": reference("Source"), "description": "grounded answers only"},
                    "citations": {
                        "type": "array", "items": reference("Source"),
                        "description": "grounded answers only: the sources the answer cites",
                    },
                },
            }),
        ),
        (
            "ChatCompletionEvent",
            json!({
                "type": "object",
                "description": "A server-sent event of a streamed completion; `data` is a `chat.completion.chunk` as JSON \
                    (the first also carries `sources`, the one with a `finish_reason` `citations`), an `error` object \
                    when generation fails mid-stream, or `[DONE]`",
                "required": ["data"],
                "properties": {"data": {"type": "string"}},
            }),
        ),
        (
            "Model",
            json!({
                "type": "object", "required": ["id", "object", "created", "owned_by"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"type": "string", "enum": ["model"]},
                    "created": {"type": "integer", "description": "Unix seconds; 0 where unknown"},
                    "owned_by": {"type": "string"},
                },
            }),
        ),
        (
            "ModelList",
            json!({
                "type": "object", "required": ["object", "data"],
                "properties": {
                    "object": {"type": "string", "enum": ["list"]},
                    "data": {"type": "array", "items": reference("Model")},
                },
            }),
        ),
        (
            "EmbeddingList",
            json!({
                "type": "object", "required": ["object", "data", "model", "usage"],
                "properties": {
                    "object": {"type": "string", "enum": ["list"]},
                    "data": {"type": "array", "items": {
                        "type": "object", "required": ["object", "index", "embedding"],
                        "properties": {
                            "object": {"type": "string", "enum": ["embedding"]},
                            "index": {"type": "integer"},
                            "embedding": {
                                "description": "floats, or with `encoding_format: base64` little-endian f32s in base64",
                                "oneOf": [{"type": "array", "items": number}, {"type": "string"}],
                            },
                        },
                    }},
                    "model": {"type": "string"},
                    "usage": {
                        "type": "object", "required": ["prompt_tokens", "total_tokens"],
                        "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                    },
                },
            }),
        ),
    ]
}

/// `settings.index` of a collection (its type lives in ragd-core, which
/// knows nothing of OpenAPI).
pub fn index_settings() -> RefOr<Schema> {
    let count = json!({"type": ["integer", "null"], "minimum": 1, "maximum": u32::MAX});
    schema_from(json!({
        "type": "object",
        "additionalProperties": false,
        "description": "Fixed when the collection is created. Shards and replicas above 1 need a Qdrant server.",
        "properties": {
            "shard_number": count,
            "replication_factor": count,
            "on_disk": {"type": "boolean"},
            "quantization": {"type": "string", "enum": ["none", "int8"]},
        },
    }))
}

/// The `input` of an embeddings request: a text or up to 256 texts.
pub fn embedding_input() -> RefOr<Schema> {
    let text = json!({"type": "string", "minLength": 1, "maxLength": 32768, "pattern": "\\S"});
    schema_from(json!({
        "oneOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": 256}],
    }))
}
