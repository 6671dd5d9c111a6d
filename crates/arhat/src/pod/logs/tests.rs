//! The logs stream end to end over an in-memory session: a cloud side asks,
//! [`serve`] answers from a fake runtime or host files.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use connectivity::{ClientAuth, Link, SessionConfig, SessionHandle, Stream, session};
use futures::StreamExt;
use proto::{
    api::{ContainerLogs, LogsRequest, Open, PodSpec, StreamReply, open::Kind, stream_reply::Code},
    session::{ResetCode, Role},
};
use tokio::sync::mpsc;

use super::*;
use crate::runtime::{LogOutput, LogStream, fake::Fake};

// ---- the pure parts ----

fn at(s: &str) -> Timestamp {
    s.parse().expect("time")
}

fn entry(time: Option<&str>, text: &'static str) -> LogEntry {
    LogEntry {
        time: time.map(at),
        output: LogOutput::Stdout,
        text: Bytes::from_static(text.as_bytes()),
    }
}

fn format(lines: &mut Lines, entries: Vec<LogEntry>) -> String {
    let mut out = BytesMut::new();
    for e in entries {
        lines.append(e, &mut out);
    }
    String::from_utf8(out.to_vec()).expect("utf-8")
}

#[test]
fn timestamps_have_nine_fractional_digits() {
    let mut lines = Lines::new(None, true);
    let got = format(
        &mut lines,
        vec![
            entry(Some("2026-11-25T05:00:00.123456789Z"), "a\n"),
            entry(Some("2026-11-25T05:00:01Z"), "b\n"),
            entry(Some("2026-11-25T05:00:02.5Z"), "c\n"),
        ],
    );
    assert_eq!(
        got,
        "2026-11-25T05:00:00.123456789Z a\n\
         2026-11-25T05:00:01.000000000Z b\n\
         2026-11-25T05:00:02.500000000Z c\n"
    );
}

#[test]
fn without_timestamps_only_the_text_is_kept() {
    let mut lines = Lines::new(None, false);
    let got = format(
        &mut lines,
        vec![
            entry(Some("2026-11-25T05:00:00Z"), "a\n"),
            entry(None, "b\n"),
        ],
    );
    assert_eq!(got, "a\nb\n");
}

#[test]
fn since_is_exact_and_continuations_follow_their_entry() {
    let mut lines = Lines::new(Some(at("2026-11-25T05:00:00.5Z")), true);
    let got = format(
        &mut lines,
        vec![
            entry(Some("2026-11-25T05:00:00.499999999Z"), "early "),
            entry(None, "still early\n"),
            entry(Some("2026-11-25T05:00:00.500000000Z"), "on time "),
            entry(None, "rest\n"),
        ],
    );
    assert_eq!(got, "2026-11-25T05:00:00.500000000Z on time rest\n");
}

fn request() -> LogsRequest {
    LogsRequest {
        pod_uid: "u".into(),
        container: "app".into(),
        ..Default::default()
    }
}

#[test]
fn options_are_checked() {
    let now = at("2026-11-25T05:00:00Z");
    let o = |r: LogsRequest| options(&r, now);
    let code = |r: LogsRequest| o(r).expect_err("refused").code;
    assert_eq!(
        code(LogsRequest {
            tail_lines: Some(-1),
            ..request()
        }),
        Code::BadRequest
    );
    assert_eq!(
        code(LogsRequest {
            limit_bytes: Some(0),
            ..request()
        }),
        Code::BadRequest
    );
    assert_eq!(
        code(LogsRequest {
            since_seconds: Some(0),
            ..request()
        }),
        Code::BadRequest
    );
    assert_eq!(
        code(LogsRequest {
            since_seconds: Some(1),
            since_unix_nanos: Some(1),
            ..request()
        }),
        Code::BadRequest
    );
    let relative = o(LogsRequest {
        since_seconds: Some(90),
        tail_lines: Some(0),
        limit_bytes: Some(7),
        ..request()
    })
    .expect("valid");
    assert_eq!(relative.since, Some(at("2026-11-25T04:58:30Z")));
    assert_eq!(relative.tail_lines, Some(0));
    assert_eq!(relative.limit_bytes, Some(7));
    let absolute = o(LogsRequest {
        since_unix_nanos: Some(1_000_000_001),
        ..request()
    })
    .expect("valid");
    assert_eq!(absolute.since, Some(at("1970-01-01T00:00:01.000000001Z")));
    let far = o(LogsRequest {
        since_seconds: Some(i64::MAX),
        ..request()
    })
    .expect("valid");
    assert_eq!(far.since, Some(Timestamp::MIN));
}

