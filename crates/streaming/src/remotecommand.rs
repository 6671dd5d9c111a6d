//! exec and attach over SPDY, as a kubelet's streaming server serves them:
//! the client opens one stream per channel (`streamtype` error, stdin,
//! stdout, stderr, resize); once all it asked for are there the process may
//! start; stdout and stderr end with FIN once drained, then the exit status
//! goes on the error stream and the connection is torn down.

use std::{collections::HashMap, time::Duration};

use bytes::{Bytes, BytesMut};
use spdy::{
    Config, RstStatus,
    driver::{self, Closer, Incoming, Stream, StreamReader, StreamWriter},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::status;

/// How long the client may take to open its streams (as Kubernetes').
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks in flight per channel between the wire and the process.
const CHANNEL_DEPTH: usize = 8;
/// How long output may take to drain once the process is done.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client asked for, from the request's query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Parses `command=..&input=1&output=1&error=1&tty=1`; `exec` requires a
    /// command, attach takes none.
    pub fn from_query(query: Option<&str>, exec: bool) -> Result<Self, String> {
        let mut o = Self::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let on = || matches!(&*value, "1" | "true" | "True" | "TRUE");
            match &*key {
                "command" => o.command.push(value.into_owned()),
                "input" | "stdin" => o.stdin = on(),
                "output" | "stdout" => o.stdout = on(),
                "error" | "stderr" => o.stderr = on(),
                "tty" => o.tty = on(),
                _ => {}
            }
        }
        if exec && o.command.is_empty() {
            return Err("no command given (query parameter command)".into());
        }
        if !exec && !o.command.is_empty() {
            return Err("attach takes no command".into());
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err("you must specify at least one of stdin, stdout, stderr".into());
        }
        // With a terminal stderr goes to stdout: clients never ask for both.
        if o.tty {
            o.stderr = false;
        }
        Ok(o)
    }
}

/// A terminal size, as clients send it on the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// It could not be run at all.
    Failed(String),
}

/// The client's side of an exec or attach, as channels. Dropping `stdout`
/// and `stderr` ends them; [`Done::report`] then sends the status.
#[derive(Debug)]
pub struct ExecIo {
    pub tty: bool,
    /// Closes at stdin EOF.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Cancelled when the client goes away before the end.
    pub gone: CancellationToken,
    pub done: Done,
}

/// Reports the outcome, once.
#[derive(Debug)]
pub struct Done(oneshot::Sender<Outcome>);

impl Done {
    pub(crate) fn new(tx: oneshot::Sender<Outcome>) -> Self {
        Self(tx)
    }

    pub fn report(self, outcome: Outcome) {
        let _ = self.0.send(outcome);
    }
}

/// Why the session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("timed out waiting for the client's streams ({0})")]
    Timeout(String),
    #[error("the client went away while opening its streams")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Channel {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Channel {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "error" => Self::Error,
            "stdin" => Self::Stdin,
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            "resize" => Self::Resize,
            _ => return None,
        })
    }
}

