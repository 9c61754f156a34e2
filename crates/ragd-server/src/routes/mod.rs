//! One module per resource, each exposing `router()`.

pub(crate) mod audit;
pub(crate) mod batches;
pub(crate) mod collections;
pub(crate) mod documents;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod keys;
pub(crate) mod openai;
pub(crate) mod query;
pub(crate) mod search;

use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, Request};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth;
use crate::error::{finish_problems, REQUEST_ID_HEADER};
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let body_limit = state.server.max_body_bytes;
    // Every `/v1` route is behind the key check; health checks are not.
    let api = Router::new()
        .merge(audit::router())
        .merge(batches::router())
        .merge(collections::router())
        .merge(documents::router())
        .merge(jobs::router())
        .merge(keys::router())
        .merge(search::router())
        .merge(query::router())
        .merge(openai::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate));
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    Router::new()
        .merge(health::router())
        .merge(crate::openapi::router())
        .nest("/v1", api)
        .layer(axum::middleware::from_fn(finish_problems))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str)
                .unwrap_or("unmatched");
            let request_id = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %request.method(), route, uri = %request.uri(), request_id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
