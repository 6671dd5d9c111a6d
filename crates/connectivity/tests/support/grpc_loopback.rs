//! A gRPC tunnel on loopback with a throwaway PKI, for tests and benches.
#![allow(dead_code, clippy::expect_used)]

use std::time::Duration;

use connectivity::grpc::{GrpcDialer, ServerTls, serve};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::sync::mpsc;

pub struct Pki {
    pub ca_pem: String,
    pub server: ServerTls,
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    Pki {
        ca_pem: ca.pem(),
        server: ServerTls {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            client_certs: None,
        },
    }
}

pub async fn server(tls: ServerTls) -> (String, mpsc::Receiver<connectivity::Link>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (links_tx, links_rx) = mpsc::channel(4);
    tokio::spawn(serve(listener, tls, links_tx, std::future::pending()));
    (addr.to_string(), links_rx)
}

pub fn dialer(endpoint: &str, ca_pem: &str) -> GrpcDialer {
    GrpcDialer {
        endpoint: endpoint.to_string(),
        ca_pem: ca_pem.as_bytes().to_vec(),
        server_name: Some("localhost".into()),
        connect_timeout: Duration::from_secs(5),
        keepalive: Duration::from_secs(5),
        client_certificate: None,
    }
}
