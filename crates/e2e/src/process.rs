//! aranya and arhat as child processes with their logs in files.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::Context;
use testbed::ChildGuard;

/// Where the workspace's binaries are: next to the test executable's `deps/`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("ARANYA_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// A workspace binary, which must have been built (`make test` builds them).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --bins` (make test does)",
        path.display()
    );
    Ok(path)
}

/// The static pause binary (`make pause` builds it; `ARANYA_PAUSE_BINARY` overrides).
pub fn pause_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("ARANYA_PAUSE_BINARY") {
        Some(p) => PathBuf::from(p),
        None => bin_dir()?
            .join("../static")
            .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
            .join("release/pause"),
    };
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it with `make pause` (make test does)",
        path.display()
    );
    Ok(path)
}

/// Starts arhat with `config`, logging to `log`.
pub fn start_arhat(name: &str, config: &Path, log: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(binary("arhat")?);
    cmd.arg("--config").arg(config);
    Proc::spawn(name, cmd, log)
}

/// The CPU time a process has used so far (user + system), read from
/// `/proc/<pid>/stat` in clock ticks of 1/100 s (Linux's `USER_HZ`).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/<pid>/stat without a command")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); 12 and 13 here.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("/proc/<pid>/stat is short")?
            .parse()?)
    };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// A process's resident memory, KiB, from `/proc/<pid>/status`: now, and
/// its peak since it started or since [`reset_peak_memory`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        Ok(value.trim().trim_end_matches("kB").trim().parse()?)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Starts a new peak for [`memory`] (`5` written to `/proc/<pid>/clear_refs`).
pub fn reset_peak_memory(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

/// A running aranya or arhat, stopped when dropped.
#[derive(Debug)]
pub struct Proc {
    guard: ChildGuard,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let guard = ChildGuard::spawn(name, cmd).with_context(|| format!("starting {name}"))?;
        Ok(Self {
            guard,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// SIGKILL, as a crash or power loss would.
    pub fn kill(&mut self) {
        if let Some(child) = self.guard.child_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (SIGKILL after 5 s).
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.stop_within(Duration::from_secs(5))
    }

    /// SIGTERM and wait (SIGKILL after `grace`).
    pub fn stop_within(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        Ok(self.guard.stop(grace)?)
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.guard.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} still running after {timeout:?}",
                self.guard.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The CPU time the process has used so far (see [`cpu_time`]).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time(self.pid())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.guard.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until the log contains `needle`; the error carries the log's tail.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_for(&format!("{needle:?} in the log"), timeout, || async {
            self.log().contains(needle).then_some(())
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}
{}:
{}",
                self.guard.name(),
                self.log_tail(20)
            )
        })
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
