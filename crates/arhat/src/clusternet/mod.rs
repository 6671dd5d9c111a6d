//! The cluster network as the device sees it: the Services it may reach,
//! as aranya last sent them ([`catalogue`]), their names ([`names`]) served
//! by arhat's DNS server ([`dns`]), and connections to them intercepted
//! ([`intercept`]) and relayed to aranya ([`relay`]).

pub mod catalogue;
pub mod dns;
pub mod hostdns;
pub mod intercept;
pub mod names;
pub mod relay;
pub mod udp;

pub use catalogue::Catalogue;

use connectivity::SessionHandle;
use proto::api::ServiceCatalogue;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{RelayBackend, RelayConfig};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay.address: putting {address} on lo: {message}")]
    Address {
        address: std::net::Ipv4Addr,
        message: String,
    },
    #[error("relay.port: listening on port {port}: {source}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Intercept(#[from] intercept::InterceptError),
}

/// Puts `address` on `lo` as a /32 (`ip addr replace`, so a restart finds
/// it there and keeps it): an address for arhat's own listeners that exists
/// before any pod, on a machine without dummy interfaces.
pub async fn put_on_loopback(address: std::net::IpAddr) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args(["addr", "replace", &format!("{address}/32"), "dev", "lo"])
        .env("PATH", crate::network::cni::search_path())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// UDP listeners for exactly `targets`' UDP ones, then the table for all of
/// them; the number of UDP targets with a listener.
async fn write(
    table: &intercept::Table,
    udp: &mut udp::UdpRelay,
    targets: &intercept::Targets,
) -> Result<usize, intercept::InterceptError> {
    let udp_ports = udp.sync(&targets.udp).await;
    table.apply(&targets.tcp, &udp_ports).await?;
    Ok(udp_ports.len())
}

/// Interception and relay running; [`Interception::stop`] removes the table.
#[derive(Debug)]
pub struct Interception {
    table: intercept::Table,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Interception {
    /// Starts the relay's listeners, then the table, which follows the
    /// catalogue from then on. A later write that fails is logged and tried
    /// again with the next change.
    pub async fn start(
        config: &RelayConfig,
        mut catalogue: watch::Receiver<ServiceCatalogue>,
        session: watch::Receiver<Option<SessionHandle>>,
    ) -> Result<Self, RelayError> {
        let address = config.address;
        put_on_loopback(address.into())
            .await
            .map_err(|message| RelayError::Address { address, message })?;
        let listen_failed = |source| RelayError::Listen {
            port: config.port,
            source,
        };
        let listener = relay::bind(address, config.port)
            .await
            .map_err(listen_failed)?;
        let port = listener.local_addr().map_err(listen_failed)?.port();
        let backend = match config.backend {
            RelayBackend::Auto => intercept::Backend::detect().await,
            RelayBackend::Nftables => intercept::Backend::Nftables,
            RelayBackend::Iptables => intercept::Backend::Iptables,
        };
        let table = intercept::Table {
            name: config.table.clone(),
            backend,
            address,
            port,
        };
        let mut udp = udp::UdpRelay::new(address, session.clone());
        let mut targets = intercept::Targets::of(&catalogue.borrow_and_update());
        let udp_count = write(&table, &mut udp, &targets).await?;
        info!(table = %table.name, backend = ?table.backend, %address, port, tcp = targets.tcp.len(), udp = udp_count, "intercepting traffic to cluster Services");
        let following = {
            let table = table.clone();
            tokio::spawn(async move {
                while catalogue.changed().await.is_ok() {
                    let next = intercept::Targets::of(&catalogue.borrow_and_update());
                    if next == targets {
                        continue;
                    }
                    match write(&table, &mut udp, &next).await {
                        Ok(udp_count) => {
                            info!(
                                tcp = next.tcp.len(),
                                udp = udp_count,
                                "interception follows the catalogue"
                            );
                            targets = next;
                        }
                        Err(e) => warn!(error = %e, "updating the interception table"),
                    }
                }
            })
        };
        Ok(Self {
            table,
            tasks: [following, relay::serve(listener, session)],
        })
    }

    /// Stops following the catalogue and deletes the table: connections to
    /// cluster Services then go where the device's routes send them.
    pub async fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.table.remove().await {
            warn!(error = %e, "removing the interception table");
        }
    }
}
