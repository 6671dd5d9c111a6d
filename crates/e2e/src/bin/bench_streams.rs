//! Benchmark: the streaming verbs against their direct baselines, in one run.
//!
//! - port-forward: a 100 MiB download through `kubectl port-forward` (the
//!   whole path: kubectl, apiserver, aranya, session layer, arhat, the pod's
//!   network namespace) and through a SPDY client speaking to aranya's
//!   kubelet endpoint as the apiserver does (the aranya↔arhat segment),
//!   each against the same download over a direct TCP connection to the
//!   container;
//! - exec: `exec true` round trips and the interactive round trip (a line
//!   typed into `cat` until its echo), each through `kubectl exec` (whole
//!   path) and a WebSocket exec on aranya's kubelet endpoint (the segment),
//!   against `docker exec` of the same container.
//!
//! Beside them, the floor under the segment ([`e2e::relay`]): two TLS
//! relays in a row with nothing in them but copies, the hops the segment
//! cannot do without (TLS to the kubelet endpoint, TLS between aranya and
//! arhat). The download runs through them to the same container; a line is
//! echoed through them by a TCP echo server, against the same echo direct.
//!
//! Each transport (gRPC; MQTT through a local Mosquitto at 128 KiB and at
//! 8 KiB payloads) gets its own bed, measured against its own baselines.
//!
//! `make bench` runs it (needs what `make test` needs).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
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
    process::{Memory, cpu_time},
    relay::{Echo, RelayChain},
    spdy_client::PortForward,
    transport::Transport,
    wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream as TokioTcp,
};

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
    /// Leave Nagle's algorithm on at the broker (Mosquitto's default), to
    /// see what `set_tcp_nodelay true` is worth.
    #[arg(long)]
    broker_nagle: bool,
}

/// One transport's figures.
struct Report {
    transport: String,
    direct: Duration,
    segment: Duration,
    tunneled: Duration,
    /// Through two TLS relays and nothing else.
    floor: Duration,
    /// aranya's and arhat's resident memory before the downloads, and
    /// their peaks over them.
    memory: [Memory; 2],
    /// CPU per MiB moved on the segment: aranya, arhat, the client.
    segment_cpu_per_mib: [Duration; 3],
    docker_exec: Duration,
    segment_exec: Duration,
    kubectl_exec: Duration,
    docker_echo: Duration,
    segment_echo: Duration,
    kubectl_echo: Duration,
    /// A line through a TCP echo server, direct and through the two relays.
    echo_direct: Duration,
    echo_floor: Duration,
}

impl Report {
    /// The floor's echo: docker's, plus what two TLS relays add to a round trip.
    fn floor_echo(&self) -> Duration {
        self.docker_echo + self.echo_floor.saturating_sub(self.echo_direct)
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
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

/// The device's kubelet endpoint, called as the apiserver calls it.
struct Endpoint<'a> {
    ip: std::net::IpAddr,
    port: u16,
    ca: &'a str,
    caller: Caller<'a>,
}

impl Endpoint<'_> {
    async fn exec(&self, command: &[&str], stdin: bool) -> anyhow::Result<kubelet::Exec> {
        let target = ("default", "web", "web");
        kubelet::Exec::open(
            self.ip,
            self.port,
            self.ca,
            self.caller,
            target,
            command,
            stdin,
        )
        .await
    }
}

/// One `exec true` on the segment, connection to exit status, as the apiserver makes it.
async fn segment_exec(endpoint: &Endpoint<'_>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = endpoint.exec(&["true"], false).await?.wait().await?;
    anyhow::ensure!(
        status.contains("Success"),
        "exec true ended with {status:?}"
    );
    Ok(started.elapsed())
}

/// [`echo_rtt`] on the segment: lines through `cat` over one exec.
async fn segment_echo_rtt(endpoint: &Endpoint<'_>, rounds: usize) -> anyhow::Result<Duration> {
    let mut exec = endpoint.exec(&["cat"], true).await?;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..=rounds {
        let line = format!("echo {i}\n");
        let started = Instant::now();
        exec.write(line.as_bytes()).await?;
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            match exec.read().await? {
                Some((1, data)) => got.extend(data),
                Some(_) => {}
                None => bail!("the segment exec ended"),
            }
        }
        anyhow::ensure!(
            got == line.as_bytes(),
            "echoed {:?}",
            String::from_utf8_lossy(&got)
        );
        if i > 0 {
            samples.push(started.elapsed());
        }
    }
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

