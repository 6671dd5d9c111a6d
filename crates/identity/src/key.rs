//! The device's own key: generated on the device, never sent anywhere; a
//! certificate signing request carries its public half.

use std::fmt;

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a key: {0}")]
    Generate(#[source] rcgen::Error),
    /// The PEM is not a private key this crate uses (the text is not repeated).
    #[error("not a PKCS#8 PEM private key: {0}")]
    Pem(#[source] rcgen::Error),
    #[error("device keys are ECDSA P-256; this one is another kind")]
    Algorithm,
    #[error("building the certificate signing request: {0}")]
    Request(#[source] rcgen::Error),
    #[error("signing: {0}")]
    Sign(#[source] rcgen::Error),
}

/// An ECDSA P-256 key. Its `Debug` shows nothing of it.
pub struct DeviceKey(KeyPair);

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey").finish_non_exhaustive()
    }
}

impl DeviceKey {
    pub fn generate() -> Result<Self, KeyError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(KeyError::Generate)
    }

    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = KeyPair::from_pem(pem).map_err(KeyError::Pem)?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(KeyError::Algorithm);
        }
        Ok(Self(key))
    }

    /// The private key as PKCS#8 PEM, for the device's owner-only file.
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// A signing request (DER) naming `device` (CN); aranya decides what the
    /// certificate says, the request only carries the key and proves its possession.
    pub fn csr_der(&self, device: &str) -> Result<Vec<u8>, KeyError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(KeyError::Request)?;
        params.distinguished_name.push(DnType::CommonName, device);
        let request = params
            .serialize_request(&self.0)
            .map_err(KeyError::Request)?;
        Ok(request.der().to_vec())
    }

    /// An ASN.1 ECDSA P-256 SHA-256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.0.sign(message).map_err(KeyError::Sign)
    }

    /// The SubjectPublicKeyInfo-less raw public key, to tell keys apart.
    pub fn public_key_raw(&self) -> &[u8] {
        self.0.public_key_raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let key = DeviceKey::generate().expect("key");
        let again = DeviceKey::from_pem(&key.to_pem()).expect("parses");
        assert_eq!(again.public_key_raw(), key.public_key_raw());
        assert_eq!(format!("{key:?}"), "DeviceKey { .. }");
    }

    #[test]
    fn other_key_kinds_are_refused() {
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        assert!(matches!(
            DeviceKey::from_pem(&ed.serialize_pem()),
            Err(KeyError::Algorithm)
        ));
        assert!(matches!(
            DeviceKey::from_pem("not a key"),
            Err(KeyError::Pem(_))
        ));
    }
}
