//! What a transport carries: the handshake, then session frames.

use bytes::Bytes;
use prost::Message;

pub use crate::api::{
    Bootstrap, Challenge, Envelope, Hello, Issued, Proof, Refuse, RefuseReason, Welcome,
    envelope::Body,
};

/// Bytes needed around a frame inside an [`Envelope`]: the field tag and a
/// length varint. Transports subtract this from their max payload.
pub const FRAME_OVERHEAD: usize = 1 + 10;

impl Envelope {
    pub fn frame(frame: Bytes) -> Self {
        Self {
            body: Some(Body::Frame(frame)),
        }
    }

    pub fn hello(hello: Hello) -> Self {
        Self {
            body: Some(Body::Hello(hello)),
        }
    }

    pub fn welcome(welcome: Welcome) -> Self {
        Self {
            body: Some(Body::Welcome(welcome)),
        }
    }

    pub fn refuse(reason: RefuseReason, message: impl Into<String>) -> Self {
        Self {
            body: Some(Body::Refuse(Refuse {
                reason: reason as i32,
                message: message.into(),
            })),
        }
    }

    pub fn challenge(nonce: impl Into<Bytes>) -> Self {
        Self {
            body: Some(Body::Challenge(Challenge {
                nonce: nonce.into(),
            })),
        }
    }

    pub fn proof(signature: impl Into<Bytes>) -> Self {
        Self {
            body: Some(Body::Proof(Proof {
                signature: signature.into(),
            })),
        }
    }

    pub fn issued(certificate: impl Into<String>) -> Self {
        Self {
            body: Some(Body::Issued(Issued {
                certificate: certificate.into(),
            })),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        self.encode_to_vec().into()
    }

    pub fn from_bytes(bytes: Bytes) -> Result<Self, prost::DecodeError> {
        Self::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_overhead_is_enough() {
        let frame = Bytes::from(vec![0u8; 70_000]);
        let env = Envelope::frame(frame.clone());
        assert!(env.to_bytes().len() <= frame.len() + FRAME_OVERHEAD);
    }
}
