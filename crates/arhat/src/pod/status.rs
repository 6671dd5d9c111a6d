//! Pod and container status as a kubelet reports it.

use proto::api::{
    ContainerState, ContainerStatus, PodSpec, PodStatus, StateRunning, StateTerminated,
    StateWaiting, container_state::State,
};

pub fn initial(spec: &PodSpec, host_ip: &str) -> PodStatus {
    let waiting = |reason: &str| ContainerState {
        state: Some(State::Waiting(StateWaiting {
            reason: reason.to_string(),
            message: String::new(),
        })),
    };
    let statuses = |cs: &[proto::api::Container], reason: &str| {
        cs.iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                state: Some(waiting(reason)),
                ..Default::default()
            })
            .collect()
    };
    PodStatus {
        uid: spec.uid.clone(),
        namespace: spec.namespace.clone(),
        name: spec.name.clone(),
        phase: "Pending".into(),
        host_ip: host_ip.to_string(),
        init_containers: statuses(&spec.init_containers, "PodInitializing"),
        containers: statuses(&spec.containers, "ContainerCreating"),
        initialized: spec.init_containers.is_empty(),
        ..Default::default()
    }
}

pub fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        state: Some(State::Waiting(StateWaiting {
            reason: reason.to_string(),
            message: message.to_string(),
        })),
    }
}

pub fn running(started_at: i64) -> ContainerState {
    ContainerState {
        state: Some(State::Running(StateRunning { started_at })),
    }
}

pub fn terminated(
    exit_code: i64,
    started_at: i64,
    finished_at: i64,
    container_id: &str,
    oom: bool,
) -> ContainerState {
    let reason = if oom {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerState {
        state: Some(State::Terminated(StateTerminated {
            exit_code: i32::try_from(exit_code).unwrap_or(-1),
            signal: 0,
            reason: reason.to_string(),
            message: String::new(),
            started_at,
            finished_at,
            container_id: container_id.to_string(),
        })),
    }
}

fn state(c: &ContainerStatus) -> Option<&State> {
    c.state.as_ref().and_then(|s| s.state.as_ref())
}

fn exit_code(c: &ContainerStatus) -> Option<i32> {
    match state(c) {
        Some(State::Terminated(t)) => Some(t.exit_code),
        _ => None,
    }
}

/// The pod phase from its containers and restart policy, as a kubelet computes it.
pub fn phase(status: &PodStatus, restart_policy: &str) -> &'static str {
    if status
        .init_containers
        .iter()
        .any(|c| exit_code(c).is_some_and(|e| e != 0))
        && restart_policy == "Never"
    {
        return "Failed";
    }
    if !status.initialized {
        return "Pending";
    }
    let cs = &status.containers;
    let running = cs
        .iter()
        .filter(|c| matches!(state(c), Some(State::Running(_))))
        .count();
    let succeeded = cs.iter().filter(|c| exit_code(c) == Some(0)).count();
    let failed = cs
        .iter()
        .filter(|c| exit_code(c).is_some_and(|e| e != 0))
        .count();
    let ever_ran = |c: &ContainerStatus| {
        c.restart_count > 0 || c.last_state.as_ref().is_some_and(|s| s.state.is_some())
    };
    let waiting_restart = cs
        .iter()
        .filter(|c| matches!(state(c), Some(State::Waiting(_))) && ever_ran(c))
        .count();
    if running > 0 || waiting_restart > 0 {
        return "Running";
    }
    if succeeded + failed == cs.len() && !cs.is_empty() {
        return match restart_policy {
            "Always" => "Running",
            "OnFailure" if failed > 0 => "Running",
            _ if failed > 0 => "Failed",
            _ => "Succeeded",
        };
    }
    "Pending"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(states: Vec<ContainerState>, initialized: bool) -> PodStatus {
        PodStatus {
            initialized,
            containers: states
                .into_iter()
                .map(|s| ContainerStatus {
                    state: Some(s),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        assert_eq!(
            phase(&pod(vec![waiting("ContainerCreating", "")], true), "Always"),
            "Pending"
        );
        assert_eq!(phase(&pod(vec![running(1)], false), "Always"), "Pending");
        assert_eq!(
            phase(
                &pod(vec![running(1), terminated(0, 1, 2, "x", false)], true),
                "Never"
            ),
            "Running"
        );
        assert_eq!(
            phase(&pod(vec![terminated(0, 1, 2, "x", false)], true), "Never"),
            "Succeeded"
        );
        assert_eq!(
            phase(&pod(vec![terminated(3, 1, 2, "x", false)], true), "Never"),
            "Failed"
        );
        assert_eq!(
            phase(
                &pod(vec![terminated(3, 1, 2, "x", false)], true),
                "OnFailure"
            ),
            "Running"
        );
        assert_eq!(
            phase(
                &pod(vec![terminated(0, 1, 2, "x", false)], true),
                "OnFailure"
            ),
            "Succeeded"
        );
        let mut crashing = pod(vec![waiting("CrashLoopBackOff", "")], true);
        crashing.containers[0].restart_count = 2;
        assert_eq!(phase(&crashing, "Always"), "Running");
    }
}
