//! The session layer: many streams multiplexed over a transport that moves bounded,
//! opaque messages, which may be duplicated, reordered, dropped, or cut off by a
//! reconnect.
//!
//! [`Session`] is a sans-I/O state machine in the style of rustls: the caller feeds
//! it received frames ([`Session::handle_frame`]) and the current time, and takes
//! from it frames to send ([`Session::poll_transmit`]), events for the application
//! ([`Session::poll_event`]) and the next time it wants to be woken
//! ([`Session::poll_timeout`]). It never blocks, spawns, or touches a socket.
//!
//! Every stream is ordered, exactly-once and complete in each direction, or it ends
//! with [`Event::Reset`] carrying a [`ResetCode`] and a reason.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use proto::session::{Config, Event, Role, Session};
//!
//! let now = Instant::now();
//! let mut cloud = Session::new(Role::Cloud, Config::default(), 1, now);
//! let mut device = Session::new(Role::Device, Config::default(), 1, now);
//!
//! let id = cloud.open(Bytes::from_static(b"logs"), None, now)?;
//! cloud.send(id, Bytes::from_static(b"hello"), now)?;
//! cloud.finish(id, now)?;
//!
//! // A perfect transport: move frames until both sides are quiet. A real driver
//! // also sleeps until `poll_timeout()` and then calls `handle_timeout()`.
//! loop {
//!     let mut moved = false;
//!     while let Some(frame) = cloud.poll_transmit(now) {
//!         device.handle_frame(&frame, now)?;
//!         moved = true;
//!     }
//!     while let Some(frame) = device.poll_transmit(now) {
//!         cloud.handle_frame(&frame, now)?;
//!         moved = true;
//!     }
//!     if !moved {
//!         break;
//!     }
//! }
//! assert_eq!(device.poll_event(), Some(Event::Opened { id, header: Bytes::from_static(b"logs") }));
//! assert_eq!(device.poll_event(), Some(Event::Data { id, data: Bytes::from_static(b"hello") }));
//! device.consume(id, 5);
//! assert_eq!(device.poll_event(), Some(Event::Finished { id }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Wire protocol (see `proto/session.proto`)
//! - One transport message is one [`wire::Frame`]: the connection epoch plus items.
//!   Frames of any epoch other than the current one are discarded.
//! - Each stream direction is a byte sequence; a `Chunk` carries bytes at an absolute
//!   offset (its sequence number), optionally the `Open` (header, idle timeout) and
//!   the `fin`. The opener repeats `Open` on its chunks until acknowledged, so a
//!   stream can be created by whichever of its chunks arrives first.
//! - An `Ack` carries the cumulative received offset, whether the fin arrived, and
//!   the absolute credit limit `max_data`. All three are monotonic, so duplicated
//!   or reordered acks are harmless. The receiver re-acks duplicates, which repairs
//!   lost acks.
//! - Unacknowledged data is retransmitted (go-back-N from the cumulative ack) after
//!   `retransmit_timeout` with per-stream exponential backoff, and at once after
//!   [`Session::resume`]. A sender blocked on credit probes with an empty chunk on
//!   the same timer, which repairs lost window updates.
//! - `Reset` is retransmitted until a `ResetAck` arrives. Frames for a stream whose
//!   state was freed are answered from a bounded record of how it ended: a full ack
//!   if it completed, the same reset if it was reset, `ResetCode::Gone` if forgotten.
//! - `Ping`/`Pong` are keepalives and carry each side's `initial_window`; until the
//!   peer's is known a sender assumes [`MIN_WINDOW`] of credit on a new stream.

mod config;
mod error;
mod ids;
mod recv;
mod send;
mod tomb;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;
use tracing::{debug, trace, warn};

pub use config::{
    Config, MAX_FRAME_SIZE, MAX_WINDOW, MIN_FRAME_SIZE, MIN_WINDOW, OPEN_OVERHEAD, ResetCode, Role,
    StreamId,
};
pub use error::{Error, FrameError, Malformed, Violation};

use ids::{MAX_ID, PeerIds};
use recv::{Accept, RecvBuf, Reject};
use send::SendBuf;
use tomb::{Outcome, Tombs};
use wire::FrameBuilder;

/// Reset reasons longer than this (in bytes) are truncated.
pub const MAX_REASON_LEN: usize = 256;
/// Retransmission backoff stops growing at this multiple of `retransmit_timeout`.
const MAX_RTO_FACTOR: u32 = 16;
/// Below this many free bytes a frame takes no more data chunks.
const MIN_CHUNK_SPACE: usize = 96;
/// A data chunk shorter than this is not cut off to fill a frame's tail.
const MIN_CHUNK_DATA: usize = 32;
/// Room [`chunk_payload`] leaves in a frame beside the data: the frame's and
/// the chunk's own fields, and a few acknowledgements and a ping.
const CHUNK_FRAME_RESERVE: usize = 256;
/// Control items waiting for transmission beyond this are dropped (each is either
/// regenerated or repaired by a retransmission).
const MAX_CTRL_QUEUE: usize = 8192;
/// A received chunk smaller than its frame by this factor is copied out
/// rather than kept as a view, so waiting data holds at most this many times
/// its size of frame memory.
const PIN_RATIO: usize = 4;

