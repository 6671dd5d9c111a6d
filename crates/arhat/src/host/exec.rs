//! Commands on the device host itself (`kubectl exec` on the host pod),
//! as a [`Process`] like a container's.

use std::{process::Stdio, sync::Arc};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use tokio::{process::Child, sync::Mutex};
use tokio_util::io::ReaderStream;

use crate::runtime::{ExecSpec, LogOutput, Process, ProcessHandle, RuntimeError};

/// Starts `spec.command` on the host with pipes for its standard streams.
pub fn spawn(spec: &ExecSpec) -> Result<Process, RuntimeError> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(RuntimeError::Failed {
            op: "running on the host",
            reason: "no command".into(),
        });
    };
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(pipe(spec.stdin))
        .stdout(pipe(spec.stdout))
        .stderr(pipe(spec.stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RuntimeError::Failed {
            op: "running on the host",
            reason: format!("{program}: {e}"),
        })?;
    let stdin = child
        .stdin
        .take()
        .map(|s| Box::pin(s) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>);
    let stdout = child
        .stdout
        .take()
        .map(|s| ReaderStream::new(s).map(|r| (LogOutput::Stdout, r)).boxed());
    let stderr = child
        .stderr
        .take()
        .map(|s| ReaderStream::new(s).map(|r| (LogOutput::Stderr, r)).boxed());
    let output = futures::stream::select(
        stdout.unwrap_or_else(|| futures::stream::empty().boxed()),
        stderr.unwrap_or_else(|| futures::stream::empty().boxed()),
    )
    .map(|(which, read)| {
        read.map(|data| (which, data))
            .map_err(|e| RuntimeError::Failed {
                op: "reading the host command's output",
                reason: e.to_string(),
            })
    })
    .boxed();
    Ok(Process {
        stdin,
        output,
        handle: Arc::new(HostProcess {
            child: Mutex::new(child),
        }),
    })
}

struct HostProcess {
    child: Mutex<Child>,
}

impl ProcessHandle for HostProcess {
    fn resize(&self, _width: u16, _height: u16) -> BoxFuture<'_, Result<(), RuntimeError>> {
        // No terminal: pipes have no size.
        async { Ok(()) }.boxed()
    }

    fn exit_code(&self) -> BoxFuture<'_, Result<i32, RuntimeError>> {
        async move {
            let status =
                self.child
                    .lock()
                    .await
                    .wait()
                    .await
                    .map_err(|e| RuntimeError::Failed {
                        op: "waiting for the host command",
                        reason: e.to_string(),
                    })?;
            // Killed by a signal: 128 + n, as a shell reports it.
            use std::os::unix::process::ExitStatusExt;
            Ok(status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        .boxed()
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async move {
            let _ = self.child.lock().await.start_kill();
            Ok(())
        }
        .boxed()
    }
}
