//! The kubelet endpoint aranya serves for every virtual node, as a real
//! kubelet serves it to the apiserver (and to metrics-server and the like).
//!
//! Each node gets its own port, advertised in its Node's `daemonEndpoints`:
//! node-wide paths (`/pods`, `/runningpods/`, later `/stats/summary` and
//! `/metrics/resource`) name no node, and neither does the TLS handshake (the
//! apiserver dials an IP, so no SNI), so the port is what tells nodes apart and
//! lets each present its own serving certificate. One [`Kubelet`] holds what
//! the listeners share: authentication, certificates, the cluster client.
//!
//! - [`cert`]: each node's serving certificate (CSR, approval, renewal).
//! - [`tls`]: the listener's TLS: per-node certificate, client certificates.
//! - [`auth`]: callers authenticated and authorized like a kubelet does.
//! - [`server`]: the listener and its routes.
//! - [`logs`]: `/containerLogs`, streamed from the device.
//! - [`exec`]: `/exec`, `/run` and `/attach`, bridged to the device's process.
//! - [`portforward`]: `/portForward`, each connection dialed on the device.
//! - [`upgrade`]: the SPDY upgrade and the device's answer before it.
//! - [`podlist`]: `/pods` and `/runningpods/`.
//! - [`hostpod`]: the device host as a pod.

pub mod auth;
pub mod cert;
mod exec;
pub mod hostpod;
mod logs;
mod podlist;
mod portforward;
mod server;
mod tls;
mod upgrade;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

pub use server::{Kubelet, NodeEndpoint};

/// Response bodies: whole, or streamed from the device.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A request that cannot be served, as a kubelet answers it: a status and a
/// plain-text message the apiserver passes on to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The device behind the node is not connected.
    pub fn disconnected(node: &str) -> Self {
        Self::device(
            node,
            "is disconnected: its agent (arhat) is not connected to aranya",
        )
    }

    /// The device failed or went away mid-request. 500 rather than 503: the
    /// apiserver passes a 500's text on to the client and drops a 503's.
    pub fn device(node: &str, what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("edge device {node} {what}"),
        )
    }

    pub fn into_response(self) -> Response<Body> {
        text(self.status, self.message + "\n")
    }
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body)
}

pub fn json(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(StatusCode::OK, "application/json", body),
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}
