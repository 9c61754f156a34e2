//! The single mapping from errors to HTTP: every failure leaves the server
//! as an RFC 9457 problem-details body with a stable `type` and `code`, and
//! nothing internal (paths, SQL, cause chains) reaches the caller.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ragd_core::ErrorKind;
use serde::Serialize;

/// One row per problem type: (code, HTTP status, title).
fn describe(kind: ErrorKind) -> (&'static str, StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidInput => ("invalid_request", StatusCode::BAD_REQUEST, "Invalid request"),
        ErrorKind::Unprocessable => ("unprocessable_content", StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable content"),
        ErrorKind::NotFound => ("not_found", StatusCode::NOT_FOUND, "Not found"),
        ErrorKind::Unauthenticated => ("unauthenticated", StatusCode::UNAUTHORIZED, "Unauthenticated"),
        ErrorKind::Forbidden => ("forbidden", StatusCode::FORBIDDEN, "Forbidden"),
        ErrorKind::RateLimited => ("rate_limited", StatusCode::TOO_MANY_REQUESTS, "Too many requests"),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    problem_with_id(status, code, title, detail, None)
}

fn problem_with_id(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: &str,
    request_id: Option<&str>,
) -> Response {
    let body = Problem {
        kind: format!("{PROBLEM_TYPE_PREFIX}{code}"),
        title,
        status: status.as_u16(),
        detail,
        code,
        request_id,
    };
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
        let mut response = problem(status, code, title, detail);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ragd\""));
        }
        response
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

/// The header that carries each request's id, set (or kept) on the way in
/// and echoed on the way out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Gives every error leaving the server its final form: axum's own
/// plain-text errors (unknown route, wrong method, body over the limit)
/// become problem details too, and a 500 says only that it failed, with
/// the request id under which its log has the cause.
pub async fn finish_problems(request: Request, next: Next) -> Response {
    let request_id =
        request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        let detail = format!(
            "the server failed to handle this request; its log has the cause under request id {request_id}"
        );
        return problem_with_id(status, "internal_error", "Internal error", &detail, Some(&request_id));
    }
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
