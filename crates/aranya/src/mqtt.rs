//! aranya's broker connections: one for every EdgeDevice that lists an `mqtt`
//! method, started with its virtual node and restarted when the settings or
//! a Secret they read change (rotated credentials or certificates). The
//! device's links arrive at the hub like gRPC ones.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

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
        // Taken before the Secrets are read, so a change while reading is
        // not missed.
        let snapshot = Snapshot::take(env.secrets.clone(), names.clone());
        let (settings, read) = match resolve(&env, &device, &spec).await {
            Ok((settings, read)) => (Ok(settings), Some(read)),
            Err(e) => (Err(e), None),
        };
        // Also ends the wait after a failure: a fixed Secret is used at once.
        let mut changed = std::pin::pin!(snapshot.changed(read));
        let outcome = match settings {
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

/// The watch's view of the Secrets a device's settings name.
struct Snapshot {
    versions: watch::Receiver<Option<SecretVersions>>,
    names: Vec<String>,
    /// Their versions (None: missing), or None before the first listing.
    seen: Option<Vec<Option<String>>>,
}

impl Snapshot {
    fn take(mut versions: watch::Receiver<Option<SecretVersions>>, names: Vec<String>) -> Self {
        let seen = of(&names, &versions.borrow_and_update());
        Self {
            versions,
            names,
            seen,
        }
    }

    /// Resolves once a Secret changes, appears or goes away after the
    /// snapshot. Taken before the first listing, that listing is compared
    /// with the versions `read` meanwhile, if any.
    async fn changed(mut self, read: Option<SecretVersions>) {
        let read = of(&self.names, &read);
        loop {
            if self.versions.changed().await.is_err() {
                // No more watch: no more reconnects for Secrets.
                return std::future::pending().await;
            }
            let now = of(&self.names, &self.versions.borrow_and_update());
            match (&self.seen, now) {
                (None, Some(now)) if read.as_ref().is_some_and(|r| *r != now) => return,
                (None, now) => self.seen = now,
                (Some(before), Some(now)) if *before != now => return,
                _ => {}
            }
        }
    }
}

/// The versions of `names` in `versions` (None: missing), if listed.
fn of(names: &[String], versions: &Option<SecretVersions>) -> Option<Vec<Option<String>>> {
    versions
        .as_ref()
        .map(|v| names.iter().map(|n| v.get(n).cloned()).collect())
}

/// The transport's settings, with the Secrets read (each once, so a key is
/// never paired with another version's), and the versions read. Errors name
/// the field.
async fn resolve(
    env: &Env,
    device: &str,
    spec: &MqttSettings,
) -> Result<(Settings, SecretVersions), String> {
    let field = "spec.connectivity.methods[name=mqtt].mqtt";
    let mut read = SecretVersions::new();
    let credentials = match &spec.credentials_secret_ref {
        None => None,
        Some(r) => {
            let at = format!("{field}.credentialsSecretRef");
            let secret = read_secret(env, r, &at).await?;
            let username = secret.key("username")?;
            let password = secret.key("password")?;
            read.insert(r.name.clone(), secret.version());
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
            let secret = read_secret(env, r, &at).await?;
            let ca_pem = secret.key("ca.crt")?;
            let client = secret.key("tls.crt").ok().zip(secret.key("tls.key").ok());
            read.insert(r.name.clone(), secret.version());
            Some(Tls { ca_pem, client })
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
    Ok((settings, read))
}

/// A Secret that settings name, and where they name it.
struct Named<'a> {
    secret: Secret,
    field: &'a str,
    env: &'a Env,
}

async fn read_secret<'a>(env: &'a Env, r: &SecretRef, field: &'a str) -> Result<Named<'a>, String> {
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
    Ok(Named { secret, field, env })
}

impl Named<'_> {
    fn key(&self, key: &str) -> Result<Vec<u8>, String> {
        self.secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .ok_or_else(|| {
                format!(
                    "{}: Secret {}/{} has no key {key:?}",
                    self.field,
                    self.env.namespace,
                    self.secret.metadata.name.as_deref().unwrap_or_default()
                )
            })
    }

    fn version(&self) -> String {
        self.secret
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(pairs: &[(&str, &str)]) -> SecretVersions {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Whether `changed` has resolved after the watch moved through `steps`.
    async fn resolved_after(
        at_snapshot: Option<SecretVersions>,
        read: Option<SecretVersions>,
        steps: &[Option<SecretVersions>],
    ) -> bool {
        let (tx, rx) = watch::channel(at_snapshot);
        let snapshot = Snapshot::take(rx, vec!["login".into()]);
        let mut changed = std::pin::pin!(snapshot.changed(read));
        for step in steps {
            tx.send_replace(step.clone());
            let poll = futures::poll!(changed.as_mut());
            if poll.is_ready() {
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn a_change_during_the_first_read_is_seen_in_the_listing() {
        let read = Some(versions(&[("login", "1")]));
        let listing = Some(versions(&[("login", "2")]));
        assert!(resolved_after(None, read, &[listing]).await);
    }

    #[tokio::test]
    async fn a_listing_of_what_was_read_changes_nothing() {
        let read = Some(versions(&[("login", "1")]));
        let listing = Some(versions(&[("login", "1"), ("other", "7")]));
        assert!(!resolved_after(None, read.clone(), std::slice::from_ref(&listing)).await);
        // A later change of the Secret still counts.
        let later = Some(versions(&[("login", "3"), ("other", "7")]));
        assert!(resolved_after(None, read, &[listing, later]).await);
    }

    #[tokio::test]
    async fn only_the_named_secrets_count() {
        let listed = Some(versions(&[("login", "1")]));
        let other = Some(versions(&[("login", "1"), ("other", "1")]));
        assert!(!resolved_after(listed.clone(), None, std::slice::from_ref(&other)).await);
        let gone = Some(versions(&[("other", "1")]));
        assert!(resolved_after(listed, None, &[other, gone]).await);
    }

    #[tokio::test]
    async fn after_a_failed_read_the_first_listing_is_the_baseline() {
        let listing = Some(versions(&[("login", "1")]));
        let created = Some(versions(&[("login", "2")]));
        assert!(!resolved_after(None, None, std::slice::from_ref(&listing)).await);
        assert!(resolved_after(None, None, &[listing, created]).await);
    }
}
