//! A hand-driven device client for identity tests: it presents whichever
//! certificate and key it is given (stolen, forged, expired) in TLS and in
//! the Hello, where arhat would only ever present its own.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use connectivity::{
    Dialer, TransportError,
    grpc::{ClientCertificate, GrpcDialer},
    handshake::{self, Accepted, HandshakeError, Prover},
    mqtt::{self, MqttDialer},
};
use identity::{DeviceCa, DeviceKey, proof};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use proto::envelope::{Hello, RefuseReason};

/// A device certificate with its key, as arhat keeps them.
#[derive(Clone)]
pub struct DeviceCredentials {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials").finish_non_exhaustive()
    }
}

impl DeviceCredentials {
    /// What arhat with `data_dir` holds (`identity/device.pem`: certificate, then key).
    pub fn of_agent(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("identity/device.pem");
        let pem = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let end = "-----END CERTIFICATE-----";
        let at = pem.find(end).context("no certificate in device.pem")? + end.len();
        Ok(Self {
            cert_pem: pem[..at].to_string() + "\n",
            key_pem: pem[at..].trim_start().to_string(),
        })
    }

    /// A certificate from `ca` for `device` and `identity`, issued at `issued`
    /// for `life` (in the past, for an expired one).
    pub fn issue(
        ca: &DeviceCa,
        device: &str,
        identity: &str,
        issued: std::time::SystemTime,
        life: Duration,
    ) -> anyhow::Result<Self> {
        let key = DeviceKey::generate()?;
        let cert_pem = ca.issue(&key.csr_der(device)?, device, identity, life, issued)?;
        Ok(Self {
            cert_pem,
            key_pem: key.to_pem(),
        })
    }

    pub fn serial(&self) -> anyhow::Result<String> {
        Ok(identity::DeviceCert::from_pem(self.cert_pem.as_bytes())?.serial)
    }

    fn der(&self) -> anyhow::Result<Vec<u8>> {
        Ok(identity::DeviceCert::from_pem(self.cert_pem.as_bytes())?.der)
    }
}

/// The device CA aranya (in `namespace`) signs with, read from its Secret.
pub async fn device_ca(client: &Client, namespace: &str) -> anyhow::Result<DeviceCa> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(aranya::identity::ca::DEFAULT_SECRET)
        .await?;
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .with_context(|| format!("device CA Secret has no {key}"))
    };
    Ok(DeviceCa::from_pem(&text("ca.crt")?, &text("ca.key")?)?)
}

/// How a try ended.
#[derive(Debug)]
pub enum Outcome {
    Welcomed,
    Refused {
        reason: RefuseReason,
        message: String,
    },
    /// The transport refused (e.g. TLS refused the client certificate).
    Transport(TransportError),
}

struct Signer(DeviceKey);

impl Prover for Signer {
    fn prove(&self, nonce: &[u8], hello: &[u8]) -> Result<Vec<u8>, String> {
        proof::sign_session(&self.0, nonce, hello).map_err(|e| e.to_string())
    }
}

/// Tries to open a session as `device` over gRPC, presenting `tls` as the
/// TLS client certificate and `hello` in the Hello (signing with its key).
pub async fn try_grpc(
    endpoint: &str,
    ca_file: &Path,
    device: &str,
    tls: Option<&DeviceCredentials>,
    hello: Option<&DeviceCredentials>,
) -> anyhow::Result<Outcome> {
    try_session(&grpc_dialer(endpoint, ca_file, tls)?, device, hello).await
}

fn grpc_dialer(
    endpoint: &str,
    ca_file: &Path,
    tls: Option<&DeviceCredentials>,
) -> anyhow::Result<GrpcDialer> {
    Ok(GrpcDialer {
        endpoint: endpoint.to_string(),
        ca_pem: std::fs::read(ca_file)?,
        server_name: Some("localhost".into()),
        connect_timeout: Duration::from_secs(5),
        keepalive: Duration::from_secs(5),
        client_certificate: tls.map(|c| ClientCertificate {
            cert_pem: c.cert_pem.clone().into_bytes(),
            key_pem: c.key_pem.clone().into_bytes(),
        }),
    })
}

/// A session as `device` over gRPC with its own `credentials`, as a device
/// that crafts its own requests would hold: it can open any stream.
pub async fn session_grpc(
    endpoint: &str,
    ca_file: &Path,
    device: &str,
    credentials: &DeviceCredentials,
) -> anyhow::Result<connectivity::SessionHandle> {
    let mut link = grpc_dialer(endpoint, ca_file, Some(credentials))?
        .dial()
        .await?;
    let message = Hello {
        device: device.to_string(),
        protocol_version: proto::api::PROTOCOL_VERSION,
        instance_nonce: Bytes::from_static(b"impostor"),
        agent_version: "impostor".into(),
        certificate: Bytes::from(credentials.der()?),
        ..Default::default()
    };
    let key = DeviceKey::from_pem(&credentials.key_pem)?;
    let Accepted::Welcome(welcome) =
        handshake::hello(&mut link, message, &Signer(key), Duration::from_secs(15)).await?
    else {
        anyhow::bail!("aranya answered a session with a certificate");
    };
    let (handle, _incoming) = connectivity::session::spawn(
        proto::session::Role::Device,
        connectivity::SessionConfig::default(),
        welcome.session_id,
        welcome.epoch,
        link,
        tracing::info_span!("impostor"),
    )?;
    Ok(handle)
}

/// Tries to open a session as `device` through the MQTT broker at `broker`
/// (a valid broker login: the broker here lets anyone in).
pub async fn try_mqtt(
    broker: &str,
    device: &str,
    hello: &DeviceCredentials,
) -> anyhow::Result<Outcome> {
    let dialer = MqttDialer {
        settings: mqtt::Settings {
            broker: broker.to_string(),
            topic_namespace: mqtt::DEFAULT_NAMESPACE.to_string(),
            client_id: format!("impostor-{device}"),
            keepalive: Duration::from_secs(5),
            max_payload: mqtt::DEFAULT_MAX_PAYLOAD,
            connect_timeout: Duration::from_secs(5),
            tls: None,
            credentials: None,
        },
        device: device.to_string(),
    };
    try_session(&dialer, device, Some(hello)).await
}

async fn try_session(
    dialer: &dyn Dialer,
    device: &str,
    hello: Option<&DeviceCredentials>,
) -> anyhow::Result<Outcome> {
    let mut link = match dialer.dial().await {
        Ok(link) => link,
        Err(e) => return Ok(Outcome::Transport(e)),
    };
    let (certificate, key) = match hello {
        Some(c) => (Bytes::from(c.der()?), DeviceKey::from_pem(&c.key_pem)?),
        None => (Bytes::new(), DeviceKey::generate()?),
    };
    let message = Hello {
        device: device.to_string(),
        protocol_version: proto::api::PROTOCOL_VERSION,
        instance_nonce: Bytes::from_static(b"impostor"),
        agent_version: "impostor".into(),
        certificate,
        ..Default::default()
    };
    match handshake::hello(&mut link, message, &Signer(key), Duration::from_secs(15)).await {
        Ok(Accepted::Welcome(_)) => Ok(Outcome::Welcomed),
        Ok(Accepted::Issued(_)) => anyhow::bail!("aranya answered a session with a certificate"),
        Err(HandshakeError::Refused { reason, message }) => {
            Ok(Outcome::Refused { reason, message })
        }
        Err(HandshakeError::Transport(e)) => Ok(Outcome::Transport(e)),
        Err(e) => Err(e.into()),
    }
}
