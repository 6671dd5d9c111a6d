//! arhat: the agent on an edge device. It dials out to aranya (nothing on the
//! device listens), reports what the device is, and serves the cloud's requests.
//!
//! - [`config`]: the YAML configuration.
//! - [`agent`]: the connection loop and the streams it serves.
//! - [`nodeinfo`]: system identity and capacity from the host.
//! - [`backoff`]: reconnect delays.
//! - [`runtime`]: the container runtime seam (Docker first).
//! - [`containerlog`]: container logs in the CRI format, kept by arhat for
//!   runtimes that keep none.
//! - [`network`]: the pod network (CNI plugins on a bridge).
//! - [`clusternet`]: the cluster Services the device may reach.
//! - [`setting`]: settings aranya hands the device (pod network, catalogue).
//! - [`pod`]: pods by UID: sandbox, init and app containers, restarts, status, logs.
//! - [`host`]: the device host as its virtual pod (log files, commands).
//! - [`netns`]: dialing inside a pod's network namespace (port-forward).

pub mod agent;
pub mod backoff;
pub mod clusternet;
pub mod config;
pub mod containerlog;
pub mod host;
pub mod identity;
pub mod imagegc;
pub mod netns;
pub mod network;
pub mod nodeinfo;
pub mod pod;
pub mod runtime;
pub mod setting;
