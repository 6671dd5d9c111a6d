//! What is remembered about streams whose state was freed, so late or retransmitted
//! frames for them get the right answer (and resets are delivered reliably).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{ResetCode, StreamId};

/// How a freed stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Both directions completed; we had received the peer's data up to `recv_final`
    /// including its fin. A retransmission from the peer gets a full ack.
    Graceful { recv_final: u64 },
    /// The stream was reset (by either side); retransmissions get this reset again.
    Reset { code: ResetCode, reason: String },
}

#[derive(Debug)]
pub(crate) struct Tomb {
    pub(crate) outcome: Outcome,
    /// A reset we must deliver: next retransmission time and current backoff.
    pub(crate) retx: Option<(Instant, Duration)>,
}

/// Bounded by count and age: the oldest are forgotten first. A forgotten stream's
/// late frames are answered with `ResetCode::Gone`.
#[derive(Debug)]
pub(crate) struct Tombs {
    map: BTreeMap<StreamId, Tomb>,
    order: VecDeque<(Instant, StreamId)>,
    unconfirmed: BTreeSet<StreamId>,
    cap: usize,
    ttl: Duration,
}

impl Tombs {
    pub(crate) fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            map: BTreeMap::new(),
            order: VecDeque::new(),
            unconfirmed: BTreeSet::new(),
            cap: cap.max(1),
            ttl,
        }
    }

    pub(crate) fn insert(
        &mut self,
        id: StreamId,
        outcome: Outcome,
        retx: Option<(Instant, Duration)>,
        now: Instant,
    ) {
        if retx.is_some() {
            self.unconfirmed.insert(id);
        }
        if self.map.insert(id, Tomb { outcome, retx }).is_none() {
            self.order.push_back((now, id));
        }
        self.expire(now);
    }

    pub(crate) fn get(&self, id: StreamId) -> Option<&Tomb> {
        self.map.get(&id)
    }

    /// The peer acknowledged our reset of `id`.
    pub(crate) fn confirm(&mut self, id: StreamId) {
        if let Some(t) = self.map.get_mut(&id) {
            t.retx = None;
        }
        self.unconfirmed.remove(&id);
    }

    /// Forgets tombstones past their age or beyond the cap.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.order.front() {
            let old = now
                .checked_duration_since(at)
                .is_some_and(|d| d >= self.ttl);
            if !old && self.order.len() <= self.cap {
                break;
            }
            self.order.pop_front();
            self.map.remove(&id);
            self.unconfirmed.remove(&id);
        }
    }

    /// Resets due for (re)transmission at `now`: returns them and schedules the next
    /// attempt with doubled backoff (capped at `max_rto`).
    pub(crate) fn due_resets(
        &mut self,
        now: Instant,
        max_rto: Duration,
    ) -> Vec<(StreamId, ResetCode, String)> {
        let mut out = Vec::new();
        for id in &self.unconfirmed {
            let Some(t) = self.map.get_mut(id) else {
                continue;
            };
            let Some((at, rto)) = t.retx else { continue };
            if at > now {
                continue;
            }
            let rto2 = (rto * 2).min(max_rto);
            t.retx = Some((now + rto, rto2));
            if let Outcome::Reset { code, reason } = &t.outcome {
                out.push((*id, *code, reason.clone()));
            }
        }
        out
    }

    /// Makes every unconfirmed reset due now with backoff reset to `rto` (after a resume).
    pub(crate) fn retransmit_all(&mut self, now: Instant, rto: Duration) {
        for id in &self.unconfirmed {
            if let Some(t) = self.map.get_mut(id) {
                t.retx = Some((now, rto));
            }
        }
    }

    /// Earliest pending reset retransmission.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.unconfirmed
            .iter()
            .filter_map(|id| self.map.get(id)?.retx.map(|(at, _)| at))
            .min()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_and_age() {
        let t0 = Instant::now();
        let mut t = Tombs::new(3, Duration::from_secs(10));
        for i in 0..5 {
            t.insert(StreamId(i), Outcome::Graceful { recv_final: i }, None, t0);
        }
        assert_eq!(t.len(), 3);
        assert!(t.get(StreamId(1)).is_none());
        assert!(t.get(StreamId(4)).is_some());
        t.expire(t0 + Duration::from_secs(11));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn resets_retransmit_with_backoff_until_confirmed() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Tombs::new(10, Duration::from_secs(100));
        let reset = Outcome::Reset {
            code: ResetCode::Cancelled,
            reason: "x".into(),
        };
        t.insert(StreamId(2), reset, Some((t0, s)), t0);
        assert_eq!(t.due_resets(t0, 8 * s).len(), 1);
        assert!(t.due_resets(t0, 8 * s).is_empty());
        assert_eq!(t.next_timeout(), Some(t0 + s));
        assert_eq!(t.due_resets(t0 + s, 8 * s).len(), 1);
        assert_eq!(t.next_timeout(), Some(t0 + 3 * s));
        t.confirm(StreamId(2));
        assert_eq!(t.next_timeout(), None);
        assert!(t.due_resets(t0 + 10 * s, 8 * s).is_empty());
    }
}
