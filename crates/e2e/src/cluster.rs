//! The control plane made ready for aranya, and per-test environments on it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use aranya::crd::EdgeDevice;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use testbed::ControlPlane;
use tokio::sync::OnceCell;

use crate::{process::Proc, transport::Transport, wait::wait_for};

/// Label every test's EdgeDevices carry; each test's aranya selects on it.
pub const TEST_LABEL: &str = "e2e.aranya.arhat.dev/test";

/// The repository root (deploy manifests live there): `$ARANYA_REPO` (set by
/// the Makefile), else the checkout cargo runs this from. A binary reused from
/// a build in another checkout must not look in that one.
pub fn repo_root() -> PathBuf {
    if let Some(repo) = std::env::var_os("ARANYA_REPO") {
        return PathBuf::from(repo);
    }
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.join("../..")
}

/// A control plane with aranya's CRD and RBAC applied, an identity for aranya
/// bound to its ClusterRole, and a serving certificate for its gRPC endpoint.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub kube_binary: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub aranya_kubeconfig: PathBuf,
    pub ca_file: PathBuf,
    pub grpc_cert: PathBuf,
    pub grpc_key: PathBuf,
}

static SHARED: OnceCell<Cluster> = OnceCell::const_new();

impl Cluster {
    /// The test process's shared cluster, prepared on first use.
    pub async fn shared() -> anyhow::Result<&'static Cluster> {
        SHARED
            .get_or_try_init(|| async {
                let start = std::time::Instant::now();
                let cp = ControlPlane::shared()
                    .await
                    .context("starting the test-bed control plane")?;
                let cluster = Cluster::prepare(cp, &cp.dir().join("aranya")).await;
                crate::timings::record("control plane start", start.elapsed());
                cluster
            })
            .await
    }

    /// Applies what aranya needs to `cp` and writes its files under `dir`.
    pub async fn prepare(cp: &ControlPlane, dir: &Path) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            kube_binary: cp.kube_binary().to_path_buf(),
            admin_kubeconfig: cp.kubeconfig_path().to_path_buf(),
            aranya_kubeconfig: dir.join("aranya.kubeconfig"),
            ca_file: dir.join("ca.crt"),
            grpc_cert: dir.join("grpc.crt"),
            grpc_key: dir.join("grpc.key"),
        };
        std::fs::write(&cluster.ca_file, cp.ca().cert_pem())?;
        let aranya = cp.ca().issue_client("aranya", &[])?;
        cp.write_kubeconfig(&cluster.aranya_kubeconfig, "aranya", &aranya)?;
        let grpc = cp.ca().issue_server(
            "aranya",
            &["localhost", "aranya"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )?;
        grpc.write(dir, "grpc")?;
        crate::images::ensure_busybox()?;
        let root = repo_root();
        cluster.kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &root.join("deploy/crd.yaml").to_string_lossy(),
            "-f",
            &root.join("deploy/rbac.yaml").to_string_lossy(),
        ])?;
        cluster.kubectl(&[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/edgedevices.aranya.arhat.dev",
        ])?;
        Ok(cluster)
    }

    /// aranya for this cluster: its identity, its gRPC endpoint on loopback.
    pub fn aranya_command(
        &self,
        namespace: &str,
        grpc_port: u16,
        log: &str,
    ) -> anyhow::Result<Command> {
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port));
        self.aranya_command_with(namespace, grpc, log, &self.aranya_kubeconfig)
    }

    /// Like [`Self::aranya_command`], listening for devices on `grpc` and
    /// reaching the apiserver as `kubeconfig` says.
    pub fn aranya_command_with(
        &self,
        namespace: &str,
        grpc: SocketAddr,
        log: &str,
        kubeconfig: &Path,
    ) -> anyhow::Result<Command> {
        let mut cmd = Command::new(crate::process::binary("aranya")?);
        cmd.env("RUST_LOG", log)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", namespace])
            .args(["--grpc-listen", &grpc.to_string()])
            // Not loopback: the apiserver refuses to proxy to loopback nodes.
            .args(["--node-address", &node_address().to_string()])
            .args(["--kubelet-ports", "0"])
            .args(["--cluster-cidr", testbed::CLUSTER_CIDR])
            .arg("--grpc-tls-cert")
            .arg(&self.grpc_cert)
            .arg("--grpc-tls-key")
            .arg(&self.grpc_key);
        Ok(cmd)
    }

    /// Lets aranya write its Secrets (device CA, bootstrap tokens) in
    /// `namespace`, as deploy/rbac.yaml does for aranya-system.
    pub fn grant_identity(&self, namespace: &str) -> anyhow::Result<()> {
        self.kubectl(&[
            "create",
            "rolebinding",
            "aranya-identity",
            "--clusterrole=aranya-identity",
            "--user=aranya",
            "-n",
            namespace,
        ])
        .map(|_| ())
    }

    /// Makes a bootstrap token for EdgeDevice `device` (aranya in
    /// `namespace`) and writes it where arhat with `data_dir` reads it.
    pub async fn bootstrap_token(
        &self,
        namespace: &str,
        device: &str,
        data_dir: &Path,
    ) -> anyhow::Result<String> {
        let client = self.client().await?;
        let api: Api<EdgeDevice> = Api::all(client.clone());
        let ed = api.get(device).await?;
        let created =
            aranya::identity::token::create(client, namespace, &ed, Duration::from_secs(3600))
                .await?;
        let token = created.token.expose();
        write_token(&data_dir.join("identity/bootstrap-token"), &token)?;
        Ok(token)
    }

    /// Runs the test bed's kubectl as admin; fails with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_output(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn kubectl_output(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.kubectl_command(args)
            .output()
            .context("running kubectl")
    }

    /// The local port `kubectl port-forward` reports on its stdout
    /// (`Forwarding from 127.0.0.1:PORT -> REMOTE`), reading lines up to it.
    pub fn forwarded_port(
        lines: &mut impl Iterator<Item = std::io::Result<String>>,
    ) -> anyhow::Result<u16> {
        loop {
            let line = lines.next().context("kubectl port-forward exited")??;
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
                && let Some((port, _)) = rest.split_once(' ')
            {
                return Ok(port.parse()?);
            }
        }
    }

    /// The test bed's kubectl as admin, to be run as the caller likes.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kube_binary);
        cmd.arg("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args);
        cmd
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(testbed::client_from_kubeconfig(&self.admin_kubeconfig).await?)
    }
}

