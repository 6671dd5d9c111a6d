//! Where devices arrive: the handshake on every new link (the device proves
//! its identity first, see [`crate::identity`]), one session per device,
//! resumes, and refusals (unknown device, duplicate, bad version, identity).
//! A session ends when the certificate it was authenticated with expires
//! (unless renewed over it) or its identity is revoked.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ::identity::DeviceCert;
use bytes::Bytes;
use connectivity::{
    Link, SessionConfig, SessionHandle, Stream,
    handshake::{self, HandshakeError, ReceivedHello},
    session::LinkState,
};
use proto::{
    api::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION},
    envelope::{Hello, RefuseReason, Welcome},
    session::Role,
};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::{identity, virtualnode::NodeCmd};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A device's session, as the hub knows it.
#[derive(Debug)]
struct Live {
    handle: SessionHandle,
    nonce: Bytes,
    epoch: u64,
    peer: String,
    /// The identity id its certificate names.
    identity: String,
    /// When the session's authentication runs out (the latest certificate
    /// shown or renewed over it); a task closes the session then.
    expiry: watch::Sender<SystemTime>,
}

#[derive(Debug)]
struct Entry {
    node: mpsc::Sender<NodeCmd>,
    live: Option<Live>,
    /// Transports the EdgeDevice lists; links over others are refused.
    methods: Vec<&'static str>,
    /// The identity id in the EdgeDevice's status; `None` until assigned.
    identity: Option<String>,
}

/// A new session for a virtual node, with the streams its device opens.
#[derive(Debug)]
pub struct Connected {
    pub session: SessionHandle,
    pub incoming: mpsc::UnboundedReceiver<Stream>,
    pub transport: &'static str,
}

/// What the hub knows of a Node name.
#[derive(Debug, Clone)]
pub enum Presence {
    /// No edge device of this aranya's.
    NotADevice,
    /// An edge device with no session now.
    Offline,
    Online(SessionHandle),
}

#[derive(Debug)]
pub struct Hub {
    devices: Mutex<HashMap<String, Entry>>,
    config: SessionConfig,
    identity: Arc<identity::Service>,
}

enum Decision {
    Refuse(RefuseReason, String),
    Resume(SessionHandle, u64),
    New(mpsc::Sender<NodeCmd>),
}

impl Hub {
    pub fn new(config: SessionConfig, identity: Arc<identity::Service>) -> Arc<Self> {
        Arc::new(Self {
            devices: Mutex::new(HashMap::new()),
            config,
            identity,
        })
    }

    /// Makes `device` known: its links over `methods` are accepted and go to
    /// `node`, when their certificates name `identity`. A live session of
    /// another identity (revoked by a rotation) ends.
    pub async fn register(
        &self,
        device: &str,
        node: mpsc::Sender<NodeCmd>,
        methods: Vec<&'static str>,
        identity: Option<String>,
    ) {
        let mut devices = self.devices.lock().await;
        let entry = devices
            .entry(device.to_string())
            .and_modify(|e| {
                e.node = node.clone();
                e.methods.clone_from(&methods);
                e.identity.clone_from(&identity);
            })
            .or_insert(Entry {
                node,
                live: None,
                methods,
                identity: identity.clone(),
            });
        if let Some(live) = &entry.live
            && identity.as_ref() != Some(&live.identity)
        {
            warn!(
                device,
                "the device's identity was revoked: closing its session"
            );
            live.handle.close("the device's identity was revoked");
            entry.live = None;
        }
    }

    /// A certificate renewed over `device`'s live session extends it.
    pub async fn extend(&self, device: &str, not_after: SystemTime) {
        if let Some(live) = self
            .devices
            .lock()
            .await
            .get(device)
            .and_then(|e| e.live.as_ref())
        {
            live.expiry.send_if_modified(|at| {
                let later = not_after > *at;
                if later {
                    *at = not_after;
                }
                later
            });
        }
    }

