//! Authentication, rate limiting and the audit trail, in one middleware
//! around every `/v1` route: it turns the `Authorization: Bearer` key into a
//! [`Caller`] (or a 401), applies the key's rate limit (or a 429), runs the
//! handler, and records writes and admin actions in the audit log.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ragd_core::{ErrorKind, TenantId};
use ragd_store::{KeyRecord, NewAuditEntry, Role};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};
use crate::extract::Caller;
use crate::state::{AppState, AuthConfig};

/// The key id recorded for requests made with the configured admin key.
pub const CONFIGURED_ADMIN_KEY_ID: &str = "admin";

type KeyedLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// What the middleware checks requests against.
pub struct Guard {
    /// SHA-256 of the configured admin key: comparing digests of equal
    /// length in constant time tells nothing about the key's length or bytes.
    admin_key: Option<[u8; 32]>,
    limiter: Option<KeyedLimiter>,
}

impl Guard {
    pub fn new(config: &AuthConfig) -> Self {
        let admin_key =
            (!config.admin_key.is_empty()).then(|| Sha256::digest(config.admin_key.as_bytes()).into());
        let limiter = NonZeroU32::new(config.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self { admin_key, limiter }
    }

    fn is_admin_key(&self, token: &str) -> bool {
        self.admin_key.is_some_and(|expected| {
            bool::from(Sha256::digest(token.as_bytes()).as_slice().ct_eq(&expected[..]))
        })
    }

    /// How long the key must wait, if it is over its rate.
    fn wait(&self, key: &str) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        limiter
            .check_key(&key.to_owned())
            .err()
            .map(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let caller = match identify(&state, request.headers()).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if let Some(wait) = state.guard.wait(&caller.key_id) {
        return too_many_requests(wait);
    }
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    let action = audited_action(request.method(), route.strip_prefix("/v1").unwrap_or(&route));
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(caller.clone());
    let response = next.run(request).await;
    if let Some(action) = action {
        // Read before awaiting: a response body is not `Sync`.
        let scope = response.extensions().get::<AuditScope>().cloned();
        record(&state, &caller, action, path, response.status(), scope).await;
    }
    response
}

async fn identify(state: &AppState, headers: &HeaderMap) -> ApiResult<Caller> {
    let unauthenticated = |message: &str| ApiError::new(ErrorKind::Unauthenticated, message);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthenticated("an API key is required: send it as Authorization: Bearer <key>"));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| unauthenticated("the Authorization header must be Bearer <key>"))?;
    if state.guard.is_admin_key(token) {
        return Ok(Caller {
            key_id: CONFIGURED_ADMIN_KEY_ID.to_owned(),
            tenant: TenantId::default_tenant(),
            key_tenant: None,
            role: Role::Admin,
            on_behalf_of: true,
        });
    }
    match state.store.authenticate(token).await? {
        Ok(key) => Ok(Caller::of_key(&key)),
        Err(rejection) => Err(unauthenticated(rejection.message())),
    }
}

impl Caller {
    fn of_key(key: &KeyRecord) -> Self {
        Self {
            key_id: key.id.to_string(),
            tenant: key.tenant.clone().unwrap_or_else(TenantId::default_tenant),
            key_tenant: key.tenant.clone(),
            role: key.role,
            on_behalf_of: key.on_behalf_of,
        }
    }
}

fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let error = ApiError::new(
        ErrorKind::RateLimited,
        format!("this key is over its rate limit; retry in {seconds} s"),
    );
    let mut response = error.into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The writes and admin actions the audit log records, by route.
fn audited_action(method: &Method, route: &str) -> Option<&'static str> {
    Some(match (method.as_str(), route) {
        ("POST", "/collections") => "collection.create",
        ("PATCH", "/collections/{collection}") => "collection.update",
        ("DELETE", "/collections/{collection}") => "collection.delete",
        ("POST", "/collections/{collection}/documents") => "document.add",
        ("DELETE", "/collections/{collection}/documents/{document}") => "document.delete",
        ("POST", "/jobs") => "job.submit",
        ("POST", "/jobs/{job}/cancel") => "job.cancel",
        ("POST", "/keys") => "key.create",
        ("GET", "/keys") => "key.list",
        ("DELETE", "/keys/{key_id}") => "key.revoke",
        _ => return None,
    })
}

/// Set by a handler on its response to name what it acted on more exactly
/// than the request path (a new id, another tenant's key).
#[derive(Clone)]
pub struct AuditScope {
    pub target: String,
    /// The tenant acted on; `None` for server-wide actions.
    pub tenant: Option<TenantId>,
}

async fn record(
    state: &AppState,
    caller: &Caller,
    action: &str,
    path: String,
    status: StatusCode,
    scope: Option<AuditScope>,
) {
    let outcome = match status.as_u16() {
        200..=399 => "ok",
        401 | 403 => "denied",
        400..=499 => "rejected",
        _ => "failed",
    };
    let (target, tenant) = match scope {
        Some(scope) => (scope.target, scope.tenant),
        None => (path, Some(caller.tenant.clone())),
    };
    let entry = NewAuditEntry {
        key_id: Some(caller.key_id.clone()),
        tenant,
        action: action.to_owned(),
        target,
        outcome: outcome.to_owned(),
        status: i64::from(status.as_u16()),
    };
    // The action already happened: a failure to record it is logged, and
    // does not turn the answer into an error.
    if let Err(error) = state.store.record_audit(&entry).await {
        tracing::error!(error = %ragd_core::Error::from(error).chain(), action, "audit entry not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_admin_actions_are_audited_reads_are_not() {
        let cases = [
            (Method::POST, "/collections", Some("collection.create")),
            (Method::DELETE, "/keys/{key_id}", Some("key.revoke")),
            (Method::POST, "/collections/{collection}/documents", Some("document.add")),
            (Method::PATCH, "/collections/{collection}", Some("collection.update")),
            (Method::POST, "/jobs", Some("job.submit")),
            (Method::POST, "/jobs/{job}/cancel", Some("job.cancel")),
            (Method::GET, "/collections", None),
            (Method::GET, "/jobs/{job}", None),
            (Method::POST, "/collections/{collection}/search", None),
            (Method::POST, "/chat/completions", None),
        ];
        for (method, route, action) in cases {
            assert_eq!(audited_action(&method, route), action, "{method} {route}");
        }
    }

    #[test]
    fn the_admin_key_is_matched_exactly() {
        let config = AuthConfig { admin_key: "k".repeat(40), ..AuthConfig::default() };
        let guard = Guard::new(&config);
        assert!(guard.is_admin_key(&"k".repeat(40)));
        for other in ["", "k", &"k".repeat(41), &"K".repeat(40)] {
            assert!(!guard.is_admin_key(other), "{other:?}");
        }
        assert!(!Guard::new(&AuthConfig::default()).is_admin_key(""));
    }

    #[test]
    fn rate_limits_allow_the_burst_then_ask_to_wait() {
        let config = AuthConfig { rate_limit_per_second: 1, rate_limit_burst: 2, ..AuthConfig::default() };
        let guard = Guard::new(&config);
        assert!(guard.wait("a").is_none());
        assert!(guard.wait("a").is_none());
        let wait = guard.wait("a").expect("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(guard.wait("b").is_none(), "keys are limited separately");
        let off = Guard::new(&AuthConfig { rate_limit_per_second: 0, ..AuthConfig::default() });
        assert!((0..1000).all(|_| off.wait("a").is_none()));
    }
}
