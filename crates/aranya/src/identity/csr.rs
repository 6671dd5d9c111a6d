//! A device's certificate the Kubernetes way: aranya files a
//! `certificates.k8s.io/v1` CertificateSigningRequest with its own signer
//! name, approves it itself when the EdgeDevice says `Auto` (an operator
//! does with `kubectl certificate approve` otherwise), and signs it itself.
//! It signs only requests it filed (the apiserver sets `spec.username` to
//! the creator) and re-checks name and identity at signing, so a request
//! someone else made, or a careless approval, never yields a certificate.

use std::time::{Duration, SystemTime};

use ::identity::SIGNER_NAME;
use base64::Engine as _;
use k8s_openapi::{
    ByteString,
    api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::ca::CaStore;

/// Annotations on the requests aranya files.
pub const ANNOTATION_DEVICE: &str = "aranya.arhat.dev/device";
pub const ANNOTATION_IDENTITY: &str = "aranya.arhat.dev/identity";
/// The apiserver refuses shorter lives.
const MIN_LIFETIME: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("CertificateSigningRequest {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "CertificateSigningRequest {name} was not filed by aranya ({username:?}); not signing it"
    )]
    NotOurs { name: String, username: String },
    #[error(
        "CertificateSigningRequest {name} no longer matches device {device:?} and identity {identity}"
    )]
    Stale {
        name: String,
        device: String,
        identity: String,
    },
    #[error("signing CertificateSigningRequest {name}: {source}")]
    Sign {
        name: String,
        #[source]
        source: ::identity::IssueError,
    },
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Signed: the certificate, PEM.
    Issued(String),
    /// Waits for an operator's approval.
    Pending(String),
    /// Denied or failed, with the condition's message.
    Denied { name: String, message: String },
}

/// What a request is for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub device: &'a str,
    pub identity: &'a str,
    /// The device's PKCS#10 request, DER.
    pub csr_der: &'a [u8],
    /// aranya approves it itself.
    pub approve: bool,
    pub lifetime: Duration,
}

/// Files (or finds) the request, approves it when asked to, and signs it
/// once approved.
pub async fn obtain(
    client: &Client,
    ca: &CaStore,
    username: &str,
    request: &Request<'_>,
    current_identity: impl AsyncFnOnce() -> Option<String>,
) -> Result<Outcome, CsrError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let name = name_of(request);
    let kube_err = |source| CsrError::Kube {
        name: name.clone(),
        source,
    };
    let pem = pem_request(request.csr_der);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(
                [
                    (ANNOTATION_DEVICE.to_string(), request.device.to_string()),
                    (
                        ANNOTATION_IDENTITY.to_string(),
                        request.identity.to_string(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(pem.into_bytes()),
            signer_name: SIGNER_NAME.to_string(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            expiration_seconds: i32::try_from(request.lifetime.max(MIN_LIFETIME).as_secs()).ok(),
            ..Default::default()
        },
        status: None,
    };
    let mut current = match api.create(&PostParams::default(), &csr).await {
        Ok(created) => created,
        // Filed on an earlier attempt (a device waiting for approval retries).
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&name).await.map_err(kube_err)?,
        Err(e) => return Err(kube_err(e)),
    };
    if let Some(done) = finished(&current) {
        return Ok(done);
    }
    if condition(&current, "Denied")
        .or_else(|| condition(&current, "Failed"))
        .is_some()
    {
        return Ok(denied(&name, &current));
    }
    if condition(&current, "Approved").is_none() {
        if !request.approve {
            return Ok(Outcome::Pending(name));
        }
        let approval = json!({
            "status": { "conditions": [{
                "type": "Approved",
                "status": "True",
                "reason": "AranyaApproved",
                "message": "the device proved a bootstrap token or its certificate; approved by aranya",
            }] }
        });
        current = api
            .patch_subresource(
                "approval",
                &name,
                &PatchParams::default(),
                &Patch::Merge(&approval),
            )
            .await
            .map_err(kube_err)?;
    }
    sign(&api, ca, username, &current, request, current_identity).await
}

/// Signs an approved request after checking again that aranya filed it,
/// for this device and this identity, and that the identity is still current.
async fn sign(
    api: &Api<CertificateSigningRequest>,
    ca: &CaStore,
    username: &str,
    csr: &CertificateSigningRequest,
    request: &Request<'_>,
    current_identity: impl AsyncFnOnce() -> Option<String>,
) -> Result<Outcome, CsrError> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let filed_by = csr.spec.username.clone().unwrap_or_default();
    if filed_by != username {
        return Err(CsrError::NotOurs {
            name,
            username: filed_by,
        });
    }
    let annotation = |key: &str| {
        csr.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let stale = || CsrError::Stale {
        name: name.clone(),
        device: request.device.to_string(),
        identity: request.identity.to_string(),
    };
    if annotation(ANNOTATION_DEVICE) != request.device
        || annotation(ANNOTATION_IDENTITY) != request.identity
        || key_of_pem(&csr.spec.request.0) != key_of(request.csr_der)
        || current_identity().await.as_deref() != Some(request.identity)
    {
        return Err(stale());
    }
    let pem = ca
        .current()
        .issuer
        .issue(
            request.csr_der,
            request.device,
            request.identity,
            request.lifetime,
            SystemTime::now(),
        )
        .map_err(|source| CsrError::Sign {
            name: name.clone(),
            source,
        })?;
    let status = json!({ "status": {
        "certificate": base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()),
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|source| CsrError::Kube {
            name: name.clone(),
            source,
        })?;
    Ok(Outcome::Issued(pem))
}

/// A certificate already written for this request.
fn finished(csr: &CertificateSigningRequest) -> Option<Outcome> {
    csr.status
        .as_ref()?
        .certificate
        .as_ref()
        .filter(|c| !c.0.is_empty())
        .map(|c| Outcome::Issued(String::from_utf8_lossy(&c.0).into_owned()))
}

fn condition<'a>(
    csr: &'a CertificateSigningRequest,
    type_: &str,
) -> Option<&'a k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn denied(name: &str, csr: &CertificateSigningRequest) -> Outcome {
    let message = condition(csr, "Denied")
        .or_else(|| condition(csr, "Failed"))
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    Outcome::Denied {
        name: name.to_string(),
        message,
    }
}

