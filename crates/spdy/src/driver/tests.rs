use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::frame::{Decoder, Encoder, Frame};

struct Client {
    io: DuplexStream,
    encoder: Encoder,
    decoder: Decoder,
    buf: BytesMut,
}

impl Client {
    fn new(io: DuplexStream) -> Self {
        Self {
            io,
            encoder: Encoder::default(),
            decoder: Decoder::new(1 << 20, 1 << 16),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, frame: Frame) -> std::io::Result<()> {
        let mut wire = BytesMut::new();
        self.encoder.encode(&frame, &mut wire);
        self.io.write_all(&wire).await
    }

    async fn open(&mut self, id: u32, kind: &str) {
        let frame = Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new().with("streamtype", kind),
        };
        assert!(self.send(frame).await.is_ok());
    }

    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Ok(Some(frame)) = self.decoder.decode(&mut self.buf) {
                return Some(frame);
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), self.io.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until `want` matches one.
    async fn until(&mut self, want: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut seen = Vec::new();
        while let Some(frame) = self.next().await {
            let done = want(&frame);
            seen.push(frame);
            if done {
                break;
            }
        }
        seen
    }
}

#[tokio::test]
async fn streams_carry_bytes_both_ways() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut incoming, session) = serve(b, Config::default());
    let mut client = Client::new(a);
    client.open(1, "stdin").await;
    let Some(mut stream) = incoming.accept().await else {
        panic!("no stream")
    };
    assert_eq!(stream.headers.get("streamType"), Some("stdin"));
    let _ = client
        .send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"hello"),
        })
        .await;
    assert_eq!(
        stream.reader.recv().await,
        Some(Ok(Bytes::from_static(b"hello")))
    );
    assert_eq!(stream.reader.recv().await, None, "FIN");
    assert_eq!(
        stream.writer.write(Bytes::from_static(b"back")).await,
        Ok(())
    );
    assert_eq!(stream.writer.finish().await, Ok(()));
    let frames = client
        .until(|f| matches!(f, Frame::Data { fin: true, .. }))
        .await;
    assert!(frames.contains(&Frame::SynReply {
        stream_id: 1,
        fin: false,
        headers: Headers::new()
    }));
    assert!(frames.contains(&Frame::Data {
        stream_id: 1,
        fin: false,
        data: Bytes::from_static(b"back")
    }));
    drop(stream);
    drop(incoming);
    assert!(session.close().await.is_ok());
}

#[tokio::test]
async fn a_slow_reader_stops_the_socket_being_read_and_loses_nothing() {
    let (a, b) = tokio::io::duplex(16 * 1024);
    let (mut incoming, _session) = serve(b, Config::default());
    let mut client = Client::new(a);
    client.open(1, "stdin").await;
    let Some(mut stream) = incoming.accept().await else {
        panic!("no stream")
    };
    // 4 MiB at the server while nobody reads it: the writes must stall.
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut client_rd, mut client_wr) = tokio::io::split(client.io);
    let mut encoder = client.encoder;
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(32 * 1024) {
            let mut wire = BytesMut::new();
            encoder.encode(
                &Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                },
                &mut wire,
            );
            client_wr.write_all(&wire).await?;
        }
        let mut wire = BytesMut::new();
        encoder.encode(
            &Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            },
            &mut wire,
        );
        client_wr.write_all(&wire).await?;
        Ok::<_, std::io::Error>(client_wr)
    });
    // Drain what the server writes (replies) so it never blocks on us.
    tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(client_rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "the server kept reading with its reader stalled"
    );
    let mut got = Vec::with_capacity(payload.len());
    while let Some(item) = stream.reader.recv().await {
        match item {
            Ok(data) => got.extend_from_slice(&data),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(got == payload, "bytes lost or reordered");
    assert!(matches!(writer.await, Ok(Ok(_))));
}

#[tokio::test]
async fn a_peer_reset_reaches_the_reader_and_the_writer() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut incoming, _session) = serve(b, Config::default());
    let mut client = Client::new(a);
    client.open(1, "data").await;
    let Some(mut stream) = incoming.accept().await else {
        panic!("no stream")
    };
    let _ = client
        .send(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::Cancel,
        })
        .await;
    assert_eq!(
        stream.reader.recv().await,
        Some(Err(StreamEnd::Reset(RstStatus::Cancel)))
    );
    assert!(stream.writer.is_reset());
    assert!(stream.writer.write(Bytes::from_static(b"x")).await.is_err());
}

#[tokio::test]
async fn closing_cancels_streams_and_says_goaway() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut incoming, session) = serve(b, Config::default());
    let mut client = Client::new(a);
    client.open(1, "error").await;
    client.open(3, "stdout").await;
    let _s1 = incoming.accept().await;
    let _s3 = incoming.accept().await;
    assert!(session.close().await.is_ok());
    let frames = client.until(|f| matches!(f, Frame::GoAway { .. })).await;
    assert!(frames.contains(&Frame::RstStream {
        stream_id: 1,
        status: RstStatus::Cancel
    }));
    assert!(frames.contains(&Frame::RstStream {
        stream_id: 3,
        status: RstStatus::Cancel
    }));
    assert!(frames.contains(&Frame::GoAway {
        last_good_stream_id: 3,
        status: crate::GoAwayStatus::Ok
    }));
    assert_eq!(client.next().await, None, "socket closed");
}

#[tokio::test]
async fn garbage_ends_the_session_with_an_error_not_a_panic() {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let (_incoming, session) = serve(b, Config::default());
    let _ = a.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(matches!(
        session.finished().await,
        Err(DriverError::Protocol(_))
    ));
}