// ---- over a session ----

fn link_pair() -> (Link, Link) {
    let (a_tx, a_rx) = mpsc::channel::<Bytes>(16);
    let (b_tx, b_rx) = mpsc::channel::<Bytes>(16);
    let end = |tx, rx: mpsc::Receiver<Bytes>, peer: &str| Link {
        tx,
        rx: futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
        )
        .boxed(),
        max_payload: 64 * 1024,
        peer: peer.to_string(),
        transport: "memory",
        client_auth: ClientAuth::NotVisible,
    };
    (end(a_tx, b_rx, "device"), end(b_tx, a_rx, "cloud"))
}

/// A cloud session whose device side answers logs streams with `serve`.
/// The handles finish when `serve` returns.
struct Rig {
    cloud: SessionHandle,
    served: mpsc::UnboundedReceiver<()>,
}

fn rig(pods: Option<Arc<PodManager>>, host: HostConfig) -> Rig {
    let (cloud_link, device_link) = link_pair();
    let (cloud, _) = session::spawn(
        Role::Cloud,
        SessionConfig::default(),
        1,
        1,
        cloud_link,
        tracing::Span::none(),
    )
    .expect("cloud");
    let (device, mut incoming) = session::spawn(
        Role::Device,
        SessionConfig::default(),
        1,
        1,
        device_link,
        tracing::Span::none(),
    )
    .expect("device");
    let (done_tx, served) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _device = device;
        while let Some(mut stream) = incoming.recv().await {
            let pods = pods.clone();
            let host = host.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let _ = serve(&mut stream, pods.as_ref(), &host).await;
                let _ = done.send(());
            });
        }
    });
    Rig { cloud, served }
}

impl Rig {
    async fn ask(&self, request: LogsRequest) -> (StreamReply, Stream) {
        let header = Open {
            kind: Some(Kind::ContainerLogs(ContainerLogs {})),
        };
        let mut stream = self.cloud.open(&header).await.expect("open");
        stream.send_message(&request).await.expect("request");
        stream.finish();
        let reply = stream
            .recv_message::<StreamReply>()
            .await
            .expect("reply")
            .expect("a reply");
        (reply, stream)
    }

    /// The reply, and the whole log with how many receives it took.
    async fn read(&self, request: LogsRequest) -> (StreamReply, Vec<u8>, usize) {
        let (reply, mut stream) = self.ask(request).await;
        let mut log = Vec::new();
        let mut receives = 0;
        while let Some(chunk) = stream.recv_bytes().await.expect("log") {
            log.extend_from_slice(&chunk);
            receives += 1;
        }
        (reply, log, receives)
    }

    async fn served(&mut self) {
        tokio::time::timeout(Duration::from_secs(5), self.served.recv())
            .await
            .expect("serve returned")
            .expect("server alive");
    }
}

fn code(reply: &StreamReply) -> Code {
    reply.code()
}

fn host_request() -> LogsRequest {
    LogsRequest {
        container: "host".into(),
        host: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn host_logs_disabled_is_forbidden_naming_the_key() {
    let rig = rig(None, HostConfig::default());
    let (reply, log, _) = rig.read(host_request()).await;
    assert_eq!(code(&reply), Code::Forbidden);
    assert!(
        reply.message.contains("`host.logFiles`"),
        "{}",
        reply.message
    );
    assert!(log.is_empty());
}

fn host_files(dir: &tempfile::TempDir) -> HostConfig {
    let a = dir.path().join("a.log");
    let b = dir.path().join("b.log");
    std::fs::write(&a, "a1\na2\n").expect("write");
    std::fs::write(&b, "b1\nb2\n").expect("write");
    HostConfig {
        log_files: vec![a, dir.path().join("missing.log"), b],
        ..Default::default()
    }
}

#[tokio::test]
async fn host_logs_refuse_what_files_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(None, host_files(&dir));
    for request in [
        LogsRequest {
            timestamps: true,
            ..host_request()
        },
        LogsRequest {
            since_seconds: Some(10),
            ..host_request()
        },
        LogsRequest {
            since_unix_nanos: Some(10),
            ..host_request()
        },
    ] {
        let (reply, _, _) = rig.read(request).await;
        assert_eq!(code(&reply), Code::BadRequest);
        assert!(
            reply.message.contains("no time per line"),
            "{}",
            reply.message
        );
    }
}

#[tokio::test]
async fn host_logs_concatenate_tail_and_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(None, host_files(&dir));
    let (reply, log, _) = rig.read(host_request()).await;
    assert_eq!(code(&reply), Code::Ok, "{}", reply.message);
    assert_eq!(log, b"a1\na2\nb1\nb2\n");
    let (_, log, _) = rig
        .read(LogsRequest {
            tail_lines: Some(3),
            ..host_request()
        })
        .await;
    assert_eq!(log, b"a2\nb1\nb2\n");
    let (_, log, _) = rig
        .read(LogsRequest {
            tail_lines: Some(3),
            limit_bytes: Some(5),
            ..host_request()
        })
        .await;
    assert_eq!(log, b"a2\nb1");
}

