//! Extractors whose rejections are problem details, and who is calling.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use ragd_core::{ErrorKind, TenantId, Visibility};
use ragd_store::Role;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

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

/// Who is calling: the API key the auth middleware accepted. Handlers take
/// the tenant from here, so isolation is enforced in one place.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id, as the audit log records it.
    pub key_id: String,
    /// The tenant whose collections the request reaches; operator keys
    /// reach the default tenant's.
    pub tenant: TenantId,
    /// The key's own tenant; `None` for an operator key.
    pub key_tenant: Option<TenantId>,
    pub role: Role,
    /// Whether the key may act on behalf of end users.
    pub on_behalf_of: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "the route is not behind authentication"))
    }
}

impl Caller {
    /// Fails with 403 unless the key's role is at least `role`.
    pub fn require(&self, role: Role) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("this needs a key with the {role} role; this key's role is {}", self.role),
            ))
        }
    }

    /// Which documents the request may see. Acting on behalf of a user, the
    /// user's ACLs apply (for keys allowed to); otherwise an admin key sees
    /// every document of its tenant, and read and write keys only the
    /// documents without an ACL.
    pub fn visibility(&self, on_behalf_of: Option<&OnBehalfOf>) -> ApiResult<Visibility> {
        match on_behalf_of {
            Some(principal) => {
                if !self.on_behalf_of {
                    return Err(ApiError::new(
                        ErrorKind::Forbidden,
                        "this key may not act on behalf of users; create one with \"on_behalf_of\": true",
                    ));
                }
                principal.principals().map(Visibility::Principals)
            }
            None if self.role == Role::Admin => Ok(Visibility::All),
            None => Ok(Visibility::public()),
        }
    }
}

/// The end user a request is made for: the user's name and groups are
/// matched literally against documents' `acl` entries.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnBehalfOf {
    #[schema(min_length = 1, max_length = 256)]
    pub user: String,
    #[serde(default)]
    #[schema(max_items = 256)]
    pub groups: Vec<String>,
}

const MAX_GROUPS: usize = 256;
const MAX_PRINCIPAL_BYTES: usize = 256;

impl OnBehalfOf {
    /// The user and groups, checked like ACL entries.
    fn principals(&self) -> ApiResult<Vec<String>> {
        let bad = |p: &String| p.is_empty() || p.len() > MAX_PRINCIPAL_BYTES;
        if bad(&self.user) {
            return Err(ApiError::invalid(format!(
                "on_behalf_of.user must be 1-{MAX_PRINCIPAL_BYTES} bytes"
            )));
        }
        if self.groups.len() > MAX_GROUPS || self.groups.iter().any(bad) {
            return Err(ApiError::invalid(format!(
                "on_behalf_of.groups must hold at most {MAX_GROUPS} names of 1-{MAX_PRINCIPAL_BYTES} bytes"
            )));
        }
        Ok(std::iter::once(&self.user).chain(&self.groups).cloned().collect())
    }

    /// The `on_behalf_of` query parameter of GET routes: the same object as
    /// JSON.
    pub fn from_query(raw: Option<&str>) -> ApiResult<Option<Self>> {
        raw.map(|raw| {
            serde_json::from_str(raw).map_err(|e| {
                ApiError::invalid(format!("on_behalf_of must be a JSON object {{\"user\", \"groups\"}}: {e}"))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, on_behalf_of: bool) -> Caller {
        Caller {
            key_id: "k".into(),
            tenant: TenantId::default_tenant(),
            key_tenant: None,
            role,
            on_behalf_of,
        }
    }

    #[test]
    fn visibility_depends_on_role_and_delegation() {
        let alice = OnBehalfOf { user: "alice".into(), groups: vec!["eng".into()] };
        let principals = Visibility::Principals(vec!["alice".into(), "eng".into()]);
        assert_eq!(caller(Role::Admin, false).visibility(None).unwrap(), Visibility::All);
        assert_eq!(caller(Role::Write, false).visibility(None).unwrap(), Visibility::public());
        assert_eq!(caller(Role::Read, true).visibility(None).unwrap(), Visibility::public());
        assert_eq!(caller(Role::Read, true).visibility(Some(&alice)).unwrap(), principals);
        assert_eq!(caller(Role::Admin, true).visibility(Some(&alice)).unwrap(), principals);
        let refused = caller(Role::Admin, false).visibility(Some(&alice)).unwrap_err();
        assert_eq!(refused.0.kind(), ErrorKind::Forbidden);
        let empty = OnBehalfOf { user: String::new(), groups: vec![] };
        assert_eq!(
            caller(Role::Read, true).visibility(Some(&empty)).unwrap_err().0.kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn roles_include_lower_ones() {
        assert!(caller(Role::Admin, false).require(Role::Write).is_ok());
        assert!(caller(Role::Write, false).require(Role::Write).is_ok());
        let denied = caller(Role::Read, false).require(Role::Write).unwrap_err();
        assert_eq!(denied.0.kind(), ErrorKind::Forbidden);
    }

    #[test]
    fn on_behalf_of_parses_from_a_query_parameter() {
        let parsed = OnBehalfOf::from_query(Some(r#"{"user": "bob", "groups": ["ops"]}"#)).unwrap().unwrap();
        assert_eq!((parsed.user.as_str(), parsed.groups.len()), ("bob", 1));
        assert!(OnBehalfOf::from_query(None).unwrap().is_none());
        assert!(OnBehalfOf::from_query(Some("bob")).is_err());
    }
}
