//! The gRPC transport over real TLS on loopback: handshake, then a stream.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use connectivity::{
    ClientAuth, Dialer, SessionConfig, TransportError, grpc::ClientCertificate, handshake, session,
    tls::ClientCertCheck,
};
use proto::{
    envelope::{Hello, RefuseReason, Welcome},
    session::Role,
};

#[path = "support/grpc_loopback.rs"]
mod grpc_loopback;
#[path = "support/proof.rs"]
mod proof;
use grpc_loopback::{dialer, pki, server};

#[tokio::test]
async fn handshake_and_a_stream_over_tls() {
    let pki = pki();
    let (endpoint, mut links) = server(pki.server).await;
    let cloud = tokio::spawn(async move {
        let mut link = links.recv().await.expect("a link");
        let hello = proof::accept(&mut link, Duration::from_secs(5))
            .await
            .expect("hello");
        assert_eq!(hello.device, "dev-1");
        handshake::welcome(
            &mut link,
            Welcome {
                session_id: 5,
                epoch: 1,
                resumed: false,
                protocol_version: 1,
            },
        )
        .await
        .expect("welcome");
        let (handle, _) = session::spawn(
            Role::Cloud,
            SessionConfig::default(),
            5,
            1,
            link,
            tracing::Span::none(),
        )
        .expect("session");
        let mut stream = handle
            .open_raw(Bytes::from_static(b"echo"), None)
            .await
            .expect("open");
        stream
            .send(Bytes::from(vec![7u8; 300_000]))
            .await
            .expect("send");
        stream.finish();
        let mut back = 0;
        while let Some(chunk) = stream.recv().await.expect("recv") {
            back += chunk.len();
        }
        back
    });
    let mut link = dialer(&endpoint, &pki.ca_pem).dial().await.expect("dial");
    let hello = Hello {
        device: "dev-1".into(),
        protocol_version: 1,
        ..Default::default()
    };
    let welcome = proof::hello(&mut link, hello, Duration::from_secs(5))
        .await
        .expect("welcome");
    assert_eq!(welcome.session_id, 5);
    let (_handle, mut incoming) = session::spawn(
        Role::Device,
        SessionConfig::default(),
        5,
        1,
        link,
        tracing::Span::none(),
    )
    .expect("session");
    let mut stream = incoming.recv().await.expect("stream");
    // Echo everything back.
    while let Some(chunk) = stream.recv().await.expect("recv") {
        stream.send(chunk).await.expect("echo");
    }
    stream.finish();
    assert_eq!(cloud.await.expect("cloud"), 300_000);
}

#[tokio::test]
async fn refusal_reaches_the_device_with_its_reason() {
    let pki = pki();
    let (endpoint, mut links) = server(pki.server).await;
    tokio::spawn(async move {
        let mut link = links.recv().await.expect("a link");
        let _ = handshake::read_hello(&mut link, Duration::from_secs(5)).await;
        handshake::refuse(
            &mut link,
            RefuseReason::DuplicateDevice,
            "already connected",
        )
        .await
        .expect("refuse");
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut link = dialer(&endpoint, &pki.ca_pem).dial().await.expect("dial");
    let err = proof::hello(&mut link, Hello::default(), Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert!(err.is_refusal());
    assert!(err.to_string().contains("already connected"), "{err}");
}

#[tokio::test]
async fn a_device_that_does_not_trust_the_cloud_does_not_connect() {
    let pki = pki();
    let other = self::pki();
    let (endpoint, _links) = server(pki.server).await;
    let err = dialer(&endpoint, &other.ca_pem)
        .dial()
        .await
        .expect_err("untrusted");
    assert!(err.to_string().contains("connect to"), "{err}");
}

/// Lets through exactly the certificates it was given.
#[derive(Debug)]
struct Allowed(Vec<Vec<u8>>);

impl ClientCertCheck for Allowed {
    fn check(&self, der: &[u8]) -> Result<(), rustls::CertificateError> {
        if self.0.iter().any(|c| c == der) {
            Ok(())
        } else {
            Err(rustls::CertificateError::UnknownIssuer)
        }
    }
}

fn client_certificate(name: &str) -> (Vec<u8>, ClientCertificate) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    (
        cert.der().to_vec(),
        ClientCertificate {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        },
    )
}

#[tokio::test]
async fn mutual_tls_hands_the_link_the_checked_client_certificate() {
    let mut pki = pki();
    let (trusted_der, trusted) = client_certificate("dev-1");
    let (_, untrusted) = client_certificate("intruder");
    pki.server.client_certs = Some(Arc::new(Allowed(vec![trusted_der.clone()])));
    let (endpoint, mut links) = server(pki.server).await;

    // No certificate: a link still arrives, marked anonymous (bootstrap only).
    let _anonymous = dialer(&endpoint, &pki.ca_pem).dial().await.expect("dial");
    let link = links.recv().await.expect("anonymous link");
    assert_eq!(link.client_auth, ClientAuth::Anonymous);

    let mut with_cert = dialer(&endpoint, &pki.ca_pem);
    with_cert.client_certificate = Some(trusted);
    let _device = with_cert.dial().await.expect("dial");
    let link = links.recv().await.expect("device link");
    assert_eq!(
        link.client_auth,
        ClientAuth::Certificate(Bytes::from(trusted_der))
    );

    // A certificate the check refuses: no link reaches aranya, and the
    // device learns why, every time.
    let mut refused = dialer(&endpoint, &pki.ca_pem);
    refused.client_certificate = Some(untrusted);
    for _ in 0..20 {
        let err = refused.dial().await.expect_err("refused");
        assert!(
            matches!(&err, TransportError::CertificateRefused { cause, .. } if cause == "UnknownCA"),
            "{err}"
        );
    }
    let nothing = tokio::time::timeout(Duration::from_millis(500), links.recv()).await;
    assert!(nothing.is_err(), "a refused certificate made a link");
}
