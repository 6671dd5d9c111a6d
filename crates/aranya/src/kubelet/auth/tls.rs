//! What the kubelet endpoint's TLS asks of clients.

use std::sync::Arc;

use connectivity::tls::OptionalClientCert;
use rustls::server::danger::ClientCertVerifier;

/// Asks clients for a certificate, does not require one, and accepts any
/// chain: whether it is trusted is decided per request by
/// [`Auth::authenticate`], so an untrusted certificate gets a 401 (and may be
/// outranked by a valid token) instead of a handshake failure. The handshake
/// signature is still verified, so a peer certificate proves possession of
/// its key.
///
/// Peer certificates of such a connection are *unverified*: never use them
/// other than through [`Auth::authenticate`].
///
/// [`Auth::authenticate`]: super::Auth::authenticate
pub fn client_cert_verifier() -> Arc<dyn ClientCertVerifier> {
    Arc::new(any_client_cert())
}

pub(super) fn any_client_cert() -> OptionalClientCert {
    OptionalClientCert::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::auth::{Auth, ClientCa, test_support::*};
    use http::StatusCode;
    use rcgen::{CertificateParams, KeyPair};

    // --- TLS -----------------------------------------------------------------

    /// A real handshake: the client presents a certificate from a CA the
    /// server does not trust; TLS succeeds, the server sees the certificate,
    /// and authentication (not TLS) refuses it.
    async fn handshake(version: &'static rustls::SupportedProtocolVersion) {
        use rustls::{ClientConfig, RootCertStore, ServerConfig, pki_types::PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_key = KeyPair::generate().expect("key");
        let server_cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&server_key)
            .expect("cert");
        let auth = Auth::with_reviewer(
            Box::new(Arc::new(Fake::default())),
            ClientCa::from_pem(ca("client-ca").pem.as_bytes()).expect("bundle"),
        );
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_client_cert_verifier(auth.client_cert_verifier())
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .expect("server config");

        let mut roots = RootCertStore::empty();
        roots.add(server_cert.der().clone()).expect("root");
        let foreign_ca = ca("foreign");
        let (client_cert, client_key) = leaf_with(&foreign_ca, |_| {});
        let with_cert = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(
                vec![client_cert.clone()],
                PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
            )
            .expect("client config");
        let without_cert = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();

        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        for (client, expect_cert) in [(with_cert, true), (without_cert, false)] {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let client_side = async move {
                let mut tls = connector
                    .connect(name, client_io)
                    .await
                    .expect("client handshake");
                tls.write_all(b"ping").await.expect("write");
                tls.flush().await.expect("flush");
                tls
            };
            let server_side = async {
                let mut tls = acceptor.accept(server_io).await.expect("server handshake");
                let mut buf = [0; 4];
                tls.read_exact(&mut buf).await.expect("read");
                assert_eq!(&buf, b"ping");
                tls.get_ref().1.peer_certificates().map(|chain| {
                    chain
                        .iter()
                        .map(|c| c.clone().into_owned())
                        .collect::<Vec<_>>()
                })
            };
            let (_client, peer) = tokio::join!(client_side, server_side);
            if expect_cert {
                let peer = peer.expect("the client's certificate");
                assert_eq!(peer, vec![client_cert.clone()]);
                let err = auth
                    .authenticate(Some(&peer), None)
                    .await
                    .expect_err("untrusted");
                assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
            } else {
                assert!(peer.is_none_or(|chain| chain.is_empty()));
            }
        }
    }

    #[tokio::test]
    async fn tls13_accepts_an_untrusted_client_certificate() {
        handshake(&rustls::version::TLS13).await;
    }

    #[tokio::test]
    async fn tls12_accepts_an_untrusted_client_certificate() {
        handshake(&rustls::version::TLS12).await;
    }

    #[test]
    fn verifier_offers_but_does_not_require() {
        let verifier = client_cert_verifier();
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.root_hint_subjects().is_empty());
        assert!(!verifier.supported_verify_schemes().is_empty());
    }
}
