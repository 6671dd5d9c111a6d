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

/// A `v4.channel.k8s.io` WebSocket exec on the kubelet endpoint itself (the
/// aranya↔arhat segment, without kubectl and the apiserver): channel 0 is
/// stdin, 1 stdout, 2 stderr, 3 the exit status.
#[derive(Debug)]
pub struct Exec {
    ws: tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

impl Exec {
    /// Runs `command` in `namespace/pod/container`, with stdin when `stdin`.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        ip: IpAddr,
        port: u16,
        ca_pem: &str,
        caller: Caller<'_>,
        (namespace, pod, container): (&str, &str, &str),
        command: &[&str],
        stdin: bool,
    ) -> anyhow::Result<Self> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tls = connect(ip, port, ca_pem, caller).await?;
        let mut query = String::from("output=1&error=1");
        if stdin {
            query.push_str("&input=1");
        }
        for arg in command {
            query.push_str("&command=");
            query.push_str(&url_escape(arg));
        }
        let mut request = format!("wss://{ip}:{port}/exec/{namespace}/{pod}/{container}?{query}")
            .into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
        let (ws, _) = tokio_tungstenite::client_async(request, tls)
            .await
            .context("exec upgrade on the kubelet endpoint")?;
        Ok(Self { ws })
    }

    /// Sends `data` on stdin.
    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        use futures::SinkExt;
        let mut message = vec![0u8];
        message.extend_from_slice(data);
        self.ws.send(message.into()).await?;
        Ok(())
    }

    /// The next (channel, data) message; `None` once the endpoint closes.
    pub async fn read(&mut self) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .context("nothing from the exec for 60 s")?;
            match next.transpose()? {
                None | Some(Message::Close(_)) => return Ok(None),
                Some(Message::Binary(b)) if !b.is_empty() => {
                    return Ok(Some((b[0], b[1..].to_vec())));
                }
                Some(_) => {}
            }
        }
    }

    /// Reads until the exit status; returns it (`{"status":"Success"}` or a failure).
    pub async fn wait(&mut self) -> anyhow::Result<String> {
        let mut status = Vec::new();
        while let Some((channel, data)) = self.read().await? {
            if channel == 3 {
                status.extend(data);
            }
        }
        Ok(String::from_utf8_lossy(&status).into_owned())
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
