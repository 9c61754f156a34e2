//! `GET /v1/audit`: the audit log, newest first, for admin keys: an
//! operator sees every entry, a tenant admin those of its tenant.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use ragd_store::Role;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Caller;
use crate::state::AppState;
use crate::wire::AuditView;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Params {
    /// Page size, 1 to `server.max_page_size`; 100 when absent.
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// The `next_before` of the previous page.
    before: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "keys", params(Params),
    responses((status = 200, description = "a page of audit entries, newest first", body = ref("#/components/schemas/AuditList")),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<Params>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > state.server.max_page_size {
        return Err(ApiError::invalid(format!("limit must be between 1 and {}", state.server.max_page_size)));
    }
    let entries = state.store.list_audit(caller.key_tenant.as_ref(), params.before.as_deref(), limit).await?;
    let next_before =
        (entries.len() == limit as usize).then(|| entries.last().map(|e| e.id.clone())).flatten();
    let views: Vec<AuditView> = entries.iter().map(AuditView::from).collect();
    Ok(Json(json!({"entries": views, "next_before": next_before})))
}
