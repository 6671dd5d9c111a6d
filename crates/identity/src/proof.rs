//! What a device proves in the handshake, on every transport: aranya sends a
//! fresh nonce, and the device answers with a signature (its certificate's
//! key) or an HMAC (its bootstrap token's secret) over a transcript binding
//! that nonce to the exact Hello it sent. A replayed or relayed answer names
//! another nonce or another Hello and fails.

use ring::{digest, hmac};
use rustls_pki_types::CertificateDer;

use crate::{
    key::{DeviceKey, KeyError},
    token::BootstrapToken,
};

/// Bytes of aranya's challenge nonce.
pub const NONCE_LEN: usize = 32;

/// Domain separation: a session signature can never pass as anything else.
const SESSION_DOMAIN: &[u8] = b"aranya.arhat.dev/device-proof/session/v1\0";
const BOOTSTRAP_DOMAIN: &[u8] = b"aranya.arhat.dev/device-proof/bootstrap/v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the challenge nonce must be {NONCE_LEN} bytes, got {0}")]
    Nonce(usize),
    #[error("the certificate cannot check signatures: {0}")]
    Certificate(String),
    #[error("the signature does not match the certificate's key")]
    BadSignature,
    #[error("the proof does not match the bootstrap token")]
    BadToken,
}

/// A fresh random challenge.
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

fn transcript(domain: &[u8], nonce: &[u8], hello: &[u8]) -> Result<Vec<u8>, ProofError> {
    if nonce.len() != NONCE_LEN {
        return Err(ProofError::Nonce(nonce.len()));
    }
    let mut t = Vec::with_capacity(domain.len() + NONCE_LEN + 32);
    t.extend_from_slice(domain);
    t.extend_from_slice(nonce);
    t.extend_from_slice(digest::digest(&digest::SHA256, hello).as_ref());
    Ok(t)
}

/// Device side: signs the challenge for a session (the Hello carries the certificate).
pub fn sign_session(key: &DeviceKey, nonce: &[u8], hello: &[u8]) -> Result<Vec<u8>, SignError> {
    let t = transcript(SESSION_DOMAIN, nonce, hello)?;
    Ok(key.sign(&t)?)
}

/// Cloud side: checks a session signature against the (already verified) certificate.
pub fn verify_session(
    cert_der: &[u8],
    nonce: &[u8],
    hello: &[u8],
    signature: &[u8],
) -> Result<(), ProofError> {
    let t = transcript(SESSION_DOMAIN, nonce, hello)?;
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| ProofError::Certificate(e.to_string()))?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, &t, signature)
        .map_err(|_| ProofError::BadSignature)
}

/// Device side: proves it holds `token` (the secret itself never travels).
pub fn token_proof(
    token: &BootstrapToken,
    nonce: &[u8],
    hello: &[u8],
) -> Result<Vec<u8>, ProofError> {
    let t = transcript(BOOTSTRAP_DOMAIN, nonce, hello)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.secret().as_bytes());
    Ok(hmac::sign(&key, &t).as_ref().to_vec())
}

/// Cloud side: checks a token proof in constant time.
pub fn verify_token(
    token: &BootstrapToken,
    nonce: &[u8],
    hello: &[u8],
    proof: &[u8],
) -> Result<(), ProofError> {
    let t = transcript(BOOTSTRAP_DOMAIN, nonce, hello)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.secret().as_bytes());
    hmac::verify(&key, &t, proof).map_err(|_| ProofError::BadToken)
}

/// Signing failed on the device: its key, or a malformed challenge.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Challenge(#[from] ProofError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceCa, name};
    use std::time::{Duration, SystemTime};

    fn issued(key: &DeviceKey) -> Vec<u8> {
        let ca = DeviceCa::generate("test device CA").expect("ca");
        let csr = key.csr_der("edge-1").expect("csr");
        let pem = ca
            .issue(
                &csr,
                "edge-1",
                &name::new_identity_id(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .expect("issued");
        crate::cert::first_pem_certificate(pem.as_bytes()).expect("der")
    }

    #[test]
    fn a_signature_binds_the_key_the_nonce_and_the_hello() {
        let key = DeviceKey::generate().expect("key");
        let cert = issued(&key);
        let n = nonce();
        let sig = sign_session(&key, &n, b"hello").expect("signed");
        verify_session(&cert, &n, b"hello", &sig).expect("valid");
        assert_eq!(
            verify_session(&cert, &nonce(), b"hello", &sig),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify_session(&cert, &n, b"hellp", &sig),
            Err(ProofError::BadSignature)
        );
        let other = DeviceKey::generate().expect("key");
        let forged = sign_session(&other, &n, b"hello").expect("signed");
        assert_eq!(
            verify_session(&cert, &n, b"hello", &forged),
            Err(ProofError::BadSignature)
        );
        assert_eq!(
            verify_session(&cert, &n[..5], b"hello", &sig),
            Err(ProofError::Nonce(5))
        );
    }

    #[test]
    fn a_token_proof_needs_the_secret() {
        let token = BootstrapToken::generate();
        let n = nonce();
        let proof = token_proof(&token, &n, b"hello").expect("proof");
        verify_token(&token, &n, b"hello", &proof).expect("valid");
        let other = BootstrapToken::generate();
        assert_eq!(
            verify_token(&other, &n, b"hello", &proof),
            Err(ProofError::BadToken)
        );
        assert_eq!(
            verify_token(&token, &nonce(), b"hello", &proof),
            Err(ProofError::BadToken)
        );
    }

    #[test]
    fn a_token_proof_is_no_session_signature() {
        let token = BootstrapToken::generate();
        let n = nonce();
        let a = token_proof(&token, &n, b"x").expect("proof");
        assert_ne!(
            transcript(SESSION_DOMAIN, &n, b"x").expect("t"),
            transcript(BOOTSTRAP_DOMAIN, &n, b"x").expect("t")
        );
        assert_eq!(a.len(), 32);
    }
}
