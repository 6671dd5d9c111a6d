//! Fairness: bulk streams with megabytes queued must not delay an interactive stream's
//! small messages by more than a couple of frames, and must themselves keep moving.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use bytes::Bytes;
use proto::session::{Config, Event, Role, Session, StreamId};

struct Link {
    a: Session,
    b: Session,
    now: Instant,
    /// Bytes b received per stream.
    got: std::collections::BTreeMap<StreamId, usize>,
}

impl Link {
    fn new() -> Self {
        let now = Instant::now();
        let cfg = Config::with_frame_size(8 * 1024);
        let mut l = Link {
            a: Session::new(Role::Cloud, cfg.clone(), 1, now),
            b: Session::new(Role::Device, cfg, 1, now),
            now,
            got: Default::default(),
        };
        // Exchange settings first.
        for _ in 0..4 {
            while let Some(f) = l.a.poll_transmit(now) {
                l.b.handle_frame(&f, now).unwrap();
            }
            l.back();
        }
        l
    }

    /// b's side: consume everything at once, send acks and window updates back.
    fn back(&mut self) {
        while let Some(e) = self.b.poll_event() {
            if let Event::Data { id, data } = e {
                self.b.consume(id, data.len());
                *self.got.entry(id).or_default() += data.len();
            }
        }
        while let Some(f) = self.b.poll_transmit(self.now) {
            self.a.handle_frame(&f, self.now).unwrap();
        }
    }

    /// One frame from a to b (and everything b has to say in return). Returns false
    /// when a had nothing to send.
    fn step(&mut self) -> bool {
        let Some(f) = self.a.poll_transmit(self.now) else {
            return false;
        };
        assert!(f.len() <= 8 * 1024);
        self.b.handle_frame(&f, self.now).unwrap();
        self.back();
        true
    }

    /// Frames a transmits until b has received `want` bytes on `id`.
    fn frames_until(&mut self, id: StreamId, want: usize) -> usize {
        let mut n = 0;
        while self.got.get(&id).copied().unwrap_or(0) < want {
            assert!(self.step(), "a went quiet before delivering");
            n += 1;
            assert!(n < 10_000);
        }
        n
    }
}

fn fairness(bulk_streams: usize) -> (usize, usize) {
    let mut l = Link::new();
    let bulk: Vec<StreamId> = (0..bulk_streams)
        .map(|_| {
            let id = l.a.open(Bytes::new(), None, l.now).unwrap();
            // Far more than the window: the stream stays busy throughout.
            l.a.send(id, Bytes::from(vec![0xB0; 4 << 20]), l.now)
                .unwrap();
            id
        })
        .collect();
    for _ in 0..50 {
        assert!(l.step());
    }
    let shell = l.a.open(Bytes::from_static(b"exec"), None, l.now).unwrap();
    let mut worst = l.frames_until(shell, 0);
    let mut sent = 0;
    for i in 0..30 {
        let msg = format!("keystroke {i}\n");
        sent += msg.len();
        l.a.send(shell, Bytes::from(msg), l.now).unwrap();
        worst = worst.max(l.frames_until(shell, sent));
        // Let the bulk streams run a little between keystrokes.
        for _ in 0..5 {
            assert!(l.step());
        }
    }
    let min_bulk = bulk
        .iter()
        .map(|id| l.got.get(id).copied().unwrap_or(0))
        .min()
        .unwrap();
    (worst, min_bulk)
}

#[test]
fn interactive_stream_is_not_starved_by_one_bulk_stream() {
    let (worst, min_bulk) = fairness(1);
    assert!(worst <= 2, "an interactive message waited {worst} frames");
    assert!(
        min_bulk > 1 << 20,
        "the bulk stream itself stalled: {min_bulk}"
    );
}

#[test]
fn interactive_stream_is_not_starved_by_many_bulk_streams() {
    let (worst, min_bulk) = fairness(40);
    assert!(worst <= 2, "an interactive message waited {worst} frames");
    // Every bulk stream made progress too (round-robin among them).
    assert!(min_bulk > 8 * 1024, "a bulk stream starved: {min_bulk}");
}

#[test]
fn bulk_streams_share_the_link_evenly() {
    let mut l = Link::new();
    let ids: Vec<StreamId> = (0..4)
        .map(|_| {
            let id = l.a.open(Bytes::new(), None, l.now).unwrap();
            l.a.send(id, Bytes::from(vec![1; 8 << 20]), l.now).unwrap();
            id
        })
        .collect();
    for _ in 0..400 {
        assert!(l.step());
    }
    let got: Vec<usize> = ids.iter().map(|id| l.got[id]).collect();
    let (min, max) = (got.iter().min().unwrap(), got.iter().max().unwrap());
    // Chunks cut at a credit boundary leave a little of a frame to the next stream,
    // so shares differ by a few frames at most, never by a growing amount.
    assert!(
        *min > 0 && max - min <= 4 * 8 * 1024,
        "uneven shares: {got:?}"
    );
}
