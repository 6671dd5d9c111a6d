//! The link to a device goes down (arhat stopped, or its traffic dropped):
//! its containers keep running, nothing is recreated when it returns, and
//! what changed in the cloud meanwhile is reconciled by UID.

use std::time::{Duration, Instant};

use e2e::{
    TestEnv,
    images::{container_exists, container_started, pod_containers},
    netcut::LinkCut,
    pods::{busybox, container_id, create_pod, restarts, running_and_ready, wait_pod},
    wait_for,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// aranya's node Lease duration: the tests stay away longer than that.
const LEASE_WINDOW: Duration = Duration::from_secs(45);

fn pods(env: &TestEnv) -> Api<Pod> {
    Api::namespaced(env.client.clone(), &env.name)
}

async fn running(env: &TestEnv, name: &str) -> anyhow::Result<Pod> {
    wait_pod(env, name, "running and ready", RUN_TIMEOUT, |p| {
        running_and_ready(p).then(|| p.clone())
    })
    .await
}

fn sleeper(env: &TestEnv, node: &str, name: &str) -> impl Future<Output = anyhow::Result<Pod>> {
    create_pod(
        env,
        node,
        name,
        json!({ "containers": [busybox("app", "exec sleep 3600")] }),
    )
}

/// The node-lifecycle controller's NoExecute taint for a device that is down.
async fn wait_tainted(env: &TestEnv, node: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = env.nodes();
    wait_for(
        &format!("node {node} tainted not-ready:NoExecute"),
        Duration::from_secs(60),
        || async {
            let n = nodes.get_opt(node).await.ok()??;
            n.spec?
                .taints?
                .iter()
                .any(|t| t.key == "node.kubernetes.io/not-ready" && t.effect == "NoExecute")
                .then_some(())
        },
    )
    .await
}

/// A pod that tolerates a device being down for `seconds` only.
fn short_tolerations(seconds: i64) -> serde_json::Value {
    let t = |key: &str| json!({ "key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds });
    json!([
        { "key": "aranya.arhat.dev/edge-device", "operator": "Exists", "effect": "NoSchedule" },
        t("node.kubernetes.io/not-ready"),
        t("node.kubernetes.io/unreachable"),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_restart_adopts_containers_and_reconciles_by_uid() -> anyhow::Result<()> {
    let env = TestEnv::new("adopt").await?;
    let mut up = env.device_up("a", 10).await?;
    let node = up.name.clone();
    create_pod(
        &env,
        &node,
        "keep",
        json!({
            "initContainers": [busybox("init", "echo initialized")],
            "containers": [busybox("app", "exec sleep 3600")],
        }),
    )
    .await?;
    sleeper(&env, &node, "doomed").await?;
    let keep = running(&env, "keep").await?;
    let doomed = running(&env, "doomed").await?;
    let keep_id = container_id(&keep).expect("running");
    let doomed_id = container_id(&doomed).expect("running");
    let keep_started = container_started(&keep_id)?;
    let keep_objects = pod_containers(&keep.uid().unwrap_or_default())?;

    up.arhat.kill();
    env.wait_ready(
        &node,
        "False",
        Some("EdgeDeviceDisconnected"),
        Duration::from_secs(30),
    )
    .await?;
    // Meanwhile in the cloud: one pod deleted, one created.
    pods(&env)
        .delete("doomed", &DeleteParams::default())
        .await?;
    sleeper(&env, &node, "newcomer").await?;
    tokio::time::sleep(LEASE_WINDOW).await;
    assert_eq!(
        container_started(&keep_id)?,
        keep_started,
        "containers run on while the agent is away"
    );

    let arhat = env.start_arhat(&node, "2", &[])?;
    env.wait_ready(&node, "True", Some("EdgeDeviceConnected"), RUN_TIMEOUT)
        .await?;
    let newcomer = running(&env, "newcomer").await?;
    assert!(container_id(&newcomer).is_some());
    wait_for("the deleted pod's object gone", RUN_TIMEOUT, || async {
        pods(&env)
            .get_opt("doomed")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    assert!(
        !container_exists(&doomed_id)?,
        "the pod deleted while the agent was away is gone from the device"
    );
    let keep = running(&env, "keep").await?;
    assert_eq!(
        container_id(&keep).as_deref(),
        Some(keep_id.as_str()),
        "same container"
    );
    assert_eq!(restarts(&keep), 0);
    assert_eq!(
        container_started(&keep_id)?,
        keep_started,
        "never restarted"
    );
    assert_eq!(
        pod_containers(&keep.uid().unwrap_or_default())?,
        keep_objects,
        "nothing recreated (sandbox, init and app containers): {}",
        arhat.log_tail(40)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_link_leaves_pods_running_and_restarting() -> anyhow::Result<()> {
    let env = TestEnv::new("partition").await?;
    let mut up = env.device_up("a", 10).await?;
    let node = up.name.clone();
    sleeper(&env, &node, "steady").await?;
    create_pod(
        &env,
        &node,
        "crashy",
        json!({ "containers": [busybox("app", "sleep 1; exit 1")] }),
    )
    .await?;
    let steady = running(&env, "steady").await?;
    let steady_id = container_id(&steady).expect("running");
    let steady_started = container_started(&steady_id)?;
    let crashy_uid = wait_pod(&env, "crashy", "restarted once", RUN_TIMEOUT, |p| {
        (restarts(p) >= 1).then(|| p.uid().unwrap_or_default())
    })
    .await?;
    let before = pod_containers(&crashy_uid)?;

    let cut = LinkCut::new(env.grpc_port)?;
    let cut_at = Instant::now();
    env.wait_ready(
        &node,
        "False",
        Some("EdgeDeviceDisconnected"),
        Duration::from_secs(60),
    )
    .await?;
    eprintln!("Ready=False {:?} after the cut", cut_at.elapsed());
    // aranya waits for the device without spinning: its virtual node once
    // polled a closed channel between sessions, a core per offline device.
    let (cpu_before, idle_from) = (up.aranya.cpu_time()?, Instant::now());
    // Restarts go on by the pod's policy with nobody in the cloud watching:
    // each one is a new container instance on the device.
    wait_for(
        "crashy restarted while cut off",
        Duration::from_secs(60),
        || async {
            let now = pod_containers(&crashy_uid).ok()?;
            (now.iter().any(|id| !before.contains(id))).then_some(())
        },
    )
    .await?;
    let reported = restarts(&pods(&env).get("crashy").await?);
    let left = LEASE_WINDOW.saturating_sub(cut_at.elapsed());
    tokio::time::sleep(left).await;
    assert!(up.arhat.is_running(), "the agent rides out the partition");
    let (busy, idle) = (up.aranya.cpu_time()? - cpu_before, idle_from.elapsed());
    eprintln!("aranya used {busy:?} of CPU in {idle:?} with its device offline");
    assert!(
        busy < idle / 4,
        "aranya used {busy:?} of CPU in {idle:?} with its only device offline"
    );

    cut.restore();
    let back = Instant::now();
    env.wait_ready(&node, "True", Some("EdgeDeviceConnected"), RUN_TIMEOUT)
        .await?;
    eprintln!("Ready=True {:?} after the link returned", back.elapsed());
    wait_pod(
        &env,
        "crashy",
        "the restarts made offline reported",
        RUN_TIMEOUT,
        |p| (restarts(p) > reported).then_some(()),
    )
    .await?;
    let steady = running(&env, "steady").await?;
    assert_eq!(container_id(&steady).as_deref(), Some(steady_id.as_str()));
    assert_eq!(container_started(&steady_id)?, steady_started);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_evicted_during_an_outage_are_removed_on_return() -> anyhow::Result<()> {
    let env = TestEnv::new("evicted").await?;
    let mut up = env.device_up("a", 10).await?;
    let node = up.name.clone();
    create_pod(
        &env,
        &node,
        "short",
        json!({
            "containers": [busybox("app", "exec sleep 3600")],
            "tolerations": short_tolerations(2),
            "terminationGracePeriodSeconds": 1,
        }),
    )
    .await?;
    let pod = running(&env, "short").await?;
    let id = container_id(&pod).expect("running");

    up.arhat.kill();
    wait_tainted(&env, &node).await?;
    wait_pod(
        &env,
        "short",
        "evicted by the taint-eviction controller",
        RUN_TIMEOUT,
        |p| p.metadata.deletion_timestamp.is_some().then_some(()),
    )
    .await?;
    assert!(
        container_started(&id)?.0,
        "nobody on the device to stop it yet"
    );

    let _arhat = env.start_arhat(&node, "2", &[])?;
    wait_for("the evicted pod gone", RUN_TIMEOUT, || async {
        let gone = pods(&env).get_opt("short").await.ok()?.is_none();
        (gone && !container_exists(&id).ok()?).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offline_allowance_keeps_pods_through_a_partition() -> anyhow::Result<()> {
    let env = TestEnv::new("allowance").await?;
    let up = env
        .device_up_with("a", 10, json!({ "tolerateOfflineSeconds": 600 }))
        .await?;
    let node = up.name.clone();
    create_pod(
        &env,
        &node,
        "short",
        json!({
            "containers": [busybox("app", "exec sleep 3600")],
            "tolerations": short_tolerations(2),
        }),
    )
    .await?;
    let pod = running(&env, "short").await?;
    let id = container_id(&pod).expect("running");
    wait_pod(
        &env,
        "short",
        "tolerations raised to 600 s",
        RUN_TIMEOUT,
        |p| {
            let ts = p.spec.as_ref()?.tolerations.clone()?;
            let raised = |key: &str| {
                ts.iter()
                    .any(|t| t.key.as_deref() == Some(key) && t.toleration_seconds == Some(600))
            };
            (raised("node.kubernetes.io/not-ready") && raised("node.kubernetes.io/unreachable"))
                .then_some(())
        },
    )
    .await?;

    let cut = LinkCut::new(env.grpc_port)?;
    wait_tainted(&env, &node).await?;
    // Well past the pod's own 2 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let pod = pods(&env).get("short").await?;
    assert!(
        pod.metadata.deletion_timestamp.is_none(),
        "a partition shorter than the allowance evicts nothing"
    );
    cut.restore();
    env.wait_ready(&node, "True", Some("EdgeDeviceConnected"), RUN_TIMEOUT)
        .await?;
    let pod = running(&env, "short").await?;
    assert_eq!(container_id(&pod).as_deref(), Some(id.as_str()));
    let left = pods(&env)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .count();
    assert_eq!(left, 0);
    Ok(())
}
