//! Device identity on aranya's side: every link proves which device it is
//! before a session starts, and devices get their certificates here.
//!
//! - [`ca`]: the device CA Secret all replicas share; rotation.
//! - [`token`]: bootstrap tokens bound to one EdgeDevice.
//! - [`csr`]: CertificateSigningRequests filed, approved and signed.
//! - [`status`]: the identity id and certificate in the EdgeDevice's status.
//!
//! [`Service::authenticate`] checks a session's Hello (certificate chain,
//! name, identity id, and the proof over aranya's nonce);
//! [`Service::bootstrap`] answers a device without a certificate;
//! [`Service::renew`] a device renewing over its session.

pub mod ca;
pub mod csr;
pub mod status;
pub mod token;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use ::identity::{DeviceCert, TrustStore, VerifyError, proof};
use connectivity::{
    ClientAuth, Link,
    handshake::{self, ReceivedHello},
    tls::ClientCertCheck,
};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use proto::envelope::RefuseReason;
use tracing::{info, warn};

use crate::crd::{Approval, EdgeDevice};
use ca::CaStore;

const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error("finding out who aranya is to the apiserver (SelfSubjectReview): {0}")]
    WhoAmI(#[source] kube::Error),
}

/// Why a link is not let in: sent to the device, and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefuseReason,
    pub message: String,
}

impl Refusal {
    fn new(reason: RefuseReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// How aranya authenticates devices and issues their certificates.
pub struct Service {
    client: Client,
    namespace: String,
    ca: CaStore,
    lifetime: Duration,
    /// Who aranya is to the apiserver: the requests it files carry it.
    username: String,
    devices: Api<EdgeDevice>,
    recorder: Recorder,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("namespace", &self.namespace)
            .field("lifetime", &self.lifetime)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub async fn new(
        client: Client,
        namespace: &str,
        ca_secret: &str,
        lifetime: Duration,
    ) -> Result<Arc<Self>, IdentityError> {
        let ca = CaStore::load_or_create(client.clone(), namespace, ca_secret).await?;
        ca.spawn_refresh(Duration::from_secs(30));
        let review: Api<SelfSubjectReview> = Api::all(client.clone());
        let me = review
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .map_err(IdentityError::WhoAmI)?;
        let username = me
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default();
        info!(%username, "device identity ready");
        Ok(Arc::new(Self {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "aranya".into(),
                    instance: None,
                },
            ),
            devices: Api::all(client.clone()),
            client,
            namespace: namespace.to_string(),
            ca,
            lifetime,
            username,
        }))
    }

    /// The device CAs trusted now (a rotation trusts two).
    pub fn trust(&self) -> TrustStore {
        self.ca.current().trust.clone()
    }

    /// Which client certificates the gRPC listener accepts: one from a
    /// device CA trusted at that moment (so a rotation needs no restart).
    pub fn client_cert_check(&self) -> Arc<dyn ClientCertCheck> {
        Arc::new(DeviceCaCheck(self.ca.clone()))
    }

