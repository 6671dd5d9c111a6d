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
    /// Bootstrap tokens: how a device gets its first certificate.
    #[command(subcommand)]
    BootstrapToken(TokenCommand),
    /// The device CA every aranya replica shares.
    #[command(subcommand)]
    DeviceCa(CaCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for one EdgeDevice and print the arhat config that uses it.
    Create {
        /// The EdgeDevice's name.
        #[arg(long)]
        device: String,
        /// How long the token is valid: `<n>s`, `<n>m`, `<n>h` or `<n>d`.
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Sign with a new CA from now on; the current one stays trusted, so
    /// devices stay connected and move to the new one as they renew.
    Rotate,
    /// Trust only the current CA (after a rotation, once devices renewed).
    Prune,
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
    /// The cluster's pod CIDR (kube-controller-manager `--cluster-cidr`; one
    /// per family, comma-separated). A pod CIDR an EdgeDevice asks for must
    /// lie inside it. Unset: not checked.
    #[arg(long, value_parser = parse_cluster_cidr, default_value = "")]
    pub cluster_cidr: ClusterCidr,
    /// The cluster's DNS domain, for the names devices resolve.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Ports of the kubelet endpoint, one per virtual node (advertised in its
    /// Node's daemonEndpoints): `first-last`, or `0` for any free port.
    #[arg(long, value_parser = PortRange::parse, default_value = "10250-10999")]
    pub kubelet_ports: PortRange,
    /// PEM bundle of the CA that signs client certificates of kubelet callers
    /// (the apiserver's). Default: `client-ca-file` of the ConfigMap
    /// kube-system/extension-apiserver-authentication, followed as it changes.
    #[arg(long)]
    pub kubelet_client_ca: Option<PathBuf>,
    /// Secret (in `--namespace`) holding the device CA: created by the first
    /// replica that finds none, shared by all.
    #[arg(long, default_value = crate::identity::ca::DEFAULT_SECRET)]
    pub device_ca_secret: String,
    /// Life of the device certificates aranya issues (devices renew at two
    /// thirds of it): `<n>s`, `<n>m`, `<n>h` or `<n>d`.
    #[arg(long, value_parser = parse_duration, default_value = "90d")]
    pub device_cert_lifetime: Duration,
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

/// `--cluster-cidr`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterCidr(pub Vec<crate::podcidr::Cidr>);

fn parse_cluster_cidr(s: &str) -> Result<ClusterCidr, String> {
    crate::podcidr::parse_list(s)
        .map(ClusterCidr)
        .map_err(|e| e.to_string())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))
}

/// `<n>` seconds, or `<n>s`, `<n>m`, `<n>h`, `<n>d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 30m, 24h or 90d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::{PortRange, parse_duration};
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

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
