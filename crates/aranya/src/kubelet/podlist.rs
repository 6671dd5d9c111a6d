//! `/pods` (the pods bound to this node, as the cluster knows them) and
//! `/runningpods/` (what the device's runtime actually runs, asked live).

use http::{Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use proto::api::{ListPods, Open, PodStatusList, open::Kind};
use serde_json::{Value, json};

use super::{Body, Problem, json, server::NodeEndpoint};

fn pod_list(items: Vec<Value>) -> Value {
    json!({ "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items })
}

pub async fn pods(endpoint: &NodeEndpoint) -> Result<Response<Body>, Problem> {
    let api: Api<Pod> = Api::all(endpoint.kubelet.client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={}", endpoint.node));
    let list = api.list(&params).await.map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing pods: {e}"),
        )
    })?;
    let items = list
        .items
        .into_iter()
        .filter(|p| !endpoint.is_host_pod(p))
        .map(|mut p| {
            p.metadata.managed_fields = None;
            serde_json::to_value(p).unwrap_or(Value::Null)
        })
        .collect();
    Ok(json(&pod_list(items)))
}

pub async fn running(endpoint: &NodeEndpoint) -> Result<Response<Body>, Problem> {
    let session = endpoint.session()?;
    let header = Open {
        kind: Some(Kind::ListPods(ListPods {})),
    };
    let list = session
        .request::<_, PodStatusList>(&header, &ListPods {})
        .await
        .map_err(|e| Problem::device(&endpoint.node, format!("failed: {e}")))?
        .unwrap_or_default();
    // Like a kubelet's runtime view: identity and containers, nothing desired.
    let items = list
        .pods
        .into_iter()
        .filter(|p| !p.removed)
        .map(|p| {
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| json!({ "name": c.name, "image": c.image }))
                .collect();
            json!({
                "metadata": { "name": p.name, "namespace": p.namespace, "uid": p.uid },
                "spec": { "containers": containers },
                "status": {},
            })
        })
        .collect();
    Ok(json(&pod_list(items)))
}
