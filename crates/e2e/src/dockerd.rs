//! Restarting the machine's dockerd as an upgrade does: stopped (its
//! containers with it, unless live-restore keeps them) and started again
//! with the same arguments. Needs root, as `scripts/docker.sh` does; only a
//! test binary whose tests run one at a time may use it.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{images::docker, wait_for};

/// The running dockerd's pid and arguments.
fn running() -> anyhow::Result<(u32, Vec<String>)> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let Some(program) = args.next() else {
            continue;
        };
        if Path::new(&program).file_name().and_then(|n| n.to_str()) == Some("dockerd") {
            return Ok((pid, args.collect()));
        }
    }
    bail!("no dockerd runs (scripts/docker.sh starts one)")
}

/// Exited: no such process, or a zombie (a dockerd this process started is
/// its child, and nothing here waits for it).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X")
    })
}

fn answers() -> bool {
    docker(&["version", "--format", "{{.Server.APIVersion}}"]).is_ok_and(|o| o.status.success())
}

/// Stops dockerd and starts it again with its arguments, with
/// `--live-restore` or without; returns once it answers.
pub async fn restart(live_restore: bool) -> anyhow::Result<()> {
    stop().await?.start(live_restore).await
}

/// A dockerd stopped by [`stop`]: how to start it again.
#[must_use = "dockerd stays stopped until started"]
#[derive(Debug)]
pub struct Stopped {
    args: Vec<String>,
}

/// Stops dockerd as an upgrade does (SIGTERM); returns once it is gone.
pub async fn stop() -> anyhow::Result<Stopped> {
    let (pid, args) = running()?;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("kill")?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    wait_for("dockerd stopped", Duration::from_secs(60), || async {
        gone(pid).then_some(())
    })
    .await?;
    Ok(Stopped { args })
}

impl Stopped {
    /// Starts dockerd with its former arguments, with `--live-restore` or
    /// without; returns once it answers.
    pub async fn start(mut self, live_restore: bool) -> anyhow::Result<()> {
        self.args.retain(|a| a != "--live-restore");
        if live_restore {
            self.args.push("--live-restore".into());
        }
        let cache = testbed::cache_dir()?;
        std::fs::create_dir_all(&cache)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cache.join("dockerd.log"))?;
        // Its own session, so it outlives this test process as the first did.
        Command::new("setsid")
            .arg("dockerd")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        wait_for("dockerd answering", Duration::from_secs(60), || async {
            answers().then_some(())
        })
        .await
    }
}

/// Whether the running dockerd keeps containers across its restarts (its
/// arguments or /etc/docker/daemon.json may say so).
pub fn live_restore() -> anyhow::Result<bool> {
    let out = docker(&["info", "--format", "{{.LiveRestoreEnabled}}"])?;
    anyhow::ensure!(out.status.success(), "docker info failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "true")
}
