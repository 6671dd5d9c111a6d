//! The gRPC transport: TLS, one bidirectional `Tunnel.Link` stream per link.

use std::{net::SocketAddr, pin::Pin, time::Duration};

use bytes::Bytes;
use futures::{Stream as FutStream, StreamExt};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{
        Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
    },
};

use crate::link::{DialFuture, Dialer, Link, TransportError};

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
mod pb {
    tonic::include_proto!("arhat.tunnel");
}

/// Largest message either side sends over gRPC; the session layer chunks to it.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Messages queued toward the peer before the sender waits.
const LINK_QUEUE: usize = 64;
/// HTTP/2 pings notice a half-open connection without waiting for TCP
/// (aranya's side; a device sets its own).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 receive windows, both ends. The session layer does its own flow
/// control (at most `max_inflight` unacknowledged bytes per session), so these
/// only have to stay out of its way: hyper's server default held uploads from
/// the device to a few tens of MiB/s on loopback.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// PEM material for the cloud's gRPC endpoint.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

struct TunnelService {
    links: mpsc::Sender<Link>,
}

type PacketStream = Pin<Box<dyn FutStream<Item = Result<pb::Packet, Status>> + Send>>;

#[tonic::async_trait]
impl pb::tunnel_server::Tunnel for TunnelService {
    type LinkStream = PacketStream;

    async fn link(
        &self,
        request: Request<Streaming<pb::Packet>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let inbound = request
            .into_inner()
            .map(|r| {
                r.map(|p| p.data)
                    .map_err(|s| TransportError::Closed(s.message().to_string()))
            })
            .boxed();
        let (tx, rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
        let link = Link {
            tx,
            rx: inbound,
            max_payload: MAX_PAYLOAD,
            peer,
            transport: "grpc",
            peer_certificate: None,
        };
        self.links
            .send(link)
            .await
            .map_err(|_| Status::unavailable("aranya is shutting down"))?;
        let outbound = ReceiverStream::new(rx).map(|data| Ok(pb::Packet { data }));
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// Serves the tunnel on `listener` until `shutdown` resolves; every accepted
/// device connection arrives on `links`.
pub async fn serve(
    listener: TcpListener,
    tls: ServerTls,
    links: mpsc::Sender<Link>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), TransportError> {
    let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
    let service = pb::tunnel_server::TunnelServer::new(TunnelService { links })
        .max_decoding_message_size(MAX_PAYLOAD + 1024)
        .max_encoding_message_size(MAX_PAYLOAD + 1024);
    Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .map_err(|e| TransportError::Config(format!("gRPC TLS: {e}")))?
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| TransportError::Closed(format!("gRPC server: {e}")))
}

/// Accepted connections with Nagle off: session frames are small and
/// latency-bound (an interactive shell, acknowledgements).
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on a gRPC connection");
            }
        })
    })
}

/// How a device reaches the cloud over gRPC.
#[derive(Clone)]
pub struct GrpcDialer {
    /// `host:port` of aranya's gRPC endpoint.
    pub endpoint: String,
    /// PEM CA bundle that signed aranya's certificate.
    pub ca_pem: Vec<u8>,
    /// Name to verify in aranya's certificate; defaults to the endpoint's host.
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval; the link is dead when a ping goes unanswered for
    /// twice this.
    pub keepalive: Duration,
}

impl std::fmt::Debug for GrpcDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcDialer")
            .field("endpoint", &self.endpoint)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl GrpcDialer {
    fn channel_endpoint(&self) -> Result<Endpoint, TransportError> {
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(&self.endpoint)?,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(host);
        Endpoint::from_shared(format!("https://{}", self.endpoint))
            .map_err(|e| TransportError::Config(format!("gRPC endpoint {:?}: {e}", self.endpoint)))?
            .tls_config(tls)
            .map_err(|e| TransportError::Config(format!("gRPC TLS: {e}")))
            .map(|e| {
                e.connect_timeout(self.connect_timeout)
                    .http2_keep_alive_interval(self.keepalive)
                    .keep_alive_timeout(self.keepalive * 2)
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
                    .initial_stream_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
            })
    }

    async fn dial_link(&self) -> Result<Link, TransportError> {
        let connect_err = |e: &dyn std::fmt::Display| TransportError::Connect {
            endpoint: self.endpoint.clone(),
            reason: error_chain(e),
        };
        let channel: Channel = self
            .channel_endpoint()?
            .connect()
            .await
            .map_err(|e| connect_err(&ErrorChain(&e)))?;
        let mut client = pb::tunnel_client::TunnelClient::new(channel)
            .max_decoding_message_size(MAX_PAYLOAD + 1024)
            .max_encoding_message_size(MAX_PAYLOAD + 1024);
        let (tx, rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
        let outbound = ReceiverStream::new(rx).map(|data| pb::Packet { data });
        let response = client
            .link(outbound)
            .await
            .map_err(|s| connect_err(&s.message()))?;
        let inbound = response
            .into_inner()
            .map(|r| {
                r.map(|p| p.data)
                    .map_err(|s| TransportError::Closed(s.message().to_string()))
            })
            .boxed();
        Ok(Link {
            tx,
            rx: inbound,
            max_payload: MAX_PAYLOAD,
            peer: self.endpoint.clone(),
            transport: "grpc",
            peer_certificate: None,
        })
    }
}

impl Dialer for GrpcDialer {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn dial(&self) -> DialFuture<'_> {
        Box::pin(self.dial_link())
    }
}

fn host_of(endpoint: &str) -> Result<String, TransportError> {
    let parsed: Result<SocketAddr, _> = endpoint.parse();
    if let Ok(addr) = parsed {
        return Ok(addr.ip().to_string());
    }
    endpoint
        .rsplit_once(':')
        .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            TransportError::Config(format!("gRPC endpoint {endpoint:?} is not host:port"))
        })
}

struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

fn error_chain(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}
