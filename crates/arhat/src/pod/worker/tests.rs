//! The pod worker on the fake runtime, in paused time: restart back-off,
//! restart policies, init containers, sandbox loss, runtime outages,
//! adoption, termination, probes (readiness, liveness, startup) and
//! lifecycle hooks, each as a kubelet behaves.

use std::{sync::Arc, time::Duration};

use proto::api::{Container, PodEvent, PodSpec, PodStatus, container_state::State as Phase};

use crate::{
    network::{PodNetwork, fake::FakeNetwork},
    pod::PodManager,
    runtime::{
        ContainerState, LABEL_ATTEMPT, LABEL_CONTAINER, LABEL_POD_UID, SANDBOX, fake::Fake,
        labels::Owner,
    },
};

const UID: &str = "u1";

struct Rig {
    fake: Arc<Fake>,
    network: Arc<FakeNetwork>,
    pods: Arc<PodManager>,
    events: Arc<std::sync::Mutex<Vec<PodEvent>>>,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        Self::with(Fake::default())
    }

    fn with(fake: Fake) -> Self {
        let fake = Arc::new(fake);
        let network = Arc::new(FakeNetwork::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let pods = PodManager::new(
            fake.clone(),
            network.clone(),
            "dev",
            "10.0.0.1".into(),
            dir.path().to_path_buf(),
            crate::runtime::LogRotation::default(),
            None,
        );
        // Events go out with status reports: collect them as the agent would.
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, e) = (pods.clone(), events.clone());
        tokio::spawn(async move {
            loop {
                for status in p.changes().await {
                    e.lock().expect("events").extend(status.events);
                }
            }
        });
        Self {
            fake,
            network,
            pods,
            events,
            dir,
        }
    }

    fn run(&self, spec: PodSpec) {
        self.pods.ensure(spec);
    }

    /// The status once `done` holds (time is paused: waiting is free).
    async fn until(&self, what: &str, done: impl Fn(&PodStatus) -> bool) -> PodStatus {
        for _ in 0..100_000 {
            if let Some(s) = self.pods.status(UID)
                && done(&s)
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never {what}: {:#?}", self.pods.status(UID));
    }

    fn reasons(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .map(|e| e.reason.clone())
            .collect()
    }

    /// The pod's objects of one container (or [`SANDBOX`]), oldest first.
    fn objects(&self, container: &str) -> Vec<String> {
        self.fake
            .find(&[(LABEL_POD_UID, UID), (LABEL_CONTAINER, container)])
    }
}

/// Whose objects the pod's are, as an earlier run labelled them.
fn owner() -> Owner<'static> {
    Owner {
        device: "dev",
        pod_uid: UID,
        namespace: "ns",
        pod_name: "web",
    }
}

fn container(name: &str, command: &[&str]) -> Container {
    Container {
        name: name.into(),
        image: "img".into(),
        command: command.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }
}

fn pod(restart_policy: &str, init: Vec<Container>, app: Vec<Container>) -> PodSpec {
    PodSpec {
        uid: UID.into(),
        namespace: "ns".into(),
        name: "web".into(),
        restart_policy: restart_policy.into(),
        init_containers: init,
        containers: app,
        ..Default::default()
    }
}

fn phase(c: &proto::api::ContainerStatus) -> Option<&Phase> {
    c.state.as_ref()?.state.as_ref()
}

