//! The first exchange on a fresh link: the device says Hello, the cloud
//! answers Welcome (session id and epoch) or Refuse (with a reason).

use std::time::Duration;

use futures::StreamExt;
use proto::envelope::{Body, Envelope, Hello, Refuse, RefuseReason, Welcome};

use crate::link::{Link, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The cloud refused this device, saying why.
    #[error("refused by aranya ({reason:?}): {message}")]
    Refused {
        reason: RefuseReason,
        message: String,
    },
    /// The peer sent something other than the expected handshake message.
    #[error("handshake violated: {0}")]
    Protocol(String),
    #[error("no handshake answer within {0:?}")]
    Timeout(Duration),
    #[error("link closed during the handshake")]
    Closed,
}

impl HandshakeError {
    /// Whether trying again later may succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

async fn next_envelope(link: &mut Link, timeout: Duration) -> Result<Envelope, HandshakeError> {
    let next = tokio::time::timeout(timeout, link.rx.next())
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?;
    let bytes = next.ok_or(HandshakeError::Closed)??;
    Envelope::from_bytes(bytes)
        .map_err(|e| HandshakeError::Protocol(format!("malformed envelope: {e}")))
}

async fn send(link: &mut Link, envelope: Envelope) -> Result<(), HandshakeError> {
    link.tx
        .send(envelope.to_bytes())
        .await
        .map_err(|_| HandshakeError::Closed)
}

/// Device side: sends `hello`, returns the cloud's Welcome.
pub async fn hello(
    link: &mut Link,
    hello: Hello,
    timeout: Duration,
) -> Result<Welcome, HandshakeError> {
    send(link, Envelope::hello(hello)).await?;
    match next_envelope(link, timeout).await?.body {
        Some(Body::Welcome(w)) => Ok(w),
        Some(Body::Refuse(Refuse { reason, message })) => Err(HandshakeError::Refused {
            reason: RefuseReason::try_from(reason).unwrap_or(RefuseReason::Unspecified),
            message,
        }),
        other => Err(HandshakeError::Protocol(format!(
            "expected welcome or refuse, got {}",
            body_name(other.as_ref())
        ))),
    }
}

/// Cloud side: reads the device's Hello.
pub async fn read_hello(link: &mut Link, timeout: Duration) -> Result<Hello, HandshakeError> {
    match next_envelope(link, timeout).await?.body {
        Some(Body::Hello(h)) => Ok(h),
        other => Err(HandshakeError::Protocol(format!(
            "expected hello, got {}",
            body_name(other.as_ref())
        ))),
    }
}

pub async fn welcome(link: &mut Link, welcome: Welcome) -> Result<(), HandshakeError> {
    send(link, Envelope::welcome(welcome)).await
}

/// Refuses the device; the link is dropped by the caller afterwards.
pub async fn refuse(
    link: &mut Link,
    reason: RefuseReason,
    message: &str,
) -> Result<(), HandshakeError> {
    send(link, Envelope::refuse(reason, message)).await
}

fn body_name(body: Option<&Body>) -> &'static str {
    match body {
        None => "an empty envelope",
        Some(Body::Hello(_)) => "hello",
        Some(Body::Welcome(_)) => "welcome",
        Some(Body::Refuse(_)) => "refuse",
        Some(Body::Frame(_)) => "a session frame",
    }
}