#[tokio::test]
async fn host_logs_of_only_missing_files_are_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = HostConfig {
        log_files: vec![dir.path().join("gone.log")],
        ..Default::default()
    };
    let rig = rig(None, host);
    let (reply, _, _) = rig.read(host_request()).await;
    assert_eq!(code(&reply), Code::NotFound);
    assert!(reply.message.contains("gone.log"), "{}", reply.message);
}

#[tokio::test]
async fn host_follow_streams_appends_until_the_client_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host_files(&dir);
    let a = host.log_files[0].clone();
    let mut rig = rig(None, host);
    let (reply, mut stream) = rig
        .ask(LogsRequest {
            follow: true,
            tail_lines: Some(1),
            ..host_request()
        })
        .await;
    assert_eq!(code(&reply), Code::Ok);
    assert_eq!(
        stream.recv_bytes().await.expect("log"),
        Some(Bytes::from_static(b"b2\n"))
    );
    append(&a, "a3\n");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.recv_bytes())
        .await
        .expect("appended line");
    assert_eq!(next.expect("log"), Some(Bytes::from_static(b"a3\n")));
    // Nothing more is written: only the probe notices the client is gone.
    stream.reset(ResetCode::Cancelled, "kubectl went away");
    rig.served().await;
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("append");
}

#[tokio::test]
async fn a_device_without_runtime_is_unavailable() {
    let rig = rig(None, HostConfig::default());
    let (reply, _, _) = rig.read(request()).await;
    assert_eq!(code(&reply), Code::Unavailable);
    assert!(
        reply.message.contains("no container runtime"),
        "{}",
        reply.message
    );
}

// ---- containers, through a fake runtime ----

fn fake(logs: impl Fn() -> LogStream + Send + Sync + 'static) -> Arc<Fake> {
    Arc::new(Fake::with_logs(logs))
}

