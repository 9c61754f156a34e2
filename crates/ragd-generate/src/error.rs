use ragd_core::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the local model: {0}")]
    ModelLoad(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("inference: {0}")]
    Inference(String),
    #[error("{}", upstream_message(*.status, .message))]
    Upstream { status: Option<u16>, message: String },
    #[error("invalid generator configuration: {0}")]
    Config(String),
    #[error("the prompt takes {prompt_tokens} tokens but the model context holds {limit}")]
    ContextOverflow { prompt_tokens: usize, limit: usize },
    #[error("quantization: {0}")]
    Quantize(String),
    /// A conversion was asked to stop, and did.
    #[error("stopped on request")]
    Stopped,
}

fn upstream_message(status: Option<u16>, message: &str) -> String {
    match status {
        Some(status) => format!("upstream generator answered {status}: {message}"),
        None => format!("upstream generator failed: {message}"),
    }
}

impl From<Error> for ragd_core::Error {
    fn from(err: Error) -> Self {
        // Upstream, configuration and overflow messages name nothing internal
        // (the API key is scrubbed where the upstream error is built), so they
        // are shown as they are; the rest keep their details in the source.
        match &err {
            Error::Upstream { .. } => Self::new(ErrorKind::Upstream, err.to_string()),
            Error::Config(_) | Error::ContextOverflow { .. } => {
                Self::new(ErrorKind::InvalidInput, err.to_string())
            }
            Error::ModelLoad(_) => {
                Self::with_source(ErrorKind::Unavailable, "the generation model is not available", err)
            }
            Error::Tokenizer(_) | Error::Template(_) | Error::Inference(_) => {
                Self::with_source(ErrorKind::Internal, "generation failed", err)
            }
            Error::Quantize(_) | Error::Stopped => {
                Self::with_source(ErrorKind::Internal, "quantization failed", err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let cases = [
            (
                Error::ModelLoad("gone".into()),
                ErrorKind::Unavailable,
                "the generation model is not available",
            ),
            (Error::Tokenizer("x".into()), ErrorKind::Internal, "generation failed"),
            (Error::Template("x".into()), ErrorKind::Internal, "generation failed"),
            (Error::Inference("x".into()), ErrorKind::Internal, "generation failed"),
            (
                Error::Upstream { status: Some(503), message: "overloaded".into() },
                ErrorKind::Upstream,
                "upstream generator answered 503: overloaded",
            ),
            (
                Error::Upstream { status: None, message: "connection refused".into() },
                ErrorKind::Upstream,
                "upstream generator failed: connection refused",
            ),
            (
                Error::Config("model is empty".into()),
                ErrorKind::InvalidInput,
                "invalid generator configuration: model is empty",
            ),
            (
                Error::ContextOverflow { prompt_tokens: 3000, limit: 2048 },
                ErrorKind::InvalidInput,
                "the prompt takes 3000 tokens but the model context holds 2048",
            ),
        ];
        for (err, kind, message) in cases {
            let err = ragd_core::Error::from(err);
            assert_eq!(err.kind(), kind);
            assert_eq!(err.message(), message);
        }
    }

    #[test]
    fn internal_details_stay_in_the_chain() {
        let err = ragd_core::Error::from(Error::Inference("shape mismatch".into()));
        assert!(!err.message().contains("shape mismatch"));
        assert!(err.chain().contains("shape mismatch"));
    }
}