/// One test's corner of the cluster: its namespace, its devices, its aranya.
pub struct TestEnv {
    pub cluster: &'static Cluster,
    pub client: Client,
    /// Unique per test run: namespace, label value and device-name prefix.
    pub name: String,
    pub dir: PathBuf,
    pub grpc_port: u16,
    /// How this test's devices reach aranya.
    pub transport: Transport,
    /// What this test's devices run pods on.
    pub runtime: arhat::config::RuntimeKind,
    /// The test's own Mosquitto, for MQTT tests.
    broker: std::sync::Mutex<Option<testbed::Broker>>,
    /// The network namespace the test's agents run in, when not this
    /// machine's own (see [`TestEnv::on_device_host`]).
    pub device_host: Option<crate::devicens::DeviceHost>,
    /// Devices created here; their containers are removed when the test ends.
    devices: std::sync::Mutex<Vec<String>>,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let devices = self.devices.lock().map(|d| d.clone()).unwrap_or_default();
        for device in devices {
            crate::images::remove_device_containers(&device);
        }
    }
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("name", &self.name)
            .field("grpc_port", &self.grpc_port)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// A test whose devices use `transport` (an MQTT test gets its own broker,
    /// persistent, refusing payloads above the transport's limit).
    pub async fn over(test: &str, transport: Transport) -> anyhow::Result<TestEnv> {
        let mut env = Self::new(&format!("{test}-{}", transport.short())).await?;
        env.transport = transport;
        env.start_transport_broker()?;
        Ok(env)
    }

    /// Like [`Self::over`], with the test's agents in a device host of
    /// their own (a network namespace reaching only aranya and the broker).
    pub async fn on_device_host(test: &str, transport: Transport) -> anyhow::Result<TestEnv> {
        let mut env = Self::new(&format!("{test}-{}", transport.short())).await?;
        env.transport = transport;
        env.device_host = Some(crate::devicens::DeviceHost::create(
            &env.dir.join("device-host"),
        )?);
        env.start_transport_broker()?;
        Ok(env)
    }

    /// Where aranya listens for devices: loopback, or this machine's end of
    /// the device host's veth.
    pub fn grpc_address(&self) -> SocketAddr {
        let host = self
            .device_host
            .as_ref()
            .map_or(Ipv4Addr::LOCALHOST, |h| h.host_addr);
        SocketAddr::from((host, self.grpc_port))
    }

    /// An MQTT test's broker: persistent, refusing payloads above the
    /// transport's limit, where the devices reach it.
    fn start_transport_broker(&self) -> anyhow::Result<()> {
        if let Transport::Mqtt { max_payload } = self.transport {
            self.start_broker(&testbed::BrokerOptions {
                max_payload: Some(max_payload),
                persistence: true,
                address: self.device_host.as_ref().map(|h| IpAddr::V4(h.host_addr)),
                ..Default::default()
            })?;
        }
        Ok(())
    }

    /// A test whose devices run pods on `runtime` (over gRPC).
    pub async fn on(test: &str, runtime: arhat::config::RuntimeKind) -> anyhow::Result<TestEnv> {
        let mut env = Self::new(&format!("{test}-{}", crate::runtimes::name(runtime))).await?;
        env.runtime = runtime;
        Ok(env)
    }

    /// The test's broker address, when it has one.
    pub fn broker_address(&self) -> Option<String> {
        self.with_broker(|b| b.address())
    }

    /// Runs `f` on the test's broker (e.g. to restart it).
    pub fn with_broker<T>(&self, f: impl FnOnce(&mut testbed::Broker) -> T) -> Option<T> {
        self.broker.lock().ok()?.as_mut().map(f)
    }

    /// Starts a broker for this test with `options`, replacing any other.
    pub fn start_broker(&self, options: &testbed::BrokerOptions) -> anyhow::Result<String> {
        let broker = testbed::Broker::start(&self.dir.join("broker"), options)?;
        let address = broker.address();
        if let Ok(mut b) = self.broker.lock() {
            *b = Some(broker);
        }
        Ok(address)
    }

    /// The EdgeDevice's `connectivity.methods` for this test's transport.
    pub fn device_methods(&self) -> serde_json::Value {
        self.transport.methods(self.broker_address().as_deref()).0
    }

    pub async fn new(test: &str) -> anyhow::Result<TestEnv> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,kube_client=off"))
            .with_test_writer()
            .try_init();
        let cluster = Cluster::shared().await?;
        let client = cluster.client().await?;
        let suffix: String = (0..4)
            .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
            .collect();
        let name = format!("{test}-{suffix}");
        crate::timings::test_name(&name);
        let dir = cluster.dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .context("creating the test namespace")?;
        cluster.grant_identity(&name)?;
        Ok(TestEnv {
            cluster,
            client,
            grpc_port: free_port()?,
            transport: Transport::Grpc,
            runtime: arhat::config::RuntimeKind::Docker,
            broker: std::sync::Mutex::default(),
            device_host: None,
            name,
            dir,
            devices: std::sync::Mutex::default(),
        })
    }

    /// A device name unique to this test.
    pub fn device(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// Creates an EdgeDevice with a gRPC method, labelled for this test's aranya.
    pub async fn create_device(
        &self,
        name: &str,
        allocatable_pods: u32,
    ) -> anyhow::Result<EdgeDevice> {
        self.create_device_with(name, allocatable_pods, serde_json::json!({}))
            .await
    }

    /// Like [`Self::create_device`], with more of `spec.pod` (merged over the defaults).
    pub async fn create_device_with(
        &self,
        name: &str,
        allocatable_pods: u32,
        pod: serde_json::Value,
    ) -> anyhow::Result<EdgeDevice> {
        self.create_device_over(name, allocatable_pods, pod, self.device_methods())
            .await
    }

    /// Like [`Self::create_device_with`], with its own `connectivity.methods`.
    pub async fn create_device_over(
        &self,
        name: &str,
        allocatable_pods: u32,
        pod: serde_json::Value,
        methods: serde_json::Value,
    ) -> anyhow::Result<EdgeDevice> {
        // The agent's own subnet, unique on this machine.
        let cidr = crate::podnet::pod_cidr(&self.arhat_data_dir(name))?;
        let pod = crate::pods::merge(
            serde_json::json!({ "allocatable": allocatable_pods, "ipv4CIDR": cidr }),
            pod,
        );
        let device: EdgeDevice = serde_json::from_value(serde_json::json!({
            "apiVersion": "aranya.arhat.dev/v1alpha1",
            "kind": "EdgeDevice",
            "metadata": { "name": name, "labels": { TEST_LABEL: self.name } },
            "spec": {
                "connectivity": { "methods": methods },
                "node": { "zone": "edge-zone-a", "labels": { "example.com/site": "lab" } },
                "pod": pod,
            },
        }))?;
        if let Ok(mut devices) = self.devices.lock() {
            devices.push(name.to_string());
        }
        let api: Api<EdgeDevice> = Api::all(self.client.clone());
        let created = api.create(&PostParams::default(), &device).await?;
        self.cluster
            .bootstrap_token(&self.name, name, &self.arhat_data_dir(name))
            .await?;
        Ok(created)
    }

    /// Messages of the Events with `reason` recorded on EdgeDevice `device`.
    pub fn device_events(&self, device: &str, reason: &str) -> anyhow::Result<String> {
        self.cluster.kubectl(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("involvedObject.kind=EdgeDevice,involvedObject.name={device},reason={reason}"),
            "-o",
            "jsonpath={.items[*].message}",
        ])
    }

    /// Where this test's arhat for `device` keeps its state (and its identity).
    pub fn arhat_data_dir(&self, device: &str) -> PathBuf {
        self.dir.join(format!("arhat-data-{device}"))
    }

    pub fn aranya_command(&self, identity: &str) -> anyhow::Result<Command> {
        self.aranya_command_with(identity, &self.cluster.aranya_kubeconfig)
    }

    /// Like [`Self::aranya_command`], reaching the apiserver as `kubeconfig` says.
    pub fn aranya_command_with(
        &self,
        identity: &str,
        kubeconfig: &Path,
    ) -> anyhow::Result<Command> {
        let mut cmd = self.cluster.aranya_command_with(
            &self.name,
            self.grpc_address(),
            "info,aranya=debug,connectivity=debug",
            kubeconfig,
        )?;
        cmd.args(["--identity", identity])
            .args([
                "--edge-device-selector",
                &format!("{TEST_LABEL}={}", self.name),
            ])
            .args(["--reconnect-grace", "10"])
            // Fast volume refresh, so tests see updates and new tokens quickly.
            .args(["--pod-refresh", "5"]);
        Ok(cmd)
    }

    pub fn start_aranya(&self, identity: &str) -> anyhow::Result<Proc> {
        self.start_aranya_with(identity, &self.cluster.aranya_kubeconfig)
    }

    /// aranya reaching the apiserver as `kubeconfig` says.
    pub fn start_aranya_with(&self, identity: &str, kubeconfig: &Path) -> anyhow::Result<Proc> {
        let cmd = self.aranya_command_with(identity, kubeconfig)?;
        Proc::spawn(
            &format!("aranya-{identity}"),
            cmd,
            &self.dir.join(format!("aranya-{identity}.log")),
        )
    }

    fn aranya_kubeconfig(&self) -> anyhow::Result<serde_norway::Value> {
        let path = &self.cluster.aranya_kubeconfig;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_norway::from_str(&text)?)
    }

    /// aranya's kubeconfig, with the apiserver reached on loopback `port`
    /// instead (an [`crate::impair::Impairer`] in front of it).
    pub fn aranya_kubeconfig_through(&self, port: u16) -> anyhow::Result<PathBuf> {
        let mut config = self.aranya_kubeconfig()?;
        let clusters = config
            .get_mut("clusters")
            .and_then(|c| c.as_sequence_mut())
            .context("aranya's kubeconfig has no clusters")?;
        for c in clusters {
            if let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
                cluster.insert("server".into(), format!("https://127.0.0.1:{port}").into());
            }
        }
        let path = self.dir.join(format!("aranya-through-{port}.kubeconfig"));
        std::fs::write(&path, serde_norway::to_string(&config)?)?;
        Ok(path)
    }

    /// The apiserver's address on loopback, as aranya's kubeconfig names it.
    pub fn apiserver_address(&self) -> anyhow::Result<std::net::SocketAddr> {
        let config = self.aranya_kubeconfig()?;
        let server = config["clusters"][0]["cluster"]["server"]
            .as_str()
            .context("aranya's kubeconfig names no server")?;
        let authority = server.trim_start_matches("https://");
        authority
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("the apiserver address {server}"))
    }

    /// aranya with its clock `offset` from this machine's (Debian's
    /// libfaketime preloaded, e.g. `+1h`; not the `faketime` wrapper, which
    /// would stand between the test and the process it kills); its
    /// monotonic clock is left alone.
    pub fn start_aranya_skewed(&self, identity: &str, offset: &str) -> anyhow::Result<Proc> {
        let lib = PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1",
            std::env::consts::ARCH
        ));
        anyhow::ensure!(
            lib.exists(),
            "{} is missing: scripts/deps.sh installs Debian's faketime",
            lib.display()
        );
        let mut cmd = self.aranya_command(identity)?;
        cmd.env("LD_PRELOAD", &lib)
            .env("FAKETIME", offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        Proc::spawn(
            &format!("aranya-{identity}"),
            cmd,
            &self.dir.join(format!("aranya-{identity}.log")),
        )
    }

    /// Writes an arhat config for `device` dialing this test's aranya.
    pub fn arhat_config(&self, device: &str) -> anyhow::Result<PathBuf> {
        self.arhat_config_with(device, "")
    }

    /// Like [`Self::arhat_config`], with extra top-level YAML (e.g. a `host:` section).
    pub fn arhat_config_with(&self, device: &str, extra: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("arhat-{device}.yaml"));
        let config = arhat_config_yaml(&ArhatConfig {
            device,
            aranya: self.grpc_address(),
            ca_file: &self.cluster.ca_file,
            data_dir: &self.arhat_data_dir(device),
            log: "info,arhat=debug,connectivity=debug",
            quick: true,
            mqtt: self.transport.methods(self.broker_address().as_deref()).1,
            runtime: self.runtime,
            extra,
        })?;
        std::fs::write(&path, config)?;
        Ok(path)
    }

    pub fn start_arhat(
        &self,
        device: &str,
        instance: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        self.start_arhat_with(device, instance, extra, "")
    }

    /// Starts arhat with extra config YAML (see [`Self::arhat_config_with`]).
    pub fn start_arhat_with(
        &self,
        device: &str,
        instance: &str,
        extra: &[&str],
        config_yaml: &str,
    ) -> anyhow::Result<Proc> {
        let config = self.arhat_config_with(device, config_yaml)?;
        let binary = crate::process::binary("arhat")?;
        let mut cmd = match &self.device_host {
            Some(host) => host.command(binary),
            None => Command::new(binary),
        };
        cmd.arg("--config").arg(&config).args(extra);
        Proc::spawn(
            &format!("arhat-{device}-{instance}"),
            cmd,
            &self.dir.join(format!("arhat-{device}-{instance}.log")),
        )
    }

    /// The common start of a test: an EdgeDevice, this test's aranya, an
    /// agent for the device, and its Node Ready.
    pub async fn device_up(&self, suffix: &str, allocatable_pods: u32) -> anyhow::Result<DeviceUp> {
        self.device_up_with(suffix, allocatable_pods, serde_json::json!({}))
            .await
    }

    /// Like [`Self::device_up`], with more of the EdgeDevice's `spec.pod`.
    pub async fn device_up_with(
        &self,
        suffix: &str,
        allocatable_pods: u32,
        pod: serde_json::Value,
    ) -> anyhow::Result<DeviceUp> {
        self.device_up_configured(suffix, allocatable_pods, pod, "")
            .await
    }

    /// Like [`Self::device_up_with`], with more arhat config YAML
    /// (see [`Self::arhat_config_with`]).
    pub async fn device_up_configured(
        &self,
        suffix: &str,
        allocatable_pods: u32,
        pod: serde_json::Value,
        arhat_yaml: &str,
    ) -> anyhow::Result<DeviceUp> {
        let methods = self.device_methods();
        self.device_up_over(suffix, allocatable_pods, pod, methods, arhat_yaml)
            .await
    }

    /// Waits until the cluster signed `node`'s kubelet serving certificate:
    /// the apiserver here verifies kubelets, so logs and exec reach the node
    /// only from then on (a busy controller-manager can take seconds).
    pub async fn wait_serving_cert(&self, node: &str) -> anyhow::Result<()> {
        use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
        let csrs: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let selector = format!("{}={node}", aranya::kubelet::cert::LABEL_NODE);
        wait_for(
            &format!("{node}'s kubelet serving certificate signed"),
            Duration::from_secs(90),
            || async {
                let list = csrs
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                list.items
                    .iter()
                    .any(|csr| {
                        csr.status
                            .as_ref()
                            .and_then(|s| s.certificate.as_ref())
                            .is_some_and(|c| !c.0.is_empty())
                    })
                    .then_some(())
            },
        )
        .await
    }

    /// Like [`Self::device_up_configured`], with the EdgeDevice's own
    /// `connectivity.methods` (arhat's go in `arhat_yaml`).
    pub async fn device_up_over(
        &self,
        suffix: &str,
        allocatable_pods: u32,
        pod: serde_json::Value,
        methods: serde_json::Value,
        arhat_yaml: &str,
    ) -> anyhow::Result<DeviceUp> {
        let name = self.device(suffix);
        self.create_device_over(&name, allocatable_pods, pod, methods)
            .await?;
        let aranya = self.start_aranya("a")?;
        let arhat = self.start_arhat_with(&name, "1", &[], arhat_yaml)?;
        let node = self
            .wait_ready(
                &name,
                "True",
                Some("EdgeDeviceConnected"),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", logs_of(&aranya, &arhat, 30)))?;
        self.wait_serving_cert(&name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", logs_of(&aranya, &arhat, 30)))?;
        Ok(DeviceUp {
            name,
            aranya,
            arhat,
            node,
        })
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    pub fn devices(&self) -> Api<EdgeDevice> {
        Api::all(self.client.clone())
    }

    /// The Node's Ready condition as (status, reason), if it has one.
    pub async fn ready(&self, node: &str) -> Option<(String, String)> {
        let node = self.nodes().get_opt(node).await.ok()??;
        node_ready(&node)
    }

    /// Waits for the Node's Ready condition to have `status` (and `reason`, if given).
    pub async fn wait_ready(
        &self,
        node: &str,
        status: &str,
        reason: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Node> {
        wait_for(
            &format!("node {node} Ready={status} {reason:?}"),
            timeout,
            || async {
                let n = self.nodes().get_opt(node).await.ok()??;
                let (s, r) = node_ready(&n)?;
                (s == status && reason.is_none_or(|want| want == r)).then_some(n)
            },
        )
        .await
    }
}

/// What [`TestEnv::device_up`] started.
#[derive(Debug)]
pub struct DeviceUp {
    pub name: String,
    pub aranya: Proc,
    pub arhat: Proc,
    /// The Node as it first was Ready.
    pub node: Node,
}

impl DeviceUp {
    /// The last `lines` of aranya's and arhat's logs, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        logs_of(&self.aranya, &self.arhat, lines)
    }
}

fn logs_of(aranya: &Proc, arhat: &Proc, lines: usize) -> String {
    format!(
        "aranya:\n{}\narhat:\n{}",
        aranya.log_tail(lines),
        arhat.log_tail(lines)
    )
}

/// What differs between the agents the harness, demo and benchmark start.
#[derive(Debug)]
pub struct ArhatConfig<'a> {
    pub device: &'a str,
    /// aranya's gRPC endpoint.
    pub aranya: SocketAddr,
    pub ca_file: &'a Path,
    pub data_dir: &'a Path,
    pub log: &'a str,
    /// Short back-off and status interval, for tests.
    pub quick: bool,
    /// Dial through this broker instead of aranya's gRPC endpoint.
    pub mqtt: Option<MqttMethod>,
    pub runtime: arhat::config::RuntimeKind,
    /// More config YAML (e.g. a `host:` section, or `runtime.logs`), merged
    /// key by key over the rest.
    pub extra: &'a str,
}

/// An MQTT method of an arhat config.
#[derive(Debug, Clone)]
pub struct MqttMethod {
    pub broker: String,
    pub max_payload: usize,
}

/// An arhat config dialing aranya on loopback and running pods in Docker.
pub fn arhat_config_yaml(c: &ArhatConfig<'_>) -> anyhow::Result<String> {
    // Not quick: arhat's own defaults (back-off 500 ms to 10 s), as on a device.
    let (backoff, max, interval) = if c.quick {
        ("200ms", "2s", "2s")
    } else {
        ("500ms", "10s", "10s")
    };
    let base = format!(
        "device:\n  name: {device}\nconnectivity:\n  backoff:\n    initial: {backoff}\n    max: {max}\n  methods:\n    - name: grpc\n      grpc:\n        endpoint: {aranya}\n        caFile: {ca}\n        serverName: localhost\nnode:\n  statusInterval: {interval}\n  storagePath: /\nruntime:\n  kind: {runtime}\n  pauseBinary: {pause}\n  dataDir: {data}\nlog:\n  level: {log}\n",
        device = c.device,
        aranya = c.aranya,
        ca = c.ca_file.display(),
        pause = crate::process::pause_binary()?.display(),
        data = c.data_dir.display(),
        log = c.log,
        runtime = crate::runtimes::name(c.runtime),
    );
    let mut config: serde_norway::Value = serde_norway::from_str(&base)?;
    merge_yaml(
        &mut config,
        serde_norway::from_str(&crate::podnet::config_yaml(c.data_dir)?)?,
    );
    if let Some(m) = &c.mqtt {
        let methods = format!(
            "connectivity:\n  methods:\n    - name: mqtt\n      mqtt:\n        broker: {}\n        maxPayload: {}\n        keepalive: 5s\n",
            m.broker, m.max_payload
        );
        merge_yaml(&mut config, serde_norway::from_str(&methods)?);
    }
    if !c.extra.trim().is_empty() {
        merge_yaml(&mut config, serde_norway::from_str(c.extra)?);
    }
    Ok(serde_norway::to_string(&config)?)
}

/// `over` merged into `base`: mappings key by key, anything else replaced.
fn merge_yaml(base: &mut serde_norway::Value, over: serde_norway::Value) {
    match (base, over) {
        (serde_norway::Value::Mapping(b), serde_norway::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_yaml(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The address virtual nodes advertise: this machine's address on its
/// default route (the apiserver proxies nodes/proxy only to non-loopback
/// addresses), loopback when there is none.
pub fn node_address() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        // Connecting a UDP socket sends nothing; it only picks the route.
        socket.connect("192.0.2.1:9")?;
        Ok(socket.local_addr()?.ip())
    };
    probe()
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

pub fn node_ready(node: &Node) -> Option<(String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

pub fn labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// Writes a bootstrap token owner-only, as an operator would.
pub fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
