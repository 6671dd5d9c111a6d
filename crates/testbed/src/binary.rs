//! Finding (and on first use building) the multi-call `kube` binary.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::{Error, IoContext};
use crate::process::ChildGuard;

/// Env var naming a prebuilt multi-call binary; when set nothing is built.
pub const KUBE_BIN_ENV: &str = "ARANYA_KUBE_BIN";

/// Where `testbed/kube` (the Go module and its build.sh) lives in this repository.
pub fn kube_source_dir() -> PathBuf {
    match std::env::var_os("ARANYA_KUBE_SRC") {
        Some(dir) => PathBuf::from(dir),
        // Cargo's run-time value first: the binary may have been built in
        // another checkout (see the Makefile).
        None => std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
            .join("../../testbed/kube"),
    }
}

/// The cache directory build.sh uses: `$ARANYA_CACHE`, else `$XDG_CACHE_HOME/aranya`, else
/// `~/.cache/aranya`.
pub fn cache_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("ARANYA_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("aranya"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache/aranya")),
        None => Err(Error::Invalid(
            "neither ARANYA_CACHE, XDG_CACHE_HOME nor HOME is set".into(),
        )),
    }
}

static RESOLVED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Returns the multi-call binary: `$ARANYA_KUBE_BIN` if set, else the output of
/// `testbed/kube/build.sh`, which builds it on first use (5-10 minutes cold) and is a no-op
/// afterwards. Concurrent processes serialize on an exclusive lock on `<cache>/bin/.build.lock`.
///
/// Blocking: call it from `spawn_blocking` in async code.
pub fn kube_binary() -> Result<PathBuf, Error> {
    let mut resolved = RESOLVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = resolved.as_ref() {
        return Ok(path.clone());
    }
    let path = resolve()?;
    *resolved = Some(path.clone());
    Ok(path)
}

fn resolve() -> Result<PathBuf, Error> {
    if let Some(bin) = std::env::var_os(KUBE_BIN_ENV) {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(Error::Invalid(format!(
                "{KUBE_BIN_ENV}={} is not a file",
                bin.display()
            )));
        }
        return Ok(bin);
    }
    let src = kube_source_dir();
    let script = src.join("build.sh");
    if !script.is_file() {
        return Err(Error::Invalid(format!(
            "{} not found: set {KUBE_BIN_ENV} to a prebuilt multi-call kube binary \
             or ARANYA_KUBE_SRC to the testbed/kube directory",
            script.display()
        )));
    }
    let bin_dir = cache_dir()?.join("bin");
    std::fs::create_dir_all(&bin_dir).ctx(|| format!("create {}", bin_dir.display()))?;
    let lock_path = bin_dir.join(".build.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .ctx(|| format!("open {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(lock = %lock_path.display(), "another process is building the kube binary; waiting");
            lock.lock()
                .ctx(|| format!("lock {}", lock_path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("lock {}", lock_path.display()), e));
        }
    }
    // Held until `lock` drops at the end of this function (also on error).
    let log_path = bin_dir.join("build.log");
    let log = File::create(&log_path).ctx(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    tracing::info!(
        script = %script.display(),
        log = %log_path.display(),
        "ensuring the kube binary (a cold build takes 5-10 minutes)"
    );
    let started = Instant::now();
    let mut child =
        ChildGuard::spawn("build.sh", cmd).ctx(|| format!("run {}", script.display()))?;
    let mut stdout = String::new();
    if let Some(out) = child.child_mut().and_then(|c| c.stdout.take()) {
        // build.sh prints only the output path, but lines may come from go: keep them all.
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .ctx(|| "read build.sh output".to_owned())?;
            if n == 0 {
                break;
            }
            stdout.push_str(&line);
        }
    }
    let status = child
        .wait_or_kill(std::time::Duration::from_secs(3600))
        .ctx(|| "wait for build.sh".to_owned())?;
    let elapsed = started.elapsed();
    if !status.success() {
        let tail = tail_file(&log_path, 40);
        if status.code() == Some(3) {
            return Err(Error::GoMissing { detail: tail });
        }
        return Err(Error::Build {
            status: status.to_string(),
            log: log_path,
            tail,
        });
    }
    let path = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| Error::Invalid("build.sh printed no output path".into()))?;
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "build.sh reported {} which does not exist",
            path.display()
        )));
    }
    if elapsed.as_secs() > 5 {
        tracing::info!(path = %path.display(), secs = elapsed.as_secs(), "built the kube binary");
    } else {
        tracing::debug!(path = %path.display(), "kube binary up to date");
    }
    Ok(path)
}

/// The last `n` lines of a (log) file, or a note why it could not be read.
pub(crate) fn tail_file(path: &Path, n: usize) -> String {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            if let Err(e) = f.read_to_end(&mut bytes) {
                return format!("<cannot read {}: {e}>", path.display());
            }
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        Err(e) => text.push_str(&format!("<cannot open {}: {e}>", path.display())),
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}
