//! Certificates and a fake apiserver for the tests of this module tree.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use http::HeaderValue;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::{
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, UnixTime},
};

use super::{
    Auth, ClientCa, Identity,
    client_ca::verify_chain,
    review::{Access, Decision, Reviewer},
};

// --- certificates --------------------------------------------------------

pub(super) struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) pem: String,
}

pub(super) fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        issuer: Issuer::new(params, key),
        pem: cert.pem(),
    }
}

pub(super) fn intermediate(parent: &Ca, name: &str) -> (Ca, CertificateDer<'static>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.signed_by(&key, &parent.issuer).expect("signed");
    let der = cert.der().clone();
    (
        Ca {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        },
        der,
    )
}

pub(super) fn leaf_with(
    ca: &Ca,
    edit: impl FnOnce(&mut CertificateParams),
) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "system:kube-apiserver");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    // rcgen keeps one value per type; the O OID as a custom type adds a second O.
    params.distinguished_name.push(
        DnType::CustomDnType(vec![2, 5, 4, 10]),
        "kubeadm:cluster-admins",
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    edit(&mut params);
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    (cert.der().clone(), key)
}

pub(super) fn leaf(ca: &Ca) -> CertificateDer<'static> {
    leaf_with(ca, |_| {}).0
}

pub(super) fn algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

pub(super) fn verify(ca: &ClientCa, chain: &[CertificateDer<'static>]) -> Result<Identity, String> {
    verify_chain(&ca.anchors(), &algs(), chain, UnixTime::now())
}

// --- Auth with a fake apiserver ------------------------------------------

#[derive(Debug, Default)]
pub(super) struct Fake {
    /// Token → identity it stands for; others are rejected.
    pub(super) tokens: HashMap<String, Identity>,
    /// Subresources allowed for everyone.
    pub(super) allowed: Vec<&'static str>,
    pub(super) fail: bool,
    pub(super) token_calls: Mutex<usize>,
    pub(super) access_calls: Mutex<Vec<&'static str>>,
}

impl Reviewer for Arc<Fake> {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<Identity>, String>> {
        *self.token_calls.lock().expect("lock") += 1;
        let result = if self.fail {
            Err("apiserver down".to_string())
        } else {
            Ok(self.tokens.get(token).cloned())
        };
        Box::pin(async move { result })
    }

    fn review_access<'a>(&'a self, access: &'a Access) -> BoxFuture<'a, Result<Decision, String>> {
        self.access_calls
            .lock()
            .expect("lock")
            .push(access.subresource);
        let result = if self.fail {
            Err("apiserver down".to_string())
        } else {
            let allowed = self.allowed.contains(&access.subresource);
            Ok(Decision {
                allowed,
                reason: if allowed {
                    String::new()
                } else {
                    "no RBAC policy matched".to_string()
                },
            })
        };
        Box::pin(async move { result })
    }
}

pub(super) fn fake_auth(fake: Fake, ca: ClientCa) -> (Auth, Arc<Fake>) {
    let fake = Arc::new(fake);
    (Auth::with_reviewer(Box::new(fake.clone()), ca), fake)
}

pub(super) fn metrics_server() -> Identity {
    Identity {
        user: "system:serviceaccount:kube-system:metrics-server".to_string(),
        groups: vec!["system:serviceaccounts".to_string()],
        uid: "u-1".to_string(),
        extra: BTreeMap::new(),
    }
}

pub(super) fn header(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
}
