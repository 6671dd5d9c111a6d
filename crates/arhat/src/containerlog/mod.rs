//! Container logs kept by arhat itself, for runtimes that keep none (such as
//! containerd driven without CRI, whose tasks only hand over their output),
//! and log files read as a kubelet reads them: arhat's own, and Docker's
//! json-file logs ([`Format`]).
//!
//! The files are in the CRI log format a kubelet reads, one line per piece of
//! output:
//!
//! ```text
//! 2026-12-06T20:03:00.123456789Z stdout F hello
//! ```
//!
//! `F` marks a piece that ends a line (its newline is not stored), `P` a piece
//! of a longer line without its newline: lines over [`MAX_PIECE`] bytes are
//! stored as `P` pieces then a final `F`. Files rotate as a kubelet rotates
//! them: once the file at `path` would exceed `max_size` it becomes `path.1`,
//! `path.1` becomes `path.2`, and so on, keeping `max_files` in all.
//!
//! [`keep`] writes a container's output; [`read`] reads it back as
//! [`LogEntry`](crate::runtime::LogEntry)s, across the rotated files, and
//! follows it while the container runs.

use std::{io, path::PathBuf};

use crate::runtime::RuntimeError;

mod format;
mod reader;
mod writer;

pub use format::Format;
pub use reader::{POLL, read};
pub use writer::keep;

/// Longest piece of a line stored on one line of the file (a kubelet's limit).
pub const MAX_PIECE: usize = 16 * 1024;

/// What can go wrong keeping or reading a container log; `path` is the file
/// involved.
#[derive(Debug, thiserror::Error)]
pub enum ContainerLogError {
    /// There is no log at the path (nor rotated ones): the container has
    /// written nothing yet, or its log was removed. Callers map it to
    /// [`RuntimeError::NotFound`].
    #[error("no container log at {}", path.display())]
    NotFound { path: PathBuf },
    #[error("reading container log {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing container log {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rotating container log {}: {source}", path.display())]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The container's output stream failed. Everything received before it
    /// was written, so the log is complete up to the failure.
    #[error("container output for {} failed: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: RuntimeError,
    },
}

impl ContainerLogError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// The name of the `n`th rotated file (`path.n`); `n == 0` is `path` itself.
fn rotated(path: &std::path::Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}
