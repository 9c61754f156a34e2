use std::path::PathBuf;

use ragd_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model {name:?} is missing {path}; run scripts/fetch-models --with {name}")]
    ModelMissing { name: String, path: PathBuf },

    #[error("model {name:?} file {path} has sha256 {actual}, expected {expected}; run scripts/fetch-models")]
    ChecksumMismatch { name: String, path: PathBuf, expected: String, actual: String },

    #[error("unknown model {name:?}; known models: {}", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },

    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Runtime(String),

    #[error("{0}")]
    Config(String),

    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// A conversion was asked to stop, and did.
    #[error("stopped on request")]
    Stopped,
}

impl From<Error> for ragd_core::Error {
    fn from(err: Error) -> Self {
        let (kind, message) = match &err {
            Error::ModelMissing { name, .. } => {
                (ErrorKind::Unavailable, format!("model {name:?} is not installed; run scripts/fetch-models --with {name}"))
            }
            Error::ChecksumMismatch { name, .. } => (
                ErrorKind::Unavailable,
                format!("model {name:?} does not match its checksum; run scripts/fetch-models"),
            ),
            Error::UnknownModel { .. } => (ErrorKind::NotFound, err.to_string()),
            Error::Config(message) => (ErrorKind::InvalidInput, message.clone()),
            Error::Io { .. } | Error::Runtime(_) | Error::Candle(_) | Error::Stopped => {
                (ErrorKind::Internal, "the embedding runtime failed".to_owned())
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
        let cases = [
            (
                Error::ModelMissing { name: "m".into(), path: "/x/m/a".into() },
                ErrorKind::Unavailable,
                "scripts/fetch-models",
            ),
            (
                Error::ChecksumMismatch {
                    name: "m".into(),
                    path: "/x".into(),
                    expected: "a".into(),
                    actual: "b".into(),
                },
                ErrorKind::Unavailable,
                "scripts/fetch-models",
            ),
            (
                Error::UnknownModel { name: "q".into(), known: vec!["a".into(), "b".into()] },
                ErrorKind::NotFound,
                "a, b",
            ),
            (
                Error::Runtime("ort exploded at 0xdead".into()),
                ErrorKind::Internal,
                "embedding runtime failed",
            ),
            (Error::Config("batch_size must be at least 1".into()), ErrorKind::InvalidInput, "batch_size"),
        ];
        for (err, kind, needle) in cases {
            let core = ragd_core::Error::from(err);
            assert_eq!(core.kind(), kind);
            assert!(core.message().contains(needle), "{:?} lacks {needle:?}", core.message());
            assert!(!core.message().contains("0xdead") && !core.message().contains("/x"));
        }
    }
}
