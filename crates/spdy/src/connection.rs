//! The server side of one SPDY/3.1 connection, with no I/O: feed it the
//! bytes that arrive ([`Connection::receive`]), take the [`Event`]s they
//! produce, tell it what to send, and write out [`Connection::output`].
//!
//! Flow control as Kubernetes' Go peers (moby/spdystream) practise it: they
//! never send WINDOW_UPDATE and ignore ours, so data past the window is
//! accepted and our own sends are not held to the peer's window. Back-pressure
//! belongs to the driver, which stops reading the socket while a stream's
//! reader is behind. WINDOW_UPDATE is still sent as data is consumed, for
//! peers that do count.

use std::collections::{HashMap, VecDeque};

use bytes::{Buf, BytesMut};
use tracing::debug;

use crate::{
    error::{ConnectionError, StreamClosed, Violation},
    frame::{Decoder, Encoder, Frame, GoAwayStatus, RstStatus, data_frame},
    headers::Headers,
};

/// SPDY/3.1's initial stream window.
const INITIAL_WINDOW: u32 = 64 * 1024;

/// Limits and behaviour of one connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest frame payload accepted.
    pub max_frame: usize,
    /// Largest inflated header block accepted.
    pub max_header_block: usize,
    /// Streams open at once; a SYN_STREAM past it is refused.
    pub max_streams: usize,
    /// Largest DATA frame sent (Go peers send at most 32 KiB).
    pub max_data_frame: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            max_header_block: 64 * 1024,
            max_streams: 1024,
            max_data_frame: 32 * 1024,
        }
    }
}

/// What the peer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream; it has been replied to (empty headers, as
    /// a kubelet replies).
    Opened {
        stream_id: u32,
        headers: Headers,
        fin: bool,
    },
    /// Bytes on a stream; `fin` ends the peer's side of it.
    Data {
        stream_id: u32,
        data: bytes::Bytes,
        fin: bool,
    },
    /// The peer reset a stream (or we did, refusing a frame on it).
    Reset { stream_id: u32, status: RstStatus },
    /// The peer will open no more streams.
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
}

#[derive(Debug, Default)]
struct StreamState {
    remote_fin: bool,
    local_fin: bool,
    /// Bytes consumed since the last WINDOW_UPDATE.
    unacknowledged: u32,
}

/// One server connection's state.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    decoder: Decoder,
    encoder: Encoder,
    input: BytesMut,
    output: BytesMut,
    events: VecDeque<Event>,
    streams: HashMap<u32, StreamState>,
    last_remote_id: u32,
    goaway_received: bool,
    goaway_sent: bool,
    failed: bool,
}

