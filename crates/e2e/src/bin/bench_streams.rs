//! Benchmark: the streaming verbs against their direct baselines, in one run.
//!
//! - port-forward: a 100 MiB download through `kubectl port-forward` (the
//!   whole path: kubectl, apiserver, aranya, session layer, arhat, the pod's
//!   network namespace) and through a SPDY client speaking to aranya's
//!   kubelet endpoint as the apiserver does (the aranya↔arhat segment),
//!   each against the same download over a direct TCP connection to the
//!   container;
//! - exec: `kubectl exec -- true` round trips against `docker exec` of the
//!   same container, and the interactive round trip (a line typed into
//!   `cat` until its echo) of `kubectl exec -i` against `docker exec -i`.
//!
//! Each transport (gRPC; MQTT through a local Mosquitto at 128 KiB and at
//! 8 KiB payloads) gets its own bed, measured against its own baselines.
//!
//! `make bench` runs it (needs what `make test` needs).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::{
    bench::BenchBed,
    images::BUSYBOX,
    kubelet::{self, Caller},
    pods::merge,
    spdy_client::PortForward,
    transport::Transport,
    wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;

#[derive(Debug, Parser)]
struct Cli {
    /// Download size in MiB.
    #[arg(long, default_value_t = 100)]
    mib: u64,
    /// Timed downloads per side (alternating); the best of each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// exec round trips per side; the median is reported.
    #[arg(long, default_value_t = 15)]
    execs: usize,
    /// Interactive echo round trips per side; the median is reported.
    #[arg(long, default_value_t = 50)]
    echoes: usize,
    /// Transports to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "grpc,mqtt,mqtt8k")]
    transports: Vec<String>,
}

/// One transport's figures.
struct Report {
    transport: String,
    direct: Duration,
    segment: Duration,
    tunneled: Duration,
    docker_exec: Duration,
    kubectl_exec: Duration,
    docker_echo: Duration,
    kubectl_echo: Duration,
}

fn transport(name: &str) -> anyhow::Result<Transport> {
    Ok(match name {
        "grpc" => Transport::Grpc,
        "mqtt" => e2e::transport::MQTT,
        "mqtt8k" => e2e::transport::MQTT_8K,
        other => bail!("unknown transport {other:?} (grpc, mqtt, mqtt8k)"),
    })
}

