//! Fuzz-style properties: whatever bytes or frames a peer sends, the session never
//! panics, keeps its bounds, and either accepts the frame or returns a `FrameError`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use proto::session::wire::{self, item::Kind};
use proto::session::{Config, Role, Session, StreamId};

const WINDOW: u32 = 16 * 1024;

fn config() -> Config {
    Config {
        initial_window: WINDOW,
        max_streams: 8,
        ..Config::with_frame_size(2048)
    }
}

/// A device session with a few streams of its own, data queued on them, and one
/// peer stream, so fuzzed frames hit live state and not only the unknown-id paths.
fn busy_session(now: Instant) -> Session {
    let mut s = Session::new(Role::Device, config(), 3, now);
    for _ in 0..3 {
        let id = s
            .open(
                Bytes::from_static(b"hdr"),
                Some(Duration::from_secs(5)),
                now,
            )
            .unwrap();
        s.send(id, Bytes::from(vec![7; 5000]), now).unwrap();
    }
    let open = wire::Frame {
        epoch: 3,
        items: vec![wire::Item {
            kind: Some(Kind::Chunk(wire::Chunk {
                stream_id: 0,
                offset: 0,
                data: Bytes::from_static(b"hello"),
                fin: false,
                open: Some(wire::Open {
                    header: Bytes::new(),
                    idle_timeout_ms: 0,
                }),
            })),
        }],
    };
    s.handle_frame(&open.encode_to_vec(), now).unwrap();
    while s.poll_transmit(now).is_some() {}
    s
}

/// Exercises every output after an input and checks the bounds.
fn churn(s: &mut Session, now: Instant) {
    let mut n = 0;
    while let Some(f) = s.poll_transmit(now) {
        assert!(f.len() <= s.config().max_frame_size);
        // Whatever we send must decode.
        wire::Frame::decode(f).unwrap();
        n += 1;
        assert!(n < 10_000, "poll_transmit does not settle");
    }
    while s.poll_event().is_some() {}
    for id in 0..20 {
        assert!(s.recv_buffered(StreamId(id)) <= WINDOW as usize);
    }
    assert!(s.inflight() <= s.config().max_inflight);
    assert!(s.stream_count() <= 8);
    if let Some(t) = s.poll_timeout() {
        s.handle_timeout(t.max(now));
    }
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..12, 1 => any::<u64>(), 1 => Just(1u64 << 62)]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..20_000, 1 => any::<u64>(), 1 => Just(u64::MAX - 1)]
}

fn item() -> impl Strategy<Value = wire::Item> {
    let chunk = (
        id(),
        offset(),
        prop::collection::vec(any::<u8>(), 0..1500),
        any::<bool>(),
        prop::option::of((prop::collection::vec(any::<u8>(), 0..2000), 0u64..10_000)),
    )
        .prop_map(|(stream_id, offset, data, fin, open)| {
            Kind::Chunk(wire::Chunk {
                stream_id,
                offset,
                data: data.into(),
                fin,
                open: open.map(|(h, ms)| wire::Open {
                    header: h.into(),
                    idle_timeout_ms: ms,
                }),
            })
        });
    let ack = (id(), offset(), any::<bool>(), offset()).prop_map(
        |(stream_id, received, fin, max_data)| {
            Kind::Ack(wire::Ack {
                stream_id,
                received,
                fin,
                max_data,
            })
        },
    );
    let reset = (id(), any::<u32>(), ".{0,400}").prop_map(|(stream_id, code, reason)| {
        Kind::Reset(wire::Reset {
            stream_id,
            code,
            reason,
        })
    });
    let kind = prop_oneof![
        4 => chunk,
        2 => ack,
        1 => reset,
        1 => id().prop_map(|stream_id| Kind::ResetAck(wire::ResetAck { stream_id })),
        1 => (any::<u64>(), any::<u32>()).prop_map(|(nonce, initial_window)| Kind::Ping(wire::Ping { nonce, initial_window })),
        1 => (any::<u64>(), any::<u32>()).prop_map(|(nonce, initial_window)| Kind::Pong(wire::Pong { nonce, initial_window })),
    ];
    prop::option::weighted(0.95, kind).prop_map(|kind| wire::Item { kind })
}

fn frame() -> impl Strategy<Value = wire::Frame> {
    (
        prop_oneof![9 => Just(3u64), 1 => any::<u64>()],
        prop::collection::vec(item(), 0..6),
    )
        .prop_map(|(epoch, items)| wire::Frame { epoch, items })
}

proptest! {
    // PROPTEST_CASES raises the count for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes: never a panic, and the session stays usable.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let now = Instant::now();
        for mut s in [Session::new(Role::Cloud, config(), 0, now), busy_session(now)] {
            let _ = s.handle_frame(&bytes, now);
            churn(&mut s, now);
        }
    }

    /// Sequences of well-formed but arbitrary frames: accepted or rejected with an
    /// error, never a panic, bounds kept throughout.
    #[test]
    fn arbitrary_frames_never_panic(frames in prop::collection::vec(frame(), 1..12)) {
        let mut now = Instant::now();
        let mut s = busy_session(now);
        for f in frames {
            now += Duration::from_millis(300);
            let r = s.handle_frame(&f.encode_to_vec(), now);
            if r.is_err() {
                // The caller would end the session here; the state must still be sane.
                churn(&mut s, now);
                break;
            }
            churn(&mut s, now);
        }
    }

    /// Decoding is stable: whatever decodes re-encodes to something that decodes to
    /// the same frame.
    #[test]
    fn decode_encode_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(f) = wire::Frame::decode(&bytes[..]) {
            let again = wire::Frame::decode(&f.encode_to_vec()[..]).unwrap();
            prop_assert_eq!(f, again);
        }
    }

    /// Mutating a valid frame (bit flips, truncation) never panics either.
    #[test]
    fn mutated_valid_frames_never_panic(f in frame(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let now = Instant::now();
        let mut bytes = f.encode_to_vec();
        if bytes.is_empty() {
            return Ok(());
        }
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        let mut s = busy_session(now);
        let _ = s.handle_frame(&bytes, now);
        churn(&mut s, now);
    }
}
