//! The connection loop: dial, handshake, run or resume the session, serve the
//! cloud's streams, report status; on loss, back off and dial again, forever.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use connectivity::{
    Dialer, SessionConfig, SessionHandle, Stream,
    grpc::{ClientCertificate, GrpcDialer},
    handshake::{self, Accepted, HandshakeError},
    mqtt::{self, MqttDialer},
    session::LinkState,
};
use proto::{
    api::{GetNodeStatus, NodeStatus, Open, ReportNodeStatus, open::Kind},
    envelope::{Hello, RefuseReason},
    session::{ResetCode, Role},
};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    backoff::Backoff,
    config::{Config, Method, MethodName},
    identity::{Credentials, IdentityError, SessionProof},
    nodeinfo,
    pod::PodManager,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reported in nodeInfo when the device runs no container runtime.
const NO_RUNTIME: &str = "none://0.0.0";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// aranya will never accept this agent as it is (e.g. protocol version).
    #[error("aranya refused this agent for good: {0}")]
    Refused(String),
    #[error("cannot set up transport {method}: {reason}")]
    Transport {
        method: &'static str,
        reason: String,
    },
    #[error("container runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("device identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("DNS: {0}")]
    Dns(#[from] crate::clusternet::dns::DnsError),
    #[error("cluster-network relay: {0}")]
    Relay(#[from] crate::clusternet::RelayError),
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl From<connectivity::TransportError> for ConnectError {
    fn from(e: connectivity::TransportError) -> Self {
        Self::Handshake(e.into())
    }
}

/// Options that are not part of the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Protocol version to announce (tests exercise refusals with it).
    pub protocol_version: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            protocol_version: proto::api::PROTOCOL_VERSION,
        }
    }
}

/// How often the pod manager looks for what pods no longer here left.
/// What the agent changed on the host that must not outlive it.
#[derive(Debug)]
pub struct Cleanup {
    interception: Option<Arc<crate::clusternet::Interception>>,
    host_dns: Option<Arc<crate::clusternet::hostdns::HostResolvConf>>,
}

impl Cleanup {
    /// Connections to cluster Services must not go to listeners that are
    /// gone, nor the host's names to a server that is.
    pub async fn run(self) {
        if let Some(interception) = self.interception {
            interception.stop().await;
        }
        if let Some(host_dns) = self.host_dns {
            host_dns.restore();
        }
    }
}

const HOUSEKEEPING: std::time::Duration = std::time::Duration::from_secs(10);

struct Current {
    handle: SessionHandle,
    epoch: u64,
}

