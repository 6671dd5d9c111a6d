//! The device CA: it signs device certificates from the devices' own
//! requests, saying itself what a certificate names (the request only
//! contributes its public key, whose possession its signature proves).

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData as _, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;

use crate::{BACKDATE, name};

/// How long a generated device CA is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("generating the device CA: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("the device CA certificate or key is unusable: {0}")]
    Ca(#[source] rcgen::Error),
    #[error("the signing request does not parse or its signature is wrong: {0}")]
    Request(#[source] rcgen::Error),
    #[error("the signing request's key is not ECDSA P-256")]
    KeyAlgorithm,
    #[error("the signing request names {requested:?}, not the device {device:?}")]
    Name { requested: String, device: String },
    #[error("{0:?} is not a device name or identity id")]
    BadName(String),
    #[error("signing: {0}")]
    Sign(#[source] rcgen::Error),
}

/// A CA certificate and its key. `Debug` shows neither.
pub struct DeviceCa {
    cert_pem: String,
    key: KeyPair,
}

impl fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCa").finish_non_exhaustive()
    }
}

impl DeviceCa {
    /// A new self-signed CA, ECDSA P-256, valid for [`CA_LIFETIME`].
    pub fn generate(common_name: &str) -> Result<Self, IssueError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IssueError::Generate)?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(IssueError::Generate)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).map_err(IssueError::Generate)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IssueError> {
        let key = KeyPair::from_pem(key_pem).map_err(IssueError::Ca)?;
        // Parsed once here so a broken pair is refused at load, not at signing.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(IssueError::Ca)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM, for the Secret it is kept in.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A client certificate for `device` with identity `identity`, from the
    /// device's request `csr_der`, valid from `now - BACKDATE` for
    /// `lifetime`; PEM.
    pub fn issue(
        &self,
        csr_der: &[u8],
        device: &str,
        identity: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<String, IssueError> {
        if !name::is_device_name(device) {
            return Err(IssueError::BadName(device.to_string()));
        }
        if !name::is_identity_id(identity) {
            return Err(IssueError::BadName(identity.to_string()));
        }
        let request = check_request(csr_der, device)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(IssueError::Sign)?;
        params.distinguished_name.push(DnType::CommonName, device);
        params.subject_alt_names = vec![SanType::URI(
            name::uri(device, identity)
                .try_into()
                .map_err(IssueError::Sign)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(IssueError::Ca)?;
        let cert = params
            .signed_by(&request.public_key, &issuer)
            .map_err(IssueError::Sign)?;
        Ok(cert.pem())
    }
}

/// The request's signature is right, its key is P-256 and it names `device`.
pub fn check_request(
    csr_der: &[u8],
    device: &str,
) -> Result<CertificateSigningRequestParams, IssueError> {
    let request =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(IssueError::Request)?;
    if request.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(IssueError::KeyAlgorithm);
    }
    let requested = match request.params.distinguished_name.get(&DnType::CommonName) {
        Some(DnValue::Utf8String(s)) => s.clone(),
        Some(DnValue::PrintableString(s)) => s.as_str().to_string(),
        _ => String::new(),
    };
    if requested != device {
        return Err(IssueError::Name {
            requested,
            device: device.to_string(),
        });
    }
    Ok(request)
}

/// The public key (raw, as in the certificate) a request carries: what
/// stays the same when a device asks again with the same key (ECDSA signs
/// each request anew, so the request's bytes do not).
pub fn request_public_key(csr_der: &[u8]) -> Result<Vec<u8>, IssueError> {
    let request =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(IssueError::Request)?;
    Ok(request.public_key.der_bytes().to_vec())
}

/// 16 random bytes, positive as DER wants it.
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceCert, DeviceKey, TrustStore};

    #[test]
    fn issues_what_aranya_decides_from_the_request() {
        let ca = DeviceCa::generate("device CA").expect("ca");
        let again = DeviceCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("reloads");
        let key = DeviceKey::generate().expect("key");
        let id = name::new_identity_id();
        let now = SystemTime::now();
        let pem = again
            .issue(
                &key.csr_der("edge-1").expect("csr"),
                "edge-1",
                &id,
                Duration::from_secs(7200),
                now,
            )
            .expect("issued");
        let trust = TrustStore::from_pem(ca.cert_pem().as_bytes()).expect("trust");
        let der = crate::cert::first_pem_certificate(pem.as_bytes()).expect("der");
        let cert = trust.verify(&der, now).expect("verifies");
        assert_eq!(
            (cert.device.as_str(), cert.identity.as_str()),
            ("edge-1", id.as_str())
        );
        assert_eq!(DeviceCert::from_pem(pem.as_bytes()).expect("reads"), cert);
        assert_eq!(cert.serial.len(), 32);
        let life = cert
            .not_after
            .duration_since(cert.not_before)
            .expect("order");
        assert_eq!(life, Duration::from_secs(7200) + BACKDATE);
    }

    #[test]
    fn a_request_for_another_device_is_refused() {
        let ca = DeviceCa::generate("device CA").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let err = ca
            .issue(
                &key.csr_der("edge-2").expect("csr"),
                "edge-1",
                &name::new_identity_id(),
                Duration::from_secs(60),
                SystemTime::now(),
            )
            .expect_err("other name");
        assert!(matches!(err, IssueError::Name { ref requested, .. } if requested == "edge-2"));
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let ca = DeviceCa::generate("device CA").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let mut csr = key.csr_der("edge-1").expect("csr");
        let last = csr.len() - 3;
        csr[last] ^= 0x55;
        assert!(matches!(
            ca.issue(
                &csr,
                "edge-1",
                &name::new_identity_id(),
                Duration::from_secs(60),
                SystemTime::now()
            ),
            Err(IssueError::Request(_))
        ));
        assert!(matches!(
            ca.issue(
                b"junk",
                "edge-1",
                &name::new_identity_id(),
                Duration::from_secs(60),
                SystemTime::now()
            ),
            Err(IssueError::Request(_))
        ));
    }

    #[test]
    fn other_key_kinds_are_refused() {
        let ca = DeviceCa::generate("device CA").expect("ca");
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "edge-1");
        let csr = params.serialize_request(&ed).expect("csr");
        assert!(matches!(
            ca.issue(
                csr.der(),
                "edge-1",
                &name::new_identity_id(),
                Duration::from_secs(60),
                SystemTime::now()
            ),
            Err(IssueError::KeyAlgorithm)
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let ca = DeviceCa::generate("device CA").expect("ca");
        assert_eq!(format!("{ca:?}"), "DeviceCa { .. }");
    }
}
