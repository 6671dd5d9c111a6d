//! Runs a [`proto::session::Session`] on tokio: moves its frames over the
//! current link, hands out [`Stream`]s, and survives the link being replaced.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream::BoxStream};
use prost::Message;
use proto::{
    envelope::{Body, Envelope, FRAME_OVERHEAD},
    session::{Config, Event, ResetCode, Role, Session, StreamId},
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, warn};

use crate::{
    link::{Link, MIN_PAYLOAD, TransportError},
    stream::{DROPPED, SendFailure, SendGate, Stream, StreamError, StreamEvent},
};

/// Most encoding buffer a session keeps while it has nothing to send.
const IDLE_BUFFER: usize = 64 * 1024;

/// Settings of one session driver.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Session-layer settings; `max_frame_size` is derived from the first link.
    pub session: Config,
    /// How long a session waits for a new link before ending every stream.
    pub resume_window: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            session: Config::default(),
            resume_window: Duration::from_secs(30),
        }
    }
}

/// Whether the session currently has a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connected {
        transport: &'static str,
        epoch: u64,
    },
    /// Link lost; streams wait for a resume until the window ends.
    Disconnected {
        reason: String,
    },
    /// The session is over; its streams have ended.
    Closed {
        reason: String,
    },
}

pub(crate) enum Cmd {
    Open {
        header: Bytes,
        idle_timeout: Option<Duration>,
        reply: oneshot::Sender<Result<Stream, StreamError>>,
    },
    /// A write; `taken` is the room it holds in the stream's [`SendGate`].
    Send {
        id: StreamId,
        data: Bytes,
        taken: usize,
    },
    Finish {
        id: StreamId,
    },
    /// Dropped after its finish: reset once the peer acknowledged it all.
    Abandon {
        id: StreamId,
    },
    Reset {
        id: StreamId,
        code: ResetCode,
        reason: String,
    },
    Consume {
        id: StreamId,
        n: usize,
    },
    Attach {
        link: Link,
        epoch: u64,
    },
    Close {
        reason: String,
    },
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Cmd::Open { .. } => "Open",
            Cmd::Send { .. } => "Send",
            Cmd::Finish { .. } => "Finish",
            Cmd::Abandon { .. } => "Abandon",
            Cmd::Reset { .. } => "Reset",
            Cmd::Consume { .. } => "Consume",
            Cmd::Attach { .. } => "Attach",
            Cmd::Close { .. } => "Close",
        };
        f.write_str(name)
    }
}

/// The application's side of a session. Cloning shares the same session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    cmds: mpsc::UnboundedSender<Cmd>,
    state: watch::Receiver<LinkState>,
    session_id: u64,
}

impl SessionHandle {
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Opens a stream whose header is the API's `Open`.
    pub async fn open(&self, header: &proto::api::Open) -> Result<Stream, StreamError> {
        self.open_raw(header.encode_to_vec().into(), None).await
    }

    /// One request on a new stream: sends `request`, finishes, and returns the
    /// single answer (`None` if the peer finished without one).
    pub async fn request<Req: Message, Resp: Message + Default>(
        &self,
        header: &proto::api::Open,
        request: &Req,
    ) -> Result<Option<Resp>, StreamError> {
        self.open(header).await?.call(request).await
    }

    pub async fn open_raw(
        &self,
        header: Bytes,
        idle_timeout: Option<Duration>,
    ) -> Result<Stream, StreamError> {
        let (reply, opened) = oneshot::channel();
        self.cmds
            .send(Cmd::Open {
                header,
                idle_timeout,
                reply,
            })
            .map_err(|_| self.closed_error())?;
        opened.await.map_err(|_| self.closed_error())?
    }

    /// Carries the session over a new link from now on (after a reconnect).
    pub fn attach(&self, link: Link, epoch: u64) -> Result<(), Link> {
        self.cmds
            .send(Cmd::Attach { link, epoch })
            .map_err(|e| match e.0 {
                Cmd::Attach { link, .. } => link,
                _ => unreachable!("sent an Attach"),
            })
    }

    /// Ends the session and every stream in it.
    pub fn close(&self, reason: &str) {
        let _ = self.cmds.send(Cmd::Close {
            reason: reason.to_string(),
        });
    }

    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.cmds.is_closed() || matches!(*self.state.borrow(), LinkState::Closed { .. })
    }

    fn closed_error(&self) -> StreamError {
        match &*self.state.borrow() {
            LinkState::Closed { reason } => StreamError::SessionClosed(reason.clone()),
            _ => StreamError::SessionClosed("session driver stopped".to_string()),
        }
    }
}

