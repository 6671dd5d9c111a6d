//! One multiplexed stream as the application sees it.

use bytes::Bytes;
use prost::Message;
use proto::{
    api::{DecodeError, MessageReader, encode_message},
    session::{ResetCode, StreamId},
};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, mpsc};

use crate::session::Cmd;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The whole session ended (device gone for good, protocol error, shutdown).
    #[error("session closed: {0}")]
    SessionClosed(String),
    /// The peer (or a timeout) reset this stream.
    #[error("stream reset ({code:?}): {reason}")]
    Reset { code: ResetCode, reason: String },
    /// This side already finished sending.
    #[error("stream already finished")]
    Finished,
    /// The peer ended the stream in the middle of a message.
    #[error("stream ended inside a message")]
    Truncated,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A stream opened with a header that does not parse.
    #[error("malformed stream header: {0}")]
    Header(#[from] prost::DecodeError),
}

/// How far a stream's writer may run ahead of the session: bytes handed to
/// the driver that the session has not taken yet (it takes them as the peer's
/// credit allows). Writers hand chunks over without waiting for the driver
/// to answer each one, which held a bulk transfer to one chunk per round
/// trip through the driver's task; this keeps the memory a stream can pin
/// bounded all the same.
pub(crate) const SEND_AHEAD: usize = 256 << 10;

/// Why a stream takes no more writes, as the writer is told.
#[derive(Debug, Clone)]
pub(crate) enum SendFailure {
    Closed(String),
    Reset { code: ResetCode, reason: String },
}

impl From<SendFailure> for StreamError {
    fn from(failure: SendFailure) -> Self {
        match failure {
            SendFailure::Closed(reason) => StreamError::SessionClosed(reason),
            SendFailure::Reset { code, reason } => StreamError::Reset { code, reason },
        }
    }
}

/// The room a stream's writer has ([`SEND_AHEAD`] bytes), shared with the
/// driver, which gives room back as the session takes the bytes, and closes
/// it, with the cause, when the stream can take no more.
#[derive(Debug)]
pub(crate) struct SendGate {
    room: Semaphore,
    failure: std::sync::Mutex<Option<SendFailure>>,
    /// [`proto::session::chunk_payload`] of the current link's frames.
    chunk: AtomicUsize,
}

impl SendGate {
    pub(crate) fn new(chunk: usize) -> Self {
        Self {
            room: Semaphore::new(SEND_AHEAD),
            failure: std::sync::Mutex::new(None),
            chunk: AtomicUsize::new(chunk),
        }
    }

    /// The session moved to a link with frames of another size.
    pub(crate) fn set_chunk(&self, chunk: usize) {
        self.chunk.store(chunk, Ordering::Relaxed);
    }

    /// Waits for room for `len` bytes (a write larger than the whole room
    /// waits for all of it); returns the room taken.
    async fn reserve(&self, len: usize) -> Result<usize, StreamError> {
        let taken = len.min(SEND_AHEAD);
        let permits = u32::try_from(taken).unwrap_or(u32::MAX);
        match self.room.acquire_many(permits).await {
            Ok(permit) => {
                permit.forget();
                Ok(taken)
            }
            Err(_) => Err(self.failure()),
        }
    }

    /// Fails once the stream takes no more writes.
    fn check(&self) -> Result<(), StreamError> {
        if self.room.is_closed() {
            return Err(self.failure());
        }
        Ok(())
    }

    /// The session took a write that held `taken` of the room.
    pub(crate) fn release(&self, taken: usize) {
        self.room.add_permits(taken);
    }

    /// No more writes: each writer, waiting or next, is told `failure`
    /// (the first cause given stays).
    pub(crate) fn fail(&self, failure: SendFailure) {
        let mut slot = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(failure);
        }
        self.room.close();
    }

    fn failure(&self) -> StreamError {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .map_or_else(closed, StreamError::from)
    }
}

/// What the driver hands a stream.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Data(Bytes),
    Finished,
    Reset { code: ResetCode, reason: String },
}

