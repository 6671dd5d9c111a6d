//! Driving an interactive program (`kubectl exec -it`) through a real
//! pseudo-terminal, as a user's shell would.

use std::{
    io::{Read, Write},
    os::fd::OwnedFd,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rustix::{
    fs::OFlags,
    pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt},
    termios::{Winsize, tcsetwinsize},
};

/// A program running on the slave side of a pty we hold the master of.
#[derive(Debug)]
pub struct Pty {
    master: std::fs::File,
    child: Child,
    output: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Pty {
    /// Starts `cmd` with its standard streams on a new terminal of the size given.
    pub fn spawn(mut cmd: Command, width: u16, height: u16) -> anyhow::Result<Self> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let slave: OwnedFd = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY,
            rustix::fs::Mode::empty(),
        )?;
        tcsetwinsize(&slave, size(width, height))?;
        let child = cmd
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave))
            .spawn()
            .context("spawning on the pty")?;
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone()?;
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            master,
            child,
            output,
            seen: Vec::new(),
        })
    }

    /// Types `text` (use `\r` for Enter).
    pub fn type_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.master.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Waits until the screen output so far contains `want`, then forgets
    /// what was seen up to it.
    pub fn expect(&mut self, want: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(at) = text.find(want) {
                self.seen = text.as_bytes()[at + want.len()..].to_vec();
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => bail!("{want:?} not seen within {timeout:?}; screen: {text:?}"),
            }
        }
    }

    /// Resizes the terminal and tells the program, as a terminal emulator does.
    pub fn resize(&mut self, width: u16, height: u16) -> anyhow::Result<()> {
        tcsetwinsize(&self.master, size(width, height))?;
        // Without a controlling terminal the kernel sends no SIGWINCH.
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id())?).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::WINCH)?;
        Ok(())
    }

    /// Waits for the program to exit; its exit code.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                bail!("still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn size(width: u16, height: u16) -> Winsize {
    Winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}
