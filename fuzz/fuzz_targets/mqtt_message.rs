//! Arbitrary MQTT payloads as the transport's messages (kind, link id,
//! body): never a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((_, _, body)) = connectivity::mqtt::parse(Bytes::copy_from_slice(data)) {
        assert!(body.len() < data.len());
    }
});
