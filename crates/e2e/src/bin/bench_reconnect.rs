//! Benchmark: how long after a partition ends the device's Node is Ready
//! again, over repeated outages. Each outage drops the agent's traffic with
//! iptables (the agent keeps running, its connection goes half-open), waits
//! for the Node to go NotReady, holds the cut, then lifts it and times
//! Ready=True. The baseline, measured in the same run, is a fresh agent:
//! killed, then started again, timed from its start to Ready. Arhat runs with
//! its default back-off (500 ms doubling to 10 s, full jitter).
//!
//! Needs root and iptables, and what `make test` needs.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use e2e::{bench::BenchBed, cluster::node_ready, netcut::LinkCut};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

#[derive(Debug, Parser)]
struct Cli {
    /// Outages to time.
    #[arg(long, default_value_t = 10)]
    outages: usize,
    /// Seconds the link stays cut after the Node went NotReady.
    #[arg(long, default_value_t = 5)]
    hold: u64,
}

const DEVICE: &str = "bench-reconnect-device";

/// Polls the Node until Ready has `status`; how long that took.
async fn until_ready(nodes: &Api<Node>, status: &str, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(node) = nodes.get(DEVICE).await
            && node_ready(&node).is_some_and(|(s, _)| s == status)
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("Ready={status} not within {limit:?}")
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut bed = BenchBed::start(DEVICE, 1, "").await?;
    let nodes: Api<Node> = Api::all(bed.client.clone());
    let mut down = Vec::new();
    let mut back = Vec::new();
    for i in 0..cli.outages {
        let cut = LinkCut::new(bed.port)?;
        let noticed = until_ready(&nodes, "False", Duration::from_secs(120))
            .await
            .with_context(|| format!("outage {i}: the Node never went NotReady"))?;
        tokio::time::sleep(Duration::from_secs(cli.hold)).await;
        cut.restore();
        let ready = until_ready(&nodes, "True", Duration::from_secs(120))
            .await
            .with_context(|| format!("outage {i}: the Node never came back"))?;
        eprintln!(
            "outage {i}: NotReady {} after the cut, Ready {} after the link returned",
            seconds(noticed),
            seconds(ready)
        );
        down.push(noticed);
        back.push(ready);
    }
    let mut fresh = Vec::new();
    for _ in 0..3 {
        bed.kill_arhat();
        until_ready(&nodes, "False", Duration::from_secs(60)).await?;
        bed.start_arhat()?;
        fresh.push(until_ready(&nodes, "True", Duration::from_secs(60)).await?);
    }
    fresh.sort();
    down.sort();
    back.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    println!(
        "outages: {}, held {} s after NotReady",
        cli.outages, cli.hold
    );
    println!(
        "NotReady after the cut: median {}, max {}",
        seconds(median(&down)),
        seconds(down[down.len() - 1])
    );
    println!(
        "Ready after the link returned: min {}, median {}, max {}",
        seconds(back[0]),
        seconds(median(&back)),
        seconds(back[back.len() - 1])
    );
    let ratio = median(&back).as_secs_f64() / median(&fresh).as_secs_f64();
    println!(
        "baseline, a fresh agent started to Ready: median {} of 3; ratio of medians {ratio:.2}",
        seconds(median(&fresh))
    );
    Ok(())
}
