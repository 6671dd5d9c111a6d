//! Arbitrary bytes as the first messages of a link (the handshake and the
//! bootstrap exchange): the envelope, and everything aranya reads out of a
//! Hello before it trusts it (certificate, token id, CSR).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use proto::envelope::{Body, Envelope};

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Some(Body::Hello(hello)) = envelope.body else {
        return;
    };
    let _ = identity::DeviceCert::from_der(&hello.certificate);
    if let Some(bootstrap) = hello.bootstrap {
        let _ = identity::BootstrapToken::is_id(&bootstrap.token_id);
        let _ = identity::issue::check_request(&bootstrap.csr, &hello.device);
        let _ = identity::issue::request_public_key(&bootstrap.csr);
    }
});
