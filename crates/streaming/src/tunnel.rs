//! SPDY tunnelled in a WebSocket (`SPDY/3.1+portforward.k8s.io`), as kubectl
//! port-forwards since 1.31: the SPDY byte stream is cut into binary
//! messages anywhere. [`bytes_of`] turns the WebSocket back into a byte
//! stream the SPDY driver reads and writes as it would a socket.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};
use tracing::debug;

use crate::websocket::normal_close;

/// Bytes buffered each way between the WebSocket and the SPDY driver.
const BUFFER: usize = 256 * 1024;
/// Largest message we send.
const MESSAGE: usize = 64 * 1024;

/// Serves a WebSocket on `io` and returns its payload as a byte stream; the
/// WebSocket closes when that stream's writer shuts down, and the stream
/// ends when the client closes.
pub async fn bytes_of<IO>(io: IO) -> DuplexStream
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let (ours, theirs) = tokio::io::duplex(BUFFER);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(message) = source.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) => break,
                Ok(Message::Text(_)) => {
                    debug!("text message in a SPDY tunnel: closing it");
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, "SPDY tunnel read failed");
                    break;
                }
            };
            if to_spdy.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; MESSAGE];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(message).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    ours
}
