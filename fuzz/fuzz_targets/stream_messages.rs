//! Arbitrary stream bytes, pushed in arbitrary pieces, into the message
//! reader both sides use on session streams: never a panic, memory bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::api::{ExecInput, MessageReader, Open, PodSpec};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut reader = MessageReader::default();
    for piece in rest.chunks(usize::from(split).max(1)) {
        reader.push(piece);
        // The first message of a stream is its Open; then what the kind says.
        loop {
            let next = match split % 3 {
                0 => reader.next_message::<Open>().map(|m| m.is_some()),
                1 => reader.next_message::<ExecInput>().map(|m| m.is_some()),
                _ => reader.next_message::<PodSpec>().map(|m| m.is_some()),
            };
            match next {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => return,
            }
        }
        assert!(reader.buffered() <= proto::api::MAX_MESSAGE_SIZE + 16 + usize::from(split));
    }
});