/// `GET /big` through `chain`; (bytes, time).
async fn download_through(chain: &RelayChain) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut s = chain.connect().await?;
    s.write_all(b"GET /big HTTP/1.0\r\n\r\n").await?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((total, started.elapsed()))
}

/// Median time from writing a line into `s` to reading it back.
async fn line_rtt<S>(mut s: S, rounds: usize) -> anyhow::Result<Duration>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut samples = Vec::with_capacity(rounds);
    let mut buf = [0u8; 64];
    for i in 0..=rounds {
        let line = format!("echo {i}\n");
        let started = Instant::now();
        s.write_all(line.as_bytes()).await?;
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let n = s.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the echo ended");
            got.extend_from_slice(&buf[..n]);
        }
        anyhow::ensure!(got == line.as_bytes(), "echoed {got:?}");
        if i > 0 {
            samples.push(started.elapsed());
        }
    }
    Ok(median(samples))
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
    println!("\nsummary: the aranya↔arhat segment against each bed's own direct baseline");
    println!(
        "  {:<9} {:>14} {:>14} {:>14} {:>14} {:>14}",
        "transport", "tput seg/dir", "floor/dir", "exec seg/dir", "echo seg/dir", "floor/dir"
    );
    for r in &reports {
        println!(
            "  {:<9} {:>14.3} {:>14.3} {:>14.2} {:>14.2} {:>14.2}",
            r.transport,
            ratio(r.direct, r.segment),
            ratio(r.direct, r.floor),
            ratio(r.segment_exec, r.docker_exec),
            ratio(r.segment_echo, r.docker_echo),
            ratio(r.floor_echo(), r.docker_echo),
        );
    }
    Ok(())
}

