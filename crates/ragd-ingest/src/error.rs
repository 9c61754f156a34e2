use ragd_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a document could not be turned into chunks. Every message is about
/// the caller's file or configuration, so it is safe to show them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the file is empty")]
    Empty,
    #[error("unsupported file type: {0}; upload text, Markdown, HTML, PDF, DOCX or source code")]
    UnsupportedType(String),
    #[error("the file is not valid UTF-8 text; re-save it as UTF-8")]
    InvalidUtf8,
    #[error("the {format} file is corrupt or unreadable: {reason}")]
    Corrupt { format: &'static str, reason: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("the document contains no extractable text")]
    NoText,
    #[error("invalid chunking configuration: {0}")]
    InvalidConfig(String),
    #[error("tokenizer failure: {0}")]
    Tokenizer(String),
}

impl Error {
    pub(crate) fn corrupt(format: &'static str, reason: impl ToString) -> Self {
        Self::Corrupt { format, reason: reason.to_string() }
    }
}

impl From<Error> for ragd_core::Error {
    fn from(err: Error) -> Self {
        let kind = match &err {
            Error::Empty
            | Error::UnsupportedType(_)
            | Error::InvalidUtf8
            | Error::Corrupt { .. }
            | Error::NoText => ErrorKind::Unprocessable,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::InvalidConfig(_) => ErrorKind::InvalidInput,
            Error::Tokenizer(_) => ErrorKind::Internal,
        };
        match kind {
            ErrorKind::Internal => ragd_core::Error::with_source(kind, "the tokenizer failed", err),
            _ => ragd_core::Error::new(kind, err.to_string()),
        }
    }
}
