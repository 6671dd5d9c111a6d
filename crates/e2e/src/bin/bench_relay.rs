//! Benchmark: the cluster-network relay against direct connections, in one
//! run, per transport. The device runs in a network namespace of its own
//! (as in `tests/relay.rs`); its server sits behind a Service on this
//! machine's address.
//!
//! - throughput: a download through the relay (the Service's ClusterIP,
//!   from the device host) against the same download over a direct
//!   connection from the same namespace to the same server (a route to it
//!   is added for the baseline);
//! - connect latency: connecting and echoing one byte, relay against direct;
//! - DNS: queries per second arhat answers for a cluster name, and their
//!   latency, against this machine's own resolver (`/etc/resolv.conf`)
//!   answering a name it knows (`--baseline-name`), with the same load.
//!
//! `make bench` runs it (needs what `make test` needs).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use e2e::{TestEnv, devicens::DeviceHost, transport::Transport, wait_for};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

#[derive(Debug, Parser)]
struct Cli {
    /// Download size in MiB.
    #[arg(long, default_value_t = 100)]
    mib: u64,
    /// Timed downloads per side (alternating); the best of each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections per side for the connect latency; the median is reported.
    #[arg(long, default_value_t = 50)]
    connects: usize,
    /// Seconds of DNS load per resolver.
    #[arg(long, default_value_t = 3)]
    dns_secs: u64,
    /// Queries in flight at once.
    #[arg(long, default_value_t = 8)]
    dns_concurrency: usize,
    /// A name this machine's resolver answers, for the DNS baseline.
    #[arg(long, default_value = "deb.debian.org.")]
    baseline_name: String,
    /// Transports to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "grpc,mqtt")]
    transports: Vec<String>,
}

const CHUNK: usize = 64 * 1024;

