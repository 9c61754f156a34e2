use std::path::PathBuf;

use ragd_core::{ErrorKind, IndexTarget};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vector engine failed; the message is for logs only.
    #[error("vector engine: {0}")]
    Engine(String),

    #[error("collection {0} has no vector index")]
    UnknownCollection(IndexTarget),

    #[error("collection {collection} has {existing}-dimensional vectors, not {requested}")]
    DimensionsConflict { collection: IndexTarget, existing: usize, requested: usize },

    #[error("{0}")]
    InvalidQuery(String),

    #[error("{0}")]
    Config(String),

    #[error("{0}")]
    InvalidPoint(String),

    /// The engine cannot be reached; the message is for logs only.
    #[error("vector engine unreachable: {0}")]
    Unavailable(String),

    #[error(
        "the Qdrant Edge index in {} is open in another process; an Edge index belongs to one \
         process, so give each ragd process its own data_dir",
        .0.display()
    )]
    Locked(PathBuf),

    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn engine(err: impl std::fmt::Display) -> Self {
        Self::Engine(err.to_string())
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<Error> for ragd_core::Error {
    fn from(err: Error) -> Self {
        let (kind, message) = match &err {
            Error::Engine(_) | Error::Io { .. } => {
                (ErrorKind::Internal, "the vector index failed".to_owned())
            }
            Error::Unavailable(_) => (ErrorKind::Unavailable, "the vector index is unreachable".to_owned()),
            Error::UnknownCollection(_) => (ErrorKind::NotFound, err.to_string()),
            Error::Locked(_) => (ErrorKind::Unavailable, err.to_string()),
            Error::DimensionsConflict { .. } => (ErrorKind::Conflict, err.to_string()),
            Error::InvalidQuery(message) | Error::InvalidPoint(message) | Error::Config(message) => {
                (ErrorKind::InvalidInput, message.clone())
            }
        };
        ragd_core::Error::with_source(kind, message, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_caller_messages() {
        let collection = IndexTarget::new(ragd_core::CollectionId::new(), 0);
        let cases = [
            (Error::Engine("segment 0xdead corrupt".into()), ErrorKind::Internal, "vector index failed"),
            (
                Error::Io { path: "/x/secret".into(), source: std::io::Error::other("disk") },
                ErrorKind::Internal,
                "vector index failed",
            ),
            (Error::Unavailable("tcp 10.0.0.7:6334 refused".into()), ErrorKind::Unavailable, "unreachable"),
            (Error::UnknownCollection(collection), ErrorKind::NotFound, "no vector index"),
            (
                Error::DimensionsConflict { collection, existing: 384, requested: 768 },
                ErrorKind::Conflict,
                "384",
            ),
            (
                Error::InvalidQuery("dense query has 3 dimensions".into()),
                ErrorKind::InvalidInput,
                "3 dimensions",
            ),
            (
                Error::InvalidPoint("sparse vector has duplicate indices".into()),
                ErrorKind::InvalidInput,
                "duplicate",
            ),
            (Error::Config("rrf_k must be at least 1".into()), ErrorKind::InvalidInput, "rrf_k"),
        ];
        for (err, kind, needle) in cases {
            let core = ragd_core::Error::from(err);
            assert_eq!(core.kind(), kind);
            assert!(core.message().contains(needle), "{:?} lacks {needle:?}", core.message());
            assert!(!core.message().contains("0xdead") && !core.message().contains("/x"));
            assert!(!core.message().contains("10.0.0.7"));
        }
    }
}
