//! The container runtime seam. Pod management ([`crate::pod`]) speaks only
//! the [`Runtime`] trait, through an `Arc<dyn Runtime>` chosen at run time
//! by `runtime.kind` ([`connect`]); each runtime is one module behind it.
//!
//! Done once above the seam, so no runtime repeats it: the labels that tie
//! objects to pods ([`labels`]; a runtime stores and lists them), exact log
//! filtering (time, bytes, timestamps), keeping the logs of a runtime that
//! keeps none ([`crate::containerlog`]), image bookkeeping for garbage
//! collection, how the image filesystem's use is measured, and the pod
//! network with the pod's /etc/hosts and resolv.conf ([`crate::network`]).

pub mod docker;
mod error;
#[cfg(test)]
pub mod fake;
pub mod health;
pub mod labels;
mod spec;
mod state;

use std::{collections::HashMap, collections::HashSet, path::PathBuf, sync::Arc, time::Duration};

pub use error::{Cause, RuntimeError};
pub use labels::{
    LABEL_ATTEMPT, LABEL_CONTAINER, LABEL_DEVICE, LABEL_POD_NAME, LABEL_POD_NAMESPACE,
    LABEL_POD_UID, SANDBOX,
};
pub use spec::{
    ContainerSpec, ExecSpec, LogOptions, LogRotation, Mount, PortMapping, PullAuth, SandboxSpec,
    Security, TerminalSize,
};
pub use state::{
    ContainerInfo, ContainerState, Labelled, LogEntry, LogOutput, LogStream, Output, Process,
    ProcessHandle, Sandbox,
};

use crate::config::{RuntimeConfig, RuntimeKind};

/// The runtime `runtime.kind` names, connected and ready; `None` for `none`
/// (a device that runs no pods).
pub async fn connect(config: &RuntimeConfig) -> Result<Option<Arc<dyn Runtime>>, RuntimeError> {
    match config.kind {
        RuntimeKind::None => Ok(None),
        RuntimeKind::Docker => {
            let rotation = LogRotation {
                max_size: config.logs.max_size,
                max_files: config.logs.max_files,
            };
            let docker = docker::Docker::connect(config.pause_binary.clone(), rotation).await?;
            Ok(Some(Arc::new(docker)))
        }
    }
}

