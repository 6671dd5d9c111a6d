//! The MQTT 3.1.1 transport: the device and aranya are both clients of a broker.
//!
//! Each device has three topics under a namespace, all QoS 1:
//! `<ns>/<device>/msg` (device to cloud), `<ns>/<device>/cmd` (cloud to device)
//! and `<ns>/<device>/status` (retained online / offline; the device's last will
//! is offline, so it replaces the retained online state when the broker loses
//! the device).
//!
//! Pub/sub has no connections, so this transport makes its own: every broker
//! connection of a device is one link, named by a random link id that every
//! message carries in a [`HEADER_LEN`]-byte header (kind, link id). aranya starts
//! a link when a new id says Hello, ends it when that id goes offline or its
//! session lets go of it, and answers data of an id it does not know with `Gone`, so a
//! device whose aranya restarted dials again at once instead of waiting for a
//! timeout. The same goes for a link the broker replays as retained online
//! when aranya subscribes: that link's Hello came before the subscription. Loss, duplicates and reordering (QoS 1 redelivery, a broker restart
//! without persistence, a full broker queue) are the session layer's to repair:
//! this transport only moves bounded messages.
//!
//! Sessions at the broker are clean: a new link subscribes anew on every
//! connection, and aranya resubscribes on every reconnect, so a broker that
//! forgot its sessions (restarted without persistence) is no different.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use proto::envelope::{Body, Envelope};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::link::{ClientAuth, DialFuture, Dialer, Link, MIN_PAYLOAD, TransportError};

/// Bytes every message spends on the transport's own header: kind and link id.
pub const HEADER_LEN: usize = 9;
/// Largest payload by default: what managed IoT brokers commonly accept.
pub const DEFAULT_MAX_PAYLOAD: usize = 128 << 10;
/// Smallest max payload this transport runs with.
pub const MIN_MAX_PAYLOAD: usize = 8 << 10;
/// Topic prefix when none is configured.
pub const DEFAULT_NAMESPACE: &str = "arhat";
/// Messages queued toward the broker before the session waits.
const LINK_QUEUE: usize = 64;
/// Messages from the broker queued toward the session before the MQTT event
/// loop waits (and so reads no more from the broker).
const INBOUND_QUEUE: usize = 256;
/// Live links of one device aranya keeps apart; more end the oldest.
const MAX_LINKS: usize = 8;
/// rumqttc's own request queue.
const REQUEST_QUEUE: usize = 64;
/// Unacknowledged QoS 1 publishes per broker connection.
const INFLIGHT: u16 = 100;
/// Room for the fixed header, topic and packet id around a payload.
const PACKET_OVERHEAD: usize = 1024;
/// aranya's reconnect back-off to the broker.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What one MQTT message of the transport is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A transport message of the link.
    Data = 1,
    /// Retained on the status topic while the link's connection is up.
    Online = 2,
    /// Retained on the status topic (and the last will) once it is down.
    Offline = 3,
    /// From aranya: it has no link by that id (or, with [`EVERY_LINK`], no
    /// link at all: its last will); dial again.
    Gone = 4,
}

/// The link id of aranya's last will: every link of the device is gone, so
/// devices notice at once that their aranya died, not a session timeout
/// later (connections the cluster-network relay would hold are refused
/// at once instead). Devices never use it for a link of their own.
pub const EVERY_LINK: u64 = 0;

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Data,
            2 => Self::Online,
            3 => Self::Offline,
            4 => Self::Gone,
            _ => return None,
        })
    }
}

fn message(kind: Kind, link: u64, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + body.len());
    b.put_u8(kind as u8);
    b.put_u64(link);
    b.put_slice(body);
    b.freeze()
}

/// One message of this transport (kind, link id, body), or `None` when the
/// payload is not one; public for the fuzz target.
pub fn parse(mut payload: Bytes) -> Option<(Kind, u64, Bytes)> {
    if payload.len() < HEADER_LEN {
        return None;
    }
    let kind = Kind::from_u8(payload[0])?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[1..HEADER_LEN]);
    let body = payload.split_off(HEADER_LEN);
    Some((kind, u64::from_be_bytes(id), body))
}

