//! `/portForward/{ns}/{pod}`: upgraded to SPDY (POST), to SPDY tunnelled in
//! a WebSocket (kubectl), or to WebSocket channels, one connection per
//! `port` query parameter (GET, other clients). Each forwarded connection
//! becomes a session stream to the device, which dials the port inside the
//! pod's network namespace.

use connectivity::SessionHandle;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::api::{Open, PortForwardRequest, StreamReply, open::Kind, stream_reply::Code};
use streaming::{Forward, negotiate};
use tracing::{Instrument, debug};

use super::{Body, Problem, server::NodeEndpoint, upgrade};

pub async fn serve(
    endpoint: &NodeEndpoint,
    mut request: Request<Incoming>,
    namespace: &str,
    pod_name: &str,
) -> Result<Response<Body>, Problem> {
    let websocket = if upgrade::is_websocket(&request) {
        Some(upgrade::websocket_protocol(
            &request,
            streaming::websocket::PORTFORWARD,
        )?)
    } else {
        upgrade::protocol(&request, negotiate::PORTFORWARD)?;
        None
    };
    // Channel port-forwards name their ports up front.
    let ports = match &websocket {
        Some(ws) if ws.protocol != streaming::websocket::TUNNEL => {
            streaming::websocket::ports_from_query(request.uri().query())
                .map_err(Problem::bad_request)?
        }
        _ => Vec::new(),
    };
    let pod = endpoint.pod(namespace, pod_name).await?;
    let host = endpoint.is_host_pod(&pod);
    let session = endpoint.session()?;
    let target = Target {
        uid: endpoint.device_uid(&pod),
        host,
        pod: format!("{namespace}/{pod_name}"),
        node: endpoint.node.clone(),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let protocol = websocket.as_ref().map(|ws| ws.protocol);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return debug!(error = %e, "port-forward upgrade failed"),
            };
            let io = TokioIo::new(upgraded);
            let (mut forwards, spdy) = match protocol {
                None => {
                    let (forwards, spdy) = streaming::portforward::serve_spdy(io);
                    (forwards, Some(spdy))
                }
                Some(streaming::websocket::TUNNEL) => {
                    let bytes = streaming::tunnel::bytes_of(io).await;
                    let (forwards, spdy) = streaming::portforward::serve_spdy(bytes);
                    (forwards, Some(spdy))
                }
                Some(protocol) => (
                    streaming::websocket::serve_portforward(io, protocol, &ports).await,
                    None,
                ),
            };
            while let Some(forward) = forwards.recv().await {
                tokio::spawn(one(forward, session.clone(), target.clone()).in_current_span());
            }
            drop(spdy);
        }
        .in_current_span(),
    );
    Ok(match &websocket {
        Some(ws) => ws.switching(),
        None => upgrade::switching(negotiate::PORTFORWARD[0]),
    })
}

#[derive(Debug, Clone)]
struct Target {
    uid: String,
    host: bool,
    pod: String,
    node: String,
}

/// One forwarded connection, end to end.
async fn one(mut forward: Forward, session: SessionHandle, target: Target) {
    let port = forward.port;
    let fail = |message: String| {
        format!(
            "error forwarding port {port} to pod {}, uid {}: {message}",
            target.pod, target.uid
        )
    };
    let header = Open {
        kind: Some(Kind::PortForward(proto::api::PortForward {})),
    };
    let opened = async {
        let mut stream = session.open(&header).await?;
        stream
            .send_message(&PortForwardRequest {
                pod_uid: target.uid.clone(),
                host: target.host,
                port: u32::from(port),
            })
            .await?;
        let reply = stream.recv_message::<StreamReply>().await?;
        Ok::<_, connectivity::StreamError>((stream, reply))
    };
    let stream = match opened.await {
        Ok((stream, Some(reply))) if reply.code() == Code::Ok => stream,
        Ok((_, Some(reply))) => return forward.fail(fail(reply.message)).await,
        Ok((_, None)) => {
            return forward
                .fail(fail("the edge device closed the stream".into()))
                .await;
        }
        Err(e) => {
            return forward
                .fail(fail(format!("edge device {}: {e}", target.node)))
                .await;
        }
    };
    let (mut tx, mut rx) = stream.split();
    let up = async {
        loop {
            match forward.from_client.recv().await {
                Ok(Some(data)) => {
                    if tx.send(data).await.is_err() {
                        return;
                    }
                }
                // Half-closed: so is the pod's side, which may still answer.
                Ok(None) => break,
                // Gone: the stream is dropped (reset) below, not finished,
                // or a pod that ignores half-closes would keep it open.
                Err(_) => return,
            }
        }
        tx.finish();
        std::future::pending::<()>().await;
    };
    let down = async {
        while let Ok(Some(data)) = rx.recv_bytes().await {
            if forward.to_client.write(data).await.is_err() {
                break;
            }
        }
    };
    // A client that goes away ends the connection to the pod too (dropping
    // the stream resets it), even one that is idle.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        () = forward.to_client.closed() => {}
    }
    forward.close().await;
}