/// What pod management needs from a container runtime: the provider
/// contract every implementation keeps.
///
/// - Objects are a pod's *sandbox* (holding its network and IPC namespaces,
///   alive as long as the pod) and its *containers*, each created in the
///   sandbox's namespaces. Both carry the labels of their spec, as given,
///   and [`Runtime::list_labelled`] finds them by those labels after an
///   agent restart; nothing else about an object is remembered by the agent.
/// - Ids are the runtime's own; a call on an id that no longer exists fails
///   with [`RuntimeError::NotFound`], never another kind.
/// - A runtime that does not answer fails with [`RuntimeError::Unavailable`],
///   so the caller can tell an outage from a broken pod.
/// - The pod network is not the runtime's: a sandbox not on the host's
///   network is created with a network namespace of its own holding nothing
///   but loopback, and [`Runtime::network_namespace`] of the sandbox hands it
///   to arhat, which attaches it ([`crate::network`]) and gives the pod its
///   address, hostPorts, /etc/hosts and resolv.conf (mounted like volumes).
/// - Logs: a runtime either keeps each container's log and serves
///   [`Runtime::logs`] (Docker), or keeps none ([`Runtime::keeps_logs`]
///   false) and hands each container's output over from
///   [`Runtime::output`]; arhat then keeps it in the CRI format with the
///   `runtime.logs` rotation ([`crate::containerlog`]).
/// - Calls may come concurrently for different objects.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name, as container IDs (`<name>://<id>`) use it.
    fn name(&self) -> &'static str;
    /// `<name>://<version>`, as nodeInfo.containerRuntimeVersion shows it.
    /// Also the health check: fails with Unavailable when the runtime is down.
    async fn version(&self) -> Result<String, RuntimeError>;

    /// The image's id if it is present locally.
    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError>;
    /// Pulls the image (with the registry's credentials, if any); returns its id.
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&PullAuth>,
    ) -> Result<String, RuntimeError>;
    /// The image ids of every container the runtime has (anyone's, running
    /// or not): what image garbage collection must keep.
    async fn images_in_use(&self) -> Result<HashSet<String>, RuntimeError>;
    /// The id and size in bytes of the image a reference names, if present.
    async fn image_info(&self, reference: &str) -> Result<Option<(String, u64)>, RuntimeError>;
    /// A path on the filesystem holding the images, if there is one, whose
    /// use drives image garbage collection.
    async fn image_store(&self) -> Result<Option<PathBuf>, RuntimeError>;
    /// Removes a reference (not forced: an image in use or with other names
    /// stays). An absent reference is not an error.
    async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError>;

    /// Creates and starts the pod's sandbox: its own network namespace
    /// without any network (or the host's, for `host_network`) and IPC
    /// namespace, alive until it is removed.
    async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError>;
    /// A sandbox created earlier (by this agent or a previous run), with its
    /// address and whether it is still ready.
    async fn sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError>;
    /// Resolves once the sandbox is no longer ready (its process ended, it
    /// was removed). May also fail when the runtime goes away meanwhile:
    /// the caller then asks [`Runtime::sandbox`] when it answers again.
    async fn wait_sandbox(&self, id: &str) -> Result<(), RuntimeError>;

    /// Creates a container in the sandbox's namespaces; returns its id.
    async fn create_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError>;
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Resolves when the container exits, with its exit code.
    async fn wait_container(&self, id: &str) -> Result<i64, RuntimeError>;
    /// SIGTERM, then SIGKILL after `grace`. A container already stopped is
    /// not an error.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes the container or sandbox (killing it if it still runs). An
    /// absent one is not an error.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;
    /// Every sandbox and container carrying all of these labels.
    async fn list_labelled(
        &self,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<Labelled>, RuntimeError>;

    /// The container's log entries, oldest first. Fails with
    /// [`RuntimeError::NotFound`] before anything is streamed if the
    /// container is gone. `options.since` is a hint (the caller filters
    /// exactly); `tail_lines` and `follow` must be honoured.
    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream, RuntimeError>;
    /// Whether the runtime keeps container logs and serves [`Runtime::logs`];
    /// if not, arhat keeps them from [`Runtime::output`].
    fn keeps_logs(&self) -> bool {
        true
    }
    /// For a runtime that keeps no logs: everything the container writes
    /// from its start, ending when it exits or is removed (also when it never
    /// started). Asked once per container per agent run: after the create,
    /// before the start, or, for a running one an agent restart finds, from
    /// then on. arhat reads it to its end whatever happens to the log, so
    /// the runtime need not drain it; [`Runtime::logs`] is never asked of
    /// such a runtime.
    async fn output(&self, id: &str) -> Result<Output, RuntimeError> {
        Err(RuntimeError::failed(
            "taking a container's output",
            format!("{} keeps its own logs ({id})", self.name()),
        ))
    }
    /// Runs a command in a running container, with a tty if asked, sized
    /// as `spec.size` says before it runs.
    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<Process, RuntimeError>;
    /// Attaches to a running container's own process (its terminal resized
    /// to `spec.size`, if given).
    async fn attach(&self, id: &str, spec: &ExecSpec) -> Result<Process, RuntimeError>;
    /// The network namespace (a path to open) a running sandbox or container
    /// is in: arhat attaches a new sandbox's to the pod network, and
    /// port-forward and probes dial from inside it, as a kubelet does.
    async fn network_namespace(&self, id: &str) -> Result<PathBuf, RuntimeError>;
}
