//! Interception: a table of arhat's own sends traffic addressed to a
//! catalogue Service's ClusterIP and port, or to a headless Service's
//! endpoint and port, to the relay's listeners on the relay address (DNAT):
//! from pods (prerouting) and from host processes (output), except arhat's
//! own connections ([`OWN_MARK`]). TCP goes to one listener, which reads
//! each connection's original destination (`SO_ORIGINAL_DST`). UDP has no
//! original destination to read, so each (address, port) gets a listener of
//! its own and a rule pointing at it; conntrack turns the listener's replies
//! back into the Service's address. (TPROXY would need a transparent socket
//! per flow and policy routing for host traffic; a socket per Service port
//! is cheap for the tens a device reaches.) Anything else sent to those
//! ports is dropped.
//!
//! The table is written whole in one transaction on every change:
//! idempotent, atomic, and one left by an agent killed with SIGKILL is
//! replaced at the next start. It is deleted on a clean exit. Two backends
//! write it: [`nft`] (an nftables table, family inet), and [`iptables`]
//! where `nft` is missing (chains of arhat's own, jumped to first).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
};

use proto::api::{ServiceCatalogue, ServicePort};
use tokio::{io::AsyncWriteExt, process::Command};

pub mod iptables;
pub mod nft;

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(
        "relay.backend: running `{tool}` (install nftables or iptables, or set relay.enabled: false): {source}"
    )]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} refused table {table}: {stderr}")]
    Refused {
        tool: &'static str,
        table: String,
        stderr: String,
    },
}

/// What writes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    /// nftables when `nft` runs, else iptables.
    pub async fn detect() -> Self {
        let nft = Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if nft.is_ok_and(|s| s.success()) {
            Backend::Nftables
        } else {
            Backend::Iptables
        }
    }
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
            targets.add(&service.cluster_ips, &service.ports);
            // A headless Service's endpoints, on the ports they serve (a
            // catalogue kept from before endpoints had their own: the
            // Service's).
            for endpoint in &service.endpoints {
                let ports = if endpoint.ports.is_empty() {
                    &service.ports
                } else {
                    &endpoint.ports
                };
                targets.add(&endpoint.addresses, ports);
            }
        }
        targets
    }

    /// Every address in `addresses` on every port in `ports`.
    fn add(&mut self, addresses: &[String], ports: &[ServicePort]) {
        let addresses: Vec<Ipv4Addr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
        for port in ports {
            let Some(number) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
                continue;
            };
            let set = match port.protocol.to_ascii_uppercase().as_str() {
                "" | "TCP" => &mut self.tcp,
                "UDP" => &mut self.udp,
                _ => continue,
            };
            set.extend(addresses.iter().map(|a| SocketAddrV4::new(*a, number)));
        }
    }
}

/// arhat's table: its name, its backend, and where intercepted traffic goes.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub backend: Backend,
    pub address: Ipv4Addr,
    /// The TCP listener's port.
    pub port: u16,
}

impl Table {
    /// Writes the table for `tcp` targets and `udp` targets with their
    /// listeners' ports, in one transaction.
    pub async fn apply(
        &self,
        tcp: &BTreeSet<SocketAddrV4>,
        udp: &BTreeMap<SocketAddrV4, u16>,
    ) -> Result<(), InterceptError> {
        match self.backend {
            Backend::Nftables => {
                run(
                    "nft",
                    &["-f", "-"],
                    &self.name,
                    &nft::script(self, tcp, udp),
                )
                .await
            }
            Backend::Iptables => iptables::apply(self, tcp, udp).await,
        }
    }

    /// Deletes the table, if it is there.
    pub async fn remove(&self) -> Result<(), InterceptError> {
        match self.backend {
            Backend::Nftables => {
                run("nft", &["-f", "-"], &self.name, &nft::removal(&self.name)).await
            }
            Backend::Iptables => iptables::remove(self).await,
        }
    }
}

/// Runs `tool` with `input` on its stdin.
async fn run(
    tool: &'static str,
    args: &[&str],
    table: &str,
    input: &str,
) -> Result<(), InterceptError> {
    let spawn = |source| InterceptError::Spawn { tool, source };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(spawn)?;
    }
    let out = child.wait_with_output().await.map_err(spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(InterceptError::Refused {
            tool,
            table: table.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::{ServiceEndpoint, ServiceEntry};

    fn port(protocol: &str, port: u32) -> ServicePort {
        ServicePort {
            name: String::new(),
            protocol: protocol.into(),
            port,
        }
    }

    #[test]
    fn targets_are_cluster_ips_and_headless_endpoints_on_their_ports() {
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
                    endpoints: vec![
                        // Kept from before endpoints had ports: the Service's.
                        ServiceEndpoint {
                            addresses: vec!["10.1.0.7".into()],
                            hostname: "db-0".into(),
                            ..Default::default()
                        },
                        // The port its EndpointSlice says it serves.
                        ServiceEndpoint {
                            addresses: vec!["10.1.0.8".into()],
                            ports: vec![port("TCP", 6432)],
                            ..Default::default()
                        },
                    ],
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
        assert_eq!(
            tcp,
            [
                "10.1.0.7:5432",
                "10.1.0.8:6432",
                "10.96.0.9:80",
                "10.96.0.9:8080"
            ]
        );
        let udp: Vec<String> = targets.udp.iter().map(ToString::to_string).collect();
        assert_eq!(udp, ["10.96.0.9:53"]);
    }
}