impl Connection {
    pub fn server(config: Config) -> Self {
        Self {
            decoder: Decoder::new(config.max_frame, config.max_header_block),
            encoder: Encoder::default(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            events: VecDeque::new(),
            streams: HashMap::new(),
            last_remote_id: 0,
            goaway_received: false,
            goaway_sent: false,
            failed: false,
            config,
        }
    }

    /// Takes bytes as they arrive, in any pieces. An error ends the
    /// connection: a GOAWAY saying so is queued, and everything after is
    /// ignored.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        if self.failed {
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        loop {
            let frame = match self.decoder.decode(&mut self.input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(e.into())),
            };
            if let Err(violation) = self.handle(frame) {
                if violation.is_session_error() {
                    return Err(self.fail(violation.into()));
                }
                debug!(error = %violation, "SPDY stream error");
            }
        }
    }

    fn fail(&mut self, error: ConnectionError) -> ConnectionError {
        self.failed = true;
        self.input.clear();
        self.go_away(GoAwayStatus::ProtocolError);
        error
    }

    fn handle(&mut self, frame: Frame) -> Result<(), Violation> {
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
                ..
            } => self.opened(stream_id, headers, fin),
            Frame::SynReply { stream_id, .. } => {
                self.reset_for(stream_id, RstStatus::ProtocolError);
                Err(Violation::UnexpectedReply(stream_id))
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => self.data(stream_id, data, fin, "DATA"),
            Frame::Headers { stream_id, fin, .. } => {
                self.data(stream_id, bytes::Bytes::new(), fin, "HEADERS")
            }
            Frame::RstStream { stream_id, status } => {
                if self.streams.remove(&stream_id).is_some() {
                    self.events.push_back(Event::Reset { stream_id, status });
                }
                Ok(())
            }
            Frame::Ping { id } => {
                // Odd ids are the client's: echo them. Even ones would answer
                // pings of ours, and we send none.
                if id % 2 == 1 {
                    self.encoder.encode(&Frame::Ping { id }, &mut self.output);
                }
                Ok(())
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                self.goaway_received = true;
                self.events.push_back(Event::GoAway {
                    last_good_stream_id,
                    status,
                });
                Ok(())
            }
            Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => Ok(()),
        }
    }

    fn opened(&mut self, stream_id: u32, headers: Headers, fin: bool) -> Result<(), Violation> {
        if stream_id == 0 {
            return Err(Violation::ZeroStreamId("SYN_STREAM"));
        }
        if self.streams.contains_key(&stream_id) {
            self.reset_for(stream_id, RstStatus::StreamInUse);
            return Err(Violation::StreamInUse(stream_id));
        }
        if stream_id.is_multiple_of(2) || stream_id <= self.last_remote_id {
            return Err(Violation::StreamIdOrder {
                id: stream_id,
                last: self.last_remote_id,
            });
        }
        self.last_remote_id = stream_id;
        if self.goaway_sent || self.goaway_received {
            self.reset_for(stream_id, RstStatus::RefusedStream);
            return Err(Violation::AfterGoAway(stream_id));
        }
        if self.streams.len() >= self.config.max_streams {
            self.reset_for(stream_id, RstStatus::RefusedStream);
            return Err(Violation::TooManyStreams {
                id: stream_id,
                max: self.config.max_streams,
            });
        }
        self.streams.insert(
            stream_id,
            StreamState {
                remote_fin: fin,
                ..StreamState::default()
            },
        );
        self.encoder.encode(
            &Frame::SynReply {
                stream_id,
                fin: false,
                headers: Headers::new(),
            },
            &mut self.output,
        );
        self.events.push_back(Event::Opened {
            stream_id,
            headers,
            fin,
        });
        Ok(())
    }

    fn data(
        &mut self,
        stream_id: u32,
        data: bytes::Bytes,
        fin: bool,
        kind: &'static str,
    ) -> Result<(), Violation> {
        if stream_id == 0 {
            return Err(Violation::ZeroStreamId(kind));
        }
        let Some(state) = self.streams.get_mut(&stream_id) else {
            // A reset of ours may cross data already on the way: drop it
            // quietly unless the stream never existed.
            if stream_id > self.last_remote_id {
                self.reset_for(stream_id, RstStatus::InvalidStream);
                return Err(Violation::UnknownStream {
                    kind,
                    id: stream_id,
                });
            }
            return Ok(());
        };
        if state.remote_fin {
            self.reset_for(stream_id, RstStatus::StreamAlreadyClosed);
            return Err(Violation::AfterFin(stream_id));
        }
        state.remote_fin = fin;
        if data.is_empty() && !fin {
            return Ok(());
        }
        self.events.push_back(Event::Data {
            stream_id,
            data,
            fin,
        });
        self.forget_if_done(stream_id);
        Ok(())
    }

    /// Resets a stream the peer misused, telling the application too.
    fn reset_for(&mut self, stream_id: u32, status: RstStatus) {
        if self.streams.remove(&stream_id).is_some() {
            self.events.push_back(Event::Reset { stream_id, status });
        }
        self.encoder
            .encode(&Frame::RstStream { stream_id, status }, &mut self.output);
    }

    fn forget_if_done(&mut self, stream_id: u32) {
        if self
            .streams
            .get(&stream_id)
            .is_some_and(|s| s.remote_fin && s.local_fin)
        {
            self.streams.remove(&stream_id);
        }
    }

    /// The next thing the peer did.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Sends `data` on a stream, split into frames; `fin` ends our side.
    pub fn send_data(
        &mut self,
        stream_id: u32,
        data: &[u8],
        fin: bool,
    ) -> Result<(), StreamClosed> {
        let state = self
            .streams
            .get_mut(&stream_id)
            .filter(|s| !s.local_fin)
            .ok_or(StreamClosed(stream_id))?;
        state.local_fin = fin;
        let mut chunks = data.chunks(self.config.max_data_frame).peekable();
        if chunks.peek().is_none() {
            data_frame(&mut self.output, stream_id, fin, &[]);
        }
        while let Some(chunk) = chunks.next() {
            data_frame(
                &mut self.output,
                stream_id,
                fin && chunks.peek().is_none(),
                chunk,
            );
        }
        self.forget_if_done(stream_id);
        Ok(())
    }

    /// The application took `n` bytes of a stream's data: the peer may send
    /// more (for peers that count windows).
    pub fn consumed(&mut self, stream_id: u32, n: usize) {
        let Some(state) = self.streams.get_mut(&stream_id) else {
            return;
        };
        if state.remote_fin {
            return;
        }
        state.unacknowledged = state.unacknowledged.saturating_add(n as u32);
        if state.unacknowledged >= INITIAL_WINDOW / 2 {
            let delta = std::mem::take(&mut state.unacknowledged);
            self.encoder
                .encode(&Frame::WindowUpdate { stream_id, delta }, &mut self.output);
        }
    }

    /// Ends a stream at once in both directions.
    pub fn reset(&mut self, stream_id: u32, status: RstStatus) {
        if self.streams.remove(&stream_id).is_some() {
            self.encoder
                .encode(&Frame::RstStream { stream_id, status }, &mut self.output);
        }
    }

    /// Says no more streams will be accepted (once).
    pub fn go_away(&mut self, status: GoAwayStatus) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            self.encoder.encode(
                &Frame::GoAway {
                    last_good_stream_id: self.last_remote_id,
                    status,
                },
                &mut self.output,
            );
        }
    }

    /// Tears the connection down as a kubelet does: every open stream
    /// cancelled, then GOAWAY. The caller closes the socket once
    /// [`Self::output`] is written.
    pub fn close(&mut self) {
        let mut open: Vec<u32> = self.streams.keys().copied().collect();
        open.sort_unstable();
        for stream_id in open {
            self.reset(stream_id, RstStatus::Cancel);
        }
        self.go_away(GoAwayStatus::Ok);
    }

    /// Whether the stream is open for our sends.
    pub fn can_send(&self, stream_id: u32) -> bool {
        self.streams.get(&stream_id).is_some_and(|s| !s.local_fin)
    }

    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes waiting to be written to the socket.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`Self::output`] were written.
    pub fn advance_output(&mut self, n: usize) {
        self.output.advance(n);
    }

    /// Whether the connection has failed or said GOAWAY and has nothing
    /// left open.
    pub fn is_finished(&self) -> bool {
        self.failed || ((self.goaway_sent || self.goaway_received) && self.streams.is_empty())
    }
}

#[cfg(test)]
mod tests;
