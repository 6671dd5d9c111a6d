//! Sandboxes that come back: dockerd restarted as an upgrade does it. Without
//! live-restore every container dies with it, and each pod gets a new
//! sandbox and starts anew in it as a kubelet does (SandboxChanged, restart
//! counts +1, init containers run again), except a `Never` pod whose
//! containers ran; with live-restore nothing restarts. (dockerd is left
//! without live-restore, as the rest of the suite expects it.)
//!
//! While dockerd is down the Node turns NotReady as a kubelet's does
//! (KubeletNotReady, "container runtime is down"), and Ready again once it
//! answers.
//!
//! This binary restarts the machine's dockerd: its one test runs alone
//! (cargo runs test binaries one after another).

use std::time::{Duration, Instant};

use e2e::{
    TestEnv, dockerd,
    pods::{busybox, container_id, create_pod, restarts, running_and_ready, wait_events, wait_pod},
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);
/// What the issue promises after dockerd answers again.
const BACK_WITHIN: Duration = Duration::from_secs(30);

fn init_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_come_back_after_dockerd_restarts() -> anyhow::Result<()> {
    let env = TestEnv::new("sandbox").await?;
    // Quick health checks: NotReady 3 s into the outage instead of 30.
    let up = env
        .device_up_configured(
            "a",
            10,
            json!({}),
            "runtime:\n  health:\n    interval: 500ms\n    downAfter: 3s\n",
        )
        .await?;
    create_pod(
        &env,
        &up.name,
        "always",
        json!({
            "initContainers": [busybox("init", "echo initialized")],
            "containers": [busybox("app", "trap 'exit 0' TERM; while true; do sleep 1; done")],
        }),
    )
    .await?;
    create_pod(
        &env,
        &up.name,
        "never",
        json!({
            "restartPolicy": "Never",
            "containers": [busybox("app", "trap 'exit 0' TERM; while true; do sleep 1; done")],
        }),
    )
    .await?;
    let before = wait_pod(&env, "always", "running", TIMEOUT, |p| {
        running_and_ready(p).then(|| container_id(p))
    })
    .await?;
    let never = wait_pod(&env, "never", "running", TIMEOUT, |p| {
        running_and_ready(p).then(|| container_id(p))
    })
    .await?;

    anyhow::ensure!(
        !dockerd::live_restore()?,
        "live-restore is set in /etc/docker/daemon.json: this test needs it off"
    );
    let outcome = restarts_seen(&env, &up.name, before, never).await;
    // Whatever happened, dockerd ends as the rest of the suite expects it.
    dockerd::restart(false).await?;
    outcome
}

async fn restarts_seen(
    env: &TestEnv,
    node: &str,
    before: Option<String>,
    never: Option<String>,
) -> anyhow::Result<()> {
    // The running dockerd has no live-restore: stopping it, as an upgrade
    // does, kills every container. It comes back with live-restore on.
    let stopped = dockerd::stop().await?;
    let down = env
        .wait_ready(node, "False", Some("KubeletNotReady"), TIMEOUT)
        .await;
    stopped.start(true).await?;
    let answered = Instant::now();
    let message = down?
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.message)
        .unwrap_or_default();
    anyhow::ensure!(
        message.starts_with("container runtime is down: docker: "),
        "the Ready message: {message}"
    );
    env.wait_ready(node, "True", Some("EdgeDeviceConnected"), TIMEOUT)
        .await?;
    let ready_again = answered.elapsed();
    let (after, app_restarts, init) =
        wait_pod(env, "always", "running in a new sandbox", TIMEOUT, |p| {
            (running_and_ready(p) && container_id(p) != before)
                .then(|| (container_id(p), restarts(p), init_restarts(p)))
        })
        .await?;
    let back = answered.elapsed();
    eprintln!("the pod ran again {back:?} after dockerd answered");
    anyhow::ensure!(after.is_some());
    anyhow::ensure!(
        app_restarts == 1,
        "the app container's restart count: {app_restarts}"
    );
    anyhow::ensure!(init == 1, "the init container's restart count: {init}");
    anyhow::ensure!(
        back < BACK_WITHIN,
        "the pod took {back:?} to run again after dockerd answered"
    );
    wait_events(env, "always", &["SandboxChanged"]).await?;
    // `Never`: its container ran, so no new sandbox: the pod is over (it
    // trapped SIGTERM and exited 0, so Succeeded), its container the same.
    let (phase, id) = wait_pod(env, "never", "over", TIMEOUT, |p| {
        let phase = p.status.as_ref()?.phase.clone()?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then(|| (phase, container_id(p)))
    })
    .await?;
    anyhow::ensure!(
        phase == "Succeeded" && id == never,
        "the Never pod: {phase}, container {id:?} (was {never:?})"
    );

    // With live-restore on: dockerd goes and comes back, the pod never notices.
    dockerd::restart(true).await?;
    anyhow::ensure!(
        dockerd::live_restore()?,
        "dockerd did not take --live-restore"
    );
    // Long enough for a restart to show if one were coming.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let same = wait_pod(env, "always", "running, unchanged", TIMEOUT, |p| {
        running_and_ready(p).then(|| (container_id(p), restarts(p)))
    })
    .await?;
    anyhow::ensure!(
        same == (after.clone(), 1),
        "live-restore: the container restarted: {same:?}, was {after:?}"
    );
    // Restarts it should make are the point of the first outage; none are
    // wrong here, or the test failed above.
    e2e::chaos::Outcome {
        injected: 2,
        back_to_ready: vec![ready_again],
        ..Default::default()
    }
    .record("dockerd stopped and started (without, then with live-restore)");
    Ok(())
}
