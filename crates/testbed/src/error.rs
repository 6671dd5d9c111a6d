use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building, starting or using the test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// Generating or signing a certificate or key failed.
    #[error("certificate generation failed ({context}): {source}")]
    Cert {
        context: String,
        #[source]
        source: rcgen::Error,
    },

    /// The Go toolchain is needed to build the control-plane binary but is not installed.
    #[error(
        "the Go toolchain is needed to build the control-plane binary but `go` was not found on PATH \
         (install Go >= 1.26, or set ARANYA_KUBE_BIN to a prebuilt multi-call `kube` binary): {detail}"
    )]
    GoMissing { detail: String },

    /// `testbed/kube/build.sh` failed.
    #[error("building the control-plane binary failed ({status}); log {log}:\n{tail}")]
    Build {
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// A control-plane component exited before it was ready (or while it was needed).
    #[error("{component} exited early ({status}); log {log}, last lines:\n{tail}")]
    Exited {
        component: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// A control-plane component did not become ready in time.
    #[error("{component} not ready after {waited_secs}s ({last}); log {log}, last lines:\n{tail}")]
    NotReady {
        component: String,
        waited_secs: u64,
        last: String,
        log: PathBuf,
        tail: String,
    },

    /// Talking to the apiserver failed.
    #[error("kubernetes API call failed ({context}): {source}")]
    Kube {
        context: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Building a client configuration from a kubeconfig failed.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The environment or an argument is not usable.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn cert(context: impl Into<String>, source: rcgen::Error) -> Self {
        Error::Cert {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

/// Extension for attaching a context to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::io(context(), e))
    }
}
