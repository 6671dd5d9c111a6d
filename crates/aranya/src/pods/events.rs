//! Events as a kubelet records them, from what the device reports, so
//! `kubectl describe pod` tells the story.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{Api, Client, ResourceExt, api::PostParams};
use proto::api::PodEvent;
use serde_json::json;
use tracing::debug;

pub async fn record(client: &Client, pod: &Pod, node: &str, events: &[PodEvent]) {
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
        if let Err(err) = api.create(&PostParams::default(), &event).await {
            debug!(reason = %e.reason, error = %err, "recording an event");
        }
    }
}
