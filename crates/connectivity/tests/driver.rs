//! The tokio session driver over in-memory links: exact streams, back-pressure,
//! and a session carried across a link replacement.

use std::time::Duration;

use bytes::Bytes;
use connectivity::{ClientAuth, Link, LinkState, SessionConfig, SessionHandle, Stream, session};
use futures::StreamExt;
use proto::session::Role;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Two ends of an in-memory link with the given payload limit.
fn link_pair(max_payload: usize) -> (Link, Link) {
    let (a_tx, a_rx) = mpsc::channel::<Bytes>(16);
    let (b_tx, b_rx) = mpsc::channel::<Bytes>(16);
    let end = |tx, rx: mpsc::Receiver<Bytes>, peer: &str| Link {
        tx,
        rx: ReceiverStream::new(rx).map(Ok).boxed(),
        max_payload,
        peer: peer.to_string(),
        transport: "memory",
        client_auth: ClientAuth::NotVisible,
    };
    (end(a_tx, b_rx, "device"), end(b_tx, a_rx, "cloud"))
}

fn start(
    max_payload: usize,
) -> (
    (SessionHandle, mpsc::UnboundedReceiver<Stream>),
    (SessionHandle, mpsc::UnboundedReceiver<Stream>),
) {
    let (cloud_link, device_link) = link_pair(max_payload);
    let cloud = session::spawn(
        Role::Cloud,
        SessionConfig::default(),
        7,
        1,
        cloud_link,
        tracing::Span::none(),
    )
    .expect("cloud");
    let device = session::spawn(
        Role::Device,
        SessionConfig::default(),
        7,
        1,
        device_link,
        tracing::Span::none(),
    )
    .expect("device");
    (cloud, device)
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

async fn read_all(stream: &mut Stream) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(chunk) = stream.recv().await.expect("stream ok") {
        got.extend_from_slice(&chunk);
    }
    got
}

#[tokio::test]
async fn bulk_transfer_is_exact_at_8k_payloads() {
    let ((cloud, _), (_device, mut incoming)) = start(8 * 1024);
    let data = pattern(3 << 20);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let mut stream = cloud
            .open_raw(Bytes::from_static(b"bulk"), None)
            .await
            .expect("open");
        stream.send(sent).await.expect("send");
        stream.finish();
        assert!(stream.recv().await.expect("end").is_none());
    });
    let mut stream = incoming.recv().await.expect("incoming stream");
    assert_eq!(stream.header().as_ref(), b"bulk");
    let got = read_all(&mut stream).await;
    stream.finish();
    assert_eq!(got.len(), data.len());
    assert!(got == data.as_ref(), "bytes differ");
    writer.await.expect("writer");
}

#[tokio::test]
async fn a_slow_reader_holds_the_writer_back() {
    let ((cloud, _), (_device, mut incoming)) = start(64 * 1024);
    let (progress_tx, mut progress) = mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        let mut stream = cloud.open_raw(Bytes::new(), None).await.expect("open");
        let mut total = 0;
        for _ in 0..64 {
            stream.send(pattern(64 * 1024)).await.expect("send");
            total += 64 * 1024;
            let _ = progress_tx.send(total);
        }
        stream.finish();
    });
    let mut stream = incoming.recv().await.expect("incoming");
    // Nobody reads: the writer must stop near the window (and the room it
    // may run ahead of the session), not queue 4 MiB.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut written = 0;
    while let Ok(n) = progress.try_recv() {
        written = n;
    }
    assert!(
        written <= 512 * 1024,
        "writer ran ahead to {written} bytes with no reader"
    );
    // Reading releases it.
    let mut read = 0;
    while read < 64 * 64 * 1024 {
        read += stream.recv().await.expect("ok").expect("data").len();
    }
}

