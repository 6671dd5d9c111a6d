//! Docker's log frames, asked for with timestamps, as [`LogEntry`]s.
//!
//! A container without a TTY is read in multiplexed frames, one per log
//! message, each opening with its time. With a TTY the daemon sends one raw
//! stream (no frame headers), which may cut or join messages anywhere, so it
//! is split at newlines and only a piece that starts a line carries a time.
//!
//! Logs are read on a runtime of their own, on one thread, and cross to the
//! caller in batches. Docker sends a frame per line; on a multi-threaded
//! runtime every frame wakes a worker (measured: 100 MiB of short lines took
//! four times as long, mostly in the kernel, as on one thread).

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bollard::{Docker as Client, container::LogOutput as Frame, query_parameters::LogsOptions};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::runtime::{LogEntry, LogOutput, LogStream, RuntimeError};

/// Entries handed over at once, by size of their text.
const BATCH: usize = 32 * 1024;
/// Batches in flight to a reader: the back-pressure reaches Docker past these.
const BATCHES: usize = 2;
/// Longest time prefix Docker writes ("2026-11-25T05:00:00.123456789Z" is 30;
/// room for an offset instead of Z).
const MAX_TIME_PREFIX: usize = 40;
/// Longest a batch waits to fill: the delay a followed line may see.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

type Batch = Result<Vec<LogEntry>, RuntimeError>;

/// The thread logs are read on, with a client whose connections live there.
/// The thread ends when this is dropped.
#[derive(Debug)]
pub(super) struct LogReader {
    handle: tokio::runtime::Handle,
    client: Client,
    _stop: oneshot::Sender<()>,
}

impl LogReader {
    pub(super) async fn start() -> Result<Self, RuntimeError> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("docker-logs".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| RuntimeError::failed("starting the log reader", e))?;
        let handle = handle_rx
            .await
            .map_err(|e| RuntimeError::failed("starting the log reader", e))?
            .map_err(|e| RuntimeError::failed("starting the log reader", e))?;
        // Connected from that runtime, so its pooled connections are driven there.
        let client = handle
            .spawn(async {
                Client::connect_with_local_defaults()?
                    .negotiate_version()
                    .await
            })
            .await
            .map_err(|e| RuntimeError::failed("starting the log reader", e))?
            .map_err(RuntimeError::unavailable)?;
        Ok(Self {
            handle,
            client,
            _stop: stop,
        })
    }

    /// The container's log entries; the request runs on the reader's thread.
    pub(super) fn read(&self, id: &str, query: LogsOptions) -> LogStream {
        let owned = id.to_string();
        let frames = self
            .client
            .logs(id, Some(query))
            .map(move |f| f.map_err(|e| super::not_found_or("reading logs", &owned, e)));
        let (tx, rx) = mpsc::channel::<Batch>(BATCHES);
        self.handle.spawn(forward(Entries::new(frames), tx));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .flat_map(|batch| {
                let (entries, failure) = match batch {
                    Ok(entries) => (entries, None),
                    Err(e) => (Vec::new(), Some(e)),
                };
                futures::stream::iter(entries.into_iter().map(Ok).chain(failure.map(Err)))
            })
            .boxed()
    }
}

