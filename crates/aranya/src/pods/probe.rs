//! Probes and lifecycle hooks as the device runs them: named ports resolved
//! against the container's ports, and the apiserver's defaults made explicit.

use k8s_openapi::{
    api::core::v1::{
        Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use proto::api::{self, action::Kind};

use super::spec::SpecError;

/// A port by number or by the name of one of the container's ports.
fn port(c: &Container, port: &IntOrString, what: &str) -> Result<u32, SpecError> {
    let resolved = match port {
        IntOrString::Int(n) => u32::try_from(*n).ok(),
        IntOrString::String(name) => match name.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u32::try_from(p.container_port).ok()),
        },
    };
    resolved
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| SpecError::Port {
            container: c.name.clone(),
            what: what.to_string(),
            port: match port {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => s.clone(),
            },
        })
}

fn http_get(c: &Container, h: &HTTPGetAction, what: &str) -> Result<Kind, SpecError> {
    Ok(Kind::HttpGet(api::HttpGetAction {
        host: h.host.clone().unwrap_or_default(),
        port: port(c, &h.port, what)?,
        path: h.path.clone().unwrap_or_else(|| "/".into()),
        https: h.scheme.as_deref() == Some("HTTPS"),
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|x| api::HttpHeader {
                name: x.name.clone(),
                value: x.value.clone(),
            })
            .collect(),
    }))
}

/// The handlers probes and hooks share.
fn common(
    c: &Container,
    exec: &Option<ExecAction>,
    http: &Option<HTTPGetAction>,
    tcp: &Option<TCPSocketAction>,
    what: &str,
) -> Result<Option<Kind>, SpecError> {
    Ok(if let Some(e) = exec {
        Some(Kind::Exec(api::ExecAction {
            command: e.command.clone().unwrap_or_default(),
        }))
    } else if let Some(h) = http {
        Some(http_get(c, h, what)?)
    } else if let Some(t) = tcp {
        Some(Kind::TcpSocket(api::TcpSocketAction {
            host: t.host.clone().unwrap_or_default(),
            port: port(c, &t.port, what)?,
        }))
    } else {
        None
    })
}

/// The device's form of a probe (`what` names it in errors: "livenessProbe").
pub fn probe(
    c: &Container,
    p: Option<&Probe>,
    what: &str,
) -> Result<Option<api::Probe>, SpecError> {
    let Some(p) = p else {
        return Ok(None);
    };
    let kind = if let Some(kind) = common(c, &p.exec, &p.http_get, &p.tcp_socket, what)? {
        kind
    } else if let Some(g) = &p.grpc {
        Kind::Grpc(api::GrpcAction {
            port: port(c, &IntOrString::Int(g.port), what)?,
            service: g.service.clone().unwrap_or_default(),
        })
    } else {
        return Ok(None);
    };
    Ok(Some(api::Probe {
        action: Some(api::Action { kind: Some(kind) }),
        initial_delay_seconds: p.initial_delay_seconds.unwrap_or(0).max(0),
        timeout_seconds: p.timeout_seconds.unwrap_or(1).max(1),
        period_seconds: p.period_seconds.unwrap_or(10).max(1),
        success_threshold: p.success_threshold.unwrap_or(1).max(1),
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1),
        termination_grace_period_seconds: p.termination_grace_period_seconds,
    }))
}

/// The device's form of a postStart or preStop hook.
pub fn hook(
    c: &Container,
    h: Option<&LifecycleHandler>,
    what: &str,
) -> Result<Option<api::Action>, SpecError> {
    let Some(h) = h else {
        return Ok(None);
    };
    let kind = if let Some(kind) = common(c, &h.exec, &h.http_get, &h.tcp_socket, what)? {
        // A tcpSocket hook is deprecated; a kubelet accepts it and only dials.
        kind
    } else if let Some(s) = &h.sleep {
        Kind::SleepSeconds(s.seconds)
    } else {
        return Ok(None);
    };
    Ok(Some(api::Action { kind: Some(kind) }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn container() -> Container {
        serde_json::from_value(json!({
            "name": "web",
            "ports": [{ "name": "http", "containerPort": 8080 }],
        }))
        .expect("a container")
    }

    #[test]
    fn named_ports_resolve_and_defaults_are_explicit() {
        let p: Probe =
            serde_json::from_value(json!({ "httpGet": { "port": "http", "path": "/ready" } }))
                .expect("a probe");
        let out = probe(&container(), Some(&p), "readinessProbe")
            .expect("resolves")
            .expect("some");
        assert_eq!(
            (
                out.timeout_seconds,
                out.period_seconds,
                out.failure_threshold
            ),
            (1, 10, 3)
        );
        match out.action.and_then(|a| a.kind) {
            Some(Kind::HttpGet(h)) => {
                assert_eq!((h.port, h.path.as_str(), h.https), (8080, "/ready", false))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_port_name_says_which() {
        let p: Probe =
            serde_json::from_value(json!({ "tcpSocket": { "port": "nope" } })).expect("a probe");
        let e = probe(&container(), Some(&p), "livenessProbe").expect_err("unknown");
        assert!(e.to_string().contains("livenessProbe"), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
