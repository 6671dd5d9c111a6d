//! Faults injected as a real fleet meets them, each test asserting pod
//! UIDs, container IDs, restart counts and the Node's Ready condition
//! before and after. One round each in `make test`; `make chaos` runs more
//! rounds (`ARANYA_CHAOS_ROUNDS`) and tabulates what each test recorded
//! (`e2e::chaos`).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use e2e::{
    TestEnv,
    chaos::{Outcome, rounds},
    images::pod_containers,
    impair::{Impairer, Link},
    netcut::LinkCut,
    pods::{busybox, container_id, create_pod, restarts, running_and_ready, wait_pod},
    wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// arhat's back-off cap in the tests' config, plus the 2 s the issue allows.
const READY_WITHIN: Duration = Duration::from_secs(2 + 2);

/// What must not change about a running pod: its UID, its container and
/// that container's restart count.
async fn identity(env: &TestEnv, name: &str) -> anyhow::Result<(String, Option<String>, i32)> {
    wait_pod(env, name, "running and ready", RUN_TIMEOUT, |p| {
        running_and_ready(p).then(|| (p.uid().unwrap_or_default(), container_id(p), restarts(p)))
    })
    .await
}

/// How long from now until the Node is Ready and stays so for 3 s.
async fn back_to_ready(env: &TestEnv, node: &str) -> anyhow::Result<Duration> {
    let since = Instant::now();
    loop {
        env.wait_ready(node, "True", Some("EdgeDeviceConnected"), RUN_TIMEOUT)
            .await?;
        let ready_at = since.elapsed();
        let mut held = true;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if env.ready(node).await.map(|r| r.0).as_deref() != Some("True") {
                held = false;
                break;
            }
        }
        if held {
            return Ok(ready_at);
        }
    }
}

