//! Runs a server [`Connection`] over a tokio socket: one task reads, writes
//! and dispatches, and each stream the peer opens comes out of [`Incoming`]
//! as a [`Stream`] with a reader and a writer.
//!
//! Back-pressure both ways without windows: while any stream's reader is
//! behind (its queue full) the task stops reading the socket, so the peer's
//! TCP window closes; while the socket is slow to take our bytes, writers
//! wait.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{
        mpsc::{self, error::TrySendError},
        watch,
    },
    task::JoinHandle,
};
use tracing::{debug, trace};

use crate::{
    connection::{Config, Connection, Event},
    error::{ConnectionError, StreamClosed},
    frame::RstStatus,
    headers::Headers,
};

/// Chunks queued per stream before the socket stops being read.
const STREAM_QUEUE: usize = 16;
/// Streams opened but not yet accepted.
const ACCEPT_QUEUE: usize = 64;
/// Writes queued for the socket, all streams together.
const WRITE_QUEUE: usize = 16;
/// Output buffered past this stops taking writes until the socket drains.
const HIGH_WATER: usize = 256 * 1024;
const READ_BUFFER: usize = 32 * 1024;

/// How a stream ended other than by the peer's FIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamEnd {
    #[error("stream reset by the peer ({0:?})")]
    Reset(RstStatus),
    #[error("SPDY connection closed")]
    ConnectionLost,
}

type Item = Result<Bytes, StreamEnd>;

/// Set once, and awaitable: a stream's reset, or the connection's end.
#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    notify: Notify,
}

impl Flag {
    fn raise(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_raised(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    async fn raised(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }
}

/// A stream the peer opened.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

/// The peer's side of a stream.
#[derive(Debug)]
pub struct StreamReader {
    id: u32,
    items: mpsc::Receiver<Item>,
    control: mpsc::UnboundedSender<Control>,
}

impl StreamReader {
    /// The next bytes; `None` once the peer sent FIN.
    pub async fn recv(&mut self) -> Option<Item> {
        let item = self.items.recv().await;
        if let Some(Ok(data)) = &item {
            let _ = self.control.send(Control::Consumed(self.id, data.len()));
        }
        item
    }
}

/// Our side of a stream; clones write to the same stream.
#[derive(Debug, Clone)]
pub struct StreamWriter {
    id: u32,
    writes: mpsc::Sender<Outbound>,
    control: mpsc::UnboundedSender<Control>,
    reset: Arc<Flag>,
    /// Raised when the connection ends, however it ends.
    lost: Arc<Flag>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Queues bytes, waiting while the socket is behind.
    pub async fn write(&self, data: Bytes) -> Result<(), StreamClosed> {
        self.send(data, false).await
    }

    /// Ends our side of the stream after what was written.
    pub async fn finish(&self) -> Result<(), StreamClosed> {
        self.send(Bytes::new(), true).await
    }

    async fn send(&self, data: Bytes, fin: bool) -> Result<(), StreamClosed> {
        if self.is_reset() {
            return Err(StreamClosed(self.id));
        }
        self.writes
            .send(Outbound::Data {
                id: self.id,
                data,
                fin,
            })
            .await
            .map_err(|_| StreamClosed(self.id))
    }

    /// Ends the stream both ways, after what was written before.
    pub async fn reset(&self, status: RstStatus) {
        self.reset.raise();
        let _ = self.writes.send(Outbound::Reset(self.id, status)).await;
    }

    /// Ends the stream both ways at once, overtaking queued writes (for
    /// drop paths that cannot wait).
    pub fn reset_now(&self, status: RstStatus) {
        self.reset.raise();
        let _ = self.control.send(Control::Reset(self.id, status));
    }

    /// Whether the stream was reset (by either side) or the connection lost.
    pub fn is_reset(&self) -> bool {
        self.reset.is_raised() || self.lost.is_raised()
    }

    /// Resolves once the stream is reset (by either side) or the connection
    /// is lost: the client is gone, whatever is still being written.
    pub async fn closed(&self) {
        tokio::select! {
            () = self.reset.raised() => {}
            () = self.lost.raised() => {}
        }
    }
}

/// Streams as the peer opens them.
#[derive(Debug)]
pub struct Incoming {
    streams: mpsc::Receiver<Stream>,
}

impl Incoming {
    /// The next stream; `None` once the connection is over.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.streams.recv().await
    }
}

/// The connection as a whole.
#[derive(Debug)]
pub struct Session {
    writes: mpsc::Sender<Outbound>,
    task: JoinHandle<Result<(), DriverError>>,
    ended: watch::Receiver<bool>,
}

/// Closes a connection from anywhere.
#[derive(Debug, Clone)]
pub struct Closer(mpsc::Sender<Outbound>);

impl Closer {
    /// Tears the connection down as a kubelet does (streams cancelled, then
    /// GOAWAY) once everything written before has gone out; does not wait
    /// for the socket to close.
    pub async fn close(&self) {
        let _ = self.0.send(Outbound::Close).await;
    }
}

impl Session {
    pub fn closer(&self) -> Closer {
        Closer(self.writes.clone())
    }

