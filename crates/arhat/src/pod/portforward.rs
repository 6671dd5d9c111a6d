//! `kubectl port-forward` on the device: aranya sends a PortForwardRequest
//! per forwarded connection; we dial the port inside the pod's network
//! namespace (or on the host's loopback), answer a StreamReply, then carry
//! the connection's bytes both ways, half-closes included.

use std::sync::Arc;

use connectivity::{Stream, StreamError, StreamReceiver, StreamSender};
use proto::api::{PortForwardRequest, stream_reply::Code};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};
use tracing::debug;

use super::{
    PodManager,
    reply::{Refusal, accept, refuse},
};
use crate::config::HostConfig;

const READ_CHUNK: usize = 32 * 1024;

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
    let (tx, rx) = stream.split();
    let (read, write) = connected.into_split();
    let mut up = tokio::spawn(to_pod(rx, write));
    let down = from_pod(read, tx);
    tokio::pin!(down);
    tokio::select! {
        result = &mut down => {
            // Hold the stream until aranya ends its side: dropping it sooner
            // would reset it, and a reset discards bytes still in flight.
            let _ = tokio::time::timeout(super::LINGER, up).await;
            result
        }
        ended = &mut up => match ended {
            // aranya half-closed: the pod may still answer.
            Ok(Ok(())) => down.await,
            // Reset (the client went away) or the session ended: drop the
            // pod's connection now rather than when the pod next writes.
            _ => Ok(()),
        },
    }
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

/// aranya's bytes to the pod; its finish half-closes toward the pod.
async fn to_pod(mut rx: StreamReceiver, mut write: OwnedWriteHalf) -> Result<(), StreamError> {
    while let Some(data) = rx.recv_bytes().await? {
        if write.write_all(&data).await.is_err() {
            break;
        }
    }
    let _ = write.shutdown().await;
    Ok(())
}

async fn from_pod(mut read: OwnedReadHalf, mut tx: StreamSender) -> Result<(), StreamError> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match read.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => tx.send(bytes::Bytes::copy_from_slice(&buf[..n])).await?,
            Err(e) => {
                debug!(error = %e, "port-forward connection failed");
                break;
            }
        }
    }
    tx.finish();
    Ok(())
}