/// The server: a first byte `D` and a length ask for that many bytes; `E`
/// echoes everything after it.
async fn serve() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((e2e::cluster::node_address(), 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let mut op = [0u8; 1];
                if conn.read_exact(&mut op).await.is_err() {
                    return;
                }
                if op[0] == b'D' {
                    let Ok(len) = conn.read_u64().await else {
                        return;
                    };
                    let chunk = vec![0u8; CHUNK];
                    let mut left = len;
                    while left > 0 {
                        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
                        if conn.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = conn.shutdown().await;
                } else {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    Ok(addr)
}

async fn download(host: &DeviceHost, to: SocketAddr, len: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = host.connect(to).await?;
    conn.write_u8(b'D').await?;
    conn.write_u64(len).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    anyhow::ensure!(got == len, "downloaded {got} of {len} bytes from {to}");
    Ok(started.elapsed())
}

/// Connecting, then one byte there and back.
async fn connect_echo(host: &DeviceHost, to: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn: TcpStream = host.connect(to).await?;
    conn.set_nodelay(true)?;
    conn.write_all(b"Ex").await?;
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).await?;
    Ok(started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Queries per second and median latency of `name` (A) at `server`, with
/// `sockets` each keeping one query in flight for `secs`.
async fn dns_load(
    sockets: Vec<UdpSocket>,
    server: SocketAddr,
    name: &str,
    secs: u64,
) -> anyhow::Result<(f64, Duration)> {
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    query.metadata.recursion_desired = true;
    let bytes = Arc::new(query.to_vec()?);
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for socket in sockets {
        let bytes = bytes.clone();
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut buf = vec![0u8; 4096];
            while Instant::now() < deadline {
                let sent = Instant::now();
                if socket.send_to(&bytes, server).await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
                    Ok(Ok(_)) => {
                        latencies.push(sent.elapsed());
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
    anyhow::ensure!(!all.is_empty(), "{server} answered no query for {name}");
    let qps = answered.load(Ordering::Relaxed) as f64 / secs as f64;
    Ok((qps, median(all)))
}

/// One transport's figures.
struct Report {
    transport: String,
    direct_mibs: f64,
    relay_mibs: f64,
    direct_connect: Duration,
    relay_connect: Duration,
    arhat_dns: (f64, Duration),
    device_dns: Option<(f64, Duration)>,
}

fn mibs(mib: u64, took: Duration) -> f64 {
    mib as f64 / took.as_secs_f64()
}

async fn bench(cli: &Cli, transport: Transport, name: &str) -> anyhow::Result<Report> {
    let env = TestEnv::on_device_host("bench-relay", transport).await?;
    let ns = env.name.clone();
    let server = serve().await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &ns);
    let service = json!({
        "metadata": { "name": "bulk", "labels": { "app": "bulk" } },
        "spec": { "ports": [{ "name": "data", "port": 80, "targetPort": "data" }] },
    });
    let created = services
        .create(&PostParams::default(), &serde_json::from_value(service)?)
        .await?;
    let cluster_ip: IpAddr = created
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")?
        .parse()?;
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), &ns);
    let slice = json!({
        "metadata": { "name": "bulk-1", "labels": { "kubernetes.io/service-name": "bulk" } },
        "addressType": "IPv4",
        "ports": [{ "name": "data", "port": server.port() }],
        "endpoints": [{ "addresses": [server.ip().to_string()] }],
    });
    slices
        .create(&PostParams::default(), &serde_json::from_value(slice)?)
        .await?;
    let up = env.device_up("a", 1).await?;
    let allow = json!({ "spec": { "network": { "services": [{ "namespaces": [ns] }] } } });
    env.devices()
        .patch(&up.name, &PatchParams::default(), &Patch::Merge(&allow))
        .await?;
    let host = env.device_host.as_ref().context("no device host")?;
    host.route_to(server.ip())?;
    let relayed = SocketAddr::new(cluster_ip, 80);
    wait_for(
        "the relay to the bench server",
        Duration::from_secs(60),
        || async { connect_echo(host, relayed).await.ok() },
    )
    .await?;

    let len = cli.mib << 20;
    let (mut direct, mut relay) = (Vec::new(), Vec::new());
    for _ in 0..cli.rounds {
        direct.push(download(host, server, len).await?);
        relay.push(download(host, relayed, len).await?);
    }
    let (mut direct_c, mut relay_c) = (Vec::new(), Vec::new());
    for _ in 0..cli.connects {
        direct_c.push(connect_echo(host, server).await?);
        relay_c.push(connect_echo(host, relayed).await?);
    }
    let dns = SocketAddr::new(
        e2e::podnet::dns_address(&env.arhat_data_dir(&up.name))?.into(),
        53,
    );
    let mut sockets = Vec::new();
    for _ in 0..cli.dns_concurrency {
        sockets.push(host.udp_socket().await?);
    }
    let arhat_dns = dns_load(
        sockets,
        dns,
        &format!("bulk.{ns}.svc.cluster.local."),
        cli.dns_secs,
    )
    .await?;
    let device_dns = match device_resolver() {
        Some(resolver) => {
            let mut sockets = Vec::new();
            for _ in 0..cli.dns_concurrency {
                sockets.push(UdpSocket::bind(("0.0.0.0", 0)).await?);
            }
            dns_load(sockets, resolver, &cli.baseline_name, cli.dns_secs)
                .await
                .map_err(|e| eprintln!("bench-relay: no DNS baseline: {e}"))
                .ok()
        }
        None => None,
    };
    Ok(Report {
        transport: name.to_string(),
        direct_mibs: mibs(cli.mib, direct.iter().copied().min().unwrap_or_default()),
        relay_mibs: mibs(cli.mib, relay.iter().copied().min().unwrap_or_default()),
        direct_connect: median(direct_c),
        relay_connect: median(relay_c),
        arhat_dns,
        device_dns,
    })
}

/// This machine's first nameserver.
fn device_resolver() -> Option<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ns| ns.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut reports = Vec::new();
    for name in &cli.transports {
        let transport = match name.as_str() {
            "grpc" => Transport::Grpc,
            "mqtt" => e2e::transport::MQTT,
            other => anyhow::bail!("unknown transport {other:?} (grpc, mqtt)"),
        };
        reports.push(bench(&cli, transport, name).await?);
    }
    println!(
        "\n{} MiB download (best of {}), connect+echo (median of {}), DNS {} s at {} in flight\n",
        cli.mib, cli.rounds, cli.connects, cli.dns_secs, cli.dns_concurrency
    );
    println!(
        "| transport | direct MiB/s | relay MiB/s | relay/direct | direct connect | relay connect | relay/direct | arhat DNS q/s | median | device resolver q/s | median |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        let (bq, bl) = r
            .device_dns
            .map_or(("-".to_string(), "-".to_string()), |(q, l)| {
                (format!("{q:.0}"), format!("{l:.2?}"))
            });
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2?} | {:.2?} | {:.1}x | {:.0} | {:.2?} | {bq} | {bl} |",
            r.transport,
            r.direct_mibs,
            r.relay_mibs,
            r.relay_mibs / r.direct_mibs,
            r.direct_connect,
            r.relay_connect,
            r.relay_connect.as_secs_f64() / r.direct_connect.as_secs_f64(),
            r.arhat_dns.0,
            r.arhat_dns.1,
        );
    }
    Ok(())
}
