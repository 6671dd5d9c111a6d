//! Pod status as a kubelet writes it, from what the device reports.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use proto::api::{
    ContainerState, ContainerStatus, PodStatus, StateWaiting, container_state::State,
};
use serde_json::{Value, json};

fn time(unix: i64) -> Value {
    if unix <= 0 {
        return Value::Null;
    }
    jiff::Timestamp::from_second(unix).map_or(Value::Null, |t| json!(t.to_string()))
}

fn state(s: Option<&ContainerState>) -> Value {
    match s.and_then(|s| s.state.as_ref()) {
        Some(State::Waiting(w)) => {
            json!({ "waiting": { "reason": w.reason, "message": nonempty(&w.message) } })
        }
        Some(State::Running(r)) => json!({ "running": { "startedAt": time(r.started_at) } }),
        Some(State::Terminated(t)) => json!({ "terminated": {
            "exitCode": t.exit_code,
            "signal": (t.signal != 0).then_some(t.signal),
            "reason": t.reason,
            "message": nonempty(&t.message),
            "startedAt": time(t.started_at),
            "finishedAt": time(t.finished_at),
            "containerID": nonempty(&t.container_id),
        } }),
        None => json!({}),
    }
}

fn nonempty(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

fn container_status(c: &ContainerStatus, spec_image: Option<String>) -> Value {
    json!({
        "name": c.name,
        "image": spec_image.unwrap_or_else(|| c.image.clone()),
        "imageID": c.image_id,
        "containerID": nonempty(&c.container_id),
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": state(c.state.as_ref()),
        "lastState": state(c.last_state.as_ref()),
    })
}

/// The status patch for `pod` from the device's report.
pub fn pod_status_patch(pod: &Pod, s: &PodStatus) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let previous = pod
        .status
        .as_ref()
        .and_then(|p| p.conditions.clone())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: Option<&str>| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.as_ref())
            .map_or_else(|| now.clone(), |t| t.0.to_string());
        json!({ "type": type_, "status": status, "lastTransitionTime": since, "reason": reason, "lastProbeTime": null })
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let image_of = |list: &[k8s_openapi::api::core::v1::Container], name: &str| {
        list.iter()
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
    };
    let containers: Vec<Value> = s
        .containers
        .iter()
        .map(|c| container_status(c, image_of(&spec.containers, &c.name)))
        .collect();
    let init: Vec<Value> = s
        .init_containers
        .iter()
        .map(|c| {
            container_status(
                c,
                image_of(spec.init_containers.as_deref().unwrap_or_default(), &c.name),
            )
        })
        .collect();
    let all_ready = !s.containers.is_empty() && s.containers.iter().all(|c| c.ready);
    let not_ready = (!all_ready).then_some("ContainersNotReady");
    let sandbox_ready = !s.pod_ip.is_empty() || s.start_time > 0;
    let mut status = json!({
        "phase": s.phase,
        "conditions": [
            condition("PodReadyToStartContainers", sandbox_ready, None),
            condition("Initialized", s.initialized, (!s.initialized).then_some("ContainersNotInitialized")),
            condition("Ready", all_ready, not_ready),
            condition("ContainersReady", all_ready, not_ready),
            condition("PodScheduled", true, None),
        ],
        "containerStatuses": containers,
        "initContainerStatuses": init,
        "reason": nonempty(&s.reason),
        "message": nonempty(&s.message),
        "startTime": time(s.start_time),
    });
    // The lists are replaced, not merged by IP: a pod in a new sandbox has a
    // new address, and two of one family are invalid.
    if !s.host_ip.is_empty() {
        status["hostIP"] = json!(s.host_ip);
        status["hostIPs"] = json!([{ "$patch": "replace" }, { "ip": s.host_ip }]);
    }
    if !s.pod_ip.is_empty() {
        status["podIP"] = json!(s.pod_ip);
        status["podIPs"] = json!([{ "$patch": "replace" }, { "ip": s.pod_ip }]);
    }
    json!({ "status": status })
}

/// What a kubelet reports when a container's config cannot be built (a missing
/// Secret or ConfigMap key): every container waits with CreateContainerConfigError.
pub fn config_error(pod: &Pod, message: &str) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let waiting = |c: &k8s_openapi::api::core::v1::Container| ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        state: Some(ContainerState {
            state: Some(State::Waiting(StateWaiting {
                reason: "CreateContainerConfigError".into(),
                message: message.to_string(),
            })),
        }),
        ..Default::default()
    };
    PodStatus {
        uid: pod.uid().unwrap_or_default(),
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        phase: "Pending".into(),
        containers: spec.containers.iter().map(waiting).collect(),
        init_containers: spec.init_containers.iter().flatten().map(waiting).collect(),
        initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
        ..Default::default()
    }
}
