//! One pod's life: sandbox, init containers in order, containers under the
//! restart policy, and teardown with the grace period.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;
use proto::api::{
    Container, ContainerState as ApiState, PodSpec, PodStatus, container_state::State as Phase,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{BACKOFF_INITIAL, BACKOFF_MAX, action, probe, status};
use crate::network::PodNetwork;
use crate::runtime::{
    ContainerInfo, ContainerSpec, ContainerState, Mount, PortMapping, PullAuth, Runtime,
    RuntimeError, Sandbox, SandboxSpec, labels,
};

/// A lifecycle hook (exec or HTTP) that runs longer than this is given up on.
const HOOK_LIMIT: Duration = Duration::from_secs(600);

/// How soon, and at most how seldom, a runtime that went away is asked
/// again about a container or sandbox.
const OUTAGE_POLL_INITIAL: Duration = Duration::from_millis(250);
const OUTAGE_POLL_MAX: Duration = Duration::from_secs(2);

/// A container that ran this long has its back-off forgotten.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Init,
    App,
}

struct State {
    status: PodStatus,
    /// Container IDs still on the runtime, per container: current and previous instance.
    ids: HashMap<(Kind, usize), Vec<String>>,
}

pub struct Worker {
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn PodNetwork>,
    device: Arc<str>,
    spec: PodSpec,
    state: Arc<Mutex<State>>,
    publish: Arc<dyn Fn(PodStatus) + Send + Sync>,
    sandbox: Option<Sandbox>,
    /// The attempt the next sandbox is made for.
    sandbox_attempt: u32,
    data_dir: PathBuf,
    /// Host path of each volume, once prepared.
    volumes: HashMap<String, PathBuf>,
    /// The pod's /etc/hosts and resolv.conf, for every container.
    etc_mounts: Vec<Mount>,
    /// Instances an earlier run left that this one takes over, per container.
    adopted: Mutex<HashMap<(Kind, usize), ContainerInfo>>,
    /// Images this agent pulled, for their garbage collection.
    pulled: Arc<crate::imagegc::Pulled>,
    /// Container logs, for a runtime that keeps none.
    logs: Arc<super::logsource::LogSource>,
    /// arhat's DNS server, for ClusterFirst pods.
    cluster_dns: Option<super::dns::ClusterDns>,
    /// Sandbox and container creations under way. They run as tasks of
    /// their own, so that a deletion cutting the pod's work short waits for
    /// them and then removes what they made, rather than leaving it behind.
    creations: tokio_util::task::TaskTracker,
}

/// A creation's task that did not finish (the runtime's call panicked).
fn cut_short(e: tokio::task::JoinError) -> RuntimeError {
    RuntimeError::failed("creating", e.to_string())
}

