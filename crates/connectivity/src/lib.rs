//! Transports and the session driver shared by aranya and arhat.
//!
//! A transport only moves bounded opaque messages over a [`link::Link`]; the
//! session layer ([`proto::session`]) makes streams exact on top of it, and
//! [`session::SessionDriver`] runs that state machine on tokio, handing the
//! application [`stream::Stream`]s with back-pressure.
//!
//! - [`link`]: the transport seam (a link, a dialer).
//! - [`grpc`]: the gRPC transport (one bidirectional stream per device).
//! - [`mqtt`]: the MQTT 3.1.1 transport (clients of a broker, per-device topics).
//! - [`handshake`]: Hello / Welcome / Refuse on a fresh link.
//! - [`session`]: the tokio driver around the sans-I/O session.
//! - [`stream`]: what the application reads and writes.
//! - [`tls`]: server TLS aranya's listeners share (optional client certificates).

pub mod grpc;
pub mod handshake;
pub mod link;
pub mod mqtt;
pub mod session;
pub mod splice;
pub mod stream;
pub mod tls;

pub use link::{ClientAuth, Dialer, Link, MIN_PAYLOAD, TransportError};
pub use session::{LinkState, SessionConfig, SessionHandle};
pub use stream::{Stream, StreamError, StreamReceiver, StreamSender};
