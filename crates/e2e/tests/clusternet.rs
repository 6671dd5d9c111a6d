//! The cluster network as a device sees it: the Services its EdgeDevice lets
//! it reach, none by default, following the cluster as it changes and kept on
//! the device for when it is offline.

use std::time::Duration;

use e2e::{TestEnv, wait_for};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use prost::Message;
use proto::api::ServiceCatalogue;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// The catalogue arhat keeps for `device`, once there is one.
fn kept(env: &TestEnv, device: &str) -> Option<ServiceCatalogue> {
    let path = env
        .arhat_data_dir(device)
        .join(arhat::clusternet::catalogue::FILE);
    ServiceCatalogue::decode(std::fs::read(path).ok()?.as_slice()).ok()
}

/// Waits until the kept catalogue names exactly `want` (sorted) and returns it.
async fn wait_names(
    env: &TestEnv,
    device: &str,
    want: &[&str],
) -> anyhow::Result<ServiceCatalogue> {
    wait_for(
        &format!("the device's catalogue to be {want:?}"),
        T,
        || async {
            let catalogue = kept(env, device)?;
            let names: Vec<&str> = catalogue.services.iter().map(|s| s.name.as_str()).collect();
            (catalogue.cluster_domain == "cluster.local" && names == want).then_some(catalogue)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_learns_only_the_services_its_edge_device_allows() -> anyhow::Result<()> {
    let env = TestEnv::new("catalogue").await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.name);
    for (name, app, spec) in [
        (
            "web",
            "web",
            json!({ "ports": [{ "name": "http", "port": 80 }] }),
        ),
        ("db", "db", json!({ "ports": [{ "port": 5432 }] })),
        (
            "hl",
            "web",
            json!({ "clusterIP": "None", "ports": [{ "name": "http", "port": 80 }] }),
        ),
        (
            "ext",
            "web",
            json!({ "type": "ExternalName", "externalName": "example.com" }),
        ),
    ] {
        let service = json!({
            "metadata": { "name": name, "labels": { "app": app } },
            "spec": spec,
        });
        services
            .create(&PostParams::default(), &serde_json::from_value(service)?)
            .await?;
    }
    let up = env.device_up("a", 1).await?;
    // Default deny: the device hears of none.
    wait_names(&env, &up.name, &[]).await?;

    let allow = json!({ "spec": { "network": { "services": [{
        "namespaces": [env.name],
        "selector": { "matchLabels": { "app": "web" } },
    }] } } });
    env.devices()
        .patch(&up.name, &PatchParams::default(), &Patch::Merge(&allow))
        .await?;
    let catalogue = wait_names(&env, &up.name, &["ext", "hl", "web"]).await?;
    let by_name = |n: &str| catalogue.services.iter().find(|s| s.name == n).cloned();
    let web = by_name("web").unwrap_or_default();
    assert_eq!(web.namespace, env.name);
    assert_eq!(web.cluster_ips.len(), 1, "{web:?}");
    assert!(
        web.cluster_ips[0].starts_with("10.96."),
        "a ClusterIP: {web:?}"
    );
    assert_eq!(
        (
            web.ports[0].name.as_str(),
            web.ports[0].protocol.as_str(),
            web.ports[0].port
        ),
        ("http", "TCP", 80)
    );
    let hl = by_name("hl").unwrap_or_default();
    assert!(hl.headless && hl.cluster_ips.is_empty(), "{hl:?}");
    assert_eq!(
        by_name("ext").unwrap_or_default().external_name,
        "example.com"
    );

    // Labels, deletions: the catalogue follows.
    let relabel = json!({ "metadata": { "labels": { "app": "web" } } });
    services
        .patch("db", &PatchParams::default(), &Patch::Merge(&relabel))
        .await?;
    wait_names(&env, &up.name, &["db", "ext", "hl", "web"]).await?;
    services.delete("web", &DeleteParams::default()).await?;
    wait_names(&env, &up.name, &["db", "ext", "hl"]).await?;

    // The rule gone, the device hears of none again.
    let deny = json!({ "spec": { "network": null } });
    env.devices()
        .patch(&up.name, &PatchParams::default(), &Patch::Merge(&deny))
        .await?;
    wait_names(&env, &up.name, &[]).await?;
    Ok(())
}
