//! One multiplexed stream as the application sees it.

use bytes::Bytes;
use prost::Message;
use proto::{
    api::{DecodeError, MessageReader, encode_message},
    session::{ResetCode, StreamId},
};
use tokio::sync::{mpsc, oneshot};

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

/// What the driver hands a stream.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Data(Bytes),
    Finished,
    Reset { code: ResetCode, reason: String },
}

/// A stream: ordered exactly-once bytes each way, with back-pressure. Dropping
/// it before both directions ended resets it on both sides. It is its two
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
        span: tracing::Span,
    ) -> Self {
        let shared = std::sync::Arc::new(Shared {
            id,
            cmds,
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

    /// Sends bytes; waits while the peer has no room for them.
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
        if !(ends.ended || (ends.local_finished && ends.peer_finished)) {
            let _ = self.cmds.send(Cmd::Reset {
                id: self.id,
                code: ResetCode::Cancelled,
                reason: "stream dropped".to_string(),
            });
        }
    }
}

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
        let (reply, done) = oneshot::channel();
        self.shared
            .cmds
            .send(Cmd::Send {
                id: self.shared.id,
                data,
                reply,
            })
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    pub async fn send_message<M: Message>(&mut self, message: &M) -> Result<(), StreamError> {
        self.send(encode_message(message)).await
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
