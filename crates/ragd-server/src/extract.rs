//! Extractors whose rejections are problem details.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use ragd_core::TenantId;

use crate::error::ApiError;

/// `Json` whose rejection (malformed JSON, wrong Content-Type, unknown
/// field) is an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct AppJson<T>(pub T);

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
