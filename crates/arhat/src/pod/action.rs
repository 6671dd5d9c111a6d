//! Running a probe's check or a lifecycle hook against a container, as a
//! kubelet does: a command in it, or an HTTP GET, TCP connect or gRPC health
//! check to the pod's address, dialed from inside the pod's network
//! namespace (so it works wherever the agent itself runs).

use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::api::{Action, GrpcAction, HttpGetAction, action::Kind};

use crate::runtime::{ExecSpec, Runtime};

/// A kubelet's probe user agent (its minor version: the API it speaks).
const USER_AGENT: &str = "kube-probe/1.37";
/// Output kept for a failure's message, as a kubelet keeps (10 KiB).
const MAX_OUTPUT: usize = 10 * 1024;

/// What an action runs against.
#[derive(Debug, Clone)]
pub struct Target {
    pub container_id: String,
    /// The pod's address: the host for checks that name none.
    pub pod_ip: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
}

/// Runs `action` within `timeout`; `Err` carries why it failed, as the
/// kubelet words it (shown in the Unhealthy event).
pub async fn run(
    runtime: &Arc<dyn Runtime>,
    action: &Action,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    let Some(kind) = &action.kind else {
        return Ok(());
    };
    let work = async {
        match kind {
            Kind::Exec(e) => exec(runtime, &target.container_id, &e.command).await,
            Kind::HttpGet(h) => http_get(h, target, timeout).await,
            Kind::TcpSocket(t) => {
                let host = host_or(&t.host, target);
                dial(target, &host, t.port, timeout).await.map(drop)
            }
            Kind::Grpc(g) => grpc(g, target, timeout).await,
            Kind::SleepSeconds(s) => {
                tokio::time::sleep(Duration::from_secs(u64::try_from(*s).unwrap_or(0))).await;
                Ok(())
            }
        }
    };
    // A sleep hook is bounded by the grace period, not a probe timeout.
    if matches!(kind, Kind::SleepSeconds(_)) {
        return work.await;
    }
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timeout: failed to respond within {}s",
            timeout.as_secs()
        )),
    }
}

fn host_or(host: &str, target: &Target) -> String {
    if host.is_empty() {
        target.pod_ip.clone()
    } else {
        host.to_string()
    }
}

async fn dial(
    target: &Target,
    host: &str,
    port: u32,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let port = u16::try_from(port).map_err(|_| format!("port {port} out of range"))?;
    crate::netns::dial_host(target.netns.clone(), host.to_string(), port, timeout)
        .await
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
}

async fn exec(runtime: &Arc<dyn Runtime>, id: &str, command: &[String]) -> Result<(), String> {
    let spec = ExecSpec {
        command: command.to_vec(),
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut process = runtime.exec(id, &spec).await.map_err(|e| e.to_string())?;
    let mut output = Vec::new();
    while let Some(chunk) = process.output.next().await {
        let (_, bytes) = chunk.map_err(|e| e.to_string())?;
        let room = MAX_OUTPUT.saturating_sub(output.len());
        output.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    match process.handle.exit_code().await {
        Ok(0) => Ok(()),
        Ok(code) if output.is_empty() => Err(format!("command {command:?} exited with {code}")),
        Ok(_) => Err(String::from_utf8_lossy(&output).trim_end().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// TLS for HTTPS probes: like a kubelet, the certificate is not verified (a
/// probe checks health, not identity).
fn insecure_tls() -> Result<tokio_rustls::TlsConnector, String> {
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn http_get(h: &HttpGetAction, target: &Target, timeout: Duration) -> Result<(), String> {
    let host = host_or(&h.host, target);
    let stream = dial(target, &host, h.port, timeout).await?;
    let path = if h.path.is_empty() { "/" } else { &h.path };
    let mut request = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{}", h.port))
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*");
    for header in &h.headers {
        if let Some(headers) = request.headers_mut() {
            let name = http::HeaderName::try_from(header.name.as_str())
                .map_err(|e| format!("header {:?}: {e}", header.name))?;
            let value = http::HeaderValue::try_from(header.value.as_str())
                .map_err(|e| format!("header {:?}: {e}", header.name))?;
            headers.insert(name, value);
        }
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let status = if h.https {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = insecure_tls()?
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS to {host}:{}: {e}", h.port))?;
        send_http1(TokioIo::new(tls), request).await?
    } else {
        send_http1(TokioIo::new(stream), request).await?
    };
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

async fn send_http1<T>(io: T, request: http::Request<Empty<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// grpc.health.v1 messages (the only two a probe needs).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

fn serving_status(n: i32) -> &'static str {
    match n {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNRECOGNIZED",
    }
}

/// grpc.health.v1.Health/Check over HTTP/2: one length-prefixed message each
/// way, the outcome in the `grpc-status` trailer.
async fn grpc(g: &GrpcAction, target: &Target, timeout: Duration) -> Result<(), String> {
    let stream = dial(target, &target.pod_ip, g.port, timeout).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("gRPC to port {}: {e}", g.port))?;
    tokio::spawn(connection);
    let message = prost::Message::encode_to_vec(&HealthCheckRequest {
        service: g.service.clone(),
    });
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&message);
    let uri = format!(
        "http://{}:{}/grpc.health.v1.Health/Check",
        target.pod_ip, g.port
    );
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("gRPC to port {}: {e}", g.port))?;
    let header_status = grpc_status(response.headers());
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("gRPC to port {}: {e}", g.port))?;
    let status = collected
        .trailers()
        .and_then(grpc_status)
        .or(header_status)
        .unwrap_or_default();
    if status != "0" {
        return Err(format!(
            "failed to connect service \"{}:{}\" within {}s: rpc error: code = {status}",
            target.pod_ip,
            g.port,
            timeout.as_secs()
        ));
    }
    let bytes = collected.to_bytes();
    let reply = bytes
        .get(5..)
        .and_then(|m| <HealthCheckResponse as prost::Message>::decode(m).ok())
        .ok_or("the health check answer does not decode")?;
    if reply.status == SERVING {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with \"{}\")",
            serving_status(reply.status)
        ))
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
