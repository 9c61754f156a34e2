//! `/v1/collections/{collection}/documents`: add (one JSON document, NDJSON
//! in bulk, or multipart files), list, get, delete. Adding stores the
//! original bytes, then commits the document rows and their ingest jobs
//! together and answers 202: the work happens in jobs, and `GET` shows its
//! progress and any failure. Content already in the collection is not
//! ingested again, and a known `external_id` with new content makes a new
//! version of its document. Bulk, multipart and archive uploads (a ZIP or
//! tar body, or archives among multipart files) form a batch, whose
//! progress `/v1/batches/{batch}` reports.

use std::io::{Read, Seek};
use std::ops::ControlFlow;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{StreamExt, TryStreamExt};
use ragd_core::{ContentHash, DocumentId, ErrorKind};
use ragd_ingest::{ArchiveKind, ArchiveLimits, RowFields, Unpacked};
use ragd_store::{AddOutcome, BatchId, CollectionRecord, DocumentRecord, NewBatch, NewDocument, Role};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::collections::{VisibilityParams, resolve};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{AppJson, Caller};
use crate::state::AppState;
use crate::wire::{BulkAddView, BulkDocumentView, DocumentView, RejectedLine};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/collections/{collection}/documents", get(list).post(add))
        .route("/collections/{collection}/documents/{document}", get(show).delete(remove))
}

/// One document as JSON, or one NDJSON line.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddDocument {
    /// The first line of the text when absent.
    #[serde(default)]
    #[schema(max_length = 1024)]
    title: Option<String>,
    /// At most `server.max_document_bytes` bytes.
    #[schema(min_length = 1, pattern = "\\S")]
    text: String,
    /// Filterable values; keys are 1-64 letters, digits, `-` or `_`, and
    /// the whole is at most 64 KiB as JSON.
    #[serde(default)]
    #[schema(value_type = Object, additional_properties = true)]
    metadata: Map<String, Value>,
    /// The caller's own id; new content for a known one makes a new version.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    external_id: Option<String>,
    /// Principals (users or groups) that may see the document.
    #[serde(default)]
    #[schema(max_items = 256, inline)]
    acl: Vec<String>,
}

const MAX_TITLE: usize = 1024;
const MAX_EXTERNAL_ID: usize = 256;
const MAX_METADATA_BYTES: usize = 64 * 1024;
const MAX_ACL_ENTRIES: usize = 256;
/// PostgreSQL cannot store a NUL character in text, and no document needs one.
const NUL_TEXT: &str = "text must not contain a NUL character (U+0000)";

/// What a document carries besides its bytes, validated.
struct DocumentFields {
    title: String,
    metadata: Map<String, Value>,
    external_id: Option<String>,
    acl: Vec<String>,
}

