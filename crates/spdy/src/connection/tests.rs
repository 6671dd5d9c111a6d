use bytes::{Bytes, BytesMut};

use super::*;
use crate::frame::{Decoder, Encoder};

/// A client's view: its own compression contexts.
struct Peer {
    encoder: Encoder,
    decoder: Decoder,
    from_server: BytesMut,
}

impl Peer {
    fn new() -> Self {
        Self {
            encoder: Encoder::default(),
            decoder: Decoder::new(1 << 20, 1 << 16),
            from_server: BytesMut::new(),
        }
    }

    fn send(&mut self, server: &mut Connection, frame: Frame) -> Result<(), ConnectionError> {
        let mut wire = BytesMut::new();
        self.encoder.encode(&frame, &mut wire);
        server.receive(&wire)
    }

    fn open(&mut self, server: &mut Connection, stream_id: u32, kind: &str) {
        let r = self.send(
            server,
            Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new().with("streamtype", kind),
            },
        );
        assert_eq!(r, Ok(()));
    }

    fn frames(&mut self, server: &mut Connection) -> Vec<Frame> {
        self.from_server.extend_from_slice(server.output());
        let n = server.output().len();
        server.advance_output(n);
        let mut out = Vec::new();
        while let Ok(Some(f)) = self.decoder.decode(&mut self.from_server) {
            out.push(f);
        }
        out
    }
}

fn events(server: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

#[test]
fn streams_are_replied_to_and_carry_data_both_ways() {
    let mut server = Connection::server(Config::default());
    let mut peer = Peer::new();
    peer.open(&mut server, 1, "stdin");
    assert_eq!(
        peer.frames(&mut server),
        vec![Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new()
        }]
    );
    let _ = peer.send(
        &mut server,
        Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"hi"),
        },
    );
    let _ = peer.send(
        &mut server,
        Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::new(),
        },
    );
    assert_eq!(
        events(&mut server),
        vec![
            Event::Opened {
                stream_id: 1,
                headers: Headers::new().with("streamtype", "stdin"),
                fin: false
            },
            Event::Data {
                stream_id: 1,
                data: Bytes::from_static(b"hi"),
                fin: false
            },
            Event::Data {
                stream_id: 1,
                data: Bytes::new(),
                fin: true
            },
        ]
    );
    assert_eq!(server.send_data(1, &vec![7u8; 70_000], true), Ok(()));
    let sizes: Vec<(usize, bool)> = peer
        .frames(&mut server)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Data { data, fin, .. } => Some((data.len(), fin)),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![(32768, false), (32768, false), (4464, true)]);
    assert_eq!(server.open_streams(), 0, "both sides ended");
    assert_eq!(server.send_data(1, b"late", false), Err(StreamClosed(1)));
}

#[test]
fn data_past_the_window_is_accepted() {
    let mut server = Connection::server(Config::default());
    let mut peer = Peer::new();
    peer.open(&mut server, 1, "stdin");
    for _ in 0..8 {
        let r = peer.send(
            &mut server,
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: vec![0u8; 32768].into(),
            },
        );
        assert_eq!(r, Ok(()));
    }
    let got: usize = events(&mut server)
        .into_iter()
        .map(|e| match e {
            Event::Data { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(got, 8 * 32768);
    server.consumed(1, 40_000);
    assert!(peer.frames(&mut server).contains(&Frame::WindowUpdate {
        stream_id: 1,
        delta: 40_000
    }));
}

#[test]
fn client_pings_are_echoed() {
    let mut server = Connection::server(Config::default());
    let mut peer = Peer::new();
    let _ = peer.send(&mut server, Frame::Ping { id: 1 });
    let _ = peer.send(&mut server, Frame::Ping { id: 2 });
    assert_eq!(peer.frames(&mut server), vec![Frame::Ping { id: 1 }]);
}

#[test]
fn stream_errors_reset_the_stream_and_keep_the_connection() {
    let mut server = Connection::server(Config::default());
    let mut peer = Peer::new();
    // Data for a stream never opened.
    assert_eq!(
        peer.send(
            &mut server,
            Frame::Data {
                stream_id: 9,
                fin: false,
                data: Bytes::from_static(b"x")
            }
        ),
        Ok(())
    );
    assert!(peer.frames(&mut server).contains(&Frame::RstStream {
        stream_id: 9,
        status: RstStatus::InvalidStream
    }));
    // Data after FIN.
    peer.open(&mut server, 11, "data");
    let _ = peer.send(
        &mut server,
        Frame::Data {
            stream_id: 11,
            fin: true,
            data: Bytes::new(),
        },
    );
    let _ = peer.send(
        &mut server,
        Frame::Data {
            stream_id: 11,
            fin: false,
            data: Bytes::from_static(b"x"),
        },
    );
    assert!(peer.frames(&mut server).contains(&Frame::RstStream {
        stream_id: 11,
        status: RstStatus::StreamAlreadyClosed
    }));
    // Still serving.
    peer.open(&mut server, 13, "data");
    assert!(!server.is_finished());
}

#[test]
fn a_stream_id_going_backwards_ends_the_connection_with_goaway() {
    let mut server = Connection::server(Config::default());
    let mut peer = Peer::new();
    peer.open(&mut server, 5, "error");
    let r = peer.send(
        &mut server,
        Frame::SynStream {
            stream_id: 3,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new(),
        },
    );
    assert!(matches!(
        r,
        Err(ConnectionError::Violation(Violation::StreamIdOrder {
            id: 3,
            last: 5
        }))
    ));
    assert!(server.is_finished());
    assert!(peer.frames(&mut server).contains(&Frame::GoAway {
        last_good_stream_id: 5,
        status: GoAwayStatus::ProtocolError
    }));
}

#[test]
fn garbage_ends_the_connection() {
    let mut server = Connection::server(Config::default());
    let r = server.receive(&[0x80, 0x07, 0, 1, 0, 0, 0, 0]);
    assert!(matches!(
        r,
        Err(ConnectionError::Malformed(
            crate::Malformed::UnsupportedVersion(7)
        ))
    ));
    assert!(server.is_finished());
}

#[test]
fn close_cancels_open_streams_then_says_goaway() {
    let mut server = Connection::server(Config::default());
    let mut peer = Peer::new();
    peer.open(&mut server, 1, "error");
    peer.open(&mut server, 3, "stdout");
    let _ = peer.frames(&mut server);
    server.close();
    assert_eq!(
        peer.frames(&mut server),
        vec![
            Frame::RstStream {
                stream_id: 1,
                status: RstStatus::Cancel
            },
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::Cancel
            },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: GoAwayStatus::Ok
            },
        ]
    );
    assert!(server.is_finished());
}

#[test]
fn too_many_streams_are_refused() {
    let mut server = Connection::server(Config {
        max_streams: 1,
        ..Config::default()
    });
    let mut peer = Peer::new();
    peer.open(&mut server, 1, "a");
    peer.open(&mut server, 3, "b");
    assert!(peer.frames(&mut server).contains(&Frame::RstStream {
        stream_id: 3,
        status: RstStatus::RefusedStream
    }));
}
