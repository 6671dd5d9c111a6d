//! A pod network of its own for every agent the harness starts: agents run
//! side by side on one machine, and two host-local IPAMs handing out the
//! same subnet on one bridge would give two pods one address. Slot n is
//! bridge `arhat-t<n>` with 10.(192 + n / 256).(n % 256).0/24, DNS on
//! 169.254.(100 + n / 256).(n % 256) and interception table `arhat-t<n>`
//! (the relay on any free port), claimed
//! machine-wide by a file naming the claiming process, and kept per data dir
//! so a restarted agent keeps its own. The subnet lies in the test bed's
//! cluster CIDR, above what its node IPAM hands out, and is the device's
//! `spec.pod.ipv4CIDR`. The first claim of a process removes the
//! slots of dead processes with their bridges, tables and device hosts,
//! whose addresses would otherwise route a subnet to a bridge no agent uses.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

const SLOTS: u32 = 16_384;

/// The `network:` and `dns:` config YAML for the agent whose data dir is
/// `data_dir`: its own bridge, subnet and DNS address.
pub fn config_yaml(data_dir: &Path) -> anyhow::Result<String> {
    let slot = slot(data_dir)?;
    Ok(format!(
        "network:\n  bridge: {}\n  subnet: {}\ndns:\n  address: {}\nrelay:\n  address: {}\n  port: 0\n  table: {}\n",
        bridge(slot),
        subnet(slot),
        dns(slot),
        dns(slot),
        table(slot),
    ))
}

/// Where the agent whose data dir is `data_dir` serves DNS.
pub fn dns_address(data_dir: &Path) -> anyhow::Result<std::net::Ipv4Addr> {
    Ok(dns(slot(data_dir)?))
}

fn dns(slot: u32) -> std::net::Ipv4Addr {
    let [_, _, high, low] = (100 * 256 + slot).to_be_bytes();
    std::net::Ipv4Addr::new(169, 254, high, low)
}

/// The pod CIDR of the agent whose data dir is `data_dir`.
pub fn pod_cidr(data_dir: &Path) -> anyhow::Result<String> {
    Ok(subnet(slot(data_dir)?))
}

/// The interception table of the agent in slot `slot`.
pub fn table(slot: u32) -> String {
    format!("arhat-t{slot}")
}

fn bridge(slot: u32) -> String {
    format!("arhat-t{slot}")
}

fn subnet(slot: u32) -> String {
    format!("10.{}.{}.0/24", 192 + slot / 256, slot % 256)
}

fn delete_link(name: &str) {
    let _ = std::process::Command::new("ip")
        .args(["link", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Removes the claims of dead processes and their bridges.
fn sweep_dead(claims: &Path) {
    let Ok(entries) = std::fs::read_dir(claims) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let dead = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
        if dead && std::fs::remove_file(entry.path()).is_ok() {
            delete_link(&bridge(n));
            // A table an agent killed mid-test left sends connections nowhere.
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &table(n)])
                .stderr(std::process::Stdio::null())
                .status();
            crate::devicens::remove(n);
        }
    }
}

/// The slot claimed for `data_dir` (any path unique to its user).
pub fn slot(data_dir: &Path) -> anyhow::Result<u32> {
    static MINE: OnceLock<Mutex<HashMap<PathBuf, u32>>> = OnceLock::new();
    let mut mine = MINE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(slot) = mine.get(data_dir) {
        return Ok(*slot);
    }
    let claims = std::env::temp_dir().join("aranya-pod-networks");
    std::fs::create_dir_all(&claims)?;
    if mine.is_empty() {
        sweep_dead(&claims);
    }
    let pid = std::process::id();
    // Lowest first, so the bridges of earlier runs are reused, not multiplied.
    for n in 0..SLOTS {
        if mine.values().any(|s| *s == n) {
            continue;
        }
        let claim = claims.join(n.to_string());
        if let Ok(owner) = std::fs::read_to_string(&claim) {
            let dead = owner
                .trim()
                .parse::<u32>()
                .is_ok_and(|p| p != pid && !Path::new(&format!("/proc/{p}")).exists());
            if !dead || std::fs::remove_file(&claim).is_err() {
                continue;
            }
        }
        // Only one process creates it.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
        {
            Ok(mut file) => {
                std::io::Write::write_all(&mut file, pid.to_string().as_bytes())?;
                mine.insert(data_dir.to_path_buf(), n);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "every test pod network slot is claimed (see {})",
        claims.display()
    )
}