impl DocumentFields {
    fn parse(
        title: String,
        metadata: Map<String, Value>,
        external_id: Option<String>,
        acl: Vec<String>,
    ) -> ApiResult<Self> {
        if title.len() > MAX_TITLE {
            return Err(ApiError::invalid(format!("title is longer than {MAX_TITLE} bytes")));
        }
        if let Some(id) = &external_id {
            if id.is_empty() || id.len() > MAX_EXTERNAL_ID {
                return Err(ApiError::invalid(format!("external_id must be 1-{MAX_EXTERNAL_ID} bytes")));
            }
        }
        for key in metadata.keys() {
            let ok = !key.is_empty()
                && key.len() <= 64
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
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
            return Err(ApiError::invalid(format!(
                "acl must hold at most {MAX_ACL_ENTRIES} principals of 1-256 bytes"
            )));
        }
        let mut strings = std::iter::once(&title).chain(&external_id).chain(&acl);
        if strings.any(|s| s.contains('\0')) || metadata.values().any(holds_nul) {
            return Err(ApiError::invalid(
                "title, external_id, acl and metadata must not contain a NUL character (U+0000)",
            ));
        }
        Ok(Self { title, metadata, external_id, acl })
    }
}

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(object) => object.iter().any(|(key, value)| key.contains('\0') || holds_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Documents a bulk upload writes in one transaction.
const GROUP_DOCUMENTS: usize = 100;
/// Bytes of document content a bulk upload holds before writing a group,
/// however few documents that is.
const GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Blobs written at once (each is hashed and synced on the blocking pool).
const BLOB_WRITERS: usize = 4;
/// Most entries of `documents` and `rejected` echoed back by a bulk upload;
/// the counts are always complete.
const MAX_ECHOED: usize = 1000;
/// Lines longer than this are parsed on the blocking pool.
const INLINE_PARSE_BYTES: usize = 256 * 1024;

#[utoipa::path(post, path = "/v1/collections/{collection}/documents", tag = "documents", params(("collection" = String, Path, description = "collection id or name")),
    request_body(description = "one document as JSON; many as NDJSON (one `AddDocument` per line, streamed); files as \
        multipart/form-data; or a whole ZIP, tar or gzipped tar archive", content(
            (AddDocument = "application/json"),
            (String = "application/x-ndjson"),
            (ref("#/components/schemas/FileUpload") = "multipart/form-data"),
            (ref("#/components/schemas/Archive") = "application/zip"),
            (ref("#/components/schemas/Archive") = "application/x-tar"),
            (ref("#/components/schemas/Archive") = "application/gzip"))),
    responses(
        (status = 200, description = "JSON: the document that already holds this content, with `duplicate: true`", body = DocumentView),
        (status = 202, description = "queued: JSON answers with the document and its `job_id`; NDJSON with a `BulkAddView`; \
            files and archives with the batch's documents and rejected files",
            body = ref("#/components/schemas/DocumentsAccepted")),
        (status = 400, description = "invalid input or an unsupported Content-Type", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such collection", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "a document or the body is over its limit", body = Problem, content_type = "application/problem+json"), (status = 422, description = "no file was accepted, or JSON of the wrong shape", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    caller.require(Role::Write)?;
    let collection = resolve(&state, &caller.tenant, &collection).await?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" => {
            let AppJson(body) = AppJson::<AddDocument>::from_request(request, &state).await?;
            add_json(&state, &collection, body).await
        }
        "application/x-ndjson" => add_ndjson(&state, &collection, request.into_body()).await,
        "multipart/form-data" => {
            let multipart = Multipart::from_request(request, &state)
                .await
                .map_err(|e| ApiError::invalid(e.body_text()))?;
            add_files(&state, &collection, multipart).await
        }
        other => match ArchiveKind::from_media_type(other) {
            Some(kind) => add_archive(&state, &collection, kind, request.into_body()).await,
            None => Err(ApiError::new(
                ErrorKind::InvalidInput,
                format!(
                    "Content-Type {content_type:?} is not accepted here; send application/json, \
                     application/x-ndjson, multipart/form-data, or an archive as application/zip, \
                     application/x-tar or application/gzip (a gzipped tar)"
                ),
            )),
        },
    }
}

/// A validated document whose bytes are not stored yet.
struct Draft {
    fields: DocumentFields,
    source_name: Option<String>,
    media_type: String,
    bytes: Vec<u8>,
}

impl Draft {
    /// The checks shared by the JSON body and each NDJSON line.
    fn from_text(body: AddDocument, max_document_bytes: usize) -> ApiResult<Self> {
        if body.text.trim().is_empty() {
            return Err(ApiError::invalid("text must not be empty"));
        }
        if body.text.contains('\0') {
            return Err(ApiError::invalid(NUL_TEXT));
        }
        if body.text.len() > max_document_bytes {
            return Err(ApiError::new(
                ErrorKind::TooLarge,
                format!("text is {} bytes; the limit is {max_document_bytes}", body.text.len()),
            ));
        }
        let title = body.title.unwrap_or_else(|| title_from_text(&body.text));
        let fields = DocumentFields::parse(title, body.metadata, body.external_id, body.acl)?;
        Ok(Self {
            fields,
            source_name: None,
            media_type: "text/plain".to_owned(),
            bytes: body.text.into_bytes(),
        })
    }
}

/// Drafts waiting to be written together.
struct Group<K> {
    entries: Vec<(K, Draft)>,
    bytes: usize,
}

impl<K> Group<K> {
    fn new() -> Self {
        Self { entries: Vec::new(), bytes: 0 }
    }

    /// Adds the draft; true when the group should be written now.
    fn push(&mut self, key: K, draft: Draft) -> bool {
        self.bytes += draft.bytes.len();
        self.entries.push((key, draft));
        self.entries.len() >= GROUP_DOCUMENTS || self.bytes >= GROUP_BYTES
    }

    /// Stores the drafts' bytes, then adds them all in one transaction;
    /// each key comes back with what adding its draft did.
    async fn write(
        &mut self,
        state: &AppState,
        collection: &CollectionRecord,
        batch: Option<BatchId>,
    ) -> ApiResult<Vec<(K, AddOutcome)>> {
        self.bytes = 0;
        let (keys, drafts): (Vec<K>, Vec<Draft>) = std::mem::take(&mut self.entries).into_iter().unzip();
        let news: Vec<NewDocument> = futures::stream::iter(drafts)
            .map(|draft| store_bytes(state, collection, draft))
            .buffered(BLOB_WRITERS)
            .try_collect()
            .await?;
        let outcomes = state.store.insert_documents_with_jobs(batch, &news).await?;
        if outcomes.iter().any(|outcome| !matches!(outcome, AddOutcome::Duplicate(_))) {
            state.workers.job_queued();
        }
        Ok(keys.into_iter().zip(outcomes).collect())
    }
}

