//! The HTTP face of ragd: the REST API under `/v1`, health checks, problem
//! details, request tracing, API key authentication, rate limits and the
//! audit trail. Handlers extract and validate input, delegate
//! to the engine crates and map the result; they hold no business logic.
//!
//! Invariant: this is the only crate that knows axum and the JSON wire
//! format; engine types are converted to wire types here, at the edge.

mod auth;
mod error;
mod extract;
mod openapi;
mod rag;
mod routes;
mod settings;
mod state;
mod wire;

pub use error::{ApiError, PROBLEM_TYPE_PREFIX};
pub use routes::router;
pub use state::{AnswerConfig, AppParts, AppState, AuthConfig, ServerConfig};
