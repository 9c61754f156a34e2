//! `/v1/collections/{collection}/documents`: add (JSON or multipart files),
//! list, get, delete. Adding stores the original bytes, then commits the
//! document row and its ingest job together and answers 202: the work
//! happens in a job, and `GET` shows its progress and any failure.

use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use ragd_core::{ContentHash, DocumentId, ErrorKind};
use ragd_store::{CollectionRecord, DocumentRecord, NewDocument};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::collections::resolve;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, Caller};
use crate::state::AppState;
use crate::wire::DocumentView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/collections/{collection}/documents", get(list).post(add))
        .route("/collections/{collection}/documents/{document}", get(show).delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddDocument {
    #[serde(default)]
    title: Option<String>,
    text: String,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    acl: Vec<String>,
}

const MAX_TITLE: usize = 1024;
const MAX_EXTERNAL_ID: usize = 256;
const MAX_METADATA_BYTES: usize = 64 * 1024;
const MAX_ACL_ENTRIES: usize = 256;

/// What a document carries besides its bytes, validated.
struct DocumentFields {
    title: String,
    metadata: Map<String, Value>,
    external_id: Option<String>,
    acl: Vec<String>,
}

impl DocumentFields {
    fn parse(title: String, metadata: Map<String, Value>, external_id: Option<String>, acl: Vec<String>) -> ApiResult<Self> {
        if title.len() > MAX_TITLE {
            return Err(ApiError::invalid(format!("title is longer than {MAX_TITLE} bytes")));
        }
        if let Some(id) = &external_id {
            if id.is_empty() || id.len() > MAX_EXTERNAL_ID {
                return Err(ApiError::invalid(format!("external_id must be 1-{MAX_EXTERNAL_ID} bytes")));
            }
        }
        for key in metadata.keys() {
            let ok = !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ApiError::invalid(format!(
                    "metadata key {key:?} must be 1-64 characters of letters, digits, '-' or '_' (so it can be filtered on)"
                )));
            }
        }
        if serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_METADATA_BYTES {
            return Err(ApiError::invalid(format!("metadata is larger than {MAX_METADATA_BYTES} bytes")));
        }
        if acl.len() > MAX_ACL_ENTRIES || acl.iter().any(|p| p.is_empty() || p.len() > 256) {
            return Err(ApiError::invalid(format!("acl must hold at most {MAX_ACL_ENTRIES} principals of 1-256 bytes")));
        }
        Ok(Self { title, metadata, external_id, acl })
    }
}

async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let collection = resolve(&state, &caller.tenant, &collection).await?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let AppJson(body) = AppJson::<AddDocument>::from_request(request, &state).await?;
        let view = add_json(&state, &collection, body).await?;
        Ok((StatusCode::ACCEPTED, Json(serde_json::to_value(view).unwrap_or_default())))
    } else if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        add_files(&state, &collection, multipart).await
    } else {
        Err(ApiError::new(
            ErrorKind::InvalidInput,
            format!("Content-Type {content_type:?} is not accepted here; send application/json or multipart/form-data"),
        ))
    }
}

async fn add_json(state: &AppState, collection: &CollectionRecord, body: AddDocument) -> ApiResult<DocumentView> {
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid("text must not be empty"));
    }
    if body.text.len() > state.server.max_document_bytes {
        return Err(ApiError::new(
            ErrorKind::TooLarge,
            format!("text is {} bytes; the limit is {}", body.text.len(), state.server.max_document_bytes),
        ));
    }
    let title = body.title.unwrap_or_else(|| title_from_text(&body.text));
    let fields = DocumentFields::parse(title, body.metadata, body.external_id, body.acl)?;
    enqueue(state, collection, fields, None, "text/plain", body.text.as_bytes()).await
}

