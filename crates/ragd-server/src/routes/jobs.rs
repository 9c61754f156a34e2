//! `/v1/jobs`: long-running work submitted by a caller (today the
//! `finetune-embedder`, `finetune-reranker`, `finetune-generator`,
//! `quantize` and `reindex` kinds) on the same durable
//! queue as ingestion, with its progress, metrics, log lines and artifacts,
//! and cancellation.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ragd_core::JobId;
use ragd_store::{CollectionRecord, JobMetric, JobRecord, JobState, Role};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::collections::resolve;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{AppJson, Caller};
use crate::state::AppState;
use crate::wire::timestamp;

/// Log lines shown with a job: its most recent ones.
const LOG_LINES: u32 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(submit).get(list))
        .route("/jobs/{job}", get(show))
        .route("/jobs/{job}/cancel", post(cancel))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitJob {
    /// The job kind: `finetune-embedder`, `finetune-reranker`,
    /// `finetune-generator`, `quantize` or `reindex`.
    kind: String,
    /// The kind's parameters (see the README).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    params: Value,
}

fn empty_object() -> Value {
    json!({})
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct JobView {
    id: String,
    kind: String,
    status: String,
    progress: f64,
    step: Option<String>,
    attempts: i64,
    max_attempts: i64,
    error: Option<String>,
    cancel_requested: bool,
    #[schema(value_type = Vec<Object>)]
    artifacts: Vec<Value>,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// Name -> values in step order.
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<BTreeMap<String, Vec<MetricPoint>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    logs: Option<Vec<Value>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct MetricPoint {
    step: i64,
    value: f64,
}

impl JobView {
    fn summary(job: &JobRecord) -> Self {
        Self {
            id: job.id.to_string(),
            kind: job.kind.clone(),
            status: job.state.to_string(),
            progress: job.progress,
            step: job.step.clone(),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            error: job.error.clone(),
            cancel_requested: job.cancel_requested,
            artifacts: job.artifacts.clone(),
            created_at: timestamp(job.created_at),
            updated_at: timestamp(job.updated_at),
            params: None,
            metrics: None,
            logs: None,
        }
    }
}

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = SubmitJob,
    responses((status = 202, description = "the queued job", body = JobView),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "the collection or model the job names does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a reindex of the collection is already under way", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "unknown kind or invalid parameters", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<SubmitJob>,
) -> ApiResult<Response> {
    caller.require(Role::Write)?;
    let mut payload = ragd_jobs::validate_submission(&body.kind, body.params)?;
    state.models.check_submission(&body.kind, &payload)?;
    if let Some(named) = payload["collection"].as_str().map(str::to_owned) {
        // Negatives are mined from, and a reindex rebuilds, the caller's
        // own collection, found now so that a wrong name fails the request
        // rather than the job.
        let collection = resolve(&state, &caller.tenant, &named).await?;
        if body.kind == ragd_jobs::REINDEX_KIND {
            check_reindex(&state, &collection, payload["embedder"].as_str().unwrap_or_default()).await?;
        }
        payload["collection"] = json!(collection.id.to_string());
    }
    if let Some(named) = payload["dataset"]["collection"].as_str().map(str::to_owned) {
        // A generator's questions and answers come from the caller's own
        // collection, found now for the same reason.
        let collection = resolve(&state, &caller.tenant, &named).await?;
        payload["dataset"]["collection"] = json!(collection.id.to_string());
    }
    let job = state.store.submit_job(&caller.tenant, &body.kind, &payload).await?;
    state.workers.job_queued();
    tracing::info!(job = %job.id, kind = %job.kind, "job submitted");
    let location = format!("/v1/jobs/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(JobView::summary(&job))).into_response())
}

/// A reindex needs an embedder this server has, and no other reindex of
/// the collection under way.
async fn check_reindex(state: &AppState, collection: &CollectionRecord, embedder: &str) -> ApiResult<()> {
    if let Some(pending) = &collection.pending {
        let job = state.store.get_job(pending.job).await?;
        if matches!(job.state, JobState::Queued | JobState::Running) {
            return Err(ApiError::new(
                ragd_core::ErrorKind::Conflict,
                format!("collection {:?} is already being reindexed to {:?} by job {}", collection.name.as_str(), pending.embedder, job.id),
            ));
        }
    }
    let (retriever, embedder) = (state.retriever.clone(), embedder.to_owned());
    // Loading a registered embedder reads its files; it stays loaded for
    // the job and for searches afterwards.
    tokio::task::spawn_blocking(move || retriever.embedder(&embedder))
        .await
        .map_err(|join| ApiError(ragd_core::Error::with_source(ragd_core::ErrorKind::Internal, "loading the embedder", join)))??;
    Ok(())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Page size, 1 to `server.max_page_size`; 50 when absent.
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// The `next_after` of the previous page.
    #[param(
        pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
    )]
    after: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, description = "a page of the caller's jobs, oldest first", body = ref("#/components/schemas/JobList")),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > state.server.max_page_size {
        return Err(ApiError::invalid(format!("limit must be between 1 and {}", state.server.max_page_size)));
    }
    let after = params.after.as_deref().map(str::parse::<JobId>).transpose()?;
    let jobs = state.store.list_jobs(&caller.tenant, after, limit).await?;
    let next_after =
        (jobs.len() == limit as usize).then(|| jobs.last().map(|job| job.id.to_string())).flatten();
    let views: Vec<JobView> = jobs.iter().map(JobView::summary).collect();
    Ok(Json(json!({"jobs": views, "next_after": next_after})))
}

