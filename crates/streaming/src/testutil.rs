//! Replaying the golden transcripts' apiserver side against our server.

use std::{path::Path, time::Duration};

use bytes::BytesMut;
use spdy::{Frame, frame::Decoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The apiserver's bytes after its HTTP head, and its request line.
pub fn apiserver_side(name: &str) -> (String, Vec<u8>) {
    // Cargo's run-time value: a test binary may have been built in another checkout.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let path = Path::new(&manifest)
        .join("../spdy/tests/transcripts")
        .join(format!("{name}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(!text.is_empty(), "{} missing", path.display());
    let mut up = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if v["dir"] == "apiserver->kubelet" {
            up.extend(hex::decode(v["hex"].as_str().unwrap_or_default()).unwrap_or_default());
        }
    }
    let end = up
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&up[..end]).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_string();
    (request_line, up[end..].to_vec())
}

/// The query of a request line `POST /exec/...?query HTTP/1.1`.
pub fn query(request_line: &str) -> Option<String> {
    let target = request_line.split(' ').nth(1)?;
    target.split_once('?').map(|(_, q)| q.to_string())
}

/// Writes `bytes` to the server, then reads its frames until GOAWAY or
/// the socket closes; the apiserver's side stays open until then.
pub async fn replay(mut client: DuplexStream, bytes: Vec<u8>) -> Vec<Frame> {
    let (mut rd, mut wr) = tokio::io::split(&mut client);
    let writer = async move {
        let _ = wr.write_all(&bytes).await;
        wr
    };
    let reader = async {
        let mut decoder = Decoder::new(1 << 20, 1 << 16);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut chunk = vec![0u8; 16384];
        loop {
            while let Ok(Some(f)) = decoder.decode(&mut buf) {
                let last = matches!(f, Frame::GoAway { .. });
                frames.push(f);
                if last {
                    return frames;
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return frames,
            }
        }
    };
    let (_wr, frames) = tokio::join!(writer, reader);
    frames
}

/// Everything sent as DATA on `stream_id`, and whether it ended with FIN.
pub fn data_on(frames: &[Frame], stream_id: u32) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut fin = false;
    for f in frames {
        if let Frame::Data {
            stream_id: id,
            data,
            fin: f,
        } = f
            && *id == stream_id
        {
            out.extend_from_slice(data);
            fin |= *f;
        }
    }
    (out, fin)
}
