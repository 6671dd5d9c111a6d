//! Interception: an nftables table of arhat's own (family inet) sends
//! traffic addressed to a catalogue Service's ClusterIP and port, or to a
//! headless Service's endpoint and port, to the relay's listeners on the
//! relay address (DNAT): from pods (prerouting) and from host processes
//! (output). TCP goes to one listener, which reads each connection's
//! original destination (`SO_ORIGINAL_DST`). UDP has no original destination
//! to read, so each (address, port) gets a listener of its own and a map
//! entry pointing at it; conntrack turns the listener's replies back into
//! the Service's address. (TPROXY would need a transparent socket per flow
//! and policy routing for host traffic; a socket per Service port is cheap
//! for the tens a device reaches.)
//!
//! The table is written whole in one `nft -f` transaction on every change:
//! idempotent, atomic, and a table left by an agent killed with SIGKILL is
//! replaced at the next start. Its chains sit just before the usual
//! destination-NAT priority (-100; nft 1.0 names it `dstnat` only in
//! prerouting), so Docker's and kube-proxy's chains (iptables or nftables)
//! see only what it leaves alone. It is deleted on a clean exit.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
};

use proto::api::ServiceCatalogue;
use tokio::{io::AsyncWriteExt, process::Command};

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(
        "running `nft` (install the nftables package, or set relay.enabled: false in arhat's config): {0}"
    )]
    Spawn(#[source] std::io::Error),
    #[error("nft refused table {table}: {stderr}")]
    Refused { table: String, stderr: String },
}

/// The mark of arhat's own connections (to pods of this device), which the
/// table leaves alone.
pub const OWN_MARK: u32 = 0x6172_6874;

/// The destinations to intercept, IPv4 address and port, by protocol.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Targets {
    pub tcp: BTreeSet<SocketAddrV4>,
    pub udp: BTreeSet<SocketAddrV4>,
}

impl Targets {
    pub fn of(catalogue: &ServiceCatalogue) -> Self {
        let mut targets = Targets::default();
        for service in &catalogue.services {
            let addresses: Vec<Ipv4Addr> = service
                .cluster_ips
                .iter()
                .chain(service.endpoints.iter().flat_map(|e| e.addresses.iter()))
                .filter_map(|a| a.parse().ok())
                .collect();
            for port in &service.ports {
                let Some(number) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
                    continue;
                };
                let set = match port.protocol.to_ascii_uppercase().as_str() {
                    "" | "TCP" => &mut targets.tcp,
                    "UDP" => &mut targets.udp,
                    _ => continue,
                };
                set.extend(addresses.iter().map(|a| SocketAddrV4::new(*a, number)));
            }
        }
        targets
    }
}

/// arhat's table: its name, and where intercepted traffic goes.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub address: Ipv4Addr,
    /// The TCP listener's port.
    pub port: u16,
}

/// `{ a, b, ... }`, or nothing for no elements (nft refuses an empty list).
fn elements(list: Vec<String>) -> String {
    if list.is_empty() {
        String::new()
    } else {
        format!("\n    elements = {{ {} }}", list.join(", "))
    }
}

impl Table {
    /// The whole table for `tcp` targets and `udp` targets with their
    /// listeners' ports, replacing any table of that name.
    pub fn script(
        &self,
        tcp: &BTreeSet<SocketAddrV4>,
        udp: &BTreeMap<SocketAddrV4, u16>,
    ) -> String {
        let Table {
            name,
            address,
            port,
        } = self;
        let tcp4 = elements(
            tcp.iter()
                .map(|t| format!("{} . {}", t.ip(), t.port()))
                .collect(),
        );
        let udp4 = elements(
            udp.iter()
                .map(|(t, p)| format!("{} . {} : {address} . {p}", t.ip(), t.port()))
                .collect(),
        );
        let ports = elements(udp.values().map(ToString::to_string).collect());
        let redirect = format!(
            "    ip daddr . tcp dport @tcp4 dnat ip to {address}:{port}\n    meta l4proto udp dnat ip to ip daddr . udp dport map @udp4"
        );
        format!(
            "table inet {name}\n\
             delete table inet {name}\n\
             table inet {name} {{\n\
             \x20 set tcp4 {{\n    type ipv4_addr . inet_service{tcp4}\n  }}\n\
             \x20 map udp4 {{\n    type ipv4_addr . inet_service : ipv4_addr . inet_service{udp4}\n  }}\n\
             \x20 set udp_ports {{\n    type inet_service{ports}\n  }}\n\
             \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat - 5; policy accept;\n{redirect}\n  }}\n\
             \x20 chain output {{\n    type nat hook output priority -105; policy accept;\n    meta mark {OWN_MARK:#x} return\n{redirect}\n  }}\n\
             \x20 chain input {{\n    type filter hook input priority filter - 5; policy accept;\n\
             \x20   ip daddr {address} tcp dport {port} ct status dnat accept\n\
             \x20   ip daddr {address} tcp dport {port} drop\n\
             \x20   ip daddr {address} udp dport @udp_ports ct status dnat accept\n\
             \x20   ip daddr {address} udp dport @udp_ports drop\n  }}\n\
             }}\n"
        )
    }