fn running(s: &PodStatus) -> bool {
    s.phase == "Running"
        && s.containers
            .iter()
            .all(|c| matches!(phase(c), Some(Phase::Running(_))))
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_backs_off_doubling_and_counts_restarts() {
    let rig = Rig::new();
    rig.run(pod(
        "Always",
        vec![],
        vec![container("app", &["exit", "1"])],
    ));
    let mut seen = Vec::new();
    for restarts in 1..=3 {
        let s = rig
            .until("in back-off", |s| {
                s.containers[0].restart_count == restarts
                    && matches!(phase(&s.containers[0]), Some(Phase::Waiting(w)) if w.reason == "CrashLoopBackOff")
            })
            .await;
        if let Some(Phase::Waiting(w)) = phase(&s.containers[0]) {
            seen.push(w.message.clone());
        }
        let last = s.containers[0]
            .last_state
            .as_ref()
            .and_then(|l| l.state.as_ref());
        assert!(
            matches!(last, Some(Phase::Terminated(t)) if t.exit_code == 1),
            "{last:?}"
        );
    }
    assert!(seen[0].contains("back-off 10s"), "{seen:?}");
    assert!(seen[1].contains("back-off 20s"), "{seen:?}");
    assert!(seen[2].contains("back-off 40s"), "{seen:?}");
    assert!(rig.reasons().iter().any(|r| r == "BackOff"));
}

#[tokio::test(start_paused = true)]
async fn never_and_on_failure_pods_that_succeed_are_not_restarted() {
    for policy in ["Never", "OnFailure"] {
        let rig = Rig::new();
        rig.run(pod(policy, vec![], vec![container("app", &["exit", "0"])]));
        rig.until("succeeded", |s| s.phase == "Succeeded").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(rig.fake.calls("create_container"), 1, "{policy}");
    }
    // Never: a failure ends the pod too.
    let rig = Rig::new();
    rig.run(pod("Never", vec![], vec![container("app", &["exit", "3"])]));
    rig.until("failed", |s| s.phase == "Failed").await;
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_before_the_app() {
    let rig = Rig::new();
    rig.run(pod(
        "Always",
        vec![
            container("first", &["exit", "0"]),
            container("second", &["exit", "0"]),
        ],
        vec![container("app", &[])],
    ));
    let s = rig.until("running", running).await;
    assert!(s.initialized);
    // Ids are handed out in creation order.
    let ids: Vec<String> = ["first", "second", "app"]
        .iter()
        .flat_map(|c| rig.objects(c))
        .collect();
    assert_eq!(ids, ["c1", "c2", "c3"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_init_container_fails_a_never_pod_and_the_app_never_runs() {
    let rig = Rig::new();
    rig.run(pod(
        "Never",
        vec![container("init", &["exit", "1"])],
        vec![container("app", &[])],
    ));
    rig.until("failed", |s| s.phase == "Failed").await;
    assert!(rig.objects("app").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dead_sandbox_is_made_again_and_the_pod_starts_anew_in_it() {
    let rig = Rig::new();
    rig.run(pod(
        "Always",
        vec![container("init", &["exit", "0"])],
        vec![container("app", &[])],
    ));
    let before = rig.until("running", running).await;
    // What a runtime restart without live-restore does: everything dies.
    let sandbox = rig.objects(SANDBOX)[0].clone();
    let app = rig.objects("app")[0].clone();
    rig.fake.exit(&app, 137);
    rig.fake.exit(&sandbox, 0);
    let after = rig
        .until("running in a new sandbox", |s| {
            running(s) && s.containers[0].container_id != before.containers[0].container_id
        })
        .await;
    assert_eq!(after.containers[0].restart_count, 1);
    assert_eq!(after.init_containers[0].restart_count, 1, "init ran again");
    let last = after.containers[0]
        .last_state
        .as_ref()
        .and_then(|l| l.state.as_ref());
    assert!(
        matches!(last, Some(Phase::Terminated(t)) if t.exit_code == 137),
        "{last:?}"
    );
    let sandboxes = rig.objects(SANDBOX);
    assert_eq!(sandboxes.len(), 1, "the dead sandbox is removed");
    assert_eq!(
        rig.fake.find(&[
            (LABEL_POD_UID, UID),
            (LABEL_CONTAINER, SANDBOX),
            (LABEL_ATTEMPT, "1")
        ]),
        sandboxes,
        "the new sandbox is attempt 1"
    );
    assert!(rig.reasons().iter().any(|r| r == "SandboxChanged"));
    // The dead sandbox's address is given back; the new one has its own.
    assert_eq!(rig.network.detached(), [sandbox]);
    assert_eq!(rig.network.attached(), [sandboxes[0].clone()].into());
    assert_eq!(before.pod_ip, "10.0.0.1");
    assert_eq!(after.pod_ip, "10.0.0.2");
}

#[tokio::test(start_paused = true)]
async fn the_pods_files_carry_its_address_and_every_container_mounts_them() {
    let rig = Rig::new();
    let mut spec = pod("Always", vec![], vec![container("app", &[])]);
    spec.hostname = "web".into();
    rig.run(spec);
    let s = rig.until("running", running).await;
    let app = rig.objects("app")[0].clone();
    let mounts = rig.fake.mounts(&app);
    let hosts = mounts
        .iter()
        .find(|m| m.container_path == "/etc/hosts")
        .expect("/etc/hosts mounted");
    let text = std::fs::read_to_string(&hosts.host_path).expect("hosts file");
    assert!(text.contains(&format!("{}\tweb\n", s.pod_ip)), "{text}");
    assert!(
        mounts
            .iter()
            .any(|m| m.container_path == "/etc/resolv.conf")
    );
}

#[tokio::test(start_paused = true)]
async fn a_never_pod_whose_containers_ran_gets_no_new_sandbox() {
    let rig = Rig::new();
    rig.run(pod("Never", vec![], vec![container("app", &[])]));
    rig.until("running", running).await;
    // The sandbox's death is seen first: its containers are stopped with it.
    rig.fake.exit(&rig.objects(SANDBOX)[0], 0);
    rig.until("failed", |s| s.phase == "Failed").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(rig.fake.calls("create_sandbox"), 1);
    assert!(!rig.reasons().iter().any(|r| r == "SandboxChanged"));
}

#[tokio::test(start_paused = true)]
async fn a_runtime_outage_restarts_nothing() {
    let rig = Rig::new();
    rig.run(pod("Always", vec![], vec![container("app", &[])]));
    let before = rig.until("running", running).await;
    rig.fake.set_down(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    rig.fake.set_down(false);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = rig.pods.status(UID).expect("status");
    assert_eq!(after.containers, before.containers);
    assert_eq!(rig.fake.calls("create_container"), 1);
    assert_eq!(rig.fake.calls("create_sandbox"), 1);
}

#[tokio::test(start_paused = true)]
async fn what_an_earlier_run_left_running_is_taken_over() {
    let rig = Rig::new();
    let owner = owner();
    let sandbox = rig.fake.insert(true, owner.labels(SANDBOX, 0), true);
    let address = rig
        .network
        .attach(&sandbox, std::path::Path::new("/proc/self/ns/net"), &[])
        .await
        .expect("attached");
    let app = rig.fake.insert(false, owner.labels("app", 2), true);
    rig.run(pod("Always", vec![], vec![container("app", &[])]));
    let s = rig.until("running", running).await;
    assert_eq!(s.pod_ip, address.to_string(), "the address it had");
    assert_eq!(s.containers[0].container_id, format!("fake://{app}"));
    assert_eq!(s.containers[0].restart_count, 2);
    assert_eq!(rig.fake.calls("create_sandbox"), 0);
    assert_eq!(rig.fake.calls("create_container"), 0);
    assert!(matches!(
        rig.fake.state(&sandbox),
        Some(ContainerState::Running { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_left_without_its_network_is_replaced() {
    let rig = Rig::new();
    let owner = owner();
    let sandbox = rig.fake.insert(true, owner.labels(SANDBOX, 0), true);
    rig.fake.insert(false, owner.labels("app", 0), true);
    rig.run(pod("Always", vec![], vec![container("app", &[])]));
    let s = rig.until("running", running).await;
    assert_eq!(rig.fake.calls("create_sandbox"), 1);
    assert!(
        !rig.objects(SANDBOX).contains(&sandbox),
        "the old one is removed"
    );
    assert_eq!(s.containers[0].restart_count, 1);
    assert_eq!(s.pod_ip, "10.0.0.1");
}

#[tokio::test(start_paused = true)]
async fn a_deletion_amid_a_sandbox_creation_leaves_nothing_behind() {
    let rig = Rig::new();
    rig.fake.slow_creates(Duration::from_secs(5));
    rig.run(pod("Always", vec![], vec![container("app", &[])]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rig.fake.calls("create_sandbox"),
        1,
        "the creation is under way"
    );
    let status = rig.pods.delete(UID, Duration::from_secs(5)).await;
    assert!(status.removed);
    assert!(
        rig.fake.find(&[(LABEL_POD_UID, UID)]).is_empty(),
        "the sandbox the runtime made after the deletion began is gone"
    );
}

/// A pod's messages come on streams of their own: two deletes (a controller
/// restarted between them) and a create that arrived late run it no more.
#[tokio::test(start_paused = true)]
async fn a_create_after_the_delete_runs_nothing_and_leaves_nothing() {
    let rig = Rig::new();
    rig.fake.slow_creates(Duration::from_secs(5));
    let spec = pod("Always", vec![], vec![container("app", &[])]);
    rig.run(spec.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (first, second) = tokio::join!(
        rig.pods.delete(UID, Duration::from_secs(5)),
        rig.pods.delete(UID, Duration::from_secs(5)),
    );
    assert!(first.removed && second.removed);
    let late = rig.pods.ensure(spec);
    assert!(late.removed, "the late create is answered as removed");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(rig.fake.calls("create_sandbox"), 1, "nothing made again");
    assert!(rig.fake.find(&[(LABEL_POD_UID, UID)]).is_empty());
    assert!(rig.pods.status(UID).is_none());
}

#[tokio::test(start_paused = true)]
async fn housekeeping_removes_what_no_pod_here_owns() {
    let rig = Rig::new();
    rig.run(pod("Always", vec![], vec![container("app", &[])]));
    rig.until("running", running).await;
    let stray = Owner {
        pod_uid: "gone",
        ..owner()
    };
    let left = rig.fake.insert(false, stray.labels("app", 0), false);
    tokio::spawn(rig.pods.clone().housekeeping(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.fake.state(&left), None, "the stray container is gone");
    assert_eq!(rig.objects("app").len(), 1, "the pod's own container stays");
    assert_eq!(rig.objects(SANDBOX).len(), 1, "and its sandbox");
}

#[tokio::test(start_paused = true)]
async fn deletion_stops_then_removes_every_object() {
    let rig = Rig::new();
    rig.run(pod("Always", vec![], vec![container("app", &[])]));
    rig.until("running", running).await;
    let status = rig.pods.delete(UID, Duration::from_secs(5)).await;
    assert!(status.removed || rig.pods.status(UID).is_none_or(|s| s.removed));
    assert!(rig.fake.find(&[(LABEL_POD_UID, UID)]).is_empty());
    assert!(rig.fake.calls("stop_container") >= 1);
    assert!(rig.network.attached().is_empty(), "its address given back");
}

// ---- probes and hooks, through exec in the fake runtime ----

fn exec(command: &[&str]) -> proto::api::Action {
    proto::api::Action {
        kind: Some(proto::api::action::Kind::Exec(proto::api::ExecAction {
            command: command.iter().map(ToString::to_string).collect(),
        })),
    }
}

fn probe(command: &[&str], failure_threshold: i32) -> proto::api::Probe {
    proto::api::Probe {
        action: Some(exec(command)),
        period_seconds: 1,
        timeout_seconds: 1,
        success_threshold: 1,
        failure_threshold,
        ..Default::default()
    }
}

fn ready(s: &PodStatus) -> bool {
    s.containers.first().is_some_and(|c| c.ready)
}

#[tokio::test(start_paused = true)]
async fn a_readiness_probe_gates_ready_both_ways_without_restarting() {
    let rig = Rig::new();
    rig.fake.set_exec(&["ready?"], 1);
    rig.run(pod(
        "Always",
        vec![],
        vec![Container {
            readiness_probe: Some(probe(&["ready?"], 2)),
            ..container("app", &[])
        }],
    ));
    rig.until("running", running).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = rig.pods.status(UID).expect("status");
    assert!(!ready(&s), "not ready while the probe fails");
    assert!(
        rig.fake.calls_like("exec ready?").len() >= 3,
        "probed every period"
    );

    rig.fake.set_exec(&["ready?"], 0);
    rig.until("ready", ready).await;
    rig.fake.set_exec(&["ready?"], 1);
    let s = rig.until("unready again", |s| !ready(s)).await;
    assert_eq!(s.containers[0].restart_count, 0, "readiness never restarts");
    assert!(rig.reasons().iter().any(|r| r == "Unhealthy"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_kills_and_restarts_the_container() {
    let rig = Rig::new();
    rig.run(pod(
        "Always",
        vec![],
        vec![Container {
            liveness_probe: Some(probe(&["alive?"], 3)),
            ..container("app", &[])
        }],
    ));
    rig.until("running", running).await;
    let first = rig.objects("app");
    rig.fake.set_exec(&["alive?"], 1);
    rig.until("running again", |s| {
        s.containers[0].restart_count == 1 && running(s)
    })
    .await;
    let reasons = rig.reasons();
    assert!(reasons.iter().any(|r| r == "Unhealthy"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
    // Three failures in a row, not one, made it.
    assert!(rig.fake.calls_like("exec alive?").len() >= 3);
    assert!(rig.fake.calls("stop_container") >= 1);
    assert_ne!(rig.objects("app"), first, "a new container");
}

#[tokio::test(start_paused = true)]
async fn a_startup_probe_holds_liveness_back_until_it_succeeds() {
    let rig = Rig::new();
    rig.fake.set_exec(&["started?"], 1);
    rig.fake.set_exec(&["alive?"], 1);
    rig.run(pod(
        "Always",
        vec![],
        vec![Container {
            startup_probe: Some(probe(&["started?"], 1000)),
            liveness_probe: Some(probe(&["alive?"], 1)),
            ..container("app", &[])
        }],
    ));
    rig.until("running", running).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        rig.fake.calls_like("exec alive?").is_empty(),
        "no liveness probe before the startup probe succeeds"
    );
    let s = rig.pods.status(UID).expect("status");
    assert!(!s.containers[0].started && s.containers[0].restart_count == 0);

    rig.fake.set_exec(&["started?"], 0);
    rig.fake.set_exec(&["alive?"], 0);
    rig.until("started", |s| s.containers[0].started).await;
    // Now liveness runs, and its first failure restarts the container.
    rig.fake.set_exec(&["alive?"], 1);
    rig.until("restarted by liveness", |s| {
        s.containers[0].restart_count == 1
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn post_start_runs_after_the_start_and_pre_stop_before_the_stop() {
    let rig = Rig::new();
    rig.run(pod(
        "Always",
        vec![],
        vec![Container {
            post_start: Some(exec(&["hook", "post"])),
            pre_stop: Some(exec(&["hook", "pre"])),
            ..container("app", &[])
        }],
    ));
    rig.until("running", running).await;
    rig.pods.delete(UID, Duration::from_secs(30)).await;
    let order: Vec<String> = rig
        .fake
        .calls
        .lock()
        .expect("calls")
        .iter()
        .filter(|c| {
            ["start_container", "stop_container", "exec hook"]
                .iter()
                .any(|p| c.starts_with(p))
        })
        .cloned()
        .collect();
    let find = |what: &str| order.iter().position(|c| c == what);
    let (start, post, pre) = (
        find("start_container"),
        find("exec hook post"),
        find("exec hook pre"),
    );
    let stop = order
        .iter()
        .rposition(|c| c == "stop_container")
        .expect("stopped");
    assert!(start < post && post < pre, "{order:?}");
    assert!(pre < Some(stop), "{order:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_post_start_hook_kills_the_container_and_it_restarts() {
    let rig = Rig::new();
    rig.fake.set_exec(&["hook", "post"], 2);
    rig.run(pod(
        "Always",
        vec![],
        vec![Container {
            post_start: Some(exec(&["hook", "post"])),
            ..container("app", &[])
        }],
    ));
    rig.until("restarted", |s| s.containers[0].restart_count >= 1)
        .await;
    let reasons = rig.reasons();
    assert!(
        reasons.iter().any(|r| r == "FailedPostStartHook"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
}

// ---- logs kept by arhat, for a runtime that keeps none ----

#[tokio::test]
async fn a_runtime_without_logs_has_its_containers_logs_kept_in_the_pod() {
    use futures::StreamExt;
    const LIMIT: Duration = Duration::from_secs(10);
    let rig = Rig::with(Fake::keeping_no_logs());
    rig.run(pod(
        "Never",
        vec![],
        vec![
            container("done", &["exit", "0"]),
            container("serves", &["serve", "forever"]),
        ],
    ));
    tokio::time::timeout(
        LIMIT,
        rig.until("one done, one running", |s| {
            matches!(phase(&s.containers[0]), Some(Phase::Terminated(_)))
                && matches!(phase(&s.containers[1]), Some(Phase::Running(_)))
        }),
    )
    .await
    .expect("the pod runs");
    let id = |name| {
        rig.pods
            .container_instance(UID, name, false)
            .expect("an instance")
    };
    let read = |name: &'static str, follow| {
        let (pods, id) = (rig.pods.clone(), id(name));
        async move {
            let options = crate::runtime::LogOptions {
                follow,
                ..Default::default()
            };
            pods.container_logs(UID, &id, &options).await
        }
    };
    // The keeper writes in the background: the exited one's log is complete
    // once its keeper is done, which following waits for.
    let done: Vec<_> = tokio::time::timeout(
        LIMIT,
        read("done", true)
            .await
            .expect("the kept log")
            .map(|e| e.expect("entry"))
            .collect(),
    )
    .await
    .expect("following an exited container's log ends");
    assert!(done.iter().all(|e| e.time.is_some()), "{done:?}");
    let texts: Vec<_> = done.iter().map(|e| e.text.clone()).collect();
    assert_eq!(texts, ["exit 0\n"]);
    let file = rig
        .dir
        .path()
        .join("pods")
        .join(UID)
        .join("logs")
        .join(format!("{}.log", id("done")));
    assert!(file.is_file(), "{}", file.display());

    // Following the running one lasts while it runs, and ends when the pod
    // is deleted.
    let mut follow = read("serves", true).await.expect("the kept log");
    let first = tokio::time::timeout(LIMIT, follow.next())
        .await
        .expect("its first line")
        .expect("an entry")
        .expect("entry");
    assert_eq!(first.text, "serve forever\n");
    assert!(
        tokio::time::timeout(crate::containerlog::POLL * 3, follow.next())
            .await
            .is_err(),
        "still following while the container runs"
    );
    let deleted = {
        let pods = rig.pods.clone();
        tokio::spawn(async move { pods.delete(UID, Duration::from_secs(1)).await })
    };
    let rest = tokio::time::timeout(LIMIT, follow.collect::<Vec<_>>())
        .await
        .expect("following ends with the container");
    assert!(rest.is_empty(), "{rest:?}");
    deleted.await.expect("deleted");
    assert!(
        !rig.dir.path().join("pods").join(UID).exists(),
        "gone with the pod"
    );
}
