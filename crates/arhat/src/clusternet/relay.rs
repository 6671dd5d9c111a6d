//! The device side of the cluster-network relay, TCP: every connection the
//! interception table sends here becomes a Connect stream to aranya,
//! which checks it, dials an endpoint and answers; the bytes then go both
//! ways on the stream. A connection aranya refuses, or made while the device
//! is offline, is reset at once, so the client never hangs.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use connectivity::{LinkState, SessionHandle, Stream};
use proto::api::{Connect, ConnectReply, ConnectRequest, Open, open::Kind, stream_reply::Code};
use socket2::SockRef;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

/// How long aranya may take to answer a connection (it tries each endpoint
/// for a few seconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stream is held for aranya to end its side once the client
/// has ended its own.
const LINGER: Duration = Duration::from_secs(30);

/// The relay's TCP listener.
pub async fn bind(address: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((address, port)).await
}

/// Relays every connection `listener` accepts over the current session.
pub fn serve(
    listener: TcpListener,
    session: watch::Receiver<Option<SessionHandle>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, from)) => {
                    let session = online(&session);
                    tokio::spawn(async move {
                        if let Err(reason) = relay(conn, session).await {
                            debug!(%from, %reason, "connection to a cluster Service refused");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a redirected connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// One redirected connection; on refusal it is reset and the reason returned.
async fn relay(conn: TcpStream, session: Option<SessionHandle>) -> Result<(), String> {
    let refuse = |conn: &TcpStream, reason: String| {
        // A reset, not an orderly close: the client sees the refusal at once.
        let _ = SockRef::from(conn).set_linger(Some(Duration::ZERO));
        Err(reason)
    };
    let destination = match original_destination(&conn) {
        Ok(d) => d,
        Err(e) => return refuse(&conn, format!("no original destination: {e}")),
    };
    let Some(session) = session else {
        return refuse(&conn, format!("{destination}: the device is offline"));
    };
    let stream = match connect(&session, "TCP", destination).await {
        Ok(Relayed::Stream(stream)) => stream,
        Ok(Relayed::Local(endpoint)) => {
            let mut local = match dial_local(endpoint).await {
                Ok(local) => local,
                Err(e) => return refuse(&conn, format!("{destination}: {endpoint}: {e}")),
            };
            debug!(%destination, %endpoint, "a pod of this device: dialled locally");
            let mut conn = conn;
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut local).await;
            return Ok(());
        }
        Err(reason) => return refuse(&conn, reason),
    };
    let _ = conn.set_nodelay(true);
    connectivity::splice::splice(stream, conn, LINGER)
        .await
        .map_err(|e| format!("{destination}: {e}"))
}

/// A connection to a pod of this device, marked so the interception table
/// leaves it alone (a headless Service's endpoint is intercepted too).
async fn dial_local(endpoint: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if endpoint.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    SockRef::from(&socket).set_mark(super::intercept::OWN_MARK)?;
    let conn = tokio::time::timeout(ANSWER_TIMEOUT, socket.connect(endpoint))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// Where aranya sent a connection.
#[derive(Debug)]
pub enum Relayed {
    /// Through the session.
    Stream(Stream),
    /// To a pod of this device, for the device to dial itself.
    Local(SocketAddr),
}

/// The current session, if its link is up: while the device is offline,
/// connections are refused at once rather than held.
pub fn online(session: &watch::Receiver<Option<SessionHandle>>) -> Option<SessionHandle> {
    session
        .borrow()
        .clone()
        .filter(|s| matches!(*s.state().borrow(), LinkState::Connected { .. }))
}

/// A Connect stream to aranya for `destination`, once aranya said OK (or
/// where to dial locally); else why not.
pub async fn connect(
    session: &SessionHandle,
    protocol: &str,
    destination: SocketAddr,
) -> Result<Relayed, String> {
    let header = Open {
        kind: Some(Kind::Connect(Connect {})),
    };
    let request = ConnectRequest {
        protocol: protocol.into(),
        address: destination.ip().to_string(),
        port: u32::from(destination.port()),
        ..Default::default()
    };
    let opened = async {
        let mut stream = session.open(&header).await?;
        stream.send_message(&request).await?;
        let reply = stream.recv_message::<ConnectReply>().await?;
        Ok::<_, connectivity::StreamError>((stream, reply))
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, opened).await {
        Ok(Ok((stream, Some(reply)))) if reply.code() == Code::Ok => {
            if reply.local_address.is_empty() {
                return Ok(Relayed::Stream(stream));
            }
            let ip = reply
                .local_address
                .parse::<std::net::IpAddr>()
                .map_err(|_| format!("{destination}: aranya named a bad local address"))?;
            let port = u16::try_from(reply.local_port)
                .map_err(|_| format!("{destination}: aranya named a bad local port"))?;
            Ok(Relayed::Local(SocketAddr::new(ip, port)))
        }
        Ok(Ok((_, Some(reply)))) => Err(format!("{destination}: {}", reply.message)),
        Ok(Ok((_, None))) => Err(format!("{destination}: aranya ended the stream")),
        Ok(Err(e)) => Err(format!("{destination}: {e}")),
        Err(_) => Err(format!(
            "{destination}: aranya did not answer within {ANSWER_TIMEOUT:?}"
        )),
    }
}

/// Where the client meant to go before the table redirected it here.
fn original_destination(conn: &TcpStream) -> std::io::Result<SocketAddr> {
    let addr = SockRef::from(conn).original_dst_v4()?;
    let dst = addr
        .as_socket()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an IP address"))?;
    // Not redirected: someone dialled the listener itself (the table
    // drops that; this covers a table that is not there).
    if conn.local_addr().is_ok_and(|l| l == dst) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the connection was not redirected",
        ));
    }
    Ok(dst)
}
