//! Device certificates verified against the device CAs aranya trusts: the
//! current CA, and during a rotation the one before it.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime, pem::PemObject};

use crate::cert::{CertError, DeviceCert};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the device CA bundle: {0}")]
    Bundle(String),
    #[error("the device CA bundle holds no certificate")]
    EmptyBundle,
    #[error("the certificate expired at {0}")]
    Expired(String),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
    #[error("the certificate was not issued by a device CA aranya trusts")]
    UnknownIssuer,
    #[error("the certificate is not for client authentication")]
    NotForClientAuth,
    #[error("the certificate is invalid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Names(#[from] CertError),
}

/// The device CAs a certificate may chain to.
#[derive(Debug, Clone)]
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    /// The CA certificates themselves (DER), for a TLS client verifier.
    certs: Vec<CertificateDer<'static>>,
}

impl TrustStore {
    pub fn from_pem(pem: &[u8]) -> Result<Self, VerifyError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VerifyError::Bundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(VerifyError::EmptyBundle);
        }
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| VerifyError::Bundle(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { anchors, certs })
    }

    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Checks `der` chains to a trusted device CA, is valid at `now`, is for
    /// client authentication, and names a device identity.
    pub fn verify(&self, der: &[u8], now: SystemTime) -> Result<DeviceCert, VerifyError> {
        let named = DeviceCert::from_der(der)?;
        let cert_der = CertificateDer::from(der);
        let end_entity = webpki::EndEntityCert::try_from(&cert_der)
            .map_err(|e| VerifyError::Invalid(e.to_string()))?;
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                &[],
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| match e {
                webpki::Error::CertExpired { .. } => {
                    VerifyError::Expired(named.not_after_rfc3339())
                }
                webpki::Error::CertNotValidYet { .. } => {
                    VerifyError::NotYetValid(crate::cert::rfc3339(named.not_before))
                }
                webpki::Error::UnknownIssuer => VerifyError::UnknownIssuer,
                webpki::Error::RequiredEkuNotFoundContext(_) => VerifyError::NotForClientAuth,
                other => VerifyError::Invalid(other.to_string()),
            })?;
        Ok(named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BACKDATE, DeviceCa, DeviceKey, name};
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3600);

    fn issue(ca: &DeviceCa, now: SystemTime) -> Vec<u8> {
        let key = DeviceKey::generate().expect("key");
        let pem = ca
            .issue(
                &key.csr_der("edge-1").expect("csr"),
                "edge-1",
                &name::new_identity_id(),
                HOUR,
                now,
            )
            .expect("issued");
        crate::cert::first_pem_certificate(pem.as_bytes()).expect("der")
    }

    #[test]
    fn verifies_chain_time_and_names() {
        let ca = DeviceCa::generate("device CA").expect("ca");
        let trust = TrustStore::from_pem(ca.cert_pem().as_bytes()).expect("trust");
        let now = SystemTime::now();
        let der = issue(&ca, now);
        let cert = trust.verify(&der, now).expect("valid");
        assert_eq!(cert.device, "edge-1");

        // Backdated: valid a little before it was issued.
        trust.verify(&der, now - BACKDATE / 2).expect("backdated");
        assert!(matches!(
            trust.verify(&der, now - 2 * BACKDATE),
            Err(VerifyError::NotYetValid(_))
        ));
        assert!(matches!(
            trust.verify(&der, now + 2 * HOUR),
            Err(VerifyError::Expired(_))
        ));

        let other = DeviceCa::generate("other CA").expect("ca");
        assert_eq!(
            trust.verify(&issue(&other, now), now).map(|_| ()),
            Err(VerifyError::UnknownIssuer)
        );
    }

    #[test]
    fn a_rotation_trusts_old_and_new() {
        let old = DeviceCa::generate("old").expect("ca");
        let new = DeviceCa::generate("new").expect("ca");
        let bundle = format!("{}{}", new.cert_pem(), old.cert_pem());
        let trust = TrustStore::from_pem(bundle.as_bytes()).expect("trust");
        let now = SystemTime::now();
        trust.verify(&issue(&old, now), now).expect("old");
        trust.verify(&issue(&new, now), now).expect("new");
        assert_eq!(trust.certificates().len(), 2);
    }

    #[test]
    fn bad_bundles_are_refused() {
        assert_eq!(
            TrustStore::from_pem(b"").map(|_| ()),
            Err(VerifyError::EmptyBundle)
        );
    }
}
