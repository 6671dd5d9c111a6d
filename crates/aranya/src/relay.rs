//! The cluster side of the cluster-network relay: a device opens a stream
//! for each connection it intercepted on its way to a cluster Service. The
//! connection is checked against the device's policy (the same
//! `spec.network.services` its catalogue comes from, since the device may
//! ask for anything), sent to a ready endpoint of the Service dialled from
//! inside the cluster, and carried on the stream.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use connectivity::{SessionHandle, Stream, StreamError};
use k8s_openapi::api::{
    core::v1::{ObjectReference, Service},
    discovery::v1::{Endpoint, EndpointSlice},
};
use kube::{
    ResourceExt,
    runtime::events::{Event, EventType, Recorder},
};
use proto::api::{Connect, ConnectReply, ConnectRequest, Open, open::Kind, stream_reply::Code};
use tokio::{
    net::{TcpStream, UdpSocket},
    sync::watch,
};
use tracing::{debug, warn};

use crate::{crd::NetworkSettings, hub::Presence, services::Services};

/// How long one endpoint may take to accept before the next is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stream is held for the device to end its side once the
/// endpoint has ended its own.
const LINGER: Duration = Duration::from_secs(30);
/// A UDP flow with no datagram either way this long is over.
const UDP_IDLE: Duration = Duration::from_secs(120);
pub const REASON_CONNECTION_REFUSED: &str = "ServiceConnectionRefused";

/// What the relay of one device needs.
pub struct Context {
    pub services: Arc<Services>,
    /// Other devices' sessions, for endpoints on them.
    pub hub: Arc<crate::hub::Hub>,
    /// The device's policy, as its EdgeDevice says now.
    pub network: watch::Receiver<NetworkSettings>,
    /// The device's Node and zone, for `trafficDistribution`.
    pub node: String,
    pub zone: Option<String>,
    pub events: Recorder,
    /// The EdgeDevice, which refusals are recorded on.
    pub device: Option<ObjectReference>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.node)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

/// Why a connection goes nowhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("protocol {0:?} is not relayed")]
    Protocol(String),
    #[error("{0} is not an IP address")]
    Address(String),
    #[error("{0} is no Service's address and port the device may reach")]
    NotFound(SocketAddr),
    #[error("Service {service} ({addr}) is outside the device's spec.network.services")]
    Forbidden { service: String, addr: SocketAddr },
    #[error("Service {0} has no ready endpoint")]
    NoEndpoint(String),
    #[error("no endpoint of Service {service} took the connection: {last}")]
    Unreachable { service: String, last: String },
}

impl Refusal {
    fn code(&self) -> Code {
        match self {
            Refusal::Protocol(_) | Refusal::Address(_) => Code::BadRequest,
            Refusal::NotFound(_) => Code::NotFound,
            Refusal::Forbidden { .. } => Code::Forbidden,
            Refusal::NoEndpoint(_) | Refusal::Unreachable { .. } => Code::Unavailable,
        }
    }

    /// Whether a well-behaved device could not have asked for it: only a
    /// crafted request reaches outside its policy. (An address that is no
    /// Service's is also what a device asks for while its catalogue still
    /// lists a Service just deleted.)
    fn is_crafted(&self) -> bool {
        matches!(self, Refusal::Forbidden { .. })
    }
}

/// Where one connection may go: its Service and the endpoints to try, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub udp: bool,
    pub endpoints: Vec<Target>,
}

/// One endpoint: its address, and the Node and pod it is on, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub node: Option<String>,
    pub pod_uid: Option<String>,
}

