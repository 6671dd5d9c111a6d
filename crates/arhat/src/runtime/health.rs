//! The runtime's health as a kubelet checks it: the runtime is asked for
//! its version every interval; once every check has failed for `downAfter`
//! the device reports it down (the Node turns NotReady, "container runtime
//! is down"), and one check that passes reports it up again. A single
//! failure never flips the Node: a daemon restarting is not an outage yet.

use std::{sync::Arc, time::Duration};

use proto::api::RuntimeHealth;
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use super::Runtime;
use crate::config;

/// What a device without a runtime reports.
pub fn none() -> RuntimeHealth {
    RuntimeHealth {
        configured: false,
        healthy: true,
        message: "this device runs no container runtime (arhat config runtime.kind: none)".into(),
    }
}

fn healthy() -> RuntimeHealth {
    RuntimeHealth {
        configured: true,
        healthy: true,
        message: String::new(),
    }
}

/// Checks `runtime` in the background for as long as the receiver lives;
/// starts healthy (the agent only starts once the runtime answered).
pub fn monitor(
    runtime: Arc<dyn Runtime>,
    config: config::RuntimeHealth,
) -> watch::Receiver<RuntimeHealth> {
    let (tx, rx) = watch::channel(healthy());
    tokio::spawn(async move {
        let mut failing_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            // A runtime that hangs is as down as one that refuses.
            let limit = config.interval.max(Duration::from_secs(2));
            let checked = match tokio::time::timeout(limit, runtime.version()).await {
                Ok(result) => result.map(drop).map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {limit:?}")),
            };
            let next = match checked {
                Ok(()) => {
                    failing_since = None;
                    healthy()
                }
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < config.down_after {
                        continue;
                    }
                    RuntimeHealth {
                        configured: true,
                        healthy: false,
                        message: format!("container runtime is down: {}: {error}", runtime.name()),
                    }
                }
            };
            tx.send_if_modified(|current| {
                if current.healthy == next.healthy && current.message == next.message {
                    return false;
                }
                if next.healthy {
                    info!(runtime = runtime.name(), "container runtime is up again");
                } else {
                    warn!(runtime = runtime.name(), message = %next.message, "container runtime is down");
                }
                *current = next;
                true
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::Fake;

    fn config() -> config::RuntimeHealth {
        config::RuntimeHealth {
            interval: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn down_only_after_failing_for_down_after_and_up_at_the_first_success() {
        let fake = Arc::new(Fake::default());
        let mut health = monitor(fake.clone(), config());
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(health.borrow_and_update().healthy);

        fake.set_down(true);
        let down_at = Instant::now();
        // A blip shorter than downAfter changes nothing.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(health.borrow().healthy, "not down before 30 s");
        fake.set_down(false);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!health.has_changed().expect("open"));

        fake.set_down(true);
        let down_at_again = Instant::now();
        health.changed().await.expect("open");
        let state = health.borrow_and_update().clone();
        assert!(!state.healthy && state.configured);
        assert!(
            state
                .message
                .starts_with("container runtime is down: fake: "),
            "{}",
            state.message
        );
        let took = down_at_again.elapsed();
        assert!(
            took >= Duration::from_secs(30) && took <= Duration::from_secs(40),
            "{took:?} (since the first outage {:?})",
            down_at.elapsed()
        );

        fake.set_down(false);
        health.changed().await.expect("open");
        assert!(health.borrow().healthy);
    }
}
