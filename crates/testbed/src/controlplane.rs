//! The control plane: etcd, kube-apiserver, kube-scheduler and kube-controller-manager, each
//! its own process of the multi-call `kube` binary, plus one always-Ready worker Node.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binary::{kube_binary, tail_file};
use crate::certs::{Ca, Issued, ServiceAccountKey, write_private};
use crate::error::{Error, IoContext};
use crate::process::{ChildGuard, stop_all};
use crate::sys;

/// The Kubernetes version the multi-call binary is built from (testbed/kube/version.env).
pub const K8S_VERSION: &str = "v1.37.2";
/// The always-Ready ordinary Node the test bed keeps.
pub const WORKER_NODE: &str = "testbed-worker";
/// The service CIDR; its first address is the `kubernetes` Service's ClusterIP.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The pod CIDR: the controller-manager's node IPAM gives every Node created
/// without one a /24 of it (`--allocate-node-cidrs`), virtual Nodes included,
/// lowest first. The e2e harness gives its devices /24s from the top half
/// (10.192.0.0/10), which the node IPAM reaches only after 16384 Nodes.
pub const CLUSTER_CIDR: &str = "10.128.0.0/9";
/// The size of each Node's pod CIDR.
pub const NODE_CIDR_PREFIX: u8 = 24;
/// The service-account issuer (and default API audience).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The identity the apiserver presents to kubelets; not in system:masters.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// The ClusterRoleBinding that gives [`KUBELET_CLIENT_USER`] `system:kubelet-api-admin`.
pub const KUBELET_CLIENT_BINDING: &str = "testbed:kube-apiserver-kubelet-client";
/// Env var: keep the control plane's directory after teardown.
pub const KEEP_ENV: &str = "ARANYA_KEEP_TESTBED";

const LEASE_DURATION_SECONDS: i32 = 40;
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
const NODE_STATUS_INTERVAL: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(3);
const PORT_RETRIES: usize = 3;
const LOG_TAIL_LINES: usize = 30;

/// Tunables of the control plane; `Default` gives the Kubernetes defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// kube-apiserver `--default-not-ready-toleration-seconds` (Kubernetes default 300).
    pub not_ready_toleration_seconds: Option<u32>,
    /// kube-apiserver `--default-unreachable-toleration-seconds` (Kubernetes default 300).
    pub unreachable_toleration_seconds: Option<u32>,
    /// kube-controller-manager `--node-monitor-grace-period` (Kubernetes default 50 s).
    pub node_monitor_grace_period: Option<Duration>,
}

/// A running control plane. Dropping it stops every process and removes its directory (unless
/// `ARANYA_KEEP_TESTBED=1`, or it was started with [`ControlPlane::start_in`]).
pub struct ControlPlane {
    dir: PathBuf,
    /// Cleared when starting fails after the processes are up, so the logs stay.
    remove_dir: AtomicBool,
    kube_bin: PathBuf,
    server_url: String,
    etcd_url: String,
    kubeconfig: PathBuf,
    ca: Ca,
    admin: Issued,
    options: Options,
    /// In start order: etcd, kube-apiserver, kube-scheduler, kube-controller-manager.
    children: Mutex<Vec<ChildGuard>>,
    /// Runs the worker node's heartbeat; independent of any test's runtime.
    background: Mutex<Option<tokio::runtime::Runtime>>,
    torn_down: AtomicBool,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir)
            .field("server_url", &self.server_url)
            .field("etcd_url", &self.etcd_url)
            .field("kube_bin", &self.kube_bin)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();
static SHARED_AT_EXIT: Once = Once::new();

extern "C" fn teardown_shared() {
    // Never unwind across the FFI boundary.
    let _ = std::panic::catch_unwind(|| {
        if let Some(cp) = SHARED.get() {
            cp.teardown();
        }
    });
}

impl ControlPlane {
    /// Starts a control plane in a new temporary directory and waits until it is ready.
    pub async fn start(opts: Options) -> Result<ControlPlane, Error> {
        let base = std::env::temp_dir().join("aranya-testbed");
        std::fs::create_dir_all(&base).ctx(|| format!("create {}", base.display()))?;
        remove_stale_dirs(&base);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(&base)
            .ctx(|| format!("create a directory in {}", base.display()))?
            .keep();
        let keep = keep_requested();
        if keep {
            // Marks the directory so that stale-directory cleanup leaves it alone.
            std::fs::write(dir.join("keep"), b"")
                .ctx(|| format!("write {}", dir.join("keep").display()))?;
        }
        Self::start_at(opts, dir, !keep).await
    }

