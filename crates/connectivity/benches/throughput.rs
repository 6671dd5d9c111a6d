//! One stream's bulk throughput through the session layer, each way, over an
//! in-memory link and over the gRPC tunnel on loopback, against a plain
//! loopback TCP connection carrying the same bytes in the same run, and
//! against a plain TLS connection (the same rustls, certificates and
//! runtime): what the tunnel cannot do without. The gRPC link alone (messages
//! straight over the transport, no session layer) is the floor under the
//! session layer's figure on that link.
//!
//! `cargo bench -p connectivity --bench throughput [-- MiB]` (`make bench` runs
//! it). Under `cargo test` (no `--bench` argument) it moves 4 MiB once each
//! way, checking the transfers complete, and reports nothing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use connectivity::{ClientAuth, Dialer, Link, SessionConfig, SessionHandle, Stream, session};
use futures::StreamExt;
use proto::session::Role;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;

#[path = "../tests/support/grpc_loopback.rs"]
mod grpc_loopback;
#[path = "../tests/support/proof.rs"]
mod proof;

const CHUNK: usize = 32 << 10;

fn memory_pair() -> (Link, Link) {
    let (a_tx, a_rx) = mpsc::channel::<Bytes>(16);
    let (b_tx, b_rx) = mpsc::channel::<Bytes>(16);
    let end = |tx, rx: mpsc::Receiver<Bytes>| Link {
        tx,
        rx: ReceiverStream::new(rx).map(Ok).boxed(),
        max_payload: connectivity::grpc::MAX_PAYLOAD,
        peer: "memory".to_string(),
        transport: "memory",
        client_auth: ClientAuth::NotVisible,
    };
    (end(a_tx, b_rx), end(b_tx, a_rx))
}

async fn grpc_pair() -> (Link, Link) {
    let pki = grpc_loopback::pki();
    let (endpoint, mut links) = grpc_loopback::server(pki.server).await;
    let device = grpc_loopback::dialer(&endpoint, &pki.ca_pem)
        .dial()
        .await
        .expect("dial");
    let cloud = links.recv().await.expect("a link");
    (cloud, device)
}

/// Both ends of an MQTT link through `broker` at its default payload,
/// handshaken (aranya only opens a link on a Hello). Each pair needs a
/// `device` name of its own: aranya's side of an earlier pair still listens.
async fn mqtt_pair(broker: &testbed::Broker, device: &str) -> (Link, Link) {
    use connectivity::{
        handshake,
        mqtt::{self, MqttDialer, Settings},
    };
    use proto::envelope::{Hello, Welcome};
    const T: Duration = Duration::from_secs(10);
    let settings = |client: &str| Settings {
        broker: broker.address(),
        topic_namespace: mqtt::DEFAULT_NAMESPACE.into(),
        client_id: client.into(),
        keepalive: Duration::from_secs(5),
        max_payload: mqtt::DEFAULT_MAX_PAYLOAD,
        connect_timeout: T,
        tls: None,
        credentials: None,
    };
    let (links_tx, mut links) = mpsc::channel(1);
    tokio::spawn(mqtt::serve_device(
        settings("aranya-bench"),
        device.into(),
        links_tx,
        std::future::pending(),
    ));
    // aranya subscribes before the device says Hello.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dialer = MqttDialer {
        settings: settings("arhat-bench"),
        device: device.into(),
    };
    let mut device_link = dialer.dial().await.expect("dial the broker");
    let hello = Hello {
        device: device.into(),
        protocol_version: 1,
        ..Default::default()
    };
    let cloud = async {
        let mut link = links.recv().await.expect("a link");
        proof::accept(&mut link, T).await.expect("hello");
        let welcome = Welcome {
            session_id: 1,
            epoch: 1,
            resumed: false,
            protocol_version: 1,
        };
        handshake::welcome(&mut link, welcome)
            .await
            .expect("welcome");
        link
    };
    let (cloud, welcomed) = tokio::join!(cloud, proof::hello(&mut device_link, hello, T));
    welcomed.expect("welcomed");
    (cloud, device_link)
}

type Ends = (
    (SessionHandle, mpsc::UnboundedReceiver<Stream>),
    (SessionHandle, mpsc::UnboundedReceiver<Stream>),
);

fn sessions((cloud, device): (Link, Link)) -> Ends {
    let start = |role, link| {
        session::spawn(
            role,
            SessionConfig::default(),
            1,
            1,
            link,
            tracing::Span::none(),
        )
        .expect("session")
    };
    (start(Role::Cloud, cloud), start(Role::Device, device))
}

/// `total` bytes from `from` to whoever accepts on `to`.
async fn transfer(
    from: &SessionHandle,
    to: &mut mpsc::UnboundedReceiver<Stream>,
    total: usize,
) -> Duration {
    let started = Instant::now();
    let mut sender = from
        .open_raw(Bytes::from_static(b"bench"), None)
        .await
        .expect("open");
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        let mut sent = 0;
        while sent < total {
            sender.send(chunk.clone()).await.expect("send");
            sent += CHUNK;
        }
        sender.finish();
        let _ = sender.recv().await;
    });
    let mut receiver = to.recv().await.expect("stream");
    let mut got = 0;
    while let Some(data) = receiver.recv().await.expect("recv") {
        got += data.len();
    }
    receiver.finish();
    writer.await.expect("writer");
    assert!(got >= total, "short transfer: {got} of {total}");
    started.elapsed()
}