/// The three topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Cloud to device.
    pub cmd: String,
    /// Device to cloud.
    pub msg: String,
    /// Retained online / offline state.
    pub status: String,
}

impl Topics {
    pub fn new(namespace: &str, device: &str) -> Result<Self, TransportError> {
        let bad =
            |what: &str, s: &str| s.is_empty() || s.contains(['+', '#', '\0']) || what.is_empty();
        if bad("namespace", namespace) || namespace.starts_with('/') || namespace.ends_with('/') {
            return Err(TransportError::Config(format!(
                "MQTT topic namespace {namespace:?} must be non-empty, without wildcards or a leading or trailing '/'"
            )));
        }
        if bad("device", device) || device.contains('/') {
            return Err(TransportError::Config(format!(
                "device name {device:?} cannot be part of an MQTT topic"
            )));
        }
        let base = format!("{namespace}/{device}");
        Ok(Self {
            cmd: format!("{base}/cmd"),
            msg: format!("{base}/msg"),
            status: format!("{base}/status"),
        })
    }
}

/// PEM material for a TLS connection to the broker.
#[derive(Clone)]
pub struct Tls {
    /// CA bundle that signed the broker's certificate.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key, for brokers that authenticate by certificate.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Tls")
            .field("client_cert", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// Username and password for the broker.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How one side reaches the broker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port` of the broker; the host is what its certificate must name.
    pub broker: String,
    pub topic_namespace: String,
    /// Client id at the broker; the transport appends a per-connection suffix,
    /// so two connections never take each other's place at the broker.
    pub client_id: String,
    /// MQTT keepalive: the broker drops (and publishes the last will of) a
    /// client silent for 1.5 times this.
    pub keepalive: Duration,
    /// Largest MQTT payload the broker accepts, header included.
    pub max_payload: usize,
    pub connect_timeout: Duration,
    pub tls: Option<Tls>,
    pub credentials: Option<Credentials>,
}

impl Settings {
    fn host_port(&self) -> Result<(String, u16), TransportError> {
        let (host, port) = self.broker.rsplit_once(':').ok_or_else(|| {
            TransportError::Config(format!("MQTT broker {:?} is not host:port", self.broker))
        })?;
        let port = port.parse::<u16>().map_err(|e| {
            TransportError::Config(format!("MQTT broker {:?}: port: {e}", self.broker))
        })?;
        let host = host.trim_matches(['[', ']']);
        if host.is_empty() {
            return Err(TransportError::Config(format!(
                "MQTT broker {:?} has no host",
                self.broker
            )));
        }
        Ok((host.to_string(), port))
    }

    /// Checks every field a connection needs, naming the one that is wrong.
    pub fn validate(&self) -> Result<(), TransportError> {
        self.host_port()?;
        if self.max_payload < MIN_MAX_PAYLOAD {
            return Err(TransportError::Config(format!(
                "MQTT max payload {} is below {MIN_MAX_PAYLOAD}",
                self.max_payload
            )));
        }
        if self.keepalive < Duration::from_secs(1) {
            return Err(TransportError::Config("MQTT keepalive is below 1s".into()));
        }
        if self.client_id.is_empty() {
            return Err(TransportError::Config("MQTT client id is empty".into()));
        }
        if let Some(tls) = &self.tls {
            client_tls(tls)?;
        }
        Ok(())
    }

    /// The session carries messages this large over this transport.
    pub fn link_payload(&self) -> usize {
        self.max_payload.saturating_sub(HEADER_LEN).max(MIN_PAYLOAD)
    }

