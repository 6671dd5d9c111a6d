//! Unit tests of the session state machine: two sessions wired back to back.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> Config {
    Config {
        max_frame_size: 1024,
        initial_window: 8192,
        max_header_size: 512,
        ..Config::default()
    }
}

/// Two sessions and a clock; `a` is the cloud, `b` the device.
struct Pair {
    a: Session,
    b: Session,
    now: Instant,
    ev_a: Vec<Event>,
    ev_b: Vec<Event>,
    frames: usize,
}

impl Pair {
    fn new(c: Config) -> Self {
        let now = Instant::now();
        let mut p = Pair {
            a: Session::new(Role::Cloud, c.clone(), 1, now),
            b: Session::new(Role::Device, c, 1, now),
            now,
            ev_a: Vec::new(),
            ev_b: Vec::new(),
            frames: 0,
        };
        p.pump();
        p
    }

    /// Moves every frame both ways until quiet, checking frame sizes; `drop_ab` /
    /// `drop_ba` decide per frame whether it is lost.
    fn pump_with(
        &mut self,
        mut drop_ab: impl FnMut(&[u8]) -> bool,
        mut drop_ba: impl FnMut(&[u8]) -> bool,
    ) {
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(f) = self.a.poll_transmit(self.now) {
                assert!(f.len() <= self.a.config().max_frame_size);
                self.frames += 1;
                moved = true;
                if !drop_ab(&f) {
                    self.b.handle_frame(&f, self.now).unwrap();
                }
            }
            while let Some(f) = self.b.poll_transmit(self.now) {
                assert!(f.len() <= self.b.config().max_frame_size);
                self.frames += 1;
                moved = true;
                if !drop_ba(&f) {
                    self.a.handle_frame(&f, self.now).unwrap();
                }
            }
            while let Some(e) = self.a.poll_event() {
                self.ev_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.ev_b.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn pump(&mut self) {
        self.pump_with(|_| false, |_| false);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
    }

    /// Takes b's received bytes on `id`, consuming them.
    fn take_b(&mut self, id: StreamId) -> Vec<u8> {
        let mut out = Vec::new();
        for e in std::mem::take(&mut self.ev_b) {
            match e {
                Event::Data { id: i, data } if i == id => {
                    self.b.consume(id, data.len());
                    out.extend_from_slice(&data);
                }
                other => self.ev_b.push(other),
            }
        }
        out
    }
}

fn frame(epoch: u64, items: Vec<wire::Item>) -> Vec<u8> {
    wire::Frame { epoch, items }.encode_to_vec()
}

fn chunk(id: u64, offset: u64, data: &[u8], fin: bool, open: Option<&[u8]>) -> wire::Item {
    wire::Item::chunk(wire::Chunk {
        stream_id: id,
        offset,
        data: Bytes::copy_from_slice(data),
        fin,
        open: open.map(|h| wire::Open {
            header: Bytes::copy_from_slice(h),
            idle_timeout_ms: 0,
        }),
    })
}

fn payload(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>())
}

#[test]
fn open_send_finish_close() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::from_static(b"exec"), None, p.now).unwrap();
    assert_eq!(id, StreamId(0));
    let data = payload(20_000);
    p.a.send(id, data.clone(), p.now).unwrap();
    p.a.finish(id, p.now).unwrap();
    assert_eq!(
        p.a.send(id, Bytes::from_static(b"x"), p.now),
        Err(Error::StreamFinished(id))
    );
    let mut got = Vec::new();
    for _ in 0..100 {
        p.pump();
        got.extend(p.take_b(id));
    }
    assert_eq!(got, data.to_vec());
    assert_eq!(
        p.ev_b,
        vec![
            Event::Opened {
                id,
                header: Bytes::from_static(b"exec")
            },
            Event::Finished { id }
        ]
    );
    p.ev_b.clear();
    p.b.send(id, Bytes::from_static(b"reply"), p.now).unwrap();
    p.b.finish(id, p.now).unwrap();
    p.pump();
    // 20 000 bytes exceeded the 8 KiB window, so a saw its credit come back.
    assert_eq!(p.ev_a.remove(0), Event::Writable { id });
    assert_eq!(
        p.ev_a,
        vec![
            Event::Data {
                id,
                data: Bytes::from_static(b"reply")
            },
            Event::Finished { id },
            Event::Closed { id },
        ]
    );
    assert_eq!(p.ev_b, vec![Event::Closed { id }]);
    assert_eq!((p.a.stream_count(), p.b.stream_count()), (0, 0));
    assert_eq!(p.a.inflight(), 0);
}