    /// Becomes true once the connection is over, however it ended.
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.ended.clone()
    }

    /// Tears the connection down as a kubelet does (streams cancelled, then
    /// GOAWAY) and waits for the socket to close.
    pub async fn close(self) -> Result<(), DriverError> {
        self.closer().close().await;
        self.finished().await
    }

    /// Waits for the connection to end by itself.
    pub async fn finished(self) -> Result<(), DriverError> {
        self.task.await.unwrap_or(Err(DriverError::Panicked))
    }
}

/// Why the connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Protocol(#[from] ConnectionError),
    #[error("SPDY socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY connection task panicked")]
    Panicked,
}

/// What goes out, in the order the application asked for it.
#[derive(Debug)]
enum Outbound {
    Data { id: u32, data: Bytes, fin: bool },
    Reset(u32, RstStatus),
    Close,
}

/// What may overtake queued writes.
#[derive(Debug)]
enum Control {
    Consumed(u32, usize),
    Reset(u32, RstStatus),
}

/// Serves SPDY on `io` (the upgraded connection, after the 101).
pub fn serve<IO>(io: IO, config: Config) -> (Incoming, Session)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_QUEUE);
    let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
    let write_tx_session = write_tx.clone();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let driver = Driver {
        conn: Connection::server(config),
        accept: accept_tx,
        writes_tx: write_tx,
        control_tx,
        streams: HashMap::new(),
        lost: Arc::default(),
    };
    let (ended_tx, ended) = watch::channel(false);
    let task = tokio::spawn(async move {
        let outcome = driver.run(io, write_rx, control_rx).await;
        let _ = ended_tx.send(true);
        outcome
    });
    (
        Incoming { streams: accept_rx },
        Session {
            writes: write_tx_session,
            task,
            ended,
        },
    )
}

struct StreamSlot {
    items: mpsc::Sender<Item>,
    reset: Arc<Flag>,
}

/// Something for the application that may have to wait for room.
enum Delivery {
    Accept(Stream),
    Item {
        id: u32,
        item: Item,
        last: bool,
    },
    /// FIN: the reader's queue is closed once what is before it is taken.
    End {
        id: u32,
    },
}

struct Driver {
    conn: Connection,
    accept: mpsc::Sender<Stream>,
    writes_tx: mpsc::Sender<Outbound>,
    control_tx: mpsc::UnboundedSender<Control>,
    streams: HashMap<u32, StreamSlot>,
    lost: Arc<Flag>,
}

impl Driver {
    async fn run<IO>(
        mut self,
        io: IO,
        mut writes: mpsc::Receiver<Outbound>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> Result<(), DriverError>
    where
        IO: AsyncRead + AsyncWrite + Send,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut buf = vec![0u8; READ_BUFFER];
        let mut pending: Option<Delivery> = None;
        let mut reading = true;
        let mut writes_open = true;
        let mut outcome = Ok(());
        loop {
            while pending.is_none() {
                let Some(event) = self.conn.poll_event() else {
                    break;
                };
                let prepared = self.prepare(event);
                pending = self.deliver(prepared);
            }
            let flushed = self.conn.output().is_empty();
            if flushed && (!reading || self.conn.is_finished()) {
                break;
            }
            let room = pending.as_ref().map(|d| self.room_for(d));
            let take_writes = self.conn.output().len() < HIGH_WATER;
            let conn = &self.conn;
            tokio::select! {
                written = wr.write(conn.output()), if !flushed => match written {
                    Ok(0) | Err(_) if !reading => break,
                    Ok(0) => {
                        outcome = Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
                        break;
                    }
                    Ok(n) => self.conn.advance_output(n),
                    Err(e) => {
                        outcome = Err(e.into());
                        break;
                    }
                },
                _ = async { if let Some(room) = room { room.await } }, if pending.is_some() => {
                    if let Some(delivery) = pending.take() {
                        pending = self.deliver(Some(delivery));
                    }
                }
                read = rd.read(&mut buf), if reading && pending.is_none() => match read {
                    Ok(0) => {
                        trace!("SPDY peer closed the connection");
                        reading = false;
                    }
                    Ok(n) => {
                        if let Err(e) = self.conn.receive(&buf[..n]) {
                            debug!(error = %e, "SPDY connection failed");
                            reading = false;
                            outcome = Err(e.into());
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "SPDY read failed");
                        reading = false;
                    }
                },
                out = writes.recv(), if take_writes && writes_open => match out {
                    // Every handle is gone: nobody can use the connection.
                    None => {
                        writes_open = false;
                        self.conn.close();
                    }
                    Some(Outbound::Data { id, data, fin }) => {
                        if self.conn.send_data(id, &data, fin).is_err() {
                            trace!(stream = id, "write to a closed SPDY stream dropped");
                        }
                    }
                    Some(Outbound::Reset(id, status)) => {
                        self.conn.reset(id, status);
                        self.lose(id);
                    }
                    Some(Outbound::Close) => self.conn.close(),
                },
                Some(command) = control.recv() => match command {
                    Control::Consumed(id, n) => self.conn.consumed(id, n),
                    Control::Reset(id, status) => {
                        self.conn.reset(id, status);
                        self.lose(id);
                    }
                },
            }
        }
        let _ = wr.shutdown().await;
        self.lost.raise();
        for (_, slot) in self.streams.drain() {
            slot.reset.raise();
            let _ = slot.items.try_send(Err(StreamEnd::ConnectionLost));
        }
        outcome
    }

