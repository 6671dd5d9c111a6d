//! Where devices arrive: the handshake on every new link, one session per
//! device, resumes, and refusals (unknown device, duplicate, bad version).

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use connectivity::{
    Link, SessionConfig, SessionHandle, Stream,
    handshake::{self, HandshakeError},
    session::LinkState,
};
use proto::{
    api::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION},
    envelope::{Hello, RefuseReason, Welcome},
    session::Role,
};
use tokio::sync::{Mutex, mpsc};
use tracing::{Instrument, info, info_span, warn};

use crate::virtualnode::NodeCmd;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A device's session, as the hub knows it.
#[derive(Debug)]
struct Live {
    handle: SessionHandle,
    nonce: Bytes,
    epoch: u64,
    peer: String,
}

#[derive(Debug)]
struct Entry {
    node: mpsc::Sender<NodeCmd>,
    live: Option<Live>,
    /// Transports the EdgeDevice lists; links over others are refused.
    methods: Vec<&'static str>,
}

/// A new session for a virtual node, with the streams its device opens.
#[derive(Debug)]
pub struct Connected {
    pub session: SessionHandle,
    pub incoming: mpsc::UnboundedReceiver<Stream>,
    pub transport: &'static str,
}

#[derive(Debug)]
pub struct Hub {
    devices: Mutex<HashMap<String, Entry>>,
    config: SessionConfig,
}

enum Decision {
    Refuse(RefuseReason, String),
    Resume(SessionHandle, u64),
    New(mpsc::Sender<NodeCmd>),
}

