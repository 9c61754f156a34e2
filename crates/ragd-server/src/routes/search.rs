//! `POST /v1/collections/{collection}/search`: hybrid retrieval without
//! generation.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use ragd_core::{Filter, SearchMode, TopK};
use ragd_retrieve::{Retrieved, SearchRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::collections::resolve;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{AppJson, Caller, OnBehalfOf};
use crate::settings::CollectionSettings;
use crate::state::AppState;
use crate::wire::{HitView, RerankView};

pub fn router() -> Router<AppState> {
    Router::new().route("/collections/{collection}/search", post(search))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeParam {
    Dense,
    Sparse,
    #[default]
    Hybrid,
}

impl From<ModeParam> for SearchMode {
    fn from(mode: ModeParam) -> Self {
        match mode {
            ModeParam::Dense => SearchMode::Dense,
            ModeParam::Sparse => SearchMode::Sparse,
            ModeParam::Hybrid => SearchMode::Hybrid,
        }
    }
}

/// The retrieval part of a request, shared by `/search` and `/query`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    #[schema(min_length = 1, pattern = "\\S")]
    pub query: String,
    /// The collection's `settings.retrieval.top_k`, else 10.
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 1000)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub mode: ModeParam,
    /// Metadata conditions, all of which must hold: `{"key": value}`,
    /// `{"key": [any, of]}` or `{"key": {"gte": 1, "lt": 5}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Value,
    /// Candidates each stage retrieves before fusion; at least `top_k`.
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 2000)]
    pub candidates: Option<usize>,
    /// The `k` of reciprocal rank fusion in hybrid mode.
    #[serde(default, deserialize_with = "ragd_core::numbers::whole")]
    #[schema(minimum = 1, maximum = 10000)]
    pub rrf_k: Option<u32>,
    /// The end user to search for: only documents they may see match.
    #[serde(default)]
    pub on_behalf_of: Option<OnBehalfOf>,
    /// Rerank the top hits with the configured reranker (the default when
    /// one is configured); `false` skips it, `true` without one is a 400.
    #[serde(default)]
    pub rerank: Option<bool>,
}

impl SearchBody {
    pub async fn retrieve(
        &self,
        state: &AppState,
        caller: &Caller,
        collection: &str,
        default_top_k: usize,
    ) -> ApiResult<Retrieved> {
        let visibility = caller.visibility(self.on_behalf_of.as_ref())?;
        let collection = resolve(state, &caller.tenant, collection).await?;
        let defaults = CollectionSettings::of(&collection)?.retrieval;
        let top_k = self.top_k.or(defaults.top_k).unwrap_or(default_top_k.min(state.server.max_top_k));
        if top_k > state.server.max_top_k {
            return Err(ApiError::invalid(format!("top_k must be at most {}", state.server.max_top_k)));
        }
        let request = SearchRequest {
            tenant: caller.tenant.clone(),
            target: collection.index_target(),
            embedder: collection.embedder.clone(),
            query: self.query.clone(),
            top_k: TopK::new(top_k)?,
            mode: self.mode.into(),
            filter: Filter::from_json(&self.filter)?,
            candidates: self.candidates.or(defaults.candidates),
            rrf_k: self.rrf_k.or(defaults.rrf_k),
            // Applied inside the index query, with the tenant and filter.
            principals: visibility.index_principals(),
            reranker: defaults.reranker(state.retriever.config().reranker.as_deref(), self.rerank)?,
        };
        Ok(state.retriever.search(request).await?)
    }
}

const DEFAULT_SEARCH_TOP_K: usize = 10;

#[utoipa::path(post, path = "/v1/collections/{collection}/search", tag = "search", params(("collection" = String, Path, description = "collection id or name")), request_body = SearchBody,
    responses((status = 200, description = "the hits, best first", body = ref("#/components/schemas/SearchResult")),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such collection", body = Problem, content_type = "application/problem+json"), (status = 422, description = "well-formed JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    AppJson(body): AppJson<SearchBody>,
) -> ApiResult<Json<Value>> {
    if body.query.trim().is_empty() {
        return Err(ApiError::invalid("query must not be empty"));
    }
    let retrieved = body.retrieve(&state, &caller, &collection, DEFAULT_SEARCH_TOP_K).await?;
    let hits: Vec<HitView> = retrieved.hits.iter().enumerate().map(|(rank, hit)| HitView::new(rank, hit)).collect();
    Ok(Json(json!({
        "mode": body.mode,
        "hits": hits,
        "rerank": RerankView::new(&retrieved, body.rerank),
        "timings": {
            "encode_ms": retrieved.timings.encode_ms,
            "search_ms": retrieved.timings.search_ms,
            "rerank_ms": retrieved.timings.rerank_ms,
        },
    })))
}
