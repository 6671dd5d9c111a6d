//! Arbitrary certificates, requests, tokens and proofs into what aranya
//! checks them with: never a panic, and nothing verifies that was not made
//! by the CA.
#![no_main]

use std::{sync::LazyLock, time::SystemTime};

use identity::{BootstrapToken, DeviceCa, DeviceCert, TrustStore, proof};
use libfuzzer_sys::fuzz_target;

static TRUST: LazyLock<TrustStore> = LazyLock::new(|| {
    let ca = DeviceCa::generate("fuzz").expect("ca");
    TrustStore::from_pem(ca.cert_pem().as_bytes()).expect("trust")
});

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => assert!(TRUST.verify(rest, SystemTime::now()).is_err()),
        1 => {
            let _ = DeviceCert::from_pem(rest);
        }
        2 => {
            let _ = identity::issue::check_request(rest, "edge-1");
        }
        3 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = BootstrapToken::parse(text);
            }
        }
        _ => {
            // A certificate, then a signature, over a fixed nonce and Hello.
            let split = rest.len() / 2;
            let (cert, signature) = rest.split_at(split);
            assert!(proof::verify_session(cert, &[0; 32], b"hello", signature).is_err());
        }
    }
});
