//! The logs arhat keeps for a runtime that keeps none
//! ([`Runtime::keeps_logs`](crate::runtime::Runtime::keeps_logs) false):
//! where each container's log lives, its keeper while the container writes,
//! and reading it back as the runtime's own logs would be read.
//!
//! A container's log is `<pod dir>/logs/<container>/<id>.log` (rotated as
//! `.1`, `.2`, …), so it goes with the pod's directory when the pod is
//! removed, and with its instance when an older instance is.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use futures::FutureExt;
use tokio::sync::watch;
use tracing::warn;

use crate::{
    containerlog,
    runtime::{LogOptions, LogRotation, LogStream, Output, RuntimeError},
};

#[derive(Debug)]
pub struct KeptLogs {
    data_dir: PathBuf,
    rotation: LogRotation,
    /// Per container id: true once its keeper wrote everything.
    keepers: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl KeptLogs {
    pub fn new(data_dir: &Path, rotation: LogRotation) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            rotation,
            keepers: Mutex::default(),
        }
    }

    fn path(&self, uid: &str, container: &str, id: &str) -> PathBuf {
        super::volumes::pod_dir(&self.data_dir, uid)
            .join("logs")
            .join(container)
            .join(format!("{id}.log"))
    }

    fn keepers(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        self.keepers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps what container `id` writes, in the background, until its
    /// output ends.
    pub fn keep(&self, uid: &str, container: &str, id: &str, output: Output) {
        let path = self.path(uid, container, id);
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

    /// The log of container `id`, as [`crate::runtime::Runtime::logs`]
    /// gives it; following ends once its keeper has written everything.
    pub async fn read(
        &self,
        uid: &str,
        container: &str,
        id: &str,
        options: &LogOptions,
    ) -> Result<LogStream, RuntimeError> {
        let keeper = self.keepers().get(id).cloned();
        // A container this run keeps no log for (an agent restart found it
        // exited) will write no more.
        let done = async move {
            if let Some(mut keeper) = keeper {
                let _ = keeper.wait_for(|done| *done).await;
            }
        }
        .boxed();
        containerlog::read(self.path(uid, container, id), options, done)
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    RuntimeError::NotFound(id.to_string())
                } else {
                    RuntimeError::failed("reading a kept container log", e)
                }
            })
    }

    /// Forgets an instance that was removed, and its log.
    pub fn remove(&self, uid: &str, container: &str, id: &str) {
        self.keepers().remove(id);
        let path = self.path(uid, container, id);
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

    /// Forgets every instance of the pod (its directory goes with it).
    pub fn forget_pod(&self, ids: &[String]) {
        let mut keepers = self.keepers();
        for id in ids {
            keepers.remove(id);
        }
    }
}