impl Worker {
    pub fn new(
        shared: super::Shared,
        spec: PodSpec,
        publish: impl Fn(PodStatus) + Send + Sync + 'static,
    ) -> Self {
        let super::Shared {
            runtime,
            network,
            device,
            host_ip,
            data_dir,
            pulled,
            logs,
            cluster_dns,
        } = shared;
        let status = status::initial(&spec, &host_ip);
        Self {
            runtime,
            network,
            device,
            spec,
            state: Arc::new(Mutex::new(State {
                status,
                ids: HashMap::new(),
            })),
            publish: Arc::new(publish),
            sandbox: None,
            sandbox_attempt: 0,
            data_dir,
            volumes: HashMap::new(),
            etc_mounts: Vec::new(),
            adopted: Mutex::default(),
            pulled,
            logs,
            cluster_dns,
            creations: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Changes the status, and publishes it if that changed anything (probes
    /// report the same readiness every period).
    fn update(&self, f: impl FnOnce(&mut PodStatus)) {
        let snapshot = {
            let mut state = self.lock_state();
            let before = state.status.clone();
            f(&mut state.status);
            state.status.phase =
                status::phase(&state.status, &self.spec.restart_policy).to_string();
            (state.status != before).then(|| state.status.clone())
        };
        if let Some(snapshot) = snapshot {
            (self.publish)(snapshot);
        }
    }

    /// Records a kubelet-style event (sent with the next status report).
    fn event(&self, on: Option<(Kind, usize)>, warning: bool, reason: &str, message: String) {
        let (container, init_container) = on.map_or((String::new(), false), |(kind, i)| {
            (self.container(kind, i).name.clone(), kind == Kind::Init)
        });
        let mut snapshot = {
            let state = self.lock_state();
            state.status.clone()
        };
        snapshot.events.push(proto::api::PodEvent {
            r#type: if warning { "Warning" } else { "Normal" }.into(),
            reason: reason.into(),
            message,
            container,
            init_container,
            time: now(),
        });
        (self.publish)(snapshot);
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_adopted(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, usize), ContainerInfo>> {
        self.adopted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn container(&self, kind: Kind, i: usize) -> &Container {
        match kind {
            Kind::Init => &self.spec.init_containers[i],
            Kind::App => &self.spec.containers[i],
        }
    }

    fn update_container(
        &self,
        kind: Kind,
        i: usize,
        f: impl FnOnce(&mut proto::api::ContainerStatus),
    ) {
        self.update(|s| {
            let list = match kind {
                Kind::Init => &mut s.init_containers,
                Kind::App => &mut s.containers,
            };
            if let Some(c) = list.get_mut(i) {
                f(c);
            }
        });
    }

    /// Runs the pod until it is deleted; `found` is what an earlier run
    /// left, when the caller has listed it already.
    pub async fn run(
        mut self,
        mut delete: oneshot::Receiver<Duration>,
        found: Option<super::adopt::Found>,
    ) {
        let requested = tokio::select! {
            grace = &mut delete => grace.ok(),
            () = self.lifecycle(found) => None,
        };
        let grace = match requested {
            Some(g) => g,
            // Finished (Succeeded/Failed): keep the containers until the pod is deleted.
            None => match delete.await {
                Ok(g) => g,
                Err(_) => return,
            },
        };
        self.teardown(grace).await;
    }

    /// Runs the pod in its sandbox; when the sandbox dies (runtime restarted,
    /// removed by hand, its process crashed), makes it again and starts
    /// everything anew in it, as a kubelet does. Returns when the pod is done.
    async fn lifecycle(&mut self, found: Option<super::adopt::Found>) {
        let mut found = match found {
            Some(found) => found,
            None => self.found().await,
        };
        loop {
            let adopted = self.adopt(&found).await;
            let resumed = adopted.is_some();
            let (sandbox, started) = match adopted {
                Some(adopted) => adopted,
                None => {
                    self.start_over(&found).await;
                    self.sandbox_attempt = self.sandbox_attempt.max(found.next_sandbox);
                    (self.sandbox().await, now())
                }
            };
            let host_network = self.spec.host_network;
            self.update(|s| {
                // A pod on the host's network has the host's address, as a kubelet says.
                s.pod_ip = match (&sandbox.ip, host_network) {
                    (Some(ip), false) => ip.clone(),
                    (_, true) => s.host_ip.clone(),
                    (None, false) => String::new(),
                };
                if s.start_time == 0 {
                    s.start_time = started;
                }
            });
            let sandbox_id = sandbox.id.clone();
            self.etc_mounts = self.write_etc(sandbox.ip.as_deref()).await;
            self.sandbox = Some(sandbox);
            if self.volumes.is_empty() {
                self.volumes = self.prepare_volumes().await;
            }
            // App containers left running in a sandbox taken over mean the
            // pod was initialized already; in a new sandbox, init runs again.
            let initialized = resumed
                && self
                    .spec
                    .containers
                    .iter()
                    .any(|c| found.containers.contains_key(&c.name));
            tokio::select! {
                () = self.run_containers(initialized) => return,
                () = self.sandbox_lost(&sandbox_id) => {}
            }
            let again = self.wants_new_sandbox();
            self.sandbox_changed(again).await;
            self.detach(&sandbox_id).await;
            if !again {
                return;
            }
            self.sandbox_attempt += 1;
            found = self.found().await;
        }
    }

    /// Init containers in order, then the app containers under the restart policy.
    async fn run_containers(&self, initialized: bool) {
        for i in 0..self.spec.init_containers.len() {
            if initialized {
                self.take_adopted(Kind::Init, i);
                continue;
            }
            if !self.run_init(i).await {
                return;
            }
        }
        self.update(|s| s.initialized = true);
        let supervisors = (0..self.spec.containers.len()).map(|i| self.supervise(i));
        join_all(supervisors).await;
    }

    /// Resolves once the sandbox is gone for good. The runtime going away
    /// meanwhile is not that: a runtime restarted with its containers kept
    /// (Docker's live-restore) still has the sandbox when it answers again.
    async fn sandbox_lost(&self, id: &str) {
        let mut delay = OUTAGE_POLL_INITIAL;
        loop {
            if let Err(e) = self.runtime.wait_sandbox(id).await {
                debug!(error = %e, "waiting on the sandbox; asking again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(OUTAGE_POLL_MAX);
            }
            match self.runtime.sandbox(id).await {
                Ok(s) if s.ready => {}
                Ok(_) | Err(RuntimeError::NotFound(_)) => return,
                Err(e) => debug!(error = %e, "asking for the sandbox"),
            }
        }
    }

    /// A kubelet makes no new sandbox for a pod that will not run again:
    /// `Never` once its containers have run, `OnFailure` once they all succeeded.
    fn wants_new_sandbox(&self) -> bool {
        let state = self.lock_state();
        let status = &state.status;
        match self.spec.restart_policy.as_str() {
            "Never" => !status
                .init_containers
                .iter()
                .chain(&status.containers)
                .any(|c| !c.container_id.is_empty()),
            "OnFailure" => !status.containers.iter().all(|c| {
                matches!(
                    c.state.as_ref().and_then(|x| x.state.as_ref()),
                    Some(Phase::Terminated(t)) if t.exit_code == 0
                )
            }),
            _ => true,
        }
    }

    /// The sandbox died: what ran in it ended with it. Each container's last
    /// instance becomes its last state (its state, if no new sandbox follows).
    async fn sandbox_changed(&self, again: bool) {
        warn!(again, "the pod's sandbox is gone");
        if again {
            self.event(
                None,
                false,
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.".into(),
            );
        }
        self.lock_adopted().clear();
        let current: Vec<((Kind, usize), String)> = {
            let state = self.lock_state();
            state
                .ids
                .iter()
                .filter_map(|(key, ids)| Some((*key, ids.last()?.clone())))
                .collect()
        };
        let runtime = self.runtime.name();
        for ((kind, i), id) in current {
            // Its process may outlive the sandbox's (the pause process crashed).
            if let Err(e) = self.runtime.stop_container(&id, self.pod_grace()).await
                && !matches!(e, RuntimeError::NotFound(_))
            {
                warn!(error = %e, "stopping a container of a dead sandbox");
            }
            let ended = match self.runtime.inspect_container(&id).await {
                Ok(info) => terminated_state(runtime, &info),
                Err(_) => status::terminated(137, 0, now(), &format!("{runtime}://{id}"), false),
            };
            self.update_container(kind, i, |c| {
                let ran = !matches!(
                    c.state.as_ref().and_then(|x| x.state.as_ref()),
                    Some(Phase::Waiting(_))
                );
                if again {
                    if ran {
                        c.last_state = Some(ended);
                    }
                    c.state = Some(status::waiting("ContainerCreating", ""));
                } else {
                    c.state = Some(ended);
                }
                c.ready = false;
                c.started = false;
            });
        }
        if again {
            let has_init = !self.spec.init_containers.is_empty();
            self.update(|s| {
                s.pod_ip.clear();
                if has_init {
                    s.initialized = false;
                }
            });
        }
    }

    /// What an earlier run of this pod (this agent before a restart, or before
    /// a reboot) left on the runtime.
    async fn found(&self) -> super::adopt::Found {
        let mine = labels::of_pod(&self.device, &self.spec.uid);
        match self.runtime.list_labelled(&mine).await {
            Ok(objects) => super::adopt::found(&objects, &self.spec.uid),
            Err(e) => {
                warn!(error = %e, "listing what an earlier run left");
                super::adopt::Found::default()
            }
        }
    }

    /// Takes over a running sandbox and its containers, so an agent restart
    /// restarts nothing. Returns the sandbox and when it started.
    async fn adopt(&self, found: &super::adopt::Found) -> Option<(Sandbox, i64)> {
        let id = found.sandbox.as_ref()?;
        let mut sandbox = match self.runtime.sandbox(id).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "inspecting the sandbox left running");
                return None;
            }
        };
        if !self.spec.host_network {
            // Its address is the network's, kept over the agent's restart;
            // a sandbox without one cannot serve the pod.
            let Some(address) = self.network.address(id) else {
                warn!(sandbox = %id, "the sandbox left running has no network attachment");
                return None;
            };
            sandbox.ip = Some(address.to_string());
        }
        let started = match self.runtime.inspect_container(id).await {
            Ok(ContainerInfo {
                state: ContainerState::Running { started_at },
                ..
            }) => started_at,
            _ => return None,
        };
        let kinds = (0..self.spec.init_containers.len())
            .map(|i| (Kind::Init, i))
            .chain((0..self.spec.containers.len()).map(|i| (Kind::App, i)));
        for (kind, i) in kinds {
            let name = self.container(kind, i).name.clone();
            let Some(instances) = found.containers.get(&name) else {
                continue;
            };
            // The current instance and the one before it (for `logs --previous`).
            let (older, kept) = instances.split_at(instances.len().saturating_sub(2));
            for old in older {
                if let Err(e) = self.runtime.remove_container(&old.id).await {
                    warn!(error = %e, "removing an old container instance");
                }
                self.logs.remove(&self.spec.uid, &old.id);
            }
            let Some(current) = kept.last() else {
                continue;
            };
            let previous = match kept.first().filter(|p| p.id != current.id) {
                Some(p) => self.runtime.inspect_container(&p.id).await.ok(),
                None => None,
            };
            let info = match self.runtime.inspect_container(&current.id).await {
                Ok(info) => info,
                Err(e) => {
                    warn!(container = %name, error = %e, "inspecting a container left running");
                    continue;
                }
            };
            info!(container = %name, id = %current.id, state = ?info.state, "adopting a container");
            if matches!(info.state, ContainerState::Running { .. }) {
                self.logs.keep(&self.spec.uid, &name, &current.id).await;
            }
            {
                let mut state = self.lock_state();
                state
                    .ids
                    .insert((kind, i), kept.iter().map(|s| s.id.clone()).collect());
            }
            let runtime = self.runtime.name();
            self.update_container(kind, i, |s| {
                s.restart_count = current.attempt;
                s.last_state = previous.map(|p| terminated_state(runtime, &p));
            });
            self.lock_adopted().insert((kind, i), info);
        }
        Some((sandbox, started))
    }

    /// No sandbox to take over (a reboot, or a new pod): what is left of an
    /// earlier run is removed, and attempts continue from where it was.
    async fn start_over(&self, found: &super::adopt::Found) {
        for id in &found.all {
            if let Err(e) = self.runtime.remove_container(id).await {
                warn!(error = %e, "removing what an earlier run left");
            }
            self.detach(id).await;
            self.logs.remove(&self.spec.uid, id);
        }
        if found.all.is_empty() {
            return;
        }
        info!(
            objects = found.all.len(),
            "the sandbox is gone; the pod starts over"
        );
        let kinds = (0..self.spec.init_containers.len())
            .map(|i| (Kind::Init, i))
            .chain((0..self.spec.containers.len()).map(|i| (Kind::App, i)));
        for (kind, i) in kinds {
            let next = found.next_attempt(&self.container(kind, i).name);
            self.update_container(kind, i, |s| s.restart_count = next);
        }
    }

    fn take_adopted(&self, kind: Kind, i: usize) -> Option<ContainerInfo> {
        self.lock_adopted().remove(&(kind, i))
    }

    /// Whose objects this worker makes, for their labels.
    fn owner(&self) -> labels::Owner<'_> {
        labels::Owner {
            device: &self.device,
            pod_uid: &self.spec.uid,
            namespace: &self.spec.namespace,
            pod_name: &self.spec.name,
        }
    }

    /// Makes the pod's sandbox and attaches it to the pod network, retrying
    /// (with the reason shown) until both work.
    async fn sandbox(&self) -> Sandbox {
        let spec = SandboxSpec {
            labels: self
                .owner()
                .labels(crate::runtime::SANDBOX, self.sandbox_attempt),
            attempt: self.sandbox_attempt,
            pod_uid: self.spec.uid.clone(),
            namespace: self.spec.namespace.clone(),
            name: self.spec.name.clone(),
            hostname: self.spec.hostname.clone(),
            host_network: self.spec.host_network,
            host_ipc: self.spec.host_ipc,
        };
        self.retry(
            "FailedCreatePodSandBox",
            false,
            Duration::from_secs(30),
            || async {
                let creating = {
                    let (runtime, spec) = (self.runtime.clone(), spec.clone());
                    self.creations
                        .spawn(async move { runtime.create_sandbox(&spec).await })
                };
                match creating.await.unwrap_or_else(|e| Err(cut_short(e))) {
                    Ok(sandbox) if self.spec.host_network => Ok(sandbox),
                    Ok(sandbox) => self.attach(sandbox).await,
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    /// Runs `attempt` until it works, each failure logged and shown in the
    /// pod's status under `reason` (and as an event if `event`), waiting 1 s
    /// and doubling up to `max` in between.
    async fn retry<T, F>(
        &self,
        reason: &str,
        event: bool,
        max: Duration,
        mut attempt: impl FnMut() -> F,
    ) -> T
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        let mut delay = Duration::from_secs(1);
        loop {
            match attempt().await {
                Ok(done) => return done,
                Err(message) => {
                    warn!(error = %message, reason, "will retry");
                    if event {
                        self.event(None, true, reason, message.clone());
                    }
                    self.update(|s| {
                        s.reason = reason.into();
                        s.message = message.clone();
                    });
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                }
            }
        }
    }

    /// Attaches a new sandbox's namespace to the pod network; a sandbox that
    /// cannot be attached is removed (the next attempt makes another).
    async fn attach(&self, mut sandbox: Sandbox) -> Result<Sandbox, String> {
        let attached = match self.runtime.network_namespace(&sandbox.id).await {
            Ok(netns) => self
                .network
                .attach(&sandbox.id, &netns, &self.host_ports())
                .await
                .map_err(|e| format!("setting up the pod network: {e}")),
            Err(e) => Err(format!("the sandbox's network namespace: {e}")),
        };
        match attached {
            Ok(address) => {
                sandbox.ip = Some(address.to_string());
                Ok(sandbox)
            }
            Err(e) => {
                if let Err(removing) = self.runtime.remove_container(&sandbox.id).await {
                    warn!(error = %removing, "removing a sandbox left without a network");
                }
                Err(e)
            }
        }
    }

    /// Gives back the network of a sandbox that is gone.
    async fn detach(&self, sandbox: &str) {
        if let Err(e) = self.network.detach(sandbox).await {
            warn!(%sandbox, error = %e, "detaching the sandbox from the pod network");
        }
    }

    /// The pod's hostPorts, published on the device by the pod network.
    fn host_ports(&self) -> Vec<PortMapping> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping {
                container_port: u16::try_from(p.container_port).unwrap_or(0),
                protocol: p.protocol.to_ascii_lowercase(),
                host_port: u16::try_from(p.host_port).unwrap_or(0),
                host_ip: p.host_ip.clone(),
            })
            .collect()
    }

    /// Writes the pod's /etc/hosts and resolv.conf for the sandbox at `ip`
    /// (none on the host's network); returns their mounts.
    async fn write_etc(&self, ip: Option<&str>) -> Vec<Mount> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let device_hosts = read("/etc/hosts");
        let aliases: Vec<(String, Vec<String>)> = self
            .spec
            .host_aliases
            .iter()
            .map(|a| (a.ip.clone(), a.hostnames.clone()))
            .collect();
        let cluster_dns = self.cluster_dns.as_ref().map(|d| d.now());
        let files = super::etc::Files {
            hostname: &self.spec.hostname,
            pod_ip: ip.filter(|_| !self.spec.host_network),
            host_aliases: &aliases,
            device_hosts: &device_hosts,
            resolver: super::dns::resolver(
                self.spec.dns.as_ref(),
                &read("/etc/resolv.conf"),
                self.spec.host_network,
                cluster_dns
                    .as_ref()
                    .map(|(nameserver, domain)| super::dns::Cluster {
                        nameserver,
                        domain,
                        namespace: &self.spec.namespace,
                    }),
            ),
        };
        let dir = super::volumes::pod_dir(&self.data_dir, &self.spec.uid);
        self.retry(
            "FailedCreatePodSandBox",
            false,
            Duration::from_secs(30),
            || async {
                super::etc::write(&dir, &files)
                    .map_err(|e| format!("writing the pod's /etc/hosts and resolv.conf: {e}"))
            },
        )
        .await
    }

    /// Creates the pod's volumes, retrying (with the reason shown) until it works.
    async fn prepare_volumes(&self) -> HashMap<String, PathBuf> {
        let paths = self
            .retry("FailedMount", true, Duration::from_secs(60), || async {
                super::volumes::prepare(&self.data_dir, &self.spec).map_err(|e| e.to_string())
            })
            .await;
        self.update(|s| {
            if s.reason == "FailedMount" {
                s.reason.clear();
                s.message.clear();
            }
        });
        paths
    }

    /// The container's volume mounts as host binds.
    fn mounts(&self, c: &Container) -> Result<Vec<Mount>, String> {
        let mut mounts: Vec<Mount> =
            c.mounts
                .iter()
                .map(|m| {
                    let volume = self.volumes.get(&m.volume).ok_or_else(|| {
                        format!("volume {:?} is not defined in the pod", m.volume)
                    })?;
                    let host_path = if m.sub_path.is_empty() {
                        volume.clone()
                    } else {
                        let path = super::volumes::contained(volume, &m.sub_path)
                            .ok_or_else(|| format!("subPath {:?} leaves its volume", m.sub_path))?;
                        // As a kubelet: a missing subPath is created as a directory.
                        if !path.exists() {
                            std::fs::create_dir_all(&path)
                                .map_err(|e| format!("subPath {:?}: {e}", m.sub_path))?;
                        }
                        path
                    };
                    Ok(Mount {
                        host_path,
                        container_path: m.mount_path.clone(),
                        read_only: m.read_only,
                    })
                })
                .collect::<Result<_, String>>()?;
        // The pod's files, unless the container mounts its own there.
        for etc in &self.etc_mounts {
            if !mounts
                .iter()
                .any(|m| m.container_path == etc.container_path)
            {
                mounts.push(etc.clone());
            }
        }
        Ok(mounts)
    }

    /// Runs init container `i` to success; false if the pod failed for good.
    async fn run_init(&self, i: usize) -> bool {
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let code = self.run_once(Kind::Init, i).await;
            if code == 0 {
                return true;
            }
            if self.spec.restart_policy == "Never" {
                return false;
            }
            self.crash_backoff(Kind::Init, i, &mut backoff, Duration::ZERO)
                .await;
        }
    }

    /// Keeps app container `i` running as the restart policy says.
    async fn supervise(&self, i: usize) {
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let started = Instant::now();
            let code = self.run_once(Kind::App, i).await;
            let restart = match self.spec.restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            if !restart {
                return;
            }
            self.crash_backoff(Kind::App, i, &mut backoff, started.elapsed())
                .await;
        }
    }

