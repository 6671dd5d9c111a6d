//! Pods for tests: placed on a test's device, created, waited for.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;

use crate::{TestEnv, images::BUSYBOX, wait_for};

/// Pod template parts that put a pod on the test's device.
pub fn placement(node: &str) -> serde_json::Value {
    json!({
        "nodeSelector": { "kubernetes.io/hostname": node },
        "tolerations": [{ "key": "aranya.arhat.dev/edge-device", "operator": "Exists", "effect": "NoSchedule" }],
    })
}

pub fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

pub async fn pods_of(env: &TestEnv, selector: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}

pub fn container_id(pod: &Pod) -> Option<String> {
    let s = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    s.container_id
        .as_ref()?
        .strip_prefix("docker://")
        .map(str::to_string)
}

/// The first container's restart count.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

pub fn running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    status.phase.as_deref() == Some("Running") && ready && container_id(pod).is_some()
}

/// Creates a bare pod on the test's device.
pub async fn create_pod(
    env: &TestEnv,
    node: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<Pod> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    let pod = json!({
        "metadata": { "name": name, "labels": { "test": name } },
        "spec": merge(placement(node), spec),
    });
    Ok(api
        .create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?)
}

pub fn busybox(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": BUSYBOX, "command": ["sh", "-c", script] })
}

pub async fn wait_pod<T>(
    env: &TestEnv,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Pod) -> Option<T>,
) -> anyhow::Result<T> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    wait_for(&format!("pod {name}: {what}"), timeout, || async {
        let pod = api.get_opt(name).await.ok()??;
        check(&pod)
    })
    .await
}

/// What the pod's container printed, once it printed `done` (90 s at most).
pub async fn printed(env: &TestEnv, pod: &str, container: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("{pod}/{container} printed"),
        Duration::from_secs(90),
        || async {
            let out = env
                .cluster
                .kubectl_output(&["logs", "-n", &env.name, pod, "-c", container])
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("done").then_some(text)
        },
    )
    .await
    .map_err(|e| {
        let ns = env.name.as_str();
        let logs = env
            .cluster
            .kubectl(&["logs", "-n", ns, pod, "-c", container])
            .unwrap_or_else(|e| e.to_string());
        let status = env
            .cluster
            .kubectl(&["get", "pod", "-n", ns, pod, "-o", "wide"])
            .unwrap_or_else(|e| e.to_string());
        anyhow::anyhow!("{e}\n{status}\nlogs so far:\n{logs}")
    })
}

/// Reasons of the events recorded for a pod, waiting until `want` are all there.
pub async fn wait_events(env: &TestEnv, pod: &str, want: &[&str]) -> anyhow::Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(env.client.clone(), &env.name);
    wait_for(
        &format!("events {want:?} for {pod}"),
        Duration::from_secs(30),
        || async {
            let events = api
                .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
                .await
                .ok()?;
            let reasons: Vec<String> = events
                .items
                .iter()
                .filter_map(|e| e.reason.clone())
                .collect();
            want.iter()
                .all(|w| reasons.iter().any(|r| r == w))
                .then_some(reasons)
        },
    )
    .await
    .map_err(|e| {
        let all = env
            .cluster
            .kubectl(&["get", "events", "-n", &env.name])
            .unwrap_or_default();
        anyhow::anyhow!("{e}\nevents in the namespace:\n{all}")
    })
}

/// Whether the apiserver accepts `token` (a TokenReview).
pub async fn token_accepted(env: &TestEnv, token: &str) -> anyhow::Result<bool> {
    Ok(review_token(env, token).await?.authenticated == Some(true))
}

/// What the apiserver says of `token` (a TokenReview's status).
pub async fn review_token(
    env: &TestEnv,
    token: &str,
) -> anyhow::Result<k8s_openapi::api::authentication::v1::TokenReviewStatus> {
    use k8s_openapi::api::authentication::v1::TokenReview;
    let reviews: kube::Api<TokenReview> = kube::Api::all(env.client.clone());
    let review: TokenReview = serde_json::from_value(json!({ "spec": { "token": token } }))?;
    let answer = reviews
        .create(&kube::api::PostParams::default(), &review)
        .await?;
    Ok(answer.status.unwrap_or_default())
}