/// Spreads connections over a Service's endpoints.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Serves one Connect stream.
pub async fn serve(mut stream: Stream, cx: &Context) -> Result<(), StreamError> {
    let Some(request) = stream.recv_message::<ConnectRequest>().await? else {
        return Ok(());
    };
    let routed = {
        let network = cx.network.borrow();
        route(
            &cx.services,
            &network,
            &request,
            &cx.node,
            cx.zone.as_deref(),
        )
    };
    let route = match routed {
        Ok(route) => route,
        Err(refusal) => return refuse(stream, cx, refusal).await,
    };
    let mut last = String::new();
    for target in &route.endpoints {
        match reach(cx, target, route.udp).await {
            Ok(Reached::Local) => {
                debug!(service = %route.service, endpoint = %target.addr, "the endpoint is on the device itself");
                answer(
                    &mut stream,
                    ConnectReply {
                        local_address: target.addr.ip().to_string(),
                        local_port: u32::from(target.addr.port()),
                        ..Default::default()
                    },
                )
                .await?;
                stream.finish();
                return Ok(());
            }
            Ok(Reached::Device(device, forwarded)) => {
                debug!(service = %route.service, endpoint = %target.addr, %device, "relaying through the endpoint's device");
                answer(&mut stream, ConnectReply::default()).await?;
                return connectivity::splice::join(stream, forwarded, LINGER).await;
            }
            Ok(Reached::Tcp(conn)) => {
                debug!(service = %route.service, endpoint = %target.addr, "relaying a device's connection");
                answer(&mut stream, ConnectReply::default()).await?;
                return connectivity::splice::splice(stream, conn, LINGER).await;
            }
            Ok(Reached::Udp(socket)) => {
                debug!(service = %route.service, endpoint = %target.addr, "relaying a device's UDP flow");
                answer(&mut stream, ConnectReply::default()).await?;
                return connectivity::splice::datagrams(stream, socket, UDP_IDLE).await;
            }
            Err(e) => {
                debug!(service = %route.service, endpoint = %target.addr, error = %e, "endpoint unreachable; trying the next");
                last = format!("{}: {e}", target.addr);
            }
        }
    }
    // (`route` gives at least one endpoint, or NoEndpoint.)
    let refusal = Refusal::Unreachable {
        service: route.service,
        last,
    };
    refuse(stream, cx, refusal).await
}

async fn answer(stream: &mut Stream, reply: ConnectReply) -> Result<(), StreamError> {
    stream.send_message(&reply).await
}

async fn refuse(mut stream: Stream, cx: &Context, refusal: Refusal) -> Result<(), StreamError> {
    if refusal.is_crafted() {
        warn!(%refusal, "device asked for a connection outside its catalogue");
        record(cx, &refusal).await;
    } else {
        debug!(%refusal, "connection refused");
    }
    answer(
        &mut stream,
        ConnectReply {
            code: refusal.code().into(),
            message: refusal.to_string(),
            ..Default::default()
        },
    )
    .await?;
    stream.finish();
    Ok(())
}

/// How an endpoint was reached.
enum Reached {
    /// It is a pod of the asking device: the device dials it itself.
    Local,
    /// A pod of another device: a Connect stream through that device's session.
    Device(String, Stream),
    /// Dialled from here.
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// The endpoint `target`, by the way its Node allows. A UDP endpoint in the
/// cluster has no refusal to move on from: its socket is connected, and
/// datagrams it refuses are lost.
async fn reach(cx: &Context, target: &Target, udp: bool) -> Result<Reached, String> {
    if let Some(node) = &target.node {
        if *node == cx.node {
            return Ok(Reached::Local);
        }
        match cx.hub.presence(node).await {
            Presence::NotADevice => {}
            Presence::Offline => return Err(format!("edge device {node} is offline")),
            Presence::Online(session) => {
                return through_device(&session, node, target, udp)
                    .await
                    .map(|s| Reached::Device(node.clone(), s));
            }
        }
    }
    if udp {
        return dial_udp(target.addr).await.map(Reached::Udp);
    }
    match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target.addr)).await {
        Ok(Ok(conn)) => {
            let _ = conn.set_nodelay(true);
            Ok(Reached::Tcp(conn))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {DIAL_TIMEOUT:?}")),
    }
}