    /// Starts a control plane whose files live in `dir` (created if missing; state of an
    /// earlier run there is replaced). The directory is not removed on teardown.
    pub async fn start_in(opts: Options, dir: &Path) -> Result<ControlPlane, Error> {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let dir = std::fs::canonicalize(dir).ctx(|| format!("resolve {}", dir.display()))?;
        for sub in ["etcd", "pki", "logs"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).ctx(|| format!("remove {}", p.display()))?;
            }
        }
        Self::start_at(opts, dir, false).await
    }

    /// One control plane per test process, started on first use with default [`Options`]
    /// and torn down when the process exits.
    pub async fn shared() -> Result<&'static ControlPlane, Error> {
        let cp = SHARED
            .get_or_try_init(|| ControlPlane::start(Options::default()))
            .await?;
        SHARED_AT_EXIT.call_once(|| {
            if let Err(e) = sys::at_exit(teardown_shared) {
                tracing::warn!(error = %e, "cannot register teardown at exit; children still die with the process");
            }
        });
        Ok(cp)
    }

    async fn start_at(
        opts: Options,
        dir: PathBuf,
        remove_dir: bool,
    ) -> Result<ControlPlane, Error> {
        let started = Instant::now();
        install_crypto_provider();
        let kube_bin = tokio::task::spawn_blocking(kube_binary)
            .await
            .map_err(|e| Error::Invalid(format!("kube binary task failed: {e}")))??;
        tracing::info!(dir = %dir.display(), bin = %kube_bin.display(), "starting control plane");
        let result = Starter {
            dir: dir.clone(),
            kube_bin: kube_bin.clone(),
            opts: opts.clone(),
            children: Vec::new(),
        }
        .run()
        .await;
        let started_parts = match result {
            Ok(parts) => parts,
            Err(e) => {
                tracing::error!(dir = %dir.display(), "control plane failed to start; its directory is kept for the logs");
                return Err(e);
            }
        };
        let StartedParts {
            children,
            ca,
            admin,
            server_url,
            etcd_url,
            kubeconfig,
        } = started_parts;
        let background = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testbed-background")
            .enable_all()
            .build()
            .ctx(|| "create the background runtime".to_owned())?;
        let cp = ControlPlane {
            dir,
            remove_dir: AtomicBool::new(remove_dir),
            kube_bin,
            server_url,
            etcd_url,
            kubeconfig,
            ca,
            admin,
            options: opts,
            children: Mutex::new(children),
            background: Mutex::new(None),
            torn_down: AtomicBool::new(false),
        };
        // From here on a failure drops `cp`, which stops everything (keeping the directory).
        *cp.background
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(background);
        if let Err(e) = cp.start_worker().await {
            tracing::error!(dir = %cp.dir.display(), "control plane failed to start; its directory is kept for the logs");
            cp.remove_dir.store(false, Ordering::SeqCst);
            return Err(e);
        }
        tracing::info!(
            secs = format!("{:.1}", started.elapsed().as_secs_f64()),
            url = cp.server_url,
            "control plane ready"
        );
        Ok(cp)
    }

    /// The admin (system:masters) kubeconfig: `<dir>/kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new admin client. Create one per runtime (per `#[tokio::test]`): a client's
    /// connection pool lives on the runtime that created it.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The multi-call binary (`kube kubectl --kubeconfig ...`).
    pub fn kube_binary(&self) -> &Path {
        &self.kube_bin
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The cluster CA (client CA, kubelet CA and CSR signer too).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The admin (system:masters) client certificate.
    pub fn admin_cert(&self) -> &Issued {
        &self.admin
    }

    /// The options this control plane was started with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The control plane's directory; logs are in `<dir>/logs/<component>.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/logs/<component>.log`.
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// Writes a kubeconfig for another identity (embedded certificates).
    pub fn write_kubeconfig(&self, path: &Path, user: &str, cert: &Issued) -> Result<(), Error> {
        write_kubeconfig(path, &self.server_url, self.ca.cert_pem(), user, cert)
    }

    /// Fails with the component and its log if any control-plane process has exited.
    pub fn check_alive(&self) -> Result<(), Error> {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for child in children.iter_mut() {
            let name = child.name().to_owned();
            if let Some(status) = child.try_wait().ctx(|| format!("check {name}"))? {
                return Err(exited(&self.dir, &name, status.to_string()));
            }
        }
        if self.torn_down.load(Ordering::SeqCst) {
            return Err(Error::Invalid("the control plane was torn down".into()));
        }
        Ok(())
    }

    /// Stops the heartbeat and every process, and removes the directory unless it is kept.
    /// Idempotent; `Drop` calls it.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(rt) = self
            .background
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            rt.shutdown_background();
        }
        let mut children = std::mem::take(
            &mut *self
                .children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // etcd last: it waits for its clients' streams to end before it exits, and the
        // apiserver's shutdown stalls once etcd is gone.
        let etcd: Vec<ChildGuard> = children
            .iter()
            .position(|c| c.name() == "etcd")
            .map(|i| children.remove(i))
            .into_iter()
            .collect();
        stop_all(&mut children, STOP_GRACE);
        let mut etcd = etcd;
        stop_all(&mut etcd, STOP_GRACE);
        drop(children);
        if self.remove_dir.load(Ordering::SeqCst) && !keep_requested() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the control plane's directory");
            }
        } else {
            tracing::info!(dir = %self.dir.display(), "control plane stopped; directory kept");
        }
    }

    /// Creates the worker Node and its Lease, starts their heartbeat on the background
    /// runtime and waits until the node-lifecycle controller has made the Node schedulable.
    async fn start_worker(&self) -> Result<(), Error> {
        let client = self.client().await?;
        ensure_worker(&client).await?;
        let kubeconfig = self.kubeconfig.clone();
        self.background
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|rt| rt.spawn(heartbeat(kubeconfig)))
            .ok_or_else(|| Error::Invalid("no background runtime".into()))?;
        self.wait_worker_schedulable(&client).await
    }

    async fn wait_worker_schedulable(&self, client: &kube::Client) -> Result<(), Error> {
        // TaintNodesByCondition gives a new Node `node.kubernetes.io/not-ready:NoSchedule`; the
        // node-lifecycle controller removes it once it has seen the Ready condition.
        let nodes: Api<Node> = Api::all(client.clone());
        let started = Instant::now();
        let timeout = Duration::from_secs(90);
        loop {
            self.check_alive()?;
            let last = match nodes.get(WORKER_NODE).await {
                Ok(node) => {
                    let taints = node
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .map(|t| t.iter().map(|t| t.key.clone()).collect::<Vec<_>>())
                        .unwrap_or_default();
                    if taints.is_empty() {
                        return Ok(());
                    }
                    format!("node {WORKER_NODE} still has taints {taints:?}")
                }
                Err(e) => format!("get node {WORKER_NODE}: {e}"),
            };
            if started.elapsed() > timeout {
                return Err(not_ready(
                    &self.dir,
                    "kube-controller-manager",
                    started.elapsed(),
                    last,
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn keep_requested() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Removes `<base>/<pid>-*` directories of processes that are gone (interrupted test runs),
/// except those marked to be kept.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if pid == std::process::id()
            || Path::new(&format!("/proc/{pid}")).exists()
            || path.join("keep").exists()
        {
            continue;
        }
        tracing::debug!(dir = %path.display(), "removing a stale control plane directory");
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Makes ring rustls' process-wide default provider (the tree uses ring only; this also keeps
/// clients working should another crate enable a second provider).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    install_crypto_provider();
    let config = config_from_kubeconfig(path).await?;
    kube::Client::try_from(config).map_err(|e| Error::kube("create client", e))
}

async fn config_from_kubeconfig(path: &Path) -> Result<kube::Config, Error> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig {
            path: path.to_owned(),
            source: Box::new(e),
        })
}

/// Writes a kubeconfig with embedded certificates, mode 0600.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    user: &str,
    cert: &Issued,
) -> Result<(), Error> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    // JSON is YAML; serde_json quotes every string correctly.
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "testbed",
            "cluster": {
                "server": server_url,
                "certificate-authority-data": b64(ca_pem),
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": b64(&cert.cert_pem),
                "client-key-data": b64(&cert.key_pem),
            },
        }],
        "contexts": [{
            "name": format!("{user}@testbed"),
            "context": { "cluster": "testbed", "user": user, "namespace": "default" },
        }],
        "current-context": format!("{user}@testbed"),
    });
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| Error::Invalid(format!("serialize kubeconfig: {e}")))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
    }
    write_private(path, &text)
}

