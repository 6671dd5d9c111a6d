//! exec, attach and port-forward over the WebSocket channel protocols, for
//! clients the apiserver passes straight through (the Python client's
//! `stream`, dashboards) and, once the Node declares
//! `ExtendWebSocketsToKubelet`, kubectl's own: every message starts with its
//! channel (exec: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize), raw in
//! binary messages or, for the base64 protocols, as a digit before base64
//! text. v5 adds a close signal (`255, channel`) for stdin EOF. kubectl's
//! port-forward tunnels SPDY instead ([`TUNNEL`], see [`crate::tunnel`]).

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    portforward::{Forward, FromClient, Inbound, Outbound, ToClient},
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

/// kubectl's port-forward: SPDY/3.1 carried in binary messages.
pub const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// What we speak for port-forward: the SPDY tunnel, else a data and an
/// error channel per port (the last, without a subprotocol, for clients that
/// offer none).
pub const PORTFORWARD: &[&str] = &[
    TUNNEL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
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

/// A close with status 1000: Go clients (gorilla) take a close without a
/// status as an error and fail the session.
pub(crate) fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

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

/// The ports of a channel port-forward: every `port` query parameter, each
/// possibly comma-separated, as the kubelet reads them.
pub fn ports_from_query(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "port" {
            continue;
        }
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("unable to parse {p:?} as a port")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// Serves a channel port-forward (`v4.channel.k8s.io`, its base64 flavour,
/// or none): for port `i`, channel `2i` carries data both ways and `2i+1`
/// errors to the client; each starts with the port, little-endian, as the
/// kubelet writes it. One connection per port, as long as the WebSocket.
pub async fn serve_portforward<IO>(
    io: IO,
    protocol: &'static str,
    ports: &[u16],
) -> mpsc::Receiver<Forward>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let flavour = Flavour {
        base64: protocol.contains("base64"),
        v4: true,
        v5: false,
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let gone = CancellationToken::new();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(DEPTH);
    let (forwards_tx, forwards) = mpsc::channel(ports.len().max(1));
    let mut inbound = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        let Ok(data) = u8::try_from(2 * i) else {
            break;
        };
        let error = data + 1;
        let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
        let _ = out_tx.send((data, prefix.clone())).await;
        let _ = out_tx.send((error, prefix)).await;
        let (from_tx, from_rx) = mpsc::channel(DEPTH);
        inbound.push(from_tx);
        let to = |channel| {
            ToClient(Outbound::Channel {
                channel,
                out: out_tx.clone(),
                gone: gone.clone(),
            })
        };
        let _ = forwards_tx.try_send(Forward {
            port,
            request_id: i.to_string(),
            from_client: FromClient(Inbound::Channel(from_rx)),
            to_client: to(data),
            error: to(error),
        });
    }
    drop(out_tx);

    let reader_gone = gone.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            if message.is_close() {
                break;
            }
            let Some((channel, data)) = decode(flavour, message) else {
                continue;
            };
            let index = usize::from(channel / 2);
            match inbound.get(index) {
                Some(tx) if channel % 2 == 0 => {
                    let _ = tx.send(data).await;
                }
                _ => debug!(
                    channel,
                    "port-forward message on an unexpected channel ignored"
                ),
            }
        }
        // The client is gone: its connections end both ways.
        reader_gone.cancel();
    });
    tokio::spawn(async move {
        loop {
            tokio::select! {
                item = out_rx.recv() => match item {
                    Some((channel, data)) => {
                        if sink.send(encode(flavour, channel, &data)).await.is_err() {
                            break;
                        }
                    }
                    // Every forwarded connection has ended.
                    None => {
                        let _ = sink.send(normal_close()).await;
                        let _ = sink.close().await;
                        break;
                    }
                },
                () = gone.cancelled() => break,
            }
        }
        gone.cancel();
    });
    forwards
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
        let _ = sink.send(normal_close()).await;
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
    fn ports_are_read_as_the_kubelet_reads_them() {
        assert_eq!(
            ports_from_query(Some("port=8080&port=9000,9001")),
            Ok(vec![8080, 9000, 9001])
        );
        assert!(ports_from_query(None).is_err());
        assert!(ports_from_query(Some("port=")).is_err());
        assert!(ports_from_query(Some("port=0")).is_err());
        assert!(ports_from_query(Some("port=http")).is_err());
    }

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
