//! What pod management asks of a runtime.

use std::{collections::HashMap, path::PathBuf};

/// The sandbox (infra container) holding a pod's network namespace. Unless
/// `host_network`, the namespace is made without any network: arhat wires it
/// ([`crate::network`]) and writes the pod's /etc/hosts and resolv.conf.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's sandboxes so far: a sandbox made again after the last one
    /// died has the next attempt.
    pub attempt: u32,
    pub hostname: String,
    pub host_network: bool,
    /// The host's IPC namespace instead of the pod's own.
    pub host_ipc: bool,
    /// To store as given ([`super::labels`]).
    pub labels: HashMap<String, String>,
}

/// Who a container runs as and what it may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub read_only_root_filesystem: bool,
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMapping {
    pub container_port: u16,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    pub host_port: u16,
    pub host_ip: String,
}

/// One container of a pod, as the runtime creates it.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub pod_uid: String,
    pub namespace: String,
    pub pod_name: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    pub env: Vec<(String, String)>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub tty: bool,
    pub stdin: bool,
    pub mounts: Vec<Mount>,
    /// The host's PID and IPC namespaces instead of its own and the pod's.
    pub host_pid: bool,
    pub host_ipc: bool,
    pub security: Security,
    /// To store as given ([`super::labels`]).
    pub labels: HashMap<String, String>,
}

/// How the runtime keeps container logs: files of at most `max_size` bytes,
/// `max_files` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogRotation {
    /// A kubelet's defaults: 10 MiB × 5.
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// Registry credentials for a pull. Never logged.
#[derive(Clone, Default)]
pub struct PullAuth {
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullAuth")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A host path bound into a container.
#[derive(Debug, Clone, Default)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// What to read of a container's log. Timestamps, exact time filtering and
/// byte limits are applied by the caller on the entries, so every runtime
/// honours them the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming what the container writes until it exits.
    pub follow: bool,
    /// The last n lines only (the runtime's own count).
    pub tail_lines: Option<u64>,
    /// Entries before this time are not wanted. A hint: the runtime may return
    /// earlier ones (Docker filters by whole seconds); the caller filters exactly.
    pub since: Option<jiff::Timestamp>,
}

/// A command to run in a container, or an attach to its process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Empty for attach.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// With a tty: the terminal size the process starts at. Every runtime
    /// starts it at that size, so its first `stty size` is right (Docker
    /// refuses a resize until the process runs: its module handles that).
    pub size: Option<TerminalSize>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

impl From<&proto::api::TerminalSize> for TerminalSize {
    fn from(size: &proto::api::TerminalSize) -> Self {
        let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
        Self {
            width: clamp(size.width),
            height: clamp(size.height),
        }
    }
}
