//! aranya reaching a pod of this device for another device's connection to
//! a cluster Service (the pod is one of its endpoints): aranya sends a
//! ConnectRequest naming the pod and its address; we dial that address from
//! inside the pod's network, answer, then carry the TCP bytes (half-closes
//! included) or the UDP flow's datagrams. Dialled inside the pod's network,
//! an app that listens only on its pod address is reached as the cluster
//! would reach it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use connectivity::{Stream, StreamError};
use proto::api::{ConnectRequest, stream_reply::Code};

use super::{
    PodManager,
    reply::{Refusal, accept, refuse},
};

/// A UDP flow idle this long is over; longer than the asking device's own
/// limit, which normally ends it first.
const UDP_IDLE: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(mut stream: Stream, pods: Option<&Arc<PodManager>>) -> Result<(), StreamError> {
    let Some(request) = stream.recv_message::<ConnectRequest>().await? else {
        return Ok(());
    };
    let dialled = match dial(&request, pods).await {
        Ok(d) => d,
        Err(r) => return refuse(&mut stream, r).await,
    };
    accept(&mut stream).await?;
    match dialled {
        Dialled::Tcp(conn) => connectivity::splice::splice(stream, conn, super::LINGER).await,
        Dialled::Udp(socket) => connectivity::splice::datagrams(stream, socket, UDP_IDLE).await,
    }
}

enum Dialled {
    Tcp(tokio::net::TcpStream),
    Udp(tokio::net::UdpSocket),
}

async fn dial(
    request: &ConnectRequest,
    pods: Option<&Arc<PodManager>>,
) -> Result<Dialled, Refusal> {
    let bad = |what: String| Refusal::new(Code::BadRequest, what);
    let udp = match request.protocol.as_str() {
        "TCP" => false,
        "UDP" => true,
        other => return Err(bad(format!("protocol {other:?} is not relayed"))),
    };
    let ip = request
        .address
        .parse::<std::net::IpAddr>()
        .map_err(|_| bad(format!("{:?} is not an IP address", request.address)))?;
    let port = u16::try_from(request.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad(format!("invalid port {}", request.port)))?;
    let Some(pods) = pods else {
        return Err(Refusal::new(
            Code::Unavailable,
            "this device runs no container runtime (arhat config runtime.kind)",
        ));
    };
    // Only a pod's own address: aranya may not use the device to reach
    // anything else on its network.
    let pod_ip = pods
        .status(&request.pod_uid)
        .map(|s| s.pod_ip)
        .unwrap_or_default();
    if pod_ip != request.address {
        return Err(Refusal::new(
            Code::NotFound,
            format!(
                "{ip} is not the address of pod {} on this device",
                request.pod_uid
            ),
        ));
    }
    let id = pods.running_container(&request.pod_uid, None)?;
    let namespace = pods.runtime().network_namespace(&id).await?;
    let addr = SocketAddr::new(ip, port);
    let unavailable = |e: std::io::Error| {
        Refusal::new(
            Code::Unavailable,
            format!(
                "failed to connect to {addr} in pod {}: {e}",
                request.pod_uid
            ),
        )
    };
    if udp {
        crate::netns::udp(namespace, addr)
            .await
            .map(Dialled::Udp)
            .map_err(unavailable)
    } else {
        let conn = crate::netns::dial_host(namespace, ip.to_string(), port, CONNECT_TIMEOUT)
            .await
            .map_err(unavailable)?;
        let _ = conn.set_nodelay(true);
        Ok(Dialled::Tcp(conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{network::fake::FakeNetwork, runtime::fake::Fake};

    fn request(protocol: &str, address: &str, port: u32) -> ConnectRequest {
        ConnectRequest {
            protocol: protocol.into(),
            address: address.into(),
            port,
            pod_uid: "u1".into(),
        }
    }

    async fn refusal(request: &ConnectRequest, pods: &Arc<PodManager>) -> Code {
        match dial(request, Some(pods)).await {
            Ok(_) => panic!("{request:?} was dialled"),
            Err(r) => r.code,
        }
    }

    #[tokio::test]
    async fn only_a_pods_own_address_is_dialled() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pods = PodManager::new(
            Arc::new(Fake::default()),
            Arc::new(FakeNetwork::default()),
            "dev",
            "10.0.0.1".into(),
            dir.path().to_path_buf(),
            crate::runtime::LogRotation::default(),
            None,
        );
        // Not that pod's address (here: no such pod): nothing is dialled.
        assert_eq!(
            refusal(&request("TCP", "10.0.0.1", 22), &pods).await,
            Code::NotFound
        );
        assert_eq!(
            refusal(&request("SCTP", "10.0.0.1", 22), &pods).await,
            Code::BadRequest
        );
        assert_eq!(
            refusal(&request("UDP", "host", 53), &pods).await,
            Code::BadRequest
        );
        assert_eq!(
            refusal(&request("UDP", "10.0.0.1", 0), &pods).await,
            Code::BadRequest
        );
    }
}