#[test]
fn a_write_of_chunk_payload_goes_in_one_frame_beside_acks() {
    let mut p = Pair::new(Config {
        max_frame_size: 16 * 1024,
        initial_window: 1 << 20,
        ..cfg()
    });
    // Streams both ways, so the frame carrying the write also carries acks.
    let ids: Vec<StreamId> = (0..4)
        .map(|_| p.a.open(Bytes::from_static(b"h"), None, p.now).unwrap())
        .collect();
    p.pump();
    for &id in &ids {
        p.b.send(id, payload(100), p.now).unwrap();
    }
    while let Some(f) = p.b.poll_transmit(p.now) {
        p.a.handle_frame(&f, p.now).unwrap();
    }
    let n = chunk_payload(16 * 1024);
    p.a.send(ids[0], payload(n), p.now).unwrap();
    let frame = p.a.poll_transmit(p.now).unwrap();
    p.b.handle_frame(&frame, p.now).unwrap();
    while let Some(e) = p.b.poll_event() {
        p.ev_b.push(e);
    }
    assert_eq!(p.take_b(ids[0]), payload(n).to_vec());
}

#[test]
fn ids_follow_role_parity() {
    let mut p = Pair::new(cfg());
    let a1 = p.a.open(Bytes::new(), None, p.now).unwrap();
    let a2 = p.a.open(Bytes::new(), None, p.now).unwrap();
    let b1 = p.b.open(Bytes::new(), None, p.now).unwrap();
    assert_eq!((a1, a2, b1), (StreamId(0), StreamId(2), StreamId(1)));
    p.pump();
    assert_eq!(p.a.stream_count(), 3);
    assert_eq!(p.b.stream_count(), 3);
}

