//! Which runtime container holds the log `kubectl logs` asks for, read from
//! the pod's status the way a kubelet reads it.

use proto::api::{ContainerState, ContainerStatus, PodStatus, container_state::State};

/// Why a container's log cannot be read; the message is for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("pod {uid} is not on this device")]
    NoPod { uid: String },
    #[error("container \"{container}\" is not in pod \"{pod}\"")]
    NoContainer { pod: String, container: String },
    #[error("a container name must be specified for pod \"{pod}\", choose one of: [{choices}]")]
    NoContainerName { pod: String, choices: String },
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    NoPrevious { pod: String, container: String },
    /// Never created yet (image pull, back-off before the first run, ...).
    #[error("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")]
    Waiting {
        pod: String,
        container: String,
        reason: String,
    },
    /// exec, attach and port-forward need it running.
    #[error("container \"{container}\" in pod \"{pod}\" is not running")]
    NotRunning { pod: String, container: String },
    #[error("pod \"{pod}\" has no running container to forward ports into")]
    NoneRunning { pod: String },
    /// Ended without an instance to show (it never got one).
    #[error("container \"{container}\" in pod \"{pod}\" is terminated")]
    Terminated { pod: String, container: String },
}

impl LookupError {
    /// Not there at all, as opposed to there but not readable now.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NoPod { .. } | Self::NoContainer { .. } | Self::NoPrevious { .. }
        )
    }
}

fn terminated_id(state: Option<&ContainerState>) -> Option<&str> {
    match state.and_then(|s| s.state.as_ref()) {
        Some(State::Terminated(t)) if !t.container_id.is_empty() => Some(&t.container_id),
        _ => None,
    }
}

/// `<runtime>://<id>` as the runtime's own id.
fn runtime_id(id: &str) -> String {
    id.split_once("://").map_or(id, |(_, id)| id).to_string()
}

/// The runtime id of `container`'s current instance, or with `previous` the
/// one before it. As with a kubelet, a container waiting to restart shows its
/// last run: the one that just ended is both "current" and "previous".
pub fn for_logs(
    status: &PodStatus,
    container: &str,
    previous: bool,
) -> Result<String, LookupError> {
    let pod = format!("{}/{}", status.namespace, status.name);
    let all = || status.init_containers.iter().chain(&status.containers);
    let c: &ContainerStatus = if container.is_empty() {
        // The API server names the container before asking; a direct caller
        // may not, which is fine only when there is one to choose.
        match (status.init_containers.len(), status.containers.as_slice()) {
            (0, [only]) => only,
            _ => {
                let choices: Vec<&str> = all().map(|c| c.name.as_str()).collect();
                return Err(LookupError::NoContainerName {
                    pod,
                    choices: choices.join(" "),
                });
            }
        }
    } else {
        all()
            .find(|c| c.name == container)
            .ok_or_else(|| LookupError::NoContainer {
                pod: pod.clone(),
                container: container.to_string(),
            })?
    };
    let name = c.name.clone();
    let last = terminated_id(c.last_state.as_ref());
    if previous {
        return last.map(runtime_id).ok_or(LookupError::NoPrevious {
            pod,
            container: name,
        });
    }
    let current = c.state.as_ref().and_then(|s| s.state.as_ref());
    let id = match current {
        Some(State::Running(_)) if !c.container_id.is_empty() => Some(c.container_id.as_str()),
        Some(State::Terminated(_)) => terminated_id(c.state.as_ref()).or(last),
        _ => last,
    };
    if let Some(id) = id {
        return Ok(runtime_id(id));
    }
    Err(match current {
        Some(State::Terminated(_)) => LookupError::Terminated {
            pod,
            container: name,
        },
        Some(State::Waiting(w)) => LookupError::Waiting {
            pod,
            container: name,
            reason: match w.reason.as_str() {
                "ErrImagePull" => "image can't be pulled".to_string(),
                "ImagePullBackOff" => "trying and failing to pull image".to_string(),
                "" => "no logs yet".to_string(),
                r => r.to_string(),
            },
        },
        _ => LookupError::Waiting {
            pod,
            container: name,
            reason: "no logs yet".to_string(),
        },
    })
}

fn running_id(c: &ContainerStatus) -> Option<String> {
    match c.state.as_ref().and_then(|s| s.state.as_ref()) {
        Some(State::Running(_)) if !c.container_id.is_empty() => Some(runtime_id(&c.container_id)),
        _ => None,
    }
}

