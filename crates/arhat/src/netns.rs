//! Dialing from inside another network namespace, as a kubelet's
//! port-forward does: a socket made there stays there, whichever thread
//! uses it after.

use std::{io, net::TcpStream, os::fd::AsFd, path::PathBuf, time::Duration};

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
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it changes namespace for good, so it must not be
    // one a pool would reuse.
    std::thread::Builder::new()
        .name("netns-dial".into())
        .spawn(move || {
            let connected = (|| -> io::Result<TcpStream> {
                let ns = std::fs::File::open(&namespace)?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
                    .next()
                    .ok_or_else(|| io::Error::other(format!("{host} has no address")))?;
                let stream = TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })();
            let _ = tx.send(connected);
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("dialing thread lost"))??;
    tokio::net::TcpStream::from_std(stream)
}