#[test]
fn flow_control_stops_sender_and_writable_resumes() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    assert_eq!(p.a.send_capacity(id), 8192);
    p.a.send(id, payload(20_000), p.now).unwrap();
    assert_eq!(p.a.send_capacity(id), 0);
    p.pump();
    // b does not consume: exactly one window arrives and the sender waits.
    let got: usize = p
        .ev_b
        .iter()
        .map(|e| match e {
            Event::Data { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(got, 8192);
    assert_eq!(p.b.recv_buffered(id), 8192);
    assert!(!p.ev_a.iter().any(|e| matches!(e, Event::Writable { .. })));
    // One window consumed: credit reaches 16 KiB, still below the 20 000 queued.
    assert_eq!(p.take_b(id).len(), 8192);
    p.pump();
    assert_eq!(p.a.send_capacity(id), 0);
    assert!(!p.ev_a.contains(&Event::Writable { id }));
    assert_eq!(p.take_b(id).len(), 8192);
    p.pump();
    assert_eq!(p.ev_a, vec![Event::Writable { id }]);
    assert_eq!(p.a.send_capacity(id), 3 * 8192 - 20_000);
    assert_eq!(p.take_b(id).len(), 20_000 - 2 * 8192);
    assert!(p.b.recv_buffered(id) <= 8192);
}

#[test]
fn credit_before_settings_is_min_window() {
    let now = Instant::now();
    let c = Config {
        initial_window: 1 << 20,
        ..cfg()
    };
    let mut a = Session::new(Role::Cloud, c, 0, now);
    let id = a.open(Bytes::new(), None, now).unwrap();
    assert_eq!(a.send_capacity(id), MIN_WINDOW as usize);
    let pong = frame(
        0,
        vec![wire::Item::pong(wire::Pong {
            nonce: 1,
            initial_window: 1 << 20,
        })],
    );
    a.handle_frame(&pong, now).unwrap();
    assert_eq!(a.send_capacity(id), 1 << 20);
}

#[test]
fn peer_data_beyond_window_is_a_protocol_error() {
    let now = Instant::now();
    let mut b = Session::new(Role::Device, cfg(), 3, now);
    let f = frame(3, vec![chunk(0, 8000, &[0; 500], false, Some(b"h"))]);
    let err = b.handle_frame(&f, now).unwrap_err();
    assert!(matches!(
        err,
        FrameError::Protocol(Violation::FlowControl {
            id: StreamId(0),
            end: 8500,
            limit: 8192
        })
    ));
}

#[test]
fn wrong_parity_and_unopened_ids_are_protocol_errors() {
    let now = Instant::now();
    let mut b = Session::new(Role::Device, cfg(), 0, now);
    let f = frame(0, vec![chunk(1, 0, b"x", false, Some(b""))]);
    assert!(matches!(
        b.handle_frame(&f, now),
        Err(FrameError::Protocol(Violation::WrongParity(StreamId(1))))
    ));
    let f = frame(0, vec![chunk(5, 0, b"x", false, None)]);
    assert!(matches!(
        b.handle_frame(&f, now),
        Err(FrameError::Protocol(Violation::NotOpened(StreamId(5))))
    ));
    let f = frame(0, vec![chunk(u64::MAX, 0, b"x", false, None)]);
    assert!(matches!(
        b.handle_frame(&f, now),
        Err(FrameError::Protocol(Violation::StreamIdOutOfRange(_)))
    ));
    let f = frame(0, vec![chunk(0, u64::MAX - 1, b"xx", false, None)]);
    assert!(matches!(
        b.handle_frame(&f, now),
        Err(FrameError::Protocol(Violation::OffsetOutOfRange(_)))
    ));
}

#[test]
fn ack_of_unsent_data_is_a_protocol_error() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.a.send(id, payload(10), p.now).unwrap();
    p.pump();
    let f = frame(
        1,
        vec![wire::Item::ack(wire::Ack {
            stream_id: 0,
            received: 11,
            fin: false,
            max_data: 0,
        })],
    );
    assert!(matches!(
        p.a.handle_frame(&f, p.now),
        Err(FrameError::Protocol(Violation::AckBeyondSent(_)))
    ));
}

#[test]
fn garbage_is_malformed() {
    let now = Instant::now();
    let mut b = Session::new(Role::Device, cfg(), 0, now);
    assert!(matches!(
        b.handle_frame(&[0xff, 0xff, 0xff], now),
        Err(FrameError::Malformed(Malformed::Decode(_)))
    ));
    // A length prefix far beyond the input must not allocate or panic.
    assert!(
        b.handle_frame(&[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f], now)
            .is_err()
    );
}

#[test]
fn frames_of_other_epochs_are_discarded() {
    let now = Instant::now();
    let mut b = Session::new(Role::Device, cfg(), 5, now);
    for e in [4, 6] {
        let f = frame(e, vec![chunk(0, 0, b"x", false, Some(b"h"))]);
        b.handle_frame(&f, now).unwrap();
    }
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.stream_count(), 0);
}

#[test]
fn data_before_open_is_held_until_open() {
    let now = Instant::now();
    let mut b = Session::new(Role::Device, cfg(), 0, now);
    b.handle_frame(&frame(0, vec![chunk(2, 3, b"def", true, None)]), now)
        .unwrap();
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.stream_count(), 1);
    // Stream 0 was skipped over by 2 but must still open.
    b.handle_frame(&frame(0, vec![chunk(0, 0, b"", false, Some(b"zero"))]), now)
        .unwrap();
    assert!(matches!(
        b.poll_event(),
        Some(Event::Opened {
            id: StreamId(0),
            ..
        })
    ));
    b.handle_frame(
        &frame(0, vec![chunk(2, 0, b"abc", false, Some(b"two"))]),
        now,
    )
    .unwrap();
    let id = StreamId(2);
    assert_eq!(
        b.poll_event(),
        Some(Event::Opened {
            id,
            header: Bytes::from_static(b"two")
        })
    );
    assert_eq!(
        b.poll_event(),
        Some(Event::Data {
            id,
            data: Bytes::from_static(b"abc")
        })
    );
    assert_eq!(
        b.poll_event(),
        Some(Event::Data {
            id,
            data: Bytes::from_static(b"def")
        })
    );
    assert_eq!(b.poll_event(), Some(Event::Finished { id }));
    assert_eq!(b.poll_event(), None);
}

