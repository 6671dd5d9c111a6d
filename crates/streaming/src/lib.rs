//! The stream protocols the apiserver speaks to a kubelet for exec, attach
//! and port-forward, on top of [`spdy`]. What they carry comes out as plain
//! tokio channels ([`ExecIo`], [`Forward`]), so the code that runs the
//! process or dials the port never sees the wire (as virtual-kubelet's
//! `AttachIO`).
//!
//! - [`negotiate`]: choosing the protocol from the upgrade request.
//! - [`remotecommand`]: exec and attach (`v4.channel.k8s.io` and older).
//! - [`portforward`]: port-forward (`portforward.k8s.io`).
//! - [`websocket`]: exec, attach and port-forward over the WebSocket
//!   channel protocols.
//! - [`tunnel`]: SPDY carried in a WebSocket (kubectl's port-forward).
//! - [`status`]: the exit status a v4 client reads from the error stream.

pub mod negotiate;
pub mod portforward;
pub mod remotecommand;
pub mod status;
#[cfg(test)]
mod testutil;
pub mod tunnel;
pub mod websocket;

pub use portforward::{ClientGone, Forward};
pub use remotecommand::{ExecIo, ExecOptions, Outcome, TerminalSize};
