//! The device's identity: its key and certificate in an owner-only
//! directory, the bootstrap that gets the first certificate with a token,
//! the proofs the handshake asks for, and renewal before expiry.
//!
//! Files under `<runtime.dataDir>/identity/` (directory 0700, files 0600,
//! written atomically):
//! - `device.pem`: the certificate followed by its key;
//! - `pending-key.pem`: the key of a request still waiting for approval,
//!   so retries ask for the same key;
//! - `bootstrap-token` (default place): the token, written by the operator.

pub mod renewal;

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use connectivity::handshake::Prover;
use identity::{BootstrapToken, DeviceCert, DeviceKey, KeyError, proof};
use proto::envelope::Bootstrap;
use tracing::{info, warn};

const CREDENTIAL: &str = "device.pem";
/// Longer than aranya's device-CA refresh (30 s), so a replica that has not
/// read a rotation yet cannot make a device give up a good certificate.
const REFUSAL_GRACE: Duration = Duration::from_secs(90);
const PENDING_KEY: &str = "pending-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no valid device certificate and no bootstrap token at {path}: create one with `aranya bootstrap-token create --device {device}` and write it to that file (owner-only), or set identity.bootstrapTokenFile"
    )]
    NoToken { path: PathBuf, device: String },
    #[error(
        "the bootstrap token in {path} is malformed ({source}); write a fresh one from `aranya bootstrap-token create --device {device}`"
    )]
    BadToken {
        path: PathBuf,
        device: String,
        #[source]
        source: identity::TokenError,
    },
    #[error("the device key: {0}")]
    Key(#[from] KeyError),
    #[error("the certificate aranya issued: {0}")]
    Cert(#[from] identity::CertError),
    #[error("the certificate aranya issued is for device {got:?}, not {device:?}")]
    OtherDevice { got: String, device: String },
    #[error("the certificate aranya issued is not for this device's key")]
    OtherKey,
}

/// A certificate and the key it certifies.
#[derive(Clone)]
pub struct Held {
    pub cert: DeviceCert,
    pub cert_pem: String,
    pub key: Arc<DeviceKey>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// The device's credentials, on disk and in memory.
#[derive(Debug)]
pub struct Credentials {
    dir: PathBuf,
    token_file: PathBuf,
    device: String,
    current: RwLock<Option<Held>>,
    /// Since when aranya has refused the current certificate (serial).
    refused_since: Mutex<Option<(String, Instant)>>,
}

impl Credentials {
    /// Opens (creating) the identity directory and loads the certificate.
    pub fn open(dir: PathBuf, token_file: PathBuf, device: &str) -> Result<Self, IdentityError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| IdentityError::Io {
                path: dir.clone(),
                source,
            })?;
        // An existing directory keeps its mode; make it owner-only.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| IdentityError::Io {
                path: dir.clone(),
                source,
            },
        )?;
        let creds = Self {
            dir,
            token_file,
            device: device.to_string(),
            current: RwLock::new(None),
            refused_since: Mutex::new(None),
        };
        match creds.load() {
            Ok(Some(held)) => {
                info!(serial = %held.cert.serial, not_after = %held.cert.not_after_rfc3339(), "device certificate loaded");
                *creds
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(held);
            }
            Ok(None) => info!("no device certificate yet: the device will bootstrap"),
            Err(e) => {
                warn!(error = %e, "the stored device certificate is unusable: the device will bootstrap")
            }
        }
        Ok(creds)
    }

    fn load(&self) -> Result<Option<Held>, IdentityError> {
        let path = self.dir.join(CREDENTIAL);
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        // The file holds the certificate, then the key (see `store`).
        const END: &str = "-----END CERTIFICATE-----";
        let cert_end = pem.find(END).map_or(0, |at| at + END.len());
        let (cert_pem, key_pem) = pem.split_at(cert_end);
        let key = DeviceKey::from_pem(key_pem)?;
        let cert = DeviceCert::from_pem(cert_pem.as_bytes())?;
        self.check(&cert, &key)?;
        Ok(Some(Held {
            cert,
            cert_pem: cert_pem.trim_end().to_string() + "\n",
            key: Arc::new(key),
        }))
    }

    fn check(&self, cert: &DeviceCert, key: &DeviceKey) -> Result<(), IdentityError> {
        if cert.device != self.device {
            return Err(IdentityError::OtherDevice {
                got: cert.device.clone(),
                device: self.device.clone(),
            });
        }
        if cert.public_key != key.public_key_raw() {
            return Err(IdentityError::OtherKey);
        }
        Ok(())
    }

    /// The certificate to open a session with, if one is valid now.
    pub fn session(&self) -> Option<Held> {
        let held = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        if held.cert.is_expired_at(SystemTime::now()) {
            return None;
        }
        Some(held)
    }

    /// aranya refused the certificate for good (revoked, untrusted): the
    /// next connection bootstraps.
    pub fn forget(&self, why: &str) {
        if self
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
        {
            warn!(
                reason = why,
                "dropping the device certificate: the device will bootstrap with its token"
            );
        }
    }

    /// aranya refused the current certificate. A replica may not have
    /// read a rotated CA yet, so the certificate is dropped (and the device
    /// bootstraps) only when refusals of it span [`REFUSAL_GRACE`].
    pub fn certificate_refused(&self, why: &str) {
        let Some(serial) = self.session().map(|h| h.cert.serial) else {
            return;
        };
        let now = Instant::now();
        let mut since = self
            .refused_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &*since {
            Some((s, at)) if *s == serial => {
                if now.duration_since(*at) >= REFUSAL_GRACE {
                    *since = None;
                    drop(since);
                    self.forget(why);
                }
            }
            _ => *since = Some((serial, now)),
        }
    }

    /// A session was welcomed: earlier TLS refusals were passing.
    pub fn accepted(&self) {
        *self
            .refused_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// What a bootstrap sends: the token's proof and a request for the
    /// pending key (made and kept now if there is none).
    pub fn bootstrap_request(&self) -> Result<(Bootstrap, TokenProof, DeviceKey), IdentityError> {
        let token_text = match std::fs::read_to_string(&self.token_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::NoToken {
                    path: self.token_file.clone(),
                    device: self.device.clone(),
                });
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    path: self.token_file.clone(),
                    source,
                });
            }
        };
        let token =
            BootstrapToken::parse(token_text.trim()).map_err(|source| IdentityError::BadToken {
                path: self.token_file.clone(),
                device: self.device.clone(),
                source,
            })?;
        let pending = self.dir.join(PENDING_KEY);
        let key = match std::fs::read_to_string(&pending) {
            Ok(pem) => DeviceKey::from_pem(&pem)?,
            Err(_) => {
                let key = DeviceKey::generate()?;
                write_private(&pending, key.to_pem().as_bytes())?;
                key
            }
        };
        let request = Bootstrap {
            token_id: token.id().to_string(),
            csr: Bytes::from(key.csr_der(&self.device)?),
        };
        Ok((request, TokenProof(token), key))
    }

    /// Keeps a certificate aranya issued for `key`, replacing the current one.
    pub fn store(&self, cert_pem: &str, key: DeviceKey) -> Result<DeviceCert, IdentityError> {
        let cert = DeviceCert::from_pem(cert_pem.as_bytes())?;
        self.check(&cert, &key)?;
        let mut file = cert_pem.trim_end().to_string();
        file.push('\n');
        file.push_str(&key.to_pem());
        write_private(&self.dir.join(CREDENTIAL), file.as_bytes())?;
        let _ = std::fs::remove_file(self.dir.join(PENDING_KEY));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Held {
            cert: cert.clone(),
            cert_pem: cert_pem.to_string(),
            key: Arc::new(key),
        });
        Ok(cert)
    }

    /// When the current certificate is due for renewal.
    pub fn renew_at(&self) -> Option<SystemTime> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|h| h.cert.renew_at())
    }

    pub fn device(&self) -> &str {
        &self.device
    }
}