async fn store_bytes(
    state: &AppState,
    collection: &CollectionRecord,
    draft: Draft,
) -> ApiResult<NewDocument> {
    let content_hash: ContentHash = state.blobs.put(&draft.bytes).await?;
    Ok(NewDocument {
        id: DocumentId::new(),
        collection: collection.id,
        tenant: collection.tenant.clone(),
        external_id: draft.fields.external_id,
        title: draft.fields.title,
        source_name: draft.source_name,
        media_type: draft.media_type,
        content_hash,
        size_bytes: draft.bytes.len() as i64,
        metadata: draft.fields.metadata,
        acl: draft.fields.acl,
    })
}

/// 202 with the queued document (new, or a new version of the document
/// with the same `external_id`), or 200 with the document that already
/// holds this content.
async fn add_json(state: &AppState, collection: &CollectionRecord, body: AddDocument) -> ApiResult<Response> {
    let mut group = Group::new();
    group.push((), Draft::from_text(body, state.server.max_document_bytes)?);
    let outcome = group
        .write(state, collection, None)
        .await?
        .pop()
        .map(|(_, outcome)| outcome)
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, "adding the document gave no outcome"))?;
    let status =
        if matches!(outcome, AddOutcome::Duplicate(_)) { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(DocumentView::from(&outcome))).into_response())
}

/// One document per line, read as the body streams in; invalid lines are
/// reported and skipped, valid ones are written in groups.
async fn add_ndjson(state: &AppState, collection: &CollectionRecord, body: Body) -> ApiResult<Response> {
    let batch = BatchId::new();
    let max_document_bytes = state.server.max_document_bytes;
    let mut report = BulkReport::default();
    let mut splitter = LineSplitter::new(max_document_bytes);
    let mut group = Group::new();
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let mut documents = 0usize;
    loop {
        let (lines, last) = match stream.next().await {
            Some(Ok(chunk)) => (splitter.push(&chunk), false),
            Some(Err(error)) => {
                tracing::debug!(%batch, lines = seen, %error, "bulk upload body failed");
                return Err(ApiError::invalid(format!(
                    "the request body could not be read after line {seen} (documents written \
                     before that stay queued): {error}"
                )));
            }
            None => (splitter.finish().into_iter().collect(), true),
        };
        for line in lines {
            seen = line.number;
            let bytes = match line.content {
                LineContent::Text(bytes) => bytes,
                LineContent::TooLong => {
                    report.reject(
                        line.number,
                        format!(
                            "the line is longer than the {max_document_bytes} byte limit for one document"
                        ),
                    );
                    continue;
                }
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            documents += 1;
            if documents > state.server.max_batch_documents {
                report.reject(
                    line.number,
                    format!("one upload takes at most {} documents", state.server.max_batch_documents),
                );
                continue;
            }
            let draft = parse_line(bytes).await.and_then(|body| {
                Draft::from_text(body, max_document_bytes).map_err(|error| error.0.message().to_owned())
            });
            match draft {
                Ok(draft) => {
                    if group.push(line.number, draft) {
                        report.record(group.write(state, collection, Some(batch)).await?);
                    }
                }
                Err(reason) => report.reject(line.number, reason),
            }
        }
        if last {
            break;
        }
    }
    report.record(group.write(state, collection, Some(batch)).await?);
    if report.is_empty() {
        return Err(ApiError::invalid("the body holds no documents; send one JSON object per line"));
    }
    let record = state
        .store
        .create_batch(&NewBatch {
            id: batch,
            collection: collection.id,
            tenant: collection.tenant.clone(),
            accepted: report.accepted,
            duplicates: report.duplicates,
            rejected: report.rejected,
        })
        .await?;
    tracing::info!(
        %batch,
        accepted = record.accepted,
        duplicates = record.duplicates,
        rejected = record.rejected,
        "bulk upload queued"
    );
    Ok((StatusCode::ACCEPTED, Json(report.into_view(batch))).into_response())
}

/// Parses one NDJSON line; the error is the reason shown for the line.
async fn parse_line(bytes: Vec<u8>) -> Result<AddDocument, String> {
    if bytes.len() <= INLINE_PARSE_BYTES {
        return parse_json_line(&bytes);
    }
    tokio::task::spawn_blocking(move || parse_json_line(&bytes))
        .await
        .map_err(|_| "the line could not be parsed".to_owned())?
}

fn parse_json_line(bytes: &[u8]) -> Result<AddDocument, String> {
    // serde would also read a struct from an array of its fields in order.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("the line is not a JSON object".to_owned());
    }
    serde_json::from_slice(bytes).map_err(|error| {
        // The parser sees each line alone, as line 1: keep only the column.
        let message = error.to_string();
        if error.line() == 0 {
            return message;
        }
        let position = format!(" at line {} column {}", error.line(), error.column());
        let message = message.strip_suffix(&position).unwrap_or(&message);
        format!("{message} (column {})", error.column())
    })
}

