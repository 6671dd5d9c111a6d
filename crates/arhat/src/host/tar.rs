//! `kubectl cp` to and from the device host without a `tar` binary there:
//! kubectl runs `tar -xmf - -C <dir>` (to the host) or `tar cf - <path>`
//! (from it), and arhat answers those itself.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::{FutureExt, StreamExt, future::BoxFuture};
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::SyncIoBridge;

use crate::runtime::{LogOutput, Process, ProcessHandle, RuntimeError};

/// What a `tar` command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tar {
    /// Unpack stdin into the directory.
    Extract { dir: PathBuf },
    /// Write an archive of the paths to stdout.
    Create { paths: Vec<PathBuf> },
}

/// Reads kubectl's tar command lines; `None` for anything else (run as is).
pub fn parse(command: &[String]) -> Option<Tar> {
    let (program, args) = command.split_first()?;
    if program != "tar" {
        return None;
    }
    let mut mode = None;
    let mut dir = None;
    let mut paths = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-C" => dir = args.next().map(PathBuf::from),
            "-" => {}
            a if a.starts_with("--") => {}
            a if mode.is_none() && !a.starts_with('/') => {
                let flags = a.trim_start_matches('-');
                if flags.contains('x') {
                    mode = Some('x');
                } else if flags.contains('c') {
                    mode = Some('c');
                } else {
                    return None;
                }
            }
            a => paths.push(PathBuf::from(a)),
        }
    }
    match mode? {
        'x' => Some(Tar::Extract {
            dir: dir.unwrap_or_else(|| PathBuf::from("/")),
        }),
        _ if !paths.is_empty() => Some(Tar::Create { paths }),
        _ => None,
    }
}

/// Runs the archive work on a blocking thread, as a [`Process`].
pub fn spawn(tar: Tar) -> Process {
    let (out_tx, out_rx) = mpsc::channel::<(LogOutput, Bytes)>(8);
    let (exit_tx, exit_rx) = oneshot::channel();
    let (stdin, work): (Option<_>, Box<dyn FnOnce() -> std::io::Result<()> + Send>) = match tar {
        Tar::Create { paths } => {
            let out = out_tx.clone();
            (None, Box::new(move || create(&paths, ChannelWriter(out))))
        }
        Tar::Extract { dir } => {
            let (write, read) = tokio::io::duplex(64 * 1024);
            let stdin = Box::pin(write) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;
            (
                Some(stdin),
                Box::new(move || tar::Archive::new(SyncIoBridge::new(read)).unpack(&dir)),
            )
        }
    };
    tokio::task::spawn_blocking(move || {
        let code = match work() {
            Ok(()) => 0,
            Err(e) => {
                let _ =
                    out_tx.blocking_send((LogOutput::Stderr, Bytes::from(format!("tar: {e}\n"))));
                2
            }
        };
        let _ = exit_tx.send(code);
    });
    Process {
        stdin,
        output: tokio_stream_from(out_rx).map(Ok).boxed(),
        handle: Arc::new(Exit(Mutex::new(Some(exit_rx)))),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn create(paths: &[PathBuf], out: ChannelWriter) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    for path in paths {
        // Member names without the leading '/', as tar writes them and
        // kubectl maps them back.
        let name = path.strip_prefix("/").unwrap_or(path);
        if path.is_dir() {
            builder.append_dir_all(name, path)?;
        } else {
            builder.append_path_with_name(path, name)?;
        }
    }
    builder.into_inner()?.flush()
}

/// Blocking writes into the output channel.
struct ChannelWriter(mpsc::Sender<(LogOutput, Bytes)>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send((LogOutput::Stdout, Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Exit(Mutex<Option<oneshot::Receiver<i32>>>);

impl ProcessHandle for Exit {
    fn resize(&self, _: u16, _: u16) -> BoxFuture<'_, Result<(), RuntimeError>> {
        async { Ok(()) }.boxed()
    }

    fn exit_code(&self) -> BoxFuture<'_, Result<i32, RuntimeError>> {
        let rx = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        async move {
            match rx {
                Some(rx) => rx
                    .await
                    .map_err(|_| RuntimeError::failed("tar on the host", "lost")),
                None => Ok(0),
            }
        }
        .boxed()
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        // Dropping the stream ends the work: its next write fails.
        async { Ok(()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn kubectl_cp_command_lines() {
        assert_eq!(
            parse(&cmd("tar -xmf - -C /tmp/dir")),
            Some(Tar::Extract {
                dir: "/tmp/dir".into()
            })
        );
        assert_eq!(
            parse(&cmd(
                "tar -xmf - -C /tmp --no-same-permissions --no-same-owner"
            )),
            Some(Tar::Extract { dir: "/tmp".into() })
        );
        assert_eq!(
            parse(&cmd("tar cf - /var/log/app.log")),
            Some(Tar::Create {
                paths: vec!["/var/log/app.log".into()]
            })
        );
        assert_eq!(parse(&cmd("tar tf -")), None);
        assert_eq!(parse(&cmd("sh -c true")), None);
    }
}