/// Writes `content` to `path` owner-only, atomically (a crash leaves the
/// old file or the new one, never half of one).
fn write_private(path: &Path, content: &[u8]) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(content).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A session's proof: the certificate's key signs the challenge.
#[derive(Debug)]
pub struct SessionProof(pub Arc<DeviceKey>);

impl Prover for SessionProof {
    fn prove(&self, nonce: &[u8], hello: &[u8]) -> Result<Vec<u8>, String> {
        proof::sign_session(&self.0, nonce, hello).map_err(|e| e.to_string())
    }
}

/// A bootstrap's proof: a MAC with the token's secret.
#[derive(Debug)]
pub struct TokenProof(BootstrapToken);

impl Prover for TokenProof {
    fn prove(&self, nonce: &[u8], hello: &[u8]) -> Result<Vec<u8>, String> {
        proof::token_proof(&self.0, nonce, hello).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn issue(key: &DeviceKey, device: &str, life: Duration) -> String {
        let ca = identity::DeviceCa::generate("ca").expect("ca");
        ca.issue(
            &key.csr_der(device).expect("csr"),
            device,
            &identity::name::new_identity_id(),
            life,
            SystemTime::now(),
        )
        .expect("issued")
    }

    #[test]
    fn bootstrap_store_and_reload_owner_only() {
        let dir = tempfile::tempdir().expect("dir");
        let id_dir = dir.path().join("identity");
        let token_file = dir.path().join("token");
        let creds = Credentials::open(id_dir.clone(), token_file.clone(), "edge-1").expect("open");
        assert!(creds.session().is_none());
        let err = creds.bootstrap_request().expect_err("no token");
        assert!(
            err.to_string()
                .contains("aranya bootstrap-token create --device edge-1"),
            "{err}"
        );

        let token = BootstrapToken::generate();
        std::fs::write(&token_file, format!("{}\n", token.expose())).expect("token");
        let (request, _, key) = creds.bootstrap_request().expect("request");
        assert_eq!(request.token_id, token.id());
        // A retry asks for the same key (ECDSA signs each CSR anew).
        let (_, _, again) = creds.bootstrap_request().expect("request");
        assert_eq!(again.public_key_raw(), key.public_key_raw());

        let pem = issue(&key, "edge-1", Duration::from_secs(3600));
        let cert = creds.store(&pem, key).expect("stored");
        assert_eq!(creds.session().expect("session").cert, cert);
        assert!(!id_dir.join(PENDING_KEY).exists());
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&id_dir), 0o700);
        assert_eq!(mode(&id_dir.join(CREDENTIAL)), 0o600);

