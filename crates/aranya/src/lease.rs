//! Leases read and written by a replica whose clock may be wrong. The times
//! in a Lease come from whoever wrote it, so, as client-go's leader election
//! and the node-lifecycle controller do, a reader judges expiry by when *it*
//! saw the record change, on its own monotonic clock; and a writer never
//! moves a renew time backwards, since readers take a renewal as a renew
//! time later than the one they hold.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::LeaseSpec,
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};

/// The renew time to write now: this clock's time, or just after the one
/// already written when that is later (a replica whose clock runs ahead held
/// the Lease before).
pub fn renew_time(previous: Option<&MicroTime>, now: Timestamp) -> MicroTime {
    match previous {
        Some(p) if p.0 >= now => MicroTime(p.0 + SignedDuration::from_millis(1)),
        _ => MicroTime(now),
    }
}

/// What one replica saw of a Lease held by another: the record, and when it
/// last changed by this replica's clock.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(LeaseSpec, Instant)>,
}

impl Observer {
    /// Whether the holder of `record` let it lapse: it has not changed for
    /// its whole duration as this replica saw it. A record seen for the
    /// first time is live, however old its renew time looks.
    pub fn expired(&mut self, record: &LeaseSpec, now: Instant) -> bool {
        match &self.seen {
            Some((seen, since)) if seen == record => {
                let duration = record
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(Duration::from_secs(15), Duration::from_secs);
                now.saturating_duration_since(*since) >= duration
            }
            _ => {
                self.seen = Some((record.clone(), now));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_is_live_until_unchanged_for_its_duration_whatever_its_times_say() {
        let t0 = Instant::now();
        let mut observer = Observer::default();
        // Renewed "an hour ago" by the holder's clock: still live when first seen.
        let old = record("a", Timestamp::now() - SignedDuration::from_hours(1));
        assert!(!observer.expired(&old, t0));
        assert!(!observer.expired(&old, t0 + Duration::from_secs(14)));
        assert!(observer.expired(&old, t0 + Duration::from_secs(15)));
    }

    #[test]
    fn a_renewal_restarts_the_count_even_with_an_earlier_time() {
        let t0 = Instant::now();
        let mut observer = Observer::default();
        let now = Timestamp::now();
        assert!(!observer.expired(&record("a", now), t0));
        // Renewed, by a holder whose clock is behind ours: a change all the same.
        let later = t0 + Duration::from_secs(14);
        let renewed = record("a", now - SignedDuration::from_hours(1));
        assert!(!observer.expired(&renewed, later));
        assert!(!observer.expired(&renewed, later + Duration::from_secs(14)));
        assert!(observer.expired(&renewed, later + Duration::from_secs(15)));
    }

    #[test]
    fn renew_times_never_go_backwards() {
        let now = Timestamp::now();
        let ahead = MicroTime(now + SignedDuration::from_hours(1));
        let next = renew_time(Some(&ahead), now);
        assert!(next.0 > ahead.0);
        let behind = MicroTime(now - SignedDuration::from_secs(10));
        assert_eq!(renew_time(Some(&behind), now).0, now);
        assert_eq!(renew_time(None, now).0, now);
    }
}
