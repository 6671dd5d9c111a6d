//! The receiving half of one stream: reorder buffer and flow-control accounting.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Incoming bytes of one stream.
///
/// `consumed <= delivered`; everything accepted lies below `consumed + window`, so
/// the bytes held (`delivered - consumed` plus the reorder buffer) never exceed the
/// window.
#[derive(Debug)]
pub(crate) struct RecvBuf {
    window: u64,
    /// Bytes handed to the app as `Event::Data`.
    delivered: u64,
    /// Bytes the app reported consumed.
    consumed: u64,
    /// Credit limit last sent to the peer.
    advertised: u64,
    /// Highest end offset seen.
    high: u64,
    /// Out-of-order data above `delivered`, disjoint ranges keyed by offset.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: u64,
    final_size: Option<u64>,
}

/// What a chunk did to the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accept {
    /// New bytes or a new fin were accepted.
    New,
    /// Nothing new (a duplicate).
    Duplicate,
}

/// A chunk broke the rules; the caller maps it to a protocol violation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    FlowControl { end: u64, limit: u64 },
    FinalSize,
}

impl RecvBuf {
    pub(crate) fn new(window: u32) -> Self {
        Self {
            window: u64::from(window),
            delivered: 0,
            consumed: 0,
            advertised: u64::from(window),
            high: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            final_size: None,
        }
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// All data up to the fin was delivered.
    pub(crate) fn is_complete(&self) -> bool {
        self.final_size == Some(self.delivered)
    }

    /// Bytes held for this stream: delivered but unconsumed plus out-of-order.
    pub(crate) fn buffered(&self) -> u64 {
        self.delivered - self.consumed + self.pending_bytes
    }

    /// The highest offset the peer may send up to now.
    pub(crate) fn limit(&self) -> u64 {
        self.consumed + self.window
    }

    /// The limit to put in an ack; remembers it as advertised.
    pub(crate) fn advertise(&mut self) -> u64 {
        self.advertised = self.advertised.max(self.limit());
        self.advertised
    }

    /// Accepts a chunk at `off` (end `off + data.len()` already checked not to overflow).
    pub(crate) fn insert(&mut self, off: u64, data: Bytes, fin: bool) -> Result<Accept, Reject> {
        let end = off + data.len() as u64;
        let limit = self.limit();
        if end > limit {
            return Err(Reject::FlowControl { end, limit });
        }
        match self.final_size {
            Some(f) if end > f || (fin && end != f) => return Err(Reject::FinalSize),
            None if fin && end < self.high => return Err(Reject::FinalSize),
            _ => {}
        }
        let mut new = false;
        if fin && self.final_size.is_none() {
            self.final_size = Some(end);
            new = true;
        }
        self.high = self.high.max(end);

        let mut start = off.max(self.delivered);
        if let Some((&k, v)) = self.pending.range(..=start).next_back() {
            start = start.max(k + v.len() as u64);
        }
        while start < end {
            let next = self
                .pending
                .range(start..end)
                .next()
                .map(|(&k, v)| (k, k + v.len() as u64));
            let gap_end = next.map_or(end, |(k, _)| k);
            if gap_end > start {
                let piece = data.slice((start - off) as usize..(gap_end - off) as usize);
                self.pending_bytes += piece.len() as u64;
                self.pending.insert(start, piece);
                new = true;
            }
            match next {
                Some((_, e)) => start = e,
                None => break,
            }
        }
        Ok(if new { Accept::New } else { Accept::Duplicate })
    }

    /// Next in-order piece, if it arrived; counts it as delivered.
    pub(crate) fn pop_ready(&mut self) -> Option<Bytes> {
        let entry = self.pending.first_entry()?;
        if *entry.key() != self.delivered {
            return None;
        }
        let data = entry.remove();
        self.pending_bytes -= data.len() as u64;
        self.delivered += data.len() as u64;
        Some(data)
    }

    /// The app consumed `n` delivered bytes. Returns true when a window update is
    /// worth sending: a quarter window freed, or the peer used all credit it knows of.
    pub(crate) fn consume(&mut self, n: usize) -> bool {
        let before = self.consumed;
        self.consumed = (self.consumed.saturating_add(n as u64)).min(self.delivered);
        if self.consumed == before || self.final_size.is_some() {
            return false;
        }
        let fresh = self.limit();
        fresh >= self.advertised + self.window / 4 || self.high >= self.advertised
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn drain(r: &mut RecvBuf) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = r.pop_ready() {
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn reorders_and_drops_duplicates_and_overlaps() {
        let mut r = RecvBuf::new(4096);
        let all: Vec<u8> = (0..100u8).collect();
        let b = Bytes::from(all.clone());
        assert_eq!(r.insert(50, b.slice(50..80), false), Ok(Accept::New));
        assert_eq!(r.insert(60, b.slice(60..70), false), Ok(Accept::Duplicate));
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.insert(10, b.slice(10..60), false), Ok(Accept::New));
        assert_eq!(r.insert(0, b.slice(0..20), false), Ok(Accept::New));
        assert_eq!(drain(&mut r), all[..80].to_vec());
        assert_eq!(r.insert(0, b.slice(0..80), false), Ok(Accept::Duplicate));
        assert_eq!(r.insert(70, b.slice(70..100), true), Ok(Accept::New));
        assert_eq!(drain(&mut r), all[80..].to_vec());
        assert!(r.is_complete());
        assert_eq!(r.insert(70, b.slice(70..100), true), Ok(Accept::Duplicate));
    }

    #[test]
    fn bridges_several_pending_ranges() {
        let mut r = RecvBuf::new(4096);
        let b = Bytes::from((0..60u8).collect::<Vec<_>>());
        r.insert(10, b.slice(10..20), false).unwrap();
        r.insert(30, b.slice(30..40), false).unwrap();
        r.insert(5, b.slice(5..50), false).unwrap();
        assert_eq!(r.buffered(), 45);
        r.insert(0, b.slice(0..5), false).unwrap();
        assert_eq!(drain(&mut r), (0..50u8).collect::<Vec<_>>());
    }

    #[test]
    fn enforces_window_and_final_size() {
        let mut r = RecvBuf::new(4096);
        let b = Bytes::from(vec![0u8; 5000]);
        assert_eq!(
            r.insert(0, b.clone(), false),
            Err(Reject::FlowControl {
                end: 5000,
                limit: 4096
            })
        );
        r.insert(0, b.slice(..100), false).unwrap();
        assert_eq!(r.insert(0, b.slice(..50), true), Err(Reject::FinalSize));
        r.insert(100, Bytes::new(), true).unwrap();
        assert_eq!(r.insert(100, b.slice(..1), false), Err(Reject::FinalSize));
        assert_eq!(r.insert(0, b.slice(..90), true), Err(Reject::FinalSize));
    }

    #[test]
    fn window_moves_with_consumption() {
        let mut r = RecvBuf::new(4096);
        let b = Bytes::from(vec![0u8; 4096]);
        r.insert(0, b.clone(), false).unwrap();
        assert_eq!(drain(&mut r).len(), 4096);
        assert_eq!(r.buffered(), 4096);
        // Peer used all credit: any consumption is worth an update.
        assert!(r.consume(1));
        assert_eq!(r.advertise(), 4097);
        assert!(!r.consume(10));
        assert!(r.consume(4085));
        assert_eq!(r.buffered(), 0);
        // Over-consumption is clamped to what was delivered.
        assert!(!r.consume(100));
        assert_eq!(r.limit(), 8192);
    }
}