    /// Whether `device` is an edge device of this aranya's, and its live
    /// session if it is connected.
    pub async fn presence(&self, device: &str) -> Presence {
        match self.devices.lock().await.get(device) {
            None => Presence::NotADevice,
            Some(e) => match &e.live {
                Some(l) => Presence::Online(l.handle.clone()),
                None => Presence::Offline,
            },
        }
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
        let received = match handshake::read_hello(&mut link, HELLO_TIMEOUT).await {
            Ok(received) => received,
            Err(e) => {
                warn!(error = %e, "handshake failed");
                return;
            }
        };
        let span = info_span!("device", device = %received.hello.device);
        self.handshake(link, received).instrument(span).await;
    }

    async fn handshake(&self, mut link: Link, received: ReceivedHello) {
        let hello = &received.hello;
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
        let expected = {
            let devices = self.devices.lock().await;
            match devices.get(&hello.device) {
                None => Err((
                    RefuseReason::UnknownDevice,
                    format!("no EdgeDevice named {:?} is managed here", hello.device),
                )),
                Some(entry) if !entry.methods.contains(&link.transport) => Err((
                    RefuseReason::MethodNotAllowed,
                    format!(
                        "EdgeDevice {:?} does not list {} among its connectivity methods ({})",
                        hello.device,
                        link.transport,
                        entry.methods.join(", ")
                    ),
                )),
                Some(entry) => Ok(entry.identity.clone()),
            }
        };
        let expected = match expected {
            Ok(expected) => expected,
            Err((reason, message)) => {
                refuse(&mut link, reason, &message).await;
                return;
            }
        };
        // A link without a client certificate (on gRPC) may only bootstrap.
        if hello.bootstrap.is_some() {
            match self.identity.bootstrap(&mut link, &received).await {
                Ok(()) => info!("bootstrap: certificate issued"),
                Err(r) => refuse(&mut link, r.reason, &r.message).await,
            }
            return;
        }
        let cert = match self
            .identity
            .authenticate(&mut link, &received, expected.as_deref())
            .await
        {
            Ok(cert) => cert,
            Err(r) => {
                refuse(&mut link, r.reason, &r.message).await;
                return;
            }
        };
        let mut devices = self.devices.lock().await;
        let decision = match devices.get_mut(&hello.device) {
            // Unregistered, or revoked, while it proved itself.
            Some(entry) if entry.identity.as_deref() == Some(cert.identity.as_str()) => {
                decide(entry, hello)
            }
            _ => Decision::Refuse(
                RefuseReason::IdentityRevoked,
                "the device's identity changed during the handshake".into(),
            ),
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
                    live.expiry.send_if_modified(|at| {
                        let later = cert.not_after > *at;
                        if later {
                            *at = cert.not_after;
                        }
                        later
                    });
                }
                drop(devices);
                if handshake::welcome(&mut link, welcome).await.is_ok() {
                    info!(session = handle.session_id(), epoch, serial = %cert.serial, "session resumed");
                    let _ = handle.attach(link, epoch);
                    self.record(cert);
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
                    let (expiry, until) = watch::channel(cert.not_after);
                    tokio::spawn(close_at_expiry(handle.clone(), until).in_current_span());
                    entry.live = Some(Live {
                        handle: handle.clone(),
                        nonce: hello.instance_nonce.clone(),
                        epoch: 1,
                        peer,
                        identity: cert.identity.clone(),
                        expiry,
                    });
                }
                drop(devices);
                info!(session = session_id, transport, serial = %cert.serial, "device connected");
                self.record(cert);
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

impl Hub {
    /// Shows the certificate in the EdgeDevice's status, off the handshake's path.
    fn record(&self, cert: DeviceCert) {
        let identity = self.identity.clone();
        tokio::spawn(async move { identity.record(&cert).await }.in_current_span());
    }
}

/// Closes `session` once its authentication runs out.
async fn close_at_expiry(session: SessionHandle, mut until: watch::Receiver<SystemTime>) {
    loop {
        let at = *until.borrow_and_update();
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(left) => {
                if *until.borrow() <= SystemTime::now() {
                    warn!("the device's certificate expired: closing its session");
                    session.close("the device's certificate expired");
                    return;
                }
            }
            changed = until.changed() => if changed.is_err() { return },
        }
        if session.is_closed() {
            return;
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
