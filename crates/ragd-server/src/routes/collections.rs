//! `/v1/collections`: create, list, get (with document, chunk and point
//! counts), delete.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ragd_core::{CollectionIndexSpec, CollectionName, TenantId, Visibility};
use ragd_store::{CollectionRecord, CollectionUpdate, NewCollection, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::AuditScope;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{AppJson, Caller, OnBehalfOf};
use crate::settings::CollectionSettings;
use crate::state::AppState;
use crate::wire::{CollectionStats, CollectionView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/collections", get(list).post(create))
        .route("/collections/{collection}", get(show).patch(update).delete(remove))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCollection {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    name: String,
    /// At most 4096 bytes.
    #[serde(default)]
    #[schema(max_length = 4096)]
    description: String,
    /// Retrieval defaults, prompt overrides, and the index layout (fixed
    /// once the collection exists).
    #[serde(default)]
    #[schema(value_type = Option<crate::settings::CollectionSettings>)]
    settings: Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateCollection {
    #[serde(default)]
    #[schema(max_length = 4096)]
    description: Option<String>,
    /// Replaces the settings as a whole; `index` must stay as it was.
    #[serde(default)]
    #[schema(value_type = Option<crate::settings::CollectionSettings>)]
    settings: Option<Value>,
}

const MAX_DESCRIPTION: usize = 4096;

#[utoipa::path(post, path = "/v1/collections", tag = "collections", request_body = CreateCollection,
    responses((status = 201, description = "created", body = CollectionView), (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"), (status = 409, description = "a collection with this name exists", body = Problem, content_type = "application/problem+json"), (status = 422, description = "well-formed JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<CreateCollection>,
) -> ApiResult<Response> {
    caller.require(Role::Write)?;
    let name = CollectionName::parse(&body.name)?;
    check_description(&body.description)?;
    let settings = match body.settings {
        Value::Null => CollectionSettings::default(),
        value => CollectionSettings::from_request(value)?,
    };
    check_generator(&state, &settings)?;
    let record = state
        .store
        .create_collection(&NewCollection {
            tenant: caller.tenant,
            name,
            description: body.description,
            embedder: state.embedder_model.clone(),
            dimensions: state.dimensions as i64,
            settings: settings.to_map(),
        })
        .await?;
    let spec = CollectionIndexSpec { target: record.index_target(), dimensions: state.dimensions, settings: settings.index };
    if let Err(error) = state.index.create_collection(&spec).await {
        // Without its index the collection is unusable: undo the row.
        let _ = state.store.delete_collection(&record.tenant, record.id).await;
        return Err(error.into());
    }
    let mut response = (StatusCode::CREATED, Json(CollectionView::from(&record))).into_response();
    response
        .extensions_mut()
        .insert(AuditScope { target: format!("collection {}", record.id), tenant: Some(record.tenant) });
    Ok(response)
}

fn check_generator(state: &AppState, settings: &CollectionSettings) -> ApiResult<()> {
    match &settings.generation.model {
        Some(model) if !state.has_generator(model) => Err(ApiError::invalid(format!(
            "settings.generation.model: no generator is called {model:?}; known: {}",
            state.generator_names().join(", ")
        ))),
        _ => Ok(()),
    }
}

fn check_description(description: &str) -> ApiResult<()> {
    if description.len() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(format!("description is longer than {MAX_DESCRIPTION} bytes")));
    }
    Ok(())
}

/// Changes the description or the settings; new settings apply to the
/// next request.
#[utoipa::path(patch, path = "/v1/collections/{collection}", tag = "collections", params(("collection" = String, Path, description = "collection id or name")), request_body = UpdateCollection,
    responses((status = 200, description = "the changed collection", body = CollectionView), (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such collection", body = Problem, content_type = "application/problem+json"), (status = 422, description = "well-formed JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    AppJson(body): AppJson<UpdateCollection>,
) -> ApiResult<Json<CollectionView>> {
    caller.require(Role::Write)?;
    let record = resolve(&state, &caller.tenant, &collection).await?;
    if let Some(description) = &body.description {
        check_description(description)?;
    }
    let settings = match body.settings {
        None => None,
        Some(value) => {
            let settings = CollectionSettings::from_request(value)?;
            check_generator(&state, &settings)?;
            if settings.index != CollectionSettings::of(&record)?.index {
                return Err(ApiError::invalid(
                    "settings.index is fixed when a collection is created; send it unchanged",
                ));
            }
            Some(settings.to_map())
        }
    };
    let update = CollectionUpdate { description: body.description, settings };
    let record = state.store.update_collection(&record.tenant, record.id, &update).await?;
    Ok(Json(CollectionView::from(&record)))
}

#[utoipa::path(get, path = "/v1/collections", tag = "collections",
    responses((status = 200, description = "the caller's collections", body = ref("#/components/schemas/CollectionList"))))]
pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let collections = state.store.list_collections(&caller.tenant).await?;
    let views: Vec<CollectionView> = collections.iter().map(CollectionView::from).collect();
    Ok(Json(json!({ "collections": views })))
}

/// `?on_behalf_of={"user", "groups"}` on GET routes that count or list
/// documents.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisibilityParams {
    pub on_behalf_of: Option<String>,
}

impl VisibilityParams {
    pub fn visibility(&self, caller: &Caller) -> ApiResult<Visibility> {
        caller.visibility(OnBehalfOf::from_query(self.on_behalf_of.as_deref())?.as_ref())
    }
}

#[utoipa::path(get, path = "/v1/collections/{collection}", tag = "collections", params(("collection" = String, Path, description = "collection id or name")),
    responses((status = 200, description = "the collection with its counts in `stats`", body = CollectionView), (status = 404, description = "no such collection", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    Query(params): Query<VisibilityParams>,
) -> ApiResult<Json<CollectionView>> {
    let visibility = params.visibility(&caller)?;
    let record = resolve(&state, &caller.tenant, &collection).await?;
    let counts = state.store.visible_document_counts(record.id, &visibility).await?;
    let point_count = match visibility {
        Visibility::All => Some(state.index.count(record.index_target()).await?),
        Visibility::Principals(_) => None,
    };
    let mut view = CollectionView::from(&record);
    view.stats =
        Some(CollectionStats { documents: (&counts).into(), chunk_count: counts.chunks, point_count });
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/v1/collections/{collection}", tag = "collections", params(("collection" = String, Path, description = "collection id or name")),
    responses((status = 204, description = "deleted with its documents and vectors"), (status = 404, description = "no such collection", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Write)?;
    let record = resolve(&state, &caller.tenant, &collection).await?;
    state.store.delete_collection(&caller.tenant, record.id).await?;
    for write in record.write_targets() {
        state.index.drop_collection(write.target).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A collection named in a path by id or by name, within the caller's tenant.
pub async fn resolve(state: &AppState, tenant: &TenantId, raw: &str) -> ApiResult<CollectionRecord> {
    if let Ok(id) = raw.parse() {
        return Ok(state.store.get_collection(tenant, id).await?);
    }
    let name = CollectionName::parse(raw)
        .map_err(|_| ApiError::new(ragd_core::ErrorKind::NotFound, format!("no collection {raw:?}")))?;
    state
        .store
        .list_collections(tenant)
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ApiError::new(ragd_core::ErrorKind::NotFound, format!("no collection {raw:?}")))
}
