//! A TCP connection carried on a session stream: each side's bytes go to the
//! other, and finishing a side half-closes the connection. Port-forward on
//! the device and both ends of the cluster-network relay use it; [`join`]
//! carries one stream on another (a device's connection to an endpoint on
//! another device).

use std::time::Duration;

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tracing::debug;

use crate::{Stream, StreamError, StreamReceiver, StreamSender};

const READ_CHUNK: usize = 32 * 1024;

/// Carries `conn` on `stream` until both directions end. Once the
/// connection's side has ended, the stream is held up to `linger` for the
/// peer to end its own: dropping it sooner would reset it, and a reset
/// discards bytes still in flight.
pub async fn splice(stream: Stream, conn: TcpStream, linger: Duration) -> Result<(), StreamError> {
    let (tx, rx) = stream.split();
    let (read, write) = conn.into_split();
    let mut inbound = tokio::spawn(to_socket(rx, write));
    let outbound = from_socket(read, tx);
    tokio::pin!(outbound);
    tokio::select! {
        result = &mut outbound => {
            let _ = tokio::time::timeout(linger, inbound).await;
            result
        }
        ended = &mut inbound => match ended {
            // The peer half-closed: the socket's side may still answer.
            Ok(Ok(())) => outbound.await,
            // Reset (the peer's client went away) or the session ended:
            // drop the connection now rather than when it next writes.
            _ => Ok(()),
        },
    }
}

/// Carries each stream's bytes to the other until both directions end; a
/// finish on one side finishes the other, a reset resets it.
pub async fn join(a: Stream, b: Stream, linger: Duration) -> Result<(), StreamError> {
    let (a_tx, a_rx) = a.split();
    let (b_tx, b_rx) = b.split();
    let mut forward = tokio::spawn(pipe(a_rx, b_tx));
    let back = pipe(b_rx, a_tx);
    tokio::pin!(back);
    tokio::select! {
        result = &mut back => {
            let _ = tokio::time::timeout(linger, forward).await;
            result
        }
        ended = &mut forward => match ended {
            Ok(Ok(())) => back.await,
            _ => Ok(()),
        },
    }
}

async fn pipe(mut rx: StreamReceiver, mut tx: StreamSender) -> Result<(), StreamError> {
    loop {
        match rx.recv_bytes().await {
            Ok(Some(data)) => tx.send(data).await?,
            Ok(None) => break,
            Err(e) => {
                tx.reset(
                    proto::session::ResetCode::Cancelled,
                    "the other stream was reset",
                );
                return Err(e);
            }
        }
    }
    tx.finish();
    Ok(())
}

/// The peer's bytes to the socket; its finish half-closes the socket.
async fn to_socket(mut rx: StreamReceiver, mut write: OwnedWriteHalf) -> Result<(), StreamError> {
    while let Some(data) = rx.recv_bytes().await? {
        if write.write_all(&data).await.is_err() {
            break;
        }
    }
    let _ = write.shutdown().await;
    Ok(())
}

async fn from_socket(mut read: OwnedReadHalf, mut tx: StreamSender) -> Result<(), StreamError> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match read.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => tx.send(Bytes::copy_from_slice(&buf[..n])).await?,
            Err(e) => {
                debug!(error = %e, "spliced connection failed");
                break;
            }
        }
    }
    tx.finish();
    Ok(())
}
