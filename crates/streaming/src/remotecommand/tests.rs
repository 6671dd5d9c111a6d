use super::*;
use crate::testutil::{apiserver_side, data_on, query, replay};

#[test]
fn options_like_a_kubelet() {
    let o = ExecOptions::from_query(
        Some("command=sh&command=-c&command=exit+7&error=1&output=1"),
        true,
    );
    assert_eq!(
        o,
        Ok(ExecOptions {
            command: vec!["sh".into(), "-c".into(), "exit 7".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
    );
    assert!(
        ExecOptions::from_query(Some("output=1"), true).is_err(),
        "exec needs a command"
    );
    assert!(
        ExecOptions::from_query(Some("command=sh"), true).is_err(),
        "no channel"
    );
    assert!(
        ExecOptions::from_query(Some("command=sh&output=1"), false).is_err(),
        "attach takes none"
    );
    let tty = ExecOptions::from_query(Some("command=sh&input=1&output=1&error=1&tty=1"), true);
    assert_eq!(tty.map(|o| (o.tty, o.stderr)), Ok((true, false)));
}

/// Serves a transcript's apiserver side with `process` standing in for
/// the container, and returns what we sent back.
async fn serve_transcript<F, Fut>(name: &str, exec: bool, process: F) -> Vec<spdy::Frame>
where
    F: FnOnce(ExecIo) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (line, bytes) = apiserver_side(name);
    let options = ExecOptions::from_query(query(&line).as_deref(), exec).unwrap_or_default();
    let (client, server) = tokio::io::duplex(1 << 20);
    let served = tokio::spawn(async move {
        if let Ok(io) = serve_spdy(server, "v4.channel.k8s.io", &options).await {
            process(io).await;
        }
    });
    let frames = replay(client, bytes).await;
    let _ = served.await;
    frames
}

fn status(frames: &[spdy::Frame]) -> serde_json::Value {
    let (bytes, fin) = data_on(frames, 1);
    assert!(fin, "error stream ended");
    serde_json::from_slice(&bytes).unwrap_or_default()
}

#[tokio::test]
async fn exec_exit7_sends_output_then_the_exit_code() {
    let frames = serve_transcript("exec-exit7", true, |io| async move {
        if let (Some(out), Some(err)) = (&io.stdout, &io.stderr) {
            let _ = out.send(Bytes::from_static(b"out\n")).await;
            let _ = err.send(Bytes::from_static(b"err\n")).await;
        }
        drop(io.stdout);
        drop(io.stderr);
        io.done.report(Outcome::Exited(7));
    })
    .await;
    // error=1, stdout=3, stderr=5 in this session.
    assert_eq!(data_on(&frames, 3), (b"out\n".to_vec(), true));
    assert_eq!(data_on(&frames, 5), (b"err\n".to_vec(), true));
    let s = status(&frames);
    assert_eq!(s["reason"], "NonZeroExitCode");
    assert_eq!(s["details"]["causes"][0]["message"], "7");
    assert!(matches!(frames.last(), Some(spdy::Frame::GoAway { .. })));
}

#[tokio::test]
async fn exec_stdin_cat_echoes_stdin_to_its_eof() {
    let frames = serve_transcript("exec-stdin-cat", true, |mut io| async move {
        let mut stdin = io.stdin.take();
        if let (Some(stdin), Some(out)) = (&mut stdin, &io.stdout) {
            while let Some(data) = stdin.recv().await {
                let _ = out.send(data).await;
            }
        }
        drop(io.stdout);
        io.done.report(Outcome::Exited(0));
    })
    .await;
    let stdout = frames
        .iter()
        .find_map(|f| match f {
            spdy::Frame::Data {
                stream_id, data, ..
            } if !data.is_empty() && *stream_id != 1 => Some(*stream_id),
            _ => None,
        })
        .unwrap_or_default();
    assert_eq!(data_on(&frames, stdout), (b"hello\n".to_vec(), true));
    assert_eq!(status(&frames)["status"], "Success");
}

#[tokio::test]
async fn exec_large_io_takes_all_of_stdin() {
    let frames = serve_transcript("exec-large-io", true, |mut io| async move {
        let mut n = 0usize;
        if let Some(stdin) = &mut io.stdin {
            while let Some(data) = stdin.recv().await {
                n += data.len();
            }
        }
        io.done
            .report(Outcome::Exited(if n == 108_894 { 0 } else { 1 }));
    })
    .await;
    assert_eq!(
        status(&frames)["status"],
        "Success",
        "all 108 894 bytes arrived"
    );
}

#[tokio::test]
async fn exec_tty_sees_every_resize() {
    let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let frames = serve_transcript("exec-tty", true, move |mut io| async move {
        assert!(io.tty && io.stderr.is_none());
        if let Some(resize) = &mut io.resize {
            while let Some(size) = resize.recv().await {
                let mut s = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.push((size.width, size.height));
                if s.len() == 2 {
                    break;
                }
            }
        }
        io.done.report(Outcome::Exited(3));
    })
    .await;
    assert_eq!(
        *sizes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        vec![(80, 24), (120, 40)]
    );
    assert_eq!(status(&frames)["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn attach_replays_with_no_command() {
    let frames = serve_transcript("attach", false, |io| async move {
        if let Some(out) = &io.stdout {
            let _ = out.send(Bytes::from_static(b"attached\n")).await;
        }
        drop(io.stdout);
        drop(io.stderr);
        io.done.report(Outcome::Exited(0));
    })
    .await;
    assert_eq!(status(&frames)["status"], "Success");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_session() {
    let (line, bytes) = apiserver_side("exec-exit7");
    let options = ExecOptions::from_query(query(&line).as_deref(), true).unwrap_or_default();
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let served =
        tokio::spawn(async move { serve_spdy(server, "v4.channel.k8s.io", &options).await });
    use tokio::io::AsyncWriteExt;
    let _ = client.write_all(&bytes).await;
    let io = match served.await {
        Ok(Ok(io)) => io,
        other => panic!("{other:?}"),
    };
    drop(client);
    let cancelled = tokio::time::timeout(Duration::from_secs(5), io.gone.cancelled()).await;
    assert!(cancelled.is_ok(), "gone not signalled");
}
