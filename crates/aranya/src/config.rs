//! aranya's command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aranya",
    version,
    about = "Keeps a virtual Kubernetes Node alive for every EdgeDevice"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the EdgeDevice CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunConfig {
    /// Kubeconfig to use; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// aranya's own namespace (leader-election Lease).
    #[arg(long, env = "ARANYA_NAMESPACE", default_value = "aranya-system")]
    pub namespace: String,
    /// Name of the leader-election Lease; replicas sharing it take turns.
    #[arg(long, default_value = "aranya-leader")]
    pub leader_election_id: String,
    /// This replica's identity in the leader Lease (default: hostname and pid).
    #[arg(long)]
    pub identity: Option<String>,
    /// Label selector of the EdgeDevices this aranya manages (empty: all).
    #[arg(long, default_value = "")]
    pub edge_device_selector: String,
    /// Address of the gRPC endpoint devices dial.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub grpc_listen: SocketAddr,
    /// PEM certificate (chain) of the gRPC endpoint.
    #[arg(long)]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC endpoint.
    #[arg(long)]
    pub grpc_tls_key: Option<PathBuf>,
    /// InternalIP the virtual Nodes advertise: where the apiserver reaches
    /// aranya's kubelet listener.
    #[arg(long, default_value = "127.0.0.1")]
    pub node_address: std::net::IpAddr,
    /// Ports of the kubelet endpoint, one per virtual node (advertised in its
    /// Node's daemonEndpoints): `first-last`, or `0` for any free port.
    #[arg(long, value_parser = PortRange::parse, default_value = "10250-10999")]
    pub kubelet_ports: PortRange,
    /// PEM bundle of the CA that signs client certificates of kubelet callers
    /// (the apiserver's). Default: `client-ca-file` of the ConfigMap
    /// kube-system/extension-apiserver-authentication, followed as it changes.
    #[arg(long)]
    pub kubelet_client_ca: Option<PathBuf>,
    /// Install or update the EdgeDevice CRD at start.
    #[arg(long, default_value_t = false)]
    pub install_crd: bool,
    /// How long a device may stay disconnected before its streams end.
    #[arg(long, value_parser = parse_seconds, default_value = "30")]
    pub resume_window: Duration,
    /// After aranya starts, how long a Node that was Ready keeps its status
    /// while its device reconnects.
    #[arg(long, value_parser = parse_seconds, default_value = "20")]
    pub reconnect_grace: Duration,
    /// How often pods are re-sent to their devices, refreshing service-account
    /// tokens (valid an hour) and ConfigMap/Secret volume content.
    #[arg(long, value_parser = parse_seconds, default_value = "1200")]
    pub pod_refresh: Duration,
}

/// Where per-node kubelet listeners bind: an inclusive range, or any free port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRange {
    Any,
    Range(u16, u16),
}

impl PortRange {
    fn parse(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("{p:?} is not a port: {e}"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        match (first, last) {
            (0, 0) => Ok(Self::Any),
            (0, _) => Err("a port range cannot start at 0".into()),
            (a, b) if a > b => Err(format!("{a} is above {b}")),
            (a, b) => Ok(Self::Range(a, b)),
        }
    }

    /// The ports to try, in order.
    pub fn candidates(self) -> Box<dyn Iterator<Item = u16> + Send> {
        match self {
            Self::Any => Box::new(std::iter::once(0)),
            Self::Range(a, b) => Box::new(a..=b),
        }
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))
}

#[cfg(test)]
mod tests {
    use super::PortRange;

    #[test]
    fn port_ranges() {
        assert_eq!(PortRange::parse("0"), Ok(PortRange::Any));
        assert_eq!(
            PortRange::parse("10250"),
            Ok(PortRange::Range(10250, 10250))
        );
        assert_eq!(
            PortRange::parse("10250-10252"),
            Ok(PortRange::Range(10250, 10252))
        );
        assert_eq!(
            PortRange::parse("10250-10252")
                .map(|r| r.candidates().collect::<Vec<_>>())
                .unwrap_or_default(),
            vec![10250, 10251, 10252]
        );
        assert!(PortRange::parse("10252-10250").is_err());
        assert!(PortRange::parse("0-5").is_err());
        assert!(PortRange::parse("x").is_err());
    }
}
