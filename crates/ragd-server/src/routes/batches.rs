//! `/v1/batches/{batch}`: the progress of a bulk or multipart upload,
//! counted from the current statuses of its documents.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use ragd_store::BatchId;

use super::collections::VisibilityParams;
use crate::error::ApiResult;
use crate::error::Problem;
use crate::extract::Caller;
use crate::state::AppState;
use crate::wire::BatchView;

pub fn router() -> Router<AppState> {
    Router::new().route("/batches/{batch}", get(show))
}

#[utoipa::path(get, path = "/v1/batches/{batch}", tag = "documents",
    params(("batch" = String, Path, description = "the batch id an upload answered with", pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")),
    responses((status = 200, description = "the batch's progress", body = BatchView), (status = 400, description = "not a batch id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such batch", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(batch): Path<String>,
    Query(params): Query<VisibilityParams>,
) -> ApiResult<Json<BatchView>> {
    let visibility = params.visibility(&caller)?;
    let id: BatchId = batch.parse()?;
    let record = state.store.get_batch(&caller.tenant, id).await?;
    let counts = state.store.batch_status_counts(record.id, &visibility).await?;
    Ok(Json(BatchView::new(&record, &counts)))
}