async fn measure(cli: &Cli, name: &str) -> anyhow::Result<Report> {
    let broker = testbed::BrokerOptions {
        nagle: cli.broker_nagle,
        ..Default::default()
    };
    let bed = BenchBed::start_over(DEVICE, 5, "", transport(name)?, broker).await?;
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

    // Memory under bulk: each process's peak over the downloads, against
    // what it held before them.
    let (aranya, arhat) = bed.pids();
    let pids = [aranya, arhat.context("the bench's agent is not running")?];
    let mut memory = [Memory::default(); 2];
    for (pid, m) in pids.iter().zip(&mut memory) {
        e2e::process::reset_peak_memory(*pid)?;
        *m = e2e::process::memory(*pid)?;
    }
    let chain = RelayChain::start(bed.cp.ca(), SocketAddr::new(ip.parse()?, 8080))?;
    let (mut direct, mut tunneled, mut segment) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut floor = Duration::MAX;
    // Where the segment's CPU goes: aranya, arhat, and this client.
    let cpu = |pids: &[u32; 3]| -> anyhow::Result<[Duration; 3]> {
        Ok([cpu_time(pids[0])?, cpu_time(pids[1])?, cpu_time(pids[2])?])
    };
    let cpu_pids = [pids[0], pids[1], std::process::id()];
    let mut segment_cpu = [Duration::ZERO; 3];
    for _ in 0..cli.rounds {
        let before = cpu(&cpu_pids)?;
        let started = Instant::now();
        let got = segment_client
            .exchange(8080, b"GET /big HTTP/1.0\r\n\r\n")
            .await?;
        for ((total, after), before) in segment_cpu.iter_mut().zip(cpu(&cpu_pids)?).zip(before) {
            *total += after - before;
        }
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
        let (n, t) = download_through(&chain).await?;
        anyhow::ensure!(n > size, "download through the relays short: {n}");
        floor = floor.min(t);
    }
    drop(chain);
    for (pid, m) in pids.iter().zip(&mut memory) {
        m.peak_kib = e2e::process::memory(*pid)?.peak_kib;
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
    let endpoint = Endpoint {
        ip: e2e::cluster::node_address(),
        port: kubelet_port,
        ca: &ca,
        caller: Caller::Certificate(&identity),
    };
    let (mut via_kubectl, mut via_docker, mut via_segment) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cli.execs {
        via_docker.push(timed(docker_exec())?);
        via_segment.push(segment_exec(&endpoint).await?);
        via_kubectl.push(timed(kubectl_exec())?);
    }
    let (via_kubectl, via_docker, via_segment) =
        (median(via_kubectl), median(via_docker), median(via_segment));
    let mut kubectl_cat = kubectl();
    kubectl_cat.args(["-i", "web", "--", "cat"]);
    let mut docker_cat = Command::new("docker");
    docker_cat.args(["exec", "-i", &id, "cat"]);
    let docker_echo = echo_rtt(docker_cat, cli.echoes)?;
    let segment_echo = segment_echo_rtt(&endpoint, cli.echoes).await?;
    let kubectl_echo = echo_rtt(kubectl_cat, cli.echoes)?;
    let echo = Echo::start()?;
    let chain = RelayChain::start(bed.cp.ca(), echo.addr)?;
    let tcp = TokioTcp::connect(echo.addr).await?;
    tcp.set_nodelay(true)?;
    let echo_direct = line_rtt(tcp, cli.echoes).await?;
    let echo_floor = line_rtt(chain.connect().await?, cli.echoes).await?;
    Ok(Report {
        transport: name.to_string(),
        direct,
        segment,
        tunneled,
        floor,
        memory,
        segment_cpu_per_mib: segment_cpu
            .map(|t| t / u32::try_from(cli.mib * cli.rounds as u64).unwrap_or(u32::MAX)),
        docker_exec: via_docker,
        segment_exec: via_segment,
        kubectl_exec: via_kubectl,
        docker_echo,
        segment_echo,
        kubectl_echo,
        echo_direct,
        echo_floor,
    })
}

fn print(cli: &Cli, r: &Report) {
    let mibs = |t: Duration| cli.mib as f64 / t.as_secs_f64();
    let ms = |t: Duration| t.as_secs_f64() * 1e3;
    println!("== over {}", r.transport);
    println!(
        "port-forward, {} MiB download, best of {} rounds each",
        cli.mib, cli.rounds
    );
    for (what, t) in [
        ("direct TCP to the container", r.direct),
        (
            "aranya↔arhat segment (SPDY to the kubelet endpoint)",
            r.segment,
        ),
        ("kubectl port-forward (whole path)", r.tunneled),
        ("two TLS relays, nothing else (the floor)", r.floor),
    ] {
        println!("  {what:<52} {:>8.1} MiB/s", mibs(t));
    }
    for (what, t) in [
        ("segment", r.segment),
        ("whole path", r.tunneled),
        ("floor", r.floor),
    ] {
        println!(
            "  throughput ratio, {what} / direct: {:.3}",
            ratio(r.direct, t)
        );
    }
    println!(
        "  throughput ratio, segment / floor: {:.3}",
        ratio(r.floor, r.segment)
    );
    println!(
        "  segment CPU per MiB: aranya {:.2} ms, arhat {:.2} ms, the SPDY client {:.2} ms",
        ms(r.segment_cpu_per_mib[0]),
        ms(r.segment_cpu_per_mib[1]),
        ms(r.segment_cpu_per_mib[2])
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (name, m) in ["aranya", "arhat"].iter().zip(&r.memory) {
        println!(
            "  {name} resident memory: {:.1} MiB before the downloads, {:.1} MiB at their peak",
            mib(m.rss_kib),
            mib(m.peak_kib)
        );
    }
    for (title, n, docker, segment, kubectl) in [
        (
            "exec round trip (`true`)",
            cli.execs,
            r.docker_exec,
            r.segment_exec,
            r.kubectl_exec,
        ),
        (
            "interactive round trip (a line through `cat`)",
            cli.echoes,
            r.docker_echo,
            r.segment_echo,
            r.kubectl_echo,
        ),
    ] {
        println!("{title}, median of {n}");
        for (what, t) in [
            ("docker exec (direct)", docker),
            (
                "aranya↔arhat segment (WebSocket to the kubelet endpoint)",
                segment,
            ),
            ("kubectl exec (whole path)", kubectl),
        ] {
            println!("  {what:<58} {:>8.2} ms", ms(t));
        }
        println!(
            "  time ratio, segment / direct: {:.2}; whole path / direct: {:.2}",
            ratio(segment, docker),
            ratio(kubectl, docker)
        );
    }
    println!(
        "  a line through a TCP echo, direct {:.2} ms, through two TLS relays {:.2} ms: \
         the floor for the segment is docker's {:.2} ms + {:.2} ms = {:.2} ms ({:.2} of direct)",
        ms(r.echo_direct),
        ms(r.echo_floor),
        ms(r.docker_echo),
        ms(r.echo_floor.saturating_sub(r.echo_direct)),
        ms(r.floor_echo()),
        ratio(r.floor_echo(), r.docker_echo)
    );
}
