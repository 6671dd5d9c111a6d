//! What the streaming routes share: the SPDY upgrade handshake, and asking
//! the device before upgrading so a refusal is still a plain HTTP error.

use connectivity::Stream;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use proto::api::{Open, StreamReply, stream_reply::Code};
use streaming::{negotiate, websocket};

use super::{Body, Problem, server::NodeEndpoint, text};

/// The protocol a SPDY upgrade request asks for, from `supported`.
pub fn protocol(
    request: &Request<Incoming>,
    supported: &[&'static str],
) -> Result<&'static str, Problem> {
    let headers = request.headers();
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !negotiate::is_spdy_upgrade(value(header::UPGRADE), value(header::CONNECTION)) {
        return Err(Problem::bad_request(
            "Upgrade request required: this endpoint speaks SPDY/3.1 (Connection: Upgrade, Upgrade: SPDY/3.1)",
        ));
    }
    let offers = headers
        .get_all(negotiate::HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok());
    negotiate::choose(offers, supported).map_err(|accepted| {
        Problem::new(
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: no common stream protocol; this kubelet speaks {accepted}"),
        )
    })
}

/// Whether the request asks for a WebSocket rather than SPDY.
pub fn is_websocket(request: &Request<Incoming>) -> bool {
    websocket::is_upgrade(
        request
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok()),
    )
}

/// What a WebSocket upgrade request settled on.
#[derive(Debug, Clone)]
pub struct WebSocketUpgrade {
    pub protocol: &'static str,
    accept: String,
    /// Whether the client offered subprotocols (if not, the 101 names none).
    offered: bool,
}

/// The subprotocol and accept key of a WebSocket upgrade request.
pub fn websocket_protocol(
    request: &Request<Incoming>,
    supported: &[&'static str],
) -> Result<WebSocketUpgrade, Problem> {
    let headers = request.headers();
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| Problem::bad_request("WebSocket upgrade without Sec-WebSocket-Key"))?;
    let offers: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let offered = offers.iter().any(|o| !o.trim().is_empty());
    let protocol = negotiate::choose(offers, supported).map_err(|accepted| {
        Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: no common WebSocket subprotocol; this kubelet speaks {accepted}"
            ),
        )
    })?;
    Ok(WebSocketUpgrade {
        protocol,
        accept: websocket::accept_key(key.as_bytes()),
        offered,
    })
}

impl WebSocketUpgrade {
    /// The 101 for this WebSocket.
    pub fn switching(&self) -> Response<Body> {
        let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_TYPE);
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if self.offered {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(self.protocol),
            );
        }
        if let Ok(v) = HeaderValue::from_str(&self.accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        response
    }
}

/// The 101 a kubelet answers with.
pub fn switching(protocol: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    headers.insert(negotiate::HEADER, HeaderValue::from_static(protocol));
    response
}

/// Opens a stream to the device, sends `request` (and, with `finish`, ends
/// our side), and reads the device's [`StreamReply`]: the stream when it is
/// OK, the refusal as an HTTP error otherwise.
pub async fn ask_device(
    endpoint: &NodeEndpoint,
    header: &Open,
    request: &impl prost::Message,
    finish: bool,
) -> Result<Stream, Problem> {
    let session = endpoint.session()?;
    let lost =
        |e: connectivity::StreamError| Problem::device(&endpoint.node, format!("failed: {e}"));
    let mut stream = session.open(header).await.map_err(lost)?;
    stream.send_message(request).await.map_err(lost)?;
    if finish {
        stream.finish();
    }
    let reply: StreamReply = stream
        .recv_message()
        .await
        .map_err(lost)?
        .ok_or_else(|| lost(connectivity::StreamError::Truncated))?;
    let status = match reply.code() {
        Code::Ok => return Ok(stream),
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Forbidden => StatusCode::FORBIDDEN,
        Code::BadRequest => StatusCode::BAD_REQUEST,
        Code::Unavailable => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Err(Problem::new(status, reply.message))
}