/// A pod with one running container `app` on the fake runtime.
async fn running_pod(fake: Arc<Fake>) -> (Arc<PodManager>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pods = PodManager::new(
        fake,
        Arc::new(crate::network::fake::FakeNetwork::default()),
        "dev",
        "10.0.0.1".into(),
        dir.path().to_path_buf(),
        crate::runtime::LogRotation::default(),
        None,
    );
    pods.ensure(PodSpec {
        uid: "u".into(),
        namespace: "ns".into(),
        name: "web".into(),
        restart_policy: "Always".into(),
        containers: vec![proto::api::Container {
            name: "app".into(),
            image: "img".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    for _ in 0..500 {
        if pods.container_instance("u", "app", false).is_ok() {
            return (pods, dir);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the fake container never ran");
}

fn scripted(entries: Vec<LogEntry>) -> impl Fn() -> LogStream + Send + Sync {
    move || futures::stream::iter(entries.clone().into_iter().map(Ok)).boxed()
}

#[tokio::test]
async fn container_logs_filter_and_format_and_pass_options_down() {
    let fake = fake(scripted(vec![
        entry(Some("2026-11-25T05:00:00Z"), "old\n"),
        entry(Some("2026-11-25T05:00:02Z"), "new "),
        entry(None, "continued\n"),
    ]));
    let (pods, _dir) = running_pod(fake.clone()).await;
    let rig = rig(Some(pods), HostConfig::default());
    let since = at("2026-11-25T05:00:01Z");
    let (reply, log, _) = rig
        .read(LogsRequest {
            timestamps: true,
            tail_lines: Some(10),
            since_unix_nanos: Some(i64::try_from(since.as_nanosecond()).expect("fits")),
            ..request()
        })
        .await;
    assert_eq!(code(&reply), Code::Ok, "{}", reply.message);
    assert_eq!(
        String::from_utf8(log).expect("utf-8"),
        "2026-11-25T05:00:02.000000000Z new continued\n"
    );
    let asked = fake.asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        vec![(
            "c1".to_string(),
            LogOptions {
                follow: false,
                tail_lines: Some(10),
                since: Some(since),
            }
        )]
    );
}

#[tokio::test]
async fn container_lookups_are_refused_with_kubelet_messages() {
    let (pods, _dir) = running_pod(fake(scripted(Vec::new()))).await;
    let rig = rig(Some(pods), HostConfig::default());
    let (reply, _, _) = rig
        .read(LogsRequest {
            pod_uid: "other".into(),
            ..request()
        })
        .await;
    assert_eq!(code(&reply), Code::NotFound);
    assert_eq!(reply.message, "pod other is not on this device");
    let (reply, _, _) = rig
        .read(LogsRequest {
            container: "sidecar".into(),
            ..request()
        })
        .await;
    assert_eq!(code(&reply), Code::NotFound);
    assert!(reply.message.contains("\"sidecar\""), "{}", reply.message);
    let (reply, _, _) = rig
        .read(LogsRequest {
            previous: true,
            ..request()
        })
        .await;
    assert_eq!(code(&reply), Code::NotFound);
    assert_eq!(
        reply.message,
        "previous terminated container \"app\" in pod \"ns/web\" not found"
    );
}

#[tokio::test]
async fn a_source_failing_at_once_is_the_reply() {
    let fake = fake(|| {
        futures::stream::iter([Err(RuntimeError::failed(
            "reading logs",
            "configured logging driver does not support reading",
        ))])
        .boxed()
    });
    let (pods, _dir) = running_pod(fake).await;
    let rig = rig(Some(pods), HostConfig::default());
    let (reply, _, _) = rig.read(request()).await;
    assert_eq!(code(&reply), Code::Unavailable);
    assert!(
        reply.message.contains("does not support reading"),
        "{}",
        reply.message
    );
}

#[tokio::test]
async fn many_short_lines_are_batched_and_limited_exactly() {
    const LINES: usize = 200_000;
    let fake = fake(|| {
        futures::stream::iter((0..LINES).map(|i| {
            Ok(LogEntry {
                time: Some(Timestamp::UNIX_EPOCH),
                output: LogOutput::Stdout,
                text: Bytes::from(format!("line {i}\n")),
            })
        }))
        .boxed()
    });
    let (pods, _dir) = running_pod(fake).await;
    let rig = rig(Some(pods), HostConfig::default());
    let expected: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    let (reply, log, receives) = rig.read(request()).await;
    assert_eq!(code(&reply), Code::Ok);
    assert!(log == expected.as_bytes(), "the whole log, in order");
    assert!(
        receives <= expected.len() / 8_000,
        "{receives} receives for {} bytes: lines are not batched",
        expected.len()
    );
    let (_, log, _) = rig
        .read(LogsRequest {
            limit_bytes: Some(100_001),
            ..request()
        })
        .await;
    assert!(log == expected.as_bytes()[..100_001], "cut at the limit");
}

/// An endless log that counts what was pulled and notices being dropped.
fn endless(
    pulled: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
) -> impl Fn() -> LogStream + Send + Sync {
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    move || {
        let guard = OnDrop(dropped.clone());
        let pulled = pulled.clone();
        futures::stream::repeat_with(move || {
            let _keep = &guard;
            pulled.fetch_add(100, Ordering::SeqCst);
            Ok(LogEntry {
                time: Some(Timestamp::UNIX_EPOCH),
                output: LogOutput::Stdout,
                text: Bytes::from(vec![b'x'; 100]),
            })
        })
        .boxed()
    }
}

#[tokio::test]
async fn a_slow_client_holds_the_source_back_and_leaving_drops_it() {
    let pulled = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (pods, _dir) = running_pod(fake(endless(pulled.clone(), dropped.clone()))).await;
    let mut rig = rig(Some(pods), HostConfig::default());
    let (reply, mut stream) = rig
        .ask(LogsRequest {
            follow: true,
            ..request()
        })
        .await;
    assert_eq!(code(&reply), Code::Ok);
    // Not reading: the device may only fill the stream's window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = pulled.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = pulled.load(Ordering::SeqCst);
    assert_eq!(
        before, after,
        "the source is not read while the client waits"
    );
    assert!(
        after < 1 << 20,
        "pulled {after} bytes for a client reading none"
    );
    assert!(stream.recv_bytes().await.expect("log").is_some());
    stream.reset(ResetCode::Cancelled, "kubectl went away");
    drop(stream);
    rig.served().await;
    assert!(dropped.load(Ordering::SeqCst), "the source was dropped");
}