fn log_path(dir: &Path, component: &str) -> PathBuf {
    dir.join("logs").join(format!("{component}.log"))
}

fn exited(dir: &Path, component: &str, status: String) -> Error {
    let log = log_path(dir, component);
    Error::Exited {
        component: component.to_owned(),
        status,
        tail: log_excerpt(&log),
        log,
    }
}

fn not_ready(dir: &Path, component: &str, waited: Duration, last: String) -> Error {
    let log = log_path(dir, component);
    Error::NotReady {
        component: component.to_owned(),
        waited_secs: waited.as_secs(),
        last,
        tail: log_excerpt(&log),
        log,
    }
}

/// The last lines of a component's log, preceded by its last error lines if those scrolled
/// out of the tail (klog `E`/`F` lines, etcd's JSON error levels, Go panics).
fn log_excerpt(log: &Path) -> String {
    let all = tail_file(log, 5000);
    let lines: Vec<&str> = all.lines().collect();
    let tail_start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let is_error = |l: &str| {
        let b = l.as_bytes();
        let klog =
            b.len() > 5 && (b[0] == b'E' || b[0] == b'F') && b[1..5].iter().all(u8::is_ascii_digit);
        klog || l.contains(r#""level":"error""#)
            || l.contains(r#""level":"fatal""#)
            || l.contains(r#""level":"panic""#)
            || l.starts_with("panic:")
    };
    let mut errors: Vec<&str> = lines[..tail_start]
        .iter()
        .copied()
        .filter(|l| is_error(l))
        .collect();
    let mut out = String::new();
    if !errors.is_empty() {
        let skip = errors.len().saturating_sub(10);
        errors.drain(..skip);
        out.push_str("  [error lines before the tail]\n");
        for l in errors {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("  [tail]\n");
    }
    out.push_str(&lines[tail_start..].join("\n"));
    out
}

/// A free loopback TCP port (bound and released: another process may still take it, which
/// the callers handle by retrying on "address already in use").
fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ctx(|| "bind 127.0.0.1:0".to_owned())?;
    let port = l
        .local_addr()
        .ctx(|| "local address of 127.0.0.1:0".to_owned())?
        .port();
    Ok(port)
}

/// A Go duration string.
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

struct StartedParts {
    children: Vec<ChildGuard>,
    ca: Ca,
    admin: Issued,
    server_url: String,
    etcd_url: String,
    kubeconfig: PathBuf,
}

struct Starter {
    dir: PathBuf,
    kube_bin: PathBuf,
    opts: Options,
    /// Started so far, in order; dropped (stopped) if starting fails.
    children: Vec<ChildGuard>,
}

impl Drop for Starter {
    /// Starting failed (or was cancelled): stop what was started, newest first.
    fn drop(&mut self) {
        let mut children = std::mem::take(&mut self.children);
        children.reverse();
        stop_all(&mut children, STOP_GRACE);
    }
}

/// Paths of the files each component reads.
struct Pki {
    ca_crt: PathBuf,
    ca_key: PathBuf,
    apiserver: (PathBuf, PathBuf),
    kubelet_client: (PathBuf, PathBuf),
    scheduler_serving: (PathBuf, PathBuf),
    controller_manager_serving: (PathBuf, PathBuf),
    sa_key: PathBuf,
    sa_pub: PathBuf,
    front_proxy_ca_crt: PathBuf,
    front_proxy_client: (PathBuf, PathBuf),
}

impl Starter {
    async fn run(mut self) -> Result<StartedParts, Error> {
        let dir = &self.dir.clone();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).ctx(|| format!("create {}", logs.display()))?;
        let pki_dir = dir.join("pki");

        // Certificates and keys.
        let ca = Ca::new("aranya-testbed-ca")?;
        let (ca_crt, ca_key) = ca.write(&pki_dir, "ca")?;
        let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let apiserver = ca
            .issue_server(
                "kube-apiserver",
                &[
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                &[
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
                ],
            )?
            .write(&pki_dir, "apiserver")?;
        let admin = ca.issue_client("testbed-admin", &["system:masters"])?;
        admin.write(&pki_dir, "admin")?;
        let kubelet_client = ca
            .issue_client(KUBELET_CLIENT_USER, &[KUBELET_CLIENT_USER])?
            .write(&pki_dir, "apiserver-kubelet-client")?;
        let scheduler = ca.issue_client("system:kube-scheduler", &[])?;
        let controller_manager = ca.issue_client("system:kube-controller-manager", &[])?;
        let scheduler_serving = ca
            .issue_server("kube-scheduler", &["localhost"], &loopback)?
            .write(&pki_dir, "scheduler-serving")?;
        let controller_manager_serving = ca
            .issue_server("kube-controller-manager", &["localhost"], &loopback)?
            .write(&pki_dir, "controller-manager-serving")?;
        // The aggregation layer's front proxy, as kubeadm sets it up: its own CA, so that
        // cluster client certificates cannot assert identities through request headers.
        let front_proxy_ca = Ca::new("aranya-testbed-front-proxy-ca")?;
        let (front_proxy_ca_crt, _) = front_proxy_ca.write(&pki_dir, "front-proxy-ca")?;
        let front_proxy_client = front_proxy_ca
            .issue_client("front-proxy-client", &[])?
            .write(&pki_dir, "front-proxy-client")?;
        let sa = ServiceAccountKey::generate()?;
        let sa_key = pki_dir.join("sa.key");
        let sa_pub = pki_dir.join("sa.pub");
        write_private(&sa_key, &sa.private_pem)?;
        std::fs::write(&sa_pub, &sa.public_pem).ctx(|| format!("write {}", sa_pub.display()))?;
        let pki = Pki {
            ca_crt,
            ca_key,
            apiserver,
            kubelet_client,
            scheduler_serving,
            controller_manager_serving,
            sa_key,
            sa_pub,
            front_proxy_ca_crt,
            front_proxy_client,
        };

        // etcd.
        let etcd_url = self.start_etcd().await?;

        // kube-apiserver.
        let server_url = self.start_apiserver(&pki, &etcd_url, &ca, &admin).await?;
        let kubeconfig = dir.join("kubeconfig");
        let client = client_from_kubeconfig(&kubeconfig).await?;
        self.wait_namespaces(&client).await?;
        bind_kubelet_client(&client).await?;

        // kube-scheduler and kube-controller-manager, with their own identities.
        let sched_kubeconfig = dir.join("scheduler.kubeconfig");
        write_kubeconfig(
            &sched_kubeconfig,
            &server_url,
            ca.cert_pem(),
            "system:kube-scheduler",
            &scheduler,
        )?;
        let cm_kubeconfig = dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &cm_kubeconfig,
            &server_url,
            ca.cert_pem(),
            "system:kube-controller-manager",
            &controller_manager,
        )?;
        let grace = self.opts.node_monitor_grace_period;
        self.start_secure_component("kube-controller-manager", &kubeconfig, |port| {
            let mut a = controller_args(&cm_kubeconfig, port);
            a.extend([
                format!(
                    "--service-account-private-key-file={}",
                    pki.sa_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_crt.display()),
                "--use-service-account-credentials=true".into(),
                format!("--cluster-signing-cert-file={}", pki.ca_crt.display()),
                format!("--cluster-signing-key-file={}", pki.ca_key.display()),
                "--allocate-node-cidrs=true".into(),
                format!("--cluster-cidr={CLUSTER_CIDR}"),
                format!("--node-cidr-mask-size={NODE_CIDR_PREFIX}"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            ]);
            if let Some(d) = grace {
                a.push(format!("--node-monitor-grace-period={}", go_duration(d)));
            }
            a.extend(tls_args(&pki.controller_manager_serving));
            a
        })
        .await?;
        self.start_secure_component("kube-scheduler", &kubeconfig, |port| {
            let mut a = controller_args(&sched_kubeconfig, port);
            a.extend(tls_args(&pki.scheduler_serving));
            a
        })
        .await?;

        // The controllers work: the serviceaccount controller made `default/default`.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.wait_for(
            "kube-controller-manager",
            Duration::from_secs(90),
            || async {
                match sas.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("no ServiceAccount default/default yet".to_owned()),
                    Err(e) => Err(format!("get ServiceAccount default/default: {e}")),
                }
            },
        )
        .await?;

        let children = std::mem::take(&mut self.children);
        Ok(StartedParts {
            children,
            ca,
            admin,
            server_url,
            etcd_url,
            kubeconfig,
        })
    }

    /// Spawns `kube <component> <args>` with stdout and stderr appended to its log.
    fn spawn(&self, component: &str, args: &[String]) -> Result<ChildGuard, Error> {
        let log = log_path(&self.dir, component);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .ctx(|| format!("open {}", log.display()))?;
        let file2 = file.try_clone().ctx(|| format!("dup {}", log.display()))?;
        let mut cmd = Command::new(&self.kube_bin);
        cmd.arg(component)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2);
        tracing::debug!(component, ?args, "spawning");
        ChildGuard::spawn(component, cmd).ctx(|| format!("spawn {component}"))
    }

    /// Starts a component serving /healthz on a fresh port and waits until it answers,
    /// retrying with another port if the one picked was taken before the component bound it.
    async fn start_secure_component(
        &mut self,
        component: &str,
        admin_kubeconfig: &Path,
        args: impl Fn(u16) -> Vec<String>,
    ) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let child = self.spawn(component, &args(port))?;
            self.children.push(child);
            let client = self.component_client(admin_kubeconfig, port).await?;
            let res = self
                .wait_for(component, Duration::from_secs(90), || {
                    get_ok(&client, "/healthz")
                })
                .await;
            match res {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PORT_RETRIES && port_taken(&self.dir, component) => {
                    tracing::warn!(component, error = %e, "port taken; retrying with another port");
                    self.children.pop();
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_etcd(&mut self) -> Result<String, Error> {
        let data = self.dir.join("etcd");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client_port = free_port()?;
            let peer_port = free_port()?;
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            if data.exists() {
                std::fs::remove_dir_all(&data).ctx(|| format!("remove {}", data.display()))?;
            }
            let args = vec![
                "--name=testbed".to_owned(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testbed={peer_url}"),
                "--initial-cluster-state=new".to_owned(),
                "--unsafe-no-fsync=true".to_owned(),
                "--log-level=warn".to_owned(),
            ];
            let child = self.spawn("etcd", &args)?;
            self.children.push(child);
            let url = client_url.clone();
            let res = self
                .wait_for("etcd", Duration::from_secs(60), || etcd_health(url.clone()))
                .await;
            match res {
                Ok(()) => return Ok(client_url),
                Err(e) if attempt < PORT_RETRIES && port_taken(&self.dir, "etcd") => {
                    tracing::warn!(error = %e, "etcd port taken; retrying with other ports");
                    self.children.pop();
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_apiserver(
        &mut self,
        pki: &Pki,
        etcd_url: &str,
        ca: &Ca,
        admin: &Issued,
    ) -> Result<String, Error> {
        let kubeconfig = self.dir.join("kubeconfig");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let server_url = format!("https://127.0.0.1:{port}");
            write_kubeconfig(
                &kubeconfig,
                &server_url,
                ca.cert_pem(),
                "testbed-admin",
                admin,
            )?;
            let mut args = vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={port}"),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--cert-dir={}", self.dir.join("pki").display()),
                format!("--tls-cert-file={}", pki.apiserver.0.display()),
                format!("--tls-private-key-file={}", pki.apiserver.1.display()),
                format!("--client-ca-file={}", pki.ca_crt.display()),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                format!("--service-account-key-file={}", pki.sa_pub.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.sa_key.display()
                ),
                "--authorization-mode=Node,RBAC".to_owned(),
                format!(
                    "--kubelet-client-certificate={}",
                    pki.kubelet_client.0.display()
                ),
                format!("--kubelet-client-key={}", pki.kubelet_client.1.display()),
                format!("--kubelet-certificate-authority={}", pki.ca_crt.display()),
                "--allow-privileged=true".to_owned(),
                format!(
                    "--requestheader-client-ca-file={}",
                    pki.front_proxy_ca_crt.display()
                ),
                "--requestheader-allowed-names=front-proxy-client".to_owned(),
                "--requestheader-username-headers=X-Remote-User".to_owned(),
                "--requestheader-group-headers=X-Remote-Group".to_owned(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_owned(),
                format!(
                    "--proxy-client-cert-file={}",
                    pki.front_proxy_client.0.display()
                ),
                format!(
                    "--proxy-client-key-file={}",
                    pki.front_proxy_client.1.display()
                ),
                // The endpoint reconciler refuses a loopback advertise address (1.37 validates
                // it); nothing in the test bed runs pods that dial the `kubernetes` Service.
                "--endpoint-reconciler-type=none".to_owned(),
            ];
            if let Some(s) = self.opts.not_ready_toleration_seconds {
                args.push(format!("--default-not-ready-toleration-seconds={s}"));
            }
            if let Some(s) = self.opts.unreachable_toleration_seconds {
                args.push(format!("--default-unreachable-toleration-seconds={s}"));
            }
            let child = self.spawn("kube-apiserver", &args)?;
            self.children.push(child);
            let client = client_from_kubeconfig(&kubeconfig).await?;
            let res = self
                .wait_for("kube-apiserver", Duration::from_secs(120), || {
                    get_ok(&client, "/readyz")
                })
                .await;
            match res {
                Ok(()) => return Ok(server_url),
                Err(e) if attempt < PORT_RETRIES && port_taken(&self.dir, "kube-apiserver") => {
                    tracing::warn!(error = %e, "apiserver port taken; retrying with another port");
                    self.children.pop();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The apiserver's system namespaces controller creates default and kube-node-lease.
    async fn wait_namespaces(&mut self, client: &kube::Client) -> Result<(), Error> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        self.wait_for("kube-apiserver", Duration::from_secs(60), || async {
            for ns in ["default", "kube-system", "kube-node-lease"] {
                match namespaces.get_opt(ns).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(format!("namespace {ns} missing")),
                    Err(e) => return Err(format!("get namespace {ns}: {e}")),
                }
            }
            Ok(())
        })
        .await
    }

    /// Polls `probe` until it succeeds; fails early, naming the process and showing its log,
    /// if any process started so far exits.
    async fn wait_for<F, Fut>(
        &mut self,
        component: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        loop {
            for child in self.children.iter_mut() {
                let name = child.name().to_owned();
                if let Some(status) = child.try_wait().ctx(|| format!("check {name}"))? {
                    return Err(exited(&self.dir, &name, status.to_string()));
                }
            }
            let last = match tokio::time::timeout(Duration::from_secs(10), probe()).await {
                Ok(Ok(())) => {
                    tracing::debug!(
                        component,
                        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
                        "ready"
                    );
                    return Ok(());
                }
                Ok(Err(e)) => e,
                Err(_) => "probe timed out".to_owned(),
            };
            if started.elapsed() > timeout {
                return Err(not_ready(&self.dir, component, started.elapsed(), last));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An admin client for a component's own secure port (its /healthz).
    async fn component_client(&self, kubeconfig: &Path, port: u16) -> Result<kube::Client, Error> {
        let mut config = config_from_kubeconfig(kubeconfig).await?;
        config.cluster_url = format!("https://127.0.0.1:{port}")
            .parse()
            .map_err(|e| Error::Invalid(format!("component URL: {e}")))?;
        kube::Client::try_from(config).map_err(|e| Error::kube("create component client", e))
    }
}

fn tls_args(pair: &(PathBuf, PathBuf)) -> [String; 2] {
    [
        format!("--tls-cert-file={}", pair.0.display()),
        format!("--tls-private-key-file={}", pair.1.display()),
    ]
}

fn port_taken(dir: &Path, component: &str) -> bool {
    tail_file(&log_path(dir, component), 200).contains("address already in use")
}

/// GET `path`; Ok if the answer is 200 "ok".
async fn get_ok(client: &kube::Client, path: &str) -> Result<(), String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(req).await {
        Ok(body) if body.trim() == "ok" => Ok(()),
        Ok(body) => Err(format!("GET {path}: {}", body.trim())),
        Err(e) => Err(format!("GET {path}: {e}")),
    }
}

/// etcd's `/health` over plain HTTP.
async fn etcd_health(url: String) -> Result<(), String> {
    let addr = url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let resp = String::from_utf8_lossy(&resp);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let health: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("GET /health: {e}: {resp}"))?;
    if health.get("health").and_then(|h| h.as_str()) == Some("true") {
        Ok(())
    } else {
        Err(format!("GET /health: {body}"))
    }
}

async fn bind_kubelet_client(client: &kube::Client) -> Result<(), Error> {
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": { "name": KUBELET_CLIENT_BINDING },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:kubelet-api-admin",
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": KUBELET_CLIENT_USER,
        }],
    }))
    .map_err(|e| Error::Invalid(format!("ClusterRoleBinding: {e}")))?;
    match crbs.create(&PostParams::default(), &crb).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("create ClusterRoleBinding {KUBELET_CLIENT_BINDING}"),
            e,
        )),
    }
}

fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn node_status(transition: &Time) -> Result<serde_json::Value, Error> {
    let now = serde_json::to_value(now_time()).map_err(|e| Error::Invalid(format!("time: {e}")))?;
    let transition =
        serde_json::to_value(transition).map_err(|e| Error::Invalid(format!("time: {e}")))?;
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": transition,
        })
    };
    let resources = json!({
        "cpu": "16",
        "memory": "64Gi",
        "pods": "1000",
        "ephemeral-storage": "100Gi",
    });
    Ok(json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "testbed worker"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "testbed worker"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "testbed worker"),
            condition("Ready", "True", "KubeletReady", "testbed worker (no kubelet) is always ready"),
        ],
        "addresses": [
            { "type": "InternalIP", "address": "127.0.0.1" },
            { "type": "Hostname", "address": WORKER_NODE },
        ],
        "nodeInfo": {
            "machineID": "testbed-worker",
            "systemUUID": "testbed-worker",
            "bootID": "testbed-worker",
            "kernelVersion": "testbed",
            "osImage": "aranya testbed",
            "containerRuntimeVersion": "testbed://0.0.0",
            "kubeletVersion": K8S_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }))
}

/// Creates (or re-creates) the worker Node, its status and its Lease.
async fn ensure_worker(client: &kube::Client) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = match nodes
        .get_opt(WORKER_NODE)
        .await
        .map_err(|e| Error::kube(format!("get node {WORKER_NODE}"), e))?
    {
        Some(node) => node,
        None => {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": WORKER_NODE,
                    "labels": {
                        "kubernetes.io/hostname": WORKER_NODE,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "beta.kubernetes.io/os": "linux",
                        "beta.kubernetes.io/arch": "amd64",
                        "testbed.aranya.dev/worker": "true",
                    },
                },
                "spec": {},
                "status": node_status(&now_time())?,
            }))
            .map_err(|e| Error::Invalid(format!("Node: {e}")))?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(n) => n,
                Err(kube::Error::Api(s)) if s.code == 409 => nodes
                    .get(WORKER_NODE)
                    .await
                    .map_err(|e| Error::kube(format!("get node {WORKER_NODE}"), e))?,
                Err(e) => return Err(Error::kube(format!("create node {WORKER_NODE}"), e)),
            }
        }
    };
    refresh_node_status(&nodes).await?;
    let uid = node.metadata.uid.unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": WORKER_NODE,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": WORKER_NODE,
                "uid": uid,
            }],
        },
        "spec": {
            "holderIdentity": WORKER_NODE,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
        },
    }))
    .map_err(|e| Error::Invalid(format!("Lease: {e}")))?;
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => renew_lease(&leases).await,
        Err(e) => Err(Error::kube(format!("create lease {WORKER_NODE}"), e)),
    }
}