/// Starts a session over `link`. Streams the peer opens arrive on the returned receiver.
pub fn spawn(
    role: Role,
    mut config: SessionConfig,
    session_id: u64,
    epoch: u64,
    link: Link,
    span: tracing::Span,
) -> Result<(SessionHandle, mpsc::UnboundedReceiver<Stream>), proto::session::Error> {
    // Frames must fit the link. An open header must fit one frame of any link
    // the session may move to later, not only this one.
    config.session.max_frame_size = frame_size(&link);
    config.session.max_header_size = config
        .session
        .max_header_size
        .min((MIN_PAYLOAD - FRAME_OVERHEAD).saturating_sub(proto::session::OPEN_OVERHEAD));
    config.session.validate()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(LinkState::Connected {
        transport: link.transport,
        epoch,
    });
    let driver = Driver {
        session: Session::new(role, config.session.clone(), epoch, Instant::now()),
        resume_window: config.resume_window,
        cmds: cmd_rx,
        cmd_tx: cmd_tx.clone(),
        incoming: incoming_tx,
        state: state_tx,
        streams: HashMap::new(),
        abandoned: Vec::new(),
        link_tx: Some(link.tx),
        link_rx: Some(link.rx),
        transport: link.transport,
        outbound: None,
        tx_buf: BytesMut::new(),
        resume_deadline: None,
        span: span.clone(),
    };
    tokio::spawn(driver.run().instrument(span));
    Ok((
        SessionHandle {
            cmds: cmd_tx,
            state: state_rx,
            session_id,
        },
        incoming_rx,
    ))
}

struct Slot {
    events: mpsc::UnboundedSender<StreamEvent>,
    gate: Arc<SendGate>,
    /// Writes handed over that the session has not taken yet (no more than
    /// the gate's room), oldest first, each with the room it holds.
    pending: VecDeque<(Bytes, usize)>,
    /// The writer finished after `pending`: the session's finish follows them.
    finish_after_pending: bool,
}

struct Driver {
    session: Session,
    resume_window: Duration,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    incoming: mpsc::UnboundedSender<Stream>,
    state: watch::Sender<LinkState>,
    streams: HashMap<StreamId, Slot>,
    /// Streams dropped after finishing, until the peer acknowledged them.
    abandoned: Vec<StreamId>,
    link_tx: Option<mpsc::Sender<Bytes>>,
    link_rx: Option<BoxStream<'static, Result<Bytes, TransportError>>>,
    transport: &'static str,
    /// A frame pulled from the session, waiting for room on the link.
    outbound: Option<Bytes>,
    /// Where frames are encoded, each in its envelope. Its memory is used
    /// again once the link has dropped the frames cut from it, rather than
    /// every large frame costing a fresh allocation and its page faults.
    tx_buf: BytesMut,
    resume_deadline: Option<tokio::time::Instant>,
    span: tracing::Span,
}

enum Step {
    Cmd(Option<Cmd>),
    Inbound(Option<Result<Bytes, TransportError>>),
    Sent(Result<(), ()>),
    Timer,
    ResumeExpired,
}

impl Driver {
    async fn run(mut self) {
        let reason = loop {
            self.pump_events();
            if self.link_tx.is_some() && self.outbound.is_none() {
                let buf = &mut self.tx_buf;
                let head = |len, buf: &mut BytesMut| {
                    // Room for the next frame as well, so it finds this
                    // memory free again when the link has sent this one.
                    buf.reserve(2 * (len + FRAME_OVERHEAD));
                    Envelope::frame_head(len, buf);
                };
                self.outbound = if self.session.poll_transmit_into(Instant::now(), buf, head) {
                    Some(buf.split().freeze())
                } else {
                    // Idle: an idle session keeps no large buffer.
                    if buf.capacity() > IDLE_BUFFER {
                        *buf = BytesMut::new();
                    }
                    None
                };
            }
            let timer = self
                .session
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let step = tokio::select! {
                biased;
                cmd = self.cmds.recv() => Step::Cmd(cmd),
                msg = next_inbound(&mut self.link_rx) => Step::Inbound(msg),
                sent = reserve_send(&self.link_tx, &mut self.outbound) => Step::Sent(sent),
                () = sleep_until(timer) => Step::Timer,
                () = sleep_until(self.resume_deadline) => Step::ResumeExpired,
            };
            match step {
                Step::Cmd(None) => break "every handle dropped".to_string(),
                Step::Cmd(Some(Cmd::Close { reason })) => break reason,
                Step::Cmd(Some(cmd)) => self.handle_cmd(cmd),
                Step::Inbound(Some(Ok(bytes))) => {
                    if let Err(reason) = self.handle_inbound(bytes) {
                        break reason;
                    }
                    self.settle_abandoned();
                }
                Step::Inbound(Some(Err(e))) => self.link_lost(e.to_string()),
                Step::Inbound(None) => self.link_lost("link closed by peer".to_string()),
                Step::Sent(Ok(())) => {}
                Step::Sent(Err(())) => self.link_lost("link closed".to_string()),
                Step::Timer => self.session.handle_timeout(Instant::now()),
                Step::ResumeExpired => {
                    break format!(
                        "no reconnect within {}s, session ended",
                        self.resume_window.as_secs()
                    );
                }
            }
        };
        info!(%reason, "session closed");
        for (_, slot) in self.streams.drain() {
            slot.gate.fail(SendFailure::Closed(reason.clone()));
        }
        let _ = self.state.send(LinkState::Closed { reason });
    }

