//! The transport seam: a link moves bounded opaque messages in both directions.

use std::{fmt, future::Future, pin::Pin};

use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

/// Every transport carries messages of at least this many bytes; a session's
/// open headers are kept small enough for it, so a session can move between
/// transports of any payload size.
pub const MIN_PAYLOAD: usize = 4096;

/// Failures of a transport, before any session exists.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address or TLS material in the configuration is unusable.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// Could not reach the peer.
    #[error("connect to {endpoint} failed: {reason}")]
    Connect { endpoint: String, reason: String },
    /// aranya refused the device's TLS client certificate (`UnknownCA`,
    /// `CertificateExpired`, named as the TLS alerts): it will not do on a retry.
    #[error("{endpoint} refused the device certificate ({cause})")]
    CertificateRefused { endpoint: String, cause: String },
    /// The link broke after it was established.
    #[error("link closed: {0}")]
    Closed(String),
}

/// One live connection of a transport. Dropping it closes the connection.
pub struct Link {
    /// Messages to the peer; bounded, so a slow transport pushes back.
    pub tx: mpsc::Sender<Bytes>,
    /// Messages from the peer, until the link breaks.
    pub rx: BoxStream<'static, Result<Bytes, TransportError>>,
    /// Largest message this transport carries.
    pub max_payload: usize,
    /// Who is on the other side, for logs (an address, a broker topic).
    pub peer: String,
    /// Transport name ("grpc", "mqtt"), for logs and node status.
    pub transport: &'static str,
    /// What the transport's own TLS says about the device.
    pub client_auth: ClientAuth,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("transport", &self.transport)
            .field("peer", &self.peer)
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

/// What a transport's TLS established about the device on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// The transport cannot see the device's TLS (a broker stands between),
    /// or this is the device's side: the handshake's proof is all there is.
    NotVisible,
    /// The device presented no client certificate: it may only bootstrap.
    Anonymous,
    /// The device's client certificate (DER), chained to a device CA and its
    /// key proven by TLS; the Hello must carry the same certificate.
    Certificate(Bytes),
}

/// A future a dialer returns; boxed so dialers can sit behind `dyn`.
pub type DialFuture<'a> = Pin<Box<dyn Future<Output = Result<Link, TransportError>> + Send + 'a>>;

/// The device side of a transport: makes a new link to the cloud.
pub trait Dialer: Send + Sync + fmt::Debug {
    /// Transport name, as in the EdgeDevice's `spec.connectivity.methods[].name`.
    fn name(&self) -> &'static str;
    fn dial(&self) -> DialFuture<'_>;
}
