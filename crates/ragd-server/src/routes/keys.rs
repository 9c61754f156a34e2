//! `/v1/keys`: make, list and revoke API keys. Admin keys only: an
//! operator key manages every key, a tenant admin the keys of its tenant.
//! A key's secret is in the answer to its creation and nowhere else.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use ragd_core::{ErrorKind, TenantId};
use ragd_store::{KeyId, NewKey, Role};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::AuditScope;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{AppJson, Caller};
use crate::state::AppState;
use crate::wire::KeyView;

pub fn router() -> Router<AppState> {
    Router::new().route("/keys", get(list).post(create)).route("/keys/{key_id}", delete(revoke))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    #[schema(min_length = 1, max_length = 128, pattern = "\\S")]
    name: String,
    #[schema(example = "read", pattern = "^(admin|write|read)$")]
    role: String,
    /// Absent: the caller's own tenant (none, for an operator: another
    /// operator key).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    tenant: Option<String>,
    /// RFC 3339; absent: never.
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Whether the key may pass `on_behalf_of` to act for end users.
    #[serde(default)]
    on_behalf_of: bool,
}

const MAX_NAME: usize = 128;

/// Makes a key. The secret is in this answer only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "the key, with its secret in `key`", body = ref("#/components/schemas/CreatedKey")),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "well-formed JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<CreateKey>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    if body.name.trim().is_empty() || body.name.len() > MAX_NAME {
        return Err(ApiError::invalid(format!("name must be 1-{MAX_NAME} bytes")));
    }
    let role: Role = body.role.parse()?;
    let requested = body.tenant.as_deref().map(TenantId::parse).transpose()?;
    let tenant = match (&caller.key_tenant, requested) {
        (None, requested) => requested,
        (Some(own), None) => Some(own.clone()),
        (Some(own), Some(requested)) if requested == *own => Some(requested),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "a tenant's admin key can make keys of its own tenant only",
            ));
        }
    };
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|raw| {
            chrono::DateTime::parse_from_rfc3339(raw)
                .map(|t| t.timestamp_millis())
                .map_err(|e| ApiError::invalid(format!("expires_at must be an RFC 3339 time: {e}")))
        })
        .transpose()?;
    if expires_at.is_some_and(|at| at <= chrono::Utc::now().timestamp_millis()) {
        return Err(ApiError::invalid("expires_at must be in the future"));
    }
    let new =
        NewKey { tenant: tenant.clone(), name: body.name, role, on_behalf_of: body.on_behalf_of, expires_at };
    let (record, token) = state.store.create_key(&new).await?;
    let mut view = serde_json::to_value(KeyView::from(&record)).unwrap_or_default();
    view["key"] = json!(token.expose());
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    response.extensions_mut().insert(AuditScope { target: format!("key {}", record.id), tenant });
    Ok(response)
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "the keys the caller manages, without secrets", body = ref("#/components/schemas/KeyList"))))]
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let keys = state.store.list_keys(caller.key_tenant.as_ref()).await?;
    let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    Ok(Json(json!({"keys": views})))
}

#[utoipa::path(delete, path = "/v1/keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path, description = "the key id", pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")),
    responses((status = 204, description = "revoked"),
        (status = 400, description = "not a key id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such key", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Admin)?;
    let id: KeyId = key_id.parse()?;
    let record = state.store.revoke_key(id, caller.key_tenant.as_ref()).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.extensions_mut().insert(AuditScope { target: format!("key {id}"), tenant: record.tenant });
    Ok(response)
}