#[utoipa::path(get, path = "/v1/jobs/{job}", tag = "jobs",
    params(("job" = String, Path, description = "the job id", pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")),
    responses((status = 200, description = "the job with its parameters, metrics and recent log lines", body = JobView),
        (status = 400, description = "not a job id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such job", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(job): Path<String>,
) -> ApiResult<Json<JobView>> {
    let id: JobId = job.parse()?;
    let job = state.store.get_tenant_job(&caller.tenant, id).await?;
    let metrics = state.store.job_metrics(id).await?;
    let logs = state.store.job_logs(id, LOG_LINES).await?;
    let mut view = JobView::summary(&job);
    view.params = Some(without_inline_pairs(job.payload));
    view.metrics = Some(series(metrics));
    view.logs = Some(
        logs.into_iter().map(|line| json!({"at": timestamp(line.at), "message": line.message})).collect(),
    );
    Ok(Json(view))
}

#[utoipa::path(post, path = "/v1/jobs/{job}/cancel", tag = "jobs",
    params(("job" = String, Path, description = "the job id", pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")),
    responses((status = 202, description = "cancelled, or to stop before its next step", body = JobView),
        (status = 400, description = "not a job id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the job has finished", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(job): Path<String>,
) -> ApiResult<Response> {
    caller.require(Role::Write)?;
    let id: JobId = job.parse()?;
    let job = state.store.request_job_cancel(&caller.tenant, id).await?;
    tracing::info!(job = %job.id, status = %job.state, "job cancel requested");
    Ok((StatusCode::ACCEPTED, Json(JobView::summary(&job))).into_response())
}

fn series(metrics: Vec<JobMetric>) -> BTreeMap<String, Vec<MetricPoint>> {
    let mut series: BTreeMap<String, Vec<MetricPoint>> = BTreeMap::new();
    for metric in metrics {
        series.entry(metric.name).or_default().push(MetricPoint { step: metric.step, value: metric.value });
    }
    series
}

/// Inline training pairs and conversations can be large; the view counts
/// them instead.
fn without_inline_pairs(mut params: Value) -> Value {
    if let Some(object) = params.as_object_mut() {
        for field in ["pairs", "examples"] {
            if let Some(count) = object.get(field).and_then(Value::as_array).map(Vec::len) {
                object.insert(field.to_owned(), json!(count));
            }
        }
    }
    params
}
