//! The table as iptables writes it, where `nft` is missing: chains of
//! arhat's own (`<table>-PRE`, `-OUT` in nat, `-IN` in filter), written
//! whole by one `iptables-restore --noflush` (declaring a chain there
//! flushes it), each jumped to first from its built-in chain, so Docker's
//! and kube-proxy's rules see only what they leave alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use tokio::process::Command;

use super::{InterceptError, OWN_MARK, Table};

/// (table, built-in chain, arhat's chain suffix)
const HOOKS: [(&str, &str, &str); 3] = [
    ("nat", "PREROUTING", "PRE"),
    ("nat", "OUTPUT", "OUT"),
    ("filter", "INPUT", "IN"),
];

fn chain(name: &str, suffix: &str) -> String {
    format!("{name}-{suffix}")
}

/// The chains' rules, as `iptables-restore` reads them.
pub fn script(
    table: &Table,
    tcp: &BTreeSet<SocketAddrV4>,
    udp: &BTreeMap<SocketAddrV4, u16>,
) -> String {
    let Table {
        name,
        address,
        port,
        ..
    } = table;
    let (pre, out, input) = (chain(name, "PRE"), chain(name, "OUT"), chain(name, "IN"));
    let mut dnat = Vec::new();
    for t in tcp {
        dnat.push(format!(
            "-d {}/32 -p tcp -m tcp --dport {} -j DNAT --to-destination {address}:{port}",
            t.ip(),
            t.port()
        ));
    }
    for (t, listener) in udp {
        dnat.push(format!(
            "-d {}/32 -p udp -m udp --dport {} -j DNAT --to-destination {address}:{listener}",
            t.ip(),
            t.port()
        ));
    }
    let mut s = format!("*nat\n:{pre} - [0:0]\n:{out} - [0:0]\n");
    for rule in &dnat {
        s.push_str(&format!("-A {pre} {rule}\n"));
    }
    s.push_str(&format!(
        "-A {out} -m mark --mark {OWN_MARK:#x} -j RETURN\n"
    ));
    for rule in &dnat {
        s.push_str(&format!("-A {out} {rule}\n"));
    }
    s.push_str(&format!("COMMIT\n*filter\n:{input} - [0:0]\n"));
    let listeners = std::iter::once(("tcp", *port)).chain(udp.values().map(|p| ("udp", *p)));
    for (proto, p) in listeners {
        let at = format!("-d {address}/32 -p {proto} -m {proto} --dport {p}");
        s.push_str(&format!(
            "-A {input} {at} -m conntrack --ctstate DNAT -j ACCEPT\n-A {input} {at} -j DROP\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

pub async fn apply(
    table: &Table,
    tcp: &BTreeSet<SocketAddrV4>,
    udp: &BTreeMap<SocketAddrV4, u16>,
) -> Result<(), InterceptError> {
    super::run(
        "iptables-restore",
        &["--noflush"],
        &table.name,
        &script(table, tcp, udp),
    )
    .await?;
    for (t, builtin, suffix) in HOOKS {
        let target = chain(&table.name, suffix);
        if !iptables(&["-t", t, "-C", builtin, "-j", &target]).await? {
            let inserted = iptables(&["-t", t, "-I", builtin, "1", "-j", &target]).await?;
            if !inserted {
                return Err(InterceptError::Refused {
                    tool: "iptables",
                    table: table.name.clone(),
                    stderr: format!("cannot jump from {t} {builtin} to {target}"),
                });
            }
        }
    }
    Ok(())
}

/// Removes the jumps and the chains, whatever of them is there.
pub async fn remove(table: &Table) -> Result<(), InterceptError> {
    for (t, builtin, suffix) in HOOKS {
        let target = chain(&table.name, suffix);
        while iptables(&["-t", t, "-D", builtin, "-j", &target]).await? {}
        iptables(&["-t", t, "-F", &target]).await?;
        iptables(&["-t", t, "-X", &target]).await?;
    }
    Ok(())
}

/// Whether `iptables args` succeeded.
async fn iptables(args: &[&str]) -> Result<bool, InterceptError> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .await
        .map_err(|source| InterceptError::Spawn {
            tool: "iptables",
            source,
        })?;
    Ok(out.status.success())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::clusternet::intercept::Backend;

    #[test]
    fn the_chains_send_targets_to_the_listeners_and_drop_the_rest() {
        let table = Table {
            name: "arhat".into(),
            backend: Backend::Iptables,
            address: Ipv4Addr::new(169, 254, 20, 10),
            port: 15001,
        };
        let service = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 9), 80);
        let s = script(&table, &[service].into(), &[(service, 40000)].into());
        assert!(s.contains("-A arhat-PRE -d 10.96.0.9/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 169.254.20.10:15001\n"));
        assert!(s.contains("-A arhat-OUT -d 10.96.0.9/32 -p udp -m udp --dport 80 -j DNAT --to-destination 169.254.20.10:40000\n"));
        assert!(s.contains("-A arhat-OUT -m mark --mark 0x61726874 -j RETURN\n"));
        assert!(
            s.contains("-A arhat-IN -d 169.254.20.10/32 -p udp -m udp --dport 40000 -j DROP\n")
        );
        assert!(s.starts_with("*nat\n:arhat-PRE - [0:0]\n"));
    }
}