#[test]
fn duplicates_are_delivered_once_and_reacked() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.a.send(id, payload(3000), p.now).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = p.a.poll_transmit(p.now) {
        frames.push(f);
    }
    for f in frames.iter().chain(frames.iter().rev()) {
        p.b.handle_frame(f, p.now).unwrap();
    }
    p.pump_with(|_| false, |_| false);
    assert_eq!(p.take_b(id), payload(3000).to_vec());
    assert_eq!(p.a.inflight(), 0);
}

#[test]
fn lost_data_is_retransmitted_after_timeout() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::from_static(b"h"), None, p.now).unwrap();
    p.a.send(id, payload(5000), p.now).unwrap();
    p.a.finish(id, p.now).unwrap();
    // Lose every frame from a once.
    p.pump_with(|_| true, |_| false);
    assert!(p.ev_b.is_empty());
    let t = p.a.poll_timeout().unwrap();
    assert!(t <= p.now + Duration::from_secs(1));
    p.advance(Duration::from_secs(1));
    p.pump();
    assert_eq!(p.take_b(id), payload(5000).to_vec());
    assert!(p.ev_b.contains(&Event::Finished { id }));
}

#[test]
fn lost_acks_are_repaired_by_reacking_duplicates() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.a.send(id, payload(2000), p.now).unwrap();
    p.pump_with(|_| false, |_| true);
    assert_eq!(p.take_b(id).len(), 2000);
    assert_eq!(p.a.inflight(), 2000);
    p.advance(Duration::from_secs(1));
    p.pump();
    assert_eq!(p.a.inflight(), 0);
    assert!(
        p.take_b(id).is_empty(),
        "retransmission must not be delivered twice"
    );
}

#[test]
fn resume_retransmits_promptly_and_ignores_old_epoch() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.a.send(id, payload(6000), p.now).unwrap();
    let mut old = Vec::new();
    while let Some(f) = p.a.poll_transmit(p.now) {
        old.push(f);
    }
    p.a.resume(2, p.now);
    p.b.resume(2, p.now);
    for f in &old {
        p.b.handle_frame(f, p.now).unwrap();
    }
    assert!(p.b.poll_event().is_none(), "old epoch frames are discarded");
    p.pump();
    assert_eq!(p.take_b(id), payload(6000).to_vec());
    assert_eq!(p.a.epoch(), 2);
}

#[test]
fn resume_on_a_smaller_transport_recuts_unacknowledged_data() {
    let mut p = Pair::new(Config {
        max_frame_size: 4096,
        ..cfg()
    });
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.a.send(id, payload(6000), p.now).unwrap();
    // Everything sent in big frames is lost with the old link.
    while p.a.poll_transmit(p.now).is_some() {}
    p.a.resume(2, p.now);
    p.b.resume(2, p.now);
    p.a.set_max_frame_size(600);
    p.b.set_max_frame_size(600);
    // pump_with checks every frame against the new size.
    p.pump();
    assert_eq!(p.take_b(id), payload(6000).to_vec());
    assert_eq!(p.a.config().max_frame_size, 600);
    assert!(p.a.config().max_header_size + OPEN_OVERHEAD <= 600);
}

