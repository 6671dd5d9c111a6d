//! port-forward over SPDY (`portforward.k8s.io`): each forwarded connection
//! is a pair of streams with the same `requestid`, `error` (the client
//! half-closes it at once; we write a failure there) and `data`.

use std::collections::HashMap;

use spdy::{
    Config, RstStatus,
    driver::{self, Session, Stream, StreamReader, StreamWriter},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tracing::debug;

/// One forwarded connection the client asked for.
#[derive(Debug)]
pub struct Forward {
    pub port: u16,
    pub request_id: String,
    /// Bytes from the client's connection; ends at its half-close.
    pub from_client: StreamReader,
    /// Bytes to the client's connection; `finish` half-closes it.
    pub to_client: StreamWriter,
    error: StreamWriter,
}

impl Forward {
    /// Reports a failure (as a kubelet does, plain text) and ends both
    /// streams.
    pub async fn fail(self, message: String) {
        let _ = self.error.write(message.into_bytes().into()).await;
        self.error.reset(RstStatus::Cancel).await;
        self.to_client.reset(RstStatus::Cancel).await;
    }

    /// Ends the pair normally once the data stream is done both ways.
    pub async fn close(self) {
        let _ = self.error.finish().await;
        let _ = self.to_client.finish().await;
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
                    from_client: data.reader,
                    to_client: data.writer,
                    error: error.writer,
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
                    while let Some(Ok(data)) = f.from_client.recv().await {
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
