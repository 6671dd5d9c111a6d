//! Docker through its Engine API (bollard), negotiating the API version
//! (Debian's dockerd speaks 1.41).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use bollard::{
    Docker as Client,
    errors::Error as BollardError,
    models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigLogConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
        LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
        StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
    },
};
use futures::{FutureExt, StreamExt};
use tracing::debug;

mod exec;
mod logs;

use crate::containerlog::{self, Format};

use super::{
    ContainerInfo, ContainerSpec, ContainerState, ExecSpec, Labelled, LogOptions, LogRotation,
    LogStream, Process, PullAuth, Runtime, RuntimeError, SANDBOX, Sandbox, SandboxSpec,
};

/// The container's json-file log, when Docker keeps one of its lines (a
/// terminal's output is kept in chunks instead, which only the daemon splits).
fn json_file(info: &ContainerInspectResponse) -> Option<PathBuf> {
    let kind = info
        .host_config
        .as_ref()?
        .log_config
        .as_ref()?
        .typ
        .as_deref()?;
    let tty = info.config.as_ref().and_then(|c| c.tty).unwrap_or(false);
    let path = info.log_path.as_deref().filter(|p| !p.is_empty())?;
    (kind == "json-file" && !tty).then(|| PathBuf::from(path))
}

/// The infra image arhat builds from its own static `pause` binary.
pub const PAUSE_IMAGE: &str = concat!("arhat/pause:", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct Docker {
    client: Client,
    pause_binary: PathBuf,
    logs: Arc<logs::LogReader>,
    /// json-file keeps the logs: it rotates, and `docker logs` reads every
    /// file kept, as `kubectl logs` does from a kubelet's CRI files.
    rotation: LogRotation,
}

impl Docker {
    /// Connects to the default socket (`DOCKER_HOST` honoured) and negotiates
    /// the API version. Containers keep their logs rotated as `rotation` says.
    pub async fn connect(
        pause_binary: PathBuf,
        rotation: LogRotation,
    ) -> Result<Self, RuntimeError> {
        let client = Client::connect_with_local_defaults()
            .map_err(RuntimeError::unavailable)?
            .negotiate_version()
            .await
            .map_err(RuntimeError::unavailable)?;
        Ok(Self {
            client,
            pause_binary,
            logs: Arc::new(logs::LogReader::start().await?),
            rotation,
        })
    }

    async fn create_named(
        &self,
        name: &str,
        body: ContainerCreateBody,
        op: &'static str,
    ) -> Result<String, RuntimeError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .client
            .create_container(Some(options), body)
            .await
            .map_err(|e| failed(op, e))?;
        Ok(created.id)
    }

    async fn ensure_pause_image(&self) -> Result<(), RuntimeError> {
        if self.client.inspect_image(PAUSE_IMAGE).await.is_ok() {
            return Ok(());
        }
        let binary = std::fs::read(&self.pause_binary).map_err(|e| {
            RuntimeError::failed(
                "building the pause image",
                format!("reading {}: {e}", self.pause_binary.display()),
            )
        })?;
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(binary.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        archive
            .append_data(&mut header, "pause", binary.as_slice())
            .and_then(|()| archive.finish())
            .map_err(|e| RuntimeError::failed("building the pause image", e))?;
        let rootfs = archive
            .into_inner()
            .map_err(|e| RuntimeError::failed("building the pause image", e))?;
        let (repo, tag) = PAUSE_IMAGE
            .rsplit_once(':')
            .unwrap_or((PAUSE_IMAGE, "latest"));
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .changes(vec![r#"CMD ["/pause"]"#.to_string()])
            .build();
        let mut progress =
            self.client
                .create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| failed("importing the pause image", e))?;
        }
        Ok(())
    }
}

fn failed(op: &'static str, e: BollardError) -> RuntimeError {
    match e {
        // The engine is gone, not the object: say so, whatever the call.
        e @ (BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::SocketNotFoundError(_)) => RuntimeError::unavailable(e),
        e => RuntimeError::failed(op, e),
    }
}

fn not_found_or(op: &'static str, id: &str, e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound(id.to_string()),
        e => failed(op, e),
    }
}

fn unix_seconds(rfc3339: Option<&str>) -> i64 {
    rfc3339
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second().max(0))
}

/// runAsUser[:runAsGroup]. A group without a user (which CRI runtimes
/// refuse) becomes a supplementary group of the image's user, never root's.
fn user(s: &super::Security) -> Option<String> {
    match (s.run_as_user, s.run_as_group) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, _) => None,
    }
}

fn supplementary_groups(s: &super::Security) -> Option<Vec<String>> {
    let lone_group = s.run_as_user.is_none().then_some(s.run_as_group).flatten();
    let groups: Vec<String> = s
        .supplemental_groups
        .iter()
        .chain(lone_group.iter())
        .map(i64::to_string)
        .collect();
    (!groups.is_empty()).then_some(groups)
}