/// What a bulk upload did, line by line; the lists stop at
/// [`MAX_ECHOED`] entries, the counts do not.
#[derive(Default)]
struct BulkReport {
    accepted: i64,
    duplicates: i64,
    rejected: i64,
    rejected_lines: Vec<RejectedLine>,
    documents: Vec<BulkDocumentView>,
}

impl BulkReport {
    fn reject(&mut self, line: usize, reason: String) {
        self.rejected += 1;
        if self.rejected_lines.len() < MAX_ECHOED {
            self.rejected_lines.push(RejectedLine { line, reason });
        }
    }

    fn record(&mut self, outcomes: Vec<(usize, AddOutcome)>) {
        for (line, outcome) in outcomes {
            if matches!(outcome, AddOutcome::Duplicate(_)) {
                self.duplicates += 1;
            } else {
                self.accepted += 1;
            }
            if self.documents.len() < MAX_ECHOED {
                self.documents.push(BulkDocumentView::new(line, &outcome));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.accepted + self.duplicates + self.rejected == 0
    }

    fn into_view(self, batch: BatchId) -> BulkAddView {
        BulkAddView {
            batch_id: batch.to_string(),
            accepted: self.accepted,
            duplicates: self.duplicates,
            rejected_count: self.rejected,
            rejected_truncated: (self.rejected_lines.len() as i64) < self.rejected,
            rejected: self.rejected_lines,
            documents_truncated: (self.documents.len() as i64) < self.accepted + self.duplicates,
            documents: self.documents,
        }
    }
}

/// One line of an NDJSON body, numbered from 1.
#[derive(Debug, PartialEq)]
struct Line {
    number: usize,
    content: LineContent,
}

#[derive(Debug, PartialEq)]
enum LineContent {
    /// Without its `\n` (or `\r\n`).
    Text(Vec<u8>),
    /// Longer than the limit: dropped as it streamed in.
    TooLong,
}

/// Cuts a byte stream into lines, holding at most `limit` bytes of the
/// current line: the rest of a longer line is skipped, not buffered.
struct LineSplitter {
    limit: usize,
    current: Vec<u8>,
    too_long: bool,
    number: usize,
}

impl LineSplitter {
    fn new(limit: usize) -> Self {
        Self { limit, current: Vec::new(), too_long: false, number: 0 }
    }

    /// The lines that `chunk` completes.
    fn push(&mut self, mut chunk: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            self.take(&chunk[..end]);
            lines.push(self.end_line());
            chunk = &chunk[end + 1..];
        }
        self.take(chunk);
        lines
    }

    /// The last line, when the stream does not end with a newline.
    fn finish(&mut self) -> Option<Line> {
        (!self.current.is_empty() || self.too_long).then(|| self.end_line())
    }

    fn take(&mut self, piece: &[u8]) {
        if self.too_long {
            return;
        }
        if self.current.len() + piece.len() > self.limit {
            self.too_long = true;
            self.current = Vec::new();
        } else {
            self.current.extend_from_slice(piece);
        }
    }

    fn end_line(&mut self) -> Line {
        self.number += 1;
        let content = if std::mem::take(&mut self.too_long) {
            LineContent::TooLong
        } else {
            let mut text = std::mem::take(&mut self.current);
            if text.last() == Some(&b'\r') {
                text.pop();
            }
            LineContent::Text(text)
        };
        Line { number: self.number, content }
    }
}

async fn add_files(
    state: &AppState,
    collection: &CollectionRecord,
    mut multipart: Multipart,
) -> ApiResult<Response> {
    let mut intake = FileIntake::new(state, collection);
    while let Some(mut field) = multipart.next_field().await.map_err(|e| ApiError::invalid(e.body_text()))? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "metadata" {
            let text = field.text().await.map_err(|e| ApiError::invalid(e.body_text()))?;
            intake.metadata = serde_json::from_str(&text)
                .map_err(|e| ApiError::invalid(format!("the metadata field must be a JSON object: {e}")))?;
            continue;
        }
        if name == "acl" {
            let text = field.text().await.map_err(|e| ApiError::invalid(e.body_text()))?;
            intake.acl = serde_json::from_str(&text).map_err(|e| {
                ApiError::invalid(format!("the acl field must be a JSON array of principals: {e}"))
            })?;
            continue;
        }
        if name == "text_field" || name == "title_field" {
            let value = field.text().await.map_err(|e| ApiError::invalid(e.body_text()))?;
            if value.is_empty() || value.len() > 64 {
                return Err(ApiError::invalid(format!("{name} must be 1-64 bytes")));
            }
            if name == "text_field" {
                intake.text_field = value
            } else {
                intake.title_field = value
            }
            continue;
        }
        if name != "file" && name != "files" {
            return Err(ApiError::invalid(format!(
                "unexpected form field {name:?}; send files in fields named \"file\""
            )));
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
            intake.reject(label, format!("larger than the {} byte limit", state.server.max_document_bytes));
            continue;
        }
        match ragd_ingest::archive_kind(file_name.as_deref(), &bytes) {
            Some(kind) => {
                let limits = archive_limits(state);
                let (sender, receiver) = tokio::sync::mpsc::channel(ARCHIVE_QUEUE);
                let unpacking = tokio::task::spawn_blocking(move || {
                    ragd_ingest::unpack(kind, std::io::Cursor::new(bytes), &limits, |item| {
                        hand_over(&sender, item)
                    })
                });
                intake.take_archive(Some(&label), receiver, unpacking).await?;
            }
            None => intake.take_file(file_name, claimed_type, bytes).await?,
        }
    }
    intake.finish().await
}