#[test]
fn reset_reaches_peer_reliably() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.a.send(id, payload(100), p.now).unwrap();
    p.pump();
    p.ev_b.clear();
    p.a.reset(id, ResetCode::Cancelled, "user hit ^C", p.now);
    assert_eq!(p.a.stream_count(), 0);
    // The reset is lost; it is retransmitted until acknowledged.
    p.pump_with(|_| true, |_| false);
    assert_eq!(p.b.stream_count(), 1);
    p.advance(Duration::from_secs(1));
    p.pump();
    assert_eq!(
        p.ev_b,
        vec![Event::Reset {
            id,
            code: ResetCode::Cancelled,
            reason: "user hit ^C".into()
        }]
    );
    assert_eq!(p.b.stream_count(), 0);
    assert!(p.a.tombs.next_timeout().is_none(), "reset was acknowledged");
    assert!(p.ev_a.is_empty());
}

#[test]
fn chunk_for_reset_stream_is_answered_with_reset() {
    let now = Instant::now();
    let mut b = Session::new(Role::Device, cfg(), 0, now);
    b.handle_frame(&frame(0, vec![chunk(0, 0, b"a", false, Some(b""))]), now)
        .unwrap();
    b.reset(StreamId(0), ResetCode::Internal, "boom", now);
    let _ = b.poll_transmit(now);
    b.handle_frame(&frame(0, vec![chunk(0, 1, b"b", false, None)]), now)
        .unwrap();
    let f = wire::Frame::decode(b.poll_transmit(now).unwrap()).unwrap();
    assert!(f.items.iter().any(|i| matches!(
        &i.kind,
        Some(wire::item::Kind::Reset(r)) if r.stream_id == 0 && r.code == ResetCode::Internal.to_u32()
    )));
}

#[test]
fn lost_final_ack_is_repaired_without_reset() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.b_open_reply(id);
    // a sends its fin; b acks it, but every ack from b is lost.
    p.a.finish(id, p.now).unwrap();
    p.pump_with(|_| false, |_| true);
    assert!(p.ev_b.contains(&Event::Closed { id }), "{:?}", p.ev_b);
    assert_eq!(p.b.stream_count(), 0);
    assert_eq!(p.a.stream_count(), 1);
    p.advance(Duration::from_secs(1));
    p.pump();
    assert!(p.ev_a.contains(&Event::Closed { id }), "{:?}", p.ev_a);
    assert!(!p.ev_a.iter().any(|e| matches!(e, Event::Reset { .. })));
    assert_eq!(p.a.stream_count(), 0);
}

impl Pair {
    /// b answers stream `id` with data and finishes its side.
    fn b_open_reply(&mut self, id: StreamId) {
        self.pump();
        self.b
            .send(id, Bytes::from_static(b"ok"), self.now)
            .unwrap();
        self.b.finish(id, self.now).unwrap();
        self.pump();
    }
}

#[test]
fn idle_timeout_resets_both_sides() {
    let mut p = Pair::new(cfg());
    let id =
        p.a.open(Bytes::new(), Some(Duration::from_secs(5)), p.now)
            .unwrap();
    p.pump();
    p.advance(Duration::from_secs(3));
    p.a.send(id, Bytes::from_static(b"keep"), p.now).unwrap();
    p.pump();
    p.advance(Duration::from_secs(3));
    p.pump();
    assert_eq!(p.a.stream_count(), 1, "activity postponed the timeout");
    p.advance(Duration::from_secs(3));
    p.pump();
    let idle = |ev: &[Event]| {
        ev.iter().any(|e| {
            matches!(
                e,
                Event::Reset {
                    code: ResetCode::IdleTimeout,
                    ..
                }
            )
        })
    };
    assert!(idle(&p.ev_a), "{:?}", p.ev_a);
    assert!(idle(&p.ev_b), "{:?}", p.ev_b);
    assert_eq!((p.a.stream_count(), p.b.stream_count()), (0, 0));
}

