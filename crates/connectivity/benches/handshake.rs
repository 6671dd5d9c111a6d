//! What mutual TLS adds to a device's connect: the median of 50 dials (TCP,
//! TLS, HTTP/2 and the link RPC) with a device certificate checked against a
//! device CA, against the same dials to the same kind of endpoint with
//! server-only TLS, interleaved in the same run.
//!
//! `cargo bench -p connectivity --bench handshake [-- dials]` (`make bench`
//! runs it). Under `cargo test` (no `--bench` argument) it dials 3 times
//! each way, checking both work, and reports nothing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use connectivity::{
    ClientAuth, Dialer,
    grpc::{ClientCertificate, GrpcDialer},
    tls::ClientCertCheck,
};
use identity::{DeviceCa, DeviceKey, TrustStore};

#[path = "../tests/support/grpc_loopback.rs"]
mod grpc_loopback;

/// The device CA check aranya runs, without the Secret around it.
#[derive(Debug)]
struct DeviceCas(TrustStore);

impl ClientCertCheck for DeviceCas {
    fn check(&self, der: &[u8]) -> Result<(), rustls::CertificateError> {
        self.0
            .verify(der, SystemTime::now())
            .map(drop)
            .map_err(|_| rustls::CertificateError::UnknownIssuer)
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let dials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 50 } else { 3 });

    let ca = DeviceCa::generate("bench device CA").expect("ca");
    let key = DeviceKey::generate().expect("key");
    let cert_pem = ca
        .issue(
            &key.csr_der("edge-1").expect("csr"),
            "edge-1",
            &identity::name::new_identity_id(),
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .expect("certificate");
    let trust = TrustStore::from_pem(ca.cert_pem().as_bytes()).expect("trust");

    let plain = grpc_loopback::pki();
    let (plain_endpoint, mut plain_links) = grpc_loopback::server(plain.server).await;
    let mut mutual = grpc_loopback::pki();
    mutual.server.client_certs = Some(Arc::new(DeviceCas(trust)));
    let (mutual_endpoint, mut mutual_links) = grpc_loopback::server(mutual.server).await;
    let server_only = grpc_loopback::dialer(&plain_endpoint, &plain.ca_pem);
    let with_cert = GrpcDialer {
        client_certificate: Some(ClientCertificate {
            cert_pem: cert_pem.into_bytes(),
            key_pem: key.to_pem().into_bytes(),
        }),
        ..grpc_loopback::dialer(&mutual_endpoint, &mutual.ca_pem)
    };

    let (mut tls, mut mtls) = (Vec::new(), Vec::new());
    // One of each first, untimed: lazy initialisation is not a handshake.
    for i in 0..=dials {
        for (dialer, links, samples, mutual) in [
            (&server_only, &mut plain_links, &mut tls, false),
            (&with_cert, &mut mutual_links, &mut mtls, true),
        ] {
            let start = Instant::now();
            let _device = dialer.dial().await.expect("dial");
            let link = links.recv().await.expect("a link");
            let took = start.elapsed();
            assert_eq!(
                matches!(link.client_auth, ClientAuth::Certificate(_)),
                mutual
            );
            if i > 0 {
                samples.push(took);
            }
        }
    }
    if !bench {
        return;
    }
    let (tls, mtls) = (median(tls), median(mtls));
    println!(
        "connect, median of {dials}: server-only TLS {:.2} ms, mutual TLS {:.2} ms: mTLS adds {:.2} ms ({:.2}x)",
        tls.as_secs_f64() * 1e3,
        mtls.as_secs_f64() * 1e3,
        (mtls.as_secs_f64() - tls.as_secs_f64()) * 1e3,
        mtls.as_secs_f64() / tls.as_secs_f64(),
    );
}
