//! Session identifiers and configuration.

use std::fmt;
use std::time::Duration;

use super::Error;

/// Identifies one stream of a session. The side that opens a stream chooses its id:
/// [`Role::Cloud`] opens even ids, [`Role::Device`] odd ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Which end of the session this is; decides stream id parity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Role {
    /// aranya, the cloud controller: opens even stream ids.
    Cloud,
    /// arhat, the device agent: opens odd stream ids.
    Device,
}

impl Role {
    /// Parity (0 or 1) of the stream ids this role opens.
    pub(crate) fn parity(self) -> u64 {
        match self {
            Role::Cloud => 0,
            Role::Device => 1,
        }
    }
}

/// Why a stream was reset. Carried on the wire as a `u32`; codes this version does not
/// know decode to [`ResetCode::Other`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum ResetCode {
    /// The application aborted the stream.
    Cancelled,
    /// The peer refused to open the stream (too many streams, or it does not accept it).
    Refused,
    /// Nothing was sent or received on the stream for its idle timeout.
    IdleTimeout,
    /// The peer sent something invalid for this stream (e.g. an oversized header).
    ProtocolError,
    /// The peer failed internally.
    Internal,
    /// The session's peer stopped answering for longer than `peer_timeout`.
    PeerTimeout,
    /// The peer no longer has any state for this stream: its outcome is unknown.
    Gone,
    /// A code this version does not know.
    Other(u32),
}

impl ResetCode {
    /// The wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            ResetCode::Cancelled => 1,
            ResetCode::Refused => 2,
            ResetCode::IdleTimeout => 3,
            ResetCode::ProtocolError => 4,
            ResetCode::Internal => 5,
            ResetCode::PeerTimeout => 6,
            ResetCode::Gone => 7,
            ResetCode::Other(c) => c,
        }
    }

    /// Decodes a wire value; unknown values become [`ResetCode::Other`].
    pub fn from_u32(code: u32) -> Self {
        match code {
            1 => ResetCode::Cancelled,
            2 => ResetCode::Refused,
            3 => ResetCode::IdleTimeout,
            4 => ResetCode::ProtocolError,
            5 => ResetCode::Internal,
            6 => ResetCode::PeerTimeout,
            7 => ResetCode::Gone,
            c => ResetCode::Other(c),
        }
    }
}

impl From<u32> for ResetCode {
    fn from(c: u32) -> Self {
        Self::from_u32(c)
    }
}

impl From<ResetCode> for u32 {
    fn from(c: ResetCode) -> Self {
        c.to_u32()
    }
}

impl fmt::Display for ResetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetCode::Cancelled => f.write_str("cancelled"),
            ResetCode::Refused => f.write_str("refused"),
            ResetCode::IdleTimeout => f.write_str("idle timeout"),
            ResetCode::ProtocolError => f.write_str("protocol error"),
            ResetCode::Internal => f.write_str("internal error"),
            ResetCode::PeerTimeout => f.write_str("peer timed out"),
            ResetCode::Gone => f.write_str("stream gone"),
            ResetCode::Other(c) => write!(f, "code {c}"),
        }
    }
}

/// Smallest accepted `max_frame_size`.
pub const MIN_FRAME_SIZE: usize = 512;
/// Largest accepted `max_frame_size`.
pub const MAX_FRAME_SIZE: usize = 16 << 20;
/// Smallest accepted `initial_window`. Also the credit a sender assumes for a new stream
/// until the peer's settings (carried by Ping/Pong) have arrived.
pub const MIN_WINDOW: u32 = 4096;
/// Largest accepted `initial_window`.
pub const MAX_WINDOW: u32 = 1 << 30;
/// Worst-case bytes a frame spends around an open chunk's header; `max_header_size`
/// plus this must not exceed `max_frame_size`.
pub const OPEN_OVERHEAD: usize = 96;

/// Session tuning. Both sides may use different values; each side announces its
/// `initial_window` to the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest encoded frame returned by `poll_transmit` (default 64 KiB).
    pub max_frame_size: usize,
    /// Per-stream receive window (credit) in bytes (default 256 KiB).
    pub initial_window: u32,
    /// Per-session cap on sent-but-unacknowledged payload bytes (default 4 MiB).
    pub max_inflight: usize,
    /// Resend unacknowledged data after this long (default 1 s); doubles per
    /// consecutive timeout of a stream, up to 16x.
    pub retransmit_timeout: Duration,
    /// Send a Ping when nothing was sent for this long (default 10 s).
    pub keepalive_interval: Duration,
    /// Nothing received for this long ends every stream and emits
    /// `Event::PeerTimedOut` (default 30 s).
    pub peer_timeout: Duration,
    /// Concurrent live streams (both directions); a peer opening more gets
    /// `ResetCode::Refused` (default 1024).
    pub max_streams: usize,
    /// Largest open header (default 16 KiB); must fit one frame.
    pub max_header_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 64 << 10,
            initial_window: 256 << 10,
            max_inflight: 4 << 20,
            retransmit_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(30),
            max_streams: 1024,
            max_header_size: 16 << 10,
        }
    }
}

