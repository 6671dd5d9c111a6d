//! SPDY/3.1 as the Kubernetes apiserver and kubectl speak it to a kubelet.
//!
//! - [`frame`]: frames and their codec, split reads welcome.
//! - [`headers`]: header blocks and their zlib contexts (SPDY dictionary).
//! - [`connection`]: a server connection's state machine, bytes in, events
//!   and bytes out, no I/O.
//! - [`driver`]: runs a [`Connection`] over a tokio socket and hands out
//!   streams.
//!
//! Only the server side is built: the apiserver always dials the kubelet.

pub mod connection;
mod dictionary;
pub mod driver;
pub mod error;
pub mod frame;
pub mod headers;

pub use connection::{Config, Connection, Event};
pub use error::{ConnectionError, Malformed, StreamClosed, Violation};
pub use frame::{Frame, GoAwayStatus, RstStatus};
pub use headers::Headers;
