//! Dialing from inside another network namespace, as a kubelet's
//! port-forward does: a socket made there stays there, whichever thread
//! uses it after.

use std::{
    io,
    net::{SocketAddr, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::PathBuf,
    time::Duration,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `127.0.0.1:port` in the namespace at `namespace`.
pub async fn dial(namespace: PathBuf, port: u16) -> io::Result<tokio::net::TcpStream> {
    dial_host(namespace, "127.0.0.1".into(), port, CONNECT_TIMEOUT).await
}

/// Connects to `host:port` (an address, or a name resolved by the device)
/// from inside the namespace at `namespace`.
pub async fn dial_host(
    namespace: PathBuf,
    host: String,
    port: u16,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let stream = inside(namespace, move || {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
            .next()
            .ok_or_else(|| io::Error::other(format!("{host} has no address")))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })
    .await?;
    tokio::net::TcpStream::from_std(stream)
}

/// A UDP socket made inside the namespace at `namespace`, connected to `addr`.
pub async fn udp(namespace: PathBuf, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let socket = inside(namespace, move || {
        let any: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any)?;
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
    .await?;
    tokio::net::UdpSocket::from_std(socket)
}

/// Runs `make` on a thread moved into the namespace at `namespace`: the
/// sockets it makes belong there.
pub async fn inside<T: Send + 'static>(
    namespace: PathBuf,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it changes namespace for good, so it must not be
    // one a pool would reuse.
    std::thread::Builder::new()
        .name("netns-dial".into())
        .spawn(move || {
            let made = (|| {
                let ns = std::fs::File::open(&namespace)?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                make()
            })();
            let _ = tx.send(made);
        })?;
    rx.await
        .map_err(|_| io::Error::other("dialing thread lost"))?
}
