//! aranya: for each `EdgeDevice`, a virtual Node kept alive for the device
//! agent (arhat) that dials in.
//!
//! - [`crd`]: the EdgeDevice resource.
//! - [`controller`]: EdgeDevice reconcile (finalizer, virtual node lifetime).
//! - [`virtualnode`]: the Node object, its status and its Lease.
//! - [`hub`]: devices arriving over any transport: handshake, sessions.
//! - [`identity`]: devices proving who they are; their certificates.
//! - [`mqtt`]: aranya's broker connection for each device with an mqtt method.
//! - [`kubelet`]: the kubelet endpoint of every virtual node.
//! - [`podcidr`]: the address pool of each virtual node's pods.
//! - [`pods`]: pods bound to a virtual node, run on its device.
//! - [`services`]: the cluster Services each device may reach.
//! - [`push`]: settings handed to a device (pod network, service catalogue).
//! - [`leader`]: one active replica at a time.
//! - [`lease`]: Leases judged by this replica's clock, not their writer's.

pub mod config;
pub mod controller;
pub mod crd;
pub mod hub;
pub mod identity;
pub mod kubelet;
pub mod leader;
pub mod lease;
pub mod mqtt;
pub mod podcidr;
pub mod pods;
pub mod push;
pub mod relay;
pub mod resources;
pub mod services;
pub mod virtualnode;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use connectivity::{SessionConfig, grpc};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::RunConfig;

/// Builds the kube client from the kubeconfig flag, or the environment.
pub async fn client(cfg: &RunConfig) -> anyhow::Result<kube::Client> {
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig and not in a cluster")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// A kubelet version the apiserver accepts: its own minor, never newer.
pub async fn kubelet_version(client: &kube::Client) -> anyhow::Result<String> {
    let info = client
        .apiserver_version()
        .await
        .context("reading the apiserver version")?;
    let minor: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(format!(
        "v{}.{}.0-aranya.{}",
        info.major,
        minor,
        env!("CARGO_PKG_VERSION")
    ))
}

/// Runs aranya until a signal, or until it loses leadership (an error).
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let client = client(&cfg).await?;
    if cfg.install_crd {
        crd::install(client.clone())
            .await
            .context("installing the EdgeDevice CRD")?;
    }
    let (Some(cert), Some(key)) = (&cfg.grpc_tls_cert, &cfg.grpc_tls_key) else {
        bail!("--grpc-tls-cert and --grpc-tls-key are required: devices only dial aranya over TLS");
    };
    let mut tls = grpc::ServerTls {
        cert_pem: std::fs::read(cert)
            .with_context(|| format!("--grpc-tls-cert {}", cert.display()))?,
        key_pem: std::fs::read(key).with_context(|| format!("--grpc-tls-key {}", key.display()))?,
        client_certs: None,
    };
    let identity = cfg.identity.clone().unwrap_or_else(|| {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{host}_{}", std::process::id())
    });
    let elector = leader::Elector::new(
        client.clone(),
        &cfg.namespace,
        &cfg.leader_election_id,
        &identity,
    );
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown_signal() => return Ok(()),
    }

    let identity = identity::Service::new(
        client.clone(),
        &cfg.namespace,
        &cfg.device_ca_secret,
        cfg.device_cert_lifetime,
    )
    .await
    .context("setting up device identity")?;
    tls.client_certs = Some(identity.client_cert_check());
    let hub = hub::Hub::new(
        SessionConfig {
            resume_window: cfg.resume_window,
            ..Default::default()
        },
        identity.clone(),
    );
    let (links_tx, links_rx) = mpsc::channel(64);
    let (secrets_tx, secrets) = tokio::sync::watch::channel(None);
    tokio::spawn(mqtt::watch_secrets(
        client.clone(),
        cfg.namespace.clone(),
        secrets_tx,
    ));
    let env = Arc::new(virtualnode::NodeEnv {
        client: client.clone(),
        node_address: cfg.node_address,
        cluster_cidr: cfg.cluster_cidr.0.clone(),
        services: services::Services::start(client.clone(), cfg.cluster_domain.clone()),
        kubelet: kubelet_endpoint(&cfg, &client).await?,
        kubelet_version: kubelet_version(&client).await?,
        reconnect_grace: cfg.reconnect_grace,
        pod_refresh: cfg.pod_refresh,
        identity,
        hub: hub.clone(),
        mqtt: Arc::new(mqtt::Env {
            client: client.clone(),
            namespace: cfg.namespace.clone(),
            links: links_tx.clone(),
            secrets,
        }),
    });
    let listener = bind(cfg.grpc_listen).await?;
    info!(address = %listener.local_addr()?, "gRPC endpoint listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve(listener, tls, links_tx, async {
        let _ = stop_rx.await;
    }));
    tokio::spawn(hub.clone().serve(links_rx));
    let controller = tokio::spawn(controller::run(
        client.clone(),
        hub.clone(),
        env,
        cfg.edge_device_selector.clone(),
    ));

    let outcome = tokio::select! {
        () = elector.hold() => Err(anyhow::anyhow!("lost the leader Lease")),
        () = shutdown_signal() => Ok(()),
        r = server => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        },
        _ = controller => Ok(()),
    };
    let _ = stop_tx.send(());
    hub.close_all("aranya stopping").await;
    if outcome.is_ok() {
        elector.release().await;
    }
    outcome
}