/// Something the application must learn about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a stream.
    Opened {
        /// The new stream.
        id: StreamId,
        /// The header the peer passed to `open`.
        header: Bytes,
    },
    /// The next bytes of the peer's direction, in order, exactly once. Call
    /// [`Session::consume`] with `data.len()` once they are processed.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The peer half-closed after all its data.
    Finished {
        /// The stream.
        id: StreamId,
    },
    /// The stream ended abnormally (peer reset, idle timeout, refused, peer timeout)
    /// and its state was freed.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: ResetCode,
        /// Free text from whoever reset it.
        reason: String,
    },
    /// Credit became available after [`Session::send_capacity`] had dropped to 0.
    Writable {
        /// The stream.
        id: StreamId,
    },
    /// Both directions finished and everything was acknowledged; state was freed.
    Closed {
        /// The stream.
        id: StreamId,
    },
    /// Nothing was received for `peer_timeout`. Every live stream was reset with
    /// [`ResetCode::PeerTimeout`] just before this event.
    PeerTimedOut,
}

#[derive(Debug)]
struct Stream {
    id: StreamId,
    /// Opened by this side.
    local: bool,
    /// The application knows the stream (ours, or `Opened` was emitted).
    visible: bool,
    idle: Option<Duration>,
    last_activity: Instant,

    // Sending half.
    /// Our open header, until the peer acknowledges the stream.
    header: Bytes,
    open_pending: bool,
    open_sent: bool,
    open_acked: bool,
    send: SendBuf,
    fin_queued: bool,
    fin_pending: bool,
    fin_sent: bool,
    fin_acked: bool,
    probe_pending: bool,
    /// Peer's credit: we may send below this offset.
    peer_limit: u64,
    /// `send_capacity` hit 0; emit `Writable` when credit arrives.
    blocked: bool,
    rto: Duration,
    rto_deadline: Option<Instant>,

    // Receiving half.
    recv: RecvBuf,
    /// The peer's open arrived (always true for our own streams).
    opened: bool,
    finished_emitted: bool,

    ack_queued: bool,
    ready_queued: bool,
    inflight_waiting: bool,
}

impl Stream {
    fn new(id: StreamId, local: bool, config: &Config, peer_credit: u64, now: Instant) -> Self {
        Self {
            id,
            local,
            visible: local,
            idle: None,
            last_activity: now,
            header: Bytes::new(),
            open_pending: local,
            open_sent: false,
            open_acked: !local,
            send: SendBuf::default(),
            fin_queued: false,
            fin_pending: false,
            fin_sent: false,
            fin_acked: false,
            probe_pending: false,
            peer_limit: peer_credit,
            blocked: false,
            rto: config.retransmit_timeout,
            rto_deadline: None,
            recv: RecvBuf::new(config.initial_window),
            opened: local,
            finished_emitted: false,
            ack_queued: false,
            ready_queued: false,
            inflight_waiting: false,
        }
    }

    /// Something was transmitted that the peer has not acknowledged.
    fn unacked(&self) -> bool {
        (self.local && self.open_sent && !self.open_acked)
            || self.send.high() > self.send.acked()
            || (self.fin_sent && !self.fin_acked)
    }

    /// The peer's credit is used up while there is (or the app has) more to send.
    /// Probing then repairs a lost window update.
    fn credit_blocked(&self) -> bool {
        (self.send.queued() > self.peer_limit || (self.blocked && !self.fin_queued))
            && self.send.next() >= self.peer_limit
    }

    /// Offset up to which data may be transmitted now, given `room` session bytes.
    fn data_end(&self, room: u64) -> u64 {
        self.send
            .queued()
            .min(self.peer_limit)
            .min(self.send.high().saturating_add(room))
    }

    fn sendable(&self, room: u64) -> bool {
        self.open_pending
            || self.probe_pending
            || (self.fin_pending && self.send.next() == self.send.queued())
            || self.send.next() < self.data_end(room)
    }

    /// Would send new data if the session inflight cap allowed it.
    fn waits_for_inflight(&self) -> bool {
        self.send.next() >= self.send.high()
            && self.send.next() < self.send.queued().min(self.peer_limit)
    }

    fn rewind(&mut self) {
        self.send.rewind();
        self.open_pending = self.local && !self.open_acked;
        self.fin_pending = self.fin_queued && !self.fin_acked;
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.idle.and_then(|d| self.last_activity.checked_add(d))
    }

    fn capacity(&self) -> u64 {
        self.peer_limit.saturating_sub(self.send.queued())
    }

    fn ack_item(&self) -> wire::Ack {
        wire::Ack {
            stream_id: self.id.0,
            received: self.recv.delivered(),
            fin: self.recv.is_complete(),
            max_data: self.recv.limit(),
        }
    }
}