/// One name per device, identity and key: a device retrying finds its request.
fn name_of(request: &Request<'_>) -> String {
    let mut input = Vec::new();
    input.extend_from_slice(request.device.as_bytes());
    input.push(0);
    input.extend_from_slice(request.identity.as_bytes());
    input.push(0);
    // The key, not the request: a device retrying while it waits for
    // approval asks again with the same key, and must find its request.
    input.extend_from_slice(&key_of(request.csr_der).unwrap_or_else(|| request.csr_der.to_vec()));
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("aranya-device-{hex}")
}

fn key_of(csr_der: &[u8]) -> Option<Vec<u8>> {
    ::identity::issue::request_public_key(csr_der).ok()
}

/// The key of a request as the CSR object holds it (PEM).
fn key_of_pem(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateSigningRequestDer, pem::PemObject as _};
    key_of(
        CertificateSigningRequestDer::from_pem_slice(pem)
            .ok()?
            .as_ref(),
    )
}

fn pem_request(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_per_key_and_valid() {
        let key = ::identity::DeviceKey::generate().expect("key");
        let (one, again) = (
            key.csr_der("edge-1").expect("csr"),
            key.csr_der("edge-1").expect("csr"),
        );
        let other = ::identity::DeviceKey::generate()
            .expect("key")
            .csr_der("edge-1")
            .expect("csr");
        let a = Request {
            device: "edge-1",
            identity: "id",
            csr_der: &one,
            approve: true,
            lifetime: Duration::from_secs(60),
        };
        // ECDSA signs each request anew; a retry with the same key finds it.
        assert_ne!(one, again);
        let retry = Request {
            csr_der: &again,
            ..a.clone()
        };
        let b = Request {
            csr_der: &other,
            ..a.clone()
        };
        assert_eq!(name_of(&a), name_of(&retry));
        assert_ne!(name_of(&a), name_of(&b));
        assert_eq!(name_of(&a).len(), "aranya-device-".len() + 24);
        assert_eq!(key_of_pem(pem_request(&again).as_bytes()), key_of(&one));
    }

    #[test]
    fn pem_requests_parse_back() {
        let key = ::identity::DeviceKey::generate().expect("key");
        let der = key.csr_der("edge-1").expect("csr");
        let pem = pem_request(&der);
        use rustls::pki_types::pem::PemObject as _;
        let parsed =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                .expect("pem");
        assert_eq!(parsed.as_ref(), der.as_slice());
    }
}
