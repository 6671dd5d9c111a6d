//! `POST /exec/{ns}/{pod}/{container}` (and `/run`), `/attach/...`: the
//! device checks the request first (so a refusal is a plain HTTP error),
//! then the connection upgrades to SPDY and the client's channels are
//! bridged to the device's process over the session layer.

use connectivity::Stream;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::{
    api::{ExecOutput, ExecRequest, Open, open::Kind},
    exec::{self, ClientEvent, Ending},
};
use streaming::{ExecIo, ExecOptions, Outcome, negotiate};
use tokio::sync::mpsc;
use tracing::{Instrument, debug};

use super::{Body, Problem, server::NodeEndpoint, upgrade};

pub async fn serve(
    endpoint: &NodeEndpoint,
    mut request: Request<Incoming>,
    namespace: &str,
    pod_name: &str,
    container: &str,
    attach: bool,
) -> Result<Response<Body>, Problem> {
    let options =
        ExecOptions::from_query(request.uri().query(), !attach).map_err(Problem::bad_request)?;
    // WebSocket clients the apiserver passes through (v4, base64), or SPDY.
    let websocket = if upgrade::is_websocket(&request) {
        Some(upgrade::websocket_protocol(
            &request,
            streaming::websocket::REMOTECOMMAND,
        )?)
    } else {
        None
    };
    let protocol = match &websocket {
        Some(ws) => ws.protocol,
        None => upgrade::protocol(&request, negotiate::REMOTECOMMAND)?,
    };
    let pod = endpoint.pod(namespace, pod_name).await?;
    let host = endpoint.is_host_pod(&pod);
    endpoint.container(&pod, container)?;
    let exec = ExecRequest {
        pod_uid: endpoint.device_uid(&pod),
        container: container.to_string(),
        host,
        command: options.command.clone(),
        attach,
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr,
        tty: options.tty,
    };
    let header = Open {
        kind: Some(Kind::Exec(proto::api::Exec {})),
    };
    let stream = upgrade::ask_device(endpoint, &header, &exec, false).await?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let ws = websocket.is_some();
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return debug!(error = %e, "exec upgrade failed"),
            };
            let io = TokioIo::new(upgraded);
            if ws {
                let io = streaming::websocket::serve_exec(io, protocol, &options).await;
                return bridge(io, stream).await;
            }
            match streaming::remotecommand::serve_spdy(io, protocol, &options).await {
                Ok(io) => bridge(io, stream).await,
                Err(e) => debug!(error = %e, "exec session not set up"),
            }
        }
        .in_current_span(),
    );
    Ok(match &websocket {
        Some(ws) => ws.switching(),
        None => upgrade::switching(protocol),
    })
}

async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Carries the client's channels to the device's process and back, in the
/// sequence [`proto::exec`] defines.
async fn bridge(io: ExecIo, stream: Stream) {
    let ExecIo {
        tty,
        stdin,
        stdout,
        stderr,
        resize,
        gone,
        done,
    } = io;
    let (mut tx, mut rx) = stream.split();
    let (client, first) = exec::Client::new(tty && resize.is_some());
    let to_device = tokio::spawn(async move {
        let (mut client, mut stdin, mut resize) = (client, stdin, resize);
        if let Some(start) = first {
            tx.send_message(&start).await?;
        }
        let size_wait = tokio::time::sleep(exec::FIRST_SIZE);
        tokio::pin!(size_wait);
        loop {
            let messages = tokio::select! {
                () = &mut size_wait, if !client.started() => {
                    debug!("no terminal size before the start");
                    client.size_wait_over().into_iter().collect()
                }
                size = next(&mut resize), if resize.is_some() => match size {
                    Some(s) => client.resize(s.width, s.height),
                    None => {
                        resize = None;
                        client.size_wait_over().into_iter().collect()
                    }
                },
                data = next(&mut stdin), if stdin.is_some() && client.started() => match data {
                    Some(data) => vec![client.stdin(data)],
                    None => {
                        stdin = None;
                        vec![client.stdin_closed()]
                    }
                },
                // Nothing more to send; the stream stays open for the output.
                else => std::future::pending().await,
            };
            for message in messages {
                tx.send_message(&message).await?;
            }
        }
        #[allow(unreachable_code)]
        Ok::<_, connectivity::StreamError>(())
    });
    let from_device = async {
        let mut receiver = exec::ClientReceiver::default();
        loop {
            let received = match rx.recv_message::<ExecOutput>().await {
                Ok(m) => m,
                Err(e) => return Outcome::Failed(format!("edge device: {e}")),
            };
            match receiver.receive(received) {
                Some(ClientEvent::Stdout(data)) => {
                    if let Some(out) = &stdout {
                        let _ = out.send(data).await;
                    }
                }
                Some(ClientEvent::Stderr(data)) => {
                    if let Some(err) = stderr.as_ref().or(stdout.as_ref()) {
                        let _ = err.send(data).await;
                    }
                }
                Some(ClientEvent::Ended(Ending::Exited(code))) => return Outcome::Exited(code),
                Some(ClientEvent::Ended(Ending::Failed(why))) => return Outcome::Failed(why),
                None => {}
            }
        }
    };
    let outcome = tokio::select! {
        outcome = from_device => Some(outcome),
        // The client left: dropping both halves resets the device's stream,
        // which ends its process.
        _ = gone.cancelled() => None,
    };
    to_device.abort();
    drop(rx);
    if let Some(outcome) = outcome {
        drop(stdout);
        drop(stderr);
        done.report(outcome);
    }
}