/// Moves entries to the reader in batches, as fast as it takes them; stops
/// when it goes away. A batch is sent when full or [`LINGER`] after its first
/// entry: hyper hands over a body chunk (one Docker frame) per poll, so
/// waiting for more here is cheap, where a handover per frame is not.
async fn forward<S>(mut entries: S, tx: mpsc::Sender<Batch>)
where
    S: Stream<Item = Result<LogEntry, RuntimeError>> + Unpin,
{
    loop {
        let next = tokio::select! {
            next = entries.next() => next,
            () = tx.closed() => return,
        };
        let mut batch = match next {
            Some(Ok(e)) => vec![e],
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            None => return,
        };
        let mut bytes = batch[0].text.len();
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut end: Option<Option<RuntimeError>> = None;
        while bytes < BATCH {
            let next = tokio::select! {
                biased;
                next = entries.next() => next,
                () = tokio::time::sleep_until(deadline) => break,
            };
            match next {
                Some(Ok(e)) => {
                    bytes += e.text.len();
                    batch.push(e);
                }
                Some(Err(e)) => {
                    end = Some(Some(e));
                    break;
                }
                None => {
                    end = Some(None);
                    break;
                }
            }
        }
        if tx.send(Ok(batch)).await.is_err() {
            return;
        }
        match end {
            Some(Some(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Some(None) => return,
            None => {}
        }
    }
}

pub(super) struct Entries<S> {
    frames: S,
    ready: VecDeque<LogEntry>,
    /// The raw (TTY) stream is at the start of a line.
    line_start: bool,
}

impl<S> Entries<S> {
    pub(super) fn new(frames: S) -> Self {
        Self {
            frames,
            ready: VecDeque::new(),
            line_start: true,
        }
    }

    fn decode(&mut self, frame: Frame) {
        match frame {
            Frame::StdOut { message } => self.ready.push_back(entry(message, LogOutput::Stdout)),
            Frame::StdErr { message } => self.ready.push_back(entry(message, LogOutput::Stderr)),
            Frame::Console { message } => {
                let mut rest = message;
                while !rest.is_empty() {
                    let end = rest
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(rest.len(), |i| i + 1);
                    let piece = rest.split_to(end);
                    let ends_line = piece.ends_with(b"\n");
                    let e = if self.line_start {
                        entry(piece, LogOutput::Stdout)
                    } else {
                        LogEntry {
                            time: None,
                            output: LogOutput::Stdout,
                            text: piece,
                        }
                    };
                    self.ready.push_back(e);
                    self.line_start = ends_line;
                }
            }
            // Never part of a log.
            Frame::StdIn { .. } => {}
        }
    }
}

/// An entry from a message that opens with its time and a space. Without a
/// readable time the whole message is kept, as a continuation.
fn entry(message: Bytes, output: LogOutput) -> LogEntry {
    let head = &message[..message.len().min(MAX_TIME_PREFIX)];
    let time = head.iter().position(|b| *b == b' ').and_then(|space| {
        let time = std::str::from_utf8(&head[..space])
            .ok()?
            .parse::<jiff::Timestamp>()
            .ok()?;
        Some((time, space))
    });
    match time {
        Some((time, space)) => LogEntry {
            time: Some(time),
            output,
            text: message.slice(space + 1..),
        },
        None => LogEntry {
            time: None,
            output,
            text: message,
        },
    }
}

impl<S> Stream for Entries<S>
where
    S: Stream<Item = Result<Frame, RuntimeError>> + Unpin,
{
    type Item = Result<LogEntry, RuntimeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            match ready!(self.frames.poll_next_unpin(cx)) {
                Some(Ok(frame)) => self.decode(frame),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(frames: Vec<Frame>) -> Vec<LogEntry> {
        let frames = futures::stream::iter(frames.into_iter().map(Ok));
        let entries = Entries::new(frames);
        futures::executor::block_on(entries.map(|e| e.expect("entry")).collect())
    }

    fn at(s: &str) -> Option<jiff::Timestamp> {
        Some(s.parse().expect("time"))
    }

    #[test]
    fn multiplexed_frames_are_one_entry_each() {
        let got = decode(vec![
            Frame::StdOut {
                message: Bytes::from_static(b"2026-11-25T05:00:00.123456789Z hello\n"),
            },
            Frame::StdErr {
                message: Bytes::from_static(b"2026-11-25T05:00:01.000000000Z oops\n"),
            },
        ]);
        assert_eq!(
            got,
            vec![
                LogEntry {
                    time: at("2026-11-25T05:00:00.123456789Z"),
                    output: LogOutput::Stdout,
                    text: Bytes::from_static(b"hello\n"),
                },
                LogEntry {
                    time: at("2026-11-25T05:00:01Z"),
                    output: LogOutput::Stderr,
                    text: Bytes::from_static(b"oops\n"),
                },
            ]
        );
    }

    #[test]
    fn raw_stream_is_split_at_newlines_and_continuations_have_no_time() {
        let got = decode(vec![
            Frame::Console {
                message: Bytes::from_static(
                    b"2026-11-25T05:00:00.000000001Z a\r\n2026-11-25T05:00:00.000000002Z b",
                ),
            },
            Frame::Console {
                message: Bytes::from_static(b"c\r\n2026-11-25T05:00:00.000000003Z d\r\n"),
            },
        ]);
        let summary: Vec<_> = got
            .iter()
            .map(|e| (e.time.map(|t| t.subsec_nanosecond()), e.text.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some(1), Bytes::from_static(b"a\r\n")),
                (Some(2), Bytes::from_static(b"b")),
                (None, Bytes::from_static(b"c\r\n")),
                (Some(3), Bytes::from_static(b"d\r\n")),
            ]
        );
    }

    #[test]
    fn a_message_without_a_time_is_kept_whole() {
        let got = decode(vec![Frame::StdOut {
            message: Bytes::from_static(b"no time here\n"),
        }]);
        assert_eq!(got[0].time, None);
        assert_eq!(got[0].text, Bytes::from_static(b"no time here\n"));
    }

    #[test]
    fn an_empty_line_keeps_its_newline() {
        let got = decode(vec![Frame::StdOut {
            message: Bytes::from_static(b"2026-11-25T05:00:00.000000000Z \n"),
        }]);
        assert_eq!(got[0].text, Bytes::from_static(b"\n"));
        assert!(got[0].time.is_some());
    }
}
