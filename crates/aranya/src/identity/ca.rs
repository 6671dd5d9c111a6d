//! The device CA, shared by every aranya replica through one Secret in
//! aranya's namespace: created by whichever replica needs it first (a create
//! that loses the race reads the winner's), never regenerated, re-read as it
//! changes. A rotation keeps the old CA trusted beside the new one until
//! `prune`, so devices stay connected while their certificates renew.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use ::identity::{DeviceCa, IssueError, TrustStore, VerifyError};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tracing::{info, warn};

/// Default name of the Secret holding the device CA.
pub const DEFAULT_SECRET: &str = "aranya-device-ca";
const CERT_KEY: &str = "ca.crt";
const KEY_KEY: &str = "ca.key";
/// CAs trusted besides the current one: earlier CAs during a rotation.
const TRUSTED_KEY: &str = "trusted.crt";
const COMMON_NAME: &str = "aranya device CA";

/// A new CA, its name telling it from the ones before it (while two are
/// trusted, a certificate of the other one must not be matched to this one
/// by name: it would read as a bad signature, not an unknown CA).
fn new_ca() -> Result<DeviceCa, CaError> {
    let made = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    let tag: u16 = rand::random();
    DeviceCa::generate(&format!("{COMMON_NAME} {made} {tag:04x}")).map_err(CaError::Generate)
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} has no {key}")]
    Missing {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{name}: the CA is unusable: {source}")]
    Unusable {
        namespace: String,
        name: String,
        #[source]
        source: IssueError,
    },
    #[error("Secret {namespace}/{name}: the trusted CAs are unusable: {source}")]
    Trust {
        namespace: String,
        name: String,
        #[source]
        source: VerifyError,
    },
    #[error("generating a device CA: {0}")]
    Generate(#[source] IssueError),
}

/// The CA that signs, and every CA a device certificate may chain to.
#[derive(Debug)]
pub struct Loaded {
    pub issuer: DeviceCa,
    pub trust: TrustStore,
    /// The Secret's resourceVersion, to tell a change from a re-read.
    version: String,
}

/// Where the device CA lives, and its current content.
#[derive(Debug, Clone)]
pub struct CaStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
    current: Arc<RwLock<Arc<Loaded>>>,
}

impl CaStore {
    /// Reads the CA Secret, creating it when no replica has yet.
    pub async fn load_or_create(
        client: Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, CaError> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let kube_err = |source| CaError::Kube {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        };
        let secret = match api.get_opt(name).await.map_err(kube_err)? {
            Some(secret) => secret,
            None => {
                let ca = new_ca()?;
                let secret = ca_secret(name, &ca, "");
                match api.create(&PostParams::default(), &secret).await {
                    Ok(created) => {
                        info!(secret = %format!("{namespace}/{name}"), "created the device CA");
                        created
                    }
                    // Another replica created it first: use its CA.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        api.get(name).await.map_err(kube_err)?
                    }
                    Err(e) => return Err(kube_err(e)),
                }
            }
        };
        let loaded = parse(namespace, name, &secret)?;
        Ok(Self {
            api,
            namespace: namespace.to_string(),
            name: name.to_string(),
            current: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    fn kube_error(&self, source: kube::Error) -> CaError {
        CaError::Kube {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// The Secret as it is now.
    async fn get(&self) -> Result<Secret, CaError> {
        self.api
            .get(&self.name)
            .await
            .map_err(|e| self.kube_error(e))
    }

    /// Writes `secret` back (failing on a concurrent change).
    async fn replace(&self, secret: &Secret) -> Result<(), CaError> {
        self.api
            .replace(&self.name, &PostParams::default(), secret)
            .await
            .map(drop)
            .map_err(|e| self.kube_error(e))
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the Secret every `every`, so a rotation done by another
    /// replica or by `aranya device-ca rotate` reaches this one.
    pub fn spawn_refresh(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = store.refresh().await {
                    warn!(error = %e, "re-reading the device CA; keeping the one loaded");
                }
            }
        })
    }

    async fn refresh(&self) -> Result<(), CaError> {
        let secret = self.get().await?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        if version == self.current().version {
            return Ok(());
        }
        let loaded = parse(&self.namespace, &self.name, &secret)?;
        info!(
            trusted = loaded.trust.certificates().len(),
            "device CA changed"
        );
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Ok(())
    }
}

/// A new CA signs from now on; the current one (and any still trusted) stays
/// trusted, so certificates it issued keep working until they renew.
pub async fn rotate(client: Client, namespace: &str, name: &str) -> Result<(), CaError> {
    let store = CaStore::load_or_create(client, namespace, name).await?;
    let mut secret = store.get().await?;
    let data = secret.data.get_or_insert_default();
    let mut trusted = text(data, CERT_KEY);
    trusted.push_str(&text(data, TRUSTED_KEY));
    let ca = new_ca()?;
    let fresh = ca_secret(name, &ca, &trusted);
    secret.data = fresh.data;
    // resourceVersion kept: a concurrent change makes this fail, not vanish.
    store.replace(&secret).await
}

/// Stops trusting every CA but the current one (after a rotation, once
/// every device renewed).
pub async fn prune(client: Client, namespace: &str, name: &str) -> Result<usize, CaError> {
    let store = CaStore::load_or_create(client, namespace, name).await?;
    let mut secret = store.get().await?;
    let data = secret.data.get_or_insert_default();
    let dropped = store.current().trust.certificates().len().saturating_sub(1);
    data.insert(TRUSTED_KEY.to_string(), ByteString(Vec::new()));
    store.replace(&secret).await?;
    Ok(dropped)
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> String {
    data.get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

fn ca_secret(name: &str, ca: &DeviceCa, trusted: &str) -> Secret {
    let data = [
        (CERT_KEY, ca.cert_pem().to_string()),
        (KEY_KEY, ca.key_pem()),
        (TRUSTED_KEY, trusted.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "aranya".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

fn parse(namespace: &str, name: &str, secret: &Secret) -> Result<Loaded, CaError> {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let get = |key: &'static str| {
        data.get(key)
            .filter(|v| !v.0.is_empty())
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .ok_or(CaError::Missing {
                namespace: namespace.to_string(),
                name: name.to_string(),
                key,
            })
    };
    let cert = get(CERT_KEY)?;
    let key = get(KEY_KEY)?;
    let issuer = DeviceCa::from_pem(&cert, &key).map_err(|source| CaError::Unusable {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    })?;
    let bundle = format!("{cert}{}", text(data, TRUSTED_KEY));
    let trust = TrustStore::from_pem(bundle.as_bytes()).map_err(|source| CaError::Trust {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    })?;
    Ok(Loaded {
        issuer,
        trust,
        version: secret.metadata.resource_version.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_round_trips_and_keeps_old_cas_trusted() {
        let old = DeviceCa::generate("old").expect("ca");
        let new = DeviceCa::generate("new").expect("ca");
        let secret = ca_secret("ca", &new, old.cert_pem());
        let loaded = parse("ns", "ca", &secret).expect("parses");
        assert_eq!(loaded.issuer.cert_pem(), new.cert_pem());
        assert_eq!(loaded.trust.certificates().len(), 2);
    }

    #[test]
    fn a_secret_without_its_key_names_what_is_missing() {
        let ca = DeviceCa::generate("ca").expect("ca");
        let mut secret = ca_secret("ca", &ca, "");
        secret.data.as_mut().expect("data").remove(KEY_KEY);
        let err = parse("ns", "ca", &secret).expect_err("no key");
        assert_eq!(err.to_string(), "Secret ns/ca has no ca.key");
    }
}