/// A stream: ordered exactly-once bytes each way, with back-pressure. Dropping
/// it before both directions ended resets it on both sides; once this side
/// finished, only after the peer has acknowledged all of it. It is its two
/// halves ([`Stream::split`] hands them out for concurrent use).
#[derive(Debug)]
pub struct Stream {
    header: Bytes,
    /// The session's span, so work done for this stream logs under it.
    span: tracing::Span,
    tx: StreamSender,
    rx: StreamReceiver,
}

impl Stream {
    pub(crate) fn new(
        id: StreamId,
        header: Bytes,
        cmds: mpsc::UnboundedSender<Cmd>,
        events: mpsc::UnboundedReceiver<StreamEvent>,
        gate: std::sync::Arc<SendGate>,
        span: tracing::Span,
    ) -> Self {
        let shared = std::sync::Arc::new(Shared {
            id,
            cmds,
            gate,
            state: std::sync::Mutex::new(Ends::default()),
        });
        Self {
            header,
            span,
            tx: StreamSender {
                shared: shared.clone(),
            },
            rx: StreamReceiver {
                shared,
                events,
                reader: MessageReader::default(),
            },
        }
    }

    pub fn id(&self) -> StreamId {
        self.tx.shared.id
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The raw header the stream was opened with.
    pub fn header(&self) -> &Bytes {
        &self.header
    }

    /// The header decoded as the API's `Open`.
    pub fn open_header(&self) -> Result<proto::api::Open, StreamError> {
        Ok(proto::api::Open::decode(self.header.clone())?)
    }

    /// Splits the stream so one task can send while another receives (a
    /// single owner could deadlock: blocked sending for credit that only its
    /// own reading would let the peer grant).
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.tx, self.rx)
    }

    /// Sends bytes; waits while the stream has no room for them (the peer
    /// is behind). A failure shows at a later send: the stream was reset or
    /// its session ended.
    pub async fn send(&mut self, data: Bytes) -> Result<(), StreamError> {
        self.tx.send(data).await
    }

    pub async fn send_message<M: Message>(&mut self, message: &M) -> Result<(), StreamError> {
        self.tx.send_message(message).await
    }

    /// Ends this side's direction; the peer reads to the end then sees it.
    pub fn finish(&mut self) {
        self.tx.finish();
    }

    /// Aborts both directions.
    pub fn reset(&mut self, code: ResetCode, reason: &str) {
        self.tx.reset(code, reason);
    }

    /// The next bytes from the peer; `Ok(None)` once the peer finished.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, StreamError> {
        self.rx.recv().await
    }

    /// The next whole message; `Ok(None)` once the peer finished between messages.
    pub async fn recv_message<M: Message + Default>(&mut self) -> Result<Option<M>, StreamError> {
        self.rx.recv_message().await
    }

    /// The next raw bytes, starting with any received past the last message:
    /// for streams that open with a message and carry raw bytes after it.
    pub async fn recv_bytes(&mut self) -> Result<Option<Bytes>, StreamError> {
        self.rx.recv_bytes().await
    }

    /// Sends one message and finishes, then reads the one answer and the end.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        request: &Req,
    ) -> Result<Option<Resp>, StreamError> {
        self.send_message(request).await?;
        self.finish();
        let answer = self.recv_message().await?;
        if answer.is_some() {
            self.expect_end().await?;
        }
        Ok(answer)
    }

    /// Reads to the peer's end, failing if more data arrives.
    pub async fn expect_end(&mut self) -> Result<(), StreamError> {
        match self.recv().await? {
            None => Ok(()),
            Some(_) => Err(StreamError::Truncated),
        }
    }
}

fn closed() -> StreamError {
    StreamError::SessionClosed("session driver stopped".to_string())
}

/// What the two halves of a split stream share, so the last one dropped
/// resets the stream unless both directions ended.
#[derive(Debug)]
struct Shared {
    id: StreamId,
    cmds: mpsc::UnboundedSender<Cmd>,
    gate: std::sync::Arc<SendGate>,
    state: std::sync::Mutex<Ends>,
}

#[derive(Debug, Default)]
struct Ends {
    local_finished: bool,
    peer_finished: bool,
    ended: bool,
}