    /// Checks a session's Hello: a certificate from a trusted device CA,
    /// naming this device and its current identity `expected`, and the
    /// device's signature over aranya's challenge.
    pub async fn authenticate(
        &self,
        link: &mut Link,
        received: &ReceivedHello,
        expected: Option<&str>,
    ) -> Result<DeviceCert, Refusal> {
        let hello = &received.hello;
        if hello.certificate.is_empty() {
            return Err(Refusal::new(
                RefuseReason::CertificateRequired,
                format!(
                    "a session needs a device certificate; bootstrap with a token first (aranya bootstrap-token create --device {})",
                    hello.device
                ),
            ));
        }
        match &link.client_auth {
            ClientAuth::NotVisible => {}
            ClientAuth::Anonymous => {
                return Err(Refusal::new(
                    RefuseReason::CertificateRequired,
                    "a session over gRPC needs the device certificate as the TLS client certificate (a load balancer in front of aranya must pass TLS through)",
                ));
            }
            ClientAuth::Certificate(tls) if tls[..] != hello.certificate[..] => {
                return Err(Refusal::new(
                    RefuseReason::BadCertificate,
                    "the Hello's certificate is not the TLS client certificate",
                ));
            }
            ClientAuth::Certificate(_) => {}
        }
        let cert = self
            .trust()
            .verify(&hello.certificate, SystemTime::now())
            .map_err(|e| Refusal::new(RefuseReason::BadCertificate, e.to_string()))?;
        if cert.device != hello.device {
            let message = format!(
                "the certificate of device {:?} (serial {}) was presented for device {:?}",
                cert.device, cert.serial, hello.device
            );
            return Err(self
                .refuse(
                    &hello.device,
                    &link.peer,
                    "ImpersonationRefused",
                    RefuseReason::IdentityMismatch,
                    message,
                )
                .await);
        }
        let nonce = proof::nonce();
        let signature = self.challenge(link, &nonce).await?;
        if let Err(e) = proof::verify_session(&cert.der, &nonce, &received.bytes, &signature) {
            let message = format!("certificate serial {}: {e}", cert.serial);
            return Err(self
                .refuse(
                    &hello.device,
                    &link.peer,
                    "BadProof",
                    RefuseReason::BadProof,
                    message,
                )
                .await);
        }
        match expected {
            None => Err(Refusal::new(
                RefuseReason::Unavailable,
                "the device's identity is not assigned yet; try again",
            )),
            Some(id) if id != cert.identity => {
                let message = format!(
                    "certificate serial {} names a revoked identity of device {:?} (rotated, or the EdgeDevice was recreated); bootstrap again with a new token",
                    cert.serial, cert.device
                );
                self.event(
                    &hello.device,
                    EventType::Warning,
                    "RevokedCertificateRefused",
                    &message,
                )
                .await;
                Err(Refusal::new(RefuseReason::IdentityRevoked, message))
            }
            Some(_) => Ok(cert),
        }
    }