/// One session: see the [module docs](self).
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: Config,
    epoch: u64,
    streams: BTreeMap<StreamId, Stream>,
    next_local: u64,
    peer_ids: PeerIds,
    tombs: Tombs,
    events: VecDeque<Event>,
    ctrl: VecDeque<wire::Item>,
    acks: VecDeque<StreamId>,
    /// Streams with something to transmit, served round-robin.
    ready: VecDeque<StreamId>,
    /// Streams that just got data after having nothing unsent (interactive traffic);
    /// served alternately with `ready`, so they overtake bulk streams without being
    /// able to starve them.
    fresh: VecDeque<StreamId>,
    fresh_turn: bool,
    inflight_waiters: Vec<StreamId>,
    /// Sum over streams of transmitted-but-unacknowledged bytes.
    inflight: u64,
    peer_window: Option<u32>,
    settings_confirmed: bool,
    settings_retx: Option<Instant>,
    ping_due: bool,
    next_nonce: u64,
    last_sent: Instant,
    last_recv: Instant,
    last_now: Instant,
    peer_timed_out: bool,
}

fn after(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|t| now >= t)
}

fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_LEN {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// The most data a write should hold to go out as one chunk in one frame of
/// `max_frame_size` when it has the frame to itself (beside a few control
/// items): a larger write is cut into a full frame and a small one, and on
/// a pub/sub link each frame is a message of its own.
pub fn chunk_payload(max_frame_size: usize) -> usize {
    max_frame_size
        .saturating_sub(CHUNK_FRAME_RESERVE)
        .max(MIN_CHUNK_DATA)
}

impl Session {
    /// A new session. `config` should have passed [`Config::validate`]; out-of-range
    /// values are clamped into range (use [`Session::try_new`] to get an error instead).
    pub fn new(role: Role, config: Config, epoch: u64, now: Instant) -> Self {
        let config = config.clamped();
        let peer_parity = 1 - role.parity();
        let max_rto = config.retransmit_timeout * MAX_RTO_FACTOR;
        Self {
            role,
            epoch,
            streams: BTreeMap::new(),
            next_local: role.parity(),
            peer_ids: PeerIds::new(peer_parity, config.max_streams.saturating_mul(2) + 64),
            tombs: Tombs::new(
                config.max_streams.saturating_mul(4) + 256,
                (config.peer_timeout * 2).max(max_rto * 2),
            ),
            events: VecDeque::new(),
            ctrl: VecDeque::new(),
            acks: VecDeque::new(),
            ready: VecDeque::new(),
            fresh: VecDeque::new(),
            fresh_turn: true,
            inflight_waiters: Vec::new(),
            inflight: 0,
            peer_window: None,
            settings_confirmed: false,
            settings_retx: None,
            ping_due: true,
            next_nonce: 1,
            last_sent: now,
            last_recv: now,
            last_now: now,
            peer_timed_out: false,
            config,
        }
    }

    /// Like [`Session::new`], but rejects an invalid `config`.
    pub fn try_new(role: Role, config: Config, epoch: u64, now: Instant) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self::new(role, config, epoch, now))
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration in force (after clamping).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current connection epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A new transport connection carries this session from now on: frames of any
    /// other epoch are discarded; everything unacknowledged is retransmitted promptly
    /// with the new epoch.
    pub fn resume(&mut self, epoch: u64, now: Instant) {
        debug!(role = ?self.role, old = self.epoch, epoch, "session resumed");
        self.epoch = epoch;
        self.last_recv = now;
        self.last_now = now;
        self.peer_timed_out = false;
        self.settings_confirmed = false;
        self.settings_retx = None;
        self.ping_due = true;
        let base = self.config.retransmit_timeout;
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.rewind();
            s.rto = base;
            s.rto_deadline = None;
            s.probe_pending = s.credit_blocked();
            let ack = s.opened;
            self.mark_ready(id);
            if ack {
                self.queue_ack(id);
            }
        }
        self.tombs.retransmit_all(now, base);
        for (id, code, reason) in self.tombs.due_resets(now, self.max_rto()) {
            self.push_ctrl(reset_item(id, code, reason));
        }
    }

    /// The largest frame `poll_transmit` returns from now on, e.g. after a resume
    /// over a transport with a smaller payload. Unacknowledged data is cut anew on
    /// retransmission; an open header never shrinks with it, so the caller keeps
    /// `max_header_size` within the smallest frame it will use.
    pub fn set_max_frame_size(&mut self, max_frame_size: usize) {
        let max_frame_size = max_frame_size.clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE);
        self.config.max_frame_size = max_frame_size;
        self.config.max_inflight = self.config.max_inflight.max(max_frame_size);
        self.config.max_header_size = self
            .config
            .max_header_size
            .min(max_frame_size - OPEN_OVERHEAD);
    }

    /// Opens a stream. `header` (at most `max_header_size` bytes) is delivered to the
    /// peer with [`Event::Opened`], reliably. With `idle_timeout`, both sides reset the
    /// stream with [`ResetCode::IdleTimeout`] once nothing happened on it for that long.
    pub fn open(
        &mut self,
        header: Bytes,
        idle_timeout: Option<Duration>,
        now: Instant,
    ) -> Result<StreamId, Error> {
        if header.len() > self.config.max_header_size {
            return Err(Error::HeaderTooLarge {
                len: header.len(),
                max: self.config.max_header_size,
            });
        }
        if self.streams.len() >= self.config.max_streams || self.next_local > MAX_ID {
            return Err(Error::TooManyStreams);
        }
        self.last_now = now;
        let id = StreamId(self.next_local);
        self.next_local += 2;
        let mut s = Stream::new(id, true, &self.config, self.peer_credit(), now);
        s.header = header;
        s.idle = idle_timeout;
        self.streams.insert(id, s);
        self.mark_fresh(id);
        debug!(stream = %id, role = ?self.role, "stream opened");
        Ok(id)
    }

    /// Queues `data` (any size; chunked to fit frames). Credit is not enforced here:
    /// apply back-pressure with [`Session::send_capacity`]. Nothing beyond the peer's
    /// credit or the session inflight cap is ever put on the wire.
    pub fn send(&mut self, id: StreamId, data: Bytes, now: Instant) -> Result<(), Error> {
        self.last_now = now;
        let s = self.streams.get_mut(&id).ok_or(Error::UnknownStream(id))?;
        if s.fin_queued {
            return Err(Error::StreamFinished(id));
        }
        if data.is_empty() {
            return Ok(());
        }
        trace!(stream = %id, len = data.len(), "queued data");
        let drained = s.send.next() == s.send.queued();
        s.send.push(data);
        s.last_activity = now;
        if s.capacity() == 0 {
            s.blocked = true;
        }
        if s.rto_deadline.is_none() && s.credit_blocked() {
            s.rto_deadline = after(now, s.rto);
        }
        if drained {
            self.mark_fresh(id);
        } else {
            self.mark_ready(id);
        }
        Ok(())
    }

    /// Bytes that may be queued now without exceeding the peer's credit (credit
    /// granted minus bytes sent or queued). 0 for unknown streams.
    pub fn send_capacity(&self, id: StreamId) -> usize {
        self.streams
            .get(&id)
            .map_or(0, |s| usize::try_from(s.capacity()).unwrap_or(usize::MAX))
    }

    /// Half-close: our direction ends after the queued data (reliable, ordered).
    pub fn finish(&mut self, id: StreamId, now: Instant) -> Result<(), Error> {
        self.last_now = now;
        let s = self.streams.get_mut(&id).ok_or(Error::UnknownStream(id))?;
        if s.fin_queued {
            return Err(Error::StreamFinished(id));
        }
        s.fin_queued = true;
        s.fin_pending = true;
        s.last_activity = now;
        debug!(stream = %id, len = s.send.queued(), "stream finishing");
        if s.send.next() == s.send.queued() {
            self.mark_fresh(id);
        } else {
            self.mark_ready(id);
        }
        Ok(())
    }

    /// Aborts both directions; the peer gets [`Event::Reset`] with `code` and `reason`
    /// (truncated to [`MAX_REASON_LEN`] bytes). Frees local state at once; no event
    /// is emitted locally. Unknown ids are ignored.
    pub fn reset(&mut self, id: StreamId, code: ResetCode, reason: &str, now: Instant) {
        self.last_now = now;
        if self.streams.contains_key(&id) {
            self.kill(id, code, reason, false, now);
        }
    }

    /// The application processed `n` bytes of [`Event::Data`] on `id`: returns credit to
    /// the peer (a window update goes out once a quarter window is free, or at once if
    /// the peer has used all its credit).
    pub fn consume(&mut self, id: StreamId, n: usize) {
        let now = self.last_now;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.last_activity = now;
        if s.recv.consume(n) {
            trace!(stream = %id, limit = s.recv.limit(), "window update");
            self.queue_ack(id);
        }
    }

    /// Whether everything this side sent on `id`, its finish included, is
    /// acknowledged (or the stream is gone).
    pub fn finish_acked(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_none_or(|s| s.fin_acked)
    }

    /// Live streams (opened and not yet closed or reset).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Bytes held for `id` on the receiving side: delivered but not consumed plus
    /// out-of-order data. Never exceeds `initial_window`.
    pub fn recv_buffered(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| {
            usize::try_from(s.recv.buffered()).unwrap_or(usize::MAX)
        })
    }

    /// Payload bytes transmitted and not yet acknowledged, over all streams. Never
    /// exceeds `max_inflight`.
    pub fn inflight(&self) -> usize {
        usize::try_from(self.inflight).unwrap_or(usize::MAX)
    }

    /// One received transport message. An error means the peer is broken or hostile:
    /// the caller should end the whole session. Never panics on any input.
    pub fn handle_frame(&mut self, frame: &[u8], now: Instant) -> Result<(), FrameError> {
        self.handle_frame_bytes(&Bytes::copy_from_slice(frame), now)
    }

    /// [`Session::handle_frame`] without copying: the data it delivers are
    /// views of `frame` (small ones excepted).
    pub fn handle_frame_bytes(&mut self, frame: &Bytes, now: Instant) -> Result<(), FrameError> {
        self.last_now = now;
        let frame_len = frame.len();
        // Decoded from `Bytes`, each chunk's data is a view of the frame.
        let frame = wire::Frame::decode(frame.clone()).map_err(Malformed::Decode)?;
        if frame.epoch != self.epoch {
            trace!(role = ?self.role, epoch = frame.epoch, current = self.epoch, "discarded frame of another epoch");
            return Ok(());
        }
        self.last_recv = now;
        self.peer_timed_out = false;
        for item in frame.items {
            use wire::item::Kind;
            match item.kind {
                Some(Kind::Chunk(mut c)) => {
                    // A small view would hold the whole frame's memory while
                    // it waits for its reader: small ones get their own.
                    if c.data.len() * PIN_RATIO < frame_len {
                        c.data = Bytes::copy_from_slice(&c.data);
                    }
                    self.on_chunk(c, now)?
                }
                Some(Kind::Ack(a)) => self.on_ack(a, now)?,
                Some(Kind::Reset(r)) => self.on_reset(r, now)?,
                Some(Kind::ResetAck(r)) => self.tombs.confirm(StreamId(r.stream_id)),
                Some(Kind::Ping(p)) => {
                    self.learn_peer_window(p.initial_window);
                    let pong = wire::Pong {
                        nonce: p.nonce,
                        initial_window: self.config.initial_window,
                    };
                    self.push_ctrl(wire::Item::pong(pong));
                }
                Some(Kind::Pong(p)) => {
                    self.learn_peer_window(p.initial_window);
                    self.settings_confirmed = true;
                    self.settings_retx = None;
                }
                None => trace!("ignored unknown item"),
            }
        }
        self.tombs.expire(now);
        Ok(())
    }

    /// The next frame to hand the transport (at most `max_frame_size` bytes), or
    /// `None` when there is nothing to send. Control items come first; data chunks
    /// are taken round-robin across streams.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        self.poll_transmit_into(now, &mut buf, |_, _| {})
            .then(|| buf.freeze())
    }

    /// [`Session::poll_transmit`], encoding the frame at the end of `buf`,
    /// after what `head` writes there for a frame of the given length (a
    /// transport's own header, so the frame is copied only once). Whether
    /// there was a frame.
    pub fn poll_transmit_into(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        head: impl FnOnce(usize, &mut BytesMut),
    ) -> bool {
        self.last_now = now;
        if due(after(self.last_sent, self.config.keepalive_interval), now) {
            self.ping_due = true;
        }
        let mut fb = FrameBuilder::new(self.epoch, self.config.max_frame_size);
        if self.ping_due {
            let ping = wire::Ping {
                nonce: self.next_nonce,
                initial_window: self.config.initial_window,
            };
            if fb.push(wire::Item::ping(ping)).is_ok() {
                self.ping_due = false;
                self.next_nonce += 1;
                if !self.settings_confirmed {
                    self.settings_retx = after(now, self.config.retransmit_timeout);
                }
            }
        }
        while let Some(item) = self.ctrl.pop_front() {
            if let Err(item) = fb.push(item) {
                if fb.is_empty() {
                    warn!(?item, "dropped control item larger than a frame");
                    continue;
                }
                self.ctrl.push_front(item);
                break;
            }
        }
        while let Some(&id) = self.acks.front() {
            let Some(s) = self.streams.get_mut(&id) else {
                self.acks.pop_front();
                continue;
            };
            if s.opened {
                if fb.push(wire::Item::ack(s.ack_item())).is_err() {
                    break;
                }
                s.recv.advertise();
            }
            s.ack_queued = false;
            self.acks.pop_front();
        }
        self.transmit_data(&mut fb, now);
        if fb.is_empty() {
            return false;
        }
        self.last_sent = now;
        head(fb.len(), buf);
        fb.finish_into(buf);
        true
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should be called next: the earliest of
    /// keepalive, peer timeout, retransmissions, probes and stream idle timeouts.
    /// Timers whose work is already pending (waiting for `poll_transmit`) are left
    /// out, so a driver that does not transmit (e.g. while disconnected) never spins.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = None;
        let mut take = |c: Option<Instant>| {
            if let Some(c) = c {
                t = Some(t.map_or(c, |t: Instant| t.min(c)));
            }
        };
        if !self.ping_due {
            take(after(self.last_sent, self.config.keepalive_interval));
            if !self.settings_confirmed {
                take(self.settings_retx);
            }
        }
        if !self.peer_timed_out {
            take(after(self.last_recv, self.config.peer_timeout));
        }
        for s in self.streams.values() {
            take(s.rto_deadline);
            take(s.idle_deadline());
        }
        take(self.tombs.next_timeout());
        t
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        if !self.peer_timed_out && due(after(self.last_recv, self.config.peer_timeout), now) {
            self.peer_timed_out = true;
            warn!(role = ?self.role, streams = self.streams.len(), "peer timed out");
            let ids: Vec<StreamId> = self.streams.keys().copied().collect();
            for id in ids {
                self.kill(id, ResetCode::PeerTimeout, "peer timed out", true, now);
            }
            self.events.push_back(Event::PeerTimedOut);
        }
        if due(after(self.last_sent, self.config.keepalive_interval), now)
            || (!self.settings_confirmed && due(self.settings_retx, now))
        {
            self.ping_due = true;
        }
        let base = self.config.retransmit_timeout;
        let max_rto = self.max_rto();
        let mut idle = Vec::new();
        let mut wake = Vec::new();
        for s in self.streams.values_mut() {
            if due(s.idle_deadline(), now) {
                idle.push(s.id);
                continue;
            }
            if !due(s.rto_deadline, now) {
                continue;
            }
            s.rto_deadline = None;
            if s.unacked() {
                debug!(stream = %s.id, from = s.send.acked(), rto = ?s.rto, "retransmitting");
                s.rewind();
            } else if s.credit_blocked() {
                trace!(stream = %s.id, "probing blocked stream");
                s.probe_pending = true;
            } else {
                s.rto = base;
                continue;
            }
            s.rto = (s.rto * 2).min(max_rto);
            wake.push(s.id);
        }
        for id in wake {
            self.mark_ready(id);
        }
        for id in idle {
            debug!(stream = %id, "idle timeout");
            self.kill(id, ResetCode::IdleTimeout, "idle timeout", true, now);
        }
        for (id, code, reason) in self.tombs.due_resets(now, max_rto) {
            self.push_ctrl(reset_item(id, code, reason));
        }
        self.tombs.expire(now);
    }

    // ---- internals ----

    fn max_rto(&self) -> Duration {
        self.config.retransmit_timeout * MAX_RTO_FACTOR
    }

    fn is_local(&self, raw: u64) -> bool {
        raw % 2 == self.role.parity()
    }

    /// Credit a new stream starts with for sending.
    fn peer_credit(&self) -> u64 {
        u64::from(self.peer_window.unwrap_or(MIN_WINDOW))
    }

    fn learn_peer_window(&mut self, w: u32) {
        if w < MIN_WINDOW || self.peer_window == Some(w) {
            return;
        }
        debug!(role = ?self.role, window = w, "learned peer window");
        self.peer_window = Some(w);
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.raise_peer_limit(id, u64::from(w));
        }
    }

    fn raise_peer_limit(&mut self, id: StreamId, limit: u64) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if limit <= s.peer_limit {
            return;
        }
        s.peer_limit = limit;
        s.probe_pending = false;
        if s.blocked && s.capacity() > 0 {
            s.blocked = false;
            self.events.push_back(Event::Writable { id });
        }
        self.mark_ready(id);
    }

    /// Queues `id` for transmission if it has anything to send (inflight room is
    /// checked when it is served).
    fn mark_ready(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id)
            && !s.ready_queued
            && s.sendable(u64::MAX)
        {
            s.ready_queued = true;
            self.ready.push_back(id);
        }
    }

    fn mark_fresh(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id)
            && !s.ready_queued
            && s.sendable(u64::MAX)
        {
            s.ready_queued = true;
            self.fresh.push_back(id);
        }
    }

    /// Next stream to serve: alternately from `fresh` and `ready`. A fresh stream with
    /// more than a frame of unsent data is bulk, not interactive: it is moved to the
    /// back of `ready` instead.
    fn next_ready(&mut self) -> Option<(StreamId, bool)> {
        while let Some(&id) = self.fresh.front() {
            let bulk = self.streams.get(&id).is_some_and(|s| {
                s.send.queued() - s.send.next() > self.config.max_frame_size as u64
            });
            if !bulk {
                break;
            }
            self.fresh.pop_front();
            self.ready.push_back(id);
        }
        let from_fresh = !self.fresh.is_empty() && (self.fresh_turn || self.ready.is_empty());
        if from_fresh {
            self.fresh_turn = false;
            self.fresh.pop_front().map(|id| (id, true))
        } else {
            self.fresh_turn = true;
            self.ready.pop_front().map(|id| (id, false))
        }
    }

    fn queue_ack(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id)
            && !s.ack_queued
        {
            s.ack_queued = true;
            self.acks.push_back(id);
        }
    }

    fn push_ctrl(&mut self, item: wire::Item) {
        if self.ctrl.len() < MAX_CTRL_QUEUE {
            self.ctrl.push_back(item);
        } else {
            trace!("control queue full, dropped item");
        }
    }

    fn wake_inflight_waiters(&mut self) {
        for id in std::mem::take(&mut self.inflight_waiters) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.inflight_waiting = false;
            }
            self.mark_ready(id);
        }
    }

    fn room(&self) -> u64 {
        (self.config.max_inflight as u64).saturating_sub(self.inflight)
    }

    /// Fills the rest of `fb` with data chunks, one per stream in turn.
    fn transmit_data(&mut self, fb: &mut FrameBuilder, now: Instant) {
        while fb.remaining() >= MIN_CHUNK_SPACE {
            let Some((id, was_fresh)) = self.next_ready() else {
                break;
            };
            let room = self.room();
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.ready_queued = false;
            if !s.sendable(room) {
                if s.waits_for_inflight() && !s.inflight_waiting {
                    s.inflight_waiting = true;
                    self.inflight_waiters.push(id);
                }
                if s.rto_deadline.is_none() && s.credit_blocked() {
                    s.rto_deadline = after(now, s.rto);
                }
                continue;
            }
            let high_before = s.send.high();
            let Some(chunk) = build_chunk(s, fb.remaining(), room) else {
                s.ready_queued = true;
                if was_fresh {
                    self.fresh.push_front(id);
                } else {
                    self.ready.push_front(id);
                }
                break;
            };
            trace!(stream = %id, offset = chunk.offset, len = chunk.data.len(), fin = chunk.fin, open = chunk.open.is_some(), "chunk");
            if fb.push(wire::Item::chunk(chunk)).is_err() {
                // Cannot happen: build_chunk sized the chunk to fit. Retransmission
                // recovers the bytes should it ever happen.
                warn!(stream = %id, "chunk did not fit its frame");
                s.rewind();
            }
            self.inflight += s.send.high() - high_before;
            if s.rto_deadline.is_none() && (s.unacked() || s.credit_blocked()) {
                s.rto_deadline = after(now, s.rto);
            }
            let room = (self.config.max_inflight as u64).saturating_sub(self.inflight);
            if s.sendable(room) {
                s.ready_queued = true;
                self.ready.push_back(id);
            } else if s.waits_for_inflight() && !s.inflight_waiting {
                s.inflight_waiting = true;
                self.inflight_waiters.push(id);
            }
        }
    }

    fn remove_stream(&mut self, id: StreamId) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        let out = s.send.high() - s.send.acked();
        if out > 0 {
            self.inflight -= out;
            self.wake_inflight_waiters();
        }
        Some(s)
    }

    /// Resets `id` towards the peer (reliably), freeing it if live; with `notify`, the
    /// local application also gets `Event::Reset`.
    fn kill(&mut self, id: StreamId, code: ResetCode, reason: &str, notify: bool, now: Instant) {
        let reason = truncate_reason(reason);
        debug!(stream = %id, %code, reason = %reason, "stream reset");
        if let Some(s) = self.remove_stream(id)
            && notify
            && s.visible
        {
            self.events.push_back(Event::Reset {
                id,
                code,
                reason: reason.clone(),
            });
        }
        self.push_ctrl(reset_item(id, code, reason.clone()));
        let base = self.config.retransmit_timeout;
        let retx = after(now, base).map(|t| (t, (base * 2).min(self.max_rto())));
        self.tombs
            .insert(id, Outcome::Reset { code, reason }, retx, now);
    }

    /// Frees `id` if both directions are complete.
    fn maybe_close(&mut self, id: StreamId, now: Instant) {
        let done = self
            .streams
            .get(&id)
            .is_some_and(|s| s.fin_acked && s.finished_emitted);
        if !done {
            return;
        }
        let Some(s) = self.remove_stream(id) else {
            return;
        };
        let recv_final = s.recv.delivered();
        if s.ack_queued {
            self.push_ctrl(wire::Item::ack(s.ack_item()));
        }
        self.tombs
            .insert(id, Outcome::Graceful { recv_final }, None, now);
        debug!(stream = %id, "stream closed");
        self.events.push_back(Event::Closed { id });
    }

    /// Answers a chunk for a stream whose state is gone.
    fn answer_closed(&mut self, id: StreamId) {
        let item = match self.tombs.get(id).map(|t| &t.outcome) {
            Some(Outcome::Graceful { recv_final }) => wire::Item::ack(wire::Ack {
                stream_id: id.0,
                received: *recv_final,
                fin: true,
                max_data: *recv_final,
            }),
            Some(Outcome::Reset { code, reason }) => reset_item(id, *code, reason.clone()),
            None => reset_item(id, ResetCode::Gone, "no state for stream".to_owned()),
        };
        trace!(stream = %id, "answered frame for closed stream");
        self.push_ctrl(item);
    }

    fn on_chunk(&mut self, c: wire::Chunk, now: Instant) -> Result<(), Violation> {
        let raw = c.stream_id;
        if raw > MAX_ID {
            return Err(Violation::StreamIdOutOfRange(raw));
        }
        let id = StreamId(raw);
        if c.offset
            .checked_add(c.data.len() as u64)
            .is_none_or(|end| end > MAX_ID)
        {
            return Err(Violation::OffsetOutOfRange(id));
        }
        if self.is_local(raw) {
            if c.open.is_some() {
                return Err(Violation::WrongParity(id));
            }
            if raw >= self.next_local {
                return Err(Violation::NotOpened(id));
            }
            if !self.streams.contains_key(&id) {
                self.answer_closed(id);
                return Ok(());
            }
        } else if !self.streams.contains_key(&id) {
            if !self.peer_ids.is_new(raw) {
                self.answer_closed(id);
                return Ok(());
            }
            self.peer_ids.mark_seen(raw);
            if self.streams.len() >= self.config.max_streams {
                debug!(stream = %id, "refused: too many streams");
                self.kill(id, ResetCode::Refused, "too many streams", false, now);
                return Ok(());
            }
            let s = Stream::new(id, false, &self.config, self.peer_credit(), now);
            self.streams.insert(id, s);
        }
        let max_header = self.config.max_header_size;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if let Some(open) = &c.open
            && !s.opened
            && open.header.len() > max_header
        {
            self.kill(
                id,
                ResetCode::ProtocolError,
                "stream header too large",
                false,
                now,
            );
            return Ok(());
        }
        let accepted = match s.recv.insert(c.offset, c.data, c.fin) {
            Ok(a) => a,
            Err(Reject::FlowControl { end, limit }) => {
                return Err(Violation::FlowControl { id, end, limit });
            }
            Err(Reject::FinalSize) => return Err(Violation::FinalSize(id)),
        };
        if accepted == Accept::New {
            s.last_activity = now;
        }
        if let Some(open) = c.open
            && !s.opened
        {
            s.opened = true;
            s.visible = true;
            s.last_activity = now;
            s.idle =
                (open.idle_timeout_ms > 0).then(|| Duration::from_millis(open.idle_timeout_ms));
            debug!(stream = %id, role = ?self.role, header_len = open.header.len(), "peer opened stream");
            self.events.push_back(Event::Opened {
                id,
                header: open.header,
            });
        }
        if !s.opened {
            return Ok(());
        }
        while let Some(data) = s.recv.pop_ready() {
            self.events.push_back(Event::Data { id, data });
        }
        if s.recv.is_complete() && !s.finished_emitted {
            s.finished_emitted = true;
            debug!(stream = %id, len = s.recv.delivered(), "peer finished");
            self.events.push_back(Event::Finished { id });
        }
        self.queue_ack(id);
        self.maybe_close(id, now);
        Ok(())
    }

    fn on_ack(&mut self, a: wire::Ack, now: Instant) -> Result<(), Violation> {
        let raw = a.stream_id;
        if raw > MAX_ID {
            return Err(Violation::StreamIdOutOfRange(raw));
        }
        let id = StreamId(raw);
        let base = self.config.retransmit_timeout;
        let Some(s) = self.streams.get_mut(&id) else {
            if self.is_local(raw) && raw >= self.next_local {
                return Err(Violation::NotOpened(id));
            }
            return Ok(());
        };
        if a.received > s.send.high()
            || (a.fin && (!s.fin_sent || a.received != s.send.queued()))
            || (s.local && !s.open_sent)
        {
            return Err(Violation::AckBeyondSent(id));
        }
        let mut progress = false;
        if !s.open_acked {
            s.open_acked = true;
            s.open_pending = false;
            s.header = Bytes::new();
            progress = true;
        }
        let newly = s.send.ack(a.received);
        if newly > 0 {
            progress = true;
        }
        if a.fin && !s.fin_acked {
            s.fin_acked = true;
            s.fin_pending = false;
            progress = true;
        }
        if progress {
            s.rto = base;
            s.rto_deadline = if s.unacked() || s.credit_blocked() {
                after(now, base)
            } else {
                None
            };
            trace!(stream = %id, acked = s.send.acked(), fin = s.fin_acked, "acked");
        }
        if newly > 0 {
            self.inflight -= newly;
            self.wake_inflight_waiters();
        }
        self.raise_peer_limit(id, a.max_data);
        if progress {
            self.maybe_close(id, now);
        }
        Ok(())
    }

    fn on_reset(&mut self, r: wire::Reset, now: Instant) -> Result<(), Violation> {
        let raw = r.stream_id;
        if raw > MAX_ID {
            return Err(Violation::StreamIdOutOfRange(raw));
        }
        let id = StreamId(raw);
        let code = ResetCode::from_u32(r.code);
        let reason = truncate_reason(&r.reason);
        if let Some(s) = self.remove_stream(id) {
            debug!(stream = %id, %code, reason = %reason, "peer reset stream");
            if s.visible {
                self.events.push_back(Event::Reset {
                    id,
                    code,
                    reason: reason.clone(),
                });
            }
            self.tombs
                .insert(id, Outcome::Reset { code, reason }, None, now);
        } else if self.is_local(raw) {
            if raw >= self.next_local {
                return Err(Violation::NotOpened(id));
            }
        } else if self.peer_ids.is_new(raw) {
            // Reset overtook the open: remember it so the late open is refused.
            self.peer_ids.mark_seen(raw);
            self.tombs
                .insert(id, Outcome::Reset { code, reason }, None, now);
        }
        self.tombs.confirm(id);
        self.push_ctrl(wire::Item::reset_ack(raw));
        Ok(())
    }
}