pub struct Agent {
    config: Arc<Config>,
    pods: Option<Arc<PodManager>>,
    /// The cluster Services this device may reach, as aranya last sent them.
    services: Arc<crate::clusternet::Catalogue>,
    /// The current session, for connections relayed to aranya.
    session: watch::Sender<Option<SessionHandle>>,
    interception: Option<Arc<crate::clusternet::Interception>>,
    /// The host's resolv.conf, while arhat has it (`dns.host`).
    host_dns: Option<Arc<crate::clusternet::hostdns::HostResolvConf>>,
    runtime_version: Arc<str>,
    runtime_health: tokio::sync::watch::Receiver<proto::api::RuntimeHealth>,
    options: Options,
    dialers: Vec<Box<dyn Dialer>>,
    nonce: Bytes,
    generation: Arc<std::sync::atomic::AtomicU64>,
    identity: Arc<Credentials>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.config.device.name)
            .field("dialers", &self.dialers)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub async fn new(config: Config, options: Options) -> Result<Self, AgentError> {
        let config = Arc::new(config);
        let identity = Arc::new(Credentials::open(
            config.identity_dir(),
            config.bootstrap_token_file(),
            &config.device.name,
        )?);
        let mut dialers: Vec<Box<dyn Dialer>> = Vec::new();
        for method in config.methods_by_priority() {
            // Built once here so a bad file stops the agent at start.
            let name = dialer(&config, method, &identity)?.name();
            dialers.push(Box::new(Rereading {
                config: config.clone(),
                method: method.clone(),
                name,
                identity: identity.clone(),
            }));
        }
        let services = Arc::new(crate::clusternet::Catalogue::load(&config.runtime.data_dir));
        let host_dns = if config.dns.enabled {
            crate::clusternet::dns::start(
                &config.dns,
                &config.runtime.data_dir,
                services.subscribe(),
            )
            .await?
        } else {
            None
        };
        let cluster_dns = config.dns.enabled.then(|| crate::pod::dns::ClusterDns {
            nameserver: config.dns.address,
            catalogue: services.subscribe(),
        });
        let (pods, runtime_version, runtime_health) = match crate::runtime::connect(&config.runtime)
            .await?
        {
            None => (
                None,
                NO_RUNTIME.to_string(),
                tokio::sync::watch::channel(crate::runtime::health::none()).1,
            ),
            Some(runtime) => {
                let version = runtime.version().await?;
                let health =
                    crate::runtime::health::monitor(runtime.clone(), config.runtime.health);
                let host_ip = nodeinfo::host_ip().unwrap_or_default();
                let network =
                    crate::network::Bridge::new(&config.network, &config.runtime.data_dir).await?;
                let pods = PodManager::new(
                    runtime,
                    Arc::new(network),
                    &config.device.name,
                    host_ip,
                    config.runtime.data_dir.clone(),
                    crate::runtime::LogRotation {
                        max_size: config.runtime.logs.max_size,
                        max_files: config.runtime.logs.max_files,
                    },
                    cluster_dns,
                );
                let gc = &config.runtime.image_gc;
                tokio::spawn(crate::imagegc::run(
                    pods.runtime().clone(),
                    pods.pulled().clone(),
                    crate::imagegc::Policy {
                        high_threshold_percent: gc.high_threshold_percent,
                        low_threshold_percent: gc.low_threshold_percent,
                        unused_for: gc.unused_for,
                        interval: gc.interval,
                    },
                ));
                let restored = pods.restore().await?;
                tokio::spawn(pods.clone().housekeeping(HOUSEKEEPING));
                info!(pods = restored, "saved pods restored");
                (Some(pods), version, health)
            }
        };
        info!(runtime = %runtime_version, "container runtime ready");

        // Last, so a failed start leaves no table sending connections nowhere.
        let session = watch::Sender::new(None);
        let interception = if config.relay.enabled {
            Some(Arc::new(
                crate::clusternet::Interception::start(
                    &config.relay,
                    services.subscribe(),
                    session.subscribe(),
                )
                .await?,
            ))
        } else {
            None
        };

        Ok(Self {
            config,
            pods,
            services,
            session,
            interception,
            host_dns: host_dns.map(Arc::new),
            runtime_version: runtime_version.into(),
            runtime_health,
            options,
            dialers,
            nonce: Bytes::from(rand::random::<[u8; 16]>().to_vec()),
            generation: Arc::default(),
            identity,
        })
    }

    /// What to undo when the agent stops: the interception table, the
    /// host's resolv.conf.
    pub fn cleanup(&self) -> Cleanup {
        Cleanup {
            interception: self.interception.clone(),
            host_dns: self.host_dns.clone(),
        }
    }

    /// Runs until aranya refuses this agent for good.
    pub async fn run(self) -> Result<(), AgentError> {
        let backoff = &self.config.connectivity.backoff;
        let mut backoff = Backoff::new(backoff.initial, backoff.max);
        let mut current: Option<Current> = None;
        loop {
            for (at, dialer) in self.dialers.iter().enumerate() {
                let span = info_span!("connect", transport = dialer.name());
                match self
                    .connect(dialer.as_ref(), &mut current)
                    .instrument(span)
                    .await
                {
                    Ok(state) => {
                        backoff.reset();
                        self.stay(at, state, &mut current).await;
                    }
                    Err(ConnectError::Handshake(HandshakeError::Refused {
                        reason: RefuseReason::IncompatibleVersion,
                        message,
                    })) => return Err(AgentError::Refused(message)),
                    Err(e) => {
                        warn!(transport = dialer.name(), error = %e, "cannot connect to aranya")
                    }
                }
            }
            let delay = backoff.next_delay();
            debug!(?delay, "reconnecting after back-off");
            tokio::time::sleep(delay).await;
        }
    }

    /// Returns once the link is lost. Meanwhile, on a fallback method, tries
    /// the preferred ones now and then and moves the session to the first
    /// that answers (a resume: streams and pods carry on).
    async fn stay(
        &self,
        mut at: usize,
        mut state: watch::Receiver<LinkState>,
        current: &mut Option<Current>,
    ) {
        loop {
            if at == 0 {
                return wait_link_lost(state).await;
            }
            tokio::select! {
                () = wait_link_lost(state.clone()) => return,
                () = tokio::time::sleep(self.config.connectivity.preferred_retry) => {}
            }
            for (preferred, dialer) in self.dialers[..at].iter().enumerate() {
                let span = info_span!("connect", transport = dialer.name());
                match self
                    .connect(dialer.as_ref(), current)
                    .instrument(span)
                    .await
                {
                    Ok(s) => {
                        info!(
                            from = self.dialers[at].name(),
                            to = dialer.name(),
                            "back on a preferred transport"
                        );
                        at = preferred;
                        state = s;
                        break;
                    }
                    Err(e) => {
                        debug!(transport = dialer.name(), error = %e, "preferred transport still unavailable")
                    }
                }
            }
        }
    }

    /// A bootstrap over one link: the token's proof and a request for the
    /// device's key; aranya answers with the certificate.
    async fn bootstrap(&self, dialer: &dyn Dialer) -> Result<(), ConnectError> {
        let (request, proof, key) = self.identity.bootstrap_request()?;
        info!(token = %request.token_id, "no valid device certificate: bootstrapping with the token");
        let mut link = dialer.dial().await?;
        let hello = Hello {
            device: self.config.device.name.clone(),
            protocol_version: self.options.protocol_version,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            bootstrap: Some(request),
            ..Default::default()
        };
        match handshake::hello(&mut link, hello, &proof, HANDSHAKE_TIMEOUT).await? {
            Accepted::Issued(pem) => {
                let cert = self.identity.store(&pem, key)?;
                info!(serial = %cert.serial, not_after = %cert.not_after_rfc3339(), "device certificate issued");
                Ok(())
            }
            Accepted::Welcome(_) => Err(HandshakeError::Protocol(
                "aranya answered a bootstrap with a session".into(),
            )
            .into()),
        }
    }

    /// One connection: handshake, then resume or start a session.
    async fn connect(
        &self,
        dialer: &dyn Dialer,
        current: &mut Option<Current>,
    ) -> Result<watch::Receiver<LinkState>, ConnectError> {
        if self.identity.session().is_none() {
            self.bootstrap(dialer).await?;
        }
        let Some(held) = self.identity.session() else {
            return Err(HandshakeError::Prove("no valid device certificate".into()).into());
        };
        let mut link = match dialer.dial().await {
            Err(e @ connectivity::TransportError::CertificateRefused { .. }) => {
                self.identity.certificate_refused(&e.to_string());
                return Err(e.into());
            }
            dialed => dialed?,
        };
        let hello = Hello {
            device: self.config.device.name.clone(),
            protocol_version: self.options.protocol_version,
            instance_nonce: self.nonce.clone(),
            session_id: current.as_ref().map_or(0, |c| c.handle.session_id()),
            last_epoch: current.as_ref().map_or(0, |c| c.epoch),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            certificate: Bytes::from(held.cert.der.clone()),
            bootstrap: None,
        };
        let answer =
            handshake::hello(&mut link, hello, &SessionProof(held.key), HANDSHAKE_TIMEOUT).await;
        let welcome = match answer {
            Ok(Accepted::Welcome(welcome)) => welcome,
            Ok(Accepted::Issued(_)) => {
                return Err(HandshakeError::Protocol(
                    "aranya answered a session with a certificate".into(),
                )
                .into());
            }
            Err(e) => {
                if let HandshakeError::Refused { reason, message } = &e
                    && matches!(
                        reason,
                        RefuseReason::IdentityRevoked
                            | RefuseReason::BadCertificate
                            | RefuseReason::CertificateRequired
                    )
                {
                    self.identity.forget(message);
                }
                return Err(e.into());
            }
        };
        self.identity.accepted();
        if welcome.resumed
            && let Some(c) = current.as_mut()
            && c.handle.session_id() == welcome.session_id
            && !c.handle.is_closed()
        {
            c.epoch = welcome.epoch;
            if c.handle.attach(link, welcome.epoch).is_err() {
                return Err(HandshakeError::Closed.into());
            }
            // The driver takes the link asynchronously: until it has, the state
            // still says the old link is lost (or up), which is not this link.
            let mut state = c.handle.state();
            let epoch = welcome.epoch;
            let attached = state.wait_for(|s| match s {
                LinkState::Connected { epoch: e, .. } => *e == epoch,
                LinkState::Closed { .. } => true,
                LinkState::Disconnected { .. } => false,
            });
            if tokio::time::timeout(HANDSHAKE_TIMEOUT, attached)
                .await
                .is_err()
            {
                return Err(HandshakeError::Timeout(HANDSHAKE_TIMEOUT).into());
            }
            info!(
                session = welcome.session_id,
                epoch = welcome.epoch,
                "session resumed"
            );
            return Ok(c.handle.state());
        }
        if let Some(old) = current.take() {
            old.handle.close("aranya started a new session");
        }
        let span = info_span!("session", session = welcome.session_id);
        let (handle, incoming) = connectivity::session::spawn(
            Role::Device,
            SessionConfig::default(),
            welcome.session_id,
            welcome.epoch,
            link,
            span.clone(),
        )
        .map_err(|e| HandshakeError::Protocol(format!("session settings: {e}")))?;
        tokio::spawn(
            crate::identity::renewal::run(self.identity.clone(), handle.clone())
                .instrument(span.clone()),
        );
        info!(session = welcome.session_id, "connected to aranya");
        self.session.send_replace(Some(handle.clone()));
        let sampler = Sampler {
            config: self.config.clone(),
            generation: self.generation.clone(),
            runtime_version: self.runtime_version.clone(),
            runtime_health: self.runtime_health.clone(),
        };
        tokio::spawn(
            serve(
                sampler.clone(),
                self.pods.clone(),
                self.services.clone(),
                incoming,
            )
            .instrument(span.clone()),
        );
        tokio::spawn(report_status(sampler, handle.clone()).instrument(span.clone()));
        if let Some(pods) = &self.pods {
            tokio::spawn(report_pods(pods.clone(), handle.clone()).instrument(span));
        }
        let state = handle.state();
        *current = Some(Current {
            handle,
            epoch: welcome.epoch,
        });
        Ok(state)
    }
}

