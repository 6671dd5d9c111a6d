//! What can go wrong, split by who is at fault: bytes that are not SPDY/3
//! ([`Malformed`]), a well-formed frame the peer had no business sending now
//! ([`Violation`]), and our own side using a stream that is gone
//! ([`StreamClosed`]).

/// Bytes that do not parse as SPDY/3. Always ends the connection: once
/// framing or the header-compression context is lost nothing after it can be
/// trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A control frame of a version other than 3.
    #[error("control frame of SPDY version {0}, expected 3")]
    UnsupportedVersion(u16),
    /// A frame longer than this connection accepts (checked before any
    /// allocation).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    /// A control frame shorter than its type's fixed fields.
    #[error("{kind} frame of {len} bytes is too short")]
    TooShort { kind: &'static str, len: usize },
    /// A control frame whose fixed-size body has the wrong length.
    #[error("{kind} frame must be {expected} bytes, got {len}")]
    WrongLength {
        kind: &'static str,
        expected: usize,
        len: usize,
    },
    /// The zlib stream of header blocks is corrupt.
    #[error("header block does not inflate: {0}")]
    Compression(String),
    /// A header block that inflates past the limit (a decompression bomb).
    #[error("header block inflates past {max} bytes")]
    HeaderBlockTooLarge { max: usize },
    /// An inflated header block that does not hold what it says it holds.
    #[error("header block: {0}")]
    HeaderBlock(&'static str),
}

/// A well-formed frame that breaks the protocol's rules where it arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// Stream id 0 where a stream is required.
    #[error("stream id 0 in a {0} frame")]
    ZeroStreamId(&'static str),
    /// A client opened a stream with an even id (server ids) or a lower id
    /// than one it already used.
    #[error("SYN_STREAM {id}: ids must be odd and increasing (last was {last})")]
    StreamIdOrder { id: u32, last: u32 },
    /// A stream id reused while that stream is open.
    #[error("SYN_STREAM {0}: stream already open")]
    StreamInUse(u32),
    /// Data or headers for a stream that is not open.
    #[error("{kind} for stream {id}, which is not open")]
    UnknownStream { kind: &'static str, id: u32 },
    /// Data after the peer ended its side of the stream.
    #[error("DATA on stream {0} after its FIN")]
    AfterFin(u32),
    /// A reply to a stream this side never opened (servers open none).
    #[error("SYN_REPLY for stream {0}, which this side did not open")]
    UnexpectedReply(u32),
    /// Too many streams open at once.
    #[error("SYN_STREAM {id}: {max} streams already open")]
    TooManyStreams { id: u32, max: usize },
    /// A new stream after the peer said GOAWAY.
    #[error("SYN_STREAM {0} after GOAWAY")]
    AfterGoAway(u32),
}

impl Violation {
    /// Whether it ends the whole connection (a session error) rather than
    /// just the stream it names.
    pub fn is_session_error(&self) -> bool {
        matches!(self, Self::StreamIdOrder { .. } | Self::ZeroStreamId(_))
    }
}

/// Why [`crate::Connection::receive`] ended the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    #[error("malformed SPDY: {0}")]
    Malformed(#[from] Malformed),
    #[error("SPDY protocol violation: {0}")]
    Violation(#[from] Violation),
}

/// This side tried to use a stream that is closed (or never was open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream {0} is closed for sending")]
pub struct StreamClosed(pub u32);
