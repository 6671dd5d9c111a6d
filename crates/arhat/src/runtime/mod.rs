//! The container runtime seam. Pod management ([`crate::pod`]) speaks only
//! this trait; Docker is the first implementation, containerd and Podman
//! fit the same calls.

pub mod docker;
mod docker_exec;
mod docker_logs;

use std::{collections::HashMap, future::Future, path::PathBuf, pin::Pin, time::Duration};

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream};
use tokio::io::AsyncWrite;

/// Labels that tie runtime objects to pods, so a restarted agent finds what it
/// created (by pod UID, since names are reused).
pub const LABEL_POD_UID: &str = "io.arhat.pod.uid";
/// The device (agent) that created the object: agents sharing one engine
/// never touch each other's pods.
pub const LABEL_DEVICE: &str = "io.arhat.device";
pub const LABEL_POD_NAME: &str = "io.arhat.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.arhat.pod.namespace";
pub const LABEL_CONTAINER: &str = "io.arhat.container.name";
pub const LABEL_ATTEMPT: &str = "io.arhat.container.attempt";
/// The sandbox's container name label value.
pub const SANDBOX: &str = "POD";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime does not answer (daemon down, socket missing).
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("image {image} not found: {reason}")]
    ImageNotFound { image: String, reason: String },
    #[error("pulling {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{op}: {reason}")]
    Failed { op: &'static str, reason: String },
}

/// The sandbox (infra container) holding a pod's network namespace.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub host_network: bool,
    /// Ports published on the device: the sandbox owns the pod's network.
    pub ports: Vec<PortMapping>,
    /// The host's IPC namespace instead of the pod's own.
    pub host_ipc: bool,
    /// The pod's resolv.conf; `None` leaves the runtime's default.
    pub dns: Option<crate::pod::dns::Resolver>,
    /// Extra /etc/hosts entries: (address, names).
    pub host_aliases: Vec<(String, Vec<String>)>,
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

#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    /// The address the runtime gave the pod.
    pub ip: Option<String>,
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
    pub host_path: std::path::PathBuf,
    pub container_path: String,
    pub read_only: bool,
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

/// A container's log entries, oldest first; ends with the log (or, when
/// following, when the container exits).
pub type LogStream = BoxStream<'static, Result<LogEntry, RuntimeError>>;

/// A command to run in a container, or an attach to its process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Empty for attach.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A running exec or attach: its input, its output, and a handle on it.
pub struct Process {
    /// Shutting it down is stdin EOF.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Ends when the process (or the attach) is over.
    pub output: BoxStream<'static, Result<(LogOutput, Bytes), RuntimeError>>,
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

/// What pod management needs from a container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// `<name>://<version>`, as nodeInfo.containerRuntimeVersion and container IDs use.
    fn name(&self) -> &'static str;
    fn version(&self) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// The image's id if it is present locally.
    fn image_id(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send;
    /// Pulls the image (with the registry's credentials, if any); returns its id.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<&PullAuth>,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    fn create_sandbox(
        &self,
        spec: &SandboxSpec,
    ) -> impl Future<Output = Result<Sandbox, RuntimeError>> + Send;
    /// A sandbox created earlier (by this agent or a previous run), with its address.
    fn sandbox(&self, id: &str) -> impl Future<Output = Result<Sandbox, RuntimeError>> + Send;
    /// Creates a container in the sandbox's namespaces; returns its id.
    fn create_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Resolves when the container exits, with its exit code.
    fn wait_container(&self, id: &str) -> impl Future<Output = Result<i64, RuntimeError>> + Send;
    /// SIGTERM, then SIGKILL after `grace`.
    fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes the container (killing it if it still runs).
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn inspect_container(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;
    /// The container's log. Fails with [`RuntimeError::NotFound`] before
    /// anything is streamed if the container is gone.
    fn logs(
        &self,
        id: &str,
        options: &LogOptions,
    ) -> impl Future<Output = Result<LogStream, RuntimeError>> + Send;
    /// The image ids of every container the engine has (anyone's, running or not).
    fn images_in_use(
        &self,
    ) -> impl Future<Output = Result<std::collections::HashSet<String>, RuntimeError>> + Send;
    /// The id and size in bytes of the image a reference names, if present.
    fn image_info(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<(String, u64)>, RuntimeError>> + Send;
    /// Bytes used and total on the filesystem holding the images, if known.
    fn image_fs(&self) -> impl Future<Output = Result<Option<(u64, u64)>, RuntimeError>> + Send;
    /// Removes a reference (not forced: an image in use or with other names stays).
    fn remove_image(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Every sandbox and container this device's agent created, found by label.
    fn list_pod_objects(&self) -> impl Future<Output = Result<Vec<Labelled>, RuntimeError>> + Send;
    /// Runs a command in a running container.
    fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> impl Future<Output = Result<Process, RuntimeError>> + Send;
    /// Attaches to a running container's own process.
    fn attach(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> impl Future<Output = Result<Process, RuntimeError>> + Send;
    /// The network namespace (a path to open) a running container is in:
    /// port-forward dials from inside it, as a kubelet does.
    fn network_namespace(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<PathBuf, RuntimeError>> + Send;
}
