//! Server-side TLS both of aranya's listeners share: a client certificate
//! asked for but not required (each listener checks it and answers with a
//! reason), and connections accepted with their handshakes in parallel.

use std::{fmt, time::Duration};

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

/// Which client certificates a listener accepts, checked before any
/// request is served.
pub trait ClientCertCheck: Send + Sync + fmt::Debug {
    /// `end_entity` (DER) is acceptable; the error names why not, as the
    /// TLS alert would.
    fn check(&self, end_entity: &[u8]) -> Result<(), CertificateError>;
}

/// Asks clients for a certificate without requiring one and accepts any
/// chain, so that the listener can answer an untrusted one with a reason
/// (a 401, a gRPC status) instead of an alert the client may never read;
/// the handshake signature is still verified, so a peer certificate proves
/// possession of its key. Peer certificates of such a connection are
/// *unverified*: the listener checks them before use.
///
/// No CA hints are sent: Go clients (the apiserver) withhold their
/// certificate when hints are given and theirs does not match, and a CA
/// rotation would need them changed on the fly.
#[derive(Debug)]
pub struct OptionalClientCert {
    /// The signature algorithms handshakes are verified with.
    pub algs: WebPkiSupportedAlgorithms,
}

impl Default for OptionalClientCert {
    fn default() -> Self {
        Self::new()
    }
}

impl OptionalClientCert {
    pub fn new() -> Self {
        Self {
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A handshake that has not finished by then is dropped (a slow or silent
/// client must not hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// TLS connections accepted on `listener`, each handshake in its own task so
/// one slow client never delays another; failed handshakes are logged and
/// dropped. Ends when the returned stream is dropped.
pub fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Session frames are small and latency-bound: Nagle off.
            if let Err(e) = tcp.set_nodelay(true) {
                debug!(%peer, error = %e, "TCP_NODELAY");
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