impl Shared {
    fn ends(&self) -> std::sync::MutexGuard<'_, Ends> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reset(&self, code: ResetCode, reason: &str) {
        let mut ends = self.ends();
        if !ends.ended {
            ends.ended = true;
            let _ = self.cmds.send(Cmd::Reset {
                id: self.id,
                code,
                reason: reason.to_string(),
            });
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let ends = self.ends();
        if ends.ended || (ends.local_finished && ends.peer_finished) {
            return;
        }
        // Finished but the peer has not: what was sent still arrives, then
        // the reset (the writer may have run ahead of the session).
        let cmd = if ends.local_finished {
            Cmd::Abandon { id: self.id }
        } else {
            Cmd::Reset {
                id: self.id,
                code: ResetCode::Cancelled,
                reason: DROPPED.to_string(),
            }
        };
        let _ = self.cmds.send(cmd);
    }
}

/// The reset of a stream dropped before both directions ended.
pub(crate) const DROPPED: &str = "stream dropped";

/// The sending half of a split [`Stream`].
#[derive(Debug)]
pub struct StreamSender {
    shared: std::sync::Arc<Shared>,
}

/// The receiving half of a split [`Stream`].
#[derive(Debug)]
pub struct StreamReceiver {
    shared: std::sync::Arc<Shared>,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    reader: MessageReader,
}

impl StreamSender {
    pub async fn send(&mut self, data: Bytes) -> Result<(), StreamError> {
        if self.shared.ends().local_finished {
            return Err(StreamError::Finished);
        }
        if data.is_empty() {
            // Nothing to send, but it tells whether the stream still is.
            return self.shared.gate.check();
        }
        let taken = self.shared.gate.reserve(data.len()).await?;
        self.shared
            .cmds
            .send(Cmd::Send {
                id: self.shared.id,
                data,
                taken,
            })
            .map_err(|_| closed())
    }

    pub async fn send_message<M: Message>(&mut self, message: &M) -> Result<(), StreamError> {
        self.send(encode_message(message)).await
    }

    /// The largest write that goes out in one frame, so one transport
    /// message, of the current link when the session has room (see
    /// [`proto::session::chunk_payload`]); it changes when the session moves
    /// to another transport.
    pub fn chunk_size(&self) -> usize {
        self.shared.gate.chunk.load(Ordering::Relaxed)
    }

    pub fn finish(&mut self) {
        let mut ends = self.shared.ends();
        if !ends.local_finished {
            ends.local_finished = true;
            let _ = self.shared.cmds.send(Cmd::Finish { id: self.shared.id });
        }
    }

    pub fn reset(&mut self, code: ResetCode, reason: &str) {
        self.shared.reset(code, reason);
    }
}

impl StreamReceiver {
    pub async fn recv(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.shared.ends().peer_finished {
            return Ok(None);
        }
        match self.events.recv().await {
            Some(StreamEvent::Data(data)) => {
                let _ = self.shared.cmds.send(Cmd::Consume {
                    id: self.shared.id,
                    n: data.len(),
                });
                Ok(Some(data))
            }
            Some(StreamEvent::Finished) => {
                self.shared.ends().peer_finished = true;
                Ok(None)
            }
            Some(StreamEvent::Reset { code, reason }) => {
                self.shared.ends().ended = true;
                Err(StreamError::Reset { code, reason })
            }
            None => {
                self.shared.ends().ended = true;
                Err(closed())
            }
        }
    }

    pub async fn recv_message<M: Message + Default>(&mut self) -> Result<Option<M>, StreamError> {
        loop {
            if let Some(m) = self.reader.next_message()? {
                return Ok(Some(m));
            }
            match self.recv().await? {
                Some(bytes) => self.reader.push(&bytes),
                None if self.reader.buffered() > 0 => return Err(StreamError::Truncated),
                None => return Ok(None),
            }
        }
    }

    /// Raw bytes, starting with any buffered past the last message.
    pub async fn recv_bytes(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.reader.buffered() > 0 {
            return Ok(Some(self.reader.take_buffered()));
        }
        self.recv().await
    }

    pub fn reset(&mut self, code: ResetCode, reason: &str) {
        self.shared.reset(code, reason);
    }
}
