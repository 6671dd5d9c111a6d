//! Cutting the link between a test's arhat and aranya without stopping
//! either: iptables drops every packet to and from aranya's gRPC port, so
//! the TCP connection goes silent (half-open) as on a real partition.
//! Needs root and iptables; the rules go when the guard is dropped.

use std::process::Command;

use anyhow::{Context, bail};

/// Dropping packets on one loopback port, both ways, until dropped: all of
/// them (a cut) or a share at random (a lossy link, `-m statistic`, as this
/// machine has no netem).
#[derive(Debug)]
pub struct LinkCut {
    port: u16,
    /// The share of packets dropped; 1 for all.
    loss: f64,
}

/// One rule per direction: packets to the port, and packets from it.
fn rules(port: u16, loss: f64) -> [Vec<String>; 2] {
    let rule = |dir: &str| {
        let mut rule: Vec<String> = ["OUTPUT", "-p", "tcp", dir, &port.to_string()]
            .map(str::to_string)
            .to_vec();
        if loss < 1.0 {
            rule.extend(
                ["-m", "statistic", "--mode", "random", "--probability"].map(str::to_string),
            );
            rule.push(format!("{loss:.3}"));
        }
        rule.extend(["-j".to_string(), "DROP".to_string()]);
        rule
    };
    [rule("--dport"), rule("--sport")]
}

fn iptables(op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .args(["-w", op])
        .args(rule)
        .output()
        .context("running iptables (the link-cut tests need root and iptables)")?;
    if !out.status.success() {
        bail!(
            "iptables {op} {}: {} (the link-cut tests need root and iptables)",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl LinkCut {
    /// Drops everything to and from `port` on this machine from now on.
    pub fn new(port: u16) -> anyhow::Result<Self> {
        Self::lossy(port, 1.0)
    }

    /// Drops each packet to and from `port` with probability `loss`.
    pub fn lossy(port: u16, loss: f64) -> anyhow::Result<Self> {
        let cut = LinkCut { port, loss };
        for rule in &rules(port, loss) {
            iptables("-I", rule)?;
        }
        Ok(cut)
    }

    /// Lets traffic through again.
    pub fn restore(self) {}
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        for rule in &rules(self.port, self.loss) {
            if let Err(e) = iptables("-D", rule) {
                eprintln!("removing a link-cut rule: {e}");
            }
        }
    }
}