impl Hub {
    pub fn new(config: SessionConfig) -> Arc<Self> {
        Arc::new(Self {
            devices: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// Makes `device` known: its links over `methods` are accepted and go to `node`.
    pub async fn register(
        &self,
        device: &str,
        node: mpsc::Sender<NodeCmd>,
        methods: Vec<&'static str>,
    ) {
        let mut devices = self.devices.lock().await;
        devices
            .entry(device.to_string())
            .and_modify(|e| {
                e.node = node.clone();
                e.methods.clone_from(&methods);
            })
            .or_insert(Entry {
                node,
                live: None,
                methods,
            });
    }

    /// Forgets `device` and ends its session.
    pub async fn unregister(&self, device: &str) {
        if let Some(entry) = self.devices.lock().await.remove(device)
            && let Some(live) = entry.live
        {
            live.handle.close("EdgeDevice deleted");
        }
    }

    /// Ends every session (shutdown, lost leadership).
    pub async fn close_all(&self, reason: &str) {
        for entry in self.devices.lock().await.values() {
            if let Some(live) = &entry.live {
                live.handle.close(reason);
            }
        }
    }

    /// Accepts links until the transport stops.
    pub async fn serve(self: Arc<Self>, mut links: mpsc::Receiver<Link>) {
        while let Some(link) = links.recv().await {
            let span = info_span!("link", transport = link.transport, peer = %link.peer);
            tokio::spawn(self.clone().accept(link).instrument(span));
        }
    }

    async fn accept(self: Arc<Self>, mut link: Link) {
        let hello = match handshake::read_hello(&mut link, HELLO_TIMEOUT).await {
            Ok(hello) => hello,
            Err(e) => {
                warn!(error = %e, "handshake failed");
                return;
            }
        };
        let span = info_span!("device", device = %hello.device);
        self.handshake(link, hello).instrument(span).await;
    }

    async fn handshake(&self, mut link: Link, hello: Hello) {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.protocol_version) {
            let message = format!(
                "protocol version {} is not supported: aranya {} speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                hello.protocol_version,
                env!("CARGO_PKG_VERSION"),
            );
            refuse(&mut link, RefuseReason::IncompatibleVersion, &message).await;
            return;
        }
        if hello.device.is_empty() {
            refuse(&mut link, RefuseReason::BadHello, "hello names no device").await;
            return;
        }
        let mut devices = self.devices.lock().await;
        let decision = match devices.get_mut(&hello.device) {
            None => Decision::Refuse(
                RefuseReason::UnknownDevice,
                format!("no EdgeDevice named {:?} is managed here", hello.device),
            ),
            Some(entry) if !entry.methods.contains(&link.transport) => Decision::Refuse(
                RefuseReason::MethodNotAllowed,
                format!(
                    "EdgeDevice {:?} does not list {} among its connectivity methods ({})",
                    hello.device,
                    link.transport,
                    entry.methods.join(", ")
                ),
            ),
            Some(entry) => decide(entry, &hello),
        };
        match decision {
            Decision::Refuse(reason, message) => {
                drop(devices);
                refuse(&mut link, reason, &message).await;
            }
            Decision::Resume(handle, epoch) => {
                let welcome = Welcome {
                    session_id: handle.session_id(),
                    epoch,
                    resumed: true,
                    protocol_version: PROTOCOL_VERSION,
                };
                if let Some(live) = devices.get_mut(&hello.device).and_then(|e| e.live.as_mut()) {
                    live.epoch = epoch;
                    live.peer = link.peer.clone();
                }
                drop(devices);
                if handshake::welcome(&mut link, welcome).await.is_ok() {
                    info!(session = handle.session_id(), epoch, "session resumed");
                    let _ = handle.attach(link, epoch);
                }
            }
            Decision::New(node) => {
                let session_id = rand::random::<u64>() | 1;
                let transport = link.transport;
                let peer = link.peer.clone();
                let welcome = Welcome {
                    session_id,
                    epoch: 1,
                    resumed: false,
                    protocol_version: PROTOCOL_VERSION,
                };
                if let Err(e) = handshake::welcome(&mut link, welcome).await {
                    warn!(error = %e, "sending welcome");
                    return;
                }
                let span = info_span!("session", session = session_id);
                let (handle, incoming) = match connectivity::session::spawn(
                    Role::Cloud,
                    self.config.clone(),
                    session_id,
                    1,
                    link,
                    span,
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot start a session");
                        return;
                    }
                };
                if let Some(entry) = devices.get_mut(&hello.device) {
                    if let Some(old) = entry.live.take() {
                        old.handle.close("replaced by a new agent instance");
                    }
                    entry.live = Some(Live {
                        handle: handle.clone(),
                        nonce: hello.instance_nonce.clone(),
                        epoch: 1,
                        peer,
                    });
                }
                drop(devices);
                info!(session = session_id, transport, "device connected");
                let _ = node
                    .send(NodeCmd::Connected(Connected {
                        session: handle,
                        incoming,
                        transport,
                    }))
                    .await;
            }
        }
    }
}

fn decide(entry: &mut Entry, hello: &Hello) -> Decision {
    let Some(live) = entry.live.as_ref().filter(|l| !l.handle.is_closed()) else {
        return Decision::New(entry.node.clone());
    };
    let same_agent = live.nonce == hello.instance_nonce;
    if same_agent && hello.session_id == live.handle.session_id() {
        return Decision::Resume(live.handle.clone(), live.epoch.max(hello.last_epoch) + 1);
    }
    let connected = matches!(*live.handle.state().borrow(), LinkState::Connected { .. });
    if connected && !same_agent {
        return Decision::Refuse(
            RefuseReason::DuplicateDevice,
            format!(
                "device {:?} is already connected from {}; refusing a second agent with the same name",
                hello.device, live.peer
            ),
        );
    }
    // The same agent lost its session, or a new agent replaces one whose link is gone.
    Decision::New(entry.node.clone())
}

async fn refuse(link: &mut connectivity::Link, reason: RefuseReason, message: &str) {
    warn!(?reason, %message, "refusing device");
    if let Err(e) = handshake::refuse(link, reason, message).await
        && !matches!(e, HandshakeError::Closed)
    {
        warn!(error = %e, "sending refusal");
    }
}
