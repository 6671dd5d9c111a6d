//! Benchmark: a pod bound to a virtual node until it is Running on the device,
//! against creating the same sandbox and app container directly through the
//! same Docker engine, in the same run. Prints both and their ratio.
//!
//! `make bench` runs it (needs what `make test` needs: Docker, the test bed).

use std::time::{Duration, Instant};

use anyhow::Context;
use arhat::runtime::{
    ContainerSpec, LogRotation, Runtime, SANDBOX, SandboxSpec, docker::Docker, labels::Owner,
};
use clap::Parser;
use e2e::{
    bench::BenchBed,
    images::{BUSYBOX, remove_device_containers},
    process::pause_binary,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    runtime::wait::{await_condition, conditions::is_pod_running},
};
use serde_json::json;

#[derive(Debug, Parser)]
struct Cli {
    /// Pods per side (run one after another).
    #[arg(long, default_value_t = 20)]
    pods: usize,
}

const DEVICE: &str = "bench-device";
const NAMESPACE: &str = "default";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bed = BenchBed::start(DEVICE, cli.pods + 5, "").await?;
    let client = bed.client.clone();

    // Baseline: the same sandbox and container, straight through the engine.
    let docker = Docker::connect(pause_binary()?, LogRotation::default()).await?;
    let mut direct = Vec::new();
    for i in 0..=cli.pods {
        let uid = format!("direct-{i}");
        let owner = Owner {
            device: "bench-direct",
            pod_uid: &uid,
            namespace: NAMESPACE,
            pod_name: &uid,
        };
        let started = Instant::now();
        let sandbox = docker
            .create_sandbox(&SandboxSpec {
                pod_uid: uid.clone(),
                namespace: NAMESPACE.into(),
                name: uid.clone(),
                hostname: uid.clone(),
                labels: owner.labels(SANDBOX, 0),
                ..Default::default()
            })
            .await?;
        let spec = ContainerSpec {
            pod_uid: uid.clone(),
            namespace: NAMESPACE.into(),
            pod_name: uid.clone(),
            name: "main".into(),
            image: BUSYBOX.into(),
            command: vec!["sleep".into(), "3600".into()],
            labels: owner.labels("main", 0),
            ..Default::default()
        };
        let id = docker.create_container(&sandbox, &spec).await?;
        docker.start_container(&id).await?;
        // The first round warms caches (the pause image import) and is not counted.
        if i > 0 {
            direct.push(started.elapsed());
        }
    }
    remove_device_containers("bench-direct");

    // Through the cluster: created, scheduled, bound, sent, run, reported Running.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut via = Vec::new();
    for i in 0..=cli.pods {
        let name = format!("bench-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": e2e::pods::merge(bed.placement(), json!({
                "containers": [{ "name": "main", "image": BUSYBOX, "command": ["sleep", "3600"] }],
            })),
        }))?;
        let started = Instant::now();
        pods.create(&PostParams::default(), &pod).await?;
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(pods.clone(), &name, is_pod_running()),
        )
        .await
        .context("pod never Running")??;
        if i > 0 {
            via.push(started.elapsed());
        }
    }
    for i in 0..=cli.pods {
        let _ = pods
            .delete(
                &format!("bench-{i}"),
                &DeleteParams::default().grace_period(0),
            )
            .await;
    }
    drop(bed);

    let mean =
        |v: &[Duration]| v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap_or(1);
    let (d, p) = (mean(&direct), mean(&via));
    println!("pods per side: {}", cli.pods);
    println!(
        "direct sandbox + container, mean: {:.1} ms",
        d.as_secs_f64() * 1e3
    );
    println!(
        "pod created -> Running via aranya/arhat, mean: {:.1} ms",
        p.as_secs_f64() * 1e3
    );
    println!(
        "ratio (via / direct): {:.2}",
        p.as_secs_f64() / d.as_secs_f64()
    );
    Ok(())
}
