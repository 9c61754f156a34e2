//! Liveness and readiness, outside `/v1` and without authentication.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::{ApiResult, Problem};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "the server is up", body = ref("#/components/schemas/Health"))))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers; models and the index are loaded before
/// the listener opens, so they need no check here.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "ready to serve", body = ref("#/components/schemas/Readiness")), (status = 503, description = "the database is not answering", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let pending = state.store.pending_job_count().await.map_err(|e| {
        crate::ApiError::new(ragd_core::ErrorKind::Unavailable, format!("database is not answering: {}", ragd_core::Error::from(e)))
    })?;
    Ok(Json(json!({"status": "ready", "pending_jobs": pending})))
}
