//! aranya's broker connections: one for every EdgeDevice that lists an `mqtt`
//! method, started with its virtual node and restarted when the settings
//! change. The device's links arrive at the hub like gRPC ones.

use std::{sync::Arc, time::Duration};

use connectivity::{
    Link,
    mqtt::{self, Credentials, Settings, Tls},
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::mpsc;
use tracing::{Instrument, info, warn};

use crate::crd::{EdgeDevice, MethodName, MqttSettings, SecretRef};

/// How long a connector waits after a failure (a missing Secret, a broker
/// refusing the settings) before it tries again.
const RETRY: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connector needs from aranya.
#[derive(Clone)]
pub struct Env {
    pub client: kube::Client,
    /// Where the Secrets that MQTT settings name live.
    pub namespace: String,
    /// The hub's links.
    pub links: mpsc::Sender<Link>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A running broker connection for one device; stopped when dropped.
#[derive(Debug)]
pub struct Connector {
    settings: MqttSettings,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts, restarts or stops `current` to match the device's mqtt method.
pub fn sync(current: &mut Option<Connector>, env: &Arc<Env>, device: &EdgeDevice, name: &str) {
    let wanted = device
        .spec
        .connectivity
        .methods
        .iter()
        .find(|m| m.name == MethodName::Mqtt)
        .and_then(|m| m.mqtt.clone());
    if current.as_ref().map(|c| &c.settings) == wanted.as_ref() {
        return;
    }
    *current = wanted.map(|settings| {
        info!(broker = %settings.broker, "connecting to the device's MQTT broker");
        let task =
            tokio::spawn(run(env.clone(), name.to_string(), settings.clone()).in_current_span());
        Connector { settings, task }
    });
}

async fn run(env: Arc<Env>, device: String, spec: MqttSettings) {
    loop {
        let outcome = match resolve(&env, &device, &spec).await {
            Ok(settings) => mqtt::serve_device(
                settings,
                device.clone(),
                env.links.clone(),
                std::future::pending(),
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            warn!(error = %e, retry_in = ?RETRY, "MQTT connectivity for the device");
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The transport's settings, with the Secrets read. Errors name the field.
async fn resolve(env: &Env, device: &str, spec: &MqttSettings) -> Result<Settings, String> {
    let field = "spec.connectivity.methods[name=mqtt].mqtt";
    let credentials = match &spec.credentials_secret_ref {
        None => None,
        Some(r) => {
            let at = format!("{field}.credentialsSecretRef");
            let username = secret_key(env, r, "username", &at).await?;
            let password = secret_key(env, r, "password", &at).await?;
            Some(Credentials {
                username: String::from_utf8_lossy(&username).into_owned(),
                password: String::from_utf8_lossy(&password).into_owned(),
            })
        }
    };
    let tls = match &spec.tls_secret_ref {
        None => None,
        Some(r) => {
            let at = format!("{field}.tlsSecretRef");
            let ca_pem = secret_key(env, r, "ca.crt", &at).await?;
            let cert = secret_key(env, r, "tls.crt", &at).await.ok();
            let key = secret_key(env, r, "tls.key", &at).await.ok();
            Some(Tls {
                ca_pem,
                client: cert.zip(key),
            })
        }
    };
    let settings = Settings {
        broker: spec.broker.clone(),
        topic_namespace: spec
            .topic_namespace
            .clone()
            .unwrap_or_else(|| mqtt::DEFAULT_NAMESPACE.to_string()),
        client_id: spec
            .client_id
            .clone()
            .unwrap_or_else(|| format!("aranya-{device}")),
        keepalive: spec
            .keepalive_seconds
            .map_or(DEFAULT_KEEPALIVE, |s| Duration::from_secs(u64::from(s))),
        max_payload: spec
            .max_payload_size
            .map_or(mqtt::DEFAULT_MAX_PAYLOAD, |p| p as usize),
        connect_timeout: CONNECT_TIMEOUT,
        tls,
        credentials,
    };
    settings.validate().map_err(|e| format!("{field}: {e}"))?;
    Ok(settings)
}

async fn secret_key(env: &Env, r: &SecretRef, key: &str, field: &str) -> Result<Vec<u8>, String> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|e| format!("{field}: reading Secret {}/{}: {e}", env.namespace, r.name))?
        .ok_or_else(|| {
            format!(
                "{field}: Secret {}/{} does not exist",
                env.namespace, r.name
            )
        })?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .ok_or_else(|| {
            format!(
                "{field}: Secret {}/{} has no key {key:?}",
                env.namespace, r.name
            )
        })
}
