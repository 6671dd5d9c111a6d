//! Pods a device cannot run end Failed with a reason, as a kubelet's
//! admission failure does; pods its policy refuses, or that a device
//! without a runtime is given, wait Pending with a reason (no controller
//! replaces them in a loop); none reaches the runtime.

use std::time::Duration;

use e2e::{
    TestEnv,
    images::{device_pod_names, pod_containers},
    pods::{busybox, create_pod, running_and_ready, wait_pod},
    wait_for,
};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Event, Pod},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Waits for the pod to end Failed with `reason`; its message.
async fn failed_with(env: &TestEnv, pod: &str, reason: &str) -> anyhow::Result<String> {
    wait_pod(env, pod, &format!("Failed with {reason}"), TIMEOUT, |p| {
        let s = p.status.as_ref()?;
        (s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some(reason))
            .then(|| s.message.clone().unwrap_or_default())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_the_device_cannot_run_fail_with_the_reason() -> anyhow::Result<()> {
    let env = TestEnv::new("admit").await?;
    let up = env.device_up("a", 10).await?;
    create_pod(
        &env,
        &up.name,
        "nfs",
        json!({
            "containers": [busybox("app", "sleep 3600")],
            "volumes": [{ "name": "data", "nfs": { "server": "192.0.2.1", "path": "/export" } }],
        }),
    )
    .await?;
    let message = failed_with(&env, "nfs", "UnsupportedVolume").await?;
    assert!(message.contains("\"data\""), "names the volume: {message}");

    // Bound by name, past the scheduler: only the device can say it does not fit.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    let mut app = busybox("app", "sleep 3600");
    app["resources"] = json!({ "requests": { "memory": "1Pi" } });
    let huge: Pod = serde_json::from_value(json!({
        "metadata": { "name": "huge" },
        "spec": { "nodeName": up.name, "containers": [app] },
    }))?;
    pods.create(&PostParams::default(), &huge).await?;
    let message = failed_with(&env, "huge", "OutOfmemory").await?;
    assert!(
        message.contains("memory, requested: 1125899906842624"),
        "{message}"
    );

    for name in ["nfs", "huge"] {
        let uid = pods.get(name).await?.uid().unwrap_or_default();
        assert!(
            pod_containers(&uid)?.is_empty(),
            "{name} never reached the runtime"
        );
    }
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for want in ["UnsupportedVolume", "OutOfmemory"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "{want} event: {reasons:?}"
        );
    }
    Ok(())
}

fn daemon_set(name: &str, node: &str, tolerations: serde_json::Value) -> anyhow::Result<DaemonSet> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "selector": { "matchLabels": { "ds": name } },
            "template": {
                "metadata": { "labels": { "ds": name } },
                "spec": {
                    // Only this test's device: other tests' nodes stay out of it.
                    "nodeSelector": { "kubernetes.io/hostname": node },
                    "tolerations": tolerations,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [busybox("agent", "exec sleep 3600")],
                },
            },
        },
    }))?)
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_sets_tolerating_everything_stay_off_the_device() -> anyhow::Result<()> {
    let env = TestEnv::new("daemonset").await?;
    let up = env.device_up("a", 10).await?;
    let sets: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.name);
    sets.create(
        &PostParams::default(),
        &daemon_set("everything", &up.name, json!([{ "operator": "Exists" }]))?,
    )
    .await?;
    sets.create(
        &PostParams::default(),
        &daemon_set(
            "for-edge",
            &up.name,
            json!([{ "key": "aranya.arhat.dev/edge-device", "operator": "Exists" }]),
        )?,
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    let edge = wait_for("the edge DaemonSet's pod running", TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels("ds=for-edge"))
            .await
            .ok()?;
        list.items.into_iter().find(running_and_ready)
    })
    .await?;
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.name);
    let message = wait_for("an EdgeDevicePolicy refusal", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            let about = e.involved_object.name.as_deref().unwrap_or_default();
            (e.reason.as_deref() == Some("EdgeDevicePolicy") && about.starts_with("everything-"))
                .then(|| e.message.unwrap_or_default())
        })
    })
    .await?;
    assert!(
        message.contains("spec.pod.admission.daemonSets"),
        "names the rule: {message}"
    );
    // The refused pod waits, Pending with the reason: the DaemonSet
    // controller has nothing to replace, so the same pod stays.
    let refused = || async {
        let list = pods
            .list(&ListParams::default().labels("ds=everything"))
            .await?;
        anyhow::Ok(
            list.items
                .iter()
                .map(|p| {
                    let s = p.status.clone().unwrap_or_default();
                    (p.uid().unwrap_or_default(), s.phase, s.reason)
                })
                .collect::<Vec<_>>(),
        )
    };
    let first = wait_for("the refused pod waiting", TIMEOUT, || async {
        let seen = refused().await.ok()?;
        (seen.len() == 1
            && seen[0].1.as_deref() == Some("Pending")
            && seen[0].2.as_deref() == Some("EdgeDevicePolicy"))
        .then_some(seen)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(refused().await?, first, "no pod replaced");
    let names = device_pod_names(&up.name)?;
    assert!(
        names.iter().any(|n| *n == edge.name_any()),
        "the edge DaemonSet runs: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("everything-")),
        "{names:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_without_a_runtime_is_tainted_and_its_pods_wait() -> anyhow::Result<()> {
    let env = TestEnv::new("noruntime").await?;
    let up = env
        .device_up_configured("a", 10, json!({}), "runtime:\n  kind: none\n")
        .await?;
    let node = env.nodes().get(&up.name).await?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "aranya.arhat.dev/no-runtime" && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    assert_eq!(
        env.ready(&up.name).await.map(|r| r.0).as_deref(),
        Some("True")
    );

    // A Deployment aimed at the device: the scheduler keeps its pods off it.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(env.client.clone(), &env.name);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "web" },
                "spec": {
                    "replicas": 2,
                    "selector": { "matchLabels": { "app": "web" } },
                    "template": {
                        "metadata": { "labels": { "app": "web" } },
                        "spec": {
                            "nodeSelector": { "kubernetes.io/hostname": up.name },
                            "tolerations": [{ "key": "aranya.arhat.dev/edge-device", "operator": "Exists" }],
                            "containers": [busybox("app", "sleep 3600")],
                        },
                    },
                },
            }))?,
        )
        .await?;
    // A pod bound to it by name, past the scheduler: it waits with the reason.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    let bound: Pod = serde_json::from_value(json!({
        "metadata": { "name": "bound" },
        "spec": { "nodeName": up.name, "containers": [busybox("app", "sleep 3600")] },
    }))?;
    pods.create(&PostParams::default(), &bound).await?;
    let bound = wait_pod(
        &env,
        "bound",
        "Pending with RuntimeUnavailable",
        TIMEOUT,
        |p| {
            let s = p.status.as_ref()?;
            (s.phase.as_deref() == Some("Pending")
                && s.reason.as_deref() == Some("RuntimeUnavailable"))
            .then(|| p.uid().unwrap_or_default())
        },
    )
    .await?;
    let web = || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        anyhow::Ok(
            list.items
                .iter()
                .map(|p| {
                    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.clone());
                    (p.uid().unwrap_or_default(), scheduled)
                })
                .collect::<Vec<_>>(),
        )
    };
    let first = wait_for("the Deployment's two pods", TIMEOUT, || async {
        web().await.ok().filter(|w| w.len() == 2)
    })
    .await?;
    // Long enough for a storm to show: nothing replaced, nothing placed.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut later = web().await?;
    let mut expected = first.clone();
    later.sort();
    expected.sort();
    assert_eq!(later, expected, "the same two pods");
    assert!(
        later.iter().all(|(_, node)| node.is_none()),
        "unscheduled: {later:?}"
    );
    let now = pods.get("bound").await?;
    assert_eq!(now.uid().unwrap_or_default(), bound);
    assert_eq!(
        now.status.and_then(|s| s.phase).as_deref(),
        Some("Pending"),
        "still waiting"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("bound"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "RuntimeUnavailable"),
        "{reasons:?}"
    );
    Ok(())
}