        let reopened = Credentials::open(id_dir, token_file, "edge-1").expect("reopen");
        assert_eq!(reopened.session().expect("loaded").cert, cert);
        reopened.forget("test");
        assert!(reopened.session().is_none());
    }

    #[test]
    fn a_certificate_for_another_key_or_device_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let creds =
            Credentials::open(dir.path().join("id"), dir.path().join("t"), "edge-1").expect("open");
        let key = DeviceKey::generate().expect("key");
        let other = DeviceKey::generate().expect("key");
        let pem = issue(&other, "edge-1", Duration::from_secs(60));
        assert!(matches!(
            creds.store(&pem, key),
            Err(IdentityError::OtherKey)
        ));
        let key = DeviceKey::generate().expect("key");
        let pem = issue(&key, "edge-2", Duration::from_secs(60));
        assert!(matches!(
            creds.store(&pem, key),
            Err(IdentityError::OtherDevice { .. })
        ));
    }

    #[test]
    fn a_malformed_token_is_named_without_its_text() {
        let dir = tempfile::tempdir().expect("dir");
        let token_file = dir.path().join("t");
        std::fs::write(&token_file, "abcdef.not-a-secret-value").expect("write");
        let creds = Credentials::open(dir.path().join("id"), token_file, "edge-1").expect("open");
        let err = creds
            .bootstrap_request()
            .expect_err("malformed")
            .to_string();
        assert!(err.contains("malformed"), "{err}");
        assert!(!err.contains("not-a-secret-value"), "{err}");
    }
}
