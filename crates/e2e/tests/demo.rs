//! The demo `make up TRANSPORT=mqtt` runs: its own control plane, aranya, its
//! own Mosquitto (persistence on) and the device reaching aranya through it.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, ensure};
use e2e::{Proc, process::binary, wait_for};

fn kubectl(state: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(state.join("bin/kubectl"))
        .arg("--kubeconfig")
        .arg(state.join("kubeconfig"))
        .args(args)
        .output()
        .context("running the demo's kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The last lines of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn device_containers() -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=io.arhat.device=demo-device"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn make_up_over_mqtt_runs_the_sample_through_its_own_broker() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let state = tmp.path().join("state");
    let mut cmd = Command::new(binary("demo")?);
    cmd.arg("--state-dir")
        .arg(&state)
        .args(["--transport", "mqtt"])
        .args(["--grpc-port", &free_port()?.to_string()])
        .args(["--mqtt-port", &free_port()?.to_string()])
        // Its error, not a backtrace, ends its log when it fails.
        .env("RUST_BACKTRACE", "0");
    let mut demo = Proc::spawn("demo", cmd, &tmp.path().join("demo.log"))?;

    // The kubeconfig is written last: the Node was Ready and hello-edge rolled out.
    let up = wait_for("the demo's kubeconfig", Duration::from_secs(300), || {
        let written = state.join("kubeconfig").exists();
        let running = demo.is_running();
        async move { (written || !running).then_some(written) }
    })
    .await;
    ensure!(
        matches!(up, Ok(true)),
        "the demo did not come up:\n{}\naranya:\n{}\narhat:\n{}",
        demo.log_tail(40),
        tail(&state.join("logs/aranya.log")),
        tail(&state.join("logs/arhat.log"))
    );
    ensure!(
        demo.log()
            .contains("ready: the device is connected through the broker at"),
        "{}",
        demo.log_tail(20)
    );

    let via = kubectl(
        &state,
        &[
            "get",
            "edgedevice",
            "demo-device",
            "-o",
            "jsonpath={.status.connectedVia}",
        ],
    )?;
    ensure!(via == "mqtt", "connectedVia {via:?}, expected mqtt");
    let ready = kubectl(
        &state,
        &[
            "get",
            "deployment",
            "hello-edge",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
    )?;
    ensure!(
        ready.parse::<u32>().unwrap_or(0) >= 1,
        "hello-edge ready replicas {ready:?}"
    );

    // Its own config file, with persistence on: the retained online state is saved.
    let conf = std::fs::read_to_string(state.join("mosquitto/mosquitto.conf"))?;
    ensure!(conf.contains("persistence true"), "mosquitto.conf:\n{conf}");
    let db = state.join("mosquitto/data/mosquitto.db");
    wait_for(
        "the broker's persistence file",
        Duration::from_secs(10),
        || {
            let exists = db.exists();
            async move { exists.then_some(()) }
        },
    )
    .await?;

    let status = demo.stop_within(Duration::from_secs(60))?;
    ensure!(
        status.success(),
        "the demo exited with {status}:\n{}",
        demo.log_tail(20)
    );
    let left = device_containers()?;
    ensure!(left.is_empty(), "containers left behind: {left}");
    Ok(())
}
