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

    /// Writes the start of a frame's envelope, for a frame of `len` bytes:
    /// the frame's bytes complete it (see [`crate::session::Session::poll_transmit_into`]).
    pub fn frame_head(len: usize, buf: &mut bytes::BytesMut) {
        prost::encoding::encode_key(4, prost::encoding::WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(len as u64, buf);
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
    fn a_frame_head_and_its_frame_are_the_frames_envelope() {
        for len in [0, 1, 127, 128, 70_000, 1 << 20] {
            let frame = Bytes::from(vec![7u8; len]);
            let mut buf = bytes::BytesMut::new();
            Envelope::frame_head(len, &mut buf);
            assert!(buf.len() <= FRAME_OVERHEAD);
            buf.extend_from_slice(&frame);
            assert_eq!(buf.freeze(), Envelope::frame(frame).to_bytes());
        }
    }

    #[test]
    fn frame_overhead_is_enough() {
        let frame = Bytes::from(vec![0u8; 70_000]);
        let env = Envelope::frame(frame.clone());
        assert!(env.to_bytes().len() <= frame.len() + FRAME_OVERHEAD);
    }
}
