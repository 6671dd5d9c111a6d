//! A device certificate read: who it names, its serial and validity, and
//! when its holder renews it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::{extensions::GeneralName, prelude::*};

use crate::{BACKDATE, name};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    #[error("no PEM certificate found")]
    NoPem,
    #[error("the certificate's subject has no common name")]
    NoCommonName,
    #[error("the certificate names no device identity (URI SAN {prefix}<device>:<id>)", prefix = name::URI_PREFIX)]
    NoIdentity,
    #[error("the certificate names more than one device identity")]
    SeveralIdentities,
    #[error(
        "the certificate's common name {common_name:?} differs from its identity's device {device:?}"
    )]
    NameMismatch { common_name: String, device: String },
}

/// What a device certificate says.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// The certificate itself (DER).
    pub der: Vec<u8>,
    /// The EdgeDevice's name.
    pub device: String,
    /// The identity id it was issued for.
    pub identity: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The subject's public key (for EC, the point), to match it to a key.
    pub public_key: Vec<u8>,
}

impl std::fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCert")
            .field("device", &self.device)
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl DeviceCert {
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .filter_map(|attr| attr.as_str().ok())
            .last()
            .ok_or(CertError::NoCommonName)?
            .to_string();
        let mut identities = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Parse(e.to_string()))?
            .map(|san| san.value.general_names.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(uri) => name::parse_uri(uri),
                _ => None,
            });
        let (device, identity) = identities.next().ok_or(CertError::NoIdentity)?;
        if identities.next().is_some() {
            return Err(CertError::SeveralIdentities);
        }
        if device != common_name {
            return Err(CertError::NameMismatch {
                common_name,
                device: device.to_string(),
            });
        }
        let time = |t: ASN1Time| {
            let secs = t.timestamp();
            match u64::try_from(secs) {
                Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
                Err(_) => UNIX_EPOCH,
            }
        };
        Ok(Self {
            der: der.to_vec(),
            device: device.to_string(),
            identity: identity.to_string(),
            serial: hex(cert.raw_serial()),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// The first certificate of a PEM bundle (the leaf, for a chain).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertError> {
        Self::from_der(&first_pem_certificate(pem)?)
    }

    /// When the holder renews: at two thirds of the life it was issued
    /// with (the backdating left out), which leaves a third for retries.
    pub fn renew_at(&self) -> SystemTime {
        let whole = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let life = whole
            .checked_sub(BACKDATE)
            .filter(|l| !l.is_zero())
            .unwrap_or(whole);
        self.not_after - life / 3
    }

    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// notAfter as RFC 3339 (UTC), for status and logs.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

/// The DER of the first `CERTIFICATE` block of `pem`.
pub fn first_pem_certificate(pem: &[u8]) -> Result<Vec<u8>, CertError> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or(CertError::NoPem)?
        .map(|c| c.to_vec())
        .map_err(|_| CertError::NoPem)
}

/// `t` as RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    ::time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceCa, DeviceKey};

    #[test]
    fn renews_at_two_thirds_of_the_issued_life() {
        let ca = DeviceCa::generate("device CA").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let pem = ca
            .issue(
                &key.csr_der("edge-1").expect("csr"),
                "edge-1",
                &name::new_identity_id(),
                Duration::from_secs(90 * 60),
                now,
            )
            .expect("issued");
        let cert = DeviceCert::from_pem(pem.as_bytes()).expect("reads");
        assert_eq!(cert.renew_at(), now + Duration::from_secs(60 * 60));
        assert!(!cert.is_expired_at(now));
        assert!(cert.is_expired_at(now + Duration::from_secs(90 * 60)));
        assert_eq!(cert.not_after_rfc3339(), "2027-01-15T09:30:00Z");
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert!(matches!(
            DeviceCert::from_der(b"junk"),
            Err(CertError::Parse(_))
        ));
        assert_eq!(DeviceCert::from_pem(b"junk"), Err(CertError::NoPem));
    }
}
