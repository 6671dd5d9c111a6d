//! Commands on the device host itself (`kubectl exec` and `attach` on the
//! host pod), as a [`Process`] like a container's: with pipes, or with a
//! pseudo-terminal of their own for `-t`. Attach has no main process to join
//! on a host, so it starts a login shell.

use std::{os::fd::OwnedFd, process::Stdio, sync::Arc};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use tokio::{process::Child, sync::Mutex};
use tokio_util::io::ReaderStream;

use crate::runtime::{ExecSpec, LogOutput, Process, ProcessHandle, RuntimeError, TerminalSize};

/// What attach on the host runs, and exec without a command.
const SHELL: [&str; 2] = ["/bin/sh", "-l"];

/// Starts `spec.command` (a shell if empty) on the host: in a new
/// pseudo-terminal for a tty, else with pipes for its standard streams.
pub fn spawn(spec: &ExecSpec) -> Result<Process, RuntimeError> {
    let command: Vec<String> = if spec.command.is_empty() {
        SHELL.iter().map(|s| (*s).to_string()).collect()
    } else {
        spec.command.clone()
    };
    let Some((program, args)) = command.split_first() else {
        return Err(RuntimeError::failed("running on the host", "no command"));
    };
    if spec.tty {
        return spawn_in_terminal(program, args, spec.size);
    }
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(pipe(spec.stdin))
        .stdout(pipe(spec.stdout))
        .stderr(pipe(spec.stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RuntimeError::failed("running on the host", format!("{program}: {e}")))?;
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
            .map_err(|e| RuntimeError::failed("reading the host command's output", e))
    })
    .boxed();
    Ok(Process {
        stdin,
        output,
        handle: Arc::new(HostProcess {
            child: Mutex::new(child),
            terminal: None,
        }),
    })
}

fn pty_error(e: impl Into<crate::runtime::Cause>) -> RuntimeError {
    RuntimeError::failed("opening a terminal on the host", e)
}

/// The command as the session leader of a new pseudo-terminal, which is its
/// controlling terminal (so job control and `stty` work); its output is the
/// terminal's, all on stdout as a kubelet sends a tty's.
fn spawn_in_terminal(
    program: &str,
    args: &[String],
    size: Option<TerminalSize>,
) -> Result<Process, RuntimeError> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(pty_error)?;
    if let Some(size) = size {
        set_size(&master, size)?;
    }
    grantpt(&master).map_err(pty_error)?;
    unlockpt(&master).map_err(pty_error)?;
    let name = ptsname(&master, Vec::new()).map_err(pty_error)?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_string_lossy().as_ref())
        .map_err(pty_error)?
        .into();
    let stdio = || slave.try_clone().map(Stdio::from).map_err(pty_error);
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(stdio()?)
        .stdout(stdio()?)
        .stderr(stdio()?)
        .env("TERM", "xterm")
        .kill_on_drop(true);
    // SAFETY: between fork and exec only async-signal-safe system calls run
    // (setsid, ioctl), touching no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::io::stdin())?;
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| RuntimeError::failed("running on the host", format!("{program}: {e}")))?;
    // Only the child keeps the terminal's other end: its exit ends our reads.
    drop(slave);
    let reader =
        tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(pty_error)?));
    let writer =
        tokio::fs::File::from_std(std::fs::File::from(master.try_clone().map_err(pty_error)?));
    // A closed terminal reads as EIO: that is its end, not a failure.
    let output = ReaderStream::new(reader)
        .take_while(|r| futures::future::ready(r.is_ok()))
        .map(|r| r.map(|data| (LogOutput::Stdout, data)).map_err(pty_error))
        .boxed();
    Ok(Process {
        stdin: Some(Box::pin(writer)),
        output,
        handle: Arc::new(HostProcess {
            child: Mutex::new(child),
            terminal: Some(master),
        }),
    })
}

fn set_size(master: &OwnedFd, size: TerminalSize) -> Result<(), RuntimeError> {
    let size = rustix::termios::Winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, size).map_err(pty_error)
}

struct HostProcess {
    child: Mutex<Child>,
    /// The pseudo-terminal's master side, for resizes.
    terminal: Option<OwnedFd>,
}

impl ProcessHandle for HostProcess {
    fn resize(&self, width: u16, height: u16) -> BoxFuture<'_, Result<(), RuntimeError>> {
        let resized = match &self.terminal {
            Some(master) => set_size(master, TerminalSize { width, height }),
            // No terminal: pipes have no size.
            None => Ok(()),
        };
        async move { resized }.boxed()
    }

    fn exit_code(&self) -> BoxFuture<'_, Result<i32, RuntimeError>> {
        async move {
            let status = self
                .child
                .lock()
                .await
                .wait()
                .await
                .map_err(|e| RuntimeError::failed("waiting for the host command", e))?;
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
