//! `/v1/batches/{batch}`: the progress of a bulk or multipart upload,
//! counted from the current statuses of its documents.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use ragd_store::BatchId;

use crate::error::ApiResult;
use crate::extract::Caller;
use crate::state::AppState;
use crate::wire::BatchView;

pub fn router() -> Router<AppState> {
    Router::new().route("/batches/{batch}", get(show))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(batch): Path<String>,
) -> ApiResult<Json<BatchView>> {
    let id: BatchId = batch.parse()?;
    let record = state.store.get_batch(&caller.tenant, id).await?;
    let counts = state.store.batch_status_counts(record.id).await?;
    Ok(Json(BatchView::new(&record, &counts)))
}
