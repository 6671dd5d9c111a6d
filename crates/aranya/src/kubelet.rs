//! The kubelet endpoint aranya serves for every virtual node. For now: each
//! node's serving certificate, obtained and renewed the Kubernetes way.

pub mod cert;
