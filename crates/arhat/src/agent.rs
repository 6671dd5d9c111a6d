//! The connection loop: dial, handshake, run or resume the session, serve the
//! cloud's streams, report status; on loss, back off and dial again, forever.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use connectivity::{
    Dialer, SessionConfig, SessionHandle, Stream,
    grpc::GrpcDialer,
    handshake::{self, HandshakeError},
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
    config::{Config, MethodName},
    nodeinfo,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// No container runtime is wired in yet; reported honestly in nodeInfo.
const RUNTIME_VERSION: &str = "none://0.0.0";

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

struct Current {
    handle: SessionHandle,
    epoch: u64,
}

pub struct Agent {
    config: Arc<Config>,
    options: Options,
    dialers: Vec<Box<dyn Dialer>>,
    nonce: Bytes,
    generation: Arc<std::sync::atomic::AtomicU64>,
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
    pub fn new(config: Config, options: Options) -> Result<Self, AgentError> {
        let mut dialers: Vec<Box<dyn Dialer>> = Vec::new();
        for method in config.methods_by_priority() {
            match method.name {
                MethodName::Grpc => {
                    let grpc = method.grpc.as_ref().ok_or_else(|| AgentError::Transport {
                        method: "grpc",
                        reason: "no grpc settings".into(),
                    })?;
                    let ca_pem =
                        std::fs::read(&grpc.ca_file).map_err(|e| AgentError::Transport {
                            method: "grpc",
                            reason: format!("caFile {}: {e}", grpc.ca_file.display()),
                        })?;
                    dialers.push(Box::new(GrpcDialer {
                        endpoint: grpc.endpoint.clone(),
                        ca_pem,
                        server_name: grpc.server_name.clone(),
                        connect_timeout: grpc.connect_timeout,
                    }));
                }
            }
        }
        Ok(Self {
            config: Arc::new(config),
            options,
            dialers,
            nonce: Bytes::from(rand::random::<[u8; 16]>().to_vec()),
            generation: Arc::default(),
        })
    }

    /// Runs until aranya refuses this agent for good.
    pub async fn run(self) -> Result<(), AgentError> {
        let backoff = &self.config.connectivity.backoff;
        let mut backoff = Backoff::new(backoff.initial, backoff.max);
        let mut current: Option<Current> = None;
        loop {
            for dialer in &self.dialers {
                let span = info_span!("connect", transport = dialer.name());
                match self
                    .connect(dialer.as_ref(), &mut current)
                    .instrument(span)
                    .await
                {
                    Ok(state) => {
                        backoff.reset();
                        wait_link_lost(state).await;
                    }
                    Err(HandshakeError::Refused {
                        reason: RefuseReason::IncompatibleVersion,
                        message,
                    }) => return Err(AgentError::Refused(message)),
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

    /// One connection: handshake, then resume or start a session.
    async fn connect(
        &self,
        dialer: &dyn Dialer,
        current: &mut Option<Current>,
    ) -> Result<watch::Receiver<LinkState>, HandshakeError> {
        let mut link = dialer.dial().await?;
        let hello = Hello {
            device: self.config.device.name.clone(),
            protocol_version: self.options.protocol_version,
            instance_nonce: self.nonce.clone(),
            session_id: current.as_ref().map_or(0, |c| c.handle.session_id()),
            last_epoch: current.as_ref().map_or(0, |c| c.epoch),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let welcome = handshake::hello(&mut link, hello, HANDSHAKE_TIMEOUT).await?;
        if welcome.resumed
            && let Some(c) = current.as_mut()
            && c.handle.session_id() == welcome.session_id
            && !c.handle.is_closed()
        {
            c.epoch = welcome.epoch;
            if c.handle.attach(link, welcome.epoch).is_ok() {
                info!(
                    session = welcome.session_id,
                    epoch = welcome.epoch,
                    "session resumed"
                );
                return Ok(c.handle.state());
            }
            return Err(HandshakeError::Closed);
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
        info!(session = welcome.session_id, "connected to aranya");
        tokio::spawn(
            serve(self.config.clone(), self.generation.clone(), incoming).instrument(span.clone()),
        );
        tokio::spawn(
            report_status(self.config.clone(), self.generation.clone(), handle.clone())
                .instrument(span),
        );
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

fn sample(config: &Config, generation: &std::sync::atomic::AtomicU64) -> NodeStatus {
    let mut status = nodeinfo::collect(&config.node.storage_path, RUNTIME_VERSION);
    status.generation = generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    status
}

/// Answers the streams aranya opens.
async fn serve(
    config: Arc<Config>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    mut incoming: mpsc::UnboundedReceiver<Stream>,
) {
    while let Some(mut stream) = incoming.recv().await {
        let config = config.clone();
        let generation = generation.clone();
        let span = stream.span().clone();
        tokio::spawn(
            async move {
                match stream.open_header().map(|h| h.kind) {
                    Ok(Some(Kind::GetNodeStatus(_))) => {
                        if let Err(e) = answer_status(&mut stream, &config, &generation).await {
                            warn!(error = %e, "answering node status");
                        }
                    }
                    Ok(other) => {
                        warn!(?other, "aranya opened a stream this agent does not serve");
                        stream.reset(ResetCode::Refused, "not served by this agent");
                    }
                    Err(e) => stream.reset(ResetCode::ProtocolError, &e.to_string()),
                }
            }
            .instrument(span),
        );
    }
}

async fn answer_status(
    stream: &mut Stream,
    config: &Config,
    generation: &std::sync::atomic::AtomicU64,
) -> Result<(), connectivity::StreamError> {
    let _request: Option<GetNodeStatus> = stream.recv_message().await?;
    stream.expect_end().await?;
    stream.send_message(&sample(config, generation)).await?;
    stream.finish();
    Ok(())
}

/// Reports status at once, then whenever a sample differs from the last report.
async fn report_status(
    config: Arc<Config>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    session: SessionHandle,
) {
    let mut last: Option<NodeStatus> = None;
    let mut tick = tokio::time::interval(config.node.status_interval);
    loop {
        tick.tick().await;
        if session.is_closed() {
            return;
        }
        let mut status = sample(&config, &generation);
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
        let result = async {
            let mut stream = session.open(&header).await?;
            stream.send_message(&status).await?;
            stream.finish();
            stream.expect_end().await
        }
        .await;
        match result {
            Ok(()) => {
                status.generation = 0;
                last = Some(status);
            }
            Err(e) => debug!(error = %e, "status report not delivered; retrying on the next tick"),
        }
    }
}