/// The kubelet endpoint's shared parts: who may call it, and where it binds.
async fn kubelet_endpoint(
    cfg: &RunConfig,
    client: &kube::Client,
) -> anyhow::Result<Arc<kubelet::Kubelet>> {
    let ca = match &cfg.kubelet_client_ca {
        Some(path) => {
            let ca = kubelet::auth::ClientCa::from_pem_file(path)
                .with_context(|| format!("--kubelet-client-ca {}", path.display()))?;
            ca.spawn_refresh_file(path.clone(), Duration::from_secs(300));
            ca
        }
        None => {
            let ca = kubelet::auth::ClientCa::from_cluster(client).await.context(
                "reading the cluster's client CA (kube-system/extension-apiserver-authentication); \
                 pass --kubelet-client-ca to name it instead",
            )?;
            ca.spawn_refresh(client.clone(), Duration::from_secs(300));
            ca
        }
    };
    let bind = if cfg.node_address.is_ipv6() {
        std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    Ok(kubelet::Kubelet::new(
        client.clone(),
        kubelet::auth::Auth::new(client.clone(), ca),
        kubelet::cert::ServingCerts::default(),
        cfg.kubelet_ports,
        bind,
        cfg.namespace.clone(),
    ))
}

async fn bind(address: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    // A previous leader may still hold the port for a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(%address, error = %e, "gRPC port busy; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("binding gRPC endpoint {address}: {e}"),
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `aranya bootstrap-token create`: a token for one device, and the arhat
/// config that uses it.
pub async fn create_bootstrap_token(
    cfg: &RunConfig,
    device: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let client = client(cfg).await?;
    let devices: kube::Api<crd::EdgeDevice> = kube::Api::all(client.clone());
    let ed = devices
        .get_opt(device)
        .await
        .with_context(|| format!("reading EdgeDevice {device}"))?
        .with_context(|| format!("no EdgeDevice named {device}"))?;
    let created = identity::token::create(client, &cfg.namespace, &ed, ttl)
        .await
        .with_context(|| format!("creating a bootstrap token for {device}"))?;
    Ok(format!(
        "# bootstrap token for EdgeDevice {device}, valid until {expires} (Secret {ns}/{secret})\n\
         # write the token to the device, owner-only, where arhat reads it:\n\
         #   install -m 600 /dev/stdin /var/lib/arhat/identity/bootstrap-token <<< '{token}'\n\
         # or point arhat's config at another file:\n\
         identity:\n  bootstrapTokenFile: /var/lib/arhat/identity/bootstrap-token\n\
         # token: {token}\n",
        expires = ::identity::cert::rfc3339(created.expires),
        ns = cfg.namespace,
        secret = created.secret,
        token = created.token.expose(),
    ))
}

/// `aranya device-ca rotate|prune`.
pub async fn device_ca(cfg: &RunConfig, command: &config::CaCommand) -> anyhow::Result<String> {
    let client = client(cfg).await?;
    let (ns, name) = (&cfg.namespace, &cfg.device_ca_secret);
    match command {
        config::CaCommand::Rotate => {
            identity::ca::rotate(client, ns, name).await?;
            Ok(format!(
                "Secret {ns}/{name}: a new device CA signs from now on; the previous ones stay trusted until `aranya device-ca prune`\n"
            ))
        }
        config::CaCommand::Prune => {
            let dropped = identity::ca::prune(client, ns, name).await?;
            Ok(format!(
                "Secret {ns}/{name}: {dropped} earlier CA(s) no longer trusted\n"
            ))
        }
    }
}