/// Docker names must be unique: pod UID and attempt make them so.
fn container_name(
    container: &str,
    pod_name: &str,
    namespace: &str,
    uid: &str,
    attempt: u32,
) -> String {
    format!("k8s_{container}_{pod_name}_{namespace}_{uid}_{attempt}")
}

#[async_trait::async_trait]
impl Runtime for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .client
            .version()
            .await
            .map_err(RuntimeError::unavailable)?;
        Ok(format!("docker://{}", v.version.unwrap_or_default()))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        match self.client.inspect_image(image).await {
            Ok(i) => Ok(Some(i.id.unwrap_or_default())),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(failed("inspecting image", e)),
        }
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&PullAuth>,
    ) -> Result<String, RuntimeError> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        });
        let mut progress = self.client.create_image(Some(options), None, credentials);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                // The registry's own words, not the HTTP status around them.
                let source = match e {
                    BollardError::DockerResponseServerError { message, .. } => message.into(),
                    other => other.into(),
                };
                return Err(RuntimeError::Pull {
                    image: image.to_string(),
                    source,
                });
            }
        }
        self.image_id(image)
            .await?
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: image.to_string(),
                reason: "absent after pull",
            })
    }

    async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox, RuntimeError> {
        self.ensure_pause_image().await?;
        let name = container_name(
            SANDBOX,
            &spec.name,
            &spec.namespace,
            &spec.pod_uid,
            spec.attempt,
        );
        let body = ContainerCreateBody {
            image: Some(PAUSE_IMAGE.to_string()),
            hostname: (!spec.host_network && !spec.hostname.is_empty())
                .then(|| spec.hostname.clone()),
            labels: Some(spec.labels.clone()),
            host_config: Some(HostConfig {
                // Without a network of Docker's: arhat attaches the namespace.
                network_mode: Some(if spec.host_network { "host" } else { "none" }.to_string()),
                // The pod's containers join its IPC namespace.
                ipc_mode: Some(if spec.host_ipc { "host" } else { "shareable" }.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .create_named(&name, body, "creating the sandbox")
            .await?;
        self.start_container(&id).await?;
        self.sandbox(&id).await
    }

    async fn sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError> {
        let inspect = self
            .client
            .inspect_container(id, None)
            .await
            .map_err(|e| not_found_or("inspecting the sandbox", id, e))?;
        let ready = inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|nets| {
                nets.into_values()
                    .find_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))
            });
        Ok(Sandbox {
            id: id.to_string(),
            ip,
            ready,
        })
    }

    async fn wait_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        // The sandbox is the pause container: it is over when that exits.
        self.wait_container(id).await.map(drop)
    }

    async fn create_container(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let name = container_name(
            &spec.name,
            &spec.pod_name,
            &spec.namespace,
            &spec.pod_uid,
            spec.attempt,
        );
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            // Kubernetes' command replaces the entrypoint, args replace CMD.
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            working_dir: (!spec.working_dir.is_empty()).then(|| spec.working_dir.clone()),
            env: Some(env),
            tty: Some(spec.tty),
            open_stdin: Some(spec.stdin),
            user: user(&spec.security),
            labels: Some(spec.labels.clone()),
            host_config: Some(HostConfig {
                binds: Some(
                    spec.mounts
                        .iter()
                        .map(|m| {
                            let mode = if m.read_only { ":ro" } else { "" };
                            format!("{}:{}{mode}", m.host_path.display(), m.container_path)
                        })
                        .collect(),
                ),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), self.rotation.max_size.to_string()),
                        ("max-file".to_string(), self.rotation.max_files.to_string()),
                    ])),
                }),
                network_mode: Some(format!("container:{}", sandbox.id)),
                ipc_mode: Some(if spec.host_ipc {
                    "host".to_string()
                } else {
                    format!("container:{}", sandbox.id)
                }),
                pid_mode: spec.host_pid.then(|| "host".to_string()),
                readonly_rootfs: Some(spec.security.read_only_root_filesystem),
                privileged: Some(spec.security.privileged),
                cap_add: (!spec.security.add_capabilities.is_empty())
                    .then(|| spec.security.add_capabilities.clone()),
                cap_drop: (!spec.security.drop_capabilities.is_empty())
                    .then(|| spec.security.drop_capabilities.clone()),
                group_add: supplementary_groups(&spec.security),
                nano_cpus: (spec.cpu_millis > 0)
                    .then(|| i64::try_from(spec.cpu_millis * 1_000_000).unwrap_or(i64::MAX)),
                memory: (spec.memory_bytes > 0)
                    .then(|| i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX)),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_named(&name, body, "creating a container").await
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.client
            .start_container(id, None)
            .await
            .map_err(|e| not_found_or("starting a container", id, e))
    }

    async fn wait_container(&self, id: &str) -> Result<i64, RuntimeError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = self.client.wait_container(id, Some(options));
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(not_found_or("waiting for a container", id, e)),
            None => self.inspect_container(id).await.map(|i| match i.state {
                ContainerState::Exited { exit_code, .. } => exit_code,
                _ => -1,
            }),
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(t).build();
        match self.client.stop_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(not_found_or("stopping a container", id, e)),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.client.remove_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(failed("removing a container", e)),
        }
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let i = self
            .client
            .inspect_container(id, None)
            .await
            .map_err(|e| not_found_or("inspecting a container", id, e))?;
        let s = i.state.unwrap_or_default();
        let started_at = unix_seconds(s.started_at.as_deref());
        let state = if s.running.unwrap_or(false) {
            ContainerState::Running { started_at }
        } else if started_at > 0 {
            ContainerState::Exited {
                exit_code: s.exit_code.unwrap_or(-1),
                started_at,
                finished_at: unix_seconds(s.finished_at.as_deref()),
                oom_killed: s.oom_killed.unwrap_or(false),
            }
        } else {
            ContainerState::Created
        };
        Ok(ContainerInfo {
            id: i.id.unwrap_or_else(|| id.to_string()),
            image_id: i.image.unwrap_or_default(),
            state,
        })
    }

    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<Process, RuntimeError> {
        exec::exec(&self.client, id, spec).await
    }

    async fn attach(&self, id: &str, spec: &ExecSpec) -> Result<Process, RuntimeError> {
        exec::attach(&self.client, id, spec).await
    }

    async fn network_namespace(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        exec::network_namespace(&self.client, id).await
    }

    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream, RuntimeError> {
        // The logs call reports a missing container only once its stream is
        // polled, too late to refuse the request cleanly: ask first.
        let info = self
            .client
            .inspect_container(id, None)
            .await
            .map_err(|e| not_found_or("reading logs", id, e))?;
        // Not following, the json-file is read from disk, as a kubelet reads
        // its CRI files: several times faster than the daemon decoding it
        // for us. Following stays with the daemon, which hands over each
        // line as it is written where the file would be polled.
        if let Some(path) = json_file(&info).filter(|_| !options.follow) {
            let never = futures::future::pending().boxed();
            match containerlog::read(path, Format::DockerJson, options, never).await {
                Ok(entries) => return Ok(entries),
                // Another machine's daemon, or files this user cannot read.
                Err(e) => {
                    debug!(container = id, error = %e, "json-file log not read here; asking the daemon")
                }
            }
        }
        // Times always, so the caller can filter by the exact time and print
        // or drop them as asked.
        let mut query = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(options.follow);
        if let Some(n) = options.tail_lines {
            query = query.tail(&n.to_string());
        }
        // Docker's `since` is whole seconds (and 0 means none): round down so
        // nothing wanted is lost; what is earlier is filtered out later.
        if let Some(since) = options
            .since
            .and_then(|t| i32::try_from(t.as_second()).ok())
            .filter(|s| *s > 0)
        {
            query = query.since(since);
        }
        Ok(self.logs.read(id, query.build()))
    }

    async fn images_in_use(&self) -> Result<HashSet<String>, RuntimeError> {
        let options = ListContainersOptionsBuilder::default().all(true).build();
        let list = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| failed("listing containers", e))?;
        Ok(list.into_iter().filter_map(|c| c.image_id).collect())
    }

    async fn image_info(&self, reference: &str) -> Result<Option<(String, u64)>, RuntimeError> {
        match self.client.inspect_image(reference).await {
            Ok(i) => Ok(Some((
                i.id.unwrap_or_default(),
                u64::try_from(i.size.unwrap_or(0)).unwrap_or(0),
            ))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(failed("inspecting image", e)),
        }
    }

    async fn image_store(&self) -> Result<Option<PathBuf>, RuntimeError> {
        let info = self
            .client
            .info()
            .await
            .map_err(|e| failed("asking for the engine's root", e))?;
        Ok(info.docker_root_dir.map(PathBuf::from))
    }

    async fn remove_image(&self, reference: &str) -> Result<(), RuntimeError> {
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        match self
            .client
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_)
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(failed("removing an image", e)),
        }
    }

    async fn list_labelled(
        &self,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<Labelled>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| failed("listing containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| Labelled {
                id: c.id.unwrap_or_default(),
                running: c.state.as_ref().is_some_and(|s| s.to_string() == "running"),
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::ContainerConfig;

    use super::*;

    fn inspected(kind: &str, tty: bool, path: &str) -> ContainerInspectResponse {
        ContainerInspectResponse {
            log_path: Some(path.to_string()),
            config: Some(ContainerConfig {
                tty: Some(tty),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                log_config: Some(HostConfigLogConfig {
                    typ: Some(kind.to_string()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_json_file_of_lines_is_read_from_disk() {
        let path = "/var/lib/docker/containers/c/c-json.log";
        assert_eq!(
            json_file(&inspected("json-file", false, path)),
            Some(PathBuf::from(path))
        );
        // A terminal's chunks, another driver, or no file: the daemon.
        assert_eq!(json_file(&inspected("json-file", true, path)), None);
        assert_eq!(json_file(&inspected("journald", false, path)), None);
        assert_eq!(json_file(&inspected("json-file", false, "")), None);
        assert_eq!(json_file(&ContainerInspectResponse::default()), None);
    }
}
