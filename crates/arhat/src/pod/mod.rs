//! Pods on the device: one worker per pod (by UID), running its sandbox,
//! init containers in order, then its containers under the pod's restart
//! policy with a kubelet's back-off; status published on every change.

mod action;
pub mod admit;
mod adopt;
pub mod connect;
pub mod dns;
mod etc;
pub mod exec;
mod instance;
pub mod logs;
mod logsource;
pub mod portforward;
mod probe;
mod reply;
pub mod serve;
mod status;
mod store;
pub mod volumes;
mod worker;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use proto::api::{PodSpec, PodStatus};
use tokio::sync::{Notify, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::network::PodNetwork;
use crate::runtime::{LABEL_POD_UID, Runtime, labels};

/// How long a finished exec or port-forward stream waits for aranya to end
/// its side before it is dropped (and so reset).
const LINGER: Duration = Duration::from_secs(30);

pub use instance::LookupError;
pub use status::phase;

/// Crash back-off: 10 s doubling to 5 minutes, as a kubelet does.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

struct Entry {
    /// Counted against the device's capacity while the pod lives.
    requests: admit::Requests,
    status: watch::Receiver<PodStatus>,
    delete: Option<oneshot::Sender<Duration>>,
    done: watch::Receiver<bool>,
}

/// Where a pod to run comes from.
enum Origin {
    /// aranya sent it: it is admitted first.
    Sent,
    /// Saved by an earlier run, which admitted it; with what that run left.
    Restored(adopt::Found),
}

/// The Warning event of a pod whose spec could not be saved on the device
/// (its disk full): it runs, but a restarted agent would not restore it.
fn unsaved(e: &store::StoreError) -> proto::api::PodEvent {
    proto::api::PodEvent {
        r#type: "Warning".into(),
        reason: "FailedSave".into(),
        message: format!(
            "saving the pod on the device: {e}; it runs, but an agent restart would not restore it"
        ),
        time: jiff::Timestamp::now().as_second(),
        ..Default::default()
    }
}

/// What every pod's worker is given of the device.
struct Shared {
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn PodNetwork>,
    /// In the labels of everything a pod makes.
    device: Arc<str>,
    host_ip: String,
    data_dir: std::path::PathBuf,
    pulled: Arc<crate::imagegc::Pulled>,
    logs: Arc<logsource::LogSource>,
    cluster_dns: Option<dns::ClusterDns>,
}

/// Every pod on this device.
pub struct PodManager {
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn PodNetwork>,
    /// This device's name, in the labels of everything its pods make.
    device: Arc<str>,
    host_ip: String,
    data_dir: std::path::PathBuf,
    capacity: admit::Capacity,
    pulled: Arc<crate::imagegc::Pulled>,
    /// Container logs, for a runtime that keeps none.
    logs: Arc<logsource::LogSource>,
    /// arhat's DNS server, for ClusterFirst pods (none when it is off).
    cluster_dns: Option<dns::ClusterDns>,
    pods: Mutex<HashMap<String, Entry>>,
    /// UIDs deleted lately: a pod's messages travel on streams of their own,
    /// so its create can arrive after its delete, and must not run it again
    /// (a UID never comes back).
    deleted: Mutex<std::collections::VecDeque<String>>,
    /// UIDs whose status changed since the last report.
    dirty: Arc<Mutex<HashSet<String>>>,
    /// Events not reported yet, by UID.
    events: Arc<Mutex<HashMap<String, Vec<proto::api::PodEvent>>>>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for PodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodManager")
            .field("runtime", &self.runtime.name())
            .finish_non_exhaustive()
    }
}