#[test]
fn streams_beyond_max_are_refused() {
    let c = Config {
        max_streams: 2,
        ..cfg()
    };
    let mut p = Pair::new(c);
    let s1 = p.a.open(Bytes::new(), None, p.now).unwrap();
    let s2 = p.a.open(Bytes::new(), None, p.now).unwrap();
    assert_eq!(
        p.a.open(Bytes::new(), None, p.now),
        Err(Error::TooManyStreams)
    );
    let _ = p.b.open(Bytes::new(), None, p.now).unwrap();
    p.pump();
    // b had one stream of its own, so one of a's is refused.
    let refused: Vec<_> = p
        .ev_a
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Reset {
                    code: ResetCode::Refused,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", p.ev_a);
    assert!(p.b.stream_count() <= 2);
    let _ = (s1, s2);
}

#[test]
fn oversized_headers_are_rejected() {
    let now = Instant::now();
    let mut a = Session::new(Role::Cloud, cfg(), 0, now);
    assert_eq!(
        a.open(Bytes::from(vec![0; 513]), None, now),
        Err(Error::HeaderTooLarge { len: 513, max: 512 })
    );
    let mut b = Session::new(Role::Device, cfg(), 0, now);
    b.handle_frame(
        &frame(0, vec![chunk(0, 0, b"", false, Some(&[0; 600]))]),
        now,
    )
    .unwrap();
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.stream_count(), 0);
    let f = wire::Frame::decode(b.poll_transmit(now).unwrap()).unwrap();
    assert!(f.items.iter().any(|i| matches!(
        &i.kind,
        Some(wire::item::Kind::Reset(r)) if r.code == ResetCode::ProtocolError.to_u32()
    )));
}

#[test]
fn largest_header_fits_smallest_frame() {
    for size in [MIN_FRAME_SIZE, 1024, 8192] {
        let c = Config::with_frame_size(size);
        let now = Instant::now();
        let mut a = Session::new(Role::Cloud, c.clone(), u64::MAX, now);
        let id = a
            .open(
                Bytes::from(vec![0xAB; c.max_header_size]),
                Some(Duration::MAX),
                now,
            )
            .unwrap();
        a.send(id, payload(100), now).unwrap();
        a.finish(id, now).unwrap();
        let mut n = 0;
        while let Some(f) = a.poll_transmit(now) {
            assert!(f.len() <= size);
            n += 1;
        }
        assert!(n >= 1);
    }
}

#[test]
fn keepalive_and_peer_timeout() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.pump();
    p.advance(Duration::from_secs(10));
    assert!(p.a.poll_transmit(p.now).is_some(), "keepalive ping");
    // The link is dead from now on: nothing gets through.
    for _ in 0..40 {
        p.advance(Duration::from_secs(1));
        while p.a.poll_transmit(p.now).is_some() {}
        while p.b.poll_transmit(p.now).is_some() {}
    }
    let ev: Vec<_> = std::iter::from_fn(|| p.a.poll_event()).collect();
    assert_eq!(
        ev,
        vec![
            Event::Reset {
                id,
                code: ResetCode::PeerTimeout,
                reason: "peer timed out".into()
            },
            Event::PeerTimedOut
        ]
    );
    assert_eq!(p.a.stream_count(), 0);
}

#[test]
fn keepalive_keeps_a_quiet_link_alive() {
    let mut p = Pair::new(cfg());
    for _ in 0..10 {
        let t = p.a.poll_timeout().unwrap().min(p.b.poll_timeout().unwrap());
        assert!(t > p.now);
        p.now = t;
        p.a.handle_timeout(t);
        p.b.handle_timeout(t);
        p.pump();
    }
    assert!(!p.ev_a.contains(&Event::PeerTimedOut));
    assert!(!p.ev_b.contains(&Event::PeerTimedOut));
    assert!(p.now >= p.a.last_recv);
}

#[test]
fn inflight_cap_is_respected() {
    let c = Config {
        max_inflight: 4096,
        initial_window: 65536,
        ..cfg()
    };
    let mut p = Pair::new(c);
    let ids: Vec<_> = (0..3)
        .map(|_| p.a.open(Bytes::new(), None, p.now).unwrap())
        .collect();
    for &id in &ids {
        p.a.send(id, payload(30_000), p.now).unwrap();
    }
    while p.a.poll_transmit(p.now).is_some() {}
    assert!(p.a.inflight() <= 4096);
    assert!(p.a.inflight() > 0);
    // Lose everything; after resume the same data flows, still capped.
    p.a.resume(2, p.now);
    p.b.resume(2, p.now);
    let mut total = [0usize; 3];
    for _ in 0..200 {
        p.pump();
        assert!(p.a.inflight() <= 4096);
        for (i, &id) in ids.iter().enumerate() {
            total[i] += p.take_b(id).len();
        }
    }
    assert_eq!(total, [30_000; 3]);
}