    fn options(
        &self,
        connection: u64,
        will: Option<LastWill>,
    ) -> Result<MqttOptions, TransportError> {
        self.validate()?;
        let (host, port) = self.host_port()?;
        let id = format!("{}-{:08x}", self.client_id, connection as u32);
        let mut opts = MqttOptions::new(id, host, port);
        opts.set_keep_alive(self.keepalive)
            .set_clean_session(true)
            .set_max_packet_size(
                self.max_payload + PACKET_OVERHEAD,
                self.max_payload + PACKET_OVERHEAD,
            )
            .set_inflight(INFLIGHT)
            .set_request_channel_capacity(REQUEST_QUEUE);
        if let Some(c) = &self.credentials {
            opts.set_credentials(c.username.clone(), c.password.clone());
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                client_tls(tls)?,
            )));
        }
        if let Some(will) = will {
            opts.set_last_will(will);
        }
        Ok(opts)
    }
}

fn client_tls(tls: &Tls) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let bad =
        |what: &str, e: &dyn fmt::Display| TransportError::Config(format!("MQTT TLS {what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut tls.ca_pem.as_slice()) {
        roots
            .add(cert.map_err(|e| bad("CA", &e))?)
            .map_err(|e| bad("CA", &e))?;
    }
    if roots.is_empty() {
        return Err(TransportError::Config(
            "MQTT TLS CA holds no certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("versions", &e))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut cert.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", &e))?;
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .map_err(|e| bad("client key", &e))?
                .ok_or_else(|| TransportError::Config("MQTT TLS client key holds no key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", &e))?
        }
    };
    Ok(Arc::new(config))
}

/// Drives the event loop until `pick` takes an incoming packet, at most `timeout`.
async fn poll_until<T>(
    events: &mut EventLoop,
    timeout: Duration,
    what: &str,
    mut pick: impl FnMut(Packet) -> Option<T>,
) -> Result<T, String> {
    let polled = tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(v) = pick(p) {
                        return Ok(v);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(describe(&e)),
            }
        }
    });
    polled
        .await
        .unwrap_or_else(|_| Err(format!("no {what} within {timeout:?}")))
}

fn new_client(opts: MqttOptions, connect_timeout: Duration) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(opts, REQUEST_QUEUE);
    events
        .network_options
        .set_connection_timeout(connect_timeout.as_secs().max(1));
    // Every message is a whole frame, often a keystroke: Nagle would hold
    // each one behind the broker's delayed ACK (some 40 ms a hop).
    events.network_options.set_tcp_nodelay(true);
    (client, events)
}

/// Connects and waits for the broker's CONNACK.
async fn connect(
    opts: MqttOptions,
    timeout: Duration,
    broker: &str,
) -> Result<(AsyncClient, EventLoop), TransportError> {
    let (client, mut events) = new_client(opts, timeout);
    poll_until(&mut events, timeout, "CONNACK", |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await
    .map_err(|reason| TransportError::Connect {
        endpoint: broker.to_string(),
        reason,
    })?;
    Ok((client, events))
}

/// Subscribes and waits for the SUBACK, failing if the broker refused (an ACL).
async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    topics: &[&str],
    timeout: Duration,
) -> Result<(), TransportError> {
    let filters = topics
        .iter()
        .map(|t| rumqttc::SubscribeFilter::new((*t).to_string(), QoS::AtLeastOnce));
    client
        .subscribe_many(filters)
        .await
        .map_err(|e| TransportError::Closed(format!("subscribing: {e}")))?;
    let acked = poll_until(events, timeout, "SUBACK", |p| match p {
        Packet::SubAck(ack) => Some(ack),
        _ => None,
    })
    .await
    .map_err(TransportError::Closed)?;
    if acked.return_codes.contains(&SubscribeReasonCode::Failure) {
        return Err(TransportError::Config(format!(
            "the broker refused the subscription to {topics:?} (not authorized?)"
        )));
    }
    Ok(())
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}

/// How a device reaches aranya through a broker.
#[derive(Debug, Clone)]
pub struct MqttDialer {
    pub settings: Settings,
    pub device: String,
}

