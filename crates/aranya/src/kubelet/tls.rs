//! TLS of a node's kubelet listener: the node's own serving certificate
//! (picked per handshake, so a renewal takes effect without dropping
//! connections) and client certificates requested for authentication.
//!
//! Until the cluster signs the serving certificate (the controller-manager
//! may take a while on a busy or starting cluster) the listener presents a
//! self-signed one, as a kubelet without `serverTLSBootstrap` does: an
//! apiserver that does not verify kubelets reaches the node at once, one
//! that does gets an x509 error naming the cause instead of a bare alert.

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
    /// Presented until the signed certificate arrives.
    interim: Arc<CertifiedKey>,
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

    fn self_signed(node: &str) -> Result<CertifiedKey, rustls::Error> {
        let general = |e: rcgen::Error| rustls::Error::General(format!("interim certificate: {e}"));
        let key = rcgen::KeyPair::generate().map_err(general)?;
        let mut params = rcgen::CertificateParams::new(vec![node.to_string()]).map_err(general)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
        let cert = params.self_signed(&key).map_err(general)?;
        Self::parse(&Serving {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl ResolvesServerCert for NodeCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl NodeCert {
    fn current(&self) -> Arc<CertifiedKey> {
        let Some(serving) = self.certs.get(&self.node) else {
            return self.interim.clone();
        };
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((pem, key)) = parsed.as_ref()
            && *pem == serving.cert_pem
        {
            return key.clone();
        }
        match Self::parse(&serving) {
            Ok(key) => {
                let key = Arc::new(key);
                *parsed = Some((serving.cert_pem, key.clone()));
                key
            }
            Err(e) => {
                warn!(node = %self.node, error = %e, "unusable serving certificate");
                self.interim.clone()
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
            interim: Arc::new(NodeCert::self_signed(node)?),
        }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_until_the_signed_one_arrives() {
        let certs = ServingCerts::default();
        let node = NodeCert {
            node: "edge-1".into(),
            certs: certs.clone(),
            parsed: Mutex::new(None),
            interim: Arc::new(NodeCert::self_signed("edge-1").expect("interim")),
        };
        let interim = node.current();
        assert!(Arc::ptr_eq(&interim, &node.interim));

        let key = rcgen::KeyPair::generate().expect("key");
        let signed = rcgen::CertificateParams::new(vec!["edge-1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        certs.set(
            "edge-1",
            Serving {
                cert_pem: signed.pem(),
                key_pem: key.serialize_pem(),
            },
        );
        let current = node.current();
        assert_eq!(current.end_entity_cert().expect("leaf"), signed.der());
        assert!(Arc::ptr_eq(&current, &node.current()), "parsed once");
    }
}