#[test]
fn lost_window_update_is_repaired_by_probe() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.a.send(id, payload(10_000), p.now).unwrap();
    p.pump();
    assert_eq!(p.take_b(id).len(), 8192);
    // The window update from b is lost.
    p.pump_with(|_| false, |_| true);
    assert!(p.take_b(id).is_empty());
    p.advance(Duration::from_secs(1));
    p.pump();
    assert_eq!(p.take_b(id).len(), 10_000 - 8192);
}

#[test]
fn consume_after_close_and_unknown_ids_are_harmless() {
    let mut p = Pair::new(cfg());
    p.a.consume(StreamId(42), 10);
    p.a.reset(StreamId(42), ResetCode::Cancelled, "", p.now);
    assert_eq!(
        p.a.send(StreamId(42), Bytes::new(), p.now),
        Err(Error::UnknownStream(StreamId(42)))
    );
    assert_eq!(
        p.a.finish(StreamId(42), p.now),
        Err(Error::UnknownStream(StreamId(42)))
    );
    assert_eq!(p.a.send_capacity(StreamId(42)), 0);
    p.pump();
    assert_eq!(p.ev_b, vec![]);
}

#[test]
fn long_reasons_are_truncated_on_a_char_boundary() {
    let r = "é".repeat(200);
    let t = truncate_reason(&r);
    assert!(t.len() <= MAX_REASON_LEN);
    assert!(r.starts_with(&t));
    let _ = MS;
}

#[test]
fn lost_window_update_at_exact_credit_is_repaired_by_probe() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    // The app respects back-pressure exactly: it queues the credit and no more.
    let cap = p.a.send_capacity(id);
    p.a.send(id, payload(cap), p.now).unwrap();
    assert_eq!(p.a.send_capacity(id), 0);
    p.pump();
    assert_eq!(p.take_b(id).len(), cap);
    p.pump_with(|_| false, |_| true);
    assert_eq!(p.a.send_capacity(id), 0, "window update was lost");
    p.advance(Duration::from_secs(1));
    p.pump();
    assert_eq!(p.a.send_capacity(id), 8192);
    assert!(p.ev_a.contains(&Event::Writable { id }));
}

#[test]
fn reset_overtaking_the_open_refuses_the_late_open() {
    let now = Instant::now();
    let mut b = Session::new(Role::Device, cfg(), 0, now);
    let reset = wire::Item::reset(wire::Reset {
        stream_id: 4,
        code: ResetCode::Cancelled.to_u32(),
        reason: "changed my mind".into(),
    });
    b.handle_frame(&frame(0, vec![reset]), now).unwrap();
    b.handle_frame(
        &frame(0, vec![chunk(4, 0, b"late", false, Some(b"h"))]),
        now,
    )
    .unwrap();
    assert_eq!(
        b.poll_event(),
        None,
        "a stream reset before it opened never opens"
    );
    assert_eq!(b.stream_count(), 0);
    // Ids skipped over (0, 2) are still open-able.
    b.handle_frame(&frame(0, vec![chunk(2, 0, b"", false, Some(b"h"))]), now)
        .unwrap();
    assert!(matches!(
        b.poll_event(),
        Some(Event::Opened {
            id: StreamId(2),
            ..
        })
    ));
}

#[test]
fn reset_before_anything_was_sent_still_tells_the_peer() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::from_static(b"h"), None, p.now).unwrap();
    p.a.reset(id, ResetCode::Cancelled, "never mind", p.now);
    p.pump();
    assert!(p.ev_b.is_empty(), "{:?}", p.ev_b);
    // The peer knows the id is gone: a second stream opens normally.
    let id2 = p.a.open(Bytes::from_static(b"h2"), None, p.now).unwrap();
    p.pump();
    assert_eq!(
        p.ev_b,
        vec![Event::Opened {
            id: id2,
            header: Bytes::from_static(b"h2")
        }]
    );
    assert!(!p.b.peer_ids.is_new(id.0));
}

