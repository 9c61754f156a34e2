use std::path::PathBuf;

use ragd_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a dataset could not be loaded. Paths and line numbers point the
/// operator at the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Malformed { path: PathBuf, line: usize, reason: String },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn malformed(path: &std::path::Path, line: usize, reason: impl Into<String>) -> Self {
        Self::Malformed { path: path.to_path_buf(), line, reason: reason.into() }
    }
}

impl From<Error> for ragd_core::Error {
    fn from(err: Error) -> Self {
        // Datasets are named by the operator, so paths are not secrets; the
        // OS error stays in the source chain.
        let message = err.to_string();
        match err {
            Error::Io { source, .. } => {
                let kind = if source.kind() == std::io::ErrorKind::NotFound {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Internal
                };
                ragd_core::Error::with_source(kind, message, source)
            }
            Error::Malformed { .. } => ragd_core::Error::new(ErrorKind::InvalidInput, message),
        }
    }
}
