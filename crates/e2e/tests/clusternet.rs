//! The cluster network as a device sees it: the Services its EdgeDevice lets
//! it reach, none by default, following the cluster as it changes and kept on
//! the device for when it is offline.

use std::{net::SocketAddr, time::Duration};

use e2e::{TestEnv, wait_for};
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RecordType},
};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use prost::Message as _;
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

/// Creates Services `(name, app label, spec)` in the test's namespace.
async fn create_services(
    env: &TestEnv,
    list: &[(&str, &str, serde_json::Value)],
) -> anyhow::Result<Api<Service>> {
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.name);
    for (name, app, spec) in list {
        let service = json!({
            "metadata": { "name": name, "labels": { "app": app } },
            "spec": spec,
        });
        services
            .create(&PostParams::default(), &serde_json::from_value(service)?)
            .await?;
    }
    Ok(services)
}

/// The test's Services labelled `app=web`, nothing else: the device's rule.
async fn allow_web(env: &TestEnv, device: &str) -> anyhow::Result<()> {
    let allow = json!({ "spec": { "network": { "services": [{
        "namespaces": [env.name],
        "selector": { "matchLabels": { "app": "web" } },
    }] } } });
    env.devices()
        .patch(device, &PatchParams::default(), &Patch::Merge(&allow))
        .await?;
    Ok(())
}

fn web() -> (&'static str, &'static str, serde_json::Value) {
    (
        "web",
        "web",
        json!({ "ports": [{ "name": "http", "port": 80 }] }),
    )
}

fn db() -> (&'static str, &'static str, serde_json::Value) {
    ("db", "db", json!({ "ports": [{ "port": 5432 }] }))
}

fn ext() -> (&'static str, &'static str, serde_json::Value) {
    (
        "ext",
        "web",
        json!({ "type": "ExternalName", "externalName": "example.com" }),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_learns_only_the_services_its_edge_device_allows() -> anyhow::Result<()> {
    let env = TestEnv::new("catalogue").await?;
    let headless = (
        "hl",
        "web",
        json!({ "clusterIP": "None", "ports": [{ "name": "http", "port": 80 }] }),
    );
    let services = create_services(&env, &[web(), db(), headless, ext()]).await?;
    let up = env.device_up("a", 1).await?;
    // Default deny: the device hears of none.
    wait_names(&env, &up.name, &[]).await?;

    allow_web(&env, &up.name).await?;
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

/// One query to `server` over UDP (or TCP); the reply.
async fn resolve(
    server: SocketAddr,
    name: &str,
    kind: RecordType,
    tcp: bool,
) -> anyhow::Result<Message> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name)?, kind));
    let bytes = query.to_vec()?;
    let reply = if tcp {
        let mut stream = tokio::net::TcpStream::connect(server).await?;
        stream.write_u16(u16::try_from(bytes.len())?).await?;
        stream.write_all(&bytes).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        reply
    } else {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        socket.send_to(&bytes, server).await?;
        let mut reply = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut reply)).await??;
        reply.truncate(n);
        reply
    };
    Ok(Message::from_vec(&reply)?)
}

fn data(reply: &Message) -> Vec<String> {
    reply.answers.iter().map(|r| r.data.to_string()).collect()
}

