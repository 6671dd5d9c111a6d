//! Events as a kubelet records them, from what the device reports, so
//! `kubectl describe pod` tells the story. Repeats (a probe failing every
//! period) are folded into one Event whose count grows, as a kubelet's
//! event correlator does, instead of a new object each time.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use proto::api::PodEvent;
use serde_json::json;
use tracing::debug;

/// A repeat within this long updates the earlier Event.
const FOLD_WINDOW: Duration = Duration::from_secs(600);
/// Events remembered for folding; past this the oldest half is forgotten.
const MAX_REMEMBERED: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    pod_uid: String,
    field_path: Option<String>,
    reason: String,
    message: String,
    type_: String,
}

#[derive(Debug)]
struct Seen {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

/// Records a node's events, folding repeats.
#[derive(Debug, Default)]
pub struct Recorder {
    seen: HashMap<Key, Seen>,
}

impl Recorder {
    pub async fn record(&mut self, client: &Client, pod: &Pod, node: &str, events: &[PodEvent]) {
        let namespace = pod.namespace().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        for e in events {
            let field_path = match (e.container.is_empty(), e.init_container) {
                (true, _) => None,
                (false, true) => Some(format!("spec.initContainers{{{}}}", e.container)),
                (false, false) => Some(format!("spec.containers{{{}}}", e.container)),
            };
            let time = jiff::Timestamp::from_second(e.time)
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .to_string();
            let key = Key {
                pod_uid: pod.uid().unwrap_or_default(),
                field_path: field_path.clone(),
                reason: e.reason.clone(),
                message: e.message.clone(),
                type_: e.r#type.clone(),
            };
            if let Some(seen) = self.seen.get_mut(&key)
                && seen.last.elapsed() < FOLD_WINDOW
                && seen.namespace == namespace
            {
                seen.count += 1;
                seen.last = Instant::now();
                let patch = json!({ "count": seen.count, "lastTimestamp": time });
                match api
                    .patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => continue,
                    // Gone (expired, deleted): a new one below.
                    Err(err) => debug!(reason = %e.reason, error = %err, "folding an event"),
                }
            }
            let event = json!({
                "metadata": { "generateName": format!("{}.", pod.name_any()), "namespace": namespace },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.name_any(),
                    "namespace": namespace,
                    "uid": pod.uid(),
                    "fieldPath": field_path,
                },
                "reason": e.reason,
                "message": e.message,
                "type": e.r#type,
                "source": { "component": "kubelet", "host": node },
                "reportingComponent": "kubelet",
                "reportingInstance": node,
                "firstTimestamp": time,
                "lastTimestamp": time,
                "count": 1,
            });
            let Ok(event) = serde_json::from_value::<Event>(event) else {
                continue;
            };
            match api.create(&PostParams::default(), &event).await {
                Ok(created) => {
                    self.remember(key, namespace.clone(), created.name_any());
                }
                Err(err) => debug!(reason = %e.reason, error = %err, "recording an event"),
            }
        }
    }

    fn remember(&mut self, key: Key, namespace: String, name: String) {
        if self.seen.len() >= MAX_REMEMBERED {
            let mut ages: Vec<Instant> = self.seen.values().map(|s| s.last).collect();
            ages.sort();
            let cutoff = ages[ages.len() / 2];
            self.seen.retain(|_, s| s.last > cutoff);
        }
        self.seen.insert(
            key,
            Seen {
                namespace,
                name,
                count: 1,
                last: Instant::now(),
            },
        );
    }

    /// A pod that is gone has nothing left to fold.
    pub fn forget(&mut self, pod_uid: &str) {
        self.seen.retain(|k, _| k.pod_uid != pod_uid);
    }
}