/// Reads `from` to its end; the bytes read.
async fn drain(from: &mut (impl tokio::io::AsyncRead + Unpin)) -> usize {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    loop {
        let n = from.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        got += n;
    }
}

async fn tcp_baseline(total: usize) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let chunk = vec![7u8; CHUNK];
        let mut sent = 0;
        while sent < total {
            tcp.write_all(&chunk).await.unwrap();
            sent += CHUNK;
        }
    });
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let got = drain(&mut tcp).await;
    writer.await.unwrap();
    assert!(got >= total);
    started.elapsed()
}

/// [`tcp_baseline`] through TLS, with the tunnel's certificates.
async fn tls_baseline(total: usize, pki: &grpc_loopback::Pki) -> Duration {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let chain = CertificateDer::pem_slice_iter(&pki.server.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&pki.server.key_pem).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let chunk = vec![7u8; CHUNK];
        let mut sent = 0;
        while sent < total {
            tls.write_all(&chunk).await.unwrap();
            sent += CHUNK;
        }
        tls.shutdown().await.unwrap();
    });
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let got = drain(&mut tls).await;
    writer.await.unwrap();
    assert!(got >= total);
    started.elapsed()
}

/// `total` bytes in `frame`-sized messages straight over a link, with no
/// session layer: what the transport itself costs, the floor under the
/// session layer's figure on the same link.
async fn link_floor(from: &Link, to: &mut Link, total: usize, frame: usize) -> Duration {
    let started = Instant::now();
    let tx = from.tx.clone();
    let writer = tokio::spawn(async move {
        let message = Bytes::from(vec![7u8; frame]);
        let mut sent = 0;
        while sent < total {
            tx.send(message.clone()).await.expect("link send");
            sent += frame;
        }
    });
    let mut got = 0;
    while got < total {
        got += to
            .rx
            .next()
            .await
            .expect("link open")
            .expect("link recv")
            .len();
    }
    writer.await.expect("writer");
    started.elapsed()
}

async fn best(rounds: usize, mut run: impl AsyncFnMut() -> Duration) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        best = best.min(run().await);
    }
    best
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let benching = std::env::args().any(|a| a == "--bench");
    let (mib, rounds): (usize, usize) = if benching {
        let mib = std::env::args().skip(1).find_map(|a| a.parse().ok());
        (mib.unwrap_or(256), 3)
    } else {
        (4, 1)
    };
    let total = mib << 20;
    let tcp = best(rounds, async || tcp_baseline(total).await).await;
    let pki = grpc_loopback::pki();
    let tls = best(rounds, async || tls_baseline(total, &pki).await).await;
    let rate = |t: Duration| mib as f64 / t.as_secs_f64();
    let mut report = vec![
        format!("one stream, {mib} MiB, best of {rounds}, {CHUNK} B writes"),
        format!("  loopback TCP (baseline):      {:8.1} MiB/s", rate(tcp)),
        format!(
            "  loopback TLS (baseline):      {:8.1} MiB/s  ratio to TCP {:.3}",
            rate(tls),
            tcp.as_secs_f64() / tls.as_secs_f64()
        ),
    ];
    let dir = tempfile::tempdir().expect("broker dir");
    let broker = testbed::Broker::start(dir.path(), &testbed::BrokerOptions::default())
        .expect("mosquitto (scripts/mosquitto.sh installs it)");
    for (name, (mut cloud, mut device), frames) in [
        (
            "gRPC",
            grpc_pair().await,
            [CHUNK, connectivity::grpc::MAX_PAYLOAD],
        ),
        (
            "MQTT",
            mqtt_pair(&broker, "floor").await,
            [CHUNK, connectivity::mqtt::DEFAULT_MAX_PAYLOAD],
        ),
    ] {
        for frame in frames {
            let down = best(rounds, async || {
                link_floor(&cloud, &mut device, total, frame).await
            })
            .await;
            let up = best(rounds, async || {
                link_floor(&device, &mut cloud, total, frame).await
            })
            .await;
            for (way, t) in [("cloud→device", down), ("device→cloud", up)] {
                report.push(format!(
                    "  {name} link alone, {:4} KiB messages, {way}: {:8.1} MiB/s  ratio to TCP {:.3}, to TLS {:.3}",
                    frame >> 10,
                    rate(t),
                    tcp.as_secs_f64() / t.as_secs_f64(),
                    tls.as_secs_f64() / t.as_secs_f64()
                ));
            }
        }
    }
    for (name, pair) in [
        ("memory link", sessions(memory_pair())),
        ("gRPC over TLS", sessions(grpc_pair().await)),
        ("MQTT", sessions(mqtt_pair(&broker, "session").await)),
    ] {
        let ((cloud, mut cloud_in), (device, mut device_in)) = pair;
        let down = best(rounds, async || {
            transfer(&cloud, &mut device_in, total).await
        })
        .await;
        let up = best(rounds, async || {
            transfer(&device, &mut cloud_in, total).await
        })
        .await;
        for (way, t) in [("cloud→device", down), ("device→cloud", up)] {
            report.push(format!(
                "  {name:14} {way}: {:8.1} MiB/s  ratio to TCP {:.3}, to TLS {:.3}",
                rate(t),
                tcp.as_secs_f64() / t.as_secs_f64(),
                tls.as_secs_f64() / t.as_secs_f64()
            ));
        }
    }
    if benching {
        println!("{}", report.join("\n"));
    }
}
