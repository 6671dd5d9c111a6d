//! The device host opting in to the cluster's DNS (`dns.host`): arhat
//! points the host's resolv.conf at its own server, with the cluster's
//! search path before the host's, keeps the original (whose nameservers it
//! forwards other names to) and puts it back when it stops. The file is
//! written in place: `ip netns exec` and containers bind-mount it, and a
//! rename cannot replace a mount point.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

/// The first line of a resolv.conf arhat wrote.
const MARKER: &str = "# written by arhat (dns.host); the host's own is kept in ";

/// Where the host's own resolv.conf is kept, under the data dir.
pub const SAVED: &str = "cluster-network/resolv.conf.host";

#[derive(Debug, thiserror::Error)]
#[error("dns.host: taking over {path}: {source}")]
pub struct HostDnsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The host's resolv.conf, pointed at arhat until [`HostResolvConf::restore`].
#[derive(Debug)]
pub struct HostResolvConf {
    path: PathBuf,
    saved: PathBuf,
}

impl HostResolvConf {
    /// Points `path` at `address`, and returns the host's own resolv.conf:
    /// the one kept from before when `path` is already arhat's (an agent
    /// that did not stop cleanly), else `path` as it is, kept now.
    pub fn take_over(
        path: &Path,
        data_dir: &Path,
        address: Ipv4Addr,
        domain: &str,
    ) -> Result<(Self, String), HostDnsError> {
        let failed = |source| HostDnsError {
            path: path.to_path_buf(),
            source,
        };
        let saved = data_dir.join(SAVED);
        let current = std::fs::read_to_string(path).map_err(failed)?;
        let own = if current.starts_with(MARKER) {
            std::fs::read_to_string(&saved).map_err(failed)?
        } else {
            if let Some(dir) = saved.parent() {
                std::fs::create_dir_all(dir).map_err(failed)?;
            }
            std::fs::write(&saved, &current).map_err(failed)?;
            current
        };
        std::fs::write(path, rewritten(&own, &saved, address, domain)).map_err(failed)?;
        info!(path = %path.display(), %address, "the host resolves through the cluster's DNS");
        Ok((
            Self {
                path: path.to_path_buf(),
                saved,
            },
            own,
        ))
    }

    /// Puts the host's own resolv.conf back.
    pub fn restore(&self) {
        let restored =
            std::fs::read_to_string(&self.saved).and_then(|own| std::fs::write(&self.path, own));
        match restored {
            Ok(()) => info!(path = %self.path.display(), "the host's own resolv.conf is back"),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "putting the host's resolv.conf back")
            }
        }
    }
}

/// The host's resolv.conf with arhat as its only nameserver and the
/// cluster's search domains first; its options are kept, with `ndots:2`
/// unless it sets its own, so `<service>.<namespace>` goes through the
/// search path (answered on the device) before the upstreams are asked.
fn rewritten(own: &str, saved: &Path, address: Ipv4Addr, domain: &str) -> String {
    let mut search = vec![format!("svc.{domain}"), domain.to_string()];
    let mut options = Vec::new();
    for line in own.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search" | "domain") => search.extend(words.map(str::to_string)),
            Some("options") => options.push(line.to_string()),
            _ => {}
        }
    }
    search.dedup();
    let mut out = format!(
        "{MARKER}{}\nnameserver {address}\nsearch {}\n",
        saved.display(),
        search.join(" ")
    );
    if !options.iter().any(|o| o.contains("ndots:")) {
        options.push("options ndots:2".into());
    }
    for o in options {
        out.push_str(&o);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_file_is_taken_over_and_put_back_and_a_crash_loses_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("resolv.conf");
        let own = "nameserver 10.0.0.53\nsearch corp.example\noptions timeout:2\n";
        std::fs::write(&path, own).unwrap_or_else(|e| panic!("{e}"));
        let address = Ipv4Addr::new(169, 254, 20, 10);
        let (host, seen) = HostResolvConf::take_over(&path, dir.path(), address, "cluster.local")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen, own);
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(written.contains("nameserver 169.254.20.10\n"), "{written}");
        assert!(!written.contains("10.0.0.53"), "{written}");
        assert!(written.contains("search svc.cluster.local cluster.local corp.example\n"));
        assert!(
            written.contains("options timeout:2\noptions ndots:2\n"),
            "{written}"
        );
        // Started again over its own file: the host's is still the one kept.
        let (_, seen) = HostResolvConf::take_over(&path, dir.path(), address, "cluster.local")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen, own);
        host.restore();
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), own);
    }
}
