//! What can go wrong at the runtime seam, by what a caller does about it.

/// The runtime's own error, kept as the source.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A runtime call's failure. Each kind is something pod management acts on
/// differently; the runtime's own error is the [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime does not answer (daemon down, socket missing): nothing
    /// about the pod is wrong, the call is worth retrying later.
    #[error("runtime unavailable: {source}")]
    Unavailable {
        #[source]
        source: Cause,
    },
    /// The image is not on the device and was not pulled.
    #[error("image {image} not found: {reason}")]
    ImageNotFound { image: String, reason: &'static str },
    /// The registry refused or failed the pull (bad name, credentials, network).
    #[error("pulling {image}: {source}")]
    Pull {
        image: String,
        #[source]
        source: Cause,
    },
    /// The object (container, sandbox, exec) is gone.
    #[error("container {0} not found")]
    NotFound(String),
    /// Anything else, named by the operation that failed.
    #[error("{op}: {source}")]
    Failed {
        op: &'static str,
        #[source]
        source: Cause,
    },
}

impl RuntimeError {
    pub fn unavailable(source: impl Into<Cause>) -> Self {
        Self::Unavailable {
            source: source.into(),
        }
    }

    /// `op` failed because of `source` (a runtime's error, or a message).
    pub fn failed(op: &'static str, source: impl Into<Cause>) -> Self {
        Self::Failed {
            op,
            source: source.into(),
        }
    }
}
