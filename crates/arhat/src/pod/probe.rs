//! A container's probes, as a kubelet runs them: the startup probe first
//! (the others wait for it), then readiness, which sets the container's
//! `ready`, and liveness, whose failure has the container killed and
//! restarted by the pod's policy. Thresholds count consecutive results.

use std::{sync::Arc, time::Duration};

use proto::api::{Container, Probe};

use super::action::{self, Target};
use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Startup,
    Readiness,
    Liveness,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Readiness => "Readiness",
            Self::Liveness => "Liveness",
        }
    }
}

/// What probing reports to the container's worker.
pub trait Report: Send + Sync {
    /// A probe failed once (the kubelet's Unhealthy event).
    fn unhealthy(&self, which: Which, message: &str);
    fn started(&self);
    fn ready(&self, ready: bool);
}

/// Why probing asks for the container to be killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub which: Which,
    /// The grace period the probe asks for, if it names one.
    pub grace: Option<Duration>,
}

fn seconds(n: i32) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

/// Consecutive results against a probe's thresholds.
#[derive(Debug, Default)]
struct Streak {
    successes: i32,
    failures: i32,
}

impl Streak {
    /// Records a result; `Some(healthy)` when a threshold is reached.
    fn record(&mut self, probe: &Probe, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= probe.success_threshold.max(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= probe.failure_threshold.max(1)).then_some(false)
        }
    }
}

/// Runs `probe` every period after its initial delay; returns the outcome
/// once a threshold is reached that `stop` accepts, reporting each change.
async fn run_probe(
    runtime: &Arc<dyn Runtime>,
    which: Which,
    probe: &Probe,
    target: &Target,
    report: &dyn Report,
    stop: fn(bool) -> bool,
) -> bool {
    let Some(action) = &probe.action else {
        return true;
    };
    tokio::time::sleep(seconds(probe.initial_delay_seconds)).await;
    let mut streak = Streak::default();
    let mut interval = tokio::time::interval(seconds(probe.period_seconds.max(1)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let result = action::run(
            runtime,
            action,
            target,
            seconds(probe.timeout_seconds.max(1)),
        )
        .await;
        if let Err(message) = &result {
            report.unhealthy(which, message);
        }
        if let Some(healthy) = streak.record(probe, result.is_ok()) {
            if which == Which::Readiness {
                report.ready(healthy);
            }
            if stop(healthy) {
                return healthy;
            }
        }
    }
}

/// Probes the container until it must be killed (never returns otherwise).
pub async fn supervise(
    runtime: Arc<dyn Runtime>,
    c: &Container,
    target: Target,
    report: &dyn Report,
) -> Failed {
    let grace = |p: &Probe| {
        p.termination_grace_period_seconds
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
    };
    if let Some(startup) = &c.startup_probe {
        // Either threshold ends it: started, or killed.
        if !run_probe(&runtime, Which::Startup, startup, &target, report, |_| true).await {
            return Failed {
                which: Which::Startup,
                grace: grace(startup),
            };
        }
    }
    report.started();
    if c.readiness_probe.is_none() {
        report.ready(true);
    }
    let readiness = async {
        match &c.readiness_probe {
            Some(p) => {
                run_probe(&runtime, Which::Readiness, p, &target, report, |_| false).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let liveness = async {
        match &c.liveness_probe {
            Some(p) => {
                run_probe(&runtime, Which::Liveness, p, &target, report, |h| !h).await;
                Failed {
                    which: Which::Liveness,
                    grace: grace(p),
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = readiness => std::future::pending().await,
        failed = liveness => failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_count_consecutive_results() {
        let probe = Probe {
            success_threshold: 2,
            failure_threshold: 3,
            ..Default::default()
        };
        let mut s = Streak::default();
        assert_eq!(s.record(&probe, false), None);
        assert_eq!(s.record(&probe, false), None);
        assert_eq!(
            s.record(&probe, true),
            None,
            "a success breaks the failure streak"
        );
        assert_eq!(s.record(&probe, true), Some(true));
        assert_eq!(s.record(&probe, false), None);
        assert_eq!(s.record(&probe, false), None);
        assert_eq!(s.record(&probe, false), Some(false));
    }
}
