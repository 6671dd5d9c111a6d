//! A TCP connection carried on a session stream: each side's bytes go to the
//! other, and finishing a side half-closes the connection. Port-forward on
//! the device and both ends of the cluster-network relay use it; [`join`]
//! carries one stream on another (a device's connection to an endpoint on
//! another device), and [`datagrams`] a UDP flow on a stream.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use proto::api::Datagram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream, UdpSocket,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tracing::debug;

use crate::{Stream, StreamError, StreamReceiver, StreamSender};

/// Reads from a spliced socket take a quarter of the link's frame, within
/// these bounds: large enough that a read costs little per byte, small
/// enough that a stream's 256 KiB window holds several frames in flight,
/// which a store-and-forward hop (the MQTT broker receives each message
/// whole before passing it on) needs. Measured: 128 KiB reads carried about
/// a quarter more than 32 KiB over gRPC (1 MiB frames); over MQTT (128 KiB
/// frames) the relay fell from 0.19 to 0.11–0.12 of direct with them.
const MIN_READ: usize = 32 * 1024;
const MAX_READ: usize = 128 * 1024;
/// The largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_536;

/// Carries `conn` on `stream` until both directions end. Once the
/// connection's side has ended, the stream is held up to `linger` for the
/// peer to end its own: dropping it sooner would reset it, and a reset
/// discards bytes still in flight.
pub async fn splice(stream: Stream, conn: TcpStream, linger: Duration) -> Result<(), StreamError> {
    let (tx, rx) = stream.split();
    let (read, write) = conn.into_split();
    both_ways(from_socket(read, tx), to_socket(rx, write), linger).await
}

/// Carries each stream's bytes to the other until both directions end; a
/// finish on one side finishes the other, a reset resets it.
pub async fn join(a: Stream, b: Stream, linger: Duration) -> Result<(), StreamError> {
    let (a_tx, a_rx) = a.split();
    let (b_tx, b_rx) = b.split();
    both_ways(pipe(b_rx, a_tx), pipe(a_rx, b_tx), linger).await
}

/// Runs both directions: `back` (toward the peer) here, `forth` (from the
/// peer) on a task of its own. Once `back` ends, `forth` gets up to `linger`
/// to end too; once `forth` ends, `back` runs on if the peer only finished,
/// and stops at once if the peer reset or the session ended.
async fn both_ways<B, F>(back: B, forth: F, linger: Duration) -> Result<(), StreamError>
where
    B: Future<Output = Result<(), StreamError>>,
    F: Future<Output = Result<(), StreamError>> + Send + 'static,
{
    let mut forth = tokio::spawn(forth);
    tokio::pin!(back);
    tokio::select! {
        result = &mut back => {
            let _ = tokio::time::timeout(linger, forth).await;
            result
        }
        ended = &mut forth => match ended {
            // The peer half-closed: the other side may still answer.
            Ok(Ok(())) => back.await,
            // Reset (the peer's client went away) or the session ended:
            // drop the other side now rather than when it next writes.
            _ => Ok(()),
        },
    }
}

/// A UDP flow carried on `stream`: each Datagram message the peer sends goes
/// to `socket` (connected to the flow's other end), each datagram `socket`
/// receives goes back as one, until the peer finishes or the flow is idle
/// for `idle`; then this side finishes too.
pub async fn datagrams(
    stream: Stream,
    socket: UdpSocket,
    idle: Duration,
) -> Result<(), StreamError> {
    let (mut tx, mut rx) = stream.split();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            datagram = rx.recv_message::<Datagram>() => match datagram? {
                Some(d) => {
                    // A datagram the other end refuses (ICMP) is lost, as
                    // UDP's are.
                    let _ = socket.send(&d.data).await;
                }
                None => break,
            },
            received = socket.recv(&mut buf) => {
                if let Ok(n) = received {
                    tx.send_message(&Datagram { data: Bytes::copy_from_slice(&buf[..n]) }).await?;
                }
            }
            () = tokio::time::sleep(idle) => break,
        }
    }
    tx.finish();
    Ok(())
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

/// How much one read takes on a link whose frames carry `chunk` bytes of
/// data: whole frames' worth when frames are small (a read cut into full
/// frames and a small one costs a transport message more), a quarter of a
/// frame when they are large.
fn read_size(chunk: usize) -> usize {
    let target = (chunk / 4).clamp(MIN_READ, MAX_READ);
    if chunk == 0 || chunk >= target {
        target
    } else {
        chunk * (target / chunk)
    }
}

async fn from_socket(mut read: OwnedReadHalf, mut tx: StreamSender) -> Result<(), StreamError> {
    // Read straight into the chunk the stream takes: no copy. The buffer's
    // memory comes back once the session has sent the chunk.
    let mut buf = BytesMut::new();
    loop {
        // The buffer may have more room than asked for: the limit keeps
        // the read to whole frames.
        let n = read_size(tx.chunk_size());
        buf.reserve(n);
        match read.read_buf(&mut (&mut buf).limit(n)).await {
            Ok(0) => break,
            Ok(_) => tx.send(buf.split().freeze()).await?,
            Err(e) => {
                debug!(error = %e, "spliced connection failed");
                break;
            }
        }
    }
    tx.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_whole_small_frames_or_a_quarter_of_large_ones() {
        // MQTT at 8 KiB: four whole frames.
        assert_eq!(read_size(8000), 4 * 8000);
        // MQTT at 128 KiB, gRPC at 1 MiB.
        assert_eq!(read_size(130_000), MIN_READ);
        assert_eq!(read_size(400_000), 100_000);
        assert_eq!(read_size(1 << 20), MAX_READ);
        assert_eq!(read_size(0), MIN_READ);
    }
}
