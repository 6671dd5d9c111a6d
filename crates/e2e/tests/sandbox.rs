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
//! A device rebooted while its link is down (agent and runtime stopped,
//! every container gone) runs its saved pods again before the link returns,
//! and gets fresh service-account tokens once it does.
//!
//! This binary restarts the machine's dockerd: cargo runs test binaries one
//! after another, and its tests take turns ([`DOCKERD`]).

use std::time::{Duration, Instant};

use e2e::{
    TestEnv, dockerd,
    images::{container_started, exec, pod_containers, remove_device_containers},
    netcut::LinkCut,
    pods::{
        busybox, container_id, create_pod, restarts, running_and_ready, token_accepted,
        wait_events, wait_pod,
    },
    wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Held by each test for its whole run: they all restart dockerd.
static DOCKERD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
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
    let _turn = DOCKERD.lock().await;
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

/// Where every pod's service-account token is.
const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The pod's containers on the device, when all of them run (its sandbox
/// and its one app container) and none is among `old`.
fn running_anew(uid: &str, old: &[String]) -> Option<Vec<String>> {
    let ids = pod_containers(uid).ok()?;
    (ids.len() == 2
        && ids.iter().all(|id| !old.contains(id))
        && ids
            .iter()
            .all(|id| container_started(id).is_ok_and(|(running, _)| running)))
    .then_some(ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_rebooted_offline_runs_its_saved_pods_before_the_link_returns()
-> anyhow::Result<()> {
    let _turn = DOCKERD.lock().await;
    let env = TestEnv::new("reboot").await?;
    let up = env.device_up("a", 10).await?;
    create_pod(
        &env,
        &up.name,
        "saved",
        json!({ "containers": [busybox("app", "trap 'exit 0' TERM; while true; do sleep 1; done")] }),
    )
    .await?;
    let (uid, mut current) = wait_pod(&env, "saved", "running", TIMEOUT, |p| {
        running_and_ready(p).then(|| (p.uid().unwrap_or_default(), container_id(p)))
    })
    .await?;
    let mut arhat = up.arhat;
    let mut outcome = e2e::chaos::Outcome::default();
    for round in 0..e2e::chaos::rounds() {
        let old = pod_containers(&uid)?;
        let old_token = exec(current.as_deref().unwrap_or_default(), &["cat", TOKEN])?;

        // The reboot: the agent dies, the runtime stops (and every
        // container with it), the containers are gone when it is back, and
        // the agent starts with the link down. (The cut comes after
        // dockerd's restart, which rewrites the machine's iptables rules.)
        arhat.kill();
        dockerd::stop().await?.start(false).await?;
        remove_device_containers(&up.name);
        let cut = LinkCut::new(env.grpc_port)?;
        outcome.injected += 1;
        let booted = Instant::now();
        arhat = env.start_arhat(&up.name, &format!("boot-{round}"), &[])?;
        let offline = wait_for("the saved pod running again offline", TIMEOUT, || async {
            running_anew(&uid, &old)
        })
        .await
        .map_err(|e| e.context(arhat.log_tail(30)))?;
        anyhow::ensure!(
            !arhat.log().contains("connected to aranya"),
            "the agent was not offline: {}",
            arhat.log_tail(30)
        );
        eprintln!(
            "the saved pod ran again {:?} after the boot, offline",
            booted.elapsed()
        );

        // The link returns: the pod is the same, running in what the device
        // made offline (nothing made twice), and its token is a fresh one.
        drop(cut);
        let back = Instant::now();
        env.wait_ready(&up.name, "True", Some("EdgeDeviceConnected"), TIMEOUT)
            .await?;
        outcome.back_to_ready.push(back.elapsed());
        let (uid_after, id) = wait_pod(
            &env,
            "saved",
            "running in its new container",
            TIMEOUT,
            |p| {
                (running_and_ready(p) && container_id(p) != current)
                    .then(|| (p.uid().unwrap_or_default(), container_id(p)))
            },
        )
        .await?;
        anyhow::ensure!(uid_after == uid, "the pod was replaced");
        let id = id.unwrap_or_default();
        anyhow::ensure!(
            offline.contains(&id),
            "the pod's container {id} is not the one made offline ({offline:?})"
        );
        let token = wait_for("a fresh token in the pod", TIMEOUT, || async {
            exec(&id, &["cat", TOKEN]).ok().filter(|t| *t != old_token)
        })
        .await?;
        anyhow::ensure!(
            token_accepted(&env, &token).await?,
            "the renewed token is refused"
        );
        if pod_containers(&uid)? != offline {
            outcome.restarted += 1;
        }
        current = Some(id);
    }
    outcome.record("device rebooted while offline");
    assert_eq!(
        outcome.restarted, 0,
        "the device made the pod's containers again after the link returned"
    );
    Ok(())
}
