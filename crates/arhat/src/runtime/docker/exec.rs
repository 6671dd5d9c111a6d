//! exec, attach and network namespaces through Docker's Engine API.

use std::{path::PathBuf, time::Duration};

use bollard::{
    Docker as Client,
    container::LogOutput as DockerOutput,
    exec::{ResizeExecOptions, StartExecOptions, StartExecResults},
    models::ExecConfig,
    query_parameters::{AttachContainerOptions, ResizeContainerTTYOptions},
};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use tracing::debug;

use super::not_found_or;
use crate::runtime::{ExecSpec, LogOutput, Process, ProcessHandle, RuntimeError, TerminalSize};

fn output(
    item: Result<DockerOutput, bollard::errors::Error>,
) -> Result<(LogOutput, bytes::Bytes), RuntimeError> {
    match item {
        Ok(DockerOutput::StdErr { message }) => Ok((LogOutput::Stderr, message)),
        Ok(
            DockerOutput::StdOut { message }
            | DockerOutput::Console { message }
            | DockerOutput::StdIn { message },
        ) => Ok((LogOutput::Stdout, message)),
        Err(e) => Err(RuntimeError::failed("reading exec output", e)),
    }
}

pub async fn exec(client: &Client, id: &str, spec: &ExecSpec) -> Result<Process, RuntimeError> {
    let size = spec.size.filter(|_| spec.tty);
    let created = client
        .create_exec(
            id,
            ExecConfig {
                attach_stdin: Some(spec.stdin),
                attach_stdout: Some(spec.stdout),
                attach_stderr: Some(spec.stderr && !spec.tty),
                tty: Some(spec.tty),
                cmd: Some(spec.command.clone()),
                console_size: size.map(|s| vec![usize::from(s.height), usize::from(s.width)]),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| not_found_or("creating exec", id, e))?;
    let started = client
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: spec.tty,
                output_capacity: None,
            }),
        )
        .await
        .map_err(|e| not_found_or("starting exec", id, e))?;
    let StartExecResults::Attached { output: out, input } = started else {
        return Err(RuntimeError::failed(
            "starting exec",
            "docker started it detached",
        ));
    };
    let handle = DockerExec {
        client: client.clone(),
        exec_id: created.id,
    };
    // Before API 1.42 (Docker 23) the daemon ignores ConsoleSize and refuses
    // a resize until the process runs: resize as soon as it takes one. A
    // process that reads its size at once may still see 0x0 there.
    let version = client.client_version();
    if let Some(size) = size
        && (version.major_version, version.minor_version) < CONSOLE_SIZE_SINCE
    {
        handle.resize_once_running(size).await;
    }
    Ok(Process {
        stdin: spec.stdin.then_some(input),
        output: out.map(output).boxed(),
        handle: std::sync::Arc::new(handle),
    })
}

/// The API version (major, minor) from which exec creation takes the
/// terminal's size.
const CONSOLE_SIZE_SINCE: (usize, usize) = (1, 42);

struct DockerExec {
    client: Client,
    exec_id: String,
}

impl DockerExec {
    async fn resize_once_running(&self, size: TerminalSize) {
        for _ in 0..50 {
            match self
                .client
                .resize_exec(
                    &self.exec_id,
                    ResizeExecOptions {
                        height: size.height,
                        width: size.width,
                    },
                )
                .await
            {
                Ok(()) => return,
                // It already ended.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        debug!(exec = %self.exec_id, "the exec took no terminal size");
    }
}

impl ProcessHandle for DockerExec {
    fn resize(&self, width: u16, height: u16) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            self.client
                .resize_exec(&self.exec_id, ResizeExecOptions { height, width })
                .await
                .map_err(|e| RuntimeError::failed("resizing exec", e))
        }
        .boxed()
    }

    fn exit_code(&self) -> BoxFuture<'_, Result<i32, RuntimeError>> {
        async move {
            // Output ends a moment before Docker records the exit.
            for _ in 0..100 {
                let inspected = self
                    .client
                    .inspect_exec(&self.exec_id)
                    .await
                    .map_err(|e| RuntimeError::failed("inspecting exec", e))?;
                if inspected.running != Some(true)
                    && let Some(code) = inspected.exit_code
                {
                    return Ok(i32::try_from(code).unwrap_or(i32::MAX));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(RuntimeError::failed(
                "inspecting exec",
                "still running after its output ended",
            ))
        }
        .boxed()
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            // Docker keeps an exec running when its connection goes; its
            // pid is in the host's pid namespace, where the agent runs.
            let inspected = self.client.inspect_exec(&self.exec_id).await;
            if let Ok(e) = inspected
                && e.running == Some(true)
                && let Some(pid) = e
                    .pid
                    .and_then(|p| i32::try_from(p).ok())
                    .and_then(rustix::process::Pid::from_raw)
            {
                rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                    .map_err(|e| RuntimeError::failed("killing exec", e))?;
            }
            Ok(())
        }
        .boxed()
    }
}

pub async fn attach(client: &Client, id: &str, spec: &ExecSpec) -> Result<Process, RuntimeError> {
    let attached = client
        .attach_container(
            id,
            Some(AttachContainerOptions {
                stdin: spec.stdin,
                stdout: spec.stdout,
                stderr: spec.stderr,
                stream: true,
                logs: false,
                detach_keys: None,
            }),
        )
        .await
        .map_err(|e| not_found_or("attaching", id, e))?;
    let handle = DockerAttach {
        client: client.clone(),
        id: id.to_string(),
    };
    // The container's process already runs: its terminal takes a size now.
    if let Some(size) = spec.size.filter(|_| spec.tty) {
        handle.resize(size.width, size.height).await?;
    }
    Ok(Process {
        stdin: spec.stdin.then_some(attached.input),
        output: attached.output.map(output).boxed(),
        handle: std::sync::Arc::new(handle),
    })
}

struct DockerAttach {
    client: Client,
    id: String,
}

impl ProcessHandle for DockerAttach {
    fn resize(&self, width: u16, height: u16) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            self.client
                .resize_container_tty(
                    &self.id,
                    ResizeContainerTTYOptions {
                        h: i32::from(height),
                        w: i32::from(width),
                    },
                )
                .await
                .map_err(|e| RuntimeError::failed("resizing the container's terminal", e))
        }
        .boxed()
    }

    fn exit_code(&self) -> BoxFuture<'_, Result<i32, RuntimeError>> {
        async { Ok(0) }.boxed()
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async { Ok(()) }.boxed()
    }
}

pub async fn network_namespace(client: &Client, id: &str) -> Result<PathBuf, RuntimeError> {
    let inspected = client
        .inspect_container(id, None)
        .await
        .map_err(|e| not_found_or("inspecting", id, e))?;
    let pid = inspected
        .state
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            RuntimeError::failed(
                "finding the network namespace",
                format!("container {id} is not running"),
            )
        })?;
    Ok(PathBuf::from(format!("/proc/{pid}/ns/net")))
}
