//! arhat's DNS server, UDP and TCP on `dns.address`:53: the cluster's names
//! from the service catalogue ([`super::names`]), everything else relayed
//! as it is to the device's own resolvers. It answers from the catalogue kept
//! on disk, so names resolve while the device is offline.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType},
};
use proto::api::ServiceCatalogue;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::watch,
};
use tracing::{debug, info, warn};

use super::names::{Answer, Names};
use crate::config::DnsConfig;

const PORT: u16 = 53;
/// The host's resolver file, for `dns.host` and the default upstreams.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The cluster domain before aranya has sent one.
const DEFAULT_DOMAIN: &str = "cluster.local";
/// How long one upstream may take before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest UDP message handled (EDNS sizes beyond this are not offered).
const UDP_MAX: usize = 4096;
/// How often a taken address is tried again.
const BIND_RETRY: Duration = Duration::from_secs(10);
/// A TCP client idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("config key `dns.address`: putting {address}/32 on lo: {message}")]
    Address { address: IpAddr, message: String },
    #[error(transparent)]
    Host(#[from] super::hostdns::HostDnsError),
    #[error("config key `dns.address`: listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Puts the address on `lo`, binds UDP and TCP, and serves until the
/// agent exits. An address another process serves on (an agent not yet gone)
/// is tried again in the background rather than stopping this one.
/// With `dns.host`, the host's resolv.conf is pointed here too; the
/// returned handle puts it back.
pub async fn start(
    config: &DnsConfig,
    data_dir: &std::path::Path,
    catalogue: watch::Receiver<ServiceCatalogue>,
) -> Result<Option<super::hostdns::HostResolvConf>, DnsError> {
    let address = IpAddr::V4(config.address);
    super::put_on_loopback(address)
        .await
        .map_err(|message| DnsError::Address { address, message })?;
    let at = SocketAddr::new(address, PORT);
    let (host, own) = if config.host {
        let domain = match catalogue.borrow().cluster_domain.as_str() {
            "" => DEFAULT_DOMAIN.to_string(),
            d => d.to_string(),
        };
        let (host, own) = super::hostdns::HostResolvConf::take_over(
            std::path::Path::new(HOST_RESOLV_CONF),
            data_dir,
            config.address,
            &domain,
        )?;
        (Some(host), own)
    } else {
        (
            None,
            std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default(),
        )
    };
    let upstreams = if config.upstreams.is_empty() {
        device_resolvers(&own)
    } else {
        config.upstreams.clone()
    };
    let upstreams: Vec<SocketAddr> = upstreams.into_iter().filter(|u| *u != at).collect();
    let server = Arc::new(Server {
        names: watch::Sender::new(Arc::new(Names::new(&catalogue.borrow()))),
        upstreams,
    });
    tokio::spawn(follow(server.clone(), catalogue));
    match bind(at).await {
        Ok(sockets) => serve(server, sockets),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(%at, "another process serves DNS there: trying again every {BIND_RETRY:?}");
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(BIND_RETRY).await;
                    if let Ok(sockets) = bind(at).await {
                        serve(server, sockets);
                        return;
                    }
                }
            });
        }
        Err(source) => {
            if let Some(host) = &host {
                host.restore();
            }
            return Err(DnsError::Listen {
                address: at,
                source,
            });
        }
    }
    Ok(host)
}

async fn bind(at: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(at).await?, TcpListener::bind(at).await?))
}

fn serve(server: Arc<Server>, (udp, tcp): (UdpSocket, TcpListener)) {
    info!(at = ?udp.local_addr().ok(), upstreams = ?server.upstreams, "serving DNS");
    tokio::spawn(serve_udp(server.clone(), Arc::new(udp)));
    tokio::spawn(serve_tcp(server, tcp));
}

/// The nameservers of a resolv.conf, on port 53.
fn device_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ns| ns.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, PORT))
        .collect()
}

#[derive(Debug)]
struct Server {
    names: watch::Sender<Arc<Names>>,
    upstreams: Vec<SocketAddr>,
}

/// Rebuilds the names whenever the catalogue changes.
async fn follow(server: Arc<Server>, mut catalogue: watch::Receiver<ServiceCatalogue>) {
    while catalogue.changed().await.is_ok() {
        let names = Names::new(&catalogue.borrow_and_update());
        server.names.send_replace(Arc::new(names));
    }
}

async fn serve_udp(server: Arc<Server>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; UDP_MAX];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                warn!(error = %e, "receiving a DNS query");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (server, socket) = (server.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(reply) = server.handle(&query, Transport::Udp).await
                && let Err(e) = socket.send_to(&reply, peer).await
            {
                debug!(%peer, error = %e, "answering a DNS query");
            }
        });
    }
}

async fn serve_tcp(server: Arc<Server>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_tcp_client(server.clone(), stream));
            }
            Err(e) => warn!(error = %e, "accepting a DNS client"),
        }
    }
}

