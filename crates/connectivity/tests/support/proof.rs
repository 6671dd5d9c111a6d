//! The handshake's challenge step for transport tests, which check links,
//! not identities (aranya's tests check those): any proof is accepted.

use std::time::Duration;

use connectivity::{Link, handshake};
use proto::envelope::{Hello, Welcome};

pub struct AnyProof;

impl handshake::Prover for AnyProof {
    fn prove(&self, nonce: &[u8], _hello: &[u8]) -> Result<Vec<u8>, String> {
        Ok(nonce.to_vec())
    }
}

/// Cloud side: reads the Hello, challenges it, returns the Hello.
pub async fn accept(
    link: &mut Link,
    timeout: Duration,
) -> Result<Hello, handshake::HandshakeError> {
    let received = handshake::read_hello(link, timeout).await?;
    let nonce = [7u8; 32];
    let proof = handshake::challenge(link, &nonce, timeout).await?;
    assert_eq!(&proof[..], &nonce[..], "the device answered this challenge");
    Ok(received.hello)
}

/// Device side: says `hello` and expects a Welcome.
pub async fn hello(
    link: &mut Link,
    hello: Hello,
    timeout: Duration,
) -> Result<Welcome, handshake::HandshakeError> {
    match handshake::hello(link, hello, &AnyProof, timeout).await? {
        handshake::Accepted::Welcome(w) => Ok(w),
        other => Err(handshake::HandshakeError::Protocol(format!("{other:?}"))),
    }
}
