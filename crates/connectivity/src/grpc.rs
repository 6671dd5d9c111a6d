//! The gRPC transport: mutual TLS, one bidirectional `Tunnel.Link` stream
//! per link.
//!
//! aranya's listener asks every caller for a client certificate (TLS proves
//! the caller holds its key) and refuses any request made with one that does
//! not chain to a device CA; a caller without one gets a link too, marked
//! [`ClientAuth::Anonymous`], on which the handshake allows nothing but the
//! bootstrap exchange. One listener, so a device behind any load balancer
//! that passes TLS through reaches both.

use std::{net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{Stream as FutStream, StreamExt};
use rustls::{ServerConfig, pki_types::PrivateKeyDer};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server},
};

use crate::{
    link::{ClientAuth, DialFuture, Dialer, Link, TransportError},
    tls::{self, ClientCertCheck, OptionalClientCert},
};

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
/// Largest HTTP/2 frame either end accepts. At the default 16 KiB, a session
/// frame of up to 1 MiB crossed TLS one small write at a time: a third of
/// the syscalls on a bulk transfer were these writes.
const H2_FRAME: u32 = 1 << 20;

/// PEM material for the cloud's gRPC endpoint, and which client
/// certificates it lets through.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The device CAs' check; `None` asks callers for no certificate
    /// (server-only TLS: transport tests and the mTLS cost benchmark).
    pub client_certs: Option<Arc<dyn ClientCertCheck>>,
}

impl ServerTls {
    fn rustls_config(&self) -> Result<ServerConfig, TransportError> {
        let config = |what: &str, e: &dyn std::fmt::Display| {
            TransportError::Config(format!("gRPC TLS {what}: {e}"))
        };
        let certs = rustls_pemfile::certs(&mut &self.cert_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config("certificate", &e))?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &self.key_pem[..])
            .map_err(|e| config("key", &e))?
            .ok_or_else(|| config("key", &"no private key in the PEM"))?;
        let builder =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| config("versions", &e))?;
        let builder = match &self.client_certs {
            Some(_) => builder.with_client_cert_verifier(Arc::new(OptionalClientCert::new())),
            None => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(certs, key)
            .map_err(|e| config("certificate and key", &e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(server)
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

struct TunnelService {
    links: mpsc::Sender<Link>,
    client_certs: Option<Arc<dyn ClientCertCheck>>,
}

/// How the endpoint's refusal of a client certificate starts; the rest is
/// the cause, named as the TLS alert would be.
const REFUSED_PREFIX: &str = "device certificate refused: ";

fn refusal_name(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match e {
        E::UnknownIssuer => "UnknownCA".into(),
        E::Expired | E::ExpiredContext { .. } => "CertificateExpired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "CertificateNotValidYet".into(),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => "UnsupportedCertificate".into(),
        E::Revoked => "CertificateRevoked".into(),
        _ => "BadCertificate".into(),
    }
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
        // TLS proved the caller holds the certificate's key; whether the
        // certificate is a device CA's is decided here, before anything else
        // runs, and answered with a status that names the cause (a TLS 1.3
        // alert reaches a client after its handshake completed, and hyper
        // reports it only as "connection closed").
        let client_auth = match (request.peer_certs(), &self.client_certs) {
            (Some(chain), Some(check)) if !chain.is_empty() => {
                let der = chain[0].as_ref();
                if let Err(e) = check.check(der) {
                    tracing::debug!(%peer, error = ?e, "client certificate refused");
                    return Err(Status::unauthenticated(format!(
                        "{REFUSED_PREFIX}{}",
                        refusal_name(&e)
                    )));
                }
                ClientAuth::Certificate(Bytes::copy_from_slice(der))
            }
            _ => ClientAuth::Anonymous,
        };
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
            client_auth,
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.rustls_config()?));
    let service = pb::tunnel_server::TunnelServer::new(TunnelService {
        links,
        client_certs: tls.client_certs.clone(),
    })
    .max_decoding_message_size(MAX_PAYLOAD + 1024)
    .max_encoding_message_size(MAX_PAYLOAD + 1024);
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(H2_FRAME)
        .add_service(service)
        .serve_with_incoming_shutdown(tls::accept(listener, acceptor), shutdown)
        .await
        .map_err(|e| TransportError::Closed(format!("gRPC server: {e}")))
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
    /// The device's certificate and key (PEM) for mutual TLS; without one,
    /// aranya allows only the bootstrap exchange.
    pub client_certificate: Option<ClientCertificate>,
}

/// A device's TLS client credentials.
#[derive(Clone)]
pub struct ClientCertificate {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ClientCertificate").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for GrpcDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcDialer")
            .field("endpoint", &self.endpoint)
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.client_certificate.is_some())
            .finish_non_exhaustive()
    }
}

impl GrpcDialer {
    fn channel_endpoint(&self) -> Result<Endpoint, TransportError> {
        let host = match &self.server_name {
            Some(name) => name.clone(),
            None => host_of(&self.endpoint)?,
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(host);
        if let Some(client) = &self.client_certificate {
            tls = tls.identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        }
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
                    .max_frame_size(H2_FRAME)
            })
    }

    async fn dial_link(&self) -> Result<Link, TransportError> {
        let connect_err = |e: &(dyn std::error::Error + 'static)| {
            if self.client_certificate.is_some()
                && let Some(cause) = certificate_refusal(e)
            {
                return TransportError::CertificateRefused {
                    endpoint: self.endpoint.clone(),
                    cause,
                };
            }
            TransportError::Connect {
                endpoint: self.endpoint.clone(),
                reason: ErrorChain(e).to_string(),
            }
        };
        let channel: Channel = self
            .channel_endpoint()?
            .connect()
            .await
            .map_err(|e| connect_err(&e))?;
        let mut client = pb::tunnel_client::TunnelClient::new(channel)
            .max_decoding_message_size(MAX_PAYLOAD + 1024)
            .max_encoding_message_size(MAX_PAYLOAD + 1024);
        let (tx, rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
        let outbound = ReceiverStream::new(rx).map(|data| pb::Packet { data });
        let response = client.link(outbound).await.map_err(|s| connect_err(&s))?;
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
            client_auth: ClientAuth::NotVisible,
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

/// The cause with which aranya refused the device's certificate, if that is
/// what `e` is.
fn certificate_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let status = e.downcast_ref::<Status>()?;
    (status.code() == tonic::Code::Unauthenticated)
        .then(|| status.message().strip_prefix(REFUSED_PREFIX))
        .flatten()
        .map(str::to_string)
}

/// An error and its sources on one line, each source's text once (tonic's
/// `Status` prints its source again in its own text, so it shows its message).
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.downcast_ref::<Status>() {
            Some(status) => write!(f, "{}", status.message())?,
            None => write!(f, "{}", self.0)?,
        }
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
