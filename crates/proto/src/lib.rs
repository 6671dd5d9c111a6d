//! The aranya <-> arhat wire protocol, with no I/O.
//!
//! - [`envelope`]: what a transport carries; the connection handshake and session frames.
//! - [`session`]: the session layer state machine: multiplexed, ordered, exactly-once,
//!   flow-controlled streams over any transport that moves bounded opaque messages.
//! - [`api`]: the messages aranya and arhat exchange on those streams.
//! - [`exec`]: the exec/attach stream's sequence, both sides of it.

pub mod api;
pub mod envelope;
pub mod exec;
pub mod session;
