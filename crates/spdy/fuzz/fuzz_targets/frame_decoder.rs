//! Arbitrary bytes into the frame decoder and the server connection: never
//! a panic, and every frame decoded re-encodes to something that decodes
//! the same (through fresh compression contexts on both ends).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spdy::{
    Config, Connection, Frame,
    frame::{Decoder, Encoder},
};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(1 << 20, 1 << 16);
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = decoder.decode(&mut buf) {
        frames.push(frame);
    }
    // Unknown control frames are skipped, and so not re-encoded.
    frames.retain(|f| !matches!(f, Frame::Unknown { .. }));
    let mut encoder = Encoder::default();
    let mut wire = BytesMut::new();
    for f in &frames {
        encoder.encode(f, &mut wire);
    }
    let mut again = Decoder::new(1 << 24, 1 << 24);
    for f in &frames {
        match again.decode(&mut wire) {
            Ok(Some(g)) => assert_eq!(&g, f),
            other => panic!("re-encoded {f:?} decoded as {other:?}"),
        }
    }
    let mut server = Connection::server(Config::default());
    let _ = server.receive(data);
    while server.poll_event().is_some() {}
});
