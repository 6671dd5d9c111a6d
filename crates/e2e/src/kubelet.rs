//! Calls a node's kubelet endpoint directly, as the apiserver or
//! metrics-server would, with a chosen identity; verifies the endpoint's
//! serving certificate against the cluster CA for the node's address.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use testbed::Issued;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Who calls.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    Anonymous,
    Certificate(&'a Issued),
    Bearer(&'a str),
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// The kubelet port a Node advertises.
pub fn port(node: &Node) -> Option<u16> {
    let port = node
        .status
        .as_ref()?
        .daemon_endpoints
        .as_ref()?
        .kubelet_endpoint
        .as_ref()?
        .port;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// A TLS client trusting only `ca_pem`, presenting `caller`'s certificate
/// if it has one (any other identity goes in the request).
pub fn client_config(ca_pem: &str, caller: Caller<'_>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match caller {
        Caller::Certificate(issued) => {
            let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A TLS connection to the kubelet endpoint at `ip:port` as `caller`,
/// trusting only `ca_pem` and checking the certificate is for `ip`.
pub async fn connect(
    ip: IpAddr,
    port: u16,
    ca_pem: &str,
    caller: Caller<'_>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = client_config(ca_pem, caller)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect((ip, port))
        .await
        .with_context(|| format!("connecting to the kubelet endpoint {ip}:{port}"))?;
    tcp.set_nodelay(true)?;
    connector
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .context("TLS handshake with the kubelet endpoint")
}

/// `GET path` on the kubelet endpoint at `ip:port`, trusting only `ca_pem`.
pub async fn get(
    ip: IpAddr,
    port: u16,
    ca_pem: &str,
    path: &str,
    caller: Caller<'_>,
) -> anyhow::Result<Reply> {
    let mut tls = connect(ip, port, ca_pem, caller).await?;
    let auth = match caller {
        Caller::Bearer(token) => format!("Authorization: Bearer {token}\r\n"),
        _ => String::new(),
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut raw))
        .await
        .context("reading the kubelet's reply")??;
    parse(&raw)
}

fn parse(raw: &[u8]) -> anyhow::Result<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of headers in the reply")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the reply")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Reply { status, body })
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("truncated chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("short chunk")?);
        rest = after.get(size + 2..).unwrap_or_default();
    }
}
