//! The error kinds that cross crate boundaries.
//!
//! Each crate has its own `thiserror` enum and converts it into [`Error`] by
//! choosing a kind; the server maps each kind to one HTTP status and problem
//! type, so that mapping exists exactly once.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a caller would classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or violates a documented limit.
    InvalidInput,
    /// The request is well formed but its content cannot be processed
    /// (unsupported file type, undecodable document).
    Unprocessable,
    NotFound,
    /// No valid credentials: the API key is missing, unknown, expired or
    /// revoked.
    Unauthenticated,
    /// Valid credentials whose role or grants do not allow the operation.
    Forbidden,
    /// The caller sent more requests than its rate limit allows.
    RateLimited,
    /// The target exists in a state that forbids the operation.
    Conflict,
    /// A limit (size, rate) was exceeded.
    TooLarge,
    /// An upstream service (generator API, vector cluster) failed or timed out.
    Upstream,
    /// The server cannot serve right now (still starting, shutting down).
    Unavailable,
    /// A bug or an environment failure: never the caller's fault.
    Internal,
}

/// A classified error with a message that is safe to show to the caller.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { kind, message: message.into(), source: Some(Box::new(source)) }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The caller-facing message. For `Internal` errors it is generic; the
    /// cause chain is only for logs.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The whole cause chain, for logs only.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(err) = next {
            out.push_str(": ");
            out.push_str(&err.to_string());
            next = err.source();
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