async fn add_files(state: &AppState, collection: &CollectionRecord, mut multipart: Multipart) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut metadata = Map::new();
    while let Some(mut field) = multipart.next_field().await.map_err(|e| ApiError::invalid(e.body_text()))? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "metadata" {
            let text = field.text().await.map_err(|e| ApiError::invalid(e.body_text()))?;
            metadata = serde_json::from_str(&text)
                .map_err(|e| ApiError::invalid(format!("the metadata field must be a JSON object: {e}")))?;
            continue;
        }
        if name != "file" && name != "files" {
            return Err(ApiError::invalid(format!("unexpected form field {name:?}; send files in fields named \"file\"")));
        }
        let file_name = field.file_name().map(str::to_owned);
        let claimed_type = field.content_type().map(str::to_owned);
        let label = file_name.clone().unwrap_or_else(|| "(unnamed)".to_owned());

        let mut bytes = Vec::new();
        let mut too_large = false;
        while let Some(piece) = field.chunk().await.map_err(|e| ApiError::invalid(e.body_text()))? {
            if bytes.len() + piece.len() > state.server.max_document_bytes {
                too_large = true;
                break;
            }
            bytes.extend_from_slice(&piece);
        }
        if too_large {
            rejected.push(json!({"file": label, "reason": format!("larger than the {} byte limit", state.server.max_document_bytes)}));
            continue;
        }
        let format = match ragd_ingest::detect_format(file_name.as_deref(), claimed_type.as_deref(), &bytes) {
            Ok(format) => format,
            Err(error) => {
                rejected.push(json!({"file": label, "reason": ragd_core::Error::from(error).message()}));
                continue;
            }
        };
        let title = file_name.as_deref().map(title_from_file_name).unwrap_or_default();
        let fields = DocumentFields::parse(title, metadata.clone(), None, Vec::new())?;
        accepted.push(enqueue(state, collection, fields, file_name, &format.media_type(), &bytes).await?);
    }
    if accepted.is_empty() {
        let reasons: Vec<String> = rejected
            .iter()
            .map(|r| format!("{}: {}", r["file"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or("")))
            .collect();
        if reasons.is_empty() {
            return Err(ApiError::invalid("no files in the request; send them in form fields named \"file\""));
        }
        return Err(ApiError::new(ErrorKind::Unprocessable, format!("no file was accepted: {}", reasons.join("; "))));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"documents": accepted, "rejected": rejected}))))
}

async fn enqueue(
    state: &AppState,
    collection: &CollectionRecord,
    fields: DocumentFields,
    source_name: Option<String>,
    media_type: &str,
    bytes: &[u8],
) -> ApiResult<DocumentView> {
    let content_hash: ContentHash = state.blobs.put(bytes).await?;
    let new = NewDocument {
        id: DocumentId::new(),
        collection: collection.id,
        tenant: collection.tenant.clone(),
        external_id: fields.external_id,
        title: fields.title,
        source_name,
        media_type: media_type.to_owned(),
        content_hash,
        size_bytes: bytes.len() as i64,
        metadata: fields.metadata,
        acl: fields.acl,
    };
    let (record, job) = state.store.insert_document_with_job(&new).await?;
    state.workers.job_queued();
    let mut view = DocumentView::from(&record);
    view.job_id = Some(job.to_string());
    Ok(view)
}

fn title_from_text(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut title: String = line.chars().take(80).collect();
    if line.chars().count() > 80 {
        title.push('…');
    }
    title
}

fn title_from_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_owned(),
        _ => base.to_owned(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<u32>,
    after: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let collection = resolve(&state, &caller.tenant, &collection).await?;
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > state.server.max_page_size {
        return Err(ApiError::invalid(format!("limit must be between 1 and {}", state.server.max_page_size)));
    }
    let after = params.after.as_deref().map(str::parse::<DocumentId>).transpose()?;
    let documents = state.store.list_documents(collection.id, after, limit).await?;
    let next_after = (documents.len() == limit as usize).then(|| documents.last().map(|d| d.id.to_string())).flatten();
    let views: Vec<DocumentView> = documents.iter().map(DocumentView::from).collect();
    Ok(Json(json!({"documents": views, "next_after": next_after})))
}

async fn find(state: &AppState, caller: &Caller, collection: &str, document: &str) -> ApiResult<DocumentRecord> {
    let collection = resolve(state, &caller.tenant, collection).await?;
    let id: DocumentId = document.parse()?;
    Ok(state.store.get_document(collection.id, id).await?)
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, document)): Path<(String, String)>,
) -> ApiResult<Json<DocumentView>> {
    let record = find(&state, &caller, &collection, &document).await?;
    Ok(Json(DocumentView::from(&record)))
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, document)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let record = find(&state, &caller, &collection, &document).await?;
    state.store.delete_document(record.collection, record.id).await?;
    state.index.delete_document(record.collection, record.id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_derived() {
        assert_eq!(title_from_file_name("dir/guide.md"), "guide");
        assert_eq!(title_from_file_name(".env"), ".env");
        assert_eq!(title_from_text("\n\n  First line \nsecond"), "First line");
        assert_eq!(title_from_text(&"x".repeat(100)).chars().count(), 81);
    }
}
