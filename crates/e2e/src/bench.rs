//! What every benchmark starts: its own control plane, aranya, and one device
//! whose agent runs pods in the local Docker engine.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;

use crate::{
    Cluster, Proc,
    cluster::{ArhatConfig, arhat_config_yaml},
    images::{ensure_busybox, remove_device_containers},
    process::start_arhat,
    transport::Transport,
};

pub struct BenchBed {
    pub cp: testbed::ControlPlane,
    pub cluster: Cluster,
    pub client: kube::Client,
    pub dir: PathBuf,
    pub device: String,
    /// aranya's gRPC port on loopback.
    pub port: u16,
    /// The broker of an MQTT bed.
    pub broker: Option<testbed::Broker>,
    _aranya: Proc,
    arhat: Option<Proc>,
    arhat_config: PathBuf,
}

impl std::fmt::Debug for BenchBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchBed")
            .field("dir", &self.dir)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl BenchBed {
    /// Starts everything; returns once `device`'s Node is Ready.
    pub async fn start(
        device: &str,
        allocatable_pods: usize,
        arhat_extra: &str,
    ) -> anyhow::Result<Self> {
        let broker = testbed::BrokerOptions::default();
        Self::start_over(
            device,
            allocatable_pods,
            arhat_extra,
            Transport::Grpc,
            broker,
        )
        .await
    }

    /// Like [`Self::start`], the device reaching aranya over `transport` (an
    /// MQTT bed runs its own Mosquitto with `broker`, refusing payloads
    /// above the limit, persistence on).
    pub async fn start_over(
        device: &str,
        allocatable_pods: usize,
        arhat_extra: &str,
        transport: Transport,
        broker: testbed::BrokerOptions,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        ensure_busybox()?;
        let cp = testbed::ControlPlane::start(Default::default()).await?;
        let dir = cp.dir().join("bench");
        let cluster = Cluster::prepare(&cp, &dir).await?;
        let client = cluster.client().await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        cluster.grant_identity("default")?;
        let aranya = cluster.aranya_command("default", port, "warn")?;
        let aranya = Proc::spawn("aranya", aranya, &dir.join("aranya.log"))?;
        let broker = match transport {
            Transport::Grpc => None,
            Transport::Mqtt { max_payload } => Some(testbed::Broker::start(
                &dir.join("broker"),
                &testbed::BrokerOptions {
                    max_payload: Some(max_payload),
                    persistence: true,
                    ..broker
                },
            )?),
        };
        let (methods, mqtt) = transport.methods(broker.as_ref().map(|b| b.address()).as_deref());
        // The agent's own subnet: each bed's fresh node IPAM would hand out
        // the same first one, on another bridge than the last bed's, which
        // the bench process keeps while it runs.
        let cidr = crate::podnet::pod_cidr(&dir.join("arhat-data"))?;
        let manifest = json!({
            "apiVersion": "aranya.arhat.dev/v1alpha1", "kind": "EdgeDevice",
            "metadata": { "name": device },
            "spec": {
                "connectivity": { "methods": methods },
                "pod": { "allocatable": allocatable_pods, "ipv4CIDR": cidr },
            },
        });
        let path = dir.join("device.json");
        std::fs::write(&path, manifest.to_string())?;
        cluster.kubectl(&["apply", "-f", &path.to_string_lossy()])?;
        cluster
            .bootstrap_token("default", device, &dir.join("arhat-data"))
            .await?;
        let config = dir.join("arhat.yaml");
        let yaml = arhat_config_yaml(&ArhatConfig {
            device,
            aranya: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
            ca_file: &cluster.ca_file,
            data_dir: &dir.join("arhat-data"),
            log: "warn",
            quick: false,
            mqtt,
            runtime: arhat::config::RuntimeKind::Docker,
            extra: arhat_extra,
        })?;
        std::fs::write(&config, yaml)?;
        let arhat = start_arhat("arhat", &config, &dir.join("arhat.log"))?;
        cluster
            .kubectl(&[
                "wait",
                "--for=condition=Ready",
                "--timeout=120s",
                &format!("node/{device}"),
            ])
            .context("the bench device's Node never became Ready")?;
        Ok(Self {
            cp,
            cluster,
            client,
            dir,
            device: device.to_string(),
            port,
            broker,
            _aranya: aranya,
            arhat: Some(arhat),
            arhat_config: config,
        })
    }

    /// aranya's and arhat's process ids.
    pub fn pids(&self) -> (u32, Option<u32>) {
        (self._aranya.pid(), self.arhat.as_ref().map(Proc::pid))
    }

    /// Kills the agent (as a crash would).
    pub fn kill_arhat(&mut self) {
        if let Some(mut arhat) = self.arhat.take() {
            arhat.kill();
        }
    }

    /// Starts a new agent with the same config.
    pub fn start_arhat(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("arhat.log");
        self.arhat = Some(start_arhat("arhat", &self.arhat_config, &log)?);
        Ok(())
    }

    /// Pod spec parts that put a pod on the bench device.
    pub fn placement(&self) -> serde_json::Value {
        json!({
            "nodeSelector": { "kubernetes.io/hostname": self.device },
            "tolerations": [{ "key": "aranya.arhat.dev/edge-device", "operator": "Exists", "effect": "NoSchedule" }],
            "automountServiceAccountToken": false,
        })
    }
}

impl Drop for BenchBed {
    fn drop(&mut self) {
        drop(self.arhat.take());
        remove_device_containers(&self.device);
    }
}
