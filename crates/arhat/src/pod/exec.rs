//! `kubectl exec` and `attach` on the device: aranya sends an ExecRequest;
//! we check it and answer a StreamReply; then, once aranya says `start`,
//! the process runs with its input (ExecInput) and output (ExecOutput)
//! carried on the stream, the last message its exit.

use std::sync::Arc;

use connectivity::{Stream, StreamError, StreamReceiver, StreamSender};
use futures::StreamExt;
use proto::{
    api::{ExecInput, ExecRequest, stream_reply::Code},
    exec::{self, DeviceEvent},
};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{
    PodManager,
    reply::{Refusal, accept, refuse},
};
use crate::{
    config::HostConfig,
    runtime::{ExecSpec, LogOutput, Process, ProcessHandle, Runtime, TerminalSize},
};

/// What will run: a container's command or attach, or a host command.
enum Target {
    Container {
        runtime: Arc<dyn Runtime>,
        id: String,
    },
    Host,
}

pub async fn serve(
    mut stream: Stream,
    pods: Option<&Arc<PodManager>>,
    host: &HostConfig,
) -> Result<(), StreamError> {
    let Some(request) = stream.recv_message::<ExecRequest>().await? else {
        return Ok(());
    };
    debug!(pod = %request.pod_uid, container = %request.container, host = request.host,
        attach = request.attach, tty = request.tty, "exec requested");
    let target = match target(&request, pods, host) {
        Ok(t) => t,
        Err(r) => return refuse(&mut stream, r).await,
    };
    accept(&mut stream).await?;
    let (mut tx, mut rx) = stream.split();
    let mut device = exec::Device::default();
    let size = loop {
        match device.receive(rx.recv_message::<ExecInput>().await?) {
            Some(DeviceEvent::Start { size }) => break size,
            // A size held for the start.
            None => {}
            // The client never got ready.
            Some(_) => return Ok(()),
        }
    };
    let spec = ExecSpec {
        command: request.command.clone(),
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
        tty: request.tty,
        size: size.as_ref().map(TerminalSize::from),
    };
    let started = match &target {
        Target::Container { runtime, id } if request.attach => runtime.attach(id, &spec).await,
        Target::Container { runtime, id } => runtime.exec(id, &spec).await,
        // kubectl cp: answered without a tar binary on the host.
        Target::Host if request.attach => crate::host::exec::spawn(&ExecSpec {
            command: Vec::new(),
            ..spec.clone()
        }),
        Target::Host => match crate::host::tar::parse(&spec.command) {
            Some(tar) => Ok(crate::host::tar::spawn(tar)),
            None => crate::host::exec::spawn(&spec),
        },
    };
    match started {
        Ok(process) => run(process, device, tx, rx).await,
        Err(e) => {
            tx.send_message(&exec::exit(Err(e.to_string()))).await?;
            tx.finish();
            Ok(())
        }
    }
}

fn target(
    request: &ExecRequest,
    pods: Option<&Arc<PodManager>>,
    host: &HostConfig,
) -> Result<Target, Refusal> {
    if request.host {
        let (allowed, key) = if request.attach {
            (host.allow_attach, "host.allowAttach")
        } else {
            (host.allow_exec, "host.allowExec")
        };
        if !allowed {
            let verb = if request.attach { "attach" } else { "exec" };
            return Err(Refusal::new(
                Code::Forbidden,
                format!(
                    "{verb} on the device host is disabled: set `{key}: true` in arhat's config"
                ),
            ));
        }
        return Ok(Target::Host);
    }
    let Some(pods) = pods else {
        return Err(Refusal::new(
            Code::Unavailable,
            "this device runs no container runtime (arhat config runtime.kind)",
        ));
    };
    let id = pods.running_container(&request.pod_uid, Some(&request.container))?;
    Ok(Target::Container {
        runtime: pods.runtime().clone(),
        id,
    })
}

/// Carries the process's I/O until it exits or aranya goes away.
async fn run(
    process: Process,
    device: exec::Device,
    mut tx: StreamSender,
    rx: StreamReceiver,
) -> Result<(), StreamError> {
    let Process {
        stdin,
        output: mut out,
        handle,
    } = process;
    let mut input = tokio::spawn(feed(device, rx, stdin, handle.clone()));
    let mut fed = false;
    loop {
        tokio::select! {
            item = out.next() => match item {
                Some(Ok((which, data))) => {
                    for message in exec::output(which == LogOutput::Stderr, &data) {
                        if let Err(e) = tx.send_message(&message).await {
                            let _ = handle.kill().await;
                            input.abort();
                            return Err(e);
                        }
                    }
                }
                Some(Err(e)) => {
                    debug!(error = %e, "exec output failed");
                    break;
                }
                None => break,
            },
            // aranya went away (the client left): end the process.
            result = &mut input, if !fed => {
                fed = true;
                if !matches!(result, Ok(Ok(()))) {
                    let _ = handle.kill().await;
                    return Ok(());
                }
            }
        }
    }
    let exit = handle.exit_code().await.map_err(|e| e.to_string());
    tx.send_message(&exec::exit(exit)).await?;
    tx.finish();
    // Hold the stream until aranya ends its side: dropping it sooner would
    // reset it, and a reset discards what is still in flight (the exit).
    if !fed {
        let _ = tokio::time::timeout(super::LINGER, &mut input).await;
    }
    input.abort();
    Ok(())
}

/// aranya's input to the process. Ok when aranya finished its side; Err
/// when the stream was reset.
async fn feed(
    mut device: exec::Device,
    mut rx: StreamReceiver,
    mut stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    handle: Arc<dyn ProcessHandle>,
) -> Result<(), StreamError> {
    loop {
        let message = rx.recv_message::<ExecInput>().await?;
        match device.receive(message) {
            Some(DeviceEvent::Stdin(data)) => {
                if let Some(s) = &mut stdin
                    && s.write_all(&data).await.is_err()
                {
                    // The process closed its stdin: drop the rest.
                    stdin = None;
                }
            }
            Some(DeviceEvent::StdinClosed) => {
                if let Some(mut s) = stdin.take() {
                    let _ = s.shutdown().await;
                }
            }
            Some(DeviceEvent::Resize(size)) => {
                let size = TerminalSize::from(&size);
                if let Err(e) = handle.resize(size.width, size.height).await {
                    debug!(error = %e, "resize failed");
                }
            }
            Some(DeviceEvent::InputEnded | DeviceEvent::Abandoned) => {
                if let Some(mut s) = stdin.take() {
                    let _ = s.shutdown().await;
                }
                // aranya finished its side: nothing more will come.
                return Ok(());
            }
            Some(DeviceEvent::Start { .. }) | None => {}
        }
    }
}