    /// Waits out the back-off before the next attempt, showing CrashLoopBackOff.
    async fn crash_backoff(&self, kind: Kind, i: usize, backoff: &mut Duration, ran: Duration) {
        if ran >= BACKOFF_RESET_AFTER {
            *backoff = BACKOFF_INITIAL;
        }
        let delay = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        let name = self.container(kind, i).name.clone();
        self.event(
            Some((kind, i)),
            true,
            "BackOff",
            format!(
                "Back-off restarting failed container {name} in pod {}_{}",
                self.spec.name, self.spec.namespace
            ),
        );
        self.update_container(kind, i, |c| {
            c.last_state = c.state.take();
            c.restart_count += 1;
            c.ready = false;
            c.started = false;
            c.state = Some(status::waiting(
                "CrashLoopBackOff",
                &format!(
                    "back-off {}s restarting failed container={name}",
                    delay.as_secs()
                ),
            ));
        });
        tokio::time::sleep(delay).await;
    }

    /// One attempt: image, create, start (or an instance taken over), wait.
    /// Returns the exit code.
    async fn run_once(&self, kind: Kind, i: usize) -> i64 {
        let c = self.container(kind, i).clone();
        let (id, image_id, started_at) = match self.take_adopted(kind, i) {
            Some(ContainerInfo {
                id,
                image_id,
                state: ContainerState::Running { started_at },
            }) => (id, image_id, started_at),
            Some(
                info @ ContainerInfo {
                    state: ContainerState::Exited { exit_code, .. },
                    ..
                },
            ) => {
                // It ended while no agent watched: that ending counts.
                let runtime = self.runtime.name();
                self.update_container(kind, i, |s| {
                    s.container_id = format!("{runtime}://{}", info.id);
                    s.image_id = info.image_id.clone();
                    s.state = Some(terminated_state(runtime, &info));
                });
                return exit_code;
            }
            Some(created) => {
                if let Err(e) = self.runtime.remove_container(&created.id).await {
                    warn!(error = %e, "removing a container that never started");
                }
                match self.create_and_start(kind, i, &c).await {
                    Ok(started) => started,
                    Err(code) => return code,
                }
            }
            None => match self.create_and_start(kind, i, &c).await {
                Ok(started) => started,
                Err(code) => return code,
            },
        };
        self.watch(kind, i, &c, &id, &image_id, started_at).await
    }

