//! The device host as a pod: one per virtual node, in aranya's namespace,
//! named like the node, with one container `host`. It runs nothing; it gives
//! `kubectl logs` (and later exec, attach, port-forward, cp) a pod to name, and
//! the device decides per verb whether its host allows it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// The host pod's one container.
pub const CONTAINER: &str = "host";
/// Marks host pods (value: the node); pod sync never sends them to a device.
pub const LABEL: &str = "aranya.arhat.dev/host-pod";
/// Never pulled: the device serves the host pod itself.
const IMAGE: &str = "aranya.arhat.dev/device-host";

/// Whether `pod` is `node`'s host pod.
pub fn is_host_pod(pod: &Pod, namespace: &str, node: &str) -> bool {
    pod.namespace().as_deref() == Some(namespace)
        && pod.name_any() == node
        && pod.labels().get(LABEL).map(String::as_str) == Some(node)
}

/// Whether `pod` is any node's host pod.
pub fn is_any_host_pod(pod: &Pod) -> bool {
    pod.labels().contains_key(LABEL)
}

fn desired(namespace: &str, node: &str, node_uid: &str) -> Result<Pod, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": node,
            "namespace": namespace,
            "labels": BTreeMap::from([(LABEL, node)]),
            "annotations": {
                "aranya.arhat.dev/description": "The edge device's host. kubectl logs shows the host log files its arhat config lists; exec, attach and port-forward reach the host only where that config allows them.",
            },
            // Removed with the Node by the garbage collector.
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid }],
        },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": CONTAINER, "image": IMAGE }],
            // Never evicted from its own node, however long the device is away.
            "tolerations": [{ "operator": "Exists" }],
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 0,
        },
    }))
}

/// Creates the host pod if missing (or stale: bound to an older Node object)
/// and sets its status from the device's connection.
pub async fn sync(
    client: &Client,
    namespace: &str,
    node: &str,
    node_uid: &str,
    host_ip: &str,
    connected: bool,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let current = api.get_opt(node).await?;
    let stale = current.as_ref().is_some_and(|p| {
        !p.owner_references().iter().any(|o| o.uid == node_uid) || !is_host_pod(p, namespace, node)
    });
    if stale {
        api.delete(node, &DeleteParams::default().grace_period(0))
            .await?;
    }
    let pod = match current.filter(|_| !stale) {
        Some(pod) => pod,
        None => {
            let pod = desired(namespace, node, node_uid).map_err(kube::Error::SerdeError)?;
            match api.create(&PostParams::default(), &pod).await {
                Ok(created) => created,
                // A delete still finishing: the next sync creates it.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    let started = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let ready = if connected { "True" } else { "False" };
    let condition = |type_: &str, status: &str| json!({ "type": type_, "status": status, "lastTransitionTime": jiff::Timestamp::now().to_string() });
    let status = json!({
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "hostIPs": [{ "ip": host_ip }],
            "startTime": started,
            "conditions": [
                condition("PodScheduled", "True"),
                condition("Initialized", "True"),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": [{
                "name": CONTAINER,
                "image": IMAGE,
                "imageID": "",
                "ready": connected,
                "started": connected,
                "restartCount": 0,
                "state": { "running": { "startedAt": started } },
            }],
        }
    });
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pod_is_recognised_only_for_its_node() {
        let pod = desired("aranya-system", "dev-a", "uid-1").unwrap_or_default();
        assert!(is_host_pod(&pod, "aranya-system", "dev-a"));
        assert!(!is_host_pod(&pod, "aranya-system", "dev-b"));
        assert!(!is_host_pod(&pod, "default", "dev-a"));
        assert!(is_any_host_pod(&pod));
        assert!(!is_any_host_pod(&Pod::default()));
    }
}
