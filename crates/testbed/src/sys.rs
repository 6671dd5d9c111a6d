//! The only unsafe code of the crate: `pre_exec` + `prctl(PR_SET_PDEATHSIG)`, `kill(2)` and
//! `atexit(3)`. Everything else builds on the safe functions exported here.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

static SPAWNER: OnceLock<io::Result<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// The spawner thread: every child of the test bed is forked from it. `PR_SET_PDEATHSIG` fires
/// when the *thread* that forked a child exits, and test threads come and go, so this thread
/// lives (blocked on its channel) for the whole process, and its children die with the process.
fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    let slot = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for SpawnRequest { mut cmd, reply } in rx {
                    with_pdeathsig(&mut cmd);
                    // The requester may have gone away (its test panicked): then the child is
                    // dropped here, unwaited, and killed with the process. Nothing else to do.
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| tx)
    });
    match slot {
        Ok(tx) => Ok(tx),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot start the spawner thread: {e}"),
        )),
    }
}

fn with_pdeathsig(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec. It only calls the
    // async-signal-safe functions prctl(2) and getppid(2), and builds an io::Error from errno
    // (no allocation happens for `from_raw_os_error`/`last_os_error`), as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` from the test bed's long-lived spawner thread with `PR_SET_PDEATHSIG(SIGKILL)`,
/// so the child is killed when this process dies, however it dies (panic, SIGINT, SIGKILL).
pub fn spawn_child(cmd: Command) -> io::Result<Child> {
    let tx = spawner()?;
    let (reply, response) = mpsc::sync_channel(1);
    tx.send(SpawnRequest { cmd, reply })
        .map_err(|_| io::Error::other("the testbed spawner thread is gone"))?;
    response
        .recv()
        .map_err(|_| io::Error::other("the testbed spawner thread dropped the request"))?
}

/// Sends `signal` to the process `pid`.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; callers only pass pids of children
    // they have not reaped yet, so the pid cannot have been reused.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Registers `f` to run when the process exits normally (`exit(3)`, return from `main`).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: atexit(3) only stores the function pointer; `f` is a plain `extern "C" fn`
    // without captured state, and callers make it catch panics.
    if unsafe { libc::atexit(f) } == 0 {
        Ok(())
    } else {
        Err(io::Error::other("atexit failed"))
    }
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