async fn wait_link_lost(mut state: watch::Receiver<LinkState>) {
    loop {
        if !matches!(*state.borrow_and_update(), LinkState::Connected { .. }) {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// A method's dialer built anew for every dial, so certificates, CAs and
/// password files rotated on disk are used from the next connection on.
#[derive(Debug)]
struct Rereading {
    config: Arc<Config>,
    method: Method,
    name: &'static str,
    identity: Arc<Credentials>,
}

impl Dialer for Rereading {
    fn name(&self) -> &'static str {
        self.name
    }

    fn dial(&self) -> connectivity::link::DialFuture<'_> {
        Box::pin(async move {
            let fresh = dialer(&self.config, &self.method, &self.identity)
                .map_err(|e| connectivity::TransportError::Config(e.to_string()))?;
            fresh.dial().await
        })
    }
}

/// The transport of one configured method, with its files read.
fn dialer(
    config: &Config,
    method: &Method,
    identity: &Credentials,
) -> Result<Box<dyn Dialer>, AgentError> {
    let read = |method: &'static str, key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| AgentError::Transport {
            method,
            reason: format!("{key} {}: {e}", path.display()),
        })
    };
    let missing = |method: &'static str| AgentError::Transport {
        method,
        reason: format!("no {method} settings"),
    };
    match method.name {
        MethodName::Grpc => {
            let grpc = method.grpc.as_ref().ok_or_else(|| missing("grpc"))?;
            Ok(Box::new(GrpcDialer {
                endpoint: grpc.endpoint.clone(),
                ca_pem: read("grpc", "caFile", &grpc.ca_file)?,
                server_name: grpc.server_name.clone(),
                connect_timeout: grpc.connect_timeout,
                keepalive: grpc.keepalive,
                // Without a valid certificate the link can only bootstrap.
                client_certificate: identity.session().map(|held| ClientCertificate {
                    cert_pem: held.cert_pem.into_bytes(),
                    key_pem: held.key.to_pem().into_bytes(),
                }),
            }))
        }
        MethodName::Mqtt => {
            let m = method.mqtt.as_ref().ok_or_else(|| missing("mqtt"))?;
            let tls = match &m.tls {
                None => None,
                Some(t) => Some(mqtt::Tls {
                    ca_pem: read("mqtt", "tls.caFile", &t.ca_file)?,
                    client: match (&t.cert_file, &t.key_file) {
                        (Some(cert), Some(key)) => Some((
                            read("mqtt", "tls.certFile", cert)?,
                            read("mqtt", "tls.keyFile", key)?,
                        )),
                        _ => None,
                    },
                }),
            };
            let credentials = match &m.username {
                None => None,
                Some(username) => {
                    let password = match &m.password_file {
                        Some(file) => read("mqtt", "passwordFile", file)?,
                        None => Vec::new(),
                    };
                    Some(mqtt::Credentials {
                        username: username.clone(),
                        password: String::from_utf8_lossy(&password).trim_end().to_string(),
                    })
                }
            };
            let settings = mqtt::Settings {
                broker: m.broker.clone(),
                topic_namespace: m.topic_namespace.clone(),
                client_id: m
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("arhat-{}", config.device.name)),
                keepalive: m.keepalive,
                max_payload: usize::try_from(m.max_payload).unwrap_or(usize::MAX),
                connect_timeout: m.connect_timeout,
                tls,
                credentials,
            };
            settings.validate().map_err(|e| AgentError::Transport {
                method: "mqtt",
                reason: e.to_string(),
            })?;
            Ok(Box::new(MqttDialer {
                settings,
                device: config.device.name.clone(),
            }))
        }
    }
}