/// Entries an archive unpacker may run ahead of the writes.
const ARCHIVE_QUEUE: usize = 4;

fn archive_limits(state: &AppState) -> ArchiveLimits {
    ArchiveLimits {
        max_entries: state.server.max_archive_files,
        max_entry_bytes: state.server.max_document_bytes as u64,
        max_total_bytes: state.server.max_archive_bytes,
    }
}

/// Passes an unpacked entry from the blocking pool to the request; stops the
/// unpacking when the request has gone.
fn hand_over(sender: &tokio::sync::mpsc::Sender<Unpacked>, item: Unpacked) -> ControlFlow<()> {
    match sender.blocking_send(item) {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    }
}

/// A ZIP or tar archive sent as the whole body: its files become one batch.
/// A tar stream is unpacked as it arrives; a ZIP keeps its directory at the
/// end, so it is spooled to a scratch file first. Either way only one entry
/// at a time is in memory.
async fn add_archive(
    state: &AppState,
    collection: &CollectionRecord,
    kind: ArchiveKind,
    body: Body,
) -> ApiResult<Response> {
    let limits = archive_limits(state);
    let max_body = state.server.max_archive_bytes;
    let (sender, receiver) = tokio::sync::mpsc::channel(ARCHIVE_QUEUE);
    let unpacking = match kind {
        ArchiveKind::Zip => {
            let file = spool(state, body, max_body).await?;
            tokio::task::spawn_blocking(move || {
                ragd_ingest::unpack(kind, file, &limits, |item| hand_over(&sender, item))
            })
        }
        ArchiveKind::Tar | ArchiveKind::TarGz => {
            let stream = body.into_data_stream().map_err(std::io::Error::other);
            let reader = SyncIoBridge::new(StreamReader::new(stream));
            tokio::task::spawn_blocking(move || {
                let mut bounded = reader.take(max_body + 1);
                let result =
                    ragd_ingest::unpack_stream(kind, &mut bounded, &limits, |item| hand_over(&sender, item));
                if bounded.limit() == 0 {
                    return Err(ragd_ingest::Error::TooLarge(format!(
                        "the archive is larger than {max_body} bytes"
                    )));
                }
                result
            })
        }
    };
    let mut intake = FileIntake::new(state, collection);
    intake.take_archive(None, receiver, unpacking).await?;
    intake.finish().await
}

/// Writes the body to an unnamed scratch file beside the blobs, up to
/// `limit` bytes.
async fn spool(state: &AppState, body: Body, limit: u64) -> ApiResult<std::fs::File> {
    let file = state.blobs.scratch_file().await?;
    let mut writer = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece =
            piece.map_err(|e| ApiError::invalid(format!("the request body could not be read: {e}")))?;
        written += piece.len() as u64;
        if written > limit {
            return Err(ApiError::new(
                ErrorKind::TooLarge,
                format!("the archive is larger than {limit} bytes"),
            ));
        }
        writer.write_all(&piece).await.map_err(scratch_error)?;
    }
    writer.flush().await.map_err(scratch_error)?;
    let mut file = writer.into_std().await;
    file.seek(std::io::SeekFrom::Start(0)).map_err(scratch_error)?;
    Ok(file)
}

fn scratch_error(error: std::io::Error) -> ApiError {
    ApiError(ragd_core::Error::with_source(
        ErrorKind::Internal,
        "the upload could not be spooled to disk",
        error,
    ))
}