/// A Connect stream to the endpoint's pod on the device `node`, which dials
/// it from inside the pod's network: edge pods' addresses are reachable only
/// on their device.
async fn through_device(
    session: &SessionHandle,
    node: &str,
    target: &Target,
    udp: bool,
) -> Result<Stream, String> {
    let Some(pod_uid) = &target.pod_uid else {
        return Err(format!("the endpoint on edge device {node} names no pod"));
    };
    let header = Open {
        kind: Some(Kind::Connect(Connect {})),
    };
    let request = ConnectRequest {
        protocol: if udp { "UDP" } else { "TCP" }.into(),
        address: target.addr.ip().to_string(),
        port: u32::from(target.addr.port()),
        pod_uid: pod_uid.clone(),
    };
    let opened = async {
        let mut forwarded = session.open(&header).await?;
        forwarded.send_message(&request).await?;
        let reply = forwarded.recv_message::<ConnectReply>().await?;
        Ok::<_, StreamError>((forwarded, reply))
    };
    match tokio::time::timeout(DIAL_TIMEOUT, opened).await {
        Ok(Ok((forwarded, Some(reply)))) if reply.code() == Code::Ok => Ok(forwarded),
        Ok(Ok((_, Some(reply)))) => Err(reply.message),
        Ok(Ok((_, None))) => Err(format!("edge device {node} ended the connection")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "edge device {node} did not answer within {DIAL_TIMEOUT:?}"
        )),
    }
}

/// A UDP socket connected to `addr`.
async fn dial_udp(addr: SocketAddr) -> Result<UdpSocket, String> {
    let any: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await.map_err(|e| e.to_string())?;
    socket.connect(addr).await.map_err(|e| e.to_string())?;
    Ok(socket)
}

async fn record(cx: &Context, refusal: &Refusal) {
    let Some(reference) = &cx.device else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: REASON_CONNECTION_REFUSED.into(),
        note: Some(format!("refused a connection from the device: {refusal}")),
        action: "Connect".into(),
        secondary: None,
    };
    if let Err(e) = cx.events.publish(&event, reference).await {
        warn!(error = %e, "recording a refused connection");
    }
}

