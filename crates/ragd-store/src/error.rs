use ragd_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was looked for, e.g. "collection 0190…".
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: expected sqlite:// or postgres://")]
    UnsupportedUrl(String),
    #[error("blob store i/o error")]
    Io(#[from] std::io::Error),
    /// A stored row or blob that does not parse back; never the caller's fault.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl Error {
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }

    /// Conflict when `err` is a unique violation (of `what`'s key),
    /// otherwise a database error.
    pub(crate) fn conflict_or_database(err: sqlx::Error, what: impl std::fmt::Display) -> Self {
        if crate::store::is_unique_violation(&err) {
            Self::Conflict(format!("{what} already exists"))
        } else {
            Self::Database(err)
        }
    }
}

/// PostgreSQL refuses a NUL character in text (SQLSTATE 22021,
/// character_not_in_repertoire); Rust strings are valid UTF-8 otherwise, so
/// the NUL can only have come from the caller.
fn is_nul_in_text(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("22021"))
}

impl From<Error> for ragd_core::Error {
    fn from(err: Error) -> Self {
        // Internal variants pass their cause as the source so that the log
        // chain reads "database error: <driver message>" without repeats.
        match err {
            Error::NotFound(_) => ragd_core::Error::new(ErrorKind::NotFound, err.to_string()),
            Error::Conflict(message) => ragd_core::Error::new(ErrorKind::Conflict, message),
            Error::Database(source) if is_nul_in_text(&source) => ragd_core::Error::new(
                ErrorKind::InvalidInput,
                "text must not contain a NUL character (U+0000)",
            ),
            Error::Database(source) => {
                ragd_core::Error::with_source(ErrorKind::Internal, "database error", source)
            }
            Error::Migration(source) => {
                ragd_core::Error::with_source(ErrorKind::Internal, "database setup failed", source)
            }
            Error::UnsupportedUrl(_) => {
                ragd_core::Error::with_source(ErrorKind::Internal, "database setup failed", err)
            }
            Error::Corrupt(_) => {
                ragd_core::Error::with_source(ErrorKind::Internal, "stored data is corrupt", err)
            }
            Error::Io(source) => {
                ragd_core::Error::with_source(ErrorKind::Internal, "blob storage error", source)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_caller_safe_kinds() {
        let cases = [
            (
                Error::NotFound("collection x".to_owned()),
                ErrorKind::NotFound,
                "collection x not found",
            ),
            (Error::Conflict("taken".to_owned()), ErrorKind::Conflict, "taken"),
            (Error::Database(sqlx::Error::PoolTimedOut), ErrorKind::Internal, "database error"),
            (
                Error::UnsupportedUrl("mysql".to_owned()),
                ErrorKind::Internal,
                "database setup failed",
            ),
            (Error::Corrupt("column id".to_owned()), ErrorKind::Internal, "stored data is corrupt"),
            (Error::Io(std::io::Error::other("disk")), ErrorKind::Internal, "blob storage error"),
        ];
        for (err, kind, message) in cases {
            let err = ragd_core::Error::from(err);
            assert_eq!((err.kind(), err.message()), (kind, message));
        }
    }
}