/// Files of one multipart request or archive on their way to a batch:
/// each becomes a document (or, for CSV and JSONL, one per row), and what
/// cannot be taken is listed with the reason.
struct FileIntake<'a> {
    state: &'a AppState,
    collection: &'a CollectionRecord,
    batch: BatchId,
    group: Group<()>,
    outcomes: Vec<((), AddOutcome)>,
    /// Documents offered so far, taken or not; past
    /// `server.max_batch_documents` they are refused.
    offered: usize,
    /// The first [`MAX_ECHOED`] rejections, and the count of all.
    rejected: Vec<Value>,
    rejected_count: usize,
    metadata: Map<String, Value>,
    /// From the `acl` form field: the principals of the files after it.
    acl: Vec<String>,
    text_field: String,
    title_field: String,
}

impl<'a> FileIntake<'a> {
    fn new(state: &'a AppState, collection: &'a CollectionRecord) -> Self {
        Self {
            state,
            collection,
            batch: BatchId::new(),
            group: Group::new(),
            outcomes: Vec::new(),
            offered: 0,
            rejected: Vec::new(),
            rejected_count: 0,
            metadata: Map::new(),
            acl: Vec::new(),
            text_field: "text".to_owned(),
            title_field: "title".to_owned(),
        }
    }

    fn reject(&mut self, file: String, reason: impl Into<String>) {
        self.rejected_count += 1;
        if self.rejected.len() < MAX_ECHOED {
            self.rejected.push(json!({"file": file, "reason": reason.into()}));
        }
    }

    /// Counts a document offered under `label`; false, with the reason
    /// recorded, once the upload holds as many as one may.
    fn admit(&mut self, label: &str) -> bool {
        self.offered += 1;
        let limit = self.state.server.max_batch_documents;
        if self.offered > limit {
            self.reject(label.to_owned(), format!("one upload takes at most {limit} documents"));
            return false;
        }
        true
    }

    async fn push(&mut self, draft: Draft) -> ApiResult<()> {
        if self.group.push((), draft) {
            let written = self.group.write(self.state, self.collection, Some(self.batch)).await?;
            self.outcomes.extend(written);
        }
        Ok(())
    }

    /// Takes the entries an unpacker hands over, named `archive/path` when
    /// the archive has a name; an unreadable archive is one rejection.
    async fn take_archive(
        &mut self,
        archive: Option<&str>,
        mut entries: tokio::sync::mpsc::Receiver<Unpacked>,
        unpacking: tokio::task::JoinHandle<ragd_ingest::Result<()>>,
    ) -> ApiResult<()> {
        let path =
            |name: &str| archive.map_or_else(|| name.to_owned(), |archive| format!("{archive}/{name}"));
        while let Some(item) = entries.recv().await {
            match item {
                Unpacked::Entry(entry) => self.take_file(Some(path(&entry.name)), None, entry.bytes).await?,
                Unpacked::Rejected(entry) => self.reject(path(&entry.name), entry.reason),
            }
        }
        let result = unpacking.await.map_err(|e| {
            ApiError(ragd_core::Error::with_source(ErrorKind::Internal, "unpacking failed", e))
        })?;
        if let Err(error) = result {
            let error = ragd_core::Error::from(error);
            // A body that is too large fails the request, as any other body would.
            if archive.is_none() && error.kind() == ErrorKind::TooLarge {
                return Err(ApiError(error));
            }
            self.reject(archive.unwrap_or("(archive)").to_owned(), error.message());
        }
        Ok(())
    }

    async fn take_file(
        &mut self,
        file_name: Option<String>,
        claimed_type: Option<String>,
        bytes: Vec<u8>,
    ) -> ApiResult<()> {
        let label = file_name.clone().unwrap_or_else(|| "(unnamed)".to_owned());
        if label.contains('\0') {
            self.reject(label, "the file name contains a NUL character (U+0000)");
            return Ok(());
        }
        if let Some(row_format) = ragd_ingest::row_format(file_name.as_deref()) {
            return self.take_rows(&label, row_format, &bytes).await;
        }
        if !self.admit(&label) {
            return Ok(());
        }
        let format = match ragd_ingest::detect_format(file_name.as_deref(), claimed_type.as_deref(), &bytes) {
            Ok(format) => format,
            Err(error) => {
                self.reject(label, ragd_core::Error::from(error).message());
                return Ok(());
            }
        };
        let title = file_name.as_deref().map(title_from_file_name).unwrap_or_default();
        let fields = match DocumentFields::parse(title, self.metadata.clone(), None, self.acl.clone()) {
            Ok(fields) => fields,
            Err(ApiError(error)) => {
                self.reject(label, error.message());
                return Ok(());
            }
        };
        self.push(Draft { fields, source_name: file_name, media_type: format.media_type(), bytes }).await
    }