/// The Service `request` is for and the endpoints to try, if the device may
/// reach it.
pub fn route(
    services: &Services,
    network: &NetworkSettings,
    request: &ConnectRequest,
    node: &str,
    zone: Option<&str>,
) -> Result<Route, Refusal> {
    let protocol = request.protocol.to_ascii_uppercase();
    if protocol != "TCP" && protocol != "UDP" {
        return Err(Refusal::Protocol(request.protocol.clone()));
    }
    let udp = protocol == "UDP";
    let ip: IpAddr = request
        .address
        .parse()
        .map_err(|_| Refusal::Address(request.address.clone()))?;
    let port = u16::try_from(request.port).unwrap_or(0);
    let addr = SocketAddr::new(ip, port);
    // A ClusterIP first; else a headless Service's endpoint, on a port its
    // EndpointSlice says it serves (the device dialled it itself).
    let (service, headless) = match services.by_cluster_ip(ip) {
        Some(s) => (s, None),
        None => services
            .headless_with_endpoint(ip)
            .into_iter()
            .find_map(|s| {
                let found = headless_endpoint(&services.slices_of(&s), addr, &protocol);
                found.map(|t| (s, Some(t)))
            })
            .ok_or(Refusal::NotFound(addr))?,
    };
    let name = format!(
        "{}/{}",
        service.namespace().unwrap_or_default(),
        service.name_any()
    );
    if !crate::services::allowed(network, &service) {
        return Err(Refusal::Forbidden {
            service: name,
            addr,
        });
    }
    if let Some(target) = headless {
        // Only where the device dialled.
        return Ok(Route {
            service: name,
            udp,
            endpoints: vec![target],
        });
    }
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let Some(service_port) = ports
        .iter()
        .find(|p| p.port == i32::from(port) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
    else {
        return Err(Refusal::NotFound(addr));
    };
    let slices = services.slices_of(&service);
    let endpoints = choose(
        &service,
        service_port.name.as_deref(),
        &protocol,
        &slices,
        node,
        zone,
    );
    if endpoints.is_empty() {
        return Err(Refusal::NoEndpoint(name));
    }
    Ok(Route {
        service: name,
        udp,
        endpoints,
    })
}

/// The endpoint at `addr` in `slices`, if one of them lists it and serves
/// that port.
fn headless_endpoint(
    slices: &[Arc<EndpointSlice>],
    addr: SocketAddr,
    protocol: &str,
) -> Option<Target> {
    slices
        .iter()
        .filter(|slice| {
            slice.ports.iter().flatten().any(|p| {
                p.port == Some(i32::from(addr.port()))
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
        })
        .flat_map(|slice| slice.endpoints.iter().flatten())
        .find(|e| {
            e.addresses
                .iter()
                .any(|a| a.parse::<IpAddr>() == Ok(addr.ip()))
        })
        .map(|e| target_of(e, addr))
}

/// An endpoint at `addr`, with its Node and pod.
fn target_of(e: &Endpoint, addr: SocketAddr) -> Target {
    Target {
        addr,
        node: e.node_name.clone(),
        pod_uid: e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.uid.clone()),
    }
}

/// The endpoints of `service` serving its port named `port_name`, in the
/// order to try them: the ready ones (else the serving ones that are
/// terminating, as kube-proxy falls back to), the device's own pods first,
/// then those `trafficDistribution` prefers, each group rotated so
/// connections spread.
fn choose(
    service: &Service,
    port_name: Option<&str>,
    protocol: &str,
    slices: &[Arc<EndpointSlice>],
    node: &str,
    zone: Option<&str>,
) -> Vec<Target> {
    let port_name = port_name.unwrap_or_default();
    let mut ready: Vec<(&Endpoint, SocketAddr)> = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| {
                p.name.as_deref().unwrap_or_default() == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // Unset ready means ready; unset serving means as ready.
            let is_ready = conditions.ready.unwrap_or(true);
            let serving = conditions.serving.unwrap_or(is_ready);
            let group = if is_ready {
                &mut ready
            } else if serving && conditions.terminating.unwrap_or(false) {
                &mut terminating
            } else {
                continue;
            };
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    group.push((endpoint, SocketAddr::new(ip, target)));
                }
            }
        }
    }
    let pool = if ready.is_empty() { terminating } else { ready };
    let distribution = service
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref());
    let close = |e: &Endpoint| match distribution {
        Some("PreferSameNode") => {
            e.node_name.as_deref() == Some(node)
                || e.hints
                    .as_ref()
                    .and_then(|h| h.for_nodes.as_ref())
                    .is_some_and(|n| n.iter().any(|n| n.name == node))
        }
        Some("PreferClose" | "PreferSameZone") => zone.is_some_and(|zone| {
            e.zone.as_deref() == Some(zone)
                || e.hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .is_some_and(|z| z.iter().any(|z| z.name == zone))
        }),
        _ => false,
    };
    let (mut near, mut far): (Vec<_>, Vec<_>) = pool.into_iter().partition(|(e, _)| close(e));
    let turn = NEXT.fetch_add(1, Ordering::Relaxed);
    for group in [&mut near, &mut far] {
        if !group.is_empty() {
            let n = turn % group.len();
            group.rotate_left(n);
        }
    }
    // The device's own pods first: a connection to them never leaves it.
    let (own, others): (Vec<Target>, Vec<Target>) = near
        .into_iter()
        .chain(far)
        .map(|(e, addr)| target_of(e, addr))
        .partition(|t| t.node.as_deref() == Some(node));
    own.into_iter().chain(others).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(distribution: Option<&str>) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "shop", "name": "web" },
            "spec": {
                "clusterIP": "10.96.0.9",
                "ports": [{ "name": "http", "port": 80, "targetPort": "web" }],
                "trafficDistribution": distribution,
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn slice(endpoints: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": { "namespace": "shop", "name": "web-1", "labels": { "kubernetes.io/service-name": "web" } },
                "addressType": "IPv4",
                "ports": [{ "name": "metrics", "port": 9100 }, { "name": "http", "port": 8080 }],
                "endpoints": endpoints,
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn sorted(v: Vec<Target>) -> Vec<String> {
        let mut v: Vec<SocketAddr> = v.into_iter().map(|t| t.addr).collect();
        v.sort();
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_port_is_found_by_name_and_only_ready_endpoints_serve() {
        let slices = [slice(serde_json::json!([
            { "addresses": ["10.1.0.1"] },
            { "addresses": ["10.1.0.2"], "conditions": { "ready": true } },
            { "addresses": ["10.1.0.3"], "conditions": { "ready": false } },
            { "addresses": ["10.1.0.4"], "conditions": { "ready": false, "serving": true, "terminating": true } },
        ]))];
        let chosen = choose(&service(None), Some("http"), "TCP", &slices, "n", None);
        assert_eq!(sorted(chosen), ["10.1.0.1:8080", "10.1.0.2:8080"]);
        // No port of that name in the slice: nothing.
        assert!(choose(&service(None), Some("grpc"), "TCP", &slices, "n", None).is_empty());
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let slices = [slice(serde_json::json!([
            { "addresses": ["10.1.0.3"], "conditions": { "ready": false } },
            { "addresses": ["10.1.0.4"], "conditions": { "ready": false, "serving": true, "terminating": true } },
        ]))];
        let chosen = choose(&service(None), Some("http"), "TCP", &slices, "n", None);
        assert_eq!(sorted(chosen), ["10.1.0.4:8080"]);
    }

    #[test]
    fn connections_spread_over_endpoints() {
        let slices = [slice(serde_json::json!([
            { "addresses": ["10.1.0.1"] },
            { "addresses": ["10.1.0.2"] },
        ]))];
        let firsts: std::collections::BTreeSet<_> = (0..4)
            .map(|_| choose(&service(None), Some("http"), "TCP", &slices, "n", None)[0].addr)
            .collect();
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn the_devices_own_pods_come_first_with_their_uid() {
        let slices = [slice(serde_json::json!([
            { "addresses": ["10.1.0.1"], "nodeName": "cluster-1" },
            { "addresses": ["10.1.0.2"], "nodeName": "edge-1", "targetRef": { "kind": "Pod", "name": "p", "uid": "u-1" } },
            { "addresses": ["10.1.0.3"], "nodeName": "edge-2" },
        ]))];
        for _ in 0..3 {
            let chosen = choose(&service(None), Some("http"), "TCP", &slices, "edge-1", None);
            assert_eq!(chosen[0].addr.to_string(), "10.1.0.2:8080");
            assert_eq!(chosen[0].pod_uid.as_deref(), Some("u-1"));
            assert_eq!(chosen.len(), 3);
        }
    }

    #[test]
    fn traffic_distribution_puts_close_endpoints_first() {
        let slices = [slice(serde_json::json!([
            { "addresses": ["10.1.0.1"], "zone": "b" },
            { "addresses": ["10.1.0.2"], "zone": "a" },
            { "addresses": ["10.1.0.3"], "nodeName": "edge-1", "hints": { "forZones": [{ "name": "b" }] } },
        ]))];
        for _ in 0..3 {
            let near = choose(
                &service(Some("PreferClose")),
                Some("http"),
                "TCP",
                &slices,
                "edge-9",
                Some("a"),
            );
            assert_eq!(near[0].addr.to_string(), "10.1.0.2:8080");
            assert_eq!(near.len(), 3, "the others stay as fall-backs");
            let same_node = choose(
                &service(Some("PreferSameNode")),
                Some("http"),
                "TCP",
                &slices,
                "edge-1",
                None,
            );
            assert_eq!(same_node[0].addr.to_string(), "10.1.0.3:8080");
        }
    }

    #[test]
    fn a_headless_endpoint_is_found_on_the_ports_it_serves() {
        let slices = [slice(serde_json::json!([
            { "addresses": ["10.1.0.1"], "nodeName": "edge-1",
              "targetRef": { "kind": "Pod", "name": "db-0", "uid": "u-1" } },
        ]))];
        let at = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
        let found = headless_endpoint(&slices, at("10.1.0.1:8080"), "TCP");
        assert_eq!(
            found,
            Some(Target {
                addr: at("10.1.0.1:8080"),
                node: Some("edge-1".into()),
                pod_uid: Some("u-1".into()),
            })
        );
        // Not a port it serves, another protocol, another address: none.
        assert_eq!(headless_endpoint(&slices, at("10.1.0.1:80"), "TCP"), None);
        assert_eq!(headless_endpoint(&slices, at("10.1.0.1:8080"), "UDP"), None);
        assert_eq!(headless_endpoint(&slices, at("10.1.0.2:8080"), "TCP"), None);
    }
}
