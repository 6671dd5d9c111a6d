//! The device host as the cluster sees it: a virtual pod with one container,
//! `host`, whose log is the host log files named in arhat's config and in
//! which `kubectl exec` runs commands on the host, where the config allows.

pub mod exec;
pub mod logs;
pub mod tar;