/// Median time from writing a line into `cmd`'s stdin (a `cat`) to reading it back.
fn echo_rtt(mut cmd: Command, rounds: usize) -> anyhow::Result<Duration> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut samples = Vec::with_capacity(rounds);
    // The first line also waits for the stream to be set up: not counted.
    for i in 0..=rounds {
        let started = Instant::now();
        writeln!(stdin, "echo {i}")?;
        stdin.flush()?;
        let line = lines.next().context("the echo ended")??;
        anyhow::ensure!(line == format!("echo {i}"), "echoed {line:?}");
        if i > 0 {
            samples.push(started.elapsed());
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    Ok(median(samples))
}

const DEVICE: &str = "bench-streams-device";

/// `GET /big` over `addr`; (bytes, time).
fn download(addr: (&str, u16)) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    write!(s, "GET /big HTTP/1.0\r\n\r\n")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((total, started.elapsed()))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn timed(mut cmd: Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut reports = Vec::new();
    for name in &cli.transports {
        let report = measure(&cli, name).await?;
        print(&cli, &report);
        reports.push(report);
    }
    println!("\nsummary (each against its own bed's direct baseline)");
    println!(
        "  transport  segment throughput / direct   interactive echo kubectl / docker   exec kubectl / docker"
    );
    for r in &reports {
        println!(
            "  {:<9}  {:>28.3}   {:>34.2}   {:>21.2}",
            r.transport,
            r.direct.as_secs_f64() / r.segment.as_secs_f64(),
            r.kubectl_echo.as_secs_f64() / r.docker_echo.as_secs_f64(),
            r.kubectl_exec.as_secs_f64() / r.docker_exec.as_secs_f64(),
        );
    }
    Ok(())
}

async fn measure(cli: &Cli, name: &str) -> anyhow::Result<Report> {
    let bed = BenchBed::start_over(DEVICE, 5, "", transport(name)?).await?;
    let size = cli.mib << 20;
    let script = format!(
        "mkdir -p /tmp/www && head -c {size} /dev/zero > /tmp/www/big && exec httpd -f -p 8080 -h /tmp/www"
    );
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": merge(bed.placement(), json!({
            "containers": [{ "name": "web", "image": BUSYBOX, "command": ["sh", "-c", script] }],
        })),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let (id, ip) = wait_for("the pod serving", Duration::from_secs(120), || async {
        let pod = pods.get("web").await.ok()?;
        let status = pod.status?;
        let ip = status.pod_ip?;
        let id = status.container_statuses?.first()?.container_id.clone()?;
        let id = id.strip_prefix("docker://")?.to_string();
        let (n, _) = download((ip.as_str(), 8080)).ok()?;
        (n > size).then_some((id, ip))
    })
    .await?;

    let mut forward = Command::new(&bed.cluster.kube_binary)
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(&bed.cluster.admin_kubeconfig)
        .args(["port-forward", "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(forward.stdout.take().context("stdout")?).lines();
    let local: u16 = e2e::Cluster::forwarded_port(&mut lines)?;
    std::thread::spawn(move || for _ in lines.by_ref() {});

    // The apiserver's identity toward kubelets, so the endpoint authorizes us.
    let identity = bed
        .cp
        .ca()
        .issue_client(testbed::KUBELET_CLIENT_USER, &[])?;
    let node: k8s_openapi::api::core::v1::Node = Api::all(bed.client.clone()).get(DEVICE).await?;
    let kubelet_port = kubelet::port(&node).context("the Node advertises no kubelet port")?;
    let ca = std::fs::read_to_string(&bed.cluster.ca_file)?;
    let mut segment_client = PortForward::open(
        e2e::cluster::node_address(),
        kubelet_port,
        &ca,
        Caller::Certificate(&identity),
        "default",
        "web",
    )
    .await?;

    let (mut direct, mut tunneled, mut segment) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..cli.rounds {
        let started = Instant::now();
        let got = segment_client
            .exchange(8080, b"GET /big HTTP/1.0\r\n\r\n")
            .await?;
        anyhow::ensure!(
            got.data > size,
            "segment download short: {} ({})",
            got.data,
            got.error
        );
        segment = segment.min(started.elapsed());
        let (n, t) = download((ip.as_str(), 8080))?;
        anyhow::ensure!(n > size, "direct download short: {n}");
        direct = direct.min(t);
        let (n, t) = download(("127.0.0.1", local))?;
        anyhow::ensure!(n > size, "port-forward download short: {n}");
        tunneled = tunneled.min(t);
    }
    let _ = forward.kill();
    let _ = forward.wait();

    let kubectl = || {
        let mut cmd = Command::new(&bed.cluster.kube_binary);
        cmd.arg("kubectl")
            .arg("--kubeconfig")
            .arg(&bed.cluster.admin_kubeconfig)
            .arg("exec");
        cmd
    };
    let kubectl_exec = || {
        let mut cmd = kubectl();
        cmd.args(["web", "--", "true"]);
        cmd
    };
    let docker_exec = || {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &id, "true"]);
        cmd
    };
    let (mut via_kubectl, mut via_docker) = (Vec::new(), Vec::new());
    for _ in 0..cli.execs {
        via_docker.push(timed(docker_exec())?);
        via_kubectl.push(timed(kubectl_exec())?);
    }
    let (via_kubectl, via_docker) = (median(via_kubectl), median(via_docker));
    let mut kubectl_cat = kubectl();
    kubectl_cat.args(["-i", "web", "--", "cat"]);
    let mut docker_cat = Command::new("docker");
    docker_cat.args(["exec", "-i", &id, "cat"]);
    let docker_echo = echo_rtt(docker_cat, cli.echoes)?;
    let kubectl_echo = echo_rtt(kubectl_cat, cli.echoes)?;
    Ok(Report {
        transport: name.to_string(),
        direct,
        segment,
        tunneled,
        docker_exec: via_docker,
        kubectl_exec: via_kubectl,
        docker_echo,
        kubectl_echo,
    })
}

fn print(cli: &Cli, r: &Report) {
    let mibs = |t: Duration| cli.mib as f64 / t.as_secs_f64();
    println!("== over {}", r.transport);
    println!(
        "port-forward, {} MiB download, best of {} rounds each",
        cli.mib, cli.rounds
    );
    println!(
        "  direct TCP to the container:          {:.1} MiB/s",
        mibs(r.direct)
    );
    println!(
        "  aranya↔arhat segment (SPDY client to the kubelet endpoint): {:.1} MiB/s",
        mibs(r.segment)
    );
    println!(
        "  kubectl port-forward (whole path):    {:.1} MiB/s",
        mibs(r.tunneled)
    );
    println!(
        "  throughput ratio, segment / direct:    {:.3}",
        r.direct.as_secs_f64() / r.segment.as_secs_f64()
    );
    println!(
        "  throughput ratio, whole path / direct: {:.3}",
        r.direct.as_secs_f64() / r.tunneled.as_secs_f64()
    );
    println!("exec round trip (`true`), median of {}", cli.execs);
    println!(
        "  docker exec:   {:.1} ms",
        r.docker_exec.as_secs_f64() * 1e3
    );
    println!(
        "  kubectl exec:  {:.1} ms",
        r.kubectl_exec.as_secs_f64() * 1e3
    );
    println!(
        "  time ratio (kubectl exec / docker exec): {:.2}",
        r.kubectl_exec.as_secs_f64() / r.docker_exec.as_secs_f64()
    );
    println!(
        "interactive round trip (a line through `cat`), median of {}",
        cli.echoes
    );
    println!(
        "  docker exec -i:   {:.2} ms",
        r.docker_echo.as_secs_f64() * 1e3
    );
    println!(
        "  kubectl exec -i:  {:.2} ms",
        r.kubectl_echo.as_secs_f64() * 1e3
    );
    println!(
        "  time ratio (kubectl / docker): {:.2}",
        r.kubectl_echo.as_secs_f64() / r.docker_echo.as_secs_f64()
    );
}