impl MqttDialer {
    async fn dial_link(&self) -> Result<Link, TransportError> {
        let topics = Topics::new(&self.settings.topic_namespace, &self.device)?;
        let id: u64 = rand::random::<u64>().max(EVERY_LINK + 1);
        let will = LastWill::new(
            topics.status.clone(),
            message(Kind::Offline, id, &[]).to_vec(),
            QoS::AtLeastOnce,
            true,
        );
        let opts = self.settings.options(id, Some(will))?;
        let timeout = self.settings.connect_timeout;
        let (client, mut events) = connect(opts, timeout, &self.settings.broker).await?;
        subscribe(&client, &mut events, &[&topics.cmd], timeout).await?;
        client
            .publish_bytes(
                topics.status.clone(),
                QoS::AtLeastOnce,
                true,
                message(Kind::Online, id, &[]),
            )
            .await
            .map_err(|e| TransportError::Closed(format!("publishing online: {e}")))?;
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
        tokio::spawn(device_inbound(events, topics.cmd.clone(), id, in_tx));
        tokio::spawn(device_outbound(client, topics, id, out_rx));
        debug!(link = format_args!("{id:016x}"), broker = %self.settings.broker, "MQTT link up");
        Ok(Link {
            tx: out_tx,
            rx: ReceiverStream::new(in_rx).boxed(),
            max_payload: self.settings.link_payload(),
            peer: self.settings.broker.clone(),
            transport: "mqtt",
            client_auth: ClientAuth::NotVisible,
        })
    }
}

impl Dialer for MqttDialer {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn dial(&self) -> DialFuture<'_> {
        Box::pin(self.dial_link())
    }
}

/// Drives the device's broker connection; hands its link's messages on. The
/// link ends with the connection: the agent dials a new one.
async fn device_inbound(
    mut events: EventLoop,
    cmd: String,
    id: u64,
    inbound: mpsc::Sender<Result<Bytes, TransportError>>,
) {
    let end = loop {
        let event = tokio::select! {
            e = events.poll() => e,
            () = inbound.closed() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == cmd => match parse(p.payload) {
                Some((Kind::Data, link, body)) if link == id => {
                    if inbound.send(Ok(body)).await.is_err() {
                        return;
                    }
                }
                Some((Kind::Gone, link, _)) if link == id => {
                    break "aranya no longer knows this link".to_string();
                }
                Some((Kind::Gone, EVERY_LINK, _)) => {
                    break "aranya's broker connection died (its last will)".to_string();
                }
                // Another link's traffic (an older connection, another agent).
                Some(_) => {}
                None => debug!("malformed MQTT message on the command topic"),
            },
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => break format!("broker connection: {}", describe(&e)),
        }
    };
    let _ = inbound.send(Err(TransportError::Closed(end))).await;
}