    async fn take_rows(
        &mut self,
        label: &str,
        row_format: ragd_ingest::RowFormat,
        bytes: &[u8],
    ) -> ApiResult<()> {
        let (text_field, title_field) = (self.text_field.clone(), self.title_field.clone());
        let fields = RowFields { text: &text_field, title: &title_field };
        let rows = match ragd_ingest::split_rows(row_format, bytes, fields) {
            Ok(rows) => rows,
            Err(error) => {
                self.reject(label.to_owned(), ragd_core::Error::from(error).message());
                return Ok(());
            }
        };
        for row in rows {
            let row = match row {
                Ok(row) => row,
                Err(refused) => {
                    self.reject(format!("{label}#{}", refused.row), refused.reason);
                    continue;
                }
            };
            let source_name = format!("{label}#{}", row.row);
            if !self.admit(&source_name) {
                continue;
            }
            if row.text.contains('\0') {
                self.reject(source_name, NUL_TEXT);
                continue;
            }
            let mut row_metadata = self.metadata.clone();
            row_metadata.extend(row.metadata);
            let title =
                row.title.unwrap_or_else(|| format!("{} row {}", title_from_file_name(label), row.row));
            let fields = match DocumentFields::parse(title, row_metadata, None, self.acl.clone()) {
                Ok(fields) => fields,
                Err(ApiError(error)) => {
                    self.reject(source_name, error.message());
                    continue;
                }
            };
            self.push(Draft {
                fields,
                source_name: Some(source_name),
                media_type: "text/plain".to_owned(),
                bytes: row.text.into_bytes(),
            })
            .await?;
        }
        Ok(())
    }

    /// Writes what is left and records the batch: 202 with its documents and
    /// rejections, or 4xx when nothing at all was taken.
    async fn finish(mut self) -> ApiResult<Response> {
        let written = self.group.write(self.state, self.collection, Some(self.batch)).await?;
        self.outcomes.extend(written);
        if self.outcomes.is_empty() {
            let reasons: Vec<String> = self
                .rejected
                .iter()
                .map(|r| {
                    format!("{}: {}", r["file"].as_str().unwrap_or(""), r["reason"].as_str().unwrap_or(""))
                })
                .collect();
            if reasons.is_empty() {
                return Err(ApiError::invalid(
                    "no files in the request; send them in form fields named \"file\"",
                ));
            }
            return Err(ApiError::new(
                ErrorKind::Unprocessable,
                format!("no file was accepted: {}", reasons.join("; ")),
            ));
        }
        let duplicates =
            self.outcomes.iter().filter(|(_, outcome)| matches!(outcome, AddOutcome::Duplicate(_))).count()
                as i64;
        self.state
            .store
            .create_batch(&NewBatch {
                id: self.batch,
                collection: self.collection.id,
                tenant: self.collection.tenant.clone(),
                accepted: self.outcomes.len() as i64 - duplicates,
                duplicates,
                rejected: self.rejected_count as i64,
            })
            .await?;
        let documents: Vec<DocumentView> =
            self.outcomes.iter().map(|(_, outcome)| DocumentView::from(outcome)).collect();
        let body = json!({
            "batch_id": self.batch.to_string(),
            "documents": documents,
            "rejected": self.rejected,
            "rejected_count": self.rejected_count,
        });
        Ok((StatusCode::ACCEPTED, Json(body)).into_response())
    }
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Page size, 1 to `server.max_page_size` (500 by default); 50 when absent.
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// The `next_after` of the previous page.
    #[param(
        pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
    )]
    after: Option<String>,
    on_behalf_of: Option<String>,
}

