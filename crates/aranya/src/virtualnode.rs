//! One virtual Node per EdgeDevice: its object (labels, taints, pod CIDRs),
//! its status (capacity, nodeInfo, conditions) from what the device reports,
//! and its heartbeat Lease.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use connectivity::{SessionHandle, Stream, session::LinkState};
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Taint},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use proto::api::{
    GetNodeStatus, NodeStatus, Open, PodNetwork, RenewReply, RenewRequest, SetPodNetwork,
    open::Kind,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, warn};

use crate::{
    crd::{EdgeDevice, EdgeDeviceSpec},
    hub::Connected,
    pods::PodSyncHandle,
    resources,
};
use proto::session::ResetCode;

pub const FIELD_MANAGER: &str = "aranya";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// What the apiserver may rely on this node's kubelet endpoint for. With
/// `ExtendWebSocketsToKubelet` it passes kubectl's WebSockets through as
/// they are (v5 exec and attach, SPDY tunnelled in a WebSocket for
/// port-forward) instead of translating them to SPDY.
pub const DECLARED_FEATURES: &[&str] = &["ExtendWebSocketsToKubelet"];
/// How long a device may take to set up its pod network.
const POD_NETWORK_TIMEOUT: Duration = Duration::from_secs(10);
/// Status is re-sent this often even when nothing changed (heartbeat times).
const STATUS_REFRESH: Duration = Duration::from_secs(60);

pub const LABEL_ROLE: &str = "node-role.kubernetes.io/edge";
pub const LABEL_DEVICE: &str = "aranya.arhat.dev/edge-device";
pub const ANNOTATION_HOSTNAME: &str = "aranya.arhat.dev/device-hostname";
/// Only pods that tolerate it land on an edge device.
pub const TAINT_EDGE: &str = "aranya.arhat.dev/edge-device";
/// On a device that runs no pods (arhat's `runtime.kind: none`): the
/// scheduler never sends it any.
pub const TAINT_NO_RUNTIME: &str = "aranya.arhat.dev/no-runtime";
/// A kubelet's reason for NotReady when the node itself is at fault (here:
/// its container runtime is down).
pub const REASON_KUBELET_NOT_READY: &str = "KubeletNotReady";
pub const REASON_DISCONNECTED: &str = "EdgeDeviceDisconnected";
pub const REASON_CONNECTED: &str = "EdgeDeviceConnected";

/// What the controller and the hub tell a virtual node.
#[derive(Debug)]
pub enum NodeCmd {
    /// The EdgeDevice (re)appeared or changed, or the Node must be re-applied.
    Spec(Box<EdgeDevice>),
    Connected(Connected),
}

/// Settings every virtual node shares.
#[derive(Clone)]
pub struct NodeEnv {
    pub client: Client,
    pub node_address: IpAddr,
    /// The cluster's pod CIDRs, which a device's own pod CIDR must lie in.
    pub cluster_cidr: Vec<crate::podcidr::Cidr>,
    /// Every Service, for the catalogue each device may reach.
    pub services: Arc<crate::services::Services>,
    /// Every node's kubelet endpoint.
    pub kubelet: Arc<crate::kubelet::Kubelet>,
    pub kubelet_version: String,
    /// After aranya starts, a Ready Node keeps its status this long while its
    /// device reconnects, so an aranya restart looks like nothing to the cluster.
    pub reconnect_grace: Duration,
    /// How often pods are re-sent so tokens and volume content stay fresh.
    pub pod_refresh: Duration,
    /// Broker connections of devices with an mqtt method.
    pub mqtt: Arc<crate::mqtt::Env>,
    /// Certificates renewed over a session.
    pub identity: Arc<crate::identity::Service>,
    /// Where a renewal extends the session's authentication.
    pub hub: Arc<crate::hub::Hub>,
}

impl std::fmt::Debug for NodeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEnv")
            .field("node_address", &self.node_address)
            .field("kubelet_version", &self.kubelet_version)
            .finish_non_exhaustive()
    }
}

