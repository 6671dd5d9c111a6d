//! Errors: local API misuse ([`Error`]) and bad input from the peer ([`FrameError`]).

use super::StreamId;

/// A local call could not be carried out.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// No live stream has this id (never opened, or already closed or reset).
    #[error("stream {0} does not exist")]
    UnknownStream(StreamId),
    /// `finish` was already called on this stream: no more data can be sent.
    #[error("stream {0} was already finished")]
    StreamFinished(StreamId),
    /// The open header is larger than `Config::max_header_size`.
    #[error("stream header of {len} bytes exceeds the maximum of {max}")]
    HeaderTooLarge {
        /// Size of the rejected header.
        len: usize,
        /// `Config::max_header_size`.
        max: usize,
    },
    /// `Config::max_streams` streams are already live.
    #[error("too many live streams")]
    TooManyStreams,
    /// A `Config` field is out of range; the text names it.
    #[error("invalid session config: {0}")]
    InvalidConfig(&'static str),
}

/// A received frame could not be accepted; the caller should end the whole session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The bytes are not a session frame.
    #[error("malformed session frame")]
    Malformed(#[from] Malformed),
    /// The frame parsed but breaks the protocol.
    #[error("session protocol violation")]
    Protocol(#[from] Violation),
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// Protobuf decoding failed.
    #[error("frame does not decode")]
    Decode(#[source] prost::DecodeError),
}

/// How a well-formed frame breaks the protocol.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A stream id beyond the range either side ever allocates.
    #[error("stream id {0} out of range")]
    StreamIdOutOfRange(u64),
    /// Offset plus length overflows the stream's sequence space.
    #[error("stream {0}: offset out of range")]
    OffsetOutOfRange(StreamId),
    /// The peer tried to open a stream with an id of our parity.
    #[error("stream {0}: peer opened a stream id of the wrong parity")]
    WrongParity(StreamId),
    /// The peer referenced a stream of our parity that we never opened.
    #[error("stream {0}: never opened by this side")]
    NotOpened(StreamId),
    /// Data beyond the credit we granted.
    #[error("stream {id}: data up to offset {end} exceeds the granted window {limit}")]
    FlowControl {
        /// The stream.
        id: StreamId,
        /// End offset of the offending chunk.
        end: u64,
        /// Highest offset we allow.
        limit: u64,
    },
    /// Data past the final size, or a fin that contradicts the known final size.
    #[error("stream {0}: inconsistent final size")]
    FinalSize(StreamId),
    /// The peer acknowledged bytes or a fin we never sent.
    #[error("stream {0}: acknowledgement of data never sent")]
    AckBeyondSent(StreamId),
}
