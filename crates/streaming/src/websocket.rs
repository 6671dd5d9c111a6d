//! exec and attach over the WebSocket channel protocols, for clients the
//! apiserver passes straight through (the Python client's `stream`,
//! dashboards): every message starts with its channel (0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize), raw in binary messages or, for the base64
//! protocols, as a digit before base64 text. v5 adds a close signal
//! (`255, channel`) for stdin EOF.

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    remotecommand::{Done, ExecIo, ExecOptions, Outcome, TerminalSize},
    status,
};

/// What we speak, newest first.
pub const REMOTECOMMAND: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    // Last: what a client that offers nothing gets.
    "channel.k8s.io",
];

/// The offers header, comma-separated.
pub const PROTOCOL_HEADER: &str = "Sec-WebSocket-Protocol";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;
const DEPTH: usize = 8;

/// Whether a request asks for a WebSocket.
pub fn is_upgrade(upgrade: Option<&str>) -> bool {
    upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

/// The `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

#[derive(Debug, Clone, Copy)]
struct Flavour {
    base64: bool,
    v4: bool,
    v5: bool,
}

fn encode(flavour: Flavour, channel: u8, data: &[u8]) -> Message {
    if flavour.base64 {
        let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        text.push(char::from(b'0' + channel));
        STANDARD.encode_string(data, &mut text);
        Message::Text(text.into())
    } else {
        let mut out = BytesMut::with_capacity(1 + data.len());
        out.put_u8(channel);
        out.put_slice(data);
        Message::Binary(out.freeze())
    }
}

fn decode(flavour: Flavour, message: Message) -> Option<(u8, Bytes)> {
    match message {
        Message::Binary(data) if !flavour.base64 && !data.is_empty() => {
            Some((data[0], data.slice(1..)))
        }
        Message::Text(text) if flavour.base64 && !text.is_empty() => {
            let bytes = text.as_bytes();
            let channel = bytes[0].checked_sub(b'0')?;
            STANDARD
                .decode(&bytes[1..])
                .ok()
                .map(|d| (channel, Bytes::from(d)))
        }
        _ => None,
    }
}

/// The resize messages in one WebSocket message (each is whole).
fn sizes(data: &[u8]) -> Vec<TerminalSize> {
    serde_json::Deserializer::from_slice(data)
        .into_iter::<TerminalSize>()
        .flatten()
        .collect()
}

/// Serves one exec or attach on an upgraded WebSocket connection speaking
/// `protocol` (one of [`REMOTECOMMAND`]).
pub async fn serve_exec<IO>(io: IO, protocol: &'static str, options: &ExecOptions) -> ExecIo
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let flavour = Flavour {
        base64: protocol.contains("base64"),
        v4: protocol.starts_with("v4.") || protocol.starts_with("v5."),
        v5: protocol.starts_with("v5."),
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let gone = CancellationToken::new();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(DEPTH);
    let (stdin_tx, stdin) = mpsc::channel(DEPTH);
    let (resize_tx, resize) = mpsc::channel(DEPTH);
    let (done_tx, done_rx) = oneshot::channel::<Outcome>();

    // From the client.
    let reader_gone = gone.clone();
    tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(message)) = source.next().await {
            if message.is_close() {
                break;
            }
            let Some((channel, data)) = decode(flavour, message) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(data).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    for size in sizes(&data) {
                        let _ = resize_tx.send(size).await;
                    }
                }
                CLOSE if flavour.v5 && data.first() == Some(&STDIN) => stdin_tx = None,
                other => debug!(channel = other, "message on an unexpected channel ignored"),
            }
        }
        reader_gone.cancel();
    });

    // Output channels into one writer.
    let output = |channel: u8, on: bool| {
        on.then(|| {
            let (tx, mut rx) = mpsc::channel::<Bytes>(DEPTH);
            let out = out_tx.clone();
            tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    if out.send((channel, data)).await.is_err() {
                        break;
                    }
                }
            });
            tx
        })
    };
    let stdout = output(STDOUT, options.stdout);
    let stderr = output(STDERR, options.stderr && !options.tty);
    let command = options.command.clone();
    let writer_gone = gone.clone();
    tokio::spawn(async move {
        let mut done_rx = done_rx;
        let mut outcome = None;
        loop {
            tokio::select! {
                item = out_rx.recv() => match item {
                    Some((channel, data)) => {
                        if sink.send(encode(flavour, channel, &data)).await.is_err() {
                            writer_gone.cancel();
                            return;
                        }
                    }
                    // Every output channel is done (the senders are gone).
                    None => break,
                },
                o = &mut done_rx, if outcome.is_none() => {
                    outcome = Some(o.unwrap_or(Outcome::Failed("the process was lost".into())));
                }
                _ = writer_gone.cancelled() => return,
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => done_rx
                .await
                .unwrap_or(Outcome::Failed("the process was lost".into())),
        };
        if let Some(message) = status::for_outcome(&outcome, flavour.v4, &command) {
            let _ = sink.send(encode(flavour, ERROR, &message)).await;
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    });
    drop(out_tx);
    ExecIo {
        tty: options.tty,
        stdin: options.stdin.then_some(stdin),
        stdout,
        stderr,
        resize: options.tty.then_some(resize),
        gone,
        done: Done::new(done_tx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_framing_both_flavours() {
        let raw = Flavour {
            base64: false,
            v4: true,
            v5: false,
        };
        let b64 = Flavour {
            base64: true,
            v4: true,
            v5: false,
        };
        assert_eq!(
            encode(raw, STDOUT, b"hi"),
            Message::Binary(Bytes::from_static(b"\x01hi"))
        );
        assert_eq!(encode(b64, STDOUT, b"hi"), Message::Text("1aGk=".into()));
        assert_eq!(
            decode(raw, Message::Binary(Bytes::from_static(b"\x00ls\n"))),
            Some((0, Bytes::from_static(b"ls\n")))
        );
        assert_eq!(
            decode(b64, Message::Text("0bHMK".into())),
            Some((0, Bytes::from_static(b"ls\n")))
        );
        assert_eq!(decode(b64, Message::Text("0%%%".into())), None);
    }
}
