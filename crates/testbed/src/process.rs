//! Child processes that die with the test process and are stopped when dropped.

use std::fmt;
use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::sys;

pub use crate::sys::spawn_child;

/// How long [`ChildGuard`]'s `Drop` waits after SIGTERM before it sends SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// A child process that is stopped (SIGTERM, a short wait, SIGKILL) and reaped when dropped.
///
/// Spawned through [`spawn_child`], so it also dies with the test process.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    exit: Option<ExitStatus>,
}

impl fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("exit", &self.exit)
            .finish()
    }
}

impl ChildGuard {
    /// Spawns `cmd` with [`spawn_child`] and guards it. `name` is for logs and errors.
    pub fn spawn(name: impl Into<String>, cmd: Command) -> io::Result<ChildGuard> {
        let name = name.into();
        let child =
            spawn_child(cmd).map_err(|e| io::Error::new(e.kind(), format!("spawn {name}: {e}")))?;
        tracing::debug!(name, pid = child.id(), "spawned");
        Ok(ChildGuard::new(name, child))
    }

    /// Guards an already spawned child.
    pub fn new(name: impl Into<String>, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.into(),
            child: Some(child),
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid (0 once it was released with [`ChildGuard::into_inner`]).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The guarded child, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// `Some(status)` once the child has exited (reaps it), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.exit {
            return Ok(Some(status));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        self.exit = status;
        Ok(status)
    }

    /// Sends SIGTERM (without waiting) unless the child already exited.
    pub fn terminate(&mut self) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        match self.child.as_ref() {
            Some(child) => sys::send_signal(child.id(), libc::SIGTERM),
            None => Ok(()),
        }
    }

    /// Waits up to `grace` for the child to exit, then SIGKILLs and reaps it.
    pub fn wait_or_kill(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("child was released"));
        };
        tracing::debug!(
            name = self.name,
            pid = child.id(),
            "SIGKILL after grace period"
        );
        child.kill()?;
        let status = child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    /// SIGTERM, wait up to `grace`, SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.terminate()?;
        self.wait_or_kill(grace)
    }

    /// Releases the child without stopping it.
    pub fn into_inner(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Err(e) = self.stop(DEFAULT_GRACE) {
            tracing::warn!(name = self.name, error = %e, "stopping child failed");
        }
    }
}

/// Stops several children concurrently: SIGTERM to all, then one shared grace period.
pub fn stop_all(children: &mut [ChildGuard], grace: Duration) {
    for c in children.iter_mut() {
        if let Err(e) = c.terminate() {
            tracing::warn!(name = c.name, error = %e, "SIGTERM failed");
        }
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.wait_or_kill(left) {
            Ok(status) => tracing::debug!(name = c.name, %status, "stopped"),
            Err(e) => tracing::warn!(name = c.name, error = %e, "stopping failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_stops_child() -> io::Result<()> {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut g = ChildGuard::spawn("sleep", cmd)?;
        assert!(g.try_wait()?.is_none());
        let status = g.stop(Duration::from_secs(2))?;
        assert!(!status.success());
        Ok(())
    }

    #[test]
    fn spawned_from_other_threads() -> io::Result<()> {
        // The thread that asks for a child may exit; the child must survive it.
        let handle = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            ChildGuard::spawn("sleep", cmd)
        });
        let mut g = handle
            .join()
            .map_err(|_| io::Error::other("thread panicked"))??;
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            g.try_wait()?.is_none(),
            "child died with the requesting thread"
        );
        g.stop(Duration::from_secs(2))?;
        Ok(())
    }
}
