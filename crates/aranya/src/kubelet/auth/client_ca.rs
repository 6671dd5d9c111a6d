//! The CAs whose client certificates authenticate kubelet callers, and a
//! chain verified against them as the apiserver's x509 authenticator does.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use rustls::{
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject},
};
use tracing::{info, warn};

use super::{Identity, hex, sha256};

/// Where a kubelet-like component finds the cluster's client CA in-cluster.
pub const CA_CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CA_CONFIGMAP_NAME: &str = "extension-apiserver-authentication";
pub const CA_CONFIGMAP_KEY: &str = "client-ca-file";

/// `user.Extra` key naming the credential, as the apiserver's x509
/// authenticator sets it (SHA-256 of the leaf certificate).
const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";
/// Kubernetes' subject attribute carrying a user UID (`AllowParsingUserUIDFromCertAuth`).
const UID_OID: &str = "1.3.6.1.4.1.57683.2";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading ConfigMap {CA_CONFIGMAP_NAMESPACE}/{CA_CONFIGMAP_NAME}: {0}")]
    Kube(#[from] kube::Error),
    #[error("ConfigMap {CA_CONFIGMAP_NAMESPACE}/{CA_CONFIGMAP_NAME} has no {CA_CONFIGMAP_KEY}")]
    Missing,
    #[error("client CA bundle: {0}")]
    Pem(String),
    #[error("client CA bundle holds no usable certificate")]
    Empty,
}

/// The CAs whose client certificates authenticate callers; replaced as a
/// whole when the bundle changes, so a CA rotation needs no restart.
#[derive(Clone, Default)]
pub struct ClientCa(Arc<RwLock<Bundle>>);

#[derive(Default)]
struct Bundle {
    anchors: Arc<[TrustAnchor<'static>]>,
    /// SHA-256 of the PEM it came from, to tell a change from a re-read.
    digest: Option<[u8; 32]>,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa")
            .field("anchors", &self.len())
            .finish()
    }
}

impl ClientCa {
    /// Trusts nothing: every client certificate is refused (tokens still work).
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, CaError> {
        let ca = Self::empty();
        ca.replace_pem(pem)?;
        Ok(ca)
    }

    /// A PEM file (`--kubelet-client-ca`).
    pub fn from_pem_file(path: &Path) -> Result<Self, CaError> {
        let pem = std::fs::read(path).map_err(|source| CaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem)
    }

    /// `client-ca-file` of ConfigMap kube-system/extension-apiserver-authentication
    /// (aranya needs `get` on it: Role extension-apiserver-authentication-reader).
    pub async fn from_cluster(client: &Client) -> Result<Self, CaError> {
        let ca = Self::empty();
        ca.refresh_from_cluster(client).await?;
        Ok(ca)
    }

