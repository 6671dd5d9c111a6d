//! The device host as the cluster sees it: a virtual pod with one container,
//! `host`, whose log is the host log files named in arhat's config.

pub mod logs;
