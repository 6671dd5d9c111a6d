//! A kubelet serving certificate per virtual node: a `certificates.k8s.io/v1`
//! CSR with signer `kubernetes.io/kubelet-serving`, CN `system:node:<name>`,
//! O `system:nodes`, SANs for the advertised address; aranya approves its own
//! request and renews well before expiry.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use k8s_openapi::{
    ByteString,
    api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use serde_json::json;
use tracing::{info, warn};

pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Label on aranya's CSRs naming the node they are for.
pub const LABEL_NODE: &str = "aranya.arhat.dev/serving-node";
/// Lifetime asked for; renewed at two thirds of it.
pub const LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("building the request: {0}")]
    Request(#[from] rcgen::Error),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("CSR {name} was denied or failed: {reason}")]
    Refused { name: String, reason: String },
    #[error(
        "CSR {0} was not signed within {ISSUE_TIMEOUT:?} (is the controller-manager signing kubelet-serving CSRs?)"
    )]
    NotSigned(String),
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Serving {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

/// The current serving certificate of every node, for the listener to present.
#[derive(Debug, Clone, Default)]
pub struct ServingCerts(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    certs: RwLock<HashMap<String, Serving>>,
    /// Woken whenever a certificate is set.
    issued: tokio::sync::Notify,
}

impl ServingCerts {
    pub fn get(&self, node: &str) -> Option<Serving> {
        self.0.certs.read().ok()?.get(node).cloned()
    }

    pub(super) fn set(&self, node: &str, serving: Serving) {
        if let Ok(mut map) = self.0.certs.write() {
            map.insert(node.to_string(), serving);
        }
        self.0.issued.notify_waiters();
    }

    pub fn remove(&self, node: &str) {
        if let Ok(mut map) = self.0.certs.write() {
            map.remove(node);
        }
    }

    /// Waits until `node` has a signed certificate or `limit` passes; true
    /// when it has one.
    pub async fn issued(&self, node: &str, limit: Duration) -> bool {
        let waiting = async {
            loop {
                // Registered before the check, so a `set` in between wakes it.
                let notified = self.0.issued.notified();
                if self.get(node).is_some() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, waiting).await.is_ok()
    }

    /// Keeps `node`'s certificate fresh until the task is aborted: obtains one,
    /// then renews at two thirds of its lifetime (sooner after a failure).
    pub async fn maintain(self, client: Client, node: String, addresses: Vec<IpAddr>) {
        loop {
            let wait = match obtain(&client, &node, &addresses).await {
                Ok(serving) => {
                    info!(%node, "kubelet serving certificate issued");
                    self.set(&node, serving);
                    LIFETIME * 2 / 3
                }
                Err(e) => {
                    warn!(%node, error = %e, "obtaining the kubelet serving certificate");
                    Duration::from_secs(30)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Requests, approves and collects one serving certificate for `node`.
pub async fn obtain(
    client: &Client,
    node: &str,
    addresses: &[IpAddr],
) -> Result<Serving, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, format!("system:node:{node}"));
    subject.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name = subject;
    params.subject_alt_names = addresses.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    let request = params.serialize_request(&key)?.pem()?;

    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let name = format!("aranya-serving-{node}-{:08x}", rand::random::<u32>());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(LABEL_NODE.to_string(), node.to_string())].into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "server auth".into()]),
            expiration_seconds: i32::try_from(LIFETIME.as_secs()).ok(),
            ..Default::default()
        },
        status: None,
    };
    api.create(&PostParams::default(), &csr).await?;
    let approval = json!({
        "status": { "conditions": [{
            "type": "Approved",
            "status": "True",
            "reason": "AranyaApproved",
            "message": "kubelet serving certificate of a virtual node, approved by aranya",
        }] }
    });
    api.patch_subresource(
        "approval",
        &name,
        &PatchParams::default(),
        &Patch::Merge(&approval),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + ISSUE_TIMEOUT;
    loop {
        let current = api.get(&name).await?;
        let status = current.status.unwrap_or_default();
        if let Some(refused) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(CertError::Refused {
                name,
                reason: refused.message.clone().unwrap_or_default(),
            });
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return Ok(Serving {
                cert_pem: String::from_utf8_lossy(&cert.0).into_owned(),
                key_pem: key.serialize_pem(),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CertError::NotSigned(name));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving() -> Serving {
        Serving {
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn issued_waits_for_the_nodes_certificate_within_its_limit() {
        let certs = ServingCerts::default();
        assert!(!certs.issued("edge-1", Duration::from_secs(6)).await);

        let setter = certs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            setter.set("edge-2", serving());
            tokio::time::sleep(Duration::from_secs(1)).await;
            setter.set("edge-1", serving());
        });
        let started = tokio::time::Instant::now();
        assert!(certs.issued("edge-1", Duration::from_secs(6)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // Already there: no wait.
        assert!(certs.issued("edge-1", Duration::ZERO).await);
    }
}