/// A running virtual node; dropping the handle stops it.
#[derive(Debug)]
pub struct Handle {
    pub cmds: mpsc::Sender<NodeCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub fn spawn(env: Arc<NodeEnv>, name: String) -> Handle {
    let (cmds, rx) = mpsc::channel(16);
    let (report_tx, report_rx) = mpsc::channel(4);
    let span = tracing::info_span!("node", node = %name);
    let (pods, pods_task) = {
        let _entered = span.enter();
        let (handle, task) = crate::pods::spawn(env.client.clone(), name.clone(), env.pod_refresh);
        (handle, task)
    };
    let (network, network_rx) = watch::channel(crate::crd::NetworkSettings::default());
    let services_task = {
        let _entered = span.enter();
        env.services.sync(network_rx, pods.session.subscribe())
    };
    let serving_task = tokio::spawn(
        env.kubelet
            .serving()
            .clone()
            .maintain(env.client.clone(), name.clone(), vec![env.node_address])
            .instrument(span.clone()),
    );
    let (kubelet_port, kubelet_task) = {
        let _entered = span.enter();
        match env.kubelet.serve(&name, pods.session.subscribe()) {
            Ok((port, task)) => (port, Some(task)),
            Err(e) => {
                warn!(error = %e, "no kubelet endpoint for this node: logs and exec will not reach it");
                (0, None)
            }
        }
    };
    let node = VirtualNode {
        pods,
        pods_task,
        network,
        services_task,
        serving_task,
        kubelet_port,
        kubelet_task,
        host_pod: None,
        nodes: Api::all(env.client.clone()),
        leases: Api::namespaced(env.client.clone(), LEASE_NAMESPACE),
        devices: Api::all(env.client.clone()),
        name,
        device: None,
        session: None,
        mqtt: None,
        report: None,
        report_tx,
        node_uid: None,
        known: Known::default(),
        started: tokio::time::Instant::now(),
        last_status: None,
        device_conditions: (None, None),
        pod_cidrs: Vec::new(),
        cidr_refusal: None,
        events: kube::runtime::events::Recorder::new(
            env.client.clone(),
            kube::runtime::events::Reporter {
                controller: "aranya".into(),
                instance: None,
            },
        ),
        env,
    };
    let task = tokio::spawn(node.run(rx, report_rx).instrument(span));
    Handle { cmds, task }
}

/// What the Node already carried when this aranya started: kept until the
/// device reports again, so a restart does not strip arch/os labels.
#[derive(Debug, Default)]
struct Known {
    arch: Option<String>,
    os: Option<String>,
    hostname: Option<String>,
    /// Pod CIDRs the Node already had (from an aranya before status kept them).
    pod_cidrs: Vec<String>,
    was_ready: bool,
}

struct VirtualNode {
    env: Arc<NodeEnv>,
    nodes: Api<Node>,
    leases: Api<Lease>,
    devices: Api<EdgeDevice>,
    name: String,
    device: Option<Box<EdgeDevice>>,
    session: Option<SessionHandle>,
    /// aranya's broker connection for the device, when it lists mqtt.
    mqtt: Option<crate::mqtt::Connector>,
    report: Option<NodeStatus>,
    report_tx: mpsc::Sender<NodeStatus>,
    pods: PodSyncHandle,
    pods_task: tokio::task::JoinHandle<()>,
    /// The EdgeDevice's network settings, for the service catalogue.
    network: watch::Sender<crate::crd::NetworkSettings>,
    services_task: tokio::task::JoinHandle<()>,
    serving_task: tokio::task::JoinHandle<()>,
    kubelet_port: u16,
    kubelet_task: Option<tokio::task::JoinHandle<()>>,
    /// The host pod's last synced state: the Node it belongs to and whether
    /// the device was connected.
    host_pod: Option<(String, bool)>,
    node_uid: Option<String>,
    known: Known,
    started: tokio::time::Instant,
    /// The last status written, so unchanged status is not re-sent on every event.
    last_status: Option<Value>,
    /// The Node's Ready condition and the Identity condition as last written
    /// to the EdgeDevice: a new certificate rewrites the conditions with the
    /// Node's unchanged.
    device_conditions: (Option<Value>, Option<IdentityCondition>),
    /// The Node's pod CIDRs once assigned (never changed after).
    pod_cidrs: Vec<String>,
    /// Why the EdgeDevice's own pod CIDRs are not used, if they are not.
    cidr_refusal: Option<crate::podcidr::Refusal>,
    events: kube::runtime::events::Recorder,
}

type IdentityCondition = (bool, &'static str, String);

impl VirtualNode {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<NodeCmd>,
        mut reports: mpsc::Receiver<NodeStatus>,
    ) {
        let mut lease_tick = tokio::time::interval(LEASE_RENEW_INTERVAL);
        let mut refresh = tokio::time::interval(STATUS_REFRESH);
        // The link state of the current session; none between sessions, so the
        // loop waits for the next Connected instead of polling a closed channel.
        let mut state: Option<watch::Receiver<LinkState>> = None;
        let grace = tokio::time::sleep(self.env.reconnect_grace);
        tokio::pin!(grace);
        let mut grace_over = false;
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(NodeCmd::Spec(device)) => {
                        // Reconciles also follow every change of the Node itself:
                        // applying is idempotent, and status is written only when
                        // it differs, so aranya's own writes do not feed back.
                        self.pods.policy.send_if_modified(|p| {
                            let changed = *p != device.spec.pod;
                            p.clone_from(&device.spec.pod);
                            changed
                        });
                        self.network.send_if_modified(|n| {
                            let changed = *n != device.spec.network;
                            n.clone_from(&device.spec.network);
                            changed
                        });
                        crate::mqtt::sync(&mut self.mqtt, &self.env.mqtt, &device, &self.name);
                        self.device = Some(device);
                        self.apply_node().await;
                        self.write_status().await;
                        if self.device_conditions.1 != Some(self.identity_condition()) {
                            let ready = self.device_conditions.0.clone();
                            self.write_device_status(ready.as_ref()).await;
                        }
                    }
                    Some(NodeCmd::Connected(connected)) => {
                        state = Some(connected.session.state());
                        self.accept_streams(connected.incoming);
                        self.request_status(connected.session.clone());
                        // Before any pod, so every pod gets its address from the pool.
                        self.send_pod_network(&connected.session).await;
                        self.pods.session.send_replace(Some(connected.session.clone()));
                        if let Some(old) = self.session.replace(connected.session) {
                            old.close("replaced");
                        }
                        self.write_status().await;
                    }
                },
                Some(report) = reports.recv() => {
                    let newer = self.report.as_ref().is_none_or(|r| report.generation >= r.generation || report.system.as_ref().map(|s| &s.boot_id) != r.system.as_ref().map(|s| &s.boot_id));
                    if newer {
                        let runs_pods = |r: &NodeStatus| r.runtime.as_ref().is_none_or(|h| h.configured);
                        let labels_changed = self.report.as_ref().map(|r| (&r.system, &r.hostname, runs_pods(r))) != Some((&report.system, &report.hostname, runs_pods(&report)));
                        self.report = Some(report);
                        if labels_changed {
                            self.apply_node().await;
                        }
                        self.write_status().await;
                    }
                }
                changed = link_changed(&mut state) => {
                    if changed.is_err() {
                        // The session is gone: wait for the next Connected.
                        state = None;
                    }
                    self.write_status().await;
                }
                () = &mut grace, if !grace_over => {
                    grace_over = true;
                    self.write_status().await;
                }
                _ = lease_tick.tick() => self.renew_lease().await,
                _ = refresh.tick() => {
                    self.last_status = None;
                    self.write_status().await;
                }
            }
        }
        if let Some(session) = self.session.take() {
            session.close("virtual node stopped");
        }
    }

    /// The transport the device is connected over now, if it is.
    fn transport(&self) -> Option<&'static str> {
        self.session
            .as_ref()
            .and_then(|s| match *s.state().borrow() {
                LinkState::Connected { transport, .. } => Some(transport),
                _ => None,
            })
    }

    fn connected(&self) -> bool {
        self.transport().is_some()
    }

    fn accept_streams(&self, mut incoming: mpsc::UnboundedReceiver<Stream>) {
        let reports = self.report_tx.clone();
        let pod_reports = self.pods.reports.clone();
        let env = self.env.clone();
        let device = self.name.clone();
        let relay = Arc::new(crate::relay::Context {
            services: self.env.services.clone(),
            hub: self.env.hub.clone(),
            network: self.network.subscribe(),
            node: self.name.clone(),
            zone: self.device.as_ref().and_then(|d| d.spec.node.zone.clone()),
            events: self.events.clone(),
            device: self.device.as_ref().map(|d| {
                let mut reference = d.object_ref(&());
                // Events of a cluster-scoped object live in `default`.
                reference.namespace = Some("default".into());
                reference
            }),
        });
        tokio::spawn(
            async move {
                while let Some(mut stream) = incoming.recv().await {
                    let relay = relay.clone();
                    let reports = reports.clone();
                    let pod_reports = pod_reports.clone();
                    let env = env.clone();
                    let device = device.clone();
                    tokio::spawn(async move {
                        let result = match stream.open_header().map(|h| h.kind) {
                            Ok(Some(Kind::ReportNodeStatus(_))) => {
                                forward(&mut stream, &reports).await
                            }
                            Ok(Some(Kind::ReportPodStatus(_))) => {
                                forward(&mut stream, &pod_reports).await
                            }
                            Ok(Some(Kind::RenewCertificate(_))) => {
                                renew(&mut stream, &env, &device).await
                            }
                            Ok(Some(Kind::Connect(_))) => crate::relay::serve(stream, &relay).await,
                            Ok(other) => {
                                warn!(?other, "device opened a stream aranya does not serve");
                                stream.reset(ResetCode::Refused, "not served by aranya");
                                Ok(())
                            }
                            Err(e) => {
                                stream.reset(ResetCode::ProtocolError, "malformed header");
                                Err(e)
                            }
                        };
                        if let Err(e) = result {
                            warn!(error = %e, "serving a device stream");
                        }
                    });
                }
            }
            .in_current_span(),
        );
    }

    fn request_status(&self, session: SessionHandle) {
        let reports = self.report_tx.clone();
        tokio::spawn(
            async move {
                let header = Open {
                    kind: Some(Kind::GetNodeStatus(GetNodeStatus {})),
                };
                let result = session
                    .request::<_, NodeStatus>(&header, &GetNodeStatus {})
                    .await;
                match result {
                    Ok(Some(status)) => {
                        let _ = reports.send(status).await;
                    }
                    Ok(None) => warn!("device answered no node status"),
                    Err(e) => warn!(error = %e, "requesting node status"),
                }
            }
            .in_current_span(),
        );
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let Some(device) = &self.device else {
            return labels;
        };
        let spec: &EdgeDeviceSpec = &device.spec;
        labels.extend(spec.node.labels.clone());
        labels.insert(LABEL_ROLE.into(), String::new());
        labels.insert(LABEL_DEVICE.into(), self.name.clone());
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        let system = self.report.as_ref().and_then(|r| r.system.as_ref());
        let arch = system
            .map(|s| s.architecture.clone())
            .or_else(|| self.known.arch.clone());
        let os = system
            .map(|s| s.operating_system.clone())
            .or_else(|| self.known.os.clone());
        if let Some(arch) = arch.filter(|a| !a.is_empty()) {
            labels.insert("kubernetes.io/arch".into(), arch);
        }
        if let Some(os) = os.filter(|o| !o.is_empty()) {
            labels.insert("kubernetes.io/os".into(), os);
        }
        if let Some(zone) = &spec.node.zone {
            labels.insert("topology.kubernetes.io/zone".into(), zone.clone());
        }
        labels
    }

    fn required_taints(&self) -> Vec<Taint> {
        let mut taints = vec![Taint {
            key: TAINT_EDGE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }];
        if let Some(device) = &self.device {
            taints.extend(device.spec.node.taints.iter().cloned());
        }
        if self.runtime().is_some_and(|h| !h.configured) {
            taints.push(Taint {
                key: TAINT_NO_RUNTIME.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
        taints
    }

    /// The device's runtime as it last reported it (none from an agent
    /// that predates the report).
    fn runtime(&self) -> Option<&proto::api::RuntimeHealth> {
        self.report.as_ref()?.runtime.as_ref()
    }

    /// Labels, annotations, owner and pod CIDRs by server-side apply under
    /// aranya's field manager; taints merged into whatever others put there.
    async fn apply_node(&mut self) {
        let Some(device) = self.device.clone() else {
            return;
        };
        if self.node_uid.is_none()
            && let Ok(Some(existing)) = self.nodes.get_opt(&self.name).await
        {
            self.remember(&existing);
        }
        let mut annotations = device.spec.node.annotations.clone();
        let hostname = self
            .report
            .as_ref()
            .map(|r| r.hostname.clone())
            .or_else(|| self.known.hostname.clone());
        if let Some(hostname) = hostname.filter(|h| !h.is_empty()) {
            annotations.insert(ANNOTATION_HOSTNAME.into(), hostname);
        }
        let owner = device.controller_owner_ref(&()).map(|mut o| {
            o.block_owner_deletion = None;
            o
        });
        let decision = self.decide_pod_cidrs(&device).await;
        self.refuse_pod_cidrs(decision.refused).await;
        if decision.cidrs.is_empty() && self.cidr_refusal.is_some() {
            // No Node until the EdgeDevice is fixed: the node IPAM would give
            // it another CIDR meanwhile, and that would never change.
            return;
        }
        let mut spec = json!({});
        if let Some(first) = decision.cidrs.first() {
            spec = json!({ "podCIDR": first, "podCIDRs": decision.cidrs });
        }
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": self.labels(),
                "annotations": annotations,
                "ownerReferences": owner.into_iter().collect::<Vec<OwnerReference>>(),
            },
            "spec": spec,
        });
        match self
            .nodes
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&node),
            )
            .await
        {
            Ok(applied) => {
                let recreated = self.node_uid.as_deref() != applied.metadata.uid.as_deref();
                self.node_uid = applied.metadata.uid.clone();
                self.ensure_taints(&applied).await;
                let cidrs = applied
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidrs.clone())
                    .unwrap_or_default();
                self.pod_cidrs_assigned(cidrs).await;
                if recreated {
                    // A new Node object: its status and Lease start from nothing.
                    info!(uid = ?self.node_uid, "node created");
                    self.last_status = None;
                    self.renew_lease().await;
                }
            }
            Err(e) => warn!(error = %e, "applying node"),
        }
    }

    /// The pod CIDRs for the Node: the assigned ones, or the EdgeDevice's,
    /// checked against the cluster CIDR and every other device's.
    async fn decide_pod_cidrs(&mut self, device: &EdgeDevice) -> crate::podcidr::Decision {
        let assigned = device
            .status
            .as_ref()
            .map(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| self.known.pod_cidrs.clone());
        if self.pod_cidrs.is_empty() {
            self.pod_cidrs.clone_from(&assigned);
        }
        let requested: Vec<(&'static str, String)> = [
            ("ipv4CIDR", &device.spec.pod.ipv4_cidr),
            ("ipv6CIDR", &device.spec.pod.ipv6_cidr),
        ]
        .into_iter()
        .filter_map(|(field, cidr)| cidr.clone().map(|c| (field, c)))
        .collect();
        let mut others = Vec::new();
        if assigned.is_empty() && !requested.is_empty() {
            others = self.pod_cidrs_of_others().await;
        }
        crate::podcidr::decide(&requested, &assigned, &self.env.cluster_cidr, &others)
    }

    /// The pod CIDRs of every other EdgeDevice (assigned, or asked for) and
    /// every other Node, each with its owner.
    async fn pod_cidrs_of_others(&self) -> Vec<(String, Vec<String>)> {
        let mut others = Vec::new();
        match self.devices.list(&Default::default()).await {
            Ok(list) => others.extend(
                list.items
                    .into_iter()
                    .filter(|d| d.name_any() != self.name)
                    .map(|d| {
                        let name = format!("EdgeDevice {}", d.name_any());
                        let mut cidrs = d.status.map(|s| s.pod_cidrs).unwrap_or_default();
                        if cidrs.is_empty() {
                            cidrs.extend(d.spec.pod.ipv4_cidr);
                            cidrs.extend(d.spec.pod.ipv6_cidr);
                        }
                        (name, cidrs)
                    }),
            ),
            Err(e) => warn!(error = %e, "listing EdgeDevices to check the pod CIDR"),
        }
        match self.nodes.list(&Default::default()).await {
            Ok(list) => others.extend(
                list.items
                    .into_iter()
                    .filter(|n| n.name_any() != self.name)
                    .map(|n| {
                        let name = format!("Node {}", n.name_any());
                        (name, n.spec.and_then(|s| s.pod_cidrs).unwrap_or_default())
                    }),
            ),
            Err(e) => warn!(error = %e, "listing Nodes to check the pod CIDR"),
        }
        others
    }

    /// Records a new refusal of the EdgeDevice's pod CIDRs (an Event, the
    /// PodCIDR condition), or that one is over.
    async fn refuse_pod_cidrs(&mut self, refused: Option<crate::podcidr::Refusal>) {
        if self.cidr_refusal == refused {
            return;
        }
        self.cidr_refusal = refused;
        if let Some(refusal) = &self.cidr_refusal {
            warn!(%refusal, "EdgeDevice pod CIDR refused");
            self.device_event("PodCIDRRefused", &refusal.to_string())
                .await;
        }
        let ready = self.device_conditions.0.clone();
        self.write_device_status(ready.as_ref()).await;
    }

    /// The Node has its pod CIDRs: kept in the EdgeDevice's status (once)
    /// and told to the device.
    async fn pod_cidrs_assigned(&mut self, cidrs: Vec<String>) {
        if cidrs.is_empty() {
            return;
        }
        if !self.recorded_pod_cidrs(&cidrs) {
            let patch = json!({ "status": { "podCIDRs": cidrs } });
            if let Err(e) = self
                .devices
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                warn!(error = %e, "keeping the pod CIDRs in the EdgeDevice status");
            }
        }
        if cidrs == self.pod_cidrs {
            return;
        }
        info!(pod_cidrs = ?cidrs, "pod CIDRs assigned");
        self.pod_cidrs = cidrs;
        let ready = self.device_conditions.0.clone();
        self.write_device_status(ready.as_ref()).await;
        if let Some(session) = self.session.clone() {
            self.send_pod_network(&session).await;
        }
    }

    fn recorded_pod_cidrs(&self, cidrs: &[String]) -> bool {
        self.device
            .as_ref()
            .and_then(|d| d.status.as_ref())
            .is_some_and(|s| s.pod_cidrs == cidrs)
    }

    /// Tells the device its pods' address pool (nothing before it is known).
    async fn send_pod_network(&self, session: &SessionHandle) {
        if self.pod_cidrs.is_empty() {
            return;
        }
        let network = PodNetwork {
            pod_cidrs: self.pod_cidrs.clone(),
        };
        let kind = Kind::SetPodNetwork(SetPodNetwork {});
        match crate::push::push(session, kind, &network, POD_NETWORK_TIMEOUT).await {
            Ok(()) => debug!(pod_cidrs = ?self.pod_cidrs, "device took its pod network"),
            Err(e) => warn!(error = %e, "telling the device its pod network"),
        }
    }

    async fn device_event(&self, reason: &str, note: &str) {
        let Some(device) = &self.device else {
            return;
        };
        let mut reference = device.object_ref(&());
        // Events of a cluster-scoped object live in `default`.
        reference.namespace = Some("default".into());
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = self.events.publish(&event, &reference).await {
            warn!(error = %e, "recording an EdgeDevice event");
        }
    }

    fn remember(&mut self, node: &Node) {
        let labels = node.labels();
        self.known.arch = labels.get("kubernetes.io/arch").cloned();
        self.known.os = labels.get("kubernetes.io/os").cloned();
        self.known.hostname = node.annotations().get(ANNOTATION_HOSTNAME).cloned();
        self.known.pod_cidrs = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default();
        self.known.was_ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    }

    /// `spec.taints` is an atomic list that the node-lifecycle controller also
    /// writes: add ours to what is there, guarded by the resourceVersion so a
    /// concurrent writer's taint is never dropped.
    async fn ensure_taints(&self, node: &Node) {
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let required = self.required_taints();
        let missing: Vec<Taint> = required
            .iter()
            .filter(|t| {
                !current
                    .iter()
                    .any(|c| c.key == t.key && c.effect == t.effect)
            })
            .cloned()
            .collect();
        // Ours that no longer apply (the device has a runtime again) go;
        // anyone else's stay.
        let stale =
            |t: &Taint| t.key == TAINT_NO_RUNTIME && !required.iter().any(|r| r.key == t.key);
        if missing.is_empty() && !current.iter().any(stale) {
            return;
        }
        let mut taints: Vec<Taint> = current.into_iter().filter(|t| !stale(t)).collect();
        taints.extend(missing);
        let patch = json!({
            "metadata": { "resourceVersion": node.resource_version() },
            "spec": { "taints": taints },
        });
        if let Err(e) = self
            .nodes
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // A conflict means someone else wrote first: the next reconcile retries.
            warn!(error = %e, "adding taints");
        }
    }

    fn ready_condition(&self, now: &str) -> Option<Value> {
        let transport = self.transport();
        let connected = transport.is_some() && self.report.is_some();
        let in_grace = self.known.was_ready
            && self.started.elapsed() < self.env.reconnect_grace
            && self.session.is_none();
        if in_grace {
            return None;
        }
        let runtime_down = self.runtime().filter(|h| h.configured && !h.healthy);
        let (status, reason, message) = if let (true, Some(down)) = (connected, runtime_down) {
            // As a kubelet whose runtime checks fail: the scheduler stops
            // sending pods, and the node-lifecycle controller taints it.
            ("False", REASON_KUBELET_NOT_READY, down.message.clone())
        } else if connected {
            let via = transport.unwrap_or("unknown");
            (
                "True",
                REASON_CONNECTED,
                format!("arhat is connected over {via}"),
            )
        } else {
            let why = match self.session.as_ref().map(|s| s.state().borrow().clone()) {
                Some(LinkState::Disconnected { reason }) | Some(LinkState::Closed { reason }) => {
                    reason
                }
                _ => "the device has not connected".to_string(),
            };
            (
                "False",
                REASON_DISCONNECTED,
                format!("edge device disconnected: {why}"),
            )
        };
        Some(json!({
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }))
    }

    async fn write_status(&mut self) {
        if self.device.is_none() {
            return;
        }
        let now = Timestamp::now().to_string();
        let mut status = json!({
            "addresses": [{ "type": "InternalIP", "address": self.env.node_address.to_string() }],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": self.kubelet_port } },
            "declaredFeatures": DECLARED_FEATURES,
        });
        let ready = self.ready_condition(&now);
        if let Some(ready) = &ready {
            status["conditions"] = json!([ready]);
        }
        if let (Some(report), Some(device)) = (&self.report, &self.device) {
            let capacity = resources::capacity(report, &device.spec);
            status["allocatable"] = json!(resources::allocatable(&capacity, &device.spec));
            status["capacity"] = json!(capacity);
            if let Some(system) = &report.system {
                status["nodeInfo"] = json!({
                    "machineID": system.machine_id,
                    "systemUUID": system.system_uuid,
                    "bootID": system.boot_id,
                    "kernelVersion": system.kernel_version,
                    "osImage": system.os_image,
                    "containerRuntimeVersion": system.container_runtime_version,
                    "kubeletVersion": self.env.kubelet_version,
                    "kubeProxyVersion": "",
                    "operatingSystem": system.operating_system,
                    "architecture": system.architecture,
                });
            }
        }
        // Compare without timestamps: only a change (or the refresh tick) writes.
        let mut fingerprint = status.clone();
        if let Some(conditions) = fingerprint
            .get_mut("conditions")
            .and_then(|c| c.as_array_mut())
        {
            for c in conditions {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastHeartbeatTime");
                    o.remove("lastTransitionTime");
                }
            }
        }
        if self.last_status.as_ref() == Some(&fingerprint) {
            return;
        }
        // Keep lastTransitionTime when the Ready status itself did not change.
        if let Some(ready) = status.get_mut("conditions").and_then(|c| c.get_mut(0))
            && let Ok(Some(node)) = self.nodes.get_opt(&self.name).await
            && let Some(prev) = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            && prev.status == ready["status"]
            && let Some(t) = &prev.last_transition_time
        {
            ready["lastTransitionTime"] = json!(t.0.to_string());
        }
        match self
            .nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {
                debug!("node status written");
                self.last_status = Some(fingerprint);
                self.write_device_status(ready.as_ref()).await;
                self.sync_host_pod().await;
            }
            Err(e) => warn!(error = %e, "writing node status"),
        }
    }

    async fn sync_host_pod(&mut self) {
        let Some(node_uid) = self.node_uid.clone() else {
            return;
        };
        let state = (node_uid, self.connected());
        if self.host_pod.as_ref() == Some(&state) {
            return;
        }
        let kubelet = &self.env.kubelet;
        match crate::kubelet::hostpod::sync(
            &self.env.client,
            kubelet.host_namespace(),
            &self.name,
            &state.0,
            &self.env.node_address.to_string(),
            state.1,
        )
        .await
        {
            Ok(()) => self.host_pod = Some(state),
            Err(e) => warn!(error = %e, "syncing the host pod"),
        }
    }

    fn identity_condition(&self) -> IdentityCondition {
        crate::identity::status::condition(
            &self.name,
            self.device
                .as_ref()
                .and_then(|d| d.status.as_ref())
                .and_then(|s| s.identity.as_ref()),
            std::time::SystemTime::now(),
        )
    }

    async fn write_device_status(&mut self, ready: Option<&Value>) {
        let now = Timestamp::now().to_string();
        let connected = self.connected();
        let previous = self.device.as_ref().and_then(|d| d.status.as_ref());
        let condition = |type_: &str, ok: bool, reason: &str, message: &str| {
            let status = if ok { "True" } else { "False" };
            // The transition time moves only when the status does.
            let since = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
                .filter(|c| c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.0.to_string());
            json!({
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": self.device.as_ref().and_then(|d| d.metadata.generation).unwrap_or(0),
            })
        };
        let mut conditions = vec![condition(
            "Connected",
            connected,
            if connected {
                REASON_CONNECTED
            } else {
                REASON_DISCONNECTED
            },
            if connected {
                "the device is connected"
            } else {
                "the device is not connected"
            },
        )];
        let identity = self.identity_condition();
        conditions.push(condition("Identity", identity.0, identity.1, &identity.2));
        if let Some(refusal) = &self.cidr_refusal {
            conditions.push(condition("PodCIDR", false, "Refused", &refusal.to_string()));
        } else if !self.pod_cidrs.is_empty() {
            conditions.push(condition(
                "PodCIDR",
                true,
                "Assigned",
                &format!("pods get addresses from {}", self.pod_cidrs.join(", ")),
            ));
        }
        if let Some(ready) = ready {
            let ok = ready["status"] == "True";
            conditions.push(condition(
                "NodeReady",
                ok,
                ready["reason"].as_str().unwrap_or(""),
                ready["message"].as_str().unwrap_or(""),
            ));
        }
        let patch = json!({
            "status": {
                "conditions": conditions,
                "connectedVia": self.transport(),
                "nodeName": self.name,
            }
        });
        if let Err(e) = self
            .devices
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            debug!(error = %e, "writing EdgeDevice status");
            return;
        }
        self.device_conditions = (ready.cloned(), Some(identity));
    }

    async fn renew_lease(&mut self) {
        let Some(uid) = self.node_uid.clone() else {
            return;
        };
        let now = Timestamp::now();
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.name.clone(),
            uid: uid.clone(),
            ..Default::default()
        };
        match self.leases.get_opt(&self.name).await {
            Ok(Some(mut lease)) => {
                let owned = lease.owner_references().iter().any(|o| o.uid == uid);
                if !owned {
                    lease.metadata.owner_references = Some(vec![owner]);
                }
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.name.clone());
                spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
                spec.renew_time = Some(crate::lease::renew_time(spec.renew_time.as_ref(), now));
                if let Err(e) = self
                    .leases
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    warn!(error = %e, "renewing lease");
                }
            }
            Ok(None) => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: Some(vec![owner]),
                        ..Default::default()
                    },
                    spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                        holder_identity: Some(self.name.clone()),
                        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                        renew_time: Some(MicroTime(now)),
                        ..Default::default()
                    }),
                };
                if let Err(e) = self.leases.create(&PostParams::default(), &lease).await {
                    warn!(error = %e, "creating lease");
                }
            }
            Err(e) => warn!(error = %e, "reading lease"),
        }
    }
}

