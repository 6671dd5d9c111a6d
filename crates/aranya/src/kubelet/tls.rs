//! TLS of a node's kubelet listener: the node's own serving certificate
//! (picked per handshake, so a renewal takes effect without dropping
//! connections) and client certificates requested for authentication.

use std::sync::{Arc, Mutex};

use rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use tracing::warn;

use super::cert::{Serving, ServingCerts};

/// Presents `node`'s current serving certificate.
#[derive(Debug)]
struct NodeCert {
    node: String,
    certs: ServingCerts,
    /// The last certificate parsed, by its PEM, so handshakes do not re-parse.
    parsed: Mutex<Option<(String, Arc<CertifiedKey>)>>,
}

impl NodeCert {
    fn parse(serving: &Serving) -> Result<CertifiedKey, rustls::Error> {
        let chain = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rustls::Error::General(format!("serving certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
            .map_err(|e| rustls::Error::General(format!("serving key: {e}")))?;
        let key = ring::sign::any_supported_type(&key)?;
        Ok(CertifiedKey::new(chain, key))
    }
}

impl ResolvesServerCert for NodeCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let serving = self.certs.get(&self.node)?;
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((pem, key)) = parsed.as_ref()
            && *pem == serving.cert_pem
        {
            return Some(key.clone());
        }
        match Self::parse(&serving) {
            Ok(key) => {
                let key = Arc::new(key);
                *parsed = Some((serving.cert_pem, key.clone()));
                Some(key)
            }
            Err(e) => {
                warn!(node = %self.node, error = %e, "unusable serving certificate");
                None
            }
        }
    }
}

/// The listener's TLS configuration for `node`: HTTP/1.1 only, since the
/// streaming verbs upgrade HTTP/1.1 connections.
pub fn server_config(
    node: &str,
    certs: ServingCerts,
    clients: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(Arc::new(NodeCert {
            node: node.to_string(),
            certs,
            parsed: Mutex::new(None),
        }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