    /// Number of trusted CA certificates.
    pub fn len(&self) -> usize {
        self.read().anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Swaps in the bundle `pem`; `Ok(true)` if it differs from the current
    /// one. A bundle without a usable certificate is refused and the current
    /// one kept.
    pub fn replace_pem(&self, pem: &[u8]) -> Result<bool, CaError> {
        let digest = sha256(pem);
        if self.read().digest == Some(digest) {
            return Ok(false);
        }
        let mut anchors = Vec::new();
        for (i, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let der = der.map_err(|e| CaError::Pem(e.to_string()))?;
            match webpki::anchor_from_trusted_cert(&der) {
                Ok(anchor) => anchors.push(anchor.to_owned()),
                // Like Go's AppendCertsFromPEM: skip what cannot be used.
                Err(e) => warn!(index = i, error = %e, "client CA bundle: certificate skipped"),
            }
        }
        if anchors.is_empty() {
            return Err(CaError::Empty);
        }
        let mut bundle = self.0.write().unwrap_or_else(PoisonError::into_inner);
        *bundle = Bundle {
            anchors: anchors.into(),
            digest: Some(digest),
        };
        Ok(true)
    }

    pub async fn refresh_from_cluster(&self, client: &Client) -> Result<bool, CaError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), CA_CONFIGMAP_NAMESPACE);
        let cm = api.get(CA_CONFIGMAP_NAME).await?;
        let pem = cm
            .data
            .as_ref()
            .and_then(|data| data.get(CA_CONFIGMAP_KEY))
            .ok_or(CaError::Missing)?;
        self.replace_pem(pem.as_bytes())
    }

    pub async fn refresh_from_file(&self, path: &Path) -> Result<bool, CaError> {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|source| CaError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        self.replace_pem(&pem)
    }

    /// Re-reads the bundle from the cluster every `interval` until the task
    /// is aborted; a failed read keeps the current bundle.
    pub fn spawn_refresh(&self, client: Client, interval: Duration) -> tokio::task::JoinHandle<()> {
        let ca = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                ca.log_refresh(ca.refresh_from_cluster(&client).await);
            }
        })
    }

    /// Like [`ClientCa::spawn_refresh`], from a PEM file.
    pub fn spawn_refresh_file(
        &self,
        path: PathBuf,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let ca = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                ca.log_refresh(ca.refresh_from_file(&path).await);
            }
        })
    }

    fn log_refresh(&self, outcome: Result<bool, CaError>) {
        match outcome {
            Ok(true) => info!(anchors = self.len(), "client CA bundle changed"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "refreshing the client CA bundle; keeping the current one"),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Bundle> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn anchors(&self) -> Arc<[TrustAnchor<'static>]> {
        self.read().anchors.clone()
    }
}

/// Verifies `chain` (leaf first, then intermediates as the client sent them)
/// for client authentication at `now` and names its subject, as the
/// apiserver's x509 authenticator does: user = CN, groups = O, uid from the
/// Kubernetes UID attribute, credential id = SHA-256 of the leaf.
pub(super) fn verify_chain(
    anchors: &[TrustAnchor<'_>],
    algs: &WebPkiSupportedAlgorithms,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<Identity, String> {
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    let end_entity = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("parsing the certificate: {e}"))?;
    end_entity
        .verify_for_usage(
            algs.all,
            anchors,
            intermediates,
            now,
            // Like Go's ExtKeyUsageClientAuth: a certificate without EKUs passes.
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| format!("verifying the certificate: {e}"))?;

    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("parsing the certificate: {e}"))?;
    let subject = cert.subject();
    // Go's pkix.Name keeps the last CN.
    let user = subject
        .iter_common_name()
        .filter_map(|attr| attr.as_str().ok())
        .last()
        .unwrap_or_default()
        .to_string();
    if user.is_empty() {
        return Err("the certificate's subject has no common name".to_string());
    }
    let groups = subject
        .iter_organization()
        .filter_map(|attr| attr.as_str().ok().map(str::to_string))
        .collect();
    let mut uids = subject
        .iter_attributes()
        .filter(|attr| attr.attr_type().to_id_string() == UID_OID);
    let uid = match (uids.next(), uids.next()) {
        (None, _) => String::new(),
        (Some(attr), None) => attr
            .as_str()
            .map_err(|_| "the certificate's UID is not a string".to_string())?
            .to_string(),
        (Some(_), Some(_)) => return Err("the certificate has more than one UID".to_string()),
    };
    let credential = format!("X509SHA256={}", hex(&sha256(leaf.as_ref())));
    Ok(Identity {
        user,
        groups,
        uid,
        extra: BTreeMap::from([(CREDENTIAL_ID_KEY.to_string(), vec![credential])]),
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::auth::test_support::*;
    use rcgen::{DnType, ExtendedKeyUsagePurpose};

    #[test]
    fn trusted_client_certificate_names_user_and_groups() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        assert_eq!(bundle.len(), 1);
        let cert = leaf(&root);
        let who = verify(&bundle, std::slice::from_ref(&cert)).expect("trusted");
        assert_eq!(who.user, "system:kube-apiserver");
        assert_eq!(who.groups, ["system:masters", "kubeadm:cluster-admins"]);
        assert_eq!(who.uid, "");
        let credential = &who.extra[CREDENTIAL_ID_KEY];
        assert_eq!(
            credential,
            &vec![format!("X509SHA256={}", hex(&sha256(cert.as_ref())))]
        );
    }

    #[test]
    fn certificate_from_another_ca_is_refused() {
        let bundle = ClientCa::from_pem(ca("client-ca").pem.as_bytes()).expect("bundle");
        let foreign = leaf(&ca("client-ca"));
        assert!(verify(&bundle, &[foreign]).is_err());
        assert!(verify(&ClientCa::empty(), &[leaf(&ca("x"))]).is_err());
    }

    #[test]
    fn expired_certificate_is_refused() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let (expired, _) = leaf_with(&root, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        });
        let err = verify(&bundle, &[expired]).expect_err("expired");
        assert!(err.contains("Expired"), "{err}");
    }

    #[test]
    fn certificate_without_client_auth_usage_is_refused() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let (server_only, _) = leaf_with(&root, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        });
        assert!(verify(&bundle, &[server_only]).is_err());
        // No EKU at all is good for any use, as in Go.
        let (any_use, _) = leaf_with(&root, |p| p.extended_key_usages.clear());
        assert!(verify(&bundle, &[any_use]).is_ok());
    }

    #[test]
    fn certificate_without_common_name_is_refused() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let (nameless, _) = leaf_with(&root, |p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name
                .push(DnType::OrganizationName, "system:masters");
        });
        assert!(verify(&bundle, &[nameless]).is_err());
    }

    #[test]
    fn uid_attribute_becomes_the_uid() {
        let root = ca("client-ca");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let uid_type = DnType::CustomDnType(vec![1, 3, 6, 1, 4, 1, 57683, 2]);
        let (with_uid, _) = leaf_with(&root, |p| {
            p.distinguished_name.push(uid_type.clone(), "1234-abcd");
        });
        let who = verify(&bundle, &[with_uid]).expect("trusted");
        assert_eq!(who.uid, "1234-abcd");
    }

    #[test]
    fn bundle_with_two_cas_trusts_both() {
        let (a, b) = (ca("ca-a"), ca("ca-b"));
        let pem = format!("{}\n{}", a.pem, b.pem);
        let bundle = ClientCa::from_pem(pem.as_bytes()).expect("bundle");
        assert_eq!(bundle.len(), 2);
        assert!(verify(&bundle, &[leaf(&a)]).is_ok());
        assert!(verify(&bundle, &[leaf(&b)]).is_ok());
        assert!(verify(&bundle, &[leaf(&ca("ca-c"))]).is_err());
    }

    #[test]
    fn intermediates_come_from_the_presented_chain() {
        let root = ca("root");
        let (mid, mid_der) = intermediate(&root, "intermediate");
        let bundle = ClientCa::from_pem(root.pem.as_bytes()).expect("bundle");
        let cert = leaf(&mid);
        assert!(verify(&bundle, &[cert.clone(), mid_der]).is_ok());
        assert!(verify(&bundle, &[cert]).is_err());
    }

    #[test]
    fn bundle_replacement() {
        let (a, b) = (ca("ca-a"), ca("ca-b"));
        let bundle = ClientCa::from_pem(a.pem.as_bytes()).expect("bundle");
        let shared = bundle.clone();
        assert!(!bundle.replace_pem(a.pem.as_bytes()).expect("same"));
        assert!(bundle.replace_pem(b.pem.as_bytes()).expect("changed"));
        // Clones share the bundle: a rotation reaches every listener.
        assert!(verify(&shared, &[leaf(&a)]).is_err());
        assert!(verify(&shared, &[leaf(&b)]).is_ok());
        // Garbage or nothing usable keeps what there was.
        assert!(bundle.replace_pem(b"no certificates here").is_err());
        assert!(
            bundle
                .replace_pem(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(verify(&shared, &[leaf(&b)]).is_ok());
        assert!(ClientCa::from_pem(b"").is_err());
    }

    #[tokio::test]
    async fn bundle_from_file() {
        let root = ca("client-ca");
        let dir = std::env::temp_dir().join(format!("aranya-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("client-ca.pem");
        std::fs::write(&path, &root.pem).expect("write");
        let bundle = ClientCa::from_pem_file(&path).expect("load");
        assert!(verify(&bundle, &[leaf(&root)]).is_ok());
        let rotated = ca("client-ca-2");
        std::fs::write(&path, &rotated.pem).expect("write");
        assert!(bundle.refresh_from_file(&path).await.expect("refresh"));
        assert!(verify(&bundle, &[leaf(&rotated)]).is_ok());
        let missing = ClientCa::from_pem_file(&dir.join("absent"));
        assert!(matches!(missing, Err(CaError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
