//! aranya's broker connections: one for every EdgeDevice that lists an `mqtt`
//! method, started with its virtual node and restarted when the settings or
//! a Secret they read change (rotated credentials or certificates). The
//! device's links arrive at the hub like gRPC ones.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use futures::StreamExt;

use connectivity::{
    Link,
    mqtt::{self, Credentials, Settings, Tls},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{mpsc, watch};
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
    /// The Secrets in `namespace` and their resource versions, once listed.
    pub secrets: watch::Receiver<Option<SecretVersions>>,
}

/// Secret name to resourceVersion.
pub type SecretVersions = BTreeMap<String, String>;

/// Keeps `versions` up to date with the Secrets in `namespace`: one watch of
/// their metadata for every connector (the data is read only on connecting).
pub async fn watch_secrets(
    client: kube::Client,
    namespace: String,
    versions: watch::Sender<Option<SecretVersions>>,
) {
    let secrets: Api<PartialObjectMeta<Secret>> = Api::namespaced(client, &namespace);
    let mut events = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing = SecretVersions::new();
    let version = |m: &kube::core::ObjectMeta| {
        Some((
            m.name.clone()?,
            m.resource_version.clone().unwrap_or_default(),
        ))
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(s)) => listing.extend(version(&s.metadata)),
            Ok(watcher::Event::InitDone) => {
                versions.send_replace(Some(std::mem::take(&mut listing)));
            }
            Ok(watcher::Event::Apply(s)) => versions.send_modify(|v| {
                if let (Some(v), Some((name, rv))) = (v.as_mut(), version(&s.metadata)) {
                    v.insert(name, rv);
                }
            }),
            Ok(watcher::Event::Delete(s)) => versions.send_modify(|v| {
                if let (Some(v), Some(name)) = (v.as_mut(), s.metadata.name.as_ref()) {
                    v.remove(name);
                }
            }),
            Err(e) => warn!(error = %e, "watching Secrets for MQTT settings"),
        }
    }
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
    let names: Vec<String> = [&spec.credentials_secret_ref, &spec.tls_secret_ref]
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect();
    loop {
        // Also ends the wait after a failure: a fixed Secret is used at once.
        let mut changed = std::pin::pin!(secrets_changed(env.secrets.clone(), names.clone()));
        let outcome = match resolve(&env, &device, &spec).await {
            Ok(settings) => mqtt::serve_device(
                settings,
                device.clone(),
                env.links.clone(),
                changed.as_mut(),
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            warn!(error = %e, retry_in = ?RETRY, "MQTT connectivity for the device");
            tokio::select! {
                () = tokio::time::sleep(RETRY) => continue,
                () = changed => {}
            }
        }
        info!(secrets = ?names, "a Secret of the MQTT settings changed: reconnecting");
    }
}

/// Resolves once a Secret in `names` changes, appears or goes away after
/// this call (or, before the first listing, after that listing).
fn secrets_changed(
    mut versions: watch::Receiver<Option<SecretVersions>>,
    names: Vec<String>,
) -> impl Future<Output = ()> {
    let of = move |v: &Option<SecretVersions>| {
        v.as_ref()
            .map(|v| names.iter().map(|n| v.get(n).cloned()).collect::<Vec<_>>())
    };
    let mut seen = of(&versions.borrow_and_update());
    async move {
        loop {
            if versions.changed().await.is_err() {
                // No more watch: no more reconnects for Secrets.
                return std::future::pending().await;
            }
            let now = of(&versions.borrow_and_update());
            match (&seen, now) {
                (None, now) => seen = now,
                (Some(before), Some(now)) if *before != now => return,
                _ => {}
            }
        }
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