/// The runtime id of `container` if it runs now (exec and attach).
pub fn running(status: &PodStatus, container: &str) -> Result<String, LookupError> {
    let pod = format!("{}/{}", status.namespace, status.name);
    let c = status
        .init_containers
        .iter()
        .chain(&status.containers)
        .find(|c| c.name == container)
        .ok_or_else(|| LookupError::NoContainer {
            pod: pod.clone(),
            container: container.to_string(),
        })?;
    running_id(c).ok_or(LookupError::NotRunning {
        pod,
        container: container.to_string(),
    })
}

/// Any running container of the pod: all share its network namespace.
pub fn any_running(status: &PodStatus) -> Result<String, LookupError> {
    status
        .containers
        .iter()
        .chain(&status.init_containers)
        .find_map(running_id)
        .ok_or_else(|| LookupError::NoneRunning {
            pod: format!("{}/{}", status.namespace, status.name),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::status::{running, terminated, waiting};

    fn pod(containers: Vec<ContainerStatus>) -> PodStatus {
        PodStatus {
            namespace: "ns".into(),
            name: "web".into(),
            containers,
            ..Default::default()
        }
    }

    fn container(
        name: &str,
        state: ContainerState,
        last: Option<ContainerState>,
        id: &str,
    ) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            container_id: id.into(),
            state: Some(state),
            last_state: last,
            ..Default::default()
        }
    }

    #[test]
    fn running_reads_the_current_and_previous_instances() {
        let p = pod(vec![container(
            "app",
            running(10),
            Some(terminated(1, 1, 2, "docker://old", false)),
            "docker://new",
        )]);
        assert_eq!(for_logs(&p, "app", false), Ok("new".into()));
        assert_eq!(for_logs(&p, "app", true), Ok("old".into()));
        assert_eq!(for_logs(&p, "", false), Ok("new".into()));
    }

    #[test]
    fn crash_loop_shows_the_run_that_just_ended() {
        let p = pod(vec![container(
            "app",
            waiting("CrashLoopBackOff", "back-off 10s"),
            Some(terminated(1, 1, 2, "docker://dead", false)),
            "docker://dead",
        )]);
        assert_eq!(for_logs(&p, "app", false), Ok("dead".into()));
        assert_eq!(for_logs(&p, "app", true), Ok("dead".into()));
    }

    #[test]
    fn a_finished_container_reads_its_last_run() {
        let p = pod(vec![container(
            "job",
            terminated(0, 1, 2, "docker://done", false),
            None,
            "docker://done",
        )]);
        assert_eq!(for_logs(&p, "job", false), Ok("done".into()));
        assert_eq!(
            for_logs(&p, "job", true)
                .expect_err("no previous")
                .to_string(),
            "previous terminated container \"job\" in pod \"ns/web\" not found"
        );
    }

    #[test]
    fn waiting_says_why() {
        let p = pod(vec![
            container("a", waiting("ContainerCreating", ""), None, ""),
            container("b", waiting("ImagePullBackOff", "..."), None, ""),
        ]);
        let err = for_logs(&p, "a", false).expect_err("waiting");
        assert!(!err.is_not_found());
        assert_eq!(
            err.to_string(),
            "container \"a\" in pod \"ns/web\" is waiting to start: ContainerCreating"
        );
        assert_eq!(
            for_logs(&p, "b", false).expect_err("waiting").to_string(),
            "container \"b\" in pod \"ns/web\" is waiting to start: trying and failing to pull image"
        );
    }

    #[test]
    fn unknown_or_unnamed_containers_are_refused() {
        let mut p = pod(vec![
            container("a", running(1), None, "docker://a"),
            container("b", running(1), None, "docker://b"),
        ]);
        p.init_containers.push(container(
            "setup",
            terminated(0, 1, 2, "docker://s", false),
            None,
            "",
        ));
        let err = for_logs(&p, "c", false).expect_err("no such container");
        assert!(err.is_not_found());
        assert_eq!(err.to_string(), "container \"c\" is not in pod \"ns/web\"");
        assert_eq!(
            for_logs(&p, "", false).expect_err("ambiguous").to_string(),
            "a container name must be specified for pod \"ns/web\", choose one of: [setup a b]"
        );
        // Init containers have logs too.
        assert_eq!(for_logs(&p, "setup", false), Ok("s".into()));
    }
}
