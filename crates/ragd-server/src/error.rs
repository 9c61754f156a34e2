//! The single mapping from errors to HTTP: every failure leaves the server
//! as an RFC 9457 problem-details body with a stable `type` and `code`, and
//! nothing internal (paths, SQL, cause chains) reaches the caller.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ragd_core::ErrorKind;
use serde::Serialize;

/// One row per problem type: (code, HTTP status, title).
fn describe(kind: ErrorKind) -> (&'static str, StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidInput => ("invalid_request", StatusCode::BAD_REQUEST, "Invalid request"),
        ErrorKind::Unprocessable => ("unprocessable_content", StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable content"),
        ErrorKind::NotFound => ("not_found", StatusCode::NOT_FOUND, "Not found"),
        ErrorKind::Conflict => ("conflict", StatusCode::CONFLICT, "Conflict"),
        ErrorKind::TooLarge => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE, "Payload too large"),
        ErrorKind::Upstream => ("upstream_error", StatusCode::BAD_GATEWAY, "Upstream service failed"),
        ErrorKind::Unavailable => ("unavailable", StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
        ErrorKind::Internal => ("internal_error", StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
    }
}

/// Problem types are URNs: stable identifiers that need no resolvable host.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:ragd:problem:";

#[derive(Debug)]
pub struct ApiError(pub ragd_core::Error);

pub type ApiResult<T> = Result<T, ApiError>;

macro_rules! from_crate_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for ApiError {
            fn from(error: $error) -> Self {
                Self(error.into())
            }
        }
    )*};
}

from_crate_errors!(ragd_core::Error, ragd_store::Error, ragd_retrieve::Error, ragd_jobs::Error);

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self(ragd_core::Error::invalid(message))
    }

    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(ragd_core::Error::new(kind, message))
    }
}

/// An RFC 9457 problem-details body; `code` is the last part of `type`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    /// `urn:ragd:problem:<code>`.
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    let body = Problem { kind: format!("{PROBLEM_TYPE_PREFIX}{code}"), title, status: status.as_u16(), detail, code };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status, title) = describe(self.0.kind());
        let detail = if self.0.kind() == ErrorKind::Internal {
            tracing::error!(error = %self.0.chain(), "internal error");
            "the server failed to handle this request; the cause is in its log"
        } else {
            tracing::debug!(error = %self.0.chain(), status = status.as_u16(), "request rejected");
            self.0.message()
        };
        problem(status, code, title, detail)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // Syntax errors are 400, well-formed JSON of the wrong shape is 422.
        let kind = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
            StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::Unprocessable,
            _ => ErrorKind::InvalidInput,
        };
        Self::new(kind, rejection.body_text())
    }
}

/// Turns axum's own plain-text errors (unknown route, wrong method, body
/// over the limit) into problem details too.
pub async fn problem_for_plain_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (code, title, detail) = match status {
        StatusCode::NOT_FOUND => ("not_found", "Not found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "Method not allowed", "this route does not accept that method"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "Payload too large", "the request body is larger than the configured limit"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "Unsupported media type", "this route does not accept that Content-Type"),
        s if s.is_server_error() => ("internal_error", "Internal error", "the server failed to handle this request"),
        _ => ("invalid_request", "Invalid request", "the request is not valid"),
    };
    problem(status, code, title, detail)
}