/// A resolver that answers every query with REFUSED, standing in for the
/// device's own (this machine reaches no real one).
async fn fake_upstream() -> anyhow::Result<SocketAddr> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let at = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(mut reply) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            reply.metadata.message_type = hickory_proto::op::MessageType::Response;
            reply.metadata.response_code = ResponseCode::Refused;
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    Ok(at)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_answers_cluster_names_and_endpoints_forwards_the_rest_and_keeps_answering_offline()
-> anyhow::Result<()> {
    let env = TestEnv::new("dns").await?;
    let headless = (
        "hl",
        "web",
        json!({ "clusterIP": "None", "ports": [{ "name": "http", "port": 80 }] }),
    );
    let services = create_services(&env, &[web(), db(), ext(), headless]).await?;
    // Its endpoints, as the EndpointSlice controller would publish them for
    // pods elsewhere: two ready (one a StatefulSet pod), one not.
    let slice = json!({
        "metadata": { "name": "hl-1", "labels": { "kubernetes.io/service-name": "hl" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 80 }],
        "endpoints": [
            { "addresses": ["10.128.250.5"], "hostname": "db-0", "conditions": { "ready": true } },
            { "addresses": ["10.128.250.6"], "conditions": { "ready": true } },
            { "addresses": ["10.128.250.7"], "conditions": { "ready": false } },
        ],
    });
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(env.client.clone(), &env.name);
    slices
        .create(&PostParams::default(), &serde_json::from_value(slice)?)
        .await?;
    let upstream = fake_upstream().await?;
    let up = env
        .device_up_configured(
            "a",
            3,
            json!({}),
            &format!("dns:\n  upstreams: [\"{upstream}\"]\n"),
        )
        .await?;
    allow_web(&env, &up.name).await?;
    wait_for(
        "the headless Service's endpoints on the device",
        T,
        || async {
            let catalogue = kept(&env, &up.name)?;
            let hl = catalogue.services.iter().find(|s| s.name == "hl")?;
            (hl.endpoints.len() == 2).then_some(())
        },
    )
    .await?;
    let server = SocketAddr::new(
        e2e::podnet::dns_address(&env.arhat_data_dir(&up.name))?.into(),
        53,
    );
    let ns = &env.name;
    let web_ip = services
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();

    for tcp in [false, true] {
        let web = resolve(
            server,
            &format!("web.{ns}.svc.cluster.local."),
            RecordType::A,
            tcp,
        )
        .await?;
        assert_eq!(data(&web), std::slice::from_ref(&web_ip), "tcp: {tcp}");
    }
    let srv = resolve(
        server,
        &format!("_http._tcp.web.{ns}.svc.cluster.local."),
        RecordType::SRV,
        false,
    )
    .await?;
    assert_eq!(
        data(&srv),
        [format!("0 100 80 web.{ns}.svc.cluster.local.")]
    );
    let ext = resolve(
        server,
        &format!("ext.{ns}.svc.cluster.local."),
        RecordType::A,
        false,
    )
    .await?;
    assert_eq!(data(&ext), ["example.com."]);
    let hl = resolve(
        server,
        &format!("hl.{ns}.svc.cluster.local."),
        RecordType::A,
        false,
    )
    .await?;
    assert_eq!(
        data(&hl),
        ["10.128.250.5", "10.128.250.6"],
        "ready endpoints only"
    );
    let pod = resolve(
        server,
        &format!("db-0.hl.{ns}.svc.cluster.local."),
        RecordType::A,
        false,
    )
    .await?;
    assert_eq!(data(&pod), ["10.128.250.5"]);
    // A Service outside the policy does not exist for the device.
    let db = resolve(
        server,
        &format!("db.{ns}.svc.cluster.local."),
        RecordType::A,
        false,
    )
    .await?;
    assert_eq!(db.response_code, ResponseCode::NXDomain);
    // Everything else goes to the device's resolver, whose answer comes back.
    let other = resolve(server, "example.org.", RecordType::A, false).await?;
    assert_eq!(other.response_code, ResponseCode::Refused);

    // A pod with the default dnsPolicy (ClusterFirst) asks arhat, with the
    // cluster's search path: the short name works from its namespace.
    let script = format!(
        "cat /etc/resolv.conf; nslookup web.{ns}.svc.cluster.local; nslookup web; echo done; exec sleep 3600"
    );
    e2e::pods::create_pod(
        &env,
        &up.name,
        "client",
        json!({ "containers": [e2e::pods::busybox("client", &script)] }),
    )
    .await?;
    let printed = e2e::pods::printed(&env, "client", "client").await?;
    assert!(
        printed.contains(&format!("nameserver {}\n", server.ip())),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "search {ns}.svc.cluster.local svc.cluster.local cluster.local"
        )),
        "{printed}"
    );
    assert!(printed.contains("options ndots:5"), "{printed}");
    assert_eq!(
        printed.matches(&format!("Address: {web_ip}")).count(),
        2,
        "both the full and the short name: {printed}"
    );

    // aranya gone: the device still answers from the catalogue it kept.
    let e2e::cluster::DeviceUp {
        aranya,
        arhat: _arhat,
        ..
    } = up;
    drop(aranya);
    let web = resolve(
        server,
        &format!("web.{ns}.svc.cluster.local."),
        RecordType::A,
        false,
    )
    .await?;
    assert_eq!(data(&web), [web_ip]);
    Ok(())
}
