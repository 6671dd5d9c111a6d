//! Pods bound to a virtual node: sent to the device by UID, their status
//! written back as a kubelet writes it, and deleted like a kubelet deletes
//! (containers stopped with the grace period first, then a zero-grace delete).

mod admission;
mod events;
mod probe;
mod pull;
mod spec;
mod status;
mod tolerations;
mod volume;

use std::collections::{HashMap, HashSet};

use connectivity::SessionHandle;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};
use proto::api::{DeletePodRequest, ListPods, Open, PodStatus, PodStatusList, open::Kind};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// What the virtual node hands its pod sync.
#[derive(Debug, Clone)]
pub struct PodSyncHandle {
    pub session: watch::Sender<Option<SessionHandle>>,
    pub reports: mpsc::Sender<PodStatus>,
    /// The EdgeDevice's pod settings, as they change.
    pub policy: watch::Sender<crate::crd::PodSettings>,
}

/// Starts syncing the pods bound to `node`; stops when the handle's senders are dropped.
/// How often pods are re-sent to the device so projected tokens (valid for an
/// hour) and ConfigMap/Secret volume content stay fresh.
pub const DEFAULT_REFRESH: std::time::Duration = std::time::Duration::from_secs(20 * 60);

pub fn spawn(
    client: Client,
    node: String,
    refresh: std::time::Duration,
) -> (PodSyncHandle, tokio::task::JoinHandle<()>) {
    let (session_tx, session_rx) = watch::channel(None);
    let (reports_tx, reports_rx) = mpsc::channel(256);
    let (policy_tx, policy_rx) = watch::channel(crate::crd::PodSettings::default());
    let sync = PodSync {
        policy: policy_rx,
        listed: false,
        rejected: HashSet::new(),
        events: events::Recorder::default(),
        refresh,
        pods: Api::all(client.clone()),
        client,
        node,
        session: session_rx,
        reports: reports_rx,
        reports_tx: reports_tx.clone(),
        known: HashMap::new(),
        ensured: HashSet::new(),
        deleting: HashSet::new(),
    };
    let task = tokio::spawn(sync.run());
    (
        PodSyncHandle {
            session: session_tx,
            reports: reports_tx,
            policy: policy_tx,
        },
        task,
    )
}

struct PodSync {
    refresh: std::time::Duration,
    client: Client,
    pods: Api<Pod>,
    node: String,
    session: watch::Receiver<Option<SessionHandle>>,
    reports: mpsc::Receiver<PodStatus>,
    reports_tx: mpsc::Sender<PodStatus>,
    /// Pods bound to this node, by UID.
    known: HashMap<String, Pod>,
    /// UIDs sent to the device on the current session.
    ensured: HashSet<String>,
    /// UIDs whose deletion the device is working on.
    deleting: HashSet<String>,
    policy: watch::Receiver<crate::crd::PodSettings>,
    /// The first listing of pods is complete: only then is a pod the device
    /// runs and the cluster lacks known to be gone (not merely unlisted).
    listed: bool,
    /// UIDs refused by admission, whose Failed status may not be seen yet.
    rejected: HashSet<String>,
    events: events::Recorder,
}

