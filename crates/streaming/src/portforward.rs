//! port-forward over SPDY (`portforward.k8s.io`): each forwarded connection
//! is a pair of streams with the same `requestid`, `error` (the client
//! half-closes it at once; we write a failure there) and `data`. The
//! WebSocket flavours ([`crate::websocket`]) hand out the same [`Forward`].

use std::collections::HashMap;

use bytes::Bytes;
use spdy::{
    Config, RstStatus,
    driver::{self, Session, Stream, StreamReader, StreamWriter},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// One forwarded connection the client asked for.
#[derive(Debug)]
pub struct Forward {
    pub port: u16,
    pub request_id: String,
    /// Bytes from the client's connection; ends at its half-close.
    pub from_client: FromClient,
    /// Bytes to the client's connection.
    pub to_client: ToClient,
    pub(crate) error: ToClient,
}

/// The client went away (or reset the connection).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the port-forward client is gone")]
pub struct ClientGone;

/// Bytes the client sends on one forwarded connection.
#[derive(Debug)]
pub struct FromClient(pub(crate) Inbound);

#[derive(Debug)]
pub(crate) enum Inbound {
    Spdy(StreamReader),
    /// A WebSocket channel; ends when the WebSocket does.
    Channel(mpsc::Receiver<Bytes>),
}

impl FromClient {
    /// The next bytes; `None` once the client half-closed, an error once
    /// it went away (the two end a forwarded connection differently).
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ClientGone> {
        match &mut self.0 {
            Inbound::Spdy(reader) => match reader.recv().await {
                Some(Ok(data)) => Ok(Some(data)),
                None => Ok(None),
                Some(Err(_)) => Err(ClientGone),
            },
            // The channel's sender goes with the WebSocket: there is no
            // half-close in the v4 channel protocols.
            Inbound::Channel(rx) => rx.recv().await.map(Some).ok_or(ClientGone),
        }
    }
}

/// One direction toward the client: a SPDY stream or a WebSocket channel.
#[derive(Debug)]
pub struct ToClient(pub(crate) Outbound);

#[derive(Debug)]
pub(crate) enum Outbound {
    Spdy(StreamWriter),
    Channel {
        channel: u8,
        out: mpsc::Sender<(u8, Bytes)>,
        /// Cancelled when the WebSocket is gone.
        gone: CancellationToken,
    },
}

impl ToClient {
    /// Queues bytes, waiting while the client is behind.
    pub async fn write(&self, data: Bytes) -> Result<(), ClientGone> {
        match &self.0 {
            Outbound::Spdy(writer) => writer.write(data).await.map_err(|_| ClientGone),
            Outbound::Channel { channel, out, .. } => {
                out.send((*channel, data)).await.map_err(|_| ClientGone)
            }
        }
    }

    /// Resolves once the client is gone: whatever is still being forwarded
    /// can stop.
    pub async fn closed(&self) {
        match &self.0 {
            Outbound::Spdy(writer) => writer.closed().await,
            Outbound::Channel { gone, .. } => gone.cancelled().await,
        }
    }

    async fn end(self, failed: bool) {
        match self.0 {
            Outbound::Spdy(writer) if failed => writer.reset(RstStatus::Cancel).await,
            Outbound::Spdy(writer) => {
                let _ = writer.finish().await;
            }
            // v4 channels cannot be closed one by one; the WebSocket closes
            // once every channel's sender is gone.
            Outbound::Channel { .. } => {}
        }
    }
}

impl Forward {
    /// Reports a failure (as a kubelet does, plain text) and ends both
    /// streams.
    pub async fn fail(self, message: String) {
        let _ = self.error.write(message.into_bytes().into()).await;
        self.error.end(true).await;
        self.to_client.end(true).await;
    }

    /// Ends the pair normally once the data stream is done both ways.
    pub async fn close(self) {
        self.error.end(false).await;
        self.to_client.end(false).await;
    }
}

struct Half {
    port: Result<u16, String>,
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serves port-forward on an upgraded connection: every pair the client
/// opens comes out of the receiver; it closes when the connection ends.
pub fn serve_spdy<IO>(io: IO) -> (mpsc::Receiver<Forward>, Session)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut incoming, session) = driver::serve(io, Config::default());
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut pending: HashMap<String, Half> = HashMap::new();
        while let Some(stream) = incoming.accept().await {
            let kind = stream.headers.get("streamtype").map(str::to_owned);
            // Pairs by requestid; without one, by id (data = error + 2).
            let request_id = match (stream.headers.get("requestid"), kind.as_deref()) {
                (Some(r), _) => r.to_string(),
                (None, Some("data")) => stream.id.saturating_sub(2).to_string(),
                (None, _) => stream.id.to_string(),
            };
            let port = stream
                .headers
                .get("port")
                .ok_or_else(|| "missing port header".to_string())
                .and_then(|p| {
                    p.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| format!("invalid port {p:?}"))
                });
            let half = pending.entry(request_id.clone()).or_insert(Half {
                port,
                error: None,
                data: None,
            });
            let slot = match kind.as_deref() {
                Some("error") => &mut half.error,
                Some("data") => &mut half.data,
                _ => {
                    debug!(headers = ?stream.headers, "unexpected port-forward stream refused");
                    stream.writer.reset(RstStatus::ProtocolError).await;
                    continue;
                }
            };
            if slot.is_some() {
                stream.writer.reset(RstStatus::ProtocolError).await;
                continue;
            }
            *slot = Some(stream);
            if half.error.is_some()
                && half.data.is_some()
                && let Some(Half {
                    port,
                    error: Some(error),
                    data: Some(data),
                }) = pending.remove(&request_id)
            {
                let port = match port {
                    Ok(port) => port,
                    Err(message) => {
                        let _ = error.writer.write(message.into_bytes().into()).await;
                        error.writer.reset(RstStatus::Cancel).await;
                        data.writer.reset(RstStatus::Cancel).await;
                        continue;
                    }
                };
                let forward = Forward {
                    port,
                    request_id,
                    from_client: FromClient(Inbound::Spdy(data.reader)),
                    to_client: ToClient(Outbound::Spdy(data.writer)),
                    error: ToClient(Outbound::Spdy(error.writer)),
                };
                if tx.send(forward).await.is_err() {
                    break;
                }
            }
        }
    });
    (rx, session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{apiserver_side, replay};

    #[tokio::test]
    async fn pairs_by_request_id_and_echoes() {
        // Two sequential and two concurrent connections, echoed.
        let (_, bytes) = apiserver_side("portforward");
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut forwards, session) = serve_spdy(server);
        let echo = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(mut f) = forwards.recv().await {
                seen.push((f.request_id.clone(), f.port));
                tokio::spawn(async move {
                    while let Ok(Some(data)) = f.from_client.recv().await {
                        let _ = f.to_client.write(data).await;
                    }
                    f.close().await;
                });
                if seen.len() == 4 {
                    break;
                }
            }
            seen
        });
        let frames =
            tokio::time::timeout(std::time::Duration::from_secs(10), replay(client, bytes))
                .await
                .unwrap_or_default();
        let mut seen = echo.await.unwrap_or_default();
        seen.sort();
        assert_eq!(
            seen,
            ["0", "1", "2", "3"].map(|r| (r.to_string(), 8080)).to_vec()
        );
        // Every byte a data stream carried came back on it.
        let sent: usize = [3000, 4096, 5000, 5000].iter().sum();
        let echoed: usize = frames
            .iter()
            .filter_map(|f| match f {
                spdy::Frame::Data { data, .. } => Some(data.len()),
                _ => None,
            })
            .sum();
        assert_eq!(echoed, sent);
        drop(session);
    }

    #[tokio::test]
    async fn a_failure_is_written_on_the_error_stream() {
        let (_, bytes) = apiserver_side("portforward-banner-and-refused");
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut forwards, _session) = serve_spdy(server);
        tokio::spawn(async move {
            while let Some(f) = forwards.recv().await {
                let port = f.port;
                f.fail(format!("error forwarding port {port}: connection refused"))
                    .await;
            }
        });
        let frames =
            tokio::time::timeout(std::time::Duration::from_secs(10), replay(client, bytes))
                .await
                .unwrap_or_default();
        let messages: Vec<String> = frames
            .iter()
            .filter_map(|f| match f {
                spdy::Frame::Data { data, .. } if !data.is_empty() => {
                    Some(String::from_utf8_lossy(data).into_owned())
                }
                _ => None,
            })
            .collect();
        assert!(
            messages
                .iter()
                .any(|m| m.contains("error forwarding port 9000")),
            "{messages:?}"
        );
        assert!(frames.iter().any(|f| matches!(
            f,
            spdy::Frame::RstStream {
                status: RstStatus::Cancel,
                ..
            }
        )));
    }
}