    fn handle_inbound(&mut self, bytes: Bytes) -> Result<(), String> {
        let envelope =
            Envelope::from_bytes(bytes).map_err(|e| format!("malformed envelope: {e}"))?;
        match envelope.body {
            Some(Body::Frame(frame)) => self
                .session
                .handle_frame_bytes(&frame, Instant::now())
                .map_err(|e| format!("session protocol error: {e}")),
            // A stray handshake message mid-session is a peer bug; the link goes.
            _ => {
                self.link_lost("unexpected handshake message mid-session".to_string());
                Ok(())
            }
        }
    }

    fn link_lost(&mut self, reason: String) {
        if self.link_tx.is_none() {
            return;
        }
        warn!(%reason, transport = self.transport, "link lost, waiting for a resume");
        self.link_tx = None;
        self.link_rx = None;
        self.outbound = None;
        self.resume_deadline = Some(tokio::time::Instant::now() + self.resume_window);
        let _ = self.state.send(LinkState::Disconnected { reason });
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Open {
                header,
                idle_timeout,
                reply,
            } => {
                let result = self
                    .session
                    .open(header.clone(), idle_timeout, now)
                    .map(|id| self.new_stream(id, header))
                    .map_err(|e| StreamError::SessionClosed(format!("cannot open stream: {e}")));
                let _ = reply.send(result);
            }
            // A write to a stream already gone is dropped: its gate was
            // closed with the cause, which the writer sees next.
            Cmd::Send { id, data, taken } => {
                if let Some(slot) = self.streams.get_mut(&id) {
                    slot.pending.push_back((data, taken));
                    self.flush_pending(id);
                }
            }
            Cmd::Finish { id } => match self.streams.get_mut(&id) {
                Some(slot) if !slot.pending.is_empty() => slot.finish_after_pending = true,
                _ => self.finish(id, now),
            },
            Cmd::Abandon { id } => {
                if self.streams.contains_key(&id) {
                    self.abandoned.push(id);
                    self.settle_abandoned();
                }
            }
            Cmd::Reset { id, code, reason } => {
                self.session.reset(id, code, &reason, now);
                self.remove(id, SendFailure::Reset { code, reason });
            }
            Cmd::Consume { id, n } => self.session.consume(id, n),
            Cmd::Attach { link, epoch } => {
                info!(transport = link.transport, peer = %link.peer, epoch, "session resumed on a new link");
                self.session.resume(epoch, now);
                self.session.set_max_frame_size(frame_size(&link));
                let chunk = proto::session::chunk_payload(self.session.config().max_frame_size);
                for slot in self.streams.values() {
                    slot.gate.set_chunk(chunk);
                }
                self.transport = link.transport;
                self.link_tx = Some(link.tx);
                self.link_rx = Some(link.rx);
                self.outbound = None;
                self.resume_deadline = None;
                let _ = self.state.send(LinkState::Connected {
                    transport: link.transport,
                    epoch,
                });
            }
            Cmd::Close { .. } => unreachable!("handled by the loop"),
        }
    }

    fn new_stream(&mut self, id: StreamId, header: Bytes) -> Stream {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let chunk = proto::session::chunk_payload(self.session.config().max_frame_size);
        let gate = Arc::new(SendGate::new(chunk));
        self.streams.insert(
            id,
            Slot {
                events: events_tx,
                gate: gate.clone(),
                pending: VecDeque::new(),
                finish_after_pending: false,
            },
        );
        let span = tracing::debug_span!(parent: &self.span, "stream", stream = %id);
        Stream::new(id, header, self.cmd_tx.clone(), events_rx, gate, span)
    }

    fn finish(&mut self, id: StreamId, now: Instant) {
        if let Err(e) = self.session.finish(id, now) {
            debug!(stream = %id, error = %e, "finish on a stream that is gone");
        }
    }

    /// Gives the session as much of the stream's waiting writes as the
    /// peer has credit for, in order, handing their room back to the writer
    /// as each is taken whole; then the finish, if it waits for them.
    fn flush_pending(&mut self, id: StreamId) {
        let now = Instant::now();
        let Some(slot) = self.streams.get_mut(&id) else {
            return;
        };
        while let Some((data, taken)) = slot.pending.front_mut() {
            let capacity = self.session.send_capacity(id);
            if capacity == 0 {
                return;
            }
            let chunk = data.split_to(capacity.min(data.len()));
            if let Err(e) = self.session.send(id, chunk, now) {
                slot.gate
                    .fail(SendFailure::Closed(format!("send failed: {e}")));
                slot.pending.clear();
                return;
            }
            if data.is_empty() {
                slot.gate.release(*taken);
                slot.pending.pop_front();
            }
        }
        if std::mem::take(&mut slot.finish_after_pending) {
            self.finish(id, now);
        }
    }

    /// Resets the dropped streams whose every byte and finish the peer has
    /// acknowledged (those already gone are forgotten).
    fn settle_abandoned(&mut self) {
        if self.abandoned.is_empty() {
            return;
        }
        let (settled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.abandoned)
            .into_iter()
            .filter(|id| self.streams.contains_key(id))
            .partition(|id| {
                self.streams[id].pending.is_empty()
                    && !self.streams[id].finish_after_pending
                    && self.session.finish_acked(*id)
            });
        self.abandoned = waiting;
        let now = Instant::now();
        for id in settled {
            self.session.reset(id, ResetCode::Cancelled, DROPPED, now);
            self.remove(id, SendFailure::Closed(DROPPED.to_string()));
        }
    }

    /// Forgets a stream that ended other than by both sides finishing; its
    /// writer is told `why`.
    fn remove(&mut self, id: StreamId, why: SendFailure) {
        if let Some(slot) = self.streams.remove(&id) {
            slot.gate.fail(why);
        }
    }

    fn pump_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Opened { id, header } => {
                    let stream = self.new_stream(id, header);
                    if self.incoming.send(stream).is_err() {
                        // Nobody accepts streams: the Stream's drop resets it.
                        debug!(stream = %id, "incoming stream with no acceptor");
                    }
                }
                Event::Data { id, data } => {
                    let delivered = self
                        .streams
                        .get(&id)
                        .is_some_and(|s| s.events.send(StreamEvent::Data(data)).is_ok());
                    if !delivered {
                        let reason = "reader gone";
                        self.session
                            .reset(id, ResetCode::Cancelled, reason, Instant::now());
                        self.remove(
                            id,
                            SendFailure::Reset {
                                code: ResetCode::Cancelled,
                                reason: reason.to_string(),
                            },
                        );
                    }
                }
                Event::Finished { id } => {
                    if let Some(slot) = self.streams.get(&id) {
                        let _ = slot.events.send(StreamEvent::Finished);
                    }
                }
                Event::Reset { id, code, reason } => {
                    if let Some(slot) = self.streams.get(&id) {
                        let _ = slot.events.send(StreamEvent::Reset {
                            code,
                            reason: reason.clone(),
                        });
                    }
                    self.remove(id, SendFailure::Reset { code, reason });
                }
                Event::Writable { id } => self.flush_pending(id),
                // Both directions ended (so nothing waits to be sent): the
                // reader's channel keeps what it has not read yet.
                Event::Closed { id } => {
                    self.remove(id, SendFailure::Closed("stream closed".to_string()));
                }
                Event::PeerTimedOut => self.link_lost("peer silent past its timeout".to_string()),
            }
        }
    }
}

/// The session frame that fills one message of `link`.
fn frame_size(link: &Link) -> usize {
    link.max_payload.max(MIN_PAYLOAD) - FRAME_OVERHEAD
}

async fn next_inbound(
    rx: &mut Option<BoxStream<'static, Result<Bytes, TransportError>>>,
) -> Option<Result<Bytes, TransportError>> {
    match rx {
        Some(rx) => rx.next().await,
        None => std::future::pending().await,
    }
}

async fn reserve_send(
    tx: &Option<mpsc::Sender<Bytes>>,
    outbound: &mut Option<Bytes>,
) -> Result<(), ()> {
    match (tx, outbound.is_some()) {
        (Some(tx), true) => {
            let permit = tx.reserve().await.map_err(|_| ())?;
            if let Some(frame) = outbound.take() {
                permit.send(frame);
            }
            Ok(())
        }
        _ => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
