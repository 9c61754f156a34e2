//! Extractors whose rejections are problem details.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use ragd_core::{ErrorKind, TenantId};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json` whose rejection (malformed JSON, wrong Content-Type, unknown
/// field, a body that is not an object) is an [`ApiError`].
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state).await.map_err(
            |rejection| match rejection.status() {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new(ErrorKind::TooLarge, rejection.body_text())
                }
                _ => ApiError::invalid(rejection.body_text()),
            },
        )?;
        // serde reads a struct from an array of its fields in order too, so
        // `[null]` would pass for `{}`; every body here is an object.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::new(ErrorKind::Unprocessable, "the body must be a JSON object"));
        }
        let Json(value) = Json::from_request(Request::from_parts(parts, Body::from(bytes)), state).await?;
        Ok(Self(value))
    }
}

/// Who is calling. Until API keys exist every request acts for the default
/// tenant; handlers already take the tenant from here so that isolation is
/// enforced in one place.
pub struct Caller {
    pub tenant: TenantId,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Self { tenant: TenantId::default_tenant() })
    }
}