/// A writer hands its chunks over without waiting for the session to take
/// each, then finishes and drops the stream at once: the peer still reads
/// every byte, in order, then the end.
#[tokio::test]
async fn a_stream_dropped_after_its_finish_delivers_everything() {
    let ((cloud, _), (_device, mut incoming)) = start(16 * 1024);
    let data = pattern(2 << 20);
    let sent = data.clone();
    tokio::spawn(async move {
        let mut stream = cloud.open_raw(Bytes::new(), None).await.expect("open");
        for piece in sent.chunks(48 * 1024) {
            stream
                .send(Bytes::copy_from_slice(piece))
                .await
                .expect("send");
        }
        stream.finish();
    });
    let mut stream = incoming.recv().await.expect("incoming");
    // The writer is long gone before anything is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = read_all(&mut stream).await;
    assert_eq!(got.len(), data.len(), "bytes lost");
    assert!(got == data.as_ref(), "bytes differ");
}

#[tokio::test]
async fn streams_survive_a_link_replacement() {
    let (cloud_link, device_link) = link_pair(16 * 1024);
    let (cloud, _) = session::spawn(
        Role::Cloud,
        SessionConfig::default(),
        9,
        1,
        cloud_link,
        tracing::Span::none(),
    )
    .expect("cloud");
    let (device, mut incoming) = session::spawn(
        Role::Device,
        SessionConfig::default(),
        9,
        1,
        device_link,
        tracing::Span::none(),
    )
    .expect("device");
    let mut out = cloud.open_raw(Bytes::new(), None).await.expect("open");
    out.send(pattern(100_000)).await.expect("first half");
    let mut stream = incoming.recv().await.expect("incoming");

    // The link dies: both sides notice, streams wait.
    let (new_cloud, new_device) = link_pair(16 * 1024);
    let mut state = device.state();
    drop(cloud.attach(link_pair(16 * 1024).0, 2)); // a dead link replaces the old one...
    let _ = state.changed().await;
    cloud.attach(new_cloud, 3).expect("attach cloud");
    device.attach(new_device, 3).expect("attach device");
    out.send(pattern(100_000)).await.expect("second half");
    out.finish();
    let got = read_all(&mut stream).await;
    let mut want = pattern(100_000).to_vec();
    want.extend_from_slice(&pattern(100_000));
    assert!(
        got == want,
        "bytes differ after resume ({} vs {})",
        got.len(),
        want.len()
    );
    assert!(matches!(
        *device.state().borrow(),
        LinkState::Connected { epoch: 3, .. }
    ));
}

#[tokio::test]
async fn a_session_without_a_link_ends_after_the_resume_window() {
    let (cloud_link, device_link) = link_pair(16 * 1024);
    let config = SessionConfig {
        resume_window: Duration::from_millis(300),
        ..Default::default()
    };
    let (cloud, _) = session::spawn(
        Role::Cloud,
        config.clone(),
        1,
        1,
        cloud_link,
        tracing::Span::none(),
    )
    .expect("cloud");
    let (_device, mut incoming) = session::spawn(
        Role::Device,
        config,
        1,
        1,
        device_link,
        tracing::Span::none(),
    )
    .expect("device");
    let mut out = cloud.open_raw(Bytes::new(), None).await.expect("open");
    out.send(Bytes::from_static(b"hi")).await.expect("send");
    let mut stream = incoming.recv().await.expect("incoming");
    assert_eq!(
        stream.recv().await.expect("ok").as_deref(),
        Some(&b"hi"[..])
    );
    drop(incoming);
    // Replace the cloud's link with one whose other end is gone at once.
    let (dead, other) = link_pair(16 * 1024);
    drop(other);
    cloud.attach(dead, 2).expect("attach");
    let err = tokio::time::timeout(Duration::from_secs(5), stream.recv())
        .await
        .expect("the stream ends")
        .expect_err("with an error");
    assert!(
        err.to_string().contains("session closed") || err.to_string().contains("reset"),
        "{err}"
    );
    let mut state = cloud.state();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(*state.borrow_and_update(), LinkState::Closed { .. }) {
            state.changed().await.expect("state");
        }
    })
    .await
    .expect("cloud session closed");
}
