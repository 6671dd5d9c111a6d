//! Fault injection's bookkeeping: how many rounds a fault test runs (one in
//! `make test`; `ARANYA_CHAOS_ROUNDS` in `make chaos`), and one line per
//! fault test into `ARANYA_CHAOS` (when set) for `scripts/chaos.sh`'s table:
//! `<fault>\t<injected>\t<restarted wrongly>\t<lost or corrupted>\t<seconds
//! back to Ready, comma-separated>`.

use std::time::Duration;

/// Rounds each fault test runs.
pub fn rounds() -> u32 {
    std::env::var("ARANYA_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(1)
}

/// What one fault test saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub injected: u32,
    /// Pods (or containers) restarted that should not have been.
    pub restarted: u32,
    /// Streams or records that came back wrong, and pods lost or doubled.
    pub corrupted: u32,
    /// After each injection: how long until the Node was Ready again.
    pub back_to_ready: Vec<Duration>,
}

impl Outcome {
    /// Appends the line for `fault`, if a chaos run wants it.
    pub fn record(&self, fault: &str) {
        let Some(path) = std::env::var_os("ARANYA_CHAOS") else {
            return;
        };
        let times: Vec<String> = self
            .back_to_ready
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        let line = format!(
            "{fault}\t{}\t{}\t{}\t{}\n",
            self.injected,
            self.restarted,
            self.corrupted,
            times.join(",")
        );
        crate::timings::append_line(&path, &line, "a chaos outcome");
    }
}