    /// Creates and starts a new instance: its id, image id and start time, or
    /// the exit code to count when it could not run.
    async fn create_and_start(
        &self,
        kind: Kind,
        i: usize,
        c: &Container,
    ) -> Result<(String, String, i64), i64> {
        let image_id = self.ensure_image(kind, i, c).await;
        let attempt = self.restart_count(kind, i);
        let mounts = match self.mounts(c).and_then(|mut m| {
            m.extend(self.termination_log(c, attempt)?);
            Ok(m)
        }) {
            Ok(m) => m,
            Err(message) => {
                let e = RuntimeError::failed("mounting volumes", message);
                return Err(self.failed_to_run(kind, i, "CreateContainerConfigError", &e));
            }
        };
        let spec = ContainerSpec {
            labels: self.owner().labels(&c.name, attempt),
            mounts,
            pod_uid: self.spec.uid.clone(),
            namespace: self.spec.namespace.clone(),
            pod_name: self.spec.name.clone(),
            name: c.name.clone(),
            attempt,
            image: c.image.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone(),
            env: c
                .env
                .iter()
                .map(|e| (e.name.clone(), self.env_value(e)))
                .collect(),
            cpu_millis: c.cpu_millis,
            memory_bytes: c.memory_bytes,
            tty: c.tty,
            stdin: c.stdin,
            host_pid: self.spec.host_pid,
            host_ipc: self.spec.host_ipc,
            security: c
                .security
                .as_ref()
                .map(|s| crate::runtime::Security {
                    run_as_user: s.run_as_user,
                    run_as_group: s.run_as_group,
                    supplemental_groups: s.supplemental_groups.clone(),
                    read_only_root_filesystem: s.read_only_root_filesystem,
                    privileged: s.privileged,
                    add_capabilities: s.add_capabilities.clone(),
                    drop_capabilities: s.drop_capabilities.clone(),
                })
                .unwrap_or_default(),
        };
        let Some(sandbox) = &self.sandbox else {
            return Err(-1);
        };
        let creating = {
            let (runtime, sandbox, spec) = (self.runtime.clone(), sandbox.clone(), spec.clone());
            self.creations
                .spawn(async move { runtime.create_container(&sandbox, &spec).await })
        };
        let id = match creating.await.unwrap_or_else(|e| Err(cut_short(e))) {
            Ok(id) => id,
            Err(e) => return Err(self.failed_to_run(kind, i, "CreateContainerError", &e)),
        };
        self.remember(kind, i, &id);
        self.logs.keep(&self.spec.uid, &c.name, &id).await;
        self.event(
            Some((kind, i)),
            false,
            "Created",
            format!("Created container: {}", c.name),
        );
        if let Err(e) = self.runtime.start_container(&id).await {
            return Err(self.failed_to_run(kind, i, "RunContainerError", &e));
        }
        self.event(
            Some((kind, i)),
            false,
            "Started",
            format!("Started container {}", c.name),
        );
        let started_at = match self.runtime.inspect_container(&id).await {
            Ok(info) => match info.state {
                ContainerState::Running { started_at }
                | ContainerState::Exited { started_at, .. } => started_at,
                ContainerState::Created => now(),
            },
            Err(_) => now(),
        };
        info!(container = %c.name, id = %id, "container started");
        if let Some(hook) = &c.post_start {
            // As a kubelet: the container counts as running only once its
            // postStart hook is done; a failed hook kills it.
            let target = self.probe_target(&id).await;
            if let Err(message) = action::run(&self.runtime, hook, &target, HOOK_LIMIT).await {
                let message = format!("PostStartHookError: {message}");
                warn!(container = %c.name, "{message}");
                self.event(Some((kind, i)), true, "FailedPostStartHook", message);
                self.event(
                    Some((kind, i)),
                    false,
                    "Killing",
                    format!("FailedPostStartHook: stopping container {}", c.name),
                );
                if let Err(e) = self.runtime.stop_container(&id, self.pod_grace()).await {
                    warn!(error = %e, "stopping a container whose postStart hook failed");
                }
            }
        }
        Ok((id, image_id, started_at))
    }