/// Serves one exec or attach on an upgraded connection speaking
/// `protocol` (one of [`crate::negotiate::REMOTECOMMAND`]).
pub async fn serve_spdy<IO>(
    io: IO,
    protocol: &'static str,
    options: &ExecOptions,
) -> Result<ExecIo, SetupError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let v4 = protocol == "v4.channel.k8s.io";
    let resize = options.tty && protocol != "v2.channel.k8s.io" && protocol != "channel.k8s.io";
    let mut wanted = vec![Channel::Error];
    for (on, channel) in [
        (options.stdin, Channel::Stdin),
        (options.stdout, Channel::Stdout),
        (options.stderr, Channel::Stderr),
        (resize, Channel::Resize),
    ] {
        if on {
            wanted.push(channel);
        }
    }
    let (mut incoming, session) = driver::serve(io, Config::default());
    let closer = session.closer();
    let ended = session.ended();
    let streams = match tokio::time::timeout(
        STREAM_CREATION_TIMEOUT,
        collect(&mut incoming, &wanted),
    )
    .await
    {
        Ok(Some(streams)) => streams,
        Ok(None) => return Err(SetupError::Closed),
        Err(_) => {
            closer.close().await;
            return Err(SetupError::Timeout(format!("expected {wanted:?}")));
        }
    };
    // Keep refusing streams nobody asked for, and let the driver run.
    tokio::spawn(async move {
        while let Some(extra) = incoming.accept().await {
            extra.writer.reset(RstStatus::RefusedStream).await;
        }
        drop(session);
    });
    let mut streams = streams;
    let gone = CancellationToken::new();
    let stdin = streams.remove(&Channel::Stdin).map(|s| pump_in(s.reader));
    let resize = streams
        .remove(&Channel::Resize)
        .map(|s| pump_resize(s.reader));
    let mut drains = Vec::new();
    let mut output = |channel| {
        streams.remove(&channel).map(|s| {
            let (tx, handle) = pump_out(s.writer, gone.clone());
            drains.push(handle);
            tx
        })
    };
    let stdout = output(Channel::Stdout);
    let stderr = output(Channel::Stderr);
    let error = streams.remove(&Channel::Error).map(|s| s.writer);
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(finish(
        done_rx,
        drains,
        error,
        closer,
        ended,
        gone.clone(),
        v4,
        options.command.clone(),
    ));
    Ok(ExecIo {
        tty: options.tty,
        stdin,
        stdout,
        stderr,
        resize,
        gone,
        done: Done(done_tx),
    })
}

async fn collect(incoming: &mut Incoming, wanted: &[Channel]) -> Option<HashMap<Channel, Stream>> {
    let mut got = HashMap::new();
    while got.len() < wanted.len() {
        let stream = incoming.accept().await?;
        let channel = stream.headers.get("streamtype").and_then(Channel::parse);
        match channel {
            Some(c) if wanted.contains(&c) && !got.contains_key(&c) => {
                got.insert(c, stream);
            }
            _ => {
                debug!(headers = ?stream.headers, "unexpected remotecommand stream refused");
                stream.writer.reset(RstStatus::ProtocolError).await;
            }
        }
    }
    Some(got)
}

/// Client bytes to a channel; the channel closes at FIN (stdin EOF).
fn pump_in(mut reader: StreamReader) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        while let Some(Ok(data)) = reader.recv().await {
            if tx.send(data).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// A channel to client bytes, FIN once the sender is dropped.
fn pump_out(
    writer: StreamWriter,
    gone: CancellationToken,
) -> (mpsc::Sender<Bytes>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let handle = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if writer.write(data).await.is_err() {
                gone.cancel();
                return;
            }
        }
        let _ = writer.finish().await;
    });
    (tx, handle)
}

/// The resize stream's JSON objects, one after another.
fn pump_resize(mut reader: StreamReader) -> mpsc::Receiver<TerminalSize> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(Ok(data)) = reader.recv().await {
            buf.extend_from_slice(&data);
            let mut sizes = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
            let mut parsed = Vec::new();
            let consumed = loop {
                match sizes.next() {
                    Some(Ok(size)) => parsed.push(size),
                    // Incomplete: keep the rest for the next chunk.
                    Some(Err(e)) if e.is_eof() => break sizes.byte_offset(),
                    Some(Err(e)) => {
                        debug!(error = %e, "bad resize message ignored");
                        break buf.len();
                    }
                    None => break buf.len(),
                }
            };
            let _ = buf.split_to(consumed);
            for size in parsed {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    done: oneshot::Receiver<Outcome>,
    drains: Vec<JoinHandle<()>>,
    error: Option<StreamWriter>,
    closer: Closer,
    mut ended: watch::Receiver<bool>,
    gone: CancellationToken,
    v4: bool,
    command: Vec<String>,
) {
    let outcome = tokio::select! {
        outcome = done => outcome.unwrap_or(Outcome::Failed("the process was lost".into())),
        _ = ended.wait_for(|e| *e) => {
            gone.cancel();
            return;
        }
    };
    // Output first, as a kubelet's runtime drains it before the status.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, futures_join(drains)).await;
    let message = status::for_outcome(&outcome, v4, &command);
    if let (Some(error), Some(message)) = (&error, message) {
        let _ = error.write(message.into()).await;
    }
    if let Some(error) = &error {
        let _ = error.finish().await;
    }
    closer.close().await;
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests;