impl PodManager {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        network: Arc<dyn PodNetwork>,
        device: &str,
        host_ip: String,
        data_dir: std::path::PathBuf,
        log_rotation: crate::runtime::LogRotation,
        cluster_dns: Option<dns::ClusterDns>,
    ) -> Arc<Self> {
        Arc::new(Self {
            logs: Arc::new(logsource::LogSource::new(
                runtime.clone(),
                &data_dir,
                log_rotation,
            )),
            runtime,
            network,
            device: device.into(),
            host_ip,
            pulled: crate::imagegc::Pulled::load(&data_dir),
            data_dir,
            capacity: admit::Capacity::of_host(),
            cluster_dns,
            pods: Mutex::new(HashMap::new()),
            deleted: Mutex::default(),
            dirty: Arc::default(),
            events: Arc::default(),
            changed: Arc::default(),
        })
    }

    /// The pool new pods get addresses from: the Node's pod CIDRs.
    pub async fn set_pod_pool(&self, cidrs: &[String]) -> Result<(), crate::network::NetworkError> {
        self.network.set_pool(cidrs).await
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The images this device's pods pulled (what image GC may remove).
    pub fn pulled(&self) -> &Arc<crate::imagegc::Pulled> {
        &self.pulled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the pods saved by an earlier run (the device's desired state, so
    /// a restart while offline changes nothing), taking over their
    /// containers; removes what belongs to no saved pod.
    pub async fn restore(self: &Arc<Self>) -> Result<usize, crate::runtime::RuntimeError> {
        let specs = store::load_all(&self.data_dir);
        let saved: HashSet<&str> = specs.iter().map(|s| s.uid.as_str()).collect();
        let objects = self
            .runtime
            .list_labelled(&labels::of_device(&self.device))
            .await?;
        let leftovers: Vec<_> = objects
            .iter()
            .filter(|o| {
                o.labels
                    .get(LABEL_POD_UID)
                    .is_none_or(|uid| !saved.contains(uid.as_str()))
            })
            .collect();
        if !leftovers.is_empty() {
            info!(
                count = leftovers.len(),
                "removing containers of pods this device no longer has"
            );
        }
        for o in &leftovers {
            self.runtime.remove_container(&o.id).await?;
        }
        // Attachments of sandboxes the runtime lost meanwhile are given back.
        let alive: HashSet<String> = objects
            .iter()
            .filter(|o| !leftovers.iter().any(|l| l.id == o.id))
            .map(|o| o.id.clone())
            .collect();
        self.network.sweep(&alive).await;
        let count = specs.len();
        for spec in specs {
            info!(uid = %spec.uid, pod = %format!("{}/{}", spec.namespace, spec.name), "restoring a saved pod");
            let found = adopt::found(&objects, &spec.uid);
            self.start(spec, Origin::Restored(found));
        }
        Ok(count)
    }

    /// A kubelet's housekeeping: every `every`, what the runtime holds of
    /// pods this agent does not run is removed (a creation that landed after
    /// its pod's deletion gave up waiting for it, or anything left by hand).
    pub async fn housekeeping(self: Arc<Self>, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A pod leaves the map once its deletion removed everything: one
            // that was here before the listing is skipped this time (the
            // listing may show what its deletion removed since).
            let before: HashSet<String> = self.lock().keys().cloned().collect();
            let Ok(objects) = self
                .runtime
                .list_labelled(&labels::of_device(&self.device))
                .await
            else {
                continue;
            };
            // Under the lock: a pod is in the map before it makes anything.
            let orphans: Vec<_> = {
                let pods = self.lock();
                objects
                    .into_iter()
                    .filter(|o| {
                        o.labels
                            .get(LABEL_POD_UID)
                            .is_none_or(|uid| !pods.contains_key(uid) && !before.contains(uid))
                    })
                    .collect()
            };
            for o in &orphans {
                info!(id = %o.id, pod = ?o.labels.get(LABEL_POD_UID), "removing what a pod no longer here left");
            }
            self.remove_leftovers(&orphans).await;
        }
    }

    /// Runs the pod if it is not running yet (idempotent by UID) and it fits
    /// on the device; returns its status.
    pub fn ensure(self: &Arc<Self>, spec: PodSpec) -> PodStatus {
        self.start(spec, Origin::Sent)
    }

    fn start(self: &Arc<Self>, spec: PodSpec, origin: Origin) -> PodStatus {
        if let Err(e) = store::check_uid(&spec.uid) {
            return PodStatus {
                uid: spec.uid,
                namespace: spec.namespace,
                name: spec.name,
                phase: "Failed".into(),
                reason: proto::api::refusal::INVALID_POD.into(),
                message: e.to_string(),
                ..Default::default()
            };
        }
        let mut pods = self.lock();
        if matches!(origin, Origin::Sent) && self.was_deleted(&spec.uid) {
            debug!(uid = %spec.uid, "a create after the pod's delete: ignored");
            return PodStatus {
                uid: spec.uid,
                namespace: spec.namespace,
                name: spec.name,
                removed: true,
                ..Default::default()
            };
        }
        if let Some(entry) = pods.get(&spec.uid) {
            // Being torn down: writing now would leave files behind.
            if entry.delete.is_none() {
                return entry.status.borrow().clone();
            }
            // A re-send carries fresh volume content (a refreshed token, an
            // updated ConfigMap): rewrite it in place, as a kubelet does.
            if let Err(e) = volumes::prepare(&self.data_dir, &spec) {
                warn!(uid = %spec.uid, error = %e, "refreshing volumes");
            }
            if let Err(e) = store::save(&self.data_dir, &spec) {
                warn!(error = %e, "saving the pod");
                self.report_event(&spec.uid, unsaved(&e));
            }
            return entry.status.borrow().clone();
        }
        let requests = admit::Requests::of(&spec);
        let found = match origin {
            Origin::Sent => None,
            // Admitted when it first came.
            Origin::Restored(found) => Some(found),
        };
        if found.is_none() {
            let used = pods.values().filter(|e| !*e.done.borrow()).fold(
                admit::Requests::default(),
                |a, e| admit::Requests {
                    cpu_millis: a.cpu_millis.saturating_add(e.requests.cpu_millis),
                    memory_bytes: a.memory_bytes.saturating_add(e.requests.memory_bytes),
                },
            );
            if let Err(refusal) = admit::check(&spec, self.capacity, used) {
                warn!(uid = %spec.uid, reason = refusal.reason, "{}", refusal.message);
                return PodStatus {
                    uid: spec.uid,
                    namespace: spec.namespace,
                    name: spec.name,
                    phase: "Failed".into(),
                    reason: refusal.reason.into(),
                    message: refusal.message.clone(),
                    host_ip: self.host_ip.clone(),
                    events: vec![proto::api::PodEvent {
                        r#type: "Warning".into(),
                        reason: refusal.reason.into(),
                        message: refusal.message,
                        time: jiff::Timestamp::now().as_second(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
            }
        }
        if let Err(e) = store::save(&self.data_dir, &spec) {
            // It still runs; only a restart of this agent would forget it.
            warn!(error = %e, "saving the pod");
            self.report_event(&spec.uid, unsaved(&e));
        }
        let initial = status::initial(&spec, &self.host_ip);
        let (status_tx, status_rx) = watch::channel(initial.clone());
        let (delete_tx, delete_rx) = oneshot::channel();
        let (done_tx, done_rx) = watch::channel(false);
        let uid = spec.uid.clone();
        let span =
            info_span!("pod", pod = %format!("{}/{}", spec.namespace, spec.name), uid = %uid);
        info!(parent: &span, "starting pod");
        let publish = {
            let dirty = self.dirty.clone();
            let events = self.events.clone();
            let changed = self.changed.clone();
            let uid = uid.clone();
            move |mut s: PodStatus| {
                if !s.events.is_empty() {
                    let mut pending = events
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    pending
                        .entry(uid.clone())
                        .or_default()
                        .append(&mut s.events);
                }
                status_tx.send_replace(s);
                dirty
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(uid.clone());
                changed.notify_one();
            }
        };
        let shared = Shared {
            runtime: self.runtime.clone(),
            network: self.network.clone(),
            device: self.device.clone(),
            host_ip: self.host_ip.clone(),
            data_dir: self.data_dir.clone(),
            pulled: self.pulled.clone(),
            logs: self.logs.clone(),
            cluster_dns: self.cluster_dns.clone(),
        };
        let worker = worker::Worker::new(shared, spec, publish);
        tokio::spawn(
            async move {
                worker.run(delete_rx, found).await;
                let _ = done_tx.send(true);
            }
            .instrument(span),
        );
        pods.insert(
            uid,
            Entry {
                requests,
                status: status_rx,
                delete: Some(delete_tx),
                done: done_rx,
            },
        );
        initial
    }

    /// Stops the pod's containers (SIGTERM, SIGKILL after `grace`) and removes
    /// them; returns once they are gone. Unknown pods are swept from the runtime.
    pub async fn delete(&self, uid: &str, grace: Duration) -> PodStatus {
        self.mark_deleted(uid);
        let found = {
            let mut pods = self.lock();
            pods.get_mut(uid)
                .map(|e| (e.delete.take(), e.done.clone(), e.status.clone()))
        };
        let Some((delete, mut done, status)) = found else {
            self.sweep(uid).await;
            return PodStatus {
                uid: uid.to_string(),
                removed: true,
                ..Default::default()
            };
        };
        if let Some(delete) = delete {
            let _ = delete.send(grace);
        }
        while !*done.borrow_and_update() {
            if done.changed().await.is_err() {
                break;
            }
        }
        // A create the deletion cut short may still have landed in the
        // runtime, unknown to the worker: nothing of the pod may outlive it.
        self.sweep(uid).await;
        {
            // Only the entry waited on: another delete of the pod may have
            // removed it already.
            let mut pods = self.lock();
            if pods.get(uid).is_some_and(|e| e.done.same_channel(&done)) {
                pods.remove(uid);
            }
        }
        let mut last = status.borrow().clone();
        last.removed = true;
        // The teardown's events (Killing) go with the final status.
        last.events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid)
            .unwrap_or_default();
        last
    }

    /// How many deleted UIDs are remembered: far more than a device has
    /// deletes in flight, at some 40 bytes each.
    const DELETED_KEPT: usize = 4096;

    fn mark_deleted(&self, uid: &str) {
        let mut deleted = self
            .deleted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !deleted.iter().any(|d| d == uid) {
            if deleted.len() == Self::DELETED_KEPT {
                deleted.pop_front();
            }
            deleted.push_back(uid.to_string());
        }
    }

    fn was_deleted(&self, uid: &str) -> bool {
        self.deleted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|d| d == uid)
    }

    /// Removes runtime objects of a pod this agent does not know (left from before a restart).
    async fn sweep(&self, uid: &str) {
        match self
            .runtime
            .list_labelled(&labels::of_pod(&self.device, uid))
            .await
        {
            Ok(objects) => self.remove_leftovers(&objects).await,
            Err(e) => warn!(error = %e, "listing runtime objects"),
        }
    }

    /// Removes runtime objects no pod here owns, giving back a sandbox's
    /// network.
    async fn remove_leftovers(&self, objects: &[crate::runtime::Labelled]) {
        for o in objects {
            if let Err(e) = self.runtime.remove_container(&o.id).await {
                warn!(id = %o.id, error = %e, "removing a leftover container");
            }
            if let Err(e) = self.network.detach(&o.id).await {
                warn!(id = %o.id, error = %e, "detaching a leftover sandbox");
            }
        }
    }

    pub fn list(&self) -> Vec<PodStatus> {
        self.lock()
            .values()
            .map(|e| e.status.borrow().clone())
            .collect()
    }

    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        self.lock().get(uid).map(|e| e.status.borrow().clone())
    }

    /// The runtime id of the container instance whose log `kubectl logs`
    /// means: the current one, or with `previous` the last one that ended.
    /// The worker keeps both on the runtime (from creation on), so the id
    /// read from the status can be read from the runtime.
    pub fn container_instance(
        &self,
        uid: &str,
        container: &str,
        previous: bool,
    ) -> Result<String, LookupError> {
        let pods = self.lock();
        let entry = pods.get(uid).ok_or_else(|| LookupError::NoPod {
            uid: uid.to_string(),
        })?;
        instance::for_logs(&entry.status.borrow(), container, previous)
    }

    /// Sends `event` with the pod's next status report.
    fn report_event(&self, uid: &str, event: proto::api::PodEvent) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(uid.to_string())
            .or_default()
            .push(event);
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(uid.to_string());
        self.changed.notify_one();
    }

    /// A container instance's log entries: the runtime's own log, or the one
    /// arhat keeps for a runtime that keeps none.
    pub async fn container_logs(
        &self,
        uid: &str,
        id: &str,
        options: &crate::runtime::LogOptions,
    ) -> Result<crate::runtime::LogStream, crate::runtime::RuntimeError> {
        self.logs.entries(uid, id, options).await
    }

    /// The runtime id of a running container, for exec and attach; with no
    /// name, any running one (port-forward: they share the network).
    pub fn running_container(
        &self,
        uid: &str,
        container: Option<&str>,
    ) -> Result<String, LookupError> {
        let pods = self.lock();
        let entry = pods.get(uid).ok_or_else(|| LookupError::NoPod {
            uid: uid.to_string(),
        })?;
        let status = entry.status.borrow();
        match container {
            Some(name) => instance::running(&status, name),
            None => instance::any_running(&status),
        }
    }

    /// Waits for a change and returns the statuses that changed.
    pub async fn changes(&self) -> Vec<PodStatus> {
        loop {
            let uids: Vec<String> = {
                let mut dirty = self
                    .dirty
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                dirty.drain().collect()
            };
            let statuses: Vec<PodStatus> = {
                let pods = self.lock();
                let mut events = self
                    .events
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                uids.iter()
                    .filter_map(|u| {
                        let mut status = pods.get(u)?.status.borrow().clone();
                        status.events = events.remove(u).unwrap_or_default();
                        Some(status)
                    })
                    .collect()
            };
            if !statuses.is_empty() {
                return statuses;
            }
            self.changed.notified().await;
        }
    }
}