/// Reads the one report a device stream carries and hands it on.
/// Resolves when the session's link state changes or the session ends; never
/// while there is no session.
async fn link_changed(
    state: &mut Option<watch::Receiver<LinkState>>,
) -> Result<(), watch::error::RecvError> {
    match state {
        Some(state) => state.changed().await,
        None => std::future::pending().await,
    }
}

async fn forward<M: prost::Message + Default>(
    stream: &mut Stream,
    to: &mpsc::Sender<M>,
) -> Result<(), connectivity::StreamError> {
    if let Some(report) = stream.recv_message::<M>().await? {
        stream.expect_end().await?;
        let _ = to.send(report).await;
    }
    Ok(())
}

/// A device renewing its certificate over its session (authenticated when
/// it started): a new certificate for its new key, and the session's
/// authentication extended to it.
async fn renew(
    stream: &mut Stream,
    env: &NodeEnv,
    device: &str,
) -> Result<(), connectivity::StreamError> {
    let Some(request) = stream.recv_message::<RenewRequest>().await? else {
        return Ok(());
    };
    stream.expect_end().await?;
    let reply = match env.identity.renew(device, &request.csr).await {
        Ok(pem) => {
            match ::identity::DeviceCert::from_pem(pem.as_bytes()) {
                Ok(cert) => {
                    info!(serial = %cert.serial, not_after = %cert.not_after_rfc3339(), "device certificate renewed");
                    env.hub.extend(device, cert.not_after).await;
                }
                Err(e) => warn!(error = %e, "reading a certificate just issued"),
            }
            RenewReply {
                certificate: pem,
                error: String::new(),
            }
        }
        Err(refusal) => {
            warn!(reason = ?refusal.reason, message = %refusal.message, "certificate renewal refused");
            RenewReply {
                certificate: String::new(),
                error: refusal.message,
            }
        }
    };
    stream.send_message(&reply).await?;
    stream.finish();
    Ok(())
}

impl Drop for VirtualNode {
    fn drop(&mut self) {
        if let Some(session) = &self.session {
            session.close("virtual node stopped");
        }
        self.pods_task.abort();
        self.services_task.abort();
        self.serving_task.abort();
        if let Some(task) = &self.kubelet_task {
            task.abort();
        }
        self.env.kubelet.serving().remove(&self.name);
    }
}
