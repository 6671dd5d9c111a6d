//! A pod network of its own for every agent the harness starts: agents run
//! side by side on one machine, and two host-local IPAMs handing out the
//! same subnet on one bridge would give two pods one address. Slot n is
//! bridge `arhat-t<n>` with 10.(128 + n / 256).(n % 256).0/24, claimed
//! machine-wide by a file naming the claiming process (a dead one's slots
//! are taken over, lowest first), and kept per data dir so a restarted agent keeps its own.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

const SLOTS: u32 = 16_384;

/// The `network:` config YAML for the agent whose data dir is `data_dir`.
pub fn config_yaml(data_dir: &Path) -> anyhow::Result<String> {
    let slot = slot(data_dir)?;
    Ok(format!(
        "network:\n  bridge: arhat-t{slot}\n  subnet: 10.{}.{}.0/24\n",
        128 + slot / 256,
        slot % 256
    ))
}

fn slot(data_dir: &Path) -> anyhow::Result<u32> {
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