#[utoipa::path(get, path = "/v1/collections/{collection}/documents", tag = "documents", params(("collection" = String, Path, description = "collection id or name"), ListParams),
    responses((status = 200, description = "a page of documents, oldest first", body = ref("#/components/schemas/DocumentList")),
        (status = 400, description = "invalid input", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such collection", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Value>> {
    let visibility = VisibilityParams { on_behalf_of: params.on_behalf_of }.visibility(&caller)?;
    let collection = resolve(&state, &caller.tenant, &collection).await?;
    let limit = params.limit.unwrap_or(50);
    if limit == 0 || limit > state.server.max_page_size {
        return Err(ApiError::invalid(format!("limit must be between 1 and {}", state.server.max_page_size)));
    }
    let after = params.after.as_deref().map(str::parse::<DocumentId>).transpose()?;
    let documents = state.store.list_visible_documents(collection.id, after, limit, &visibility).await?;
    let next_after = (documents.len() == limit as usize).then(|| documents.last().map(|d| d.id.to_string())).flatten();
    let views: Vec<DocumentView> = documents.iter().map(DocumentView::from).collect();
    Ok(Json(json!({"documents": views, "next_after": next_after})))
}

/// The document, if the caller may see it: one it may not is not found,
/// exactly like one that does not exist.
async fn find(
    state: &AppState,
    caller: &Caller,
    params: &VisibilityParams,
    collection: &str,
    document: &str,
) -> ApiResult<DocumentRecord> {
    let visibility = params.visibility(caller)?;
    let collection = resolve(state, &caller.tenant, collection).await?;
    let id: DocumentId = document.parse()?;
    let record = state.store.get_document(collection.id, id).await?;
    if !visibility.allows(&record.acl) {
        return Err(ApiError::new(ErrorKind::NotFound, format!("document {id} not found")));
    }
    Ok(record)
}

#[utoipa::path(get, path = "/v1/collections/{collection}/documents/{document}", tag = "documents", params(("collection" = String, Path, description = "collection id or name"), ("document" = String, Path, description = "document id", pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")),
    responses((status = 200, description = "the document and its ingestion status", body = DocumentView),
        (status = 400, description = "not a document id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such collection or document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, document)): Path<(String, String)>,
    Query(params): Query<VisibilityParams>,
) -> ApiResult<Json<DocumentView>> {
    let record = find(&state, &caller, &params, &collection, &document).await?;
    Ok(Json(DocumentView::from(&record)))
}

#[utoipa::path(delete, path = "/v1/collections/{collection}/documents/{document}", tag = "documents", params(("collection" = String, Path, description = "collection id or name"), ("document" = String, Path, description = "document id", pattern = "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")),
    responses((status = 204, description = "deleted with its chunks"), (status = 400, description = "not a document id", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such collection or document", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, document)): Path<(String, String)>,
    Query(params): Query<VisibilityParams>,
) -> ApiResult<StatusCode> {
    caller.require(Role::Write)?;
    let record = find(&state, &caller, &params, &collection, &document).await?;
    state.store.delete_document(record.collection, record.id).await?;
    // Read after the row is gone: a reindex that starts later never copies
    // the document, and one under way is in these targets.
    let collection = state.store.get_collection(&caller.tenant, record.collection).await?;
    for write in collection.write_targets() {
        state.index.delete_document(write.target, record.id, None).await?;
    }
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

    /// Line numbers with their text, or None for a line over the limit.
    type Lines = Vec<(usize, Option<String>)>;

    /// Feeds `input` cut at every possible place into two chunks and at
    /// every byte, and checks that the lines never depend on the cuts.
    fn split(input: &str, limit: usize) -> Lines {
        let run = |chunks: Vec<&[u8]>| {
            let mut splitter = LineSplitter::new(limit);
            let mut lines: Vec<Line> = chunks.into_iter().flat_map(|chunk| splitter.push(chunk)).collect();
            lines.extend(splitter.finish());
            lines
                .into_iter()
                .map(|line| match line.content {
                    LineContent::Text(text) => (line.number, Some(String::from_utf8(text).unwrap())),
                    LineContent::TooLong => (line.number, None),
                })
                .collect::<Vec<_>>()
        };
        let bytes = input.as_bytes();
        let whole = run(vec![bytes]);
        for cut in 0..=bytes.len() {
            assert_eq!(run(vec![&bytes[..cut], &bytes[cut..]]), whole, "cut at {cut} of {input:?}");
        }
        assert_eq!(run(bytes.chunks(1).collect()), whole, "byte by byte: {input:?}");
        whole
    }

    #[test]
    fn ndjson_lines_are_split_whatever_the_chunks() {
        let text = |n: usize, s: &str| (n, Some(s.to_owned()));
        let too_long = |n: usize| (n, None);
        let cases: Vec<(&str, usize, Lines)> = vec![
            ("", 10, vec![]),
            ("a\n", 10, vec![text(1, "a")]),
            ("a\r\nbb\n\nccc", 10, vec![text(1, "a"), text(2, "bb"), text(3, ""), text(4, "ccc")]),
            // The limit holds the line's bytes; longer lines are dropped
            // but still numbered, and the next line is unaffected.
            ("abc\nabcd\nxy\nabcdefgh", 3, vec![text(1, "abc"), too_long(2), text(3, "xy"), too_long(4)]),
            ("abcdefgh\n\n", 3, vec![too_long(1), text(2, "")]),
        ];
        for (input, limit, expected) in cases {
            assert_eq!(split(input, limit), expected, "{input:?} with limit {limit}");
        }
    }

    #[test]
    fn ndjson_line_errors_name_the_column() {
        let cases = [
            (r#"{"text": 5}"#, "invalid type: integer `5`, expected a string (column 10)"),
            (r#"{"text": "x", "colour": 1}"#, "unknown field `colour`"),
            (r#"{"text": "#, "EOF while parsing a value (column 9)"),
            ("[\"title\", \"text\"]", "the line is not a JSON object"),
            ("5", "the line is not a JSON object"),
        ];
        for (line, reason) in cases {
            let error = parse_json_line(line.as_bytes()).err().unwrap_or_default();
            assert!(error.starts_with(reason) || error.contains(reason), "{line}: {error}");
            assert!(!error.contains("line 1"), "{line}: {error}");
        }
    }
}
