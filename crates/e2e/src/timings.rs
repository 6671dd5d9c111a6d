//! Where the suites' time goes: when `ARANYA_TIMINGS` names a file (`make
//! test` sets it), the harness appends one line per control-plane start and
//! per wait, `<test binary>\t<what>\t<seconds>`, which `scripts/times.sh`
//! sums per binary. Nothing is recorded otherwise.

use std::{
    io::Write,
    sync::{Mutex, OnceLock},
    time::Duration,
};

/// Each test's unique name (namespace, device prefix): recorded as `<test>`,
/// so the same wait of different runs and tests sums up.
static TEST_NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `name` is a test's unique name (see [`TEST_NAMES`]).
pub fn test_name(name: &str) {
    if let Ok(mut names) = TEST_NAMES.lock() {
        names.push(name.to_string());
    }
}

/// The test binary's name without cargo's hash (`streaming`, `pods`).
fn binary() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let stem = exe
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => stem,
        }
    })
}

/// Records that `what` took `took`, if timings are wanted.
pub fn record(what: &str, took: Duration) {
    let Some(path) = std::env::var_os("ARANYA_TIMINGS") else {
        return;
    };
    // One short append per line: concurrent tests' lines do not interleave.
    let mut what = what.replace(['\t', '\n'], " ");
    if let Ok(names) = TEST_NAMES.lock() {
        for name in names.iter() {
            what = what.replace(name.as_str(), "<test>");
        }
    }
    let line = format!("{}\t{what}\t{:.3}\n", binary(), took.as_secs_f64());
    append_line(&path, &line, "a timing");
}

/// Appends one line to a record file of the harness (timings, chaos
/// outcomes); a failure is only reported, never fails the test.
pub(crate) fn append_line(path: &std::ffi::OsStr, line: &str, what: &str) {
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = appended {
        eprintln!("recording {what}: {e}");
    }
}