impl Config {
    /// The defaults, with `max_frame_size` set to `frame_size` and `max_header_size`
    /// lowered so a header still fits one frame.
    pub fn with_frame_size(frame_size: usize) -> Self {
        let d = Self::default();
        Self {
            max_frame_size: frame_size,
            max_header_size: d
                .max_header_size
                .min(frame_size.saturating_sub(OPEN_OVERHEAD)),
            ..d
        }
    }

    /// Checks every bound; `Session::try_new` calls this.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_frame_size < MIN_FRAME_SIZE {
            return Err(Error::InvalidConfig("max_frame_size below 512"));
        }
        if self.max_frame_size > MAX_FRAME_SIZE {
            return Err(Error::InvalidConfig("max_frame_size above 16 MiB"));
        }
        if self.initial_window < MIN_WINDOW {
            return Err(Error::InvalidConfig("initial_window below 4096"));
        }
        if self.initial_window > MAX_WINDOW {
            return Err(Error::InvalidConfig("initial_window above 1 GiB"));
        }
        if self.max_inflight < self.max_frame_size {
            return Err(Error::InvalidConfig("max_inflight below max_frame_size"));
        }
        if self.retransmit_timeout.is_zero() {
            return Err(Error::InvalidConfig("retransmit_timeout is zero"));
        }
        if self.keepalive_interval.is_zero() {
            return Err(Error::InvalidConfig("keepalive_interval is zero"));
        }
        if self.peer_timeout <= self.keepalive_interval {
            return Err(Error::InvalidConfig(
                "peer_timeout not above keepalive_interval",
            ));
        }
        if self.max_streams == 0 {
            return Err(Error::InvalidConfig("max_streams is zero"));
        }
        if self.max_header_size + OPEN_OVERHEAD > self.max_frame_size {
            return Err(Error::InvalidConfig(
                "max_header_size does not fit one frame",
            ));
        }
        Ok(())
    }

    /// A copy with every field forced into its valid range (used by `Session::new`).
    pub(crate) fn clamped(&self) -> Self {
        let max_frame_size = self.max_frame_size.clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE);
        let keepalive_interval = self.keepalive_interval.max(Duration::from_millis(1));
        Self {
            max_frame_size,
            initial_window: self.initial_window.clamp(MIN_WINDOW, MAX_WINDOW),
            max_inflight: self.max_inflight.max(max_frame_size),
            retransmit_timeout: self.retransmit_timeout.max(Duration::from_millis(1)),
            keepalive_interval,
            peer_timeout: self
                .peer_timeout
                .max(keepalive_interval + Duration::from_millis(1)),
            max_streams: self.max_streams.max(1),
            max_header_size: self.max_header_size.min(max_frame_size - OPEN_OVERHEAD),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        for fs in [1024, 8192, 128 << 10] {
            let c = Config::with_frame_size(fs);
            c.validate().unwrap();
            assert_eq!(c.clamped(), c);
        }
    }

    #[test]
    fn invalid_configs_are_rejected_and_clamped_ones_are_valid() {
        let bad = [
            Config {
                max_frame_size: 100,
                ..Config::default()
            },
            Config {
                initial_window: 10,
                ..Config::default()
            },
            Config {
                max_header_size: 64 << 10,
                ..Config::default()
            },
            Config {
                max_streams: 0,
                ..Config::default()
            },
            Config {
                peer_timeout: Duration::from_secs(1),
                ..Config::default()
            },
            Config {
                retransmit_timeout: Duration::ZERO,
                ..Config::default()
            },
            Config::with_frame_size(8192).clone_with_header(16 << 10),
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(Error::InvalidConfig(_))),
                "{c:?}"
            );
            c.clamped().validate().unwrap();
        }
    }

    impl Config {
        fn clone_with_header(mut self, h: usize) -> Self {
            self.max_header_size = h;
            self
        }
    }

    #[test]
    fn reset_codes_round_trip() {
        for c in 0..20u32 {
            assert_eq!(ResetCode::from_u32(c).to_u32(), c);
        }
        assert_eq!(ResetCode::from_u32(999), ResetCode::Other(999));
        assert_eq!(u32::from(ResetCode::IdleTimeout), 3);
    }
}