/// Sets the worker's status (conditions with a fresh lastHeartbeatTime), keeping the Ready
/// condition's lastTransitionTime.
async fn refresh_node_status(nodes: &Api<Node>) -> Result<(), Error> {
    let current = nodes
        .get_status(WORKER_NODE)
        .await
        .map_err(|e| Error::kube(format!("get node {WORKER_NODE} status"), e))?;
    let transition = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now_time);
    let patch = json!({ "status": node_status(&transition)? });
    nodes
        .patch_status(WORKER_NODE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("patch node {WORKER_NODE} status"), e))?;
    Ok(())
}

async fn renew_lease(leases: &Api<Lease>) -> Result<(), Error> {
    let patch = json!({
        "spec": {
            "holderIdentity": WORKER_NODE,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
        }
    });
    leases
        .patch(WORKER_NODE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("renew lease {WORKER_NODE}"), e))?;
    Ok(())
}

/// The worker's "kubelet": renews its Lease every 10 s and refreshes its status every 30 s,
/// re-creating Node and Lease if a test deleted them. Runs on the control plane's own runtime.
async fn heartbeat(kubeconfig: PathBuf) {
    let client = loop {
        match client_from_kubeconfig(&kubeconfig).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat: cannot create a client; retrying");
                tokio::time::sleep(LEASE_RENEW_INTERVAL).await;
            }
        }
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut lease_tick = tokio::time::interval(LEASE_RENEW_INTERVAL);
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = Instant::now();
    loop {
        lease_tick.tick().await;
        let result = async {
            if last_status.elapsed() >= NODE_STATUS_INTERVAL {
                refresh_node_status(&nodes).await?;
                last_status = Instant::now();
            }
            renew_lease(&leases).await
        }
        .await;
        if let Err(e) = result {
            let missing = matches!(
                &e,
                Error::Kube { source, .. } if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 404)
            );
            if missing {
                tracing::info!("heartbeat: worker node or lease is gone; re-creating them");
                if let Err(e) = ensure_worker(&client).await {
                    tracing::warn!(error = %e, "heartbeat: re-creating the worker failed");
                }
            } else {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        } else {
            tracing::trace!("worker lease renewed");
        }
    }
}

/// Flags the scheduler and the controller-manager share: their identity for
/// everything, a loopback secure port, no leader election.
fn controller_args(kubeconfig: &Path, port: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--authentication-kubeconfig={}", kubeconfig.display()),
        format!("--authorization-kubeconfig={}", kubeconfig.display()),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        "--leader-elect=false".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(50)), "50s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn kubeconfig_parses() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let ca = Ca::new("ca")?;
        let cert = ca.issue_client("u", &["g"])?;
        let path = dir.path().join("kc");
        write_kubeconfig(&path, "https://127.0.0.1:6443", ca.cert_pem(), "u", &cert)?;
        let kc = Kubeconfig::read_from(&path).map_err(|e| Error::Invalid(e.to_string()))?;
        assert_eq!(kc.current_context.as_deref(), Some("u@testbed"));
        Ok(())
    }
}
