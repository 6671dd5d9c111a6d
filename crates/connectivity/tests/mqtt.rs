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

/// The cloud: welcomes the first link with a new session, attaches later
/// ones (resumes) to it.
async fn cloud(mut links: mpsc::Receiver<Link>) -> SessionHandle {
    let mut link = links.recv().await.expect("a link");
    handshake::read_hello(&mut link, T).await.expect("hello");
    let welcome = Welcome {
        session_id: 7,
        epoch: 1,
        resumed: false,
        protocol_version: 1,
    };
    handshake::welcome(&mut link, welcome)
        .await
        .expect("welcome");
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
        while let Some(mut link) = links.recv().await {
            if handshake::read_hello(&mut link, T).await.is_err() {
                continue;
            }
            epoch += 1;
            let welcome = Welcome {
                session_id: 7,
                epoch,
                resumed: true,
                protocol_version: 1,
            };
            if handshake::welcome(&mut link, welcome).await.is_ok() {
                let _ = resumer.attach(link, epoch);
            }
        }
    });
    handle
}

async fn hello(dialer: &MqttDialer, session_id: u64) -> (Link, Welcome) {
    let mut link = dialer.dial().await.expect("dial");
    let hello = Hello {
        device: DEVICE.into(),
        protocol_version: 1,
        session_id,
        ..Default::default()
    };
    let welcome = handshake::hello(&mut link, hello, T)
        .await
        .expect("welcome");
    (link, welcome)
}

/// The device: a session, and on every link loss a new link that resumes it.
async fn device(
    dialer: MqttDialer,
) -> (SessionHandle, mpsc::UnboundedReceiver<connectivity::Stream>) {
    let (link, welcome) = hello(&dialer, 0).await;
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
                match dialer.dial().await {
                    Ok(mut link) => {
                        let hello = Hello {
                            device: DEVICE.into(),
                            protocol_version: 1,
                            session_id: 7,
                            ..Default::default()
                        };
                        if let Ok(w) = handshake::hello(&mut link, hello, T).await {
                            let _ = resumer.attach(link, w.epoch);
                            break;
                        }
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