    /// Answers a bootstrap: the token must be this device's and valid, the
    /// device must prove it holds it, and its request must name it; then the
    /// certificate (or why not) goes back on the link.
    pub async fn bootstrap(
        &self,
        link: &mut Link,
        received: &ReceivedHello,
    ) -> Result<(), Refusal> {
        let hello = &received.hello;
        let Some(request) = &hello.bootstrap else {
            return Err(Refusal::new(RefuseReason::BadHello, "not a bootstrap"));
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            Refusal::new(
                RefuseReason::Unavailable,
                format!("aranya cannot check now: {e}"),
            )
        };
        let device = self
            .devices
            .get_opt(&hello.device)
            .await
            .map_err(|e| unavailable(&e))?
            .ok_or_else(|| {
                Refusal::new(
                    RefuseReason::UnknownDevice,
                    format!("no EdgeDevice named {:?}", hello.device),
                )
            })?;
        let token = match token::check(
            self.client.clone(),
            &self.namespace,
            &request.token_id,
            &device,
            SystemTime::now(),
        )
        .await
        .map_err(|e| unavailable(&e))?
        {
            Ok(token) => token,
            Err(refusal) => {
                let message = refusal.to_string();
                return Err(self
                    .refuse(
                        &hello.device,
                        &link.peer,
                        "BootstrapRefused",
                        RefuseReason::BadToken,
                        message,
                    )
                    .await);
            }
        };
        let nonce = proof::nonce();
        let answer = self.challenge(link, &nonce).await?;
        if proof::verify_token(&token, &nonce, &received.bytes, &answer).is_err() {
            let message = format!("the proof does not match bootstrap token {}", token.id());
            return Err(self
                .refuse(
                    &hello.device,
                    &link.peer,
                    "BootstrapRefused",
                    RefuseReason::BadProof,
                    message,
                )
                .await);
        }
        ::identity::issue::check_request(&request.csr, &hello.device)
            .map_err(|e| Refusal::new(RefuseReason::BadHello, e.to_string()))?;
        let Some(id) = device
            .status
            .as_ref()
            .and_then(|s| s.identity.as_ref())
            .and_then(|i| i.id.clone())
        else {
            return Err(Refusal::new(
                RefuseReason::Unavailable,
                "the device's identity is not assigned yet; try again",
            ));
        };
        let approve = device.spec.identity.approval == Approval::Auto;
        let pem = self
            .obtain(&hello.device, &id, &request.csr, approve)
            .await?;
        self.event(
            &hello.device,
            EventType::Normal,
            "CertificateIssued",
            &format!("bootstrapped with token {}", token.id()),
        )
        .await;
        handshake::issued(link, &pem)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// A new certificate for a device renewing over its authenticated
    /// session: approved by aranya, for the identity current now.
    pub async fn renew(&self, device: &str, csr_der: &[u8]) -> Result<String, Refusal> {
        ::identity::issue::check_request(csr_der, device)
            .map_err(|e| Refusal::new(RefuseReason::BadHello, e.to_string()))?;
        let id = status::current_id(&self.devices, device)
            .await
            .ok_or_else(|| {
                Refusal::new(
                    RefuseReason::Unavailable,
                    "the device's identity is unknown now",
                )
            })?;
        self.obtain(device, &id, csr_der, true).await
    }

    async fn obtain(
        &self,
        device: &str,
        id: &str,
        csr_der: &[u8],
        approve: bool,
    ) -> Result<String, Refusal> {
        let request = csr::Request {
            device,
            identity: id,
            csr_der,
            approve,
            lifetime: self.lifetime,
        };
        let current = async || status::current_id(&self.devices, device).await;
        match csr::obtain(&self.client, &self.ca, &self.username, &request, current).await {
            Ok(csr::Outcome::Issued(pem)) => Ok(pem),
            Ok(csr::Outcome::Pending(name)) => Err(Refusal::new(
                RefuseReason::PendingApproval,
                format!(
                    "certificate request {name} waits for approval: kubectl certificate approve {name}"
                ),
            )),
            Ok(csr::Outcome::Denied { name, message }) => Err(Refusal::new(
                RefuseReason::Denied,
                format!("certificate request {name} was denied: {message}"),
            )),
            Err(e @ csr::CsrError::Stale { .. }) => {
                Err(Refusal::new(RefuseReason::IdentityRevoked, e.to_string()))
            }
            Err(e) => {
                warn!(error = %e, "issuing a device certificate");
                Err(Refusal::new(RefuseReason::Unavailable, e.to_string()))
            }
        }
    }

    /// Shows the certificate a device connected with in its status.
    pub async fn record(&self, cert: &DeviceCert) {
        if let Err(e) = status::record_certificate(&self.devices, cert).await {
            warn!(device = %cert.device, error = %e, "recording the device's certificate in its status");
        }
    }

    async fn challenge(&self, link: &mut Link, nonce: &[u8]) -> Result<bytes::Bytes, Refusal> {
        handshake::challenge(link, nonce, CHALLENGE_TIMEOUT)
            .await
            .map_err(|e| Refusal::new(RefuseReason::BadProof, format!("no proof: {e}")))
    }

    /// An Event on the EdgeDevice `device` (if it exists), for `kubectl describe`.
    /// A refusal of a link claiming `device`, recorded as a Warning Event
    /// on that EdgeDevice (naming where the link came from).
    async fn refuse(
        &self,
        device: &str,
        peer: &str,
        event: &str,
        reason: RefuseReason,
        message: String,
    ) -> Refusal {
        let note = format!("{message}, from {peer}");
        self.event(device, EventType::Warning, event, &note).await;
        Refusal::new(reason, message)
    }

    async fn event(&self, device: &str, type_: EventType, reason: &str, note: &str) {
        let Ok(Some(ed)) = self.devices.get_opt(device).await else {
            return;
        };
        let mut reference = ed.object_ref(&());
        // Events of a cluster-scoped object live in `default`.
        reference.namespace = Some("default".into());
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.to_string()),
            action: "Authenticate".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!(device = %ed.name_any(), error = %e, "recording an identity event");
        }
    }
}

/// The device CAs as the gRPC listener's check, before any request is
/// served; the handshake checks the rest (name, identity id).
#[derive(Debug)]
struct DeviceCaCheck(CaStore);

impl ClientCertCheck for DeviceCaCheck {
    fn check(&self, der: &[u8]) -> Result<(), rustls::CertificateError> {
        use rustls::CertificateError as Tls;
        self.0
            .current()
            .trust
            .verify(der, SystemTime::now())
            .map(drop)
            .map_err(|e| match e {
                VerifyError::Expired(_) => Tls::Expired,
                VerifyError::NotYetValid(_) => Tls::NotValidYet,
                VerifyError::UnknownIssuer => Tls::UnknownIssuer,
                VerifyError::NotForClientAuth => Tls::InvalidPurpose,
                _ => Tls::BadEncoding,
            })
    }
}