/// Length-prefixed messages, one answer per query, until the client goes.
async fn serve_tcp_client(server: Arc<Server>, mut stream: TcpStream) {
    loop {
        let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else {
            return;
        };
        let Some(reply) = server.handle(&query, Transport::Tcp).await else {
            return;
        };
        if write_framed(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&message[..usize::from(len)]);
    stream.write_all(&framed).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Server {
    /// The reply to one query message; none for what is not a query.
    async fn handle(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let query = Message::from_vec(bytes).ok()?;
        if query.message_type != MessageType::Query {
            return None;
        }
        let names = self.names.borrow().clone();
        let mut reply = Message::response(query.id, query.op_code);
        reply.metadata.recursion_desired = query.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_queries(query.queries.iter().cloned());
        let [question] = query.queries.as_slice() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply.to_vec().ok();
        };
        if query.op_code != OpCode::Query {
            reply.metadata.response_code = ResponseCode::NotImp;
            return reply.to_vec().ok();
        }
        match names.answer(question) {
            Answer::Forward => return self.forward(bytes, transport).await,
            Answer::Records(records) => {
                reply.metadata.authoritative = true;
                if records.is_empty() {
                    reply.add_authority(names.soa());
                }
                // An ExternalName's alias is resolved too, as CoreDNS does:
                // stub resolvers do not follow a CNAME themselves.
                let alias = records.iter().find_map(|r| match &r.data {
                    RData::CNAME(target) if question.query_type() != RecordType::CNAME => {
                        Some(target.0.clone())
                    }
                    _ => None,
                });
                reply.add_answers(records);
                if let Some(target) = alias {
                    reply.add_answers(self.chase(target, question.query_type()).await);
                }
            }
            Answer::NxDomain => {
                reply.metadata.authoritative = true;
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.add_authority(names.soa());
            }
        }
        let encoded = reply.to_vec().ok()?;
        if transport == Transport::Udp && encoded.len() > usize::from(query.max_payload().max(512))
        {
            // Too big for the client's UDP: it asks again over TCP.
            let mut truncated = reply.truncate();
            truncated.metadata.truncation = true;
            return truncated.to_vec().ok();
        }
        Some(encoded)
    }

    /// The records of `name` from the upstreams (none if they do not answer).
    async fn chase(&self, name: Name, kind: RecordType) -> Vec<Record> {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name, kind));
        let Ok(bytes) = query.to_vec() else {
            return Vec::new();
        };
        let Some(reply) = self.forward(&bytes, Transport::Udp).await else {
            return Vec::new();
        };
        Message::from_vec(&reply)
            .map(|m| m.answers)
            .unwrap_or_default()
    }

    /// The query as it is to each upstream in turn; SERVFAIL if none answers.
    async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let answer = match transport {
                Transport::Udp => {
                    tokio::time::timeout(UPSTREAM_TIMEOUT, forward_udp(*upstream, query)).await
                }
                Transport::Tcp => {
                    tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(*upstream, query)).await
                }
            };
            match answer {
                Ok(Ok(reply)) => return Some(reply),
                Ok(Err(e)) => debug!(%upstream, error = %e, "forwarding a DNS query"),
                Err(_) => debug!(%upstream, "an upstream resolver did not answer in time"),
            }
        }
        let query = Message::from_vec(query).ok()?;
        let mut reply = Message::error_msg(query.id, query.op_code, ResponseCode::ServFail);
        reply.add_queries(query.queries.iter().cloned());
        reply.to_vec().ok()
    }
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(std::io::Error::other)?;
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; UDP_MAX];
    let n = socket.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(upstreams: Vec<SocketAddr>) -> Server {
        Server {
            names: watch::Sender::new(Arc::new(Names::new(&super::super::catalogue::example()))),
            upstreams,
        }
    }

    fn query(name: &str) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii(name).unwrap_or_else(|e| panic!("{e}")),
            RecordType::A,
        ));
        q.to_vec().unwrap_or_else(|e| panic!("{e}"))
    }

    async fn ask(server: &Server, name: &str) -> Message {
        let reply = server
            .handle(&query(name), Transport::Udp)
            .await
            .unwrap_or_else(|| panic!("no reply"));
        Message::from_vec(&reply).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn cluster_names_are_answered_and_others_forwarded() {
        let s = server(Vec::new());
        let web = ask(&s, "web.shop.svc.cluster.local.").await;
        assert_eq!(web.response_code, ResponseCode::NoError);
        assert_eq!(web.answers[0].data.to_string(), "10.96.0.9");
        let db = ask(&s, "db.shop.svc.cluster.local.").await;
        assert_eq!(db.response_code, ResponseCode::NXDomain);
        assert_eq!(db.authorities.len(), 1);
        // No upstream to ask.
        let other = ask(&s, "example.com.").await;
        assert_eq!(other.response_code, ResponseCode::ServFail);
        assert!(
            s.handle(b"\x00\x01 not dns", Transport::Udp)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn forwarded_queries_come_back_from_the_upstream_as_they_are() {
        let upstream = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let at = upstream.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            if let Ok((n, peer)) = upstream.recv_from(&mut buf).await {
                let mut reply = Message::from_vec(&buf[..n]).unwrap_or_else(|e| panic!("{e}"));
                reply.metadata.message_type = MessageType::Response;
                reply.metadata.response_code = ResponseCode::Refused;
                let bytes = reply.to_vec().unwrap_or_else(|e| panic!("{e}"));
                let _ = upstream.send_to(&bytes, peer).await;
            }
        });
        let s = server(vec![at]);
        assert_eq!(
            ask(&s, "example.com.").await.response_code,
            ResponseCode::Refused
        );
    }

    #[test]
    fn the_devices_resolvers_come_from_its_resolv_conf() {
        assert_eq!(
            device_resolvers("# x\nnameserver 10.0.0.2\nnameserver fd00::53\nsearch lan\n"),
            [
                "10.0.0.2:53".parse().unwrap_or_else(|e| panic!("{e}")),
                "[fd00::53]:53".parse().unwrap_or_else(|e| panic!("{e}"))
            ]
        );
    }
}