/// Reads the device's status, numbering each sample.
#[derive(Debug, Clone)]
struct Sampler {
    config: Arc<Config>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    runtime_version: Arc<str>,
    runtime_health: tokio::sync::watch::Receiver<proto::api::RuntimeHealth>,
}

impl Sampler {
    fn sample(&self) -> NodeStatus {
        let mut status = nodeinfo::collect(&self.config.node.storage_path, &self.runtime_version);
        status.runtime = Some(self.runtime_health.borrow().clone());
        status.generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        status
    }
}

/// Answers the streams aranya opens.
async fn serve(
    sampler: Sampler,
    pods: Option<Arc<PodManager>>,
    services: Arc<crate::clusternet::Catalogue>,
    mut incoming: mpsc::UnboundedReceiver<Stream>,
) {
    while let Some(mut stream) = incoming.recv().await {
        let sampler = sampler.clone();
        let pods = pods.clone();
        let services = services.clone();
        let span = stream.span().clone();
        tokio::spawn(
            async move {
                let result = match stream.open_header().map(|h| h.kind) {
                    Ok(Some(Kind::GetNodeStatus(_))) => answer_status(&mut stream, &sampler).await,
                    Ok(Some(Kind::EnsurePod(_))) => {
                        crate::pod::serve::ensure(&mut stream, pods.as_ref()).await
                    }
                    Ok(Some(Kind::DeletePod(_))) => {
                        crate::pod::serve::delete(&mut stream, pods.as_ref()).await
                    }
                    Ok(Some(Kind::ListPods(_))) => {
                        crate::pod::serve::list(&mut stream, pods.as_ref()).await
                    }
                    Ok(Some(Kind::SyncServices(_))) => {
                        crate::clusternet::catalogue::serve(&mut stream, &services).await
                    }
                    Ok(Some(Kind::SetPodNetwork(_))) => {
                        crate::pod::serve::pod_network(&mut stream, pods.as_ref()).await
                    }
                    Ok(Some(Kind::ContainerLogs(_))) => {
                        crate::pod::logs::serve(&mut stream, pods.as_ref(), &sampler.config.host)
                            .await
                    }
                    Ok(Some(Kind::Exec(_))) => {
                        crate::pod::exec::serve(stream, pods.as_ref(), &sampler.config.host).await
                    }
                    Ok(Some(Kind::Connect(_))) => {
                        crate::pod::connect::serve(stream, pods.as_ref()).await
                    }
                    Ok(Some(Kind::PortForward(_))) => {
                        crate::pod::portforward::serve(stream, pods.as_ref(), &sampler.config.host)
                            .await
                    }
                    Ok(other) => {
                        warn!(?other, "aranya opened a stream this agent does not serve");
                        stream.reset(ResetCode::Refused, "not served by this agent");
                        Ok(())
                    }
                    Err(e) => {
                        stream.reset(ResetCode::ProtocolError, &e.to_string());
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    warn!(error = %e, "serving a stream");
                }
            }
            .instrument(span),
        );
    }
}

async fn answer_status(
    stream: &mut Stream,
    sampler: &Sampler,
) -> Result<(), connectivity::StreamError> {
    let _request: Option<GetNodeStatus> = stream.recv_message().await?;
    stream.expect_end().await?;
    stream.send_message(&sampler.sample()).await?;
    stream.finish();
    Ok(())
}

/// Reports status at once, then whenever a sample differs from the last report.
async fn report_status(sampler: Sampler, session: SessionHandle) {
    let mut last: Option<NodeStatus> = None;
    let mut tick = tokio::time::interval(sampler.config.node.status_interval);
    loop {
        tick.tick().await;
        if session.is_closed() {
            return;
        }
        let mut status = sampler.sample();
        let changed = last.as_ref().is_none_or(|l| {
            let mut prev = l.clone();
            prev.generation = status.generation;
            prev != status
        });
        if !changed {
            continue;
        }
        let header = Open {
            kind: Some(Kind::ReportNodeStatus(ReportNodeStatus {})),
        };
        match send_one(&session, &header, &status).await {
            Ok(()) => {
                status.generation = 0;
                last = Some(status);
            }
            Err(e) => debug!(error = %e, "status report not delivered; retrying on the next tick"),
        }
    }
}

/// Pushes every pod status change as it happens. What a lost session drops,
/// aranya recovers by listing pods when the device is back.
async fn report_pods(pods: Arc<PodManager>, session: SessionHandle) {
    let header = Open {
        kind: Some(Kind::ReportPodStatus(proto::api::ReportPodStatus {})),
    };
    loop {
        let changes = tokio::select! {
            c = pods.changes() => c,
            () = closed(&session) => return,
        };
        for status in changes {
            if let Err(e) = send_one(&session, &header, &status).await {
                debug!(error = %e, uid = %status.uid, "pod status not delivered");
            }
        }
    }
}

pub(crate) async fn closed(session: &SessionHandle) {
    let mut state = session.state();
    while !matches!(*state.borrow_and_update(), LinkState::Closed { .. }) {
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Opens a stream, sends one message, finishes, and waits for the peer's end.
async fn send_one<M: prost::Message>(
    session: &SessionHandle,
    header: &Open,
    message: &M,
) -> Result<(), connectivity::StreamError> {
    let mut stream = session.open(header).await?;
    stream.send_message(message).await?;
    stream.finish();
    stream.expect_end().await
}
