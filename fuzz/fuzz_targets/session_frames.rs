//! Arbitrary transport messages into a session, either role: never a panic,
//! and whatever it answers with stays within its frame size.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use proto::session::{Config, Role, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 {
        Role::Cloud
    } else {
        Role::Device
    };
    let config = Config::default();
    let max = config.max_frame_size;
    let mut now = Instant::now();
    let mut session = Session::new(role, config, 1, now);
    // Messages are length-prefixed (2 bytes) in the input.
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let (frame, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        if session.handle_frame(frame, now).is_err() {
            return;
        }
        while session.poll_event().is_some() {}
        while let Some(out) = session.poll_transmit(now) {
            assert!(out.len() <= max);
        }
        now += Duration::from_millis(u64::from(first));
        session.handle_timeout(now);
    }
});
