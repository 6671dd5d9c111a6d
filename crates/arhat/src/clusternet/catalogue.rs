//! The cluster Services this device may reach, as aranya last sent them.
//! Kept on disk (`<runtime.dataDir>/cluster-network/services.pb`), so they
//! are known at start while the device is offline, and handed to whatever
//! serves them on the device through a watch.

use std::path::{Path, PathBuf};

use connectivity::{Stream, StreamError};
use prost::Message;
use proto::api::ServiceCatalogue;
use tokio::sync::watch;
use tracing::{info, warn};

/// The file under the data dir.
pub const FILE: &str = "cluster-network/services.pb";

#[derive(Debug, thiserror::Error)]
#[error("keeping the service catalogue in {path}: {source}")]
pub struct CatalogueError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The last catalogue, on disk and in memory.
#[derive(Debug)]
pub struct Catalogue {
    path: PathBuf,
    current: watch::Sender<ServiceCatalogue>,
}

impl Catalogue {
    /// The catalogue kept under `data_dir`; empty (nothing reachable) when
    /// there is none or it does not parse.
    pub fn load(data_dir: &Path) -> Self {
        let path = data_dir.join(FILE);
        let kept = match std::fs::read(&path) {
            Ok(bytes) => ServiceCatalogue::decode(bytes.as_slice()).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "the kept service catalogue does not parse: starting with none");
                ServiceCatalogue::default()
            }),
            Err(_) => ServiceCatalogue::default(),
        };
        Self {
            path,
            current: watch::Sender::new(kept),
        }
    }

    /// The catalogue now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<ServiceCatalogue> {
        self.current.subscribe()
    }

    /// Keeps `catalogue` (on disk first) and hands it on if it changed.
    pub fn replace(&self, catalogue: ServiceCatalogue) -> Result<(), CatalogueError> {
        if *self.current.borrow() == catalogue {
            return Ok(());
        }
        let failed = |source| CatalogueError {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, catalogue.encode_to_vec())
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(failed)?;
        info!(
            services = catalogue.services.len(),
            "service catalogue updated"
        );
        self.current.send_replace(catalogue);
        Ok(())
    }
}

/// aranya's SyncServices stream: one catalogue, answered with a StreamReply.
pub async fn serve(stream: &mut Stream, catalogue: &Catalogue) -> Result<(), StreamError> {
    crate::setting::take(stream, "the service catalogue", async |update| {
        catalogue.replace(update)
    })
    .await
}

/// A catalogue of one Service, shop/web at 10.96.0.9, for tests.
#[cfg(test)]
pub(crate) fn example() -> ServiceCatalogue {
    ServiceCatalogue {
        cluster_domain: "cluster.local".into(),
        services: vec![proto::api::ServiceEntry {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ips: vec!["10.96.0.9".into()],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_survives_a_restart_and_a_bad_file_means_none() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let first = Catalogue::load(dir.path());
        assert!(first.subscribe().borrow().services.is_empty());
        let seen = first.subscribe();
        let catalogue = example();
        first
            .replace(catalogue.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(seen.has_changed().unwrap_or(false));
        assert_eq!(*Catalogue::load(dir.path()).subscribe().borrow(), catalogue);

        std::fs::write(dir.path().join(FILE), b"\xff\xff not a catalogue")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            Catalogue::load(dir.path())
                .subscribe()
                .borrow()
                .services
                .is_empty()
        );
    }
}
