//! What a runtime answers: objects, states, logs and running processes.

use std::{collections::HashMap, pin::Pin};

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream};
use tokio::io::AsyncWrite;

use super::RuntimeError;

#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    /// The address the runtime gave the pod.
    pub ip: Option<String>,
    /// Its namespaces are alive (its process runs): containers can join it.
    pub ready: bool,
}

/// A container's state as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running {
        started_at: i64,
    },
    Exited {
        exit_code: i64,
        started_at: i64,
        finished_at: i64,
        oom_killed: bool,
    },
}

#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub image_id: String,
    pub state: ContainerState,
}

/// A runtime object found by its labels.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
}

/// Which output of the container a log entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    Stderr,
}

/// One entry of a container's log as the runtime recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When the runtime recorded it; `None` for a piece that continues the
    /// previous entry (a long line the runtime stored in parts), which shares
    /// that entry's time.
    pub time: Option<jiff::Timestamp>,
    pub output: LogOutput,
    /// The text, with its newline when the entry ends a line.
    pub text: Bytes,
}

/// A container's log entries, oldest first; ends with the log (or, when
/// following, when the container exits).
pub type LogStream = BoxStream<'static, Result<LogEntry, RuntimeError>>;

/// What a process writes, piece by piece, each from one of its outputs.
pub type Output = BoxStream<'static, Result<(LogOutput, Bytes), RuntimeError>>;

/// A running exec or attach: its input, its output, and a handle on it.
pub struct Process {
    /// Shutting it down is stdin EOF.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Ends when the process (or the attach) is over.
    pub output: Output,
    pub handle: std::sync::Arc<dyn ProcessHandle>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("stdin", &self.stdin.is_some())
            .finish_non_exhaustive()
    }
}

/// What can be done to a running [`Process`].
pub trait ProcessHandle: Send + Sync {
    fn resize(&self, width: u16, height: u16) -> BoxFuture<'_, Result<(), RuntimeError>>;
    /// Once the output ended: how the process exited (0 for an attach that
    /// ended).
    fn exit_code(&self) -> BoxFuture<'_, Result<i32, RuntimeError>>;
    /// Ends it early: its client went away. An attach only detaches.
    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
}
