//! The local demo: a real control plane, aranya, and one arhat device on this
//! machine, staying up until SIGTERM. `make up` runs it in the background;
//! `make up TRANSPORT=mqtt` has the device reach aranya through a Mosquitto
//! broker the demo starts itself (its own config file, persistence on).

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use e2e::{
    Cluster, Proc,
    cluster::{ArhatConfig, arhat_config_yaml, repo_root},
    process::start_arhat,
    transport::Transport,
};

#[derive(Debug, Parser)]
struct Cli {
    /// Where everything lives; `kubeconfig` and `bin/kubectl` are written here last.
    #[arg(long, default_value = ".local")]
    state_dir: PathBuf,
    /// aranya's gRPC port.
    #[arg(long, default_value_t = 9443)]
    grpc_port: u16,
    /// How the device reaches aranya: `grpc`, or `mqtt` through the demo's broker.
    #[arg(long, default_value = "grpc")]
    transport: String,
    /// The demo broker's port on loopback (with `--transport mqtt`).
    #[arg(long, default_value_t = 18830)]
    mqtt_port: u16,
}

const DEVICE: &str = "demo-device";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,kube_client=off"))
        .init();
    let cli = Cli::parse();
    let state = std::path::absolute(&cli.state_dir)?;
    let _ = std::fs::remove_file(state.join("kubeconfig"));
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs)?;

    let transport = match cli.transport.as_str() {
        "grpc" => Transport::Grpc,
        "mqtt" => e2e::transport::MQTT,
        other => anyhow::bail!("--transport {other:?}: expected grpc or mqtt"),
    };
    let broker = match transport {
        Transport::Grpc => None,
        Transport::Mqtt { .. } => {
            let options = testbed::BrokerOptions {
                persistence: true,
                port: Some(cli.mqtt_port),
                ..Default::default()
            };
            Some(
                testbed::Broker::start(&state.join("mosquitto"), &options)
                    .context("starting the demo's Mosquitto (--mqtt-port picks another port)")?,
            )
        }
    };
    let (methods, mqtt) = transport.methods(broker.as_ref().map(|b| b.address()).as_deref());

    let cp = testbed::ControlPlane::start_in(Default::default(), &state.join("testbed"))
        .await
        .context("starting the control plane")?;
    let cluster = Cluster::prepare(&cp, &state.join("aranya")).await?;

    cluster.grant_identity("default")?;
    let aranya = cluster.aranya_command("default", cli.grpc_port, "info")?;
    let _aranya = Proc::spawn("aranya", aranya, &logs.join("aranya.log"))?;

    // The sample as it is in deploy/, with the methods of the chosen transport.
    let mut device: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(
        repo_root().join("deploy/sample-edgedevice.yaml"),
    )?)?;
    *device
        .pointer_mut("/spec/connectivity/methods")
        .context("deploy/sample-edgedevice.yaml lists no spec.connectivity.methods")? = methods;
    let device_file = state.join("edgedevice.json");
    std::fs::write(&device_file, serde_json::to_vec_pretty(&device)?)?;
    cluster.kubectl(&["apply", "-f", &device_file.to_string_lossy()])?;
    // The device bootstraps its certificate with a token, as a real one does.
    cluster
        .bootstrap_token("default", DEVICE, &state.join("arhat-data"))
        .await
        .context("making the demo device's bootstrap token")?;
    let config = state.join("arhat.yaml");
    let yaml = arhat_config_yaml(&ArhatConfig {
        device: DEVICE,
        aranya: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, cli.grpc_port)),
        ca_file: &cluster.ca_file,
        data_dir: &state.join("arhat-data"),
        log: "info",
        quick: false,
        mqtt,
        runtime: arhat::config::RuntimeKind::Docker,
        extra: "",
    })?;
    std::fs::write(&config, yaml)?;
    let arhat = start_arhat("arhat", &config, &logs.join("arhat.log"))?;

    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "--timeout=120s",
            &format!("node/{DEVICE}"),
        ])
        .context("waiting for the device's Node to be Ready (see .local/logs)")?;
    let sample = repo_root().join("deploy/sample-deployment.yaml");
    cluster.kubectl(&["apply", "-f", &sample.to_string_lossy()])?;
    cluster
        .kubectl(&[
            "rollout",
            "status",
            "deployment/hello-edge",
            "--timeout=180s",
        ])
        .context("waiting for the sample Deployment on the device (see .local/logs)")?;

    // The matching kubectl, then the kubeconfig last: its presence means "up".
    let bin = state.join("bin");
    std::fs::create_dir_all(&bin)?;
    let kubectl = bin.join("kubectl");
    let _ = std::fs::remove_file(&kubectl);
    std::os::unix::fs::symlink(cp.kube_binary(), &kubectl)?;
    let tmp = state.join("kubeconfig.tmp");
    std::fs::copy(cp.kubeconfig_path(), &tmp)?;
    std::fs::rename(&tmp, state.join("kubeconfig"))?;
    match &broker {
        Some(b) => println!(
            "ready: the device is connected through the broker at {}",
            b.address()
        ),
        None => println!("ready: the device is connected over gRPC"),
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                if let Err(e) = cp.check_alive() {
                    eprintln!("demo: {e}");
                    break;
                }
            }
        }
    }
    let _ = std::fs::remove_file(state.join("kubeconfig"));
    drop(arhat);
    drop(broker);
    e2e::images::remove_device_containers(DEVICE);
    Ok(())
}
