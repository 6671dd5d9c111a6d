//! The end-to-end harness: the real control plane from [`testbed`], prepared
//! for aranya (CRD, RBAC, identities, gRPC certificates), and aranya and arhat
//! run as real processes of the workspace's binaries.
//!
//! Tests isolate by namespace (aranya's leader Lease) and by device name and a
//! label selector (each test's aranya manages only its own EdgeDevices).

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod devicens;
pub mod dockerd;
pub mod grpc_health;
pub mod images;
pub mod impair;
pub mod impostor;
pub mod kubelet;
pub mod netcut;
pub mod podnet;
pub mod pods;
pub mod process;
pub mod pty;
pub mod registry;
pub mod relay;
pub mod runtimes;
pub mod spdy_client;
pub mod timings;
pub mod transport;
pub mod wait;

pub use cluster::{Cluster, TestEnv};
pub use process::Proc;
pub use transport::Transport;
pub use wait::wait_for;
