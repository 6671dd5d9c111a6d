//! Images the agent pulled for pods, removed when no container uses them,
//! by a kubelet's policy: when the image filesystem is fuller than the high
//! threshold, least recently used first until it is under the low one; and
//! (if set) once unused for longer than `unusedFor`.
//!
//! Only images this agent pulled are touched, and by the reference it pulled
//! (never by id, never forced): an engine shared with other workloads keeps
//! everything they brought, and an image with other names keeps them.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tracing::{debug, info, warn};

use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub high_threshold_percent: u8,
    pub low_threshold_percent: u8,
    /// Unused this long: removed whatever the disk says. `None`: never.
    pub unused_for: Option<Duration>,
    pub interval: Duration,
}

impl Default for Policy {
    /// A kubelet's defaults.
    fn default() -> Self {
        Self {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            unused_for: None,
            interval: Duration::from_secs(60),
        }
    }
}

/// References this agent pulled, with when a container last used them
/// (Unix seconds), kept in a file so a restart forgets nothing.
#[derive(Debug)]
pub struct Pulled {
    path: PathBuf,
    images: Mutex<BTreeMap<String, i64>>,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Pulled {
    pub fn load(data_dir: &std::path::Path) -> Arc<Self> {
        let path = data_dir.join("pulled-images");
        let images = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (time, reference) = l.split_once(' ')?;
                Some((reference.to_string(), time.parse().ok()?))
            })
            .collect();
        Arc::new(Self {
            path,
            images: Mutex::new(images),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
        self.images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A pull, or a container created from a pulled reference.
    pub fn used(&self, reference: &str, pulled: bool) {
        let mut images = self.lock();
        if pulled || images.contains_key(reference) {
            images.insert(reference.to_string(), now());
            self.save(&images);
        }
    }

    fn save(&self, images: &BTreeMap<String, i64>) {
        let text: String = images.iter().map(|(r, t)| format!("{t} {r}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let saved = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = saved {
            warn!(path = %self.path.display(), error = %e, "saving the pulled images");
        }
    }
}

/// Which pulled references to remove, least recently used first: those
/// unused past the age limit, then as many as the disk needs (`excess`
/// bytes over the low threshold, each image's size known).
fn choose(
    unused: &[(String, i64, u64)],
    now: i64,
    unused_for: Option<Duration>,
    mut excess: u64,
) -> Vec<String> {
    let mut by_age: Vec<&(String, i64, u64)> = unused.iter().collect();
    by_age.sort_by_key(|(_, last, _)| *last);
    let limit = unused_for.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    for (reference, last, size) in by_age {
        let too_old = limit.is_some_and(|l| now.saturating_sub(*last) > l);
        if too_old || excess > 0 {
            out.push(reference.clone());
            excess = excess.saturating_sub(*size);
        }
    }
    out
}

/// Runs the policy every interval, forever.
pub async fn run(runtime: Arc<dyn Runtime>, pulled: Arc<Pulled>, policy: Policy) {
    let mut tick = tokio::time::interval(policy.interval);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&runtime, &pulled, &policy).await {
            warn!(error = %e, "image garbage collection");
        }
    }
}

async fn pass(
    runtime: &Arc<dyn Runtime>,
    pulled: &Pulled,
    policy: &Policy,
) -> Result<(), crate::runtime::RuntimeError> {
    let in_use = runtime.images_in_use().await?;
    let references: Vec<(String, i64)> =
        pulled.lock().iter().map(|(r, t)| (r.clone(), *t)).collect();
    let mut unused = Vec::new();
    let mut gone = HashSet::new();
    let now = now();
    for (reference, last) in references {
        match runtime.image_info(&reference).await? {
            None => {
                gone.insert(reference);
            }
            Some((id, _)) if in_use.contains(&id) => pulled.used(&reference, false),
            Some((_, size)) => unused.push((reference, last, size)),
        }
    }
    let excess = match runtime
        .image_store()
        .await?
        .and_then(|p| crate::nodeinfo::disk_use(&p))
    {
        Some((used, total)) if total > 0 => {
            let high = total / 100 * u64::from(policy.high_threshold_percent);
            let low = total / 100 * u64::from(policy.low_threshold_percent);
            if used > high { used - low } else { 0 }
        }
        _ => 0,
    };
    for reference in choose(&unused, now, policy.unused_for, excess) {
        match runtime.remove_image(&reference).await {
            Ok(()) => {
                info!(image = %reference, "removed an unused image");
                gone.insert(reference);
            }
            // A stopped container of someone else's may still hold it.
            Err(e) => debug!(image = %reference, error = %e, "image not removed"),
        }
    }
    if !gone.is_empty() {
        let mut images = pulled.lock();
        images.retain(|r, _| !gone.contains(r));
        pulled.save(&images);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_ones_go_first_and_only_as_many_as_the_disk_needs() {
        let unused = vec![
            ("new".to_string(), 100, 10),
            ("old".to_string(), 10, 10),
            ("mid".to_string(), 50, 10),
        ];
        assert!(choose(&unused, 110, None, 0).is_empty(), "nothing to do");
        assert_eq!(choose(&unused, 110, None, 15), ["old", "mid"]);
        assert_eq!(
            choose(&unused, 110, Some(Duration::from_secs(30)), 0),
            ["old", "mid"]
        );
        assert_eq!(
            choose(&unused, 110, Some(Duration::from_secs(200)), 5),
            ["old"]
        );
    }

    #[test]
    fn pulled_references_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pulled = Pulled::load(dir.path());
        pulled.used("reg/a:1", true);
        pulled.used("busybox", false);
        let again = Pulled::load(dir.path());
        let names: Vec<String> = again.lock().keys().cloned().collect();
        assert_eq!(names, ["reg/a:1"], "only what the agent pulled");
    }
}
