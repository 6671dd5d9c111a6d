//! The pods' network, wired by arhat itself above the runtime seam, as
//! dockershim did for Docker: a runtime starts the sandbox without a network
//! and hands over its namespace ([`crate::runtime::Runtime::network_namespace`]);
//! the CNI plugins (Debian's `containernetworking-plugins`) attach it to a
//! bridge with an address from host-local IPAM (`network.subnet`), open the
//! host firewall's forwarding for it, and publish its hostPorts. So every
//! runtime gives pods the same addresses, and a pod's address survives an
//! agent restart: what each attachment got is kept under
//! `<runtime.dataDir>/network/`, and a sandbox taken over keeps its address.
//!
//! Outbound traffic leaves through one masquerade rule for the subnet, set at
//! start, rather than the bridge plugin's per-pod rules, which it can only
//! remove while the pod's namespace still exists (a sandbox that died would
//! leak them).

pub mod bridge;
pub mod cni;
#[cfg(test)]
pub mod fake;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::runtime::PortMapping;
pub use bridge::Bridge;
pub use cni::CniError;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "config key `network.cniBinDir`: CNI plugin {path} is missing (install Debian's containernetworking-plugins)"
    )]
    PluginMissing { path: PathBuf },
    #[error("keeping the pod network's state in {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the host firewall (iptables {args}): {message}")]
    Firewall { args: String, message: String },
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("the CNI plugins gave the pod no address")]
    NoAddress,
    #[error("the pod CIDRs {0:?} hold no IPv4 subnet between /8 and /28")]
    Pool(String),
}

/// An IPv4 subnet, `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 subnet like 10.87.0.0/16"))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=28).contains(p))
            .ok_or_else(|| format!("prefix /{prefix} is not between /8 and /28"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(address) & !mask != 0 {
            return Err(format!("{s} has host bits set"));
        }
        Ok(Self { address, prefix })
    }
}

impl Subnet {
    pub fn contains(&self, address: IpAddr) -> bool {
        let IpAddr::V4(address) = address else {
            return false;
        };
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(address) & mask == u32::from(self.address)
    }

    /// The first address, which the bridge plugin gives the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) + 1)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What pod management needs from the pod network.
#[async_trait::async_trait]
pub trait PodNetwork: Send + Sync + std::fmt::Debug + 'static {
    /// Attaches the sandbox whose network namespace is at `netns`, publishing
    /// `ports` on the device; returns the pod's address. A failure leaves
    /// nothing behind.
    async fn attach(
        &self,
        sandbox: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<IpAddr, NetworkError>;
    /// The address an attached sandbox was given (also after an agent restart).
    fn address(&self, sandbox: &str) -> Option<IpAddr>;
    /// Gives back what the attachment holds; a sandbox never attached is no
    /// error. Works whether its namespace still exists or not.
    async fn detach(&self, sandbox: &str) -> Result<(), NetworkError>;
    /// Detaches every sandbox attached earlier that is not among `alive`.
    async fn sweep(&self, alive: &HashSet<String>);
    /// Gives new pods addresses from `cidrs` (the Node's pod CIDRs, which
    /// aranya assigned), from now on and after a restart.
    async fn set_pool(&self, cidrs: &[String]) -> Result<(), NetworkError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_refuse_with_a_reason() {
        let s: Subnet = "10.87.0.0/16".parse().expect("valid");
        assert_eq!(s.to_string(), "10.87.0.0/16");
        for (bad, why) in [
            ("10.87.0.0", "not an IPv4 subnet"),
            ("10.87.0.1/16", "host bits"),
            ("10.87.0.0/30", "between /8 and /28"),
            ("fd00::/64", "not an IPv4 address"),
        ] {
            let e = bad.parse::<Subnet>().expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(s.contains("10.87.255.3".parse().expect("address")));
        assert!(!s.contains("10.88.0.3".parse().expect("address")));
        assert!(!s.contains("fd00::1".parse().expect("address")));
        assert_eq!(s.gateway().to_string(), "10.87.0.1");
    }
}
