//! A link impairer in userspace, as this machine has no netem: a TCP proxy
//! on loopback between a client and `upstream` that passes bytes at once,
//! late (a latency plus a random jitter, each direction), or not at all
//! (every connection closed and new ones turned away, as a server that is
//! down). Bytes keep their order, as TCP delivers them: packets reordered on
//! a real wire reach the application in order all the same (reordering of
//! whole messages, as a broker may do, is the session layer's unit tests').

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    task::AbortHandle,
    time::Instant,
};

/// What the link does to the bytes crossing it from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Pass,
    Late {
        latency: Duration,
        jitter: Duration,
    },
    /// Every connection closed; new ones accepted and closed at once.
    Down,
}

/// The proxy; it stops, with every connection through it, when dropped.
#[derive(Debug)]
pub struct Impairer {
    pub port: u16,
    link: Arc<watch::Sender<Link>>,
    accept: AbortHandle,
}

impl Impairer {
    /// Listens on a free loopback port, relaying to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Impairer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let link = Arc::new(watch::channel(Link::Pass).0);
        let accept = tokio::spawn(accept(listener, upstream, link.clone())).abort_handle();
        Ok(Impairer { port, link, accept })
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Impairer {
    fn drop(&mut self) {
        self.accept.abort();
        // Connections see the link down and close.
        self.link.send_replace(Link::Down);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, link: Arc<watch::Sender<Link>>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(relay(client, upstream, link.subscribe()));
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    if *link.borrow_and_update() == Link::Down {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (up, down) = (link.clone(), link.clone());
    let both = async {
        tokio::join!(
            pipe(client_read, server_write, up),
            pipe(server_read, client_write, down),
        )
    };
    tokio::select! {
        _ = both => {}
        _ = link.wait_for(|l| *l == Link::Down) => {}
    }
}

/// One direction: each read is written once its delay has passed, never
/// before an earlier one.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: watch::Receiver<Link>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let read = async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut last = Instant::now();
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let delay = match *link.borrow() {
                Link::Late { latency, jitter } => {
                    latency + jitter.mul_f64(rand::random_range(0.0..1.0))
                }
                Link::Pass | Link::Down => Duration::ZERO,
            };
            last = last.max(Instant::now() + delay);
            if tx.send((last, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(addr)
    }

    async fn round_trip(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(data).await?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn late_bytes_arrive_late_and_in_order_and_a_down_link_closes() -> std::io::Result<()> {
        let imp = Impairer::start(echo_server().await?).await?;
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(round_trip(imp.port, &data).await?, data);

        imp.set(Link::Late {
            latency: Duration::from_millis(200),
            jitter: Duration::from_millis(50),
        });
        let started = std::time::Instant::now();
        assert_eq!(round_trip(imp.port, &data).await?, data);
        assert!(started.elapsed() >= Duration::from_millis(400));

        let mut open = TcpStream::connect(("127.0.0.1", imp.port)).await?;
        imp.set(Link::Down);
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
        assert!(round_trip(imp.port, b"x").await.is_err());
        Ok(())
    }
}
