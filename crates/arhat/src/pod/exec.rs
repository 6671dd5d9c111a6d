//! `kubectl exec` and `attach` on the device: aranya sends an ExecRequest;
//! we check it and answer a StreamReply; then, once aranya says `start`,
//! the process runs with its input (ExecInput) and output (ExecOutput)
//! carried on the stream, the last message its exit.

use std::sync::Arc;

use bytes::Bytes;
use connectivity::{Stream, StreamError, StreamReceiver, StreamSender};
use futures::StreamExt;
use proto::api::{
    ExecInput, ExecOutput, ExecRequest, ExitStatus, TerminalSize, exec_input, exec_output,
    stream_reply::Code,
};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{
    PodManager,
    reply::{Refusal, accept, refuse},
};
use crate::{
    config::HostConfig,
    runtime::{ExecSpec, LogOutput, Process, ProcessHandle, Runtime},
};

/// Largest output message: a few session frames.
const CHUNK: usize = 32 * 1024;

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
    // A terminal's size may come before the start; it is set before any
    // input reaches the process.
    let mut size = None;
    loop {
        match rx.recv_message::<ExecInput>().await?.and_then(|m| m.kind) {
            Some(exec_input::Kind::Start(_)) => break,
            Some(exec_input::Kind::Resize(s)) => size = Some(s),
            // The client never got ready.
            _ => return Ok(()),
        }
    }
    let spec = ExecSpec {
        command: request.command.clone(),
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
        tty: request.tty,
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
    let process = match started {
        Ok(p) => {
            if let Some(size) = size {
                resize(p.handle.as_ref(), size).await;
            }
            p
        }
        Err(e) => {
            let exit = ExitStatus {
                code: 0,
                error: e.to_string(),
            };
            tx.send_message(&output(exec_output::Kind::Exit(exit)))
                .await?;
            tx.finish();
            return Ok(());
        }
    };
    run(process, tx, rx).await
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

fn output(kind: exec_output::Kind) -> ExecOutput {
    ExecOutput { kind: Some(kind) }
}

/// Carries the process's I/O until it exits or aranya goes away.
async fn run(
    process: Process,
    mut tx: StreamSender,
    rx: StreamReceiver,
) -> Result<(), StreamError> {
    let Process {
        stdin,
        output: mut out,
        handle,
    } = process;
    let mut input = tokio::spawn(feed(rx, stdin, handle.clone()));
    let mut fed = false;
    loop {
        tokio::select! {
            item = out.next() => match item {
                Some(Ok((which, data))) => {
                    for chunk in data.chunks(CHUNK) {
                        let chunk = Bytes::copy_from_slice(chunk);
                        let kind = match which {
                            LogOutput::Stdout => exec_output::Kind::Stdout(chunk),
                            LogOutput::Stderr => exec_output::Kind::Stderr(chunk),
                        };
                        if let Err(e) = tx.send_message(&output(kind)).await {
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
    let exit = match handle.exit_code().await {
        Ok(code) => ExitStatus {
            code,
            error: String::new(),
        },
        Err(e) => ExitStatus {
            code: 0,
            error: e.to_string(),
        },
    };
    tx.send_message(&output(exec_output::Kind::Exit(exit)))
        .await?;
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
    mut rx: StreamReceiver,
    mut stdin: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    handle: Arc<dyn ProcessHandle>,
) -> Result<(), StreamError> {
    loop {
        let Some(message) = rx.recv_message::<ExecInput>().await? else {
            if let Some(mut s) = stdin.take() {
                let _ = s.shutdown().await;
            }
            // aranya finished its side: nothing more will come.
            return Ok(());
        };
        match message.kind {
            Some(exec_input::Kind::Stdin(data)) => {
                if let Some(s) = &mut stdin
                    && s.write_all(&data).await.is_err()
                {
                    // The process closed its stdin: drop the rest.
                    stdin = None;
                }
            }
            Some(exec_input::Kind::StdinClosed(_)) => {
                if let Some(mut s) = stdin.take() {
                    let _ = s.shutdown().await;
                }
            }
            Some(exec_input::Kind::Resize(size)) => resize(handle.as_ref(), size).await,
            Some(exec_input::Kind::Start(_)) | None => {}
        }
    }
}

async fn resize(handle: &dyn ProcessHandle, size: TerminalSize) {
    let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    if let Err(e) = handle.resize(clamp(size.width), clamp(size.height)).await {
        debug!(error = %e, "resize failed");
    }
}
