//! Messages on session streams, and their framing inside a stream's bytes.

#![allow(missing_docs)]

use bytes::{Buf, BytesMut};
use prost::Message;

include!(concat!(env!("OUT_DIR"), "/arhat.api.rs"));

/// The protocol version this build speaks. Bump on incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest peer version this build still talks to: 2 brought device
/// identity, and a device that cannot prove it is not let in.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// Reasons a device gives a pod it refuses (a [`PodStatus`] in phase
/// Failed), as a kubelet's admission does: such a pod is final.
pub mod refusal {
    /// Its requests do not fit the device's CPUs.
    pub const OUT_OF_CPU: &str = "OutOfcpu";
    /// Its requests do not fit the device's memory.
    pub const OUT_OF_MEMORY: &str = "OutOfmemory";
    /// The spec cannot be run at all (e.g. a UID that is no safe file name).
    pub const INVALID_POD: &str = "InvalidPod";
    /// All of them.
    pub const REASONS: &[&str] = &[OUT_OF_CPU, OUT_OF_MEMORY, INVALID_POD];
}

/// Largest single message accepted inside a stream; bounds reassembly memory.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Errors reading length-delimited messages out of a stream's bytes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A message announced a length over [`MAX_MESSAGE_SIZE`].
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_SIZE} byte limit")]
    TooLarge { len: usize },
    /// The length prefix is not a varint.
    #[error("invalid length prefix")]
    BadPrefix,
    /// The bytes do not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Collects a stream's bytes and yields whole length-delimited messages.
#[derive(Debug, Default)]
pub struct MessageReader {
    buf: BytesMut,
}

impl MessageReader {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one has fully arrived.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, DecodeError> {
        let mut peek = &self.buf[..];
        let Ok(len) = prost::encoding::decode_varint(&mut peek) else {
            // A varint is at most 10 bytes: more without a terminator is garbage.
            if self.buf.len() >= 10 {
                return Err(DecodeError::BadPrefix);
            }
            return Ok(None);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_MESSAGE_SIZE {
            return Err(DecodeError::TooLarge { len });
        }
        let prefix = self.buf.len() - peek.len();
        if peek.len() < len {
            return Ok(None);
        }
        self.buf.advance(prefix);
        let body = self.buf.split_to(len);
        Ok(Some(M::decode(body.freeze())?))
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes what was received past the last message, for a stream that
    /// switches from messages to raw bytes.
    pub fn take_buffered(&mut self) -> bytes::Bytes {
        self.buf.split().freeze()
    }
}

/// Encodes a message with its length prefix, ready for a stream.
pub fn encode_message<M: Message>(m: &M) -> bytes::Bytes {
    m.encode_length_delimited_to_vec().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reassembles_split_messages() {
        let status = NodeStatus {
            hostname: "edge-1".into(),
            generation: 7,
            ..Default::default()
        };
        let bytes = encode_message(&status);
        let mut reader = MessageReader::default();
        for chunk in bytes.chunks(3) {
            assert!(
                reader
                    .next_message::<NodeStatus>()
                    .expect("partial is fine")
                    .is_none()
            );
            reader.push(chunk);
        }
        let got: NodeStatus = reader.next_message().expect("decodes").expect("complete");
        assert_eq!(got, status);
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn reader_refuses_oversized_length() {
        let mut reader = MessageReader::default();
        let mut prefix = Vec::new();
        prost::encoding::encode_varint((MAX_MESSAGE_SIZE + 1) as u64, &mut prefix);
        reader.push(&prefix);
        assert!(matches!(
            reader.next_message::<NodeStatus>(),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
