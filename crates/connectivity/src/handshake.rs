//! The first exchange on a fresh link, the same on every transport: the
//! device says Hello (with its certificate, or a bootstrap request), the
//! cloud challenges it with a nonce, the device proves what it claimed over
//! that nonce and the exact Hello bytes it sent, and the cloud answers
//! Welcome (session id and epoch), Issued (a bootstrap's certificate) or
//! Refuse (with a reason) at any step.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use proto::envelope::{Body, Envelope, Hello, Issued, Refuse, RefuseReason, Welcome};

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
    /// The device could not compute its proof (its key is unusable).
    #[error("proving the device's identity: {0}")]
    Prove(String),
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

/// What the device proves in answer to a challenge: a signature with its
/// certificate's key, or a MAC with its bootstrap token.
pub trait Prover: Send + Sync {
    /// The proof over aranya's `nonce` and the Hello envelope `hello` as sent.
    fn prove(&self, nonce: &[u8], hello: &[u8]) -> Result<Vec<u8>, String>;
}

/// The cloud's final answer to a device that proved itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// A session starts or resumes.
    Welcome(Welcome),
    /// A bootstrap's certificate (PEM).
    Issued(String),
}

fn refused(Refuse { reason, message }: Refuse) -> HandshakeError {
    HandshakeError::Refused {
        reason: RefuseReason::try_from(reason).unwrap_or(RefuseReason::Unspecified),
        message,
    }
}

/// Device side: sends `hello`, answers the challenge with `prover`, and
/// returns the cloud's Welcome or Issued.
pub async fn hello(
    link: &mut Link,
    hello: Hello,
    prover: &dyn Prover,
    timeout: Duration,
) -> Result<Accepted, HandshakeError> {
    let sent = Envelope::hello(hello).to_bytes();
    link.tx
        .send(sent.clone())
        .await
        .map_err(|_| HandshakeError::Closed)?;
    let nonce = match next_envelope(link, timeout).await?.body {
        Some(Body::Challenge(c)) => c.nonce,
        Some(Body::Refuse(r)) => return Err(refused(r)),
        other => {
            return Err(HandshakeError::Protocol(format!(
                "expected challenge or refuse, got {}",
                body_name(other.as_ref())
            )));
        }
    };
    let proof = prover.prove(&nonce, &sent).map_err(HandshakeError::Prove)?;
    send(link, Envelope::proof(proof)).await?;
    match next_envelope(link, timeout).await?.body {
        Some(Body::Welcome(w)) => Ok(Accepted::Welcome(w)),
        Some(Body::Issued(Issued { certificate })) => Ok(Accepted::Issued(certificate)),
        Some(Body::Refuse(r)) => Err(refused(r)),
        other => Err(HandshakeError::Protocol(format!(
            "expected welcome, issued or refuse, got {}",
            body_name(other.as_ref())
        ))),
    }
}

/// A Hello as the cloud received it: decoded, and the bytes the proof covers.
#[derive(Debug, Clone)]
pub struct ReceivedHello {
    pub hello: Hello,
    pub bytes: Bytes,
}

/// Cloud side: reads the device's Hello.
pub async fn read_hello(
    link: &mut Link,
    timeout: Duration,
) -> Result<ReceivedHello, HandshakeError> {
    let next = tokio::time::timeout(timeout, link.rx.next())
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?;
    let bytes = next.ok_or(HandshakeError::Closed)??;
    let envelope = Envelope::from_bytes(bytes.clone())
        .map_err(|e| HandshakeError::Protocol(format!("malformed envelope: {e}")))?;
    match envelope.body {
        Some(Body::Hello(hello)) => Ok(ReceivedHello { hello, bytes }),
        other => Err(HandshakeError::Protocol(format!(
            "expected hello, got {}",
            body_name(other.as_ref())
        ))),
    }
}

/// Cloud side: sends `nonce` and returns the device's proof.
pub async fn challenge(
    link: &mut Link,
    nonce: &[u8],
    timeout: Duration,
) -> Result<Bytes, HandshakeError> {
    send(link, Envelope::challenge(Bytes::copy_from_slice(nonce))).await?;
    match next_envelope(link, timeout).await?.body {
        Some(Body::Proof(p)) => Ok(p.signature),
        other => Err(HandshakeError::Protocol(format!(
            "expected proof, got {}",
            body_name(other.as_ref())
        ))),
    }
}

/// Cloud side: a bootstrap's certificate; the device dials again with it.
pub async fn issued(link: &mut Link, certificate_pem: &str) -> Result<(), HandshakeError> {
    send(link, Envelope::issued(certificate_pem)).await
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
        Some(Body::Challenge(_)) => "challenge",
        Some(Body::Proof(_)) => "proof",
        Some(Body::Issued(_)) => "issued",
    }
}
