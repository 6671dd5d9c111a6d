//! The golden transcripts: bytes a real kube-apiserver 1.36 and kubectl
//! exchanged with a real kubelet streaming server (see `transcripts/` and
//! the README beside the originals). Every frame of both directions must
//! decode, and replaying the apiserver's side against our connection must
//! draw the replies the kubelet gave at the SPDY level.

use std::path::Path;

use bytes::BytesMut;
use spdy::{Config, Connection, Event, Frame, frame::Decoder};

#[derive(serde::Deserialize)]
struct Line {
    dir: String,
    hex: String,
}

struct Transcript {
    name: String,
    /// After the HTTP head, each direction's SPDY bytes.
    from_apiserver: Vec<u8>,
    from_kubelet: Vec<u8>,
    /// Each read of the apiserver's side, as it arrived.
    apiserver_reads: Vec<Vec<u8>>,
}

fn load(path: &Path) -> Transcript {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut up = Vec::new();
    let mut down = Vec::new();
    let mut reads = Vec::new();
    for line in text.lines() {
        let Ok(line) = serde_json::from_str::<Line>(line) else {
            panic!("{}: bad line", path.display())
        };
        let bytes = hex::decode(&line.hex).unwrap_or_default();
        if line.dir == "apiserver->kubelet" {
            up.extend_from_slice(&bytes);
            reads.push(bytes);
        } else {
            down.extend_from_slice(&bytes);
        }
    }
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let up_head = head_end(&up).unwrap_or(up.len());
    let down_head = head_end(&down).unwrap_or(down.len());
    // The apiserver's reads after its head, re-cut where the head ended.
    let mut skip = up_head;
    let mut apiserver_reads = Vec::new();
    for read in reads {
        if skip >= read.len() {
            skip -= read.len();
            continue;
        }
        apiserver_reads.push(read[skip..].to_vec());
        skip = 0;
    }
    Transcript {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        from_apiserver: up[up_head..].to_vec(),
        from_kubelet: down[down_head..].to_vec(),
        apiserver_reads,
    }
}

fn transcripts() -> Vec<Transcript> {
    // Cargo's run-time value: the binary may have been built in another checkout.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let dir = Path::new(&manifest).join("tests/transcripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    paths.sort();
    assert!(
        paths.len() >= 20,
        "transcripts missing from {}",
        dir.display()
    );
    paths.iter().map(|p| load(p)).collect()
}

/// Every whole frame in `bytes`; a frame cut off by the teardown is allowed
/// at the end only.
fn frames(name: &str, bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = Decoder::new(1 << 24, 1 << 20);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => break,
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert!(
        buf.len() < 4096,
        "{name}: {} bytes left undecoded",
        buf.len()
    );
    out
}

#[test]
fn every_frame_of_every_transcript_decodes() {
    for t in transcripts() {
        if t.name.starts_with("logs") {
            continue;
        }
        let up = frames(&t.name, &t.from_apiserver);
        let down = frames(&t.name, &t.from_kubelet);
        assert!(
            up.iter().any(|f| matches!(f, Frame::SynStream { .. })),
            "{}",
            t.name
        );
        assert!(
            down.iter().any(|f| matches!(f, Frame::SynReply { .. })),
            "{}",
            t.name
        );
        for f in &up {
            if let Frame::SynStream { headers, .. } = f {
                assert!(headers.get("streamType").is_some(), "{}: {f:?}", t.name);
            }
        }
    }
}

#[test]
fn replaying_the_apiserver_draws_the_kubelets_replies() {
    for t in transcripts() {
        if t.name.starts_with("logs") {
            continue;
        }
        let mut server = Connection::server(Config::default());
        let mut opened = Vec::new();
        let mut stdin = 0usize;
        for read in &t.apiserver_reads {
            if let Err(e) = server.receive(read) {
                panic!("{}: {e}", t.name);
            }
            while let Some(event) = server.poll_event() {
                match event {
                    Event::Opened {
                        stream_id, headers, ..
                    } => {
                        opened.push((stream_id, headers.get("streamtype").map(str::to_owned)));
                    }
                    Event::Data { data, .. } => stdin += data.len(),
                    _ => {}
                }
            }
        }
        let ours = frames(&t.name, server.output());
        let theirs = frames(&t.name, &t.from_kubelet);
        // As a set: the kubelet replies from concurrent goroutines.
        let replies = |fs: &[Frame]| -> Vec<u32> {
            let mut ids: Vec<u32> = fs
                .iter()
                .filter_map(|f| match f {
                    Frame::SynReply {
                        stream_id, headers, ..
                    } if headers.is_empty() => Some(*stream_id),
                    _ => None,
                })
                .collect();
            ids.sort_unstable();
            ids
        };
        let pings = |fs: &[Frame]| -> Vec<u32> {
            fs.iter()
                .filter_map(|f| match f {
                    Frame::Ping { id } => Some(*id),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(replies(&ours), replies(&theirs), "{}: SYN_REPLYs", t.name);
        // Pings the kubelet echoed before the connection went are ours too.
        let their_pings = pings(&theirs);
        assert!(
            pings(&ours).starts_with(&their_pings),
            "{}: PING echoes",
            t.name
        );
        assert_eq!(opened.len(), replies(&theirs).len(), "{}", t.name);
        if t.name.starts_with("exec-large-io") {
            assert_eq!(stdin, 108_894, "{}: all of stdin past the window", t.name);
        }
    }
}
