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
    /// Port of aranya's kubelet listener, advertised in every Node.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
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

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))
}