#[test]
fn forgotten_stream_is_answered_with_gone() {
    let c = Config {
        peer_timeout: Duration::from_secs(30),
        ..cfg()
    };
    let mut p = Pair::new(c);
    let id = p.a.open(Bytes::new(), None, p.now).unwrap();
    p.b_open_reply(id);
    p.a.finish(id, p.now).unwrap();
    p.pump();
    assert_eq!((p.a.stream_count(), p.b.stream_count()), (0, 0));
    // Long after, a stray chunk for the closed stream arrives at b.
    p.now += Duration::from_secs(3600);
    p.b.handle_timeout(p.now);
    p.b.handle_frame(&frame(1, vec![chunk(0, 0, b"", false, Some(b""))]), p.now)
        .unwrap();
    let f = wire::Frame::decode(p.b.poll_transmit(p.now).unwrap()).unwrap();
    assert!(f.items.iter().any(|i| matches!(
        &i.kind,
        Some(wire::item::Kind::Reset(r)) if r.code == ResetCode::Gone.to_u32()
    )));
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn unconfirmed_reset_is_resent_after_resume() {
    let mut p = Pair::new(cfg());
    let id = p.b.open(Bytes::new(), None, p.now).unwrap();
    p.pump();
    p.b.reset(id, ResetCode::Internal, "crash", p.now);
    // Lost with the old connection.
    while p.b.poll_transmit(p.now).is_some() {}
    p.a.resume(2, p.now);
    p.b.resume(2, p.now);
    p.pump();
    assert!(p.ev_a.contains(&Event::Reset {
        id,
        code: ResetCode::Internal,
        reason: "crash".into()
    }));
}

#[test]
fn stale_acks_and_duplicate_opens_are_harmless() {
    let mut p = Pair::new(cfg());
    let id = p.a.open(Bytes::from_static(b"h"), None, p.now).unwrap();
    p.a.send(id, payload(100), p.now).unwrap();
    let mut first = Vec::new();
    while let Some(f) = p.a.poll_transmit(p.now) {
        first.push(f);
    }
    for f in &first {
        p.b.handle_frame(f, p.now).unwrap();
    }
    let mut acks = Vec::new();
    while let Some(f) = p.b.poll_transmit(p.now) {
        acks.push(f);
    }
    for f in acks.iter().chain(acks.iter()) {
        p.a.handle_frame(f, p.now).unwrap();
    }
    // Replay the open chunk: no second Opened, no second delivery.
    for f in &first {
        p.b.handle_frame(f, p.now).unwrap();
    }
    p.pump();
    let opened = p
        .ev_b
        .iter()
        .filter(|e| matches!(e, Event::Opened { .. }))
        .count();
    assert_eq!(opened, 1);
    assert_eq!(p.take_b(id).len(), 100);
}

#[test]
fn poll_timeout_moves_forward_without_transmitting() {
    // A driver that is disconnected calls handle_timeout but never poll_transmit: the
    // next deadline must still lie in the future each time (no busy loop).
    let now = Instant::now();
    let mut a = Session::new(Role::Cloud, cfg(), 0, now);
    let id = a
        .open(
            Bytes::from_static(b"h"),
            Some(Duration::from_secs(100)),
            now,
        )
        .unwrap();
    a.send(id, payload(10), now).unwrap();
    let _ = a.poll_transmit(now);
    a.reset(id, ResetCode::Cancelled, "x", now);
    let mut t = now;
    let mut n = 0;
    while let Some(next) = a.poll_timeout() {
        assert!(next > t, "poll_timeout did not advance");
        t = next;
        a.handle_timeout(t);
        n += 1;
        assert!(n < 1000);
    }
    // Timers ran: reset retransmissions with backoff, then the peer timeout.
    assert!(n > 5);
    assert!(t >= now + Duration::from_secs(30));
    assert_eq!(a.poll_event(), Some(Event::PeerTimedOut));
}