    /// Writes the table in one transaction.
    pub async fn apply(
        &self,
        tcp: &BTreeSet<SocketAddrV4>,
        udp: &BTreeMap<SocketAddrV4, u16>,
    ) -> Result<(), InterceptError> {
        nft(&self.name, &self.script(tcp, udp)).await
    }

    /// Deletes the table, if it is there.
    pub async fn remove(&self) -> Result<(), InterceptError> {
        let name = &self.name;
        nft(
            name,
            &format!("table inet {name}\ndelete table inet {name}\n"),
        )
        .await
    }
}

async fn nft(table: &str, script: &str) -> Result<(), InterceptError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(InterceptError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(InterceptError::Spawn)?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(InterceptError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(InterceptError::Refused {
            table: table.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::{ServiceEndpoint, ServiceEntry, ServicePort};

    fn port(protocol: &str, port: u32) -> ServicePort {
        ServicePort {
            name: String::new(),
            protocol: protocol.into(),
            port,
        }
    }

    #[test]
    fn targets_are_cluster_ips_and_headless_endpoints_by_tcp_port() {
        let catalogue = ServiceCatalogue {
            cluster_domain: "cluster.local".into(),
            services: vec![
                ServiceEntry {
                    cluster_ips: vec!["10.96.0.9".into(), "fd00::9".into()],
                    ports: vec![port("TCP", 80), port("UDP", 53), port("", 8080)],
                    ..Default::default()
                },
                ServiceEntry {
                    headless: true,
                    ports: vec![port("TCP", 5432)],
                    endpoints: vec![ServiceEndpoint {
                        addresses: vec!["10.1.0.7".into()],
                        hostname: "db-0".into(),
                    }],
                    ..Default::default()
                },
                ServiceEntry {
                    external_name: "example.org".into(),
                    ports: vec![port("TCP", 443)],
                    ..Default::default()
                },
            ],
        };
        let targets = Targets::of(&catalogue);
        let tcp: Vec<String> = targets.tcp.iter().map(ToString::to_string).collect();
        assert_eq!(tcp, ["10.1.0.7:5432", "10.96.0.9:80", "10.96.0.9:8080"]);
        let udp: Vec<String> = targets.udp.iter().map(ToString::to_string).collect();
        assert_eq!(udp, ["10.96.0.9:53"]);
    }

    #[test]
    fn the_script_replaces_the_whole_table() {
        let table = Table {
            name: "arhat".into(),
            address: Ipv4Addr::new(169, 254, 20, 10),
            port: 15001,
        };
        let empty = table.script(&BTreeSet::new(), &BTreeMap::new());
        assert!(empty.starts_with("table inet arhat\ndelete table inet arhat\n"));
        assert!(!empty.contains("elements"));
        let service = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 9), 80);
        let one = table.script(&[service].into(), &[(service, 40000)].into());
        assert!(one.contains("elements = { 10.96.0.9 . 80 }"));
        assert!(one.contains("elements = { 10.96.0.9 . 80 : 169.254.20.10 . 40000 }"));
        assert!(one.contains("dnat ip to 169.254.20.10:15001"));
    }
}
