//! The MQTT transport through a real Mosquitto (Debian's; `scripts/mosquitto.sh`
//! installs it): a session at the smallest payload, and a transfer that lives
//! through a broker crash.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use connectivity::{
    Dialer, Link, SessionConfig, SessionHandle, handshake,
    mqtt::{self, MqttDialer, Settings},
    session::{self, LinkState},
};
use proto::{
    envelope::{Hello, Welcome},
    session::Role,
};
use testbed::{Broker, BrokerOptions};
use tokio::sync::mpsc;

#[path = "support/proof.rs"]
mod proof;

const DEVICE: &str = "dev-1";
const T: Duration = Duration::from_secs(10);

fn settings(broker: &Broker, max_payload: usize, client: &str) -> Settings {
    Settings {
        broker: broker.address(),
        topic_namespace: mqtt::DEFAULT_NAMESPACE.into(),
        client_id: client.into(),
        keepalive: Duration::from_secs(5),
        max_payload,
        connect_timeout: Duration::from_secs(5),
        tls: None,
        credentials: None,
    }
}

/// Bytes `0..len` of a pattern no shifted or repeated copy of itself matches.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Reads a link's Hello and welcomes it into session 7 at `epoch`.
async fn welcome(mut link: Link, epoch: u64, resumed: bool) -> Option<Link> {
    proof::accept(&mut link, T).await.ok()?;
    let welcome = Welcome {
        session_id: 7,
        epoch,
        resumed,
        protocol_version: 1,
    };
    handshake::welcome(&mut link, welcome).await.ok()?;
    Some(link)
}

/// The cloud: welcomes the first link with a new session, attaches later
/// ones (resumes) to it.
async fn cloud(mut links: mpsc::Receiver<Link>) -> SessionHandle {
    let first = links.recv().await.expect("a link");
    let link = welcome(first, 1, false).await.expect("hello and welcome");
    let (handle, _incoming) = session::spawn(
        Role::Cloud,
        SessionConfig::default(),
        7,
        1,
        link,
        tracing::Span::none(),
    )
    .expect("session");
    let resumer = handle.clone();
    tokio::spawn(async move {
        let mut epoch = 1;
        while let Some(link) = links.recv().await {
            if let Some(link) = welcome(link, epoch + 1, true).await {
                epoch += 1;
                let _ = resumer.attach(link, epoch);
            }
        }
    });
    handle
}

/// Dials a link and says Hello for `session_id` (0: a new session).
async fn hello(
    dialer: &MqttDialer,
    session_id: u64,
) -> Result<(Link, Welcome), Box<dyn std::error::Error + Send + Sync>> {
    let mut link = dialer.dial().await?;
    let hello = Hello {
        device: DEVICE.into(),
        protocol_version: 1,
        session_id,
        ..Default::default()
    };
    let welcome = proof::hello(&mut link, hello, T).await?;
    Ok((link, welcome))
}

/// The device: a session, and on every link loss a new link that resumes it.
async fn device(
    dialer: MqttDialer,
) -> (SessionHandle, mpsc::UnboundedReceiver<connectivity::Stream>) {
    let (link, welcome) = hello(&dialer, 0).await.expect("hello");
    let (handle, incoming) = session::spawn(
        Role::Device,
        SessionConfig::default(),
        welcome.session_id,
        welcome.epoch,
        link,
        tracing::Span::none(),
    )
    .expect("session");
    let resumer = handle.clone();
    tokio::spawn(async move {
        let mut state = resumer.state();
        loop {
            if state.changed().await.is_err() {
                return;
            }
            if !matches!(*state.borrow_and_update(), LinkState::Disconnected { .. }) {
                continue;
            }
            loop {
                match hello(&dialer, 7).await {
                    Ok((link, w)) => {
                        let _ = resumer.attach(link, w.epoch);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    });
    (handle, incoming)
}

async fn start(
    broker: &Broker,
    max_payload: usize,
) -> (
    SessionHandle,
    SessionHandle,
    mpsc::UnboundedReceiver<connectivity::Stream>,
) {
    let (links_tx, links) = mpsc::channel(8);
    let cloud_settings = settings(broker, max_payload, "aranya-test");
    tokio::spawn(mqtt::serve_device(
        cloud_settings,
        DEVICE.into(),
        links_tx,
        std::future::pending(),
    ));
    // aranya subscribes before the device says Hello.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dialer = MqttDialer {
        settings: settings(broker, max_payload, "arhat-test"),
        device: DEVICE.into(),
    };
    let cloud = tokio::spawn(cloud(links));
    let (device, incoming) = device(dialer).await;
    (cloud.await.expect("cloud"), device, incoming)
}

/// Sends `data` on a new stream from the cloud; returns what the device read.
async fn transfer(
    cloud: &SessionHandle,
    incoming: &mut mpsc::UnboundedReceiver<connectivity::Stream>,
    data: Vec<u8>,
    mut midway: impl FnMut(),
) -> Result<Vec<u8>, connectivity::StreamError> {
    let mut stream = cloud.open_raw(Bytes::from_static(b"bulk"), None).await?;
    let len = data.len();
    let sender = tokio::spawn(async move {
        for piece in data.chunks(64 << 10) {
            stream.send(Bytes::copy_from_slice(piece)).await?;
        }
        stream.finish();
        // Keep the stream until the device has everything.
        stream.recv().await.map(|_| ())
    });
    let mut rx = tokio::time::timeout(T, incoming.recv())
        .await
        .expect("stream in time")
        .expect("a stream");
    let mut got = Vec::with_capacity(len);
    let mut fired = false;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("data keeps coming")?
    {
        got.extend_from_slice(&chunk);
        if !fired && got.len() > len / 3 {
            fired = true;
            midway();
        }
    }
    rx.finish();
    sender.await.expect("sender")?;
    Ok(got)
}

#[tokio::test]
async fn a_session_at_an_8k_payload_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        &BrokerOptions {
            max_payload: Some(8 << 10),
            ..Default::default()
        },
    )
    .expect("mosquitto");
    let (cloud, _device, mut incoming) = start(&broker, 8 << 10).await;
    let data = pattern(3 << 20);
    let got = transfer(&cloud, &mut incoming, data.clone(), || {})
        .await
        .expect("transfer");
    assert!(
        got == data,
        "received {} bytes, not the {} sent",
        got.len(),
        data.len()
    );
}

#[tokio::test]
async fn a_transfer_lives_through_a_broker_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), &BrokerOptions::default()).expect("mosquitto");
    let (cloud, device, mut incoming) = start(&broker, mqtt::DEFAULT_MAX_PAYLOAD).await;
    let data = pattern(24 << 20);
    let mut epochs = device.state();
    let got = transfer(&cloud, &mut incoming, data.clone(), || {
        broker.restart().expect("restarting mosquitto");
    })
    .await
    .expect("transfer");
    assert!(
        got == data,
        "received {} bytes, not the {} sent",
        got.len(),
        data.len()
    );
    let epoch = match &*epochs.borrow_and_update() {
        LinkState::Connected { epoch, .. } => *epoch,
        other => panic!("device link {other:?}"),
    };
    assert!(
        epoch > 1,
        "the crash was survived by a resume (epoch {epoch})"
    );
}