/// Publishes the session's messages of link `id` to `topic` until the session
/// drops the link (true) or the broker connection is gone (false).
async fn publish_link(
    client: &AsyncClient,
    topic: &str,
    id: u64,
    mut outbound: mpsc::Receiver<Bytes>,
) -> bool {
    while let Some(body) = outbound.recv().await {
        let msg = message(Kind::Data, id, &body);
        if client
            .publish_bytes(topic.to_string(), QoS::AtLeastOnce, false, msg)
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// The device's publisher: once the session drops the link, marks it offline
/// and disconnects (a clean disconnect publishes no last will).
async fn device_outbound(
    client: AsyncClient,
    topics: Topics,
    id: u64,
    outbound: mpsc::Receiver<Bytes>,
) {
    if !publish_link(&client, &topics.msg, id, outbound).await {
        return;
    }
    let _ = client
        .publish_bytes(
            topics.status,
            QoS::AtLeastOnce,
            true,
            message(Kind::Offline, id, &[]),
        )
        .await;
    let _ = client.disconnect().await;
}

/// aranya's side for one device: a broker connection kept up until `stop`,
/// every new link of the device sent to `links` (for the hub's handshake).
pub async fn serve_device(
    settings: Settings,
    device: String,
    links: mpsc::Sender<Link>,
    stop: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let topics = Topics::new(&settings.topic_namespace, &device)?;
    let will = LastWill::new(
        topics.cmd.clone(),
        message(Kind::Gone, EVERY_LINK, &[]).to_vec(),
        QoS::AtLeastOnce,
        false,
    );
    let opts = settings.options(rand::random(), Some(will))?;
    let mut cloud = CloudSide {
        topics,
        links,
        settings,
        links_by_id: Vec::new(),
        last_gone: None,
    };
    tokio::select! {
        r = cloud.run(opts) => r,
        () = stop => Ok(()),
    }
}

struct CloudLink {
    id: u64,
    inbound: mpsc::Sender<Result<Bytes, TransportError>>,
    publisher: tokio::task::JoinHandle<()>,
}

impl CloudLink {
    fn end(self, reason: &str) {
        self.publisher.abort();
        let _ = self
            .inbound
            .try_send(Err(TransportError::Closed(reason.to_string())));
    }
}

struct CloudSide {
    topics: Topics,
    links: mpsc::Sender<Link>,
    settings: Settings,
    /// Live links of the device, oldest first.
    links_by_id: Vec<CloudLink>,
    last_gone: Option<u64>,
}

impl CloudSide {
    async fn run(&mut self, opts: MqttOptions) -> Result<(), TransportError> {
        let (client, mut events) = new_client(opts, self.settings.connect_timeout);
        let mut delay = RECONNECT_MIN;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    delay = RECONNECT_MIN;
                    info!(broker = %self.settings.broker, "MQTT broker connected");
                    // A clean session: subscribe on every connection.
                    let filters = [&self.topics.msg, &self.topics.status]
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        warn!(error = %e, "queueing the MQTT subscription");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        warn!(topics = ?[&self.topics.msg, &self.topics.status], "the broker refused aranya's subscription (not authorized?)");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(&client, p).await,
                Ok(_) => {}
                Err(e) => {
                    warn!(broker = %self.settings.broker, error = %describe(&e), retry_in = ?delay, "MQTT broker connection lost");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    async fn on_publish(&mut self, client: &AsyncClient, p: rumqttc::Publish) {
        let is_status = p.topic == self.topics.status;
        // The broker marks retained only what it replays on a new
        // subscription: a link that was up before aranya subscribed.
        let replayed = p.retain;
        let Some((kind, id, body)) = parse(p.payload) else {
            debug!(topic = %p.topic, "malformed MQTT message");
            return;
        };
        let known = self.links_by_id.iter().position(|l| l.id == id);
        match (kind, known) {
            (Kind::Offline, Some(i)) if is_status => {
                info!(
                    link = format_args!("{id:016x}"),
                    "device offline (last will or disconnect)"
                );
                self.links_by_id
                    .remove(i)
                    .end("the device went offline at the broker");
            }
            (Kind::Data, Some(i)) if !is_status => {
                let delivered = self.links_by_id[i].inbound.send(Ok(body)).await.is_ok();
                if !delivered {
                    // The session let go of this link.
                    self.links_by_id.remove(i);
                }
            }
            (Kind::Data, None) if !is_status && is_hello(&body) => {
                self.new_link(client, id, body).await;
            }
            (Kind::Data, None) if !is_status => self.gone(client, id),
            // Its Hello reached the broker before this subscription and is
            // lost: without this, the device would wait out its handshake
            // timeout before dialling again.
            (Kind::Online, None) if is_status && replayed && id != EVERY_LINK => {
                self.gone(client, id);
            }
            _ => {}
        }
    }

    /// A new link beside the others: an agent's newer connection, or a second
    /// agent under the same name, which the hub must see (and refuse) while
    /// the first one's link stays up.
    async fn new_link(&mut self, client: &AsyncClient, id: u64, hello: Bytes) {
        self.links_by_id.retain(|l| !l.inbound.is_closed());
        if self.links_by_id.len() >= MAX_LINKS {
            let oldest = self.links_by_id.remove(0);
            oldest.end("too many links of one device");
        }
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
        let (client, cmd) = (client.clone(), self.topics.cmd.clone());
        let publisher = tokio::spawn(async move {
            publish_link(&client, &cmd, id, out_rx).await;
        });
        let _ = in_tx.send(Ok(hello)).await;
        let link = Link {
            tx: out_tx,
            rx: ReceiverStream::new(in_rx).boxed(),
            max_payload: self.settings.link_payload(),
            peer: format!("{} link {id:016x}", self.settings.broker),
            transport: "mqtt",
            client_auth: ClientAuth::NotVisible,
        };
        if self.links.send(link).await.is_err() {
            publisher.abort();
            return;
        }
        self.links_by_id.push(CloudLink {
            id,
            inbound: in_tx,
            publisher,
        });
    }

    fn gone(&mut self, client: &AsyncClient, id: u64) {
        if self.last_gone == Some(id) {
            return;
        }
        self.last_gone = Some(id);
        debug!(
            link = format_args!("{id:016x}"),
            "unknown link: telling the device to dial again"
        );
        let _ = client.try_publish(
            self.topics.cmd.clone(),
            QoS::AtLeastOnce,
            false,
            message(Kind::Gone, id, &[]).to_vec(),
        );
    }
}

fn is_hello(body: &Bytes) -> bool {
    matches!(
        Envelope::from_bytes(body.clone()).map(|e| e.body),
        Ok(Some(Body::Hello(_)))
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let m = message(Kind::Data, 0x0102_0304_0506_0708, b"frame");
        assert_eq!(m.len(), HEADER_LEN + 5);
        let (kind, id, body) = parse(m).unwrap();
        assert_eq!(
            (kind, id, &body[..]),
            (Kind::Data, 0x0102_0304_0506_0708, &b"frame"[..])
        );
        assert!(parse(Bytes::from_static(b"\x01short")).is_none());
        assert!(parse(Bytes::from_static(b"\x09\0\0\0\0\0\0\0\0")).is_none());
    }

    #[test]
    fn topics_refuse_wildcards_and_slashes() {
        let t = Topics::new("arhat", "dev-1").unwrap();
        assert_eq!(t.cmd, "arhat/dev-1/cmd");
        assert_eq!(t.msg, "arhat/dev-1/msg");
        assert_eq!(t.status, "arhat/dev-1/status");
        assert!(Topics::new("a/b", "dev").is_ok());
        assert!(Topics::new("a/+", "dev").is_err());
        assert!(Topics::new("/a", "dev").is_err());
        assert!(Topics::new("a", "d/e").is_err());
        assert!(Topics::new("a", "#").is_err());
        assert!(Topics::new("", "dev").is_err());
    }

    #[test]
    fn settings_name_what_is_wrong() {
        let good = Settings {
            broker: "localhost:1883".into(),
            topic_namespace: DEFAULT_NAMESPACE.into(),
            client_id: "arhat-dev".into(),
            keepalive: Duration::from_secs(10),
            max_payload: DEFAULT_MAX_PAYLOAD,
            connect_timeout: Duration::from_secs(5),
            tls: None,
            credentials: None,
        };
        good.validate().unwrap();
        assert_eq!(good.link_payload(), DEFAULT_MAX_PAYLOAD - HEADER_LEN);
        let err = |s: Settings| s.validate().unwrap_err().to_string();
        assert!(
            err(Settings {
                broker: "nohost".into(),
                ..good.clone()
            })
            .contains("host:port")
        );
        assert!(
            err(Settings {
                max_payload: 1000,
                ..good.clone()
            })
            .contains("max payload")
        );
        assert!(
            err(Settings {
                keepalive: Duration::ZERO,
                ..good.clone()
            })
            .contains("keepalive")
        );
        let tls = Tls {
            ca_pem: b"not pem".to_vec(),
            client: None,
        };
        assert!(
            err(Settings {
                tls: Some(tls),
                ..good.clone()
            })
            .contains("CA")
        );
        let creds = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(
            !format!(
                "{:?}",
                Settings {
                    credentials: Some(creds),
                    ..good
                }
            )
            .contains("hunter2")
        );
    }
}