impl PodSync {
    async fn run(mut self) {
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        let mut events = watcher(self.pods.clone(), config).default_backoff().boxed();
        let mut listing: Option<HashSet<String>> = None;
        let mut refresh =
            tokio::time::interval_at(tokio::time::Instant::now() + self.refresh, self.refresh);
        loop {
            tokio::select! {
                _ = refresh.tick() => {
                    let pods: Vec<Pod> = self.known.values().filter(|p| p.metadata.deletion_timestamp.is_none()).cloned().collect();
                    for pod in pods {
                        self.ensure_on_device(pod);
                    }
                }
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitApply(pod))) => {
                        if let Some(l) = listing.as_mut() {
                            l.insert(pod.uid().unwrap_or_default());
                        }
                        self.on_pod(pod);
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        // Pods that vanished while the watch was re-listing.
                        let listed = listing.take().unwrap_or_default();
                        let gone: Vec<Pod> = self.known.values().filter(|p| !listed.contains(&p.uid().unwrap_or_default())).cloned().collect();
                        for pod in gone {
                            self.on_gone(pod);
                        }
                        if !self.listed {
                            self.listed = true;
                            // A device that connected before the listing was complete.
                            self.sync_device();
                        }
                    }
                    Some(Ok(watcher::Event::Apply(pod))) => self.on_pod(pod),
                    Some(Ok(watcher::Event::Delete(pod))) => self.on_gone(pod),
                    Some(Err(e)) => warn!(error = %e, "watching pods"),
                    None => return,
                },
                changed = self.session.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.ensured.clear();
                    self.deleting.clear();
                    if self.current_session().is_some() {
                        self.sync_device();
                    }
                }
                Some(status) = self.reports.recv() => self.on_status(status).await,
                changed = self.policy.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let pods: Vec<Pod> = self.known.values().cloned().collect();
                    for pod in &pods {
                        self.tolerate_offline(pod);
                    }
                }
            }
        }
    }

    fn current_session(&self) -> Option<SessionHandle> {
        self.session.borrow().clone().filter(|s| !s.is_closed())
    }

    fn on_pod(&mut self, pod: Pod) {
        // The device host's pod is served by aranya, never run on the device.
        if crate::kubelet::hostpod::is_any_host_pod(&pod) {
            return;
        }
        let uid = pod.uid().unwrap_or_default();
        let deleting = pod.metadata.deletion_timestamp.is_some();
        self.known.insert(uid.clone(), pod.clone());
        self.tolerate_offline(&pod);
        if deleting && (admission::is_final(&pod) || self.rejected.contains(&uid)) {
            // Never sent to the device: nothing to stop there.
            self.rejected.remove(&uid);
            let reports = self.reports_tx.clone();
            let removed = PodStatus {
                uid,
                removed: true,
                ..Default::default()
            };
            tokio::spawn(async move {
                let _ = reports.send(removed).await;
            });
        } else if deleting {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
            self.delete_on_device(&uid, grace);
        } else if !self.ensured.contains(&uid) {
            self.ensure_on_device(pod);
        }
    }

    /// Raises the pod's tolerations of an offline device to the EdgeDevice's
    /// allowance, so a partition shorter than that evicts nothing.
    fn tolerate_offline(&self, pod: &Pod) {
        let Some(seconds) = self.policy.borrow().tolerate_offline_seconds else {
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let current = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let Some(tolerations) = tolerations::raised(&current, i64::from(seconds)) else {
            return;
        };
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let name = pod.name_any();
        // With the resourceVersion: a pod changed meanwhile is looked at again
        // on its next event, never overwritten.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": pod.resource_version() },
            "spec": { "tolerations": tolerations },
        });
        tokio::spawn(async move {
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(pod = %name, seconds, "tolerations raised to the device's offline allowance")
                }
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => warn!(pod = %name, error = %e, "raising tolerations"),
            }
        });
    }

    /// The Pod object is gone (force delete, or removed after the device cleaned up).
    fn on_gone(&mut self, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        self.events.forget(&uid);
        self.rejected.remove(&uid);
        self.known.remove(&uid);
        self.ensured.remove(&uid);
        if !self.deleting.contains(&uid) {
            self.delete_on_device(&uid, 0);
        }
    }

    fn ensure_on_device(&mut self, pod: Pod) {
        if admission::is_final(&pod) {
            return;
        }
        let uid = pod.uid().unwrap_or_default();
        // Admission is decided once, before the pod starts: a policy changed
        // later does not stop pods the device already runs.
        let started = pod.status.as_ref().is_some_and(|s| s.start_time.is_some());
        if !started
            && let Err(rejection) =
                admission::check(&self.policy.borrow().admission, &self.node, &pod)
        {
            if self.rejected.insert(uid) {
                info!(pod = %pod.name_any(), reason = %rejection.message, "pod refused");
                let reports = self.reports_tx.clone();
                let status = admission::rejected(&pod, &rejection);
                tokio::spawn(async move {
                    let _ = reports.send(status).await;
                });
            }
            return;
        }
        let Some(session) = self.current_session() else {
            return;
        };
        self.ensured.insert(uid.clone());
        let client = self.client.clone();
        let reports = self.reports_tx.clone();
        tokio::spawn(async move {
            let spec = match spec::device_spec(&client, &pod).await {
                Ok(spec) => spec,
                Err(e @ spec::SpecError::UnsupportedVolume { .. }) => {
                    info!(pod = %pod.name_any(), error = %e, "pod refused");
                    let rejection = admission::Rejection {
                        reason: admission::REASON_VOLUME,
                        message: format!("Pod was rejected: {e}"),
                    };
                    let _ = reports.send(admission::rejected(&pod, &rejection)).await;
                    return;
                }
                Err(e) => {
                    info!(pod = %pod.name_any(), error = %e, "pod not runnable yet");
                    let _ = reports
                        .send(status::config_error(&pod, &e.to_string()))
                        .await;
                    return;
                }
            };
            let header = Open {
                kind: Some(Kind::EnsurePod(proto::api::EnsurePod {})),
            };
            let answer = session.request(&header, &spec).await;
            forward_answer(&reports, &uid, "sending the pod to the device", answer).await;
        });
    }

    fn delete_on_device(&mut self, uid: &str, grace: i64) {
        let Some(session) = self.current_session() else {
            return;
        };
        if !self.deleting.insert(uid.to_string()) {
            return;
        }
        let reports = self.reports_tx.clone();
        let request = DeletePodRequest {
            uid: uid.to_string(),
            grace_period_seconds: grace,
        };
        tokio::spawn(async move {
            let header = Open {
                kind: Some(Kind::DeletePod(proto::api::DeletePod {})),
            };
            let answer = session.request(&header, &request).await;
            forward_answer(
                &reports,
                &request.uid,
                "deleting the pod on the device",
                answer,
            )
            .await;
        });
    }

    /// After (re)connecting: pods the device runs but the cluster no longer
    /// has are removed; pods it lacks are sent.
    fn sync_device(&mut self) {
        if !self.listed {
            return;
        }
        let Some(session) = self.current_session() else {
            return;
        };
        let reports = self.reports_tx.clone();
        let known: HashSet<String> = self.known.keys().cloned().collect();
        tokio::spawn(async move {
            let header = Open {
                kind: Some(Kind::ListPods(ListPods {})),
            };
            match session
                .request::<_, PodStatusList>(&header, &ListPods {})
                .await
            {
                Ok(Some(list)) => {
                    for status in list.pods {
                        if !known.contains(&status.uid) {
                            info!(uid = %status.uid, "device runs a pod the cluster no longer has");
                        }
                        let _ = reports.send(status).await;
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "listing the device's pods"),
            }
        });
        let pods: Vec<Pod> = self.known.values().cloned().collect();
        for pod in pods {
            self.on_pod(pod);
        }
    }

    async fn on_status(&mut self, status: PodStatus) {
        let Some(pod) = self.known.get(&status.uid).cloned() else {
            // The device runs a pod the cluster does not have: remove it.
            if self.listed && !status.removed && !self.deleting.contains(&status.uid) {
                self.delete_on_device(&status.uid, 0);
            }
            if status.removed {
                self.deleting.remove(&status.uid);
            }
            return;
        };
        let namespace = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        if !status.events.is_empty() {
            self.events
                .record(&self.client, &pod, &self.node, &status.events)
                .await;
        }
        if status.removed {
            self.deleting.remove(&status.uid);
            if pod.metadata.deletion_timestamp.is_some() {
                // Containers are gone: the final, zero-grace delete, as a kubelet does.
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(status.uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&pod.name_any(), &params).await {
                    Ok(_) => debug!(pod = %pod.name_any(), "pod removed"),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => warn!(pod = %pod.name_any(), error = %e, "removing the pod object"),
                }
            }
            return;
        }
        if pod.metadata.deletion_timestamp.is_some()
            && !status.removed
            && !self.deleting.contains(&status.uid)
        {
            return;
        }
        let patch = status::pod_status_patch(&pod, &status);
        if let Err(e) = api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            match e {
                kube::Error::Api(s) if s.code == 404 => {}
                e => warn!(pod = %pod.name_any(), error = %e, "writing pod status"),
            }
        }
    }
}

/// Hands the device's answer about one pod to the status writer.
async fn forward_answer(
    reports: &mpsc::Sender<PodStatus>,
    uid: &str,
    what: &str,
    answer: Result<Option<PodStatus>, connectivity::StreamError>,
) {
    match answer {
        Ok(Some(status)) => {
            let _ = reports.send(status).await;
        }
        Ok(None) => warn!(%uid, "{what}: the device answered no pod status"),
        Err(e) => warn!(%uid, error = %e, "{what}"),
    }
}
