//! The device side of the cluster-network relay, UDP: a listener per
//! Service address and port (the interception table maps each to its own),
//! and per flow (a client address sending to it) one Connect stream to
//! aranya carrying Datagram messages. A flow ends when it has been idle for
//! [`FLOW_IDLE`]. While the device is offline, datagrams are dropped, as a
//! network without a route drops them.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use connectivity::SessionHandle;
use proto::api::Datagram;
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
};
use tracing::{debug, warn};

/// As conntrack's default for a UDP flow that has seen replies.
const FLOW_IDLE: Duration = Duration::from_secs(30);
/// Datagrams of a flow waiting for its stream.
const FLOW_QUEUE: usize = 64;

/// The UDP listeners, one per target.
#[derive(Debug)]
pub struct UdpRelay {
    address: Ipv4Addr,
    session: watch::Receiver<Option<SessionHandle>>,
    listeners: HashMap<SocketAddrV4, Listener>,
}

#[derive(Debug)]
struct Listener {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpRelay {
    pub fn new(address: Ipv4Addr, session: watch::Receiver<Option<SessionHandle>>) -> Self {
        Self {
            address,
            session,
            listeners: HashMap::new(),
        }
    }

    /// Listeners for exactly `targets` (a new one bound for each new
    /// target, those of targets gone closed), and each target's port. A
    /// target no listener could be bound for is left out, and logged.
    pub async fn sync(&mut self, targets: &BTreeSet<SocketAddrV4>) -> BTreeMap<SocketAddrV4, u16> {
        self.listeners.retain(|t, _| targets.contains(t));
        for target in targets {
            if self.listeners.contains_key(target) {
                continue;
            }
            let bound = UdpSocket::bind((self.address, 0))
                .await
                .and_then(|s| Ok((s.local_addr()?.port(), s)));
            match bound {
                Ok((port, socket)) => {
                    let task =
                        tokio::spawn(listen(Arc::new(socket), *target, self.session.clone()));
                    self.listeners.insert(*target, Listener { port, task });
                }
                Err(e) => warn!(%target, error = %e, "no UDP listener for a Service port"),
            }
        }
        self.listeners.iter().map(|(t, l)| (*t, l.port)).collect()
    }
}

/// Hands each datagram to its flow, starting flows as clients appear.
async fn listen(
    socket: Arc<UdpSocket>,
    target: SocketAddrV4,
    session: watch::Receiver<Option<SessionHandle>>,
) {
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<SocketAddr>();
    let mut buf = vec![0u8; connectivity::splice::MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(%target, error = %e, "receiving a datagram");
                        continue;
                    }
                };
                let mut datagram = Bytes::copy_from_slice(&buf[..n]);
                if let Some(f) = flows.get(&client) {
                    match f.try_send(datagram) {
                        Ok(()) => continue,
                        // A full queue: the flow's stream is behind; drop it
                        // as a congested network would.
                        Err(mpsc::error::TrySendError::Full(_)) => continue,
                        Err(mpsc::error::TrySendError::Closed(d)) => datagram = d,
                    }
                }
                let Some(current) = super::relay::online(&session) else {
                    debug!(%target, %client, "datagram dropped: the device is offline");
                    continue;
                };
                let (tx, rx) = mpsc::channel(FLOW_QUEUE);
                let _ = tx.try_send(datagram);
                flows.insert(client, tx);
                let ended_tx = ended_tx.clone();
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Err(reason) = flow(current, socket, client, target, rx).await {
                        debug!(%target, %client, %reason, "UDP flow refused");
                    }
                    let _ = ended_tx.send(client);
                });
            }
            Some(client) = ended.recv() => {
                if flows.get(&client).is_some_and(mpsc::Sender::is_closed) {
                    flows.remove(&client);
                }
            }
        }
    }
}

/// One flow: its datagrams to aranya, aranya's back to the client, until
/// idle; or, when aranya says the endpoint is a pod of this device, to and
/// from that pod directly.
async fn flow(
    session: SessionHandle,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    target: SocketAddrV4,
    mut datagrams: mpsc::Receiver<Bytes>,
) -> Result<(), String> {
    let stream = match super::relay::connect(&session, "UDP", SocketAddr::V4(target)).await? {
        super::relay::Relayed::Stream(stream) => stream,
        super::relay::Relayed::Local(endpoint) => {
            let local = dial_local(endpoint)
                .await
                .map_err(|e| format!("{target}: {endpoint}: {e}"))?;
            debug!(%target, %endpoint, "a pod of this device: its UDP flow goes there directly");
            let mut buf = vec![0u8; connectivity::splice::MAX_DATAGRAM];
            loop {
                tokio::select! {
                    outgoing = datagrams.recv() => match outgoing {
                        Some(data) => { let _ = local.send(&data).await; }
                        None => break,
                    },
                    incoming = local.recv(&mut buf) => {
                        if let Ok(n) = incoming {
                            let _ = socket.send_to(&buf[..n], client).await;
                        }
                    }
                    () = tokio::time::sleep(FLOW_IDLE) => break,
                }
            }
            datagrams.close();
            return Ok(());
        }
    };
    let (mut tx, mut rx) = stream.split();
    loop {
        tokio::select! {
            outgoing = datagrams.recv() => match outgoing {
                Some(data) => tx.send_message(&Datagram { data }).await.map_err(|e| e.to_string())?,
                None => break,
            },
            incoming = rx.recv_message::<Datagram>() => match incoming {
                Ok(Some(d)) => {
                    let _ = socket.send_to(&d.data, client).await;
                }
                _ => break,
            },
            () = tokio::time::sleep(FLOW_IDLE) => break,
        }
    }
    // Datagrams that arrive from now on start a new flow.
    datagrams.close();
    tx.finish();
    Ok(())
}

/// A socket connected to a pod of this device, marked so the interception
/// table leaves it alone (a headless Service's endpoint is intercepted too).
async fn dial_local(endpoint: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(endpoint);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
    socket.set_mark(super::intercept::OWN_MARK)?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket.into())?;
    socket.connect(endpoint).await?;
    Ok(socket)
}
