//! Polling with a deadline: the cluster converges; tests wait for it.

use std::{future::Future, time::Duration};

/// Polls `check` every 250 ms until it returns `Some`, or fails naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(v) = check().await {
            crate::timings::record(&format!("wait: {what}"), start.elapsed());
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            crate::timings::record(&format!("wait (timed out): {what}"), start.elapsed());
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
