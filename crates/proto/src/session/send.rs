//! The sending half of one stream: bytes queued by the app, kept until acknowledged.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// A queued write with at least this much left is sent as a view of itself;
/// smaller ones are gathered into one chunk (a copy, but fewer items).
const SLICE_FROM: usize = 8 * 1024;

/// Outgoing bytes of one stream from the first unacknowledged offset to the end of
/// what the app queued. Offsets are absolute positions in the stream.
///
/// `acked <= next <= high`, `next <= queued`, `high <= queued`: bytes below `acked`
/// are dropped; `next` is where transmission continues (rewound to `acked` to
/// retransmit); `high` is the furthest offset ever transmitted.
#[derive(Debug, Default)]
pub(crate) struct SendBuf {
    /// (start offset, bytes); contiguous, the first starts at `acked`.
    segs: VecDeque<(u64, Bytes)>,
    acked: u64,
    next: u64,
    high: u64,
    queued: u64,
}

impl SendBuf {
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }
    pub(crate) fn next(&self) -> u64 {
        self.next
    }
    pub(crate) fn high(&self) -> u64 {
        self.high
    }
    pub(crate) fn queued(&self) -> u64 {
        self.queued
    }

    /// Appends app data.
    pub(crate) fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let start = self.queued;
        self.queued += data.len() as u64;
        self.segs.push_back((start, data));
    }

    /// Everything below `upto` (which the caller checked is `<= high`) was received
    /// by the peer. Returns how many bytes became newly acknowledged.
    pub(crate) fn ack(&mut self, upto: u64) -> u64 {
        let upto = upto.min(self.high);
        if upto <= self.acked {
            return 0;
        }
        let newly = upto - self.acked;
        self.acked = upto;
        while let Some((start, b)) = self.segs.front_mut() {
            let end = *start + b.len() as u64;
            if end <= upto {
                self.segs.pop_front();
            } else {
                if *start < upto {
                    // `upto - start < b.len()` here, so the cast and slice are in range.
                    let skip = (upto - *start) as usize;
                    *b = b.slice(skip..);
                    *start = upto;
                }
                break;
            }
        }
        if self.next < self.acked {
            self.next = self.acked;
        }
        newly
    }

    /// Retransmit everything unacknowledged.
    pub(crate) fn rewind(&mut self) {
        self.next = self.acked;
    }

    /// Takes up to `max` bytes from `next`, not past `end`; advances `next` (and
    /// `high`). Returns the offset of the data and the data (possibly empty).
    pub(crate) fn take(&mut self, end: u64, max: usize) -> (u64, Bytes) {
        let off = self.next;
        let end = end.min(self.queued);
        if end <= off || max == 0 {
            return (off, Bytes::new());
        }
        let want = (end - off).min(max as u64) as usize;
        let Some(first) = self.segs.partition_point(|(s, _)| *s <= off).checked_sub(1) else {
            return (off, Bytes::new());
        };
        let data = {
            let (s, b) = &self.segs[first];
            let rel = (off - s) as usize;
            let avail = b.len().saturating_sub(rel);
            if avail >= want {
                b.slice(rel..rel + want)
            } else if avail >= SLICE_FROM {
                // A large write goes as it is, without a copy; the frame
                // takes the next one as another chunk.
                b.slice(rel..rel + avail)
            } else {
                // Small app writes: coalesce several segments into one chunk.
                let mut out = BytesMut::with_capacity(want);
                let mut rel = rel;
                for (_, b) in self.segs.range(first..) {
                    let take = (want - out.len()).min(b.len().saturating_sub(rel));
                    out.put_slice(&b[rel..rel + take]);
                    rel = 0;
                    if out.len() == want {
                        break;
                    }
                }
                out.freeze()
            }
        };
        self.next = off + data.len() as u64;
        self.high = self.high.max(self.next);
        (off, data)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn buf(parts: &[&'static [u8]]) -> SendBuf {
        let mut b = SendBuf::default();
        for p in parts {
            b.push(Bytes::from_static(p));
        }
        b
    }

    #[test]
    fn take_slices_and_coalesces() {
        let mut b = buf(&[b"hello", b" ", b"world"]);
        assert_eq!(b.queued(), 11);
        let (o, d) = b.take(u64::MAX, 3);
        assert_eq!((o, &d[..]), (0, &b"hel"[..]));
        let (o, d) = b.take(u64::MAX, 100);
        assert_eq!((o, &d[..]), (3, &b"lo world"[..]));
        assert_eq!(b.high(), 11);
        let (_, d) = b.take(u64::MAX, 100);
        assert!(d.is_empty());
    }

    #[test]
    fn large_writes_go_as_views_of_themselves() {
        let big = Bytes::from(vec![1u8; SLICE_FROM + 10]);
        let mut b = SendBuf::default();
        b.push(big.clone());
        b.push(Bytes::from(vec![2u8; SLICE_FROM]));
        let (o, d) = b.take(u64::MAX, 1 << 20);
        assert_eq!((o, d.len()), (0, big.len()));
        assert_eq!(d.as_ptr(), big.as_ptr(), "not copied");
        let (o, d) = b.take(u64::MAX, 1 << 20);
        assert_eq!((o, d.len()), (big.len() as u64, SLICE_FROM));
    }

    #[test]
    fn take_respects_end_limit() {
        let mut b = buf(&[b"0123456789"]);
        let (_, d) = b.take(4, 100);
        assert_eq!(&d[..], b"0123");
        let (_, d) = b.take(4, 100);
        assert!(d.is_empty());
    }

    #[test]
    fn ack_trims_and_rewind_retransmits_from_ack() {
        let mut b = buf(&[b"abcdef", b"ghij"]);
        let _ = b.take(u64::MAX, 100);
        assert_eq!(b.ack(4), 4);
        assert_eq!(b.ack(3), 0);
        b.rewind();
        let (o, d) = b.take(u64::MAX, 100);
        assert_eq!((o, &d[..]), (4, &b"efghij"[..]));
        assert_eq!(b.ack(8), 4);
        b.rewind();
        let (o, d) = b.take(u64::MAX, 1);
        assert_eq!((o, &d[..]), (8, &b"i"[..]));
        // Acks beyond what was sent are clamped.
        assert_eq!(b.ack(100), 2);
        assert_eq!(b.acked(), 10);
        assert_eq!(b.next(), 10);
    }
}