    /// The container's restarts so far: the attempt its current instance is.
    fn restart_count(&self, kind: Kind, i: usize) -> u32 {
        let state = self.lock_state();
        let list = match kind {
            Kind::Init => &state.status.init_containers,
            Kind::App => &state.status.containers,
        };
        list.get(i).map_or(0, |s| s.restart_count)
    }

    fn pod_grace(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.spec.termination_grace_period_seconds).unwrap_or(0))
    }

    /// The host file behind the container's terminationMessagePath, made
    /// empty for this attempt (a kubelet binds one the same way).
    fn termination_log(&self, c: &Container, attempt: u32) -> Result<Option<Mount>, String> {
        if c.termination_message_path.is_empty() {
            return Ok(None);
        }
        let path = self.termination_log_path(c, attempt);
        let made = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, b""))
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                // Whatever user the container runs as may write it.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            });
        made.map_err(|e| format!("terminationMessagePath {}: {e}", path.display()))?;
        Ok(Some(Mount {
            host_path: path,
            container_path: c.termination_message_path.clone(),
            read_only: false,
        }))
    }

    fn termination_log_path(&self, c: &Container, attempt: u32) -> PathBuf {
        super::volumes::pod_dir(&self.data_dir, &self.spec.uid)
            .join("containers")
            .join(&c.name)
            .join(format!("{attempt}-termination-log"))
    }

    /// Why the container ended, as it said in its termination file, or (with
    /// FallbackToLogsOnError, when it said nothing and failed) its log's end.
    async fn termination_message(
        &self,
        kind: Kind,
        i: usize,
        c: &Container,
        id: &str,
        code: i64,
    ) -> String {
        const MAX_FILE: usize = 4096;
        const MAX_LOG_BYTES: usize = 2048;
        const LOG_LINES: u64 = 80;
        let attempt = self.restart_count(kind, i);
        if !c.termination_message_path.is_empty()
            && let Ok(bytes) = std::fs::read(self.termination_log_path(c, attempt))
            && !bytes.is_empty()
        {
            return String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_FILE)]).into_owned();
        }
        if !c.termination_message_fallback_to_logs || code == 0 {
            return String::new();
        }
        let text = self.logs.last_lines(&self.spec.uid, id, LOG_LINES).await;
        let tail = &text[text.len().saturating_sub(MAX_LOG_BYTES)..];
        String::from_utf8_lossy(tail).into_owned()
    }

    /// Stops a container as a kubelet does: its preStop hook first, within
    /// the grace period, then SIGTERM and SIGKILL with what is left of it.
    async fn stop(
        &self,
        key: (Kind, usize),
        id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let c = self.container(key.0, key.1);
        // Asked of the runtime, not the status: a container whose postStart
        // hook is still running shows as waiting, yet runs and gets its preStop.
        let running = matches!(
            self.runtime.inspect_container(id).await,
            Ok(ContainerInfo {
                state: ContainerState::Running { .. },
                ..
            })
        );
        if let Some(hook) = &c.pre_stop
            && running
        {
            let target = self.probe_target(id).await;
            match tokio::time::timeout(grace, action::run(&self.runtime, hook, &target, grace))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    let message = format!("PreStopHook failed: {message}");
                    warn!(container = %c.name, "{message}");
                    self.event(Some(key), true, "FailedPreStopHook", message);
                }
                Err(_) => {
                    warn!(container = %c.name, "preStop hook still running at the end of the grace period")
                }
            }
        }
        // As a kubelet: at least 2 s for the process itself after the hook.
        let left = grace
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(2).min(grace));
        self.runtime.stop_container(id, left).await
    }

    /// Shows the instance running and waits for it to end; returns its exit code.
    async fn watch(
        &self,
        kind: Kind,
        i: usize,
        c: &Container,
        id: &str,
        image_id: &str,
        started_at: i64,
    ) -> i64 {
        let runtime_id = format!("{}://{id}", self.runtime.name());
        let probed = kind == Kind::App
            && (c.startup_probe.is_some()
                || c.readiness_probe.is_some()
                || c.liveness_probe.is_some());
        self.update_container(kind, i, |s| {
            s.container_id = runtime_id.clone();
            s.image_id = image_id.to_string();
            s.state = Some(status::running(started_at));
            // Probes decide these when there are any; without, a running
            // container is started and ready (as a kubelet says).
            s.started = kind == Kind::Init || !probed;
            s.ready = kind == Kind::App && !probed;
        });
        let waited = if probed {
            let report = ProbeReport { worker: self, i };
            let target = self.probe_target(id).await;
            tokio::select! {
                code = self.wait_exit(id) => code,
                failed = probe::supervise(self.runtime.clone(), c, target, &report) => {
                    self.kill_for_probe(i, c, id, &failed).await;
                    self.wait_exit(id).await
                }
            }
        } else {
            self.wait_exit(id).await
        };
        let code = match waited {
            Ok(code) => code,
            Err(e) => {
                warn!(container = %c.name, error = %e, "waiting for the container");
                -1
            }
        };
        let (finished_at, oom) = match self.runtime.inspect_container(id).await {
            Ok(ContainerInfo {
                state:
                    ContainerState::Exited {
                        finished_at,
                        oom_killed,
                        ..
                    },
                ..
            }) => (finished_at, oom_killed),
            _ => (now(), false),
        };
        debug!(container = %c.name, code, "container exited");
        let message = self.termination_message(kind, i, c, id, code).await;
        self.update_container(kind, i, |s| {
            let mut state = status::terminated(code, started_at, finished_at, &runtime_id, oom);
            if let Some(Phase::Terminated(t)) = state.state.as_mut() {
                t.message = message;
            }
            s.state = Some(state);
            s.ready = false;
            s.started = false;
        });
        code
    }

    /// Waits for the container to exit. The runtime going away meanwhile
    /// ends the wait, not the container: it is asked again once it answers,
    /// so a runtime restarted with its containers kept restarts nothing.
    async fn wait_exit(&self, id: &str) -> Result<i64, RuntimeError> {
        let mut delay = OUTAGE_POLL_INITIAL;
        loop {
            match self.runtime.wait_container(id).await {
                Ok(code) => return Ok(code),
                Err(e @ RuntimeError::NotFound(_)) => return Err(e),
                Err(e) => debug!(error = %e, "waiting for a container; asking again"),
            }
            tokio::time::sleep(delay).await;
            match self.runtime.inspect_container(id).await {
                Ok(ContainerInfo {
                    state: ContainerState::Exited { exit_code, .. },
                    ..
                }) => return Ok(exit_code),
                Ok(_) => delay = OUTAGE_POLL_INITIAL,
                Err(e @ RuntimeError::NotFound(_)) => return Err(e),
                Err(_) => delay = (delay * 2).min(OUTAGE_POLL_MAX),
            }
        }
    }

    /// Where the container's probes dial: the pod's address, in its network namespace.
    async fn probe_target(&self, id: &str) -> action::Target {
        let netns = match self.runtime.network_namespace(id).await {
            Ok(path) => path,
            Err(e) => {
                warn!(error = %e, "the container's network namespace; probes dial from the agent's");
                PathBuf::from("/proc/self/ns/net")
            }
        };
        let pod_ip = {
            let state = self.lock_state();
            [&state.status.pod_ip, &state.status.host_ip]
                .into_iter()
                .find(|ip| !ip.is_empty())
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into())
        };
        action::Target {
            container_id: id.to_string(),
            pod_ip,
            netns,
        }
    }

    /// A liveness or startup probe gave up on the container: it is stopped
    /// (with the probe's grace period, else the pod's), and restarted by the
    /// pod's policy like any container that ended.
    async fn kill_for_probe(&self, i: usize, c: &Container, id: &str, failed: &probe::Failed) {
        let which = failed.which.name().to_ascii_lowercase();
        info!(container = %c.name, probe = %which, "probe failed; killing the container");
        self.event(
            Some((Kind::App, i)),
            false,
            "Killing",
            format!(
                "Container {} failed {which} probe, will be restarted",
                c.name
            ),
        );
        let grace = failed.grace.unwrap_or_else(|| self.pod_grace());
        if let Err(e) = self.stop((Kind::App, i), id, grace).await {
            warn!(error = %e, "stopping a container that failed its probe");
        }
    }

    /// An env value, filling in what only the device knows.
    fn env_value(&self, e: &proto::api::EnvVar) -> String {
        let state = self.lock_state();
        match e.field_path.as_str() {
            "" => e.value.clone(),
            "status.podIP" | "status.podIPs" => state.status.pod_ip.clone(),
            "status.hostIP" | "status.hostIPs" => state.status.host_ip.clone(),
            _ => String::new(),
        }
    }

    /// Keeps the latest dead instance of each container (for `logs --previous`)
    /// and removes older ones.
    fn remember(&self, kind: Kind, i: usize, id: &str) {
        let stale = {
            let mut state = self.lock_state();
            let ids = state.ids.entry((kind, i)).or_default();
            ids.push(id.to_string());
            if ids.len() > 2 { ids.remove(0) } else { return }
        };
        let runtime = self.runtime.clone();
        let (logs, uid) = (self.logs.clone(), self.spec.uid.clone());
        tokio::spawn(async move {
            if let Err(e) = runtime.remove_container(&stale).await {
                warn!(error = %e, "removing an old container instance");
            }
            logs.remove(&uid, &stale);
        });
    }

    fn failed_to_run(&self, kind: Kind, i: usize, reason: &str, e: &RuntimeError) -> i64 {
        warn!(error = %e, reason, "container did not run");
        self.event(Some((kind, i)), true, "Failed", format!("Error: {e}"));
        self.update_container(kind, i, |s| {
            s.state = Some(status::waiting(reason, &e.to_string()));
        });
        128
    }

    /// Makes the image present per the pull policy; waits with ErrImagePull /
    /// ImagePullBackOff until it is.
    async fn ensure_image(&self, kind: Kind, i: usize, c: &Container) -> String {
        let on = Some((kind, i));
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let present = self.runtime.image_id(&c.image).await.ok().flatten();
            let pull = async {
                self.event(on, false, "Pulling", format!("Pulling image {:?}", c.image));
                let started = Instant::now();
                let auth = c.pull_auth.as_ref().map(|a| PullAuth {
                    server: a.server.clone(),
                    username: a.username.clone(),
                    password: a.password.clone(),
                });
                let pulled = self.runtime.pull_image(&c.image, auth.as_ref()).await;
                if pulled.is_ok() {
                    self.pulled.used(&c.image, true);
                    let took = started.elapsed().as_secs_f64();
                    let message = format!("Successfully pulled image {:?} in {took:.3}s", c.image);
                    self.event(on, false, "Pulled", message);
                }
                pulled
            };
            let result = match (c.image_pull_policy.as_str(), present) {
                ("Always", _) => pull.await,
                (_, Some(id)) => {
                    self.pulled.used(&c.image, false);
                    let message =
                        format!("Container image {:?} already present on machine", c.image);
                    self.event(on, false, "Pulled", message);
                    Ok(id)
                }
                ("Never", None) => Err(RuntimeError::ImageNotFound {
                    image: c.image.clone(),
                    reason: "not present and the pull policy is Never",
                }),
                (_, None) => pull.await,
            };
            let e = match result {
                Ok(id) => return id,
                Err(e) => e,
            };
            let never =
                matches!(e, RuntimeError::ImageNotFound { .. }) && c.image_pull_policy == "Never";
            let first = if never {
                "ErrImageNeverPull"
            } else {
                "ErrImagePull"
            };
            warn!(image = %c.image, error = %e, "image not available");
            let message = e.to_string();
            self.event(
                on,
                true,
                "Failed",
                format!("Failed to pull image {:?}: {message}", c.image),
            );
            // As a kubelet: the pull error, then the back-off until the next try.
            self.update_container(kind, i, |s| {
                s.state = Some(status::waiting(first, &message))
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            let backing_off = format!("Back-off pulling image {:?}: {message}", c.image);
            self.event(
                on,
                false,
                "BackOff",
                format!("Back-off pulling image {:?}", c.image),
            );
            self.update_container(kind, i, |s| {
                s.state = Some(status::waiting("ImagePullBackOff", &backing_off));
            });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Records Killing for every container still running.
    fn killing_events(&self) {
        let running: Vec<(Kind, usize)> = {
            let state = self.lock_state();
            let is_running = |c: &proto::api::ContainerStatus| {
                matches!(
                    c.state.as_ref().and_then(|x| x.state.as_ref()),
                    Some(Phase::Running(_))
                )
            };
            let init = state
                .status
                .init_containers
                .iter()
                .enumerate()
                .map(|(i, c)| (Kind::Init, i, c));
            let app = state
                .status
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| (Kind::App, i, c));
            init.chain(app)
                .filter(|(_, _, c)| is_running(c))
                .map(|(k, i, _)| (k, i))
                .collect()
        };
        for (kind, i) in running {
            let name = self.container(kind, i).name.clone();
            self.event(
                Some((kind, i)),
                false,
                "Killing",
                format!("Stopping container {name}"),
            );
        }
    }

    async fn teardown(&self, grace: Duration) {
        let instances: Vec<((Kind, usize), String)> = {
            let state = self.lock_state();
            state
                .ids
                .iter()
                .flat_map(|(key, ids)| ids.iter().map(|id| (*key, id.clone())))
                .collect()
        };
        let ids: Vec<String> = instances.iter().map(|(_, id)| id.clone()).collect();
        info!(
            grace_seconds = grace.as_secs(),
            containers = ids.len(),
            "stopping pod"
        );
        self.killing_events();
        // The previous instance of a container has ended already: only the
        // current one (the last) runs a preStop hook.
        let current = |key: &(Kind, usize), id: &String| {
            let state = self.lock_state();
            state.ids.get(key).and_then(|v| v.last()) == Some(id)
        };
        let stops = instances.iter().map(|(key, id)| async move {
            if current(key, id) {
                self.stop(*key, id, grace).await
            } else {
                self.runtime.stop_container(id, grace).await
            }
        });
        for r in join_all(stops).await {
            if let Err(e) = r
                && !matches!(e, RuntimeError::NotFound(_))
            {
                warn!(error = %e, "stopping a container");
            }
        }
        for id in ids.iter().chain(self.sandbox.as_ref().map(|s| &s.id)) {
            if let Err(e) = self.runtime.remove_container(id).await {
                warn!(error = %e, "removing a container");
            }
        }
        if let Some(sandbox) = &self.sandbox {
            self.detach(&sandbox.id).await;
        }
        // Creations the deletion cut short finish first; the pod manager
        // then removes whatever of the pod is left.
        self.creations.close();
        if tokio::time::timeout(Duration::from_secs(60), self.creations.wait())
            .await
            .is_err()
        {
            warn!("creations under way still unfinished after 60 s");
        }
        // Only now: a `logs -f` during the grace period follows to the end.
        self.logs.forget(&ids);
        let dir = super::volumes::pod_dir(&self.data_dir, &self.spec.uid);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), error = %e, "removing the pod's volumes");
        }
        self.update(|s| {
            for c in s.init_containers.iter_mut().chain(s.containers.iter_mut()) {
                if matches!(
                    c.state.as_ref().and_then(|x| x.state.as_ref()),
                    Some(Phase::Running(_))
                ) {
                    let id = c.container_id.clone();
                    c.state = Some(ApiState {
                        state: Some(Phase::Terminated(proto::api::StateTerminated {
                            exit_code: 137,
                            reason: "Error".into(),
                            container_id: id,
                            finished_at: now(),
                            ..Default::default()
                        })),
                    });
                }
                c.ready = false;
            }
            s.removed = true;
        });
    }
}

/// Probe results into one app container's status and events.
struct ProbeReport<'a> {
    worker: &'a Worker,
    i: usize,
}

impl probe::Report for ProbeReport<'_> {
    fn unhealthy(&self, which: probe::Which, message: &str) {
        self.worker.event(
            Some((Kind::App, self.i)),
            true,
            "Unhealthy",
            format!("{} probe failed: {message}", which.name()),
        );
    }

    fn started(&self) {
        self.worker
            .update_container(Kind::App, self.i, |s| s.started = true);
    }

    fn ready(&self, ready: bool) {
        self.worker
            .update_container(Kind::App, self.i, |s| s.ready = ready);
    }
}

/// How an instance that already ended is shown (taken over from an earlier run).
fn terminated_state(runtime: &str, info: &ContainerInfo) -> ApiState {
    match info.state {
        ContainerState::Exited {
            exit_code,
            started_at,
            finished_at,
            oom_killed,
        } => status::terminated(
            exit_code,
            started_at,
            finished_at,
            &format!("{runtime}://{}", info.id),
            oom_killed,
        ),
        _ => status::waiting("ContainerCreating", ""),
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests;