    fn prepare(&mut self, event: Event) -> Option<Delivery> {
        match event {
            Event::Opened {
                stream_id,
                headers,
                fin,
            } => {
                let (items_tx, items_rx) = mpsc::channel(STREAM_QUEUE);
                let reset = Arc::new(Flag::default());
                if !fin {
                    self.streams.insert(
                        stream_id,
                        StreamSlot {
                            items: items_tx,
                            reset: reset.clone(),
                        },
                    );
                }
                Some(Delivery::Accept(Stream {
                    id: stream_id,
                    headers,
                    reader: StreamReader {
                        id: stream_id,
                        items: items_rx,
                        control: self.control_tx.clone(),
                    },
                    writer: StreamWriter {
                        id: stream_id,
                        writes: self.writes_tx.clone(),
                        control: self.control_tx.clone(),
                        reset,
                        lost: self.lost.clone(),
                    },
                }))
            }
            Event::Data {
                stream_id,
                data,
                fin,
            } if data.is_empty() => fin.then_some(Delivery::End { id: stream_id }),
            Event::Data {
                stream_id,
                data,
                fin,
            } => Some(Delivery::Item {
                id: stream_id,
                item: Ok(data),
                last: fin,
            }),
            Event::Reset { stream_id, status } => {
                if let Some(slot) = self.streams.get(&stream_id) {
                    slot.reset.raise();
                }
                Some(Delivery::Item {
                    id: stream_id,
                    item: Err(StreamEnd::Reset(status)),
                    last: true,
                })
            }
            Event::GoAway { .. } => None,
        }
    }

    /// Hands a delivery over if there is room; gives it back if not.
    fn deliver(&mut self, delivery: Option<Delivery>) -> Option<Delivery> {
        match delivery? {
            Delivery::Accept(stream) => match self.accept.try_send(stream) {
                Ok(()) => None,
                Err(TrySendError::Full(stream)) => Some(Delivery::Accept(stream)),
                Err(TrySendError::Closed(stream)) => {
                    // Nobody accepts any more: refuse it.
                    self.conn.reset(stream.id, RstStatus::RefusedStream);
                    self.streams.remove(&stream.id);
                    None
                }
            },
            Delivery::Item { id, item, last } => {
                let slot = self.streams.get(&id)?;
                match slot.items.try_send(item) {
                    Err(TrySendError::Full(item)) => Some(Delivery::Item { id, item, last }),
                    // Sent, or the reader is gone and the bytes go with it.
                    _ => {
                        if last {
                            self.streams.remove(&id);
                        }
                        None
                    }
                }
            }
            Delivery::End { id } => {
                self.streams.remove(&id);
                None
            }
        }
    }

    /// Resolves once the delivery's queue has room (or is gone).
    fn room_for(&self, delivery: &Delivery) -> impl Future<Output = ()> + use<> {
        let accept = self.accept.clone();
        let items = match delivery {
            Delivery::Item { id, .. } => self.streams.get(id).map(|s| s.items.clone()),
            _ => None,
        };
        let is_accept = matches!(delivery, Delivery::Accept(_));
        async move {
            if is_accept {
                let _ = accept.reserve().await;
            } else if let Some(items) = items {
                let _ = items.reserve().await;
            }
        }
    }

    fn lose(&mut self, id: u32) {
        if let Some(slot) = self.streams.remove(&id) {
            slot.reset.raise();
            let _ = slot
                .items
                .try_send(Err(StreamEnd::Reset(RstStatus::Cancel)));
        }
    }
}

#[cfg(test)]
mod tests;
