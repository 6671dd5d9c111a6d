//! Benchmark: `kubectl logs` of a container's 100 MiB log through the real
//! apiserver, aranya, the session layer and arhat, against `docker logs` of
//! the same container on the same engine, in the same run. Prints both
//! throughputs and their ratio, then how much aranya's and arhat's memory
//! grows while a slow reader holds the log back.
//!
//! `make bench` runs it (needs what `make test` needs: Docker, the test bed).

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use e2e::{bench::BenchBed, images::BUSYBOX, pods::merge, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;

#[derive(Debug, Parser)]
struct Cli {
    /// Log size in MiB.
    #[arg(long, default_value_t = 100)]
    mib: u64,
    /// Timed reads per side (alternating); the best of each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// How long the slow reader reads.
    #[arg(long, default_value_t = 10)]
    slow_seconds: u64,
}

/// Resident set size of a process, KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    e2e::process::memory(pid).map_or(0, |m| m.rss_kib)
}

const DEVICE: &str = "bench-logs-device";

/// Runs `cmd`, counting its stdout; returns (bytes, time).
fn timed_read(mut cmd: Command) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning the reader")?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok((total, started.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let size = cli.mib << 20;
    // Keep the whole log: the default rotation (10 MiB × 5 files of
    // json-file lines, about 1.5 bytes per byte logged) keeps a third of it.
    let rotation = format!(
        "runtime:\n  logs:\n    maxSize: {}\n    maxFiles: 2\n",
        2 * size + (16 << 20)
    );
    let bed = BenchBed::start(DEVICE, 5, &rotation).await?;
    // 100-byte lines, then a marker once everything is written.
    let script = format!(
        "yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvw | head -c {size}; echo DONE; exec sleep 3600"
    );
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "spew" },
        "spec": merge(bed.placement(), json!({
            "containers": [{ "name": "spew", "image": BUSYBOX, "command": ["sh", "-c", script] }],
        })),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let id = wait_for("the log written", Duration::from_secs(300), || async {
        let tail = bed.cluster.kubectl(&["logs", "spew", "--tail=1"]).ok()?;
        // `head -c` may cut the last line short, so DONE can end it.
        if !tail.trim().ends_with("DONE") {
            return None;
        }
        let pod = pods.get("spew").await.ok()?;
        let id = pod
            .status?
            .container_statuses?
            .first()?
            .container_id
            .clone()?;
        id.strip_prefix("docker://").map(str::to_string)
    })
    .await?;

    let kubectl = || {
        let mut cmd = Command::new(&bed.cluster.kube_binary);
        cmd.arg("kubectl")
            .arg("--kubeconfig")
            .arg(&bed.cluster.admin_kubeconfig)
            .args(["logs", "spew"]);
        cmd
    };
    let docker = || {
        let mut cmd = Command::new("docker");
        cmd.args(["logs", &id]);
        cmd
    };
    let (mut best_docker, mut best_kubectl) = (Duration::MAX, Duration::MAX);
    for _ in 0..cli.rounds {
        let (bytes, t) = timed_read(docker())?;
        if bytes < size {
            bail!("docker logs returned {bytes} bytes, expected over {size}");
        }
        best_docker = best_docker.min(t);
        let (bytes, t) = timed_read(kubectl())?;
        if bytes < size {
            bail!("kubectl logs returned {bytes} bytes, expected over {size}");
        }
        best_kubectl = best_kubectl.min(t);
    }
    // A slow reader: memory must stay flat while the log waits in the device.
    let (aranya, arhat) = bed.pids();
    let before = (rss_kib(aranya), arhat.map(rss_kib).unwrap_or_default());
    let mut slow = kubectl()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = slow.stdout.take().context("no stdout")?;
    let mut peak = before;
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(cli.slow_seconds) {
        // 64 KiB every 100 ms: 640 KiB/s.
        read += out.read(&mut buf)? as u64;
        std::thread::sleep(Duration::from_millis(100));
        peak.0 = peak.0.max(rss_kib(aranya));
        peak.1 = peak.1.max(arhat.map(rss_kib).unwrap_or_default());
    }
    let _ = slow.kill();
    let _ = slow.wait();

    let mibs = |t: Duration| cli.mib as f64 / t.as_secs_f64();
    println!(
        "log size: {} MiB, best of {} rounds each",
        cli.mib, cli.rounds
    );
    println!(
        "docker logs (direct):              {:.1} MiB/s ({:.2} s)",
        mibs(best_docker),
        best_docker.as_secs_f64()
    );
    println!(
        "kubectl logs (apiserver, aranya, arhat): {:.1} MiB/s ({:.2} s)",
        mibs(best_kubectl),
        best_kubectl.as_secs_f64()
    );
    println!(
        "throughput ratio (kubectl / docker): {:.2}",
        best_docker.as_secs_f64() / best_kubectl.as_secs_f64()
    );
    println!(
        "slow reader ({:.1} MiB read in {} s of a {} MiB log): RSS growth aranya {} KiB (of {} KiB), arhat {} KiB (of {} KiB)",
        read as f64 / f64::from(1u32 << 20),
        cli.slow_seconds,
        cli.mib,
        peak.0.saturating_sub(before.0),
        before.0,
        peak.1.saturating_sub(before.1),
        before.1,
    );
    Ok(())
}
