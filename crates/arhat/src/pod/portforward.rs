//! `kubectl port-forward` on the device: aranya sends a PortForwardRequest
//! per forwarded connection; we dial the port inside the pod's network
//! namespace (or on the host's loopback), answer a StreamReply, then carry
//! the connection's bytes both ways, half-closes included.

use std::sync::Arc;

use connectivity::{Stream, StreamError};
use proto::api::{PortForwardRequest, stream_reply::Code};

use super::{
    PodManager,
    reply::{Refusal, accept, refuse},
};
use crate::config::HostConfig;

pub async fn serve(
    mut stream: Stream,
    pods: Option<&Arc<PodManager>>,
    host: &HostConfig,
) -> Result<(), StreamError> {
    let Some(request) = stream.recv_message::<PortForwardRequest>().await? else {
        return Ok(());
    };
    let connected = match dial(&request, pods, host).await {
        Ok(c) => c,
        Err(r) => return refuse(&mut stream, r).await,
    };
    accept(&mut stream).await?;
    connectivity::splice::splice(stream, connected, super::LINGER).await
}

async fn dial(
    request: &PortForwardRequest,
    pods: Option<&Arc<PodManager>>,
    host: &HostConfig,
) -> Result<tokio::net::TcpStream, Refusal> {
    let port = u16::try_from(request.port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Refusal::new(Code::BadRequest, format!("invalid port {}", request.port)))?;
    let refused = |e: std::io::Error, where_: &str| {
        Refusal::new(
            Code::Unavailable,
            format!("failed to connect to localhost:{port} {where_}: {e}"),
        )
    };
    if request.host {
        if !host.allow_port_forward {
            return Err(Refusal::new(
                Code::Forbidden,
                "port-forward to the device host is disabled: set `host.allowPortForward: true` in arhat's config",
            ));
        }
        return tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| refused(e, "on the device host"));
    }
    let Some(pods) = pods else {
        return Err(Refusal::new(
            Code::Unavailable,
            "this device runs no container runtime (arhat config runtime.kind)",
        ));
    };
    let id = pods.running_container(&request.pod_uid, None)?;
    let namespace = pods.runtime().network_namespace(&id).await?;
    crate::netns::dial(namespace.clone(), port)
        .await
        .map_err(|e| refused(e, &format!("inside namespace {}", namespace.display())))
}