/// `seq 1 20000` run in the pod through kubectl exec: whether the output
/// came back exact (a clear error is no corruption; wrong bytes are).
async fn exec_is_exact(env: &TestEnv, pod: &str) -> anyhow::Result<bool> {
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let mut cmd = env
        .cluster
        .kubectl_command(&["exec", "-n", &env.name, pod, "--", "seq", "1", "20000"]);
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await??;
    let out = out?;
    if !out.status.success() {
        eprintln!(
            "exec through the degraded link failed (a clear error): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(true);
    }
    Ok(out.stdout == expected.as_bytes())
}

/// arhat config YAML dialing aranya through loopback `port` (an impairer).
fn dial_through(env: &TestEnv, port: u16) -> String {
    format!(
        "connectivity:\n  methods:\n    - name: grpc\n      grpc:\n        endpoint: 127.0.0.1:{port}\n        caFile: {}\n        serverName: localhost\n",
        env.cluster.ca_file.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_degraded_link_restarts_nothing_and_corrupts_no_stream() -> anyhow::Result<()> {
    let env = TestEnv::new("lossy").await?;
    // arhat reaches aranya through an impairer, for latency.
    let link = Impairer::start(([127, 0, 0, 1], env.grpc_port).into()).await?;
    let up = env
        .device_up_configured("a", 10, json!({}), &dial_through(&env, link.port))
        .await?;
    create_pod(
        &env,
        &up.name,
        "steady",
        json!({ "containers": [busybox("app", "exec sleep 3600")] }),
    )
    .await?;
    let before = identity(&env, "steady").await?;
    let mut outcome = Outcome::default();
    // A minute of flapping in a chaos run; a quarter of it in CI.
    let flaps = if rounds() > 1 { 12 } else { 3 };
    for _ in 0..rounds() {
        // 20 % of the packets lost, both ways, while a stream runs.
        {
            let _loss = LinkCut::lossy(env.grpc_port, 0.2)?;
            outcome.injected += 1;
            let started = Instant::now();
            if !exec_is_exact(&env, "steady").await? {
                outcome.corrupted += 1;
            }
            tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
        }
        outcome
            .back_to_ready
            .push(back_to_ready(&env, &up.name).await?);
        // 500 ms more each way (up to 100 ms of jitter on top): the Node
        // stays Ready through it, and a stream stays exact.
        {
            let watch = ReadyWatch::start(&env, &up.name);
            link.set(Link::Late {
                latency: Duration::from_millis(500),
                jitter: Duration::from_millis(100),
            });
            outcome.injected += 1;
            let started = Instant::now();
            if !exec_is_exact(&env, "steady").await? {
                outcome.corrupted += 1;
            }
            tokio::time::sleep(Duration::from_secs(15).saturating_sub(started.elapsed())).await;
            link.set(Link::Pass);
            let seen = watch.stop().await;
            anyhow::ensure!(
                seen.is_empty(),
                "the Node left Ready under 500 ms of latency: {seen:?}"
            );
        }
        // The link flaps: down 2.5 s, up 2.5 s.
        for _ in 0..flaps {
            let cut = LinkCut::new(env.grpc_port)?;
            outcome.injected += 1;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            cut.restore();
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        outcome
            .back_to_ready
            .push(back_to_ready(&env, &up.name).await?);
        if !exec_is_exact(&env, "steady").await? {
            outcome.corrupted += 1;
        }
    }
    let after = identity(&env, "steady").await?;
    if after != before {
        outcome.restarted += 1;
    }
    outcome.record("link: 20% loss, 500 ms latency, then flapping every 5 s");
    assert_eq!(after, before, "the pod, its container and restart count");
    assert_eq!(outcome.corrupted, 0, "streams through the degraded link");
    for took in &outcome.back_to_ready {
        assert!(
            *took <= READY_WITHIN,
            "Ready again after {took:?}: {:?}",
            outcome.back_to_ready
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apiserver_gone_30_s_leaves_devices_and_nodes_alone() -> anyhow::Result<()> {
    let env = TestEnv::new("noapi").await?;
    // aranya reaches the apiserver through an impairer; the test does not.
    let apiserver = Impairer::start(env.apiserver_address()?).await?;
    let kubeconfig = env.aranya_kubeconfig_through(apiserver.port)?;
    let name = env.device("a");
    env.create_device(&name, 10).await?;
    let mut aranya = env.start_aranya_with("a", &kubeconfig)?;
    let _arhat = env.start_arhat(&name, "1", &[])?;
    env.wait_ready(&name, "True", Some("EdgeDeviceConnected"), RUN_TIMEOUT)
        .await?;
    create_pod(
        &env,
        &name,
        "steady",
        json!({ "containers": [busybox("app", "exec sleep 3600")] }),
    )
    .await?;
    let before = identity(&env, "steady").await?;
    let watch = ReadyWatch::start(&env, &name);
    let mut outcome = Outcome::default();
    for round in 0..rounds() {
        apiserver.set(Link::Down);
        outcome.injected += 1;
        tokio::time::sleep(Duration::from_secs(30)).await;
        apiserver.set(Link::Pass);
        // Back to work: a pod created now runs.
        let back = Instant::now();
        let fresh = format!("after-{round}");
        create_pod(
            &env,
            &name,
            &fresh,
            json!({ "containers": [busybox("app", "exec sleep 3600")] }),
        )
        .await?;
        identity(&env, &fresh).await?;
        outcome.back_to_ready.push(back.elapsed());
        // Long enough for a flap after the return to show.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let seen = watch.stop().await;
    let after = identity(&env, "steady").await?;
    if after != before {
        outcome.restarted += 1;
    }
    let sessions = aranya.log().matches("device connected").count();
    if !seen.is_empty() || sessions != 1 {
        outcome.corrupted += 1;
    }
    outcome.record("apiserver unreachable for aranya 30 s");
    anyhow::ensure!(
        aranya.is_running(),
        "aranya stopped: {}",
        aranya.log_tail(30)
    );
    assert!(seen.is_empty(), "the Node left Ready: {seen:?}");
    assert_eq!(sessions, 1, "the device's session was dropped");
    assert_eq!(after, before, "the pod, its container and restart count");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn aranya_killed_amid_pod_churn_converges() -> anyhow::Result<()> {
    let env = TestEnv::new("churn").await?;
    // 100 pods a round in a chaos run, 20 in CI.
    let n: usize = if rounds() > 1 { 100 } else { 20 };
    let mut up = env
        .device_up("a", u32::try_from(n).unwrap_or(100) + 10)
        .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    let mut outcome = Outcome::default();
    for round in 0..rounds() {
        let names: Vec<String> = (0..n).map(|i| format!("churn-{round}-{i}")).collect();
        // Creations, with aranya killed halfway and started again.
        for (i, name) in names.iter().enumerate() {
            if i == n / 2 {
                up.aranya.kill();
                outcome.injected += 1;
                up.aranya = env.start_aranya("a")?;
            }
            create_pod(
                &env,
                &up.name,
                name,
                json!({
                    "terminationGracePeriodSeconds": 1,
                    "containers": [busybox("app", "exec sleep 3600")],
                }),
            )
            .await?;
        }
        // Every other one deleted as soon as it runs somewhere, with aranya
        // killed again amid the deletions.
        let doomed: Vec<&String> = names.iter().step_by(2).collect();
        let mut doomed_uids = Vec::new();
        for (i, name) in doomed.iter().enumerate() {
            if i == doomed.len() / 2 {
                up.aranya.kill();
                outcome.injected += 1;
                up.aranya = env.start_aranya("a")?;
            }
            doomed_uids.push(pods.get(name).await?.uid().unwrap_or_default());
            pods.delete(name, &DeleteParams::default()).await?;
        }
        let restarted_at = Instant::now();
        outcome
            .back_to_ready
            .push(back_to_ready(&env, &up.name).await?);
        let kept: Vec<&String> = names.iter().skip(1).step_by(2).collect();
        // Every kept pod runs; every deleted one is gone.
        let converged = wait_for("the pods converged", RUN_TIMEOUT, || async {
            let list = pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.name_any().starts_with(&format!("churn-{round}-")))
                .collect::<Vec<_>>();
            let running: HashSet<String> = list
                .iter()
                .filter(|p| running_and_ready(p))
                .map(ResourceExt::name_any)
                .collect();
            (list.len() == kept.len() && kept.iter().all(|k| running.contains(*k))).then_some(list)
        })
        .await;
        let list = match converged {
            Ok(list) => list,
            Err(e) => {
                outcome.corrupted += 1;
                outcome.record("aranya SIGKILLed amid pod creations and deletions");
                return Err(e.context(up.logs(40)));
            }
        };
        eprintln!(
            "round {round}: {n} pods converged {:?} after the last restart",
            restarted_at.elapsed()
        );
        // On the device: each kept pod once (its sandbox and one app
        // container), nothing of a deleted one.
        for pod in &list {
            let objects = pod_containers(&pod.uid().unwrap_or_default())?;
            if objects.len() != 2 {
                eprintln!(
                    "{} has {} objects on the device",
                    pod.name_any(),
                    objects.len()
                );
                outcome.corrupted += 1;
            }
        }
        for uid in &doomed_uids {
            let left = wait_for(
                "a deleted pod's containers gone",
                Duration::from_secs(30),
                || async { pod_containers(uid).ok().filter(Vec::is_empty) },
            )
            .await;
            if left.is_err() {
                eprintln!("pod {uid} left {:?} on the device", pod_containers(uid));
                outcome.corrupted += 1;
            }
        }
        for pod in &list {
            if restarts(pod) != 0 {
                outcome.restarted += 1;
            }
        }
        // The next round starts from an empty device.
        for pod in &list {
            pods.delete(&pod.name_any(), &DeleteParams::default())
                .await?;
        }
        wait_for("the round's pods gone", RUN_TIMEOUT, || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items;
            left.iter()
                .all(|p| !p.name_any().starts_with(&format!("churn-{round}-")))
                .then_some(())
        })
        .await?;
    }
    outcome.record("aranya SIGKILLed amid pod creations and deletions");
    assert_eq!(outcome.corrupted, 0, "pods lost, doubled or left behind");
    assert_eq!(outcome.restarted, 0, "containers restarted");
    Ok(())
}

/// A small tmpfs mounted at a path until dropped (root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()?;
        anyhow::ensure!(status.success(), "mounting a tmpfs (needs root)");
        Ok(Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = file.write_all(&block) {
            anyhow::ensure!(e.raw_os_error() == Some(28), "filling: {e}");
            // What the last block could not take, byte by byte.
            while file.write_all(&[0]).is_ok() {}
            return Ok(());
        }
    }
}

/// The status reason and message of a pod (`FailedMount` and why, while it
/// waits for its volumes).
fn reason(pod: &Pod) -> Option<(String, String)> {
    let s = pod.status.as_ref()?;
    Some((s.reason.clone()?, s.message.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_data_dir_says_why_keeps_the_saved_pods_and_recovers() -> anyhow::Result<()> {
    let env = TestEnv::new("diskfull").await?;
    let device = env.device("a");
    let data = env.arhat_data_dir(&device);
    let _tmpfs = Tmpfs::mount(&data, "16m")?;
    let up = env.device_up("a", 10).await?;
    let mut outcome = Outcome::default();
    create_pod(
        &env,
        &up.name,
        "first",
        json!({ "containers": [busybox("app", "exec sleep 3600")] }),
    )
    .await?;
    let first = identity(&env, "first").await?;
    let saved = data.join("pods").join(&first.0).join("pod.pb");
    for round in 0..rounds() {
        let filler = data.join("filler");
        fill(&filler)?;
        outcome.injected += 1;
        let before = std::fs::read(&saved)?;
        let name = format!("second-{round}");
        create_pod(
            &env,
            &up.name,
            &name,
            json!({ "containers": [busybox("app", "exec sleep 3600")] }),
        )
        .await?;
        // A clear error, in the status (its network's address or its
        // volumes cannot be written) and as an event (its spec cannot).
        let (why, message) = wait_pod(&env, &name, "waiting for space", RUN_TIMEOUT, |p| {
            reason(p).filter(|(r, m)| {
                ["FailedCreatePodSandBox", "FailedMount"].contains(&r.as_str())
                    && m.to_lowercase().contains("no space left on device")
            })
        })
        .await?;
        eprintln!("waiting for space: {why}: {message}");
        e2e::pods::wait_events(&env, &name, &["FailedSave"]).await?;
        // The saved spec of the running pod is never torn: its refreshes
        // (every 5 s here) fail whole.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let during = std::fs::read(&saved)?;
        if during != before {
            outcome.corrupted += 1;
        }
        // Space back: the waiting pod runs, the first never noticed.
        std::fs::remove_file(&filler)?;
        let freed = Instant::now();
        identity(&env, &name).await?;
        outcome.back_to_ready.push(freed.elapsed());
        if identity(&env, "first").await? != first {
            outcome.restarted += 1;
        }
    }
    outcome.record("device data dir full (tmpfs)");
    assert_eq!(
        outcome.corrupted, 0,
        "the saved pod spec changed while the disk was full"
    );
    assert_eq!(outcome.restarted, 0, "the running pod restarted");
    Ok(())
}

/// Every Ready status other than True that `node` showed while this ran
/// (polled twice a second): (status, reason).
struct ReadyWatch(
    tokio::task::JoinHandle<Vec<(String, String)>>,
    tokio::sync::oneshot::Sender<()>,
);

impl ReadyWatch {
    fn start(env: &TestEnv, node: &str) -> ReadyWatch {
        let nodes = env.nodes();
        let node = node.to_string();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        ReadyWatch(
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while stopped.try_recv().is_err() {
                    if let Ok(n) = nodes.get(&node).await
                        && let Some(ready) = e2e::cluster::node_ready(&n)
                        && ready.0 != "True"
                        && seen.last() != Some(&ready)
                    {
                        seen.push(ready);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                seen
            }),
            stop,
        )
    }

    async fn stop(self) -> Vec<(String, String)> {
        let _ = self.1.send(());
        self.0.await.unwrap_or_default()
    }
}

/// How long after the leader's death `standby` leads and the device is back
/// on it: a Lease lapses after its 15 s unchanged, plus a renew interval or
/// two and the device's reconnection.
async fn takes_over(standby: &e2e::Proc, killed: Instant) -> anyhow::Result<Duration> {
    const LAPSE: Duration = Duration::from_secs(15 + 2 * 2 + 5);
    standby
        .wait_log("became leader", LAPSE.saturating_sub(killed.elapsed()))
        .await
        .map_err(|e| e.context(standby.log_tail(20)))?;
    standby.wait_log("device connected", RUN_TIMEOUT).await?;
    Ok(killed.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aranya_an_hour_ahead_keeps_leader_election_and_leases_working() -> anyhow::Result<()> {
    let env = TestEnv::new("skew").await?;
    let name = env.device("a");
    env.create_device(&name, 3).await?;
    let mut on_time = env.start_aranya("on-time-0")?;
    on_time
        .wait_log("became leader", Duration::from_secs(30))
        .await?;
    let _arhat = env.start_arhat(&name, "1", &[])?;
    env.wait_ready(&name, "True", Some("EdgeDeviceConnected"), RUN_TIMEOUT)
        .await?;
    let watch = ReadyWatch::start(&env, &name);
    let mut outcome = Outcome::default();
    for round in 0..rounds() {
        // A standby an hour ahead reads the leader's renewals as an hour
        // old: it must see them stop, not take the Lease from a live leader.
        let mut ahead = env.start_aranya_skewed(&format!("ahead-{round}"), "+1h")?;
        outcome.injected += 1;
        tokio::time::sleep(Duration::from_secs(15 + 5)).await;
        anyhow::ensure!(
            ahead.log().contains("standing by") && !ahead.log().contains("became leader"),
            "the standby an hour ahead: {}",
            ahead.log_tail(20)
        );
        on_time.kill();
        outcome
            .back_to_ready
            .push(takes_over(&ahead, Instant::now()).await?);
        // Back: a standby on time takes over from the leader an hour ahead
        // once it dies, though its renew times lie an hour in the future.
        on_time = env.start_aranya(&format!("on-time-{}", round + 1))?;
        on_time
            .wait_log("standing by", Duration::from_secs(30))
            .await?;
        ahead.kill();
        outcome
            .back_to_ready
            .push(takes_over(&on_time, Instant::now()).await?);
    }
    // Past the node-monitor grace period (50 s) after the last takeover: the
    // node Lease's renew times went back an hour with it, and yet the
    // node-lifecycle controller saw it renewed throughout.
    tokio::time::sleep(Duration::from_secs(55)).await;
    // The device reconnecting to each new leader may show; a stale Lease
    // (the node-lifecycle controller's Unknown) must not.
    let stale: Vec<_> = watch
        .stop()
        .await
        .into_iter()
        .filter(|(status, _)| status == "Unknown")
        .collect();
    if !stale.is_empty() {
        outcome.corrupted += 1;
    }
    outcome.record("aranya's clock an hour ahead, leadership handed back and forth");
    assert!(
        stale.is_empty(),
        "the node went Unknown (its Lease judged stale): {stale:?}"
    );
    env.wait_ready(&name, "True", Some("EdgeDeviceConnected"), RUN_TIMEOUT)
        .await?;
    Ok(())
}
