//! The floor under the aranya↔arhat segment, for the benchmarks: the same
//! hops (TLS from the client to the first relay, TLS from it to the second,
//! plain TCP from there to the target) with nothing in them but TLS and byte
//! copies. Each relay runs on a tokio runtime of its own with two workers,
//! as aranya and arhat do. What the segment costs beyond this chain is
//! ours to cut; what the chain costs against a direct connection is the
//! price of two TLS relays on this machine.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::Context as _;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use crate::kubelet::{Caller, client_config};

/// Each relay's copy buffer per direction.
const BUFFER: usize = 64 * 1024;
/// The name both relays' certificate is for.
const NAME: &str = "relay.bench";

/// Two TLS relays in a row in front of `target`. Dropping it stops them.
pub struct RelayChain {
    front: SocketAddr,
    connector: TlsConnector,
    runtimes: Vec<tokio::runtime::Runtime>,
}

/// Where a relay sends what it accepts.
#[derive(Clone)]
enum Next {
    Tls(SocketAddr, TlsConnector),
    Plain(SocketAddr),
}

impl RelayChain {
    /// Starts both relays, with a server certificate from `ca`.
    pub fn start(ca: &testbed::Ca, target: SocketAddr) -> anyhow::Result<Self> {
        let issued = ca.issue_server(NAME, &[NAME], &[])?;
        let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let connector =
            TlsConnector::from(Arc::new(client_config(ca.cert_pem(), Caller::Anonymous)?));
        let mut runtimes = Vec::new();
        let mut next = Next::Plain(target);
        // The far relay first: the near one dials it.
        for _ in 0..2 {
            let (runtime, listener, addr) = serving(2)?;
            runtime.spawn(relay(listener, acceptor.clone(), next));
            runtimes.push(runtime);
            next = Next::Tls(addr, connector.clone());
        }
        let Next::Tls(front, _) = next else {
            unreachable!("two relays were started");
        };
        Ok(Self {
            front,
            connector,
            runtimes,
        })
    }

    /// A TLS connection through both relays to the target.
    pub async fn connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        dial_tls(self.front, &self.connector).await
    }
}

impl std::fmt::Debug for RelayChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayChain")
            .field("front", &self.front)
            .finish_non_exhaustive()
    }
}

impl Drop for RelayChain {
    fn drop(&mut self) {
        // Dropped from async code, where a runtime may not block to stop.
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

/// A runtime of `workers` threads of its own, and a loopback listener for it.
fn serving(
    workers: usize,
) -> anyhow::Result<(tokio::runtime::Runtime, std::net::TcpListener, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((runtime, listener, addr))
}

async fn dial_tls(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the relay at {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(NAME)?;
    connector
        .connect(name, tcp)
        .await
        .context("TLS handshake with the relay")
}

async fn relay(listener: std::net::TcpListener, acceptor: TlsAcceptor, next: Next) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    while let Ok((socket, _)) = listener.accept().await {
        let (acceptor, next) = (acceptor.clone(), next.clone());
        tokio::spawn(async move {
            let _ = socket.set_nodelay(true);
            let Ok(inbound) = acceptor.accept(socket).await else {
                return;
            };
            match next {
                Next::Tls(addr, connector) => {
                    if let Ok(outbound) = dial_tls(addr, &connector).await {
                        splice(inbound, outbound).await;
                    }
                }
                Next::Plain(addr) => {
                    if let Ok(outbound) = TcpStream::connect(addr).await {
                        let _ = outbound.set_nodelay(true);
                        splice(inbound, outbound).await;
                    }
                }
            }
        });
    }
}

/// Copies both ways until both sides have finished.
async fn splice<A, B>(mut a: A, mut b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER).await;
}

/// A TCP server echoing every byte back, on a runtime of its own: the far
/// end of the floor's interactive round trip.
#[derive(Debug)]
pub struct Echo {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Echo {
    pub fn start() -> anyhow::Result<Self> {
        let (runtime, listener, addr) = serving(1)?;
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = socket.set_nodelay(true);
                    let (mut read, mut write) = socket.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Ok(Self {
            addr,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
