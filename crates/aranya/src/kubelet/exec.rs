//! `POST /exec/{ns}/{pod}/{container}` (and `/run`), `/attach/...`: the
//! device checks the request first (so a refusal is a plain HTTP error),
//! then the connection upgrades to SPDY and the client's channels are
//! bridged to the device's process over the session layer.

use connectivity::Stream;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::api::{
    ExecInput, ExecOutput, ExecRequest, Open, TerminalSize, exec_input, exec_output, open::Kind,
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

fn input(kind: exec_input::Kind) -> ExecInput {
    ExecInput { kind: Some(kind) }
}

fn resize_to(s: streaming::TerminalSize) -> exec_input::Kind {
    exec_input::Kind::Resize(TerminalSize {
        width: u32::from(s.width),
        height: u32::from(s.height),
    })
}

/// How long a terminal session waits for the client's size before its
/// process starts anyway.
const FIRST_SIZE: std::time::Duration = std::time::Duration::from_secs(1);

/// Carries the client's channels to the device's process and back.
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
    let to_device = tokio::spawn(async move {
        let (mut stdin, mut resize) = (stdin, resize);
        // kubectl sends the terminal's size on its own channel, which can
        // trail the first keystrokes: the process starts at that size, or a
        // shell's first `stty size` would read 0 0.
        if tty && resize.is_some() {
            match tokio::time::timeout(FIRST_SIZE, next(&mut resize)).await {
                Ok(Some(s)) => tx.send_message(&input(resize_to(s))).await?,
                Ok(None) => resize = None,
                Err(_) => debug!("no terminal size before the start"),
            }
        }
        tx.send_message(&input(exec_input::Kind::Start(true)))
            .await?;
        loop {
            let message = tokio::select! {
                data = next(&mut stdin), if stdin.is_some() => match data {
                    Some(data) => exec_input::Kind::Stdin(data),
                    None => {
                        stdin = None;
                        exec_input::Kind::StdinClosed(true)
                    }
                },
                size = next(&mut resize), if resize.is_some() => match size {
                    Some(s) => resize_to(s),
                    None => {
                        resize = None;
                        continue;
                    }
                },
                // Nothing more to send; the stream stays open for the output.
                else => std::future::pending().await,
            };
            tx.send_message(&input(message)).await?;
        }
        #[allow(unreachable_code)]
        Ok::<_, connectivity::StreamError>(())
    });
    let from_device = async {
        loop {
            let message = match rx.recv_message::<ExecOutput>().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Outcome::Failed(
                        "the edge device ended the session without an exit status".into(),
                    );
                }
                Err(e) => return Outcome::Failed(format!("edge device: {e}")),
            };
            match message.kind {
                Some(exec_output::Kind::Stdout(data)) => {
                    if let Some(out) = &stdout {
                        let _ = out.send(data).await;
                    }
                }
                Some(exec_output::Kind::Stderr(data)) => {
                    if let Some(err) = stderr.as_ref().or(stdout.as_ref()) {
                        let _ = err.send(data).await;
                    }
                }
                Some(exec_output::Kind::Exit(exit)) if !exit.error.is_empty() => {
                    return Outcome::Failed(exit.error);
                }
                Some(exec_output::Kind::Exit(exit)) => return Outcome::Exited(exit.code),
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
