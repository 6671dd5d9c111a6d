//! What an earlier run of a pod left on the runtime, sorted out so a worker
//! can take it over: its sandbox and each container's instances by attempt.

use std::collections::HashMap;

use crate::runtime::{LABEL_ATTEMPT, LABEL_CONTAINER, LABEL_POD_UID, Labelled, SANDBOX};

/// One instance of a container: the attempt it was created for, its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub attempt: u32,
    pub id: String,
}

#[derive(Debug, Default)]
pub struct Found {
    /// The running sandbox, if one is left (the newest one if several are).
    pub sandbox: Option<String>,
    /// The attempt a new sandbox gets: one past any sandbox left.
    pub next_sandbox: u32,
    /// Instances per container name, oldest attempt first.
    pub containers: HashMap<String, Vec<Instance>>,
    /// Every object of the pod, sandboxes included.
    pub all: Vec<String>,
}

impl Found {
    /// The next attempt number for `name`: one past any instance left.
    pub fn next_attempt(&self, name: &str) -> u32 {
        self.containers
            .get(name)
            .and_then(|v| v.last())
            .map_or(0, |i| i.attempt + 1)
    }
}

/// Sorts out the objects of pod `uid` among `objects`.
pub fn found(objects: &[Labelled], uid: &str) -> Found {
    let mut out = Found::default();
    let mut sandboxes: Vec<(u32, &Labelled)> = Vec::new();
    for o in objects
        .iter()
        .filter(|o| o.labels.get(LABEL_POD_UID).map(String::as_str) == Some(uid))
    {
        out.all.push(o.id.clone());
        let attempt = o
            .labels
            .get(LABEL_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        match o.labels.get(LABEL_CONTAINER).map(String::as_str) {
            Some(SANDBOX) => sandboxes.push((attempt, o)),
            Some(name) => out
                .containers
                .entry(name.to_string())
                .or_default()
                .push(Instance {
                    attempt,
                    id: o.id.clone(),
                }),
            None => {}
        }
    }
    sandboxes.sort_by_key(|(a, _)| *a);
    out.next_sandbox = sandboxes.last().map_or(0, |(a, _)| a + 1);
    out.sandbox = sandboxes
        .iter()
        .rev()
        .find(|(_, o)| o.running)
        .map(|(_, o)| o.id.clone());
    for instances in out.containers.values_mut() {
        instances.sort_by_key(|i| i.attempt);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(id: &str, uid: &str, container: &str, attempt: u32, running: bool) -> Labelled {
        Labelled {
            id: id.into(),
            running,
            labels: HashMap::from([
                (LABEL_POD_UID.to_string(), uid.to_string()),
                (LABEL_CONTAINER.to_string(), container.to_string()),
                (LABEL_ATTEMPT.to_string(), attempt.to_string()),
            ]),
        }
    }

    #[test]
    fn instances_are_sorted_by_attempt_and_other_pods_ignored() {
        let objects = vec![
            object("s", "u", SANDBOX, 0, true),
            object("a2", "u", "app", 2, true),
            object("a1", "u", "app", 1, false),
            object("i0", "u", "init", 0, false),
            object("x", "other", "app", 0, true),
        ];
        let f = found(&objects, "u");
        assert_eq!(f.sandbox.as_deref(), Some("s"));
        let app: Vec<&str> = f.containers["app"].iter().map(|i| i.id.as_str()).collect();
        assert_eq!(app, ["a1", "a2"]);
        assert_eq!(f.next_attempt("app"), 3);
        assert_eq!(f.next_attempt("init"), 1);
        assert_eq!(f.next_attempt("none"), 0);
        assert_eq!(f.all.len(), 4);
    }

    #[test]
    fn a_stopped_sandbox_is_not_adopted_and_the_next_one_counts_on() {
        let f = found(
            &[
                object("s1", "u", SANDBOX, 1, false),
                object("s0", "u", SANDBOX, 0, false),
            ],
            "u",
        );
        assert_eq!(f.sandbox, None);
        assert_eq!(f.next_sandbox, 2);
        assert_eq!(f.all, ["s1", "s0"]);
        assert_eq!(found(&[], "u").next_sandbox, 0);
    }
}
