//! Which peer-initiated stream ids were already seen, in bounded memory.

use std::collections::BTreeSet;

/// Stream ids are at most this; offsets too. Keeps `id + 2` and `offset + len`
/// arithmetic far from overflow.
pub(crate) const MAX_ID: u64 = 1 << 62;

/// Peer-opened ids (one parity). An id is new when it was never seen; ids skipped
/// over by a higher one (reordering) stay new until they arrive, up to `cap` of them.
#[derive(Debug)]
pub(crate) struct PeerIds {
    /// Every id at or above this is new.
    next_unseen: u64,
    /// Ids below `next_unseen` not yet seen.
    missing: BTreeSet<u64>,
    cap: usize,
}

impl PeerIds {
    pub(crate) fn new(first: u64, cap: usize) -> Self {
        Self {
            next_unseen: first,
            missing: BTreeSet::new(),
            cap: cap.max(1),
        }
    }

    pub(crate) fn is_new(&self, id: u64) -> bool {
        id >= self.next_unseen || self.missing.contains(&id)
    }

    /// Records `id` (of the peer's parity, `<= MAX_ID`) as seen.
    pub(crate) fn mark_seen(&mut self, id: u64) {
        if id >= self.next_unseen {
            let gap = (id - self.next_unseen) / 2;
            let from = if gap > self.cap as u64 {
                id - 2 * self.cap as u64
            } else {
                self.next_unseen
            };
            let mut x = from;
            while x < id {
                self.missing.insert(x);
                x += 2;
            }
            self.next_unseen = id + 2;
            while self.missing.len() > self.cap {
                self.missing.pop_first();
            }
        } else {
            self.missing.remove(&id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reordered_opens_are_still_new() {
        let mut p = PeerIds::new(1, 16);
        assert!(p.is_new(1) && p.is_new(7));
        p.mark_seen(7);
        assert!(p.is_new(1) && p.is_new(3) && p.is_new(5) && p.is_new(9));
        assert!(!p.is_new(7));
        p.mark_seen(3);
        assert!(!p.is_new(3) && p.is_new(5));
        p.mark_seen(1);
        p.mark_seen(5);
        assert!(!p.is_new(1) && !p.is_new(5));
    }

    #[test]
    fn huge_jumps_stay_bounded() {
        let mut p = PeerIds::new(0, 8);
        p.mark_seen(MAX_ID);
        assert!(p.missing.len() <= 8);
        assert!(!p.is_new(0));
        assert!(p.is_new(MAX_ID - 2));
        for i in 0..100 {
            p.mark_seen(MAX_ID + 2 + 2 * i);
        }
        assert!(p.missing.len() <= 8);
    }
}