fn reset_item(id: StreamId, code: ResetCode, reason: String) -> wire::Item {
    wire::Item::reset(wire::Reset {
        stream_id: id.0,
        code: code.to_u32(),
        reason,
    })
}

/// The next chunk of `s` that fits in `budget` encoded bytes, or `None` if none fits.
fn build_chunk(s: &mut Stream, budget: usize, room: u64) -> Option<wire::Chunk> {
    let open = s.open_pending.then(|| wire::Open {
        header: s.header.clone(),
        idle_timeout_ms: s.idle.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        }),
    });
    let end = s.data_end(room);
    let avail = end.saturating_sub(s.send.next());
    let mut chunk = wire::Chunk {
        stream_id: s.id.0,
        offset: s.send.next(),
        data: Bytes::new(),
        fin: s.fin_pending,
        open,
    };
    let overhead = wire::item_len(&wire::Item::chunk(chunk.clone()));
    // Data adds its bytes, a tag, its length prefix, and grows two enclosing length
    // prefixes by at most `varint_len(budget) - 1` each.
    let slack = 1 + 3 * prost::length_delimiter_len(budget);
    let max_data = budget.checked_sub(overhead)?.saturating_sub(slack);
    let n = avail.min(max_data as u64) as usize;
    let short = (n as u64) < avail && n < MIN_CHUNK_DATA;
    if avail > 0 && (n == 0 || short) && chunk.open.is_none() {
        return None;
    }
    let (off, data) = s.send.take(end, n);
    chunk.offset = off;
    chunk.data = data;
    chunk.fin = s.fin_pending && s.send.next() == s.send.queued();
    if chunk.open.is_some() {
        s.open_pending = false;
        s.open_sent = true;
    }
    if chunk.fin {
        s.fin_pending = false;
        s.fin_sent = true;
    }
    s.probe_pending = false;
    Some(chunk)
}
