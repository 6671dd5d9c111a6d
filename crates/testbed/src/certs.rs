//! The cluster CA and the certificates it issues (rcgen, ECDSA P-256, ring).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, IoContext};

/// How long issued certificates are valid (the test bed lives for minutes, a demo maybe days).
const VALIDITY: Duration = Duration::days(365);

/// A certificate and its private key, both PEM (the key is PKCS#8).
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Issued {
    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` (mode 0600) and returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), Error> {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&crt, &self.cert_pem).ctx(|| format!("write {}", crt.display()))?;
        write_private(&key, &self.key_pem)?;
        Ok((crt, key))
    }
}

/// Writes a secret file readable only by its owner.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .ctx(|| format!("write {}", path.display()))
}

/// A self-signed certificate authority: the cluster CA, the client CA of the apiserver and the
/// signer the controller-manager uses for approved CSRs.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    // Some slack for clock differences between the processes' views of "now".
    params.not_before = now - Duration::hours(1);
    params.not_after = now + VALIDITY;
}

fn new_key(what: &str) -> Result<KeyPair, Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::cert(format!("generate key for {what}"), e))
}

impl Ca {
    /// Creates a new self-signed CA with the given common name.
    pub fn new(common_name: &str) -> Result<Ca, Error> {
        let key = new_key(common_name)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        params.not_after = OffsetDateTime::now_utc() + VALIDITY * 10;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::cert(format!("self-sign CA {common_name}"), e))?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8). The controller-manager signs CSRs with it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key` for the CA itself.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), Error> {
        Issued {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
        .write(dir, stem)
    }

    /// Issues a client certificate: Kubernetes reads the user from the CN and the groups from O.
    pub fn issue_client(&self, common_name: &str, organizations: &[&str]) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for org in organizations {
            dn.push(DnType::OrganizationName, *org);
        }
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, common_name)
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            let name = (*name)
                .to_owned()
                .try_into()
                .map_err(|e| Error::cert(format!("DNS name {name:?}"), e))?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, common_name)
    }

    fn sign(&self, mut params: CertificateParams, what: &str) -> Result<Issued, Error> {
        validity(&mut params);
        params.use_authority_key_identifier_extension = true;
        let key = new_key(what)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::cert(format!("sign certificate for {what}"), e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// An ECDSA P-256 key pair for signing service-account tokens.
#[derive(Clone)]
pub struct ServiceAccountKey {
    /// PKCS#8 private key, PEM.
    pub private_pem: String,
    /// SubjectPublicKeyInfo, PEM.
    pub public_pem: String,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    pub fn generate() -> Result<Self, Error> {
        let key = new_key("service accounts")?;
        Ok(ServiceAccountKey {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem() -> Result<(), Error> {
        let ca = Ca::new("test-ca")?;
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let c = ca.issue_client("alice", &["system:masters"])?;
        assert!(c.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(c.key_pem.contains("BEGIN PRIVATE KEY"));
        let s = ca.issue_server(
            "srv",
            &["localhost", "kubernetes.default.svc"],
            &["127.0.0.1"
                .parse()
                .map_err(|_| Error::Invalid("ip".into()))?],
        )?;
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let (crt, key) = s.write(dir.path(), "srv")?;
        assert!(crt.ends_with("srv.crt") && key.ends_with("srv.key"));
        let sa = ServiceAccountKey::generate()?;
        assert!(sa.public_pem.contains("BEGIN PUBLIC KEY"));
        Ok(())
    }
}
