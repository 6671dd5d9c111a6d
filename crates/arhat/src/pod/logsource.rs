//! Container logs, wherever they are kept: the runtime's own, or, for a
//! runtime that keeps none
//! ([`Runtime::keeps_logs`](crate::runtime::Runtime::keeps_logs) false), the
//! ones arhat keeps from each container's output ([`crate::containerlog`]).
//!
//! A kept log is `<pod dir>/logs/<container id>.log` (rotated as `.1`, `.2`,
//! …), so it goes with the pod's directory when the pod is removed, and with
//! its instance when an older instance is.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use futures::FutureExt;
use tokio::sync::watch;
use tracing::warn;

use crate::{
    containerlog,
    runtime::{LogOptions, LogRotation, LogStream, Output, Runtime, RuntimeError},
};

pub struct LogSource {
    runtime: Arc<dyn Runtime>,
    data_dir: PathBuf,
    rotation: LogRotation,
    /// Per container id this run keeps: true once its keeper wrote all.
    keepers: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl std::fmt::Debug for LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSource")
            .field("runtime", &self.runtime.name())
            .finish_non_exhaustive()
    }
}

impl LogSource {
    pub fn new(runtime: Arc<dyn Runtime>, data_dir: &Path, rotation: LogRotation) -> Self {
        Self {
            runtime,
            data_dir: data_dir.to_path_buf(),
            rotation,
            keepers: Mutex::default(),
        }
    }

    fn path(&self, uid: &str, id: &str) -> PathBuf {
        super::volumes::pod_dir(&self.data_dir, uid)
            .join("logs")
            .join(format!("{id}.log"))
    }

    fn keepers(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        self.keepers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For a runtime that keeps no logs: keeps what container `id` writes,
    /// in the background, from its start (or from now, for a running one an
    /// earlier run left), unless this run keeps it already.
    pub async fn keep(&self, uid: &str, container: &str, id: &str) {
        if self.runtime.keeps_logs() || self.keepers().contains_key(id) {
            return;
        }
        let output = match self.runtime.output(id).await {
            Ok(output) => output,
            Err(e) => {
                warn!(%container, error = %e, "the container's output; its log is not kept");
                return;
            }
        };
        self.spawn_keeper(self.path(uid, id), id, output);
    }

    fn spawn_keeper(&self, path: PathBuf, id: &str, output: Output) {
        // The file exists before the container starts: a reader right after
        // the start finds an empty log, not none.
        if let Err(e) = touch(&path) {
            warn!(path = %path.display(), error = %e, "creating a container's log");
        }
        let (done_tx, done_rx) = watch::channel(false);
        self.keepers().insert(id.to_string(), done_rx);
        let rotation = self.rotation;
        tokio::spawn(async move {
            if let Err(e) = containerlog::keep(output, path, rotation).await {
                warn!(error = %e, "keeping a container's log");
            }
            let _ = done_tx.send(true);
        });
    }

    /// Container `id`'s log entries, as [`Runtime::logs`] gives them. A kept
    /// log being followed ends once its keeper has written everything.
    pub async fn entries(
        &self,
        uid: &str,
        id: &str,
        options: &LogOptions,
    ) -> Result<LogStream, RuntimeError> {
        if self.runtime.keeps_logs() {
            return self.runtime.logs(id, options).await;
        }
        let keeper = self.keepers().get(id).cloned();
        // A container this run keeps no log for (an earlier run's, found
        // exited) writes no more.
        let done = async move {
            if let Some(mut keeper) = keeper {
                let _ = keeper.wait_for(|done| *done).await;
            }
        }
        .boxed();
        containerlog::read(self.path(uid, id), containerlog::Format::Cri, options, done)
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    RuntimeError::NotFound(id.to_string())
                } else {
                    RuntimeError::failed("reading a kept container log", e)
                }
            })
    }

    /// The end of an exited container's log: up to `lines` lines, once its
    /// keeper (if any) has written them.
    pub async fn last_lines(&self, uid: &str, id: &str, lines: u64) -> Vec<u8> {
        let options = LogOptions {
            // A kept log's last lines may still be on their way to the file.
            follow: !self.runtime.keeps_logs(),
            tail_lines: Some(lines),
            since: None,
        };
        let Ok(mut log) = self.entries(uid, id, &options).await else {
            return Vec::new();
        };
        let mut text = Vec::new();
        let read = async {
            while let Some(Ok(entry)) = futures::StreamExt::next(&mut log).await {
                text.extend_from_slice(&entry.text);
            }
        };
        // A keeper stuck on a runtime that never ends the output must not
        // hold the container's status back.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
        text
    }

    /// Forgets an instance that was removed, and removes its kept log.
    pub fn remove(&self, uid: &str, id: &str) {
        if self.runtime.keeps_logs() {
            return;
        }
        self.keepers().remove(id);
        let path = self.path(uid, id);
        let Some(dir) = path.parent() else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let name = format!("{id}.log");
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if (file == name || file.starts_with(&format!("{name}.")))
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                warn!(path = %entry.path().display(), error = %e, "removing a kept log");
            }
        }
    }

    /// Forgets the keepers of a removed pod's instances (its directory, with
    /// the logs, goes with the pod).
    pub fn forget(&self, ids: &[String]) {
        let mut keepers = self.keepers();
        for id in ids {
            keepers.remove(id);
        }
    }
}

/// Creates the empty log (and its directory), owner and group only.
fn touch(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map(drop)
}
