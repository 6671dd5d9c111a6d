use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;

fn decoder() -> Decoder {
    Decoder::new(MAX, 64 * 1024)
}

fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,40}"), 0..6)
        .prop_map(|pairs| pairs.into_iter().collect())
}

fn stream_id() -> impl Strategy<Value = u32> {
    0..=0x7fff_ffffu32
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            stream_id(),
            stream_id(),
            0..8u8,
            any::<u8>(),
            any::<bool>(),
            any::<bool>(),
            headers()
        )
            .prop_map(
                |(stream_id, associated_to, priority, slot, fin, unidirectional, headers)| {
                    Frame::SynStream {
                        stream_id,
                        associated_to,
                        priority,
                        slot,
                        fin,
                        unidirectional,
                        headers,
                    }
                }
            ),
        (stream_id(), any::<bool>(), headers()).prop_map(|(stream_id, fin, headers)| {
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
        }),
        (stream_id(), any::<bool>(), headers()).prop_map(|(stream_id, fin, headers)| {
            Frame::Headers {
                stream_id,
                fin,
                headers,
            }
        }),
        (stream_id(), 1..12u32).prop_map(|(stream_id, code)| Frame::RstStream {
            stream_id,
            status: RstStatus::from_code(code)
        }),
        (
            any::<bool>(),
            proptest::collection::vec((any::<u8>(), 0..0x00ff_ffffu32, any::<u32>()), 0..4)
        )
            .prop_map(|(clear, entries)| Frame::Settings {
                clear,
                entries: entries
                    .into_iter()
                    .map(|(flags, id, value)| Setting { flags, id, value })
                    .collect()
            }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (stream_id(), 0..3u32).prop_map(|(last_good_stream_id, code)| Frame::GoAway {
            last_good_stream_id,
            status: GoAwayStatus::from_code(code)
        }),
        (stream_id(), 0..=0x7fff_ffffu32)
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (
            stream_id(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(stream_id, fin, data)| Frame::Data {
                stream_id,
                fin,
                data: data.into()
            }),
    ]
}

proptest! {
    /// Any sequence of frames, encoded with one context and fed to one
    /// decoder in pieces cut at arbitrary bytes, comes back as it was.
    #[test]
    fn frames_round_trip_across_any_split(
        frames in proptest::collection::vec(frame(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut encoder = Encoder::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            encoder.encode(f, &mut wire);
        }
        let wire = wire.freeze();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut decoder = decoder();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for pair in points.windows(2) {
            buf.extend_from_slice(&wire[pair[0]..pair[1]]);
            while let Some(f) = decoder.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    /// Arbitrary bytes never panic the decoder; what it yields re-encodes
    /// to bytes that decode the same (the fuzz target's check, on stable).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut first = decoder();
        let mut buf = BytesMut::from(&bytes[..]);
        let mut frames = Vec::new();
        while let Ok(Some(f)) = first.decode(&mut buf) {
            if !matches!(f, Frame::Unknown { .. }) {
                frames.push(f);
            }
        }
        let mut encoder = Encoder::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            encoder.encode(f, &mut wire);
        }
        let mut again = decoder();
        for f in &frames {
            let back = again.decode(&mut wire).ok().flatten();
            prop_assert_eq!(back.as_ref(), Some(f));
        }
        let mut server = crate::Connection::server(crate::Config::default());
        let _ = server.receive(&bytes);
        while server.poll_event().is_some() {}
    }
}

#[test]
fn length_is_checked_before_the_body_arrives() {
    let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff][..]);
    assert_eq!(
        decoder().decode(&mut buf),
        Err(Malformed::FrameTooLarge {
            len: 0xff_ffff,
            max: MAX
        })
    );
}

#[test]
fn wrong_version_and_short_frames_are_malformed() {
    let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1][..]);
    assert_eq!(
        decoder().decode(&mut buf),
        Err(Malformed::UnsupportedVersion(2))
    );
    let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x02, 0, 1][..]);
    assert!(matches!(
        decoder().decode(&mut buf),
        Err(Malformed::WrongLength { kind: "PING", .. })
    ));
    let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0, 1][..]);
    assert!(matches!(
        decoder().decode(&mut buf),
        Err(Malformed::TooShort {
            kind: "SYN_STREAM",
            ..
        })
    ));
}

#[test]
fn unknown_control_frames_are_skipped() {
    let mut buf = BytesMut::from(
        &[
            0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x02, 1, 2, 0x80, 0x03, 0x00, 0x06, 0, 0, 0,
            4, 0, 0, 0, 7,
        ][..],
    );
    let mut d = decoder();
    assert_eq!(d.decode(&mut buf), Ok(Some(Frame::Unknown { kind: 10 })));
    assert_eq!(d.decode(&mut buf), Ok(Some(Frame::Ping { id: 7 })));
}
