//! A real Kubernetes control plane for aranya's tests and demos.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver, kube-scheduler and
//! kube-controller-manager, each as its own process of one multi-call Go binary built from
//! `testbed/kube` (or `$ARANYA_KUBE_BIN`), on free loopback ports with certificates from a
//! fresh cluster CA, and keeps one always-Ready worker Node (`testbed-worker`) whose Lease it
//! renews. Every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG(SIGKILL)`
//! ([`spawn_child`]), so nothing outlives the test process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), testbed::Error> {
//! // One per test process, started on first use, torn down at exit:
//! let cp = testbed::ControlPlane::shared().await?;
//! let client = cp.client().await?; // one client per #[tokio::test] runtime
//! // kubectl of the same version: `kube kubectl --kubeconfig <cp.kubeconfig_path()> ...`
//! let _kubectl = cp.kube_binary();
//! // Another identity:
//! let cert = cp.ca().issue_client("system:node:dev1", &["system:nodes"])?;
//! cp.write_kubeconfig(&cp.dir().join("dev1.kubeconfig"), "system:node:dev1", &cert)?;
//! # let _ = client; Ok(()) }
//! ```
//!
//! Environment: `ARANYA_KUBE_BIN` (a prebuilt multi-call binary, nothing is built),
//! `ARANYA_KEEP_TESTBED=1` (keep the directory with logs after teardown), `ARANYA_CACHE`
//! (build cache, default `~/.cache/aranya`).

mod binary;
mod broker;
mod certs;
mod controlplane;
mod error;
mod process;
mod sys;

pub use binary::{KUBE_BIN_ENV, cache_dir, kube_binary, kube_source_dir};
pub use broker::{Broker, BrokerOptions, BrokerTls};
pub use certs::{Ca, Issued, ServiceAccountKey};
pub use controlplane::{
    CLUSTER_CIDR, ControlPlane, K8S_VERSION, KEEP_ENV, KUBELET_CLIENT_BINDING, KUBELET_CLIENT_USER,
    NODE_CIDR_PREFIX, Options, SERVICE_ACCOUNT_ISSUER, SERVICE_CIDR, WORKER_NODE,
    client_from_kubeconfig, write_kubeconfig,
};
pub use error::Error;
pub use process::{ChildGuard, DEFAULT_GRACE, spawn_child, stop_all};
