//! `POST /portForward/{ns}/{pod}`: upgraded to SPDY; each connection the
//! client forwards becomes a session stream to the device, which dials the
//! port inside the pod's network namespace.

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
    let protocol = upgrade::protocol(&request, negotiate::PORTFORWARD)?;
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
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return debug!(error = %e, "port-forward upgrade failed"),
            };
            let (mut forwards, spdy) = streaming::portforward::serve_spdy(TokioIo::new(upgraded));
            while let Some(forward) = forwards.recv().await {
                tokio::spawn(one(forward, session.clone(), target.clone()).in_current_span());
            }
            drop(spdy);
        }
        .in_current_span(),
    );
    Ok(upgrade::switching(protocol))
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
        while let Some(Ok(data)) = forward.from_client.recv().await {
            if tx.send(data).await.is_err() {
                break;
            }
        }
        tx.finish();
        // The connection lasts until the pod's side ends.
        std::future::pending::<()>().await;
    };
    let down = async {
        while let Ok(Some(data)) = rx.recv_bytes().await {
            if forward.to_client.write(data).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    forward.close().await;
}
