//! One module per resource, each exposing `router()`.

pub(crate) mod batches;
pub(crate) mod collections;
pub(crate) mod documents;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod openai;
pub(crate) mod query;
pub(crate) mod search;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::Request;
use tower_http::trace::TraceLayer;

use crate::error::problem_for_plain_errors;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let body_limit = state.server.max_body_bytes;
    let api = Router::new()
        .merge(batches::router())
        .merge(collections::router())
        .merge(documents::router())
        .merge(jobs::router())
        .merge(search::router())
        .merge(query::router())
        .merge(openai::router());
    Router::new()
        .merge(health::router())
        .merge(crate::openapi::router())
        .nest("/v1", api)
        .layer(axum::middleware::map_response(problem_for_plain_errors))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str)
                .unwrap_or("unmatched");
            tracing::info_span!("request", method = %request.method(), route, uri = %request.uri())
        }))
        .with_state(state)
}
