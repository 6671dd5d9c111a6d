//! `testbed run --state-dir DIR`: a control plane in the foreground until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use testbed::{ControlPlane, Options};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "testbed",
    about = "A real Kubernetes control plane for aranya's tests and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a control plane, print `ready` when it is up, and run until SIGINT/SIGTERM.
    Run {
        /// Where its files live (certificates, etcd data, logs/, kubeconfig, bin/kube); kept.
        #[arg(long)]
        state_dir: PathBuf,
        /// kube-apiserver --default-not-ready-toleration-seconds.
        #[arg(long)]
        not_ready_toleration_seconds: Option<u32>,
        /// kube-apiserver --default-unreachable-toleration-seconds.
        #[arg(long)]
        unreachable_toleration_seconds: Option<u32>,
        /// kube-controller-manager --node-monitor-grace-period, in seconds.
        #[arg(long)]
        node_monitor_grace_period_seconds: Option<u64>,
    },
    /// Print the path of the multi-call kube binary (building it if needed).
    KubeBinary,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("create the runtime")?;
    match cli.command {
        Cmd::Run {
            state_dir,
            not_ready_toleration_seconds,
            unreachable_toleration_seconds,
            node_monitor_grace_period_seconds,
        } => {
            let opts = Options {
                not_ready_toleration_seconds,
                unreachable_toleration_seconds,
                node_monitor_grace_period: node_monitor_grace_period_seconds
                    .map(Duration::from_secs),
            };
            let cp = rt.block_on(run(opts, &state_dir))?;
            // Tear down outside the runtime (teardown blocks while children exit).
            drop(rt);
            drop(cp);
            Ok(())
        }
        Cmd::KubeBinary => {
            let bin = testbed::kube_binary()?;
            println!("{}", bin.display());
            Ok(())
        }
    }
}

async fn run(opts: Options, state_dir: &Path) -> anyhow::Result<ControlPlane> {
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let cp = tokio::select! {
        cp = ControlPlane::start_in(opts, state_dir) => cp.context("starting the control plane")?,
        _ = sigint.recv() => anyhow::bail!("interrupted while starting"),
        _ = sigterm.recv() => anyhow::bail!("terminated while starting"),
    };
    let bin_dir = cp.dir().join("bin");
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("create {}", bin_dir.display()))?;
    let link = bin_dir.join("kube");
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("remove {}", link.display()))?;
    }
    std::os::unix::fs::symlink(cp.kube_binary(), &link)
        .with_context(|| format!("symlink {}", link.display()))?;
    tracing::info!(
        kubeconfig = %cp.kubeconfig_path().display(),
        server = cp.server_url(),
        kube = %link.display(),
        "control plane up"
    );
    println!("ready");
    let mut check = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = check.tick() => {
                if let Err(e) = cp.check_alive() {
                    return Err(e).context("a control-plane process died");
                }
            }
        }
    }
    tracing::info!("stopping the control plane");
    Ok(cp)
}
