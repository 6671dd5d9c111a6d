//! Probes run on the device, every kind, with their timing fields:
//! readiness decides EndpointSlice membership through the real
//! endpointslice controller, liveness and startup failures restart the
//! container with the kubelet's events.

use std::time::Duration;

use e2e::{
    TestEnv,
    grpc_health::HealthServer,
    images::exec,
    pods::{busybox, container_id, create_pod, restarts, wait_pod},
    wait_for,
};
use k8s_openapi::api::{
    core::v1::{Event, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_ready(env: &TestEnv, pod: &str, want: bool) -> anyhow::Result<Pod> {
    wait_pod(env, pod, &format!("Ready={want}"), TIMEOUT, |p| {
        (container_id(p).is_some() && ready(p) == want).then(|| p.clone())
    })
    .await
}

/// The `ready` condition of the pod's endpoint in the Service's slices.
async fn endpoint_ready(env: &TestEnv, service: &str, pod: &str) -> Option<bool> {
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), &env.name);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .ok()?;
    list.items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .find_map(|e| {
            let named = e.target_ref.as_ref()?.name.as_deref() == Some(pod);
            named.then(|| e.conditions.as_ref()?.ready).flatten()
        })
}

async fn wait_endpoint(env: &TestEnv, service: &str, pod: &str, want: bool) -> anyhow::Result<()> {
    wait_for(
        &format!("endpoint of {pod} in {service} ready={want}"),
        TIMEOUT,
        || async { (endpoint_ready(env, service, pod).await == Some(want)).then_some(()) },
    )
    .await
}

/// Messages of the pod's events with `reason`, waiting for one containing `text`.
async fn wait_event(env: &TestEnv, pod: &str, reason: &str, text: &str) -> anyhow::Result<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.name);
    wait_for(
        &format!("{reason} event of {pod}: {text}"),
        TIMEOUT,
        || async {
            let list = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
                .await
                .ok()?;
            list.items.into_iter().find_map(|e| {
                let message = e.message.unwrap_or_default();
                (e.reason.as_deref() == Some(reason) && message.contains(text)).then_some(message)
            })
        },
    )
    .await
}

e2e::over_runtimes! {
async fn readiness_decides_endpoint_slice_membership(runtime) -> anyhow::Result<()> {
    let env = TestEnv::on("readiness", runtime).await?;
    let up = env.device_up("a", 10).await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.name);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "web" },
                "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] },
            }))?,
        )
        .await?;
    let mut web = busybox(
        "web",
        "mkdir -p /www && echo ok > /www/ready && exec httpd -f -p 8080 -h /www",
    );
    web["ports"] = json!([{ "name": "http", "containerPort": 8080 }]);
    web["startupProbe"] =
        json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 1, "failureThreshold": 30 });
    web["readinessProbe"] = json!({
        "httpGet": { "path": "/ready", "port": "http", "httpHeaders": [{ "name": "X-Probe", "value": "edge" }] },
        "periodSeconds": 1, "failureThreshold": 1,
    });
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "web", "labels": { "app": "web" } },
        "spec": e2e::pods::merge(e2e::pods::placement(&up.name), json!({ "containers": [web] })),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    let pod = wait_ready(&env, "web", true).await?;
    wait_endpoint(&env, "web", "web", true).await?;
    let id = container_id(&pod).expect("running");
    exec(&id, &["rm", "/www/ready"])?;
    wait_ready(&env, "web", false).await?;
    wait_endpoint(&env, "web", "web", false).await?;
    wait_event(
        &env,
        "web",
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed with statuscode: 404",
    )
    .await?;
    exec(&id, &["sh", "-c", "echo ok > /www/ready"])?;
    wait_ready(&env, "web", true).await?;
    wait_endpoint(&env, "web", "web", true).await?;
    assert_eq!(
        restarts(&pods.get("web").await?),
        0,
        "readiness never restarts"
    );
    Ok(())
}
}

e2e::over_runtimes! {
async fn liveness_and_startup_failures_restart_the_container(runtime) -> anyhow::Result<()> {
    let env = TestEnv::on("liveness", runtime).await?;
    let up = env.device_up("a", 10).await?;
    let mut live = busybox(
        "app",
        "touch /tmp/alive; sleep 6; rm /tmp/alive; exec sleep 3600",
    );
    live["livenessProbe"] = json!({
        "exec": { "command": ["cat", "/tmp/alive"] },
        "periodSeconds": 1, "failureThreshold": 2,
    });
    create_pod(
        &env,
        &up.name,
        "live",
        json!({ "containers": [live], "terminationGracePeriodSeconds": 1 }),
    )
    .await?;
    let mut slow = busybox("app", "exec sleep 3600");
    slow["startupProbe"] = json!({
        "tcpSocket": { "port": 9999 },
        "periodSeconds": 1, "failureThreshold": 3, "terminationGracePeriodSeconds": 1,
    });
    create_pod(
        &env,
        &up.name,
        "never-starts",
        json!({ "containers": [slow] }),
    )
    .await?;

    wait_event(
        &env,
        "live",
        "Unhealthy",
        "Liveness probe failed: cat: can't open '/tmp/alive'",
    )
    .await?;
    wait_event(
        &env,
        "live",
        "Killing",
        "Container app failed liveness probe, will be restarted",
    )
    .await?;
    wait_pod(
        &env,
        "live",
        "restarted by its liveness probe",
        TIMEOUT,
        |p| (restarts(p) >= 1).then_some(()),
    )
    .await?;
    wait_event(
        &env,
        "never-starts",
        "Unhealthy",
        "Startup probe failed: dial tcp",
    )
    .await?;
    wait_event(&env, "never-starts", "Killing", "failed startup probe").await?;
    // Each failure in a row said the same: one Event, counted, as a kubelet folds them.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.name);
    let folded = events
        .list(&ListParams::default().fields("involvedObject.name=never-starts"))
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Unhealthy"))
        .map(|e| e.count.unwrap_or(1))
        .max()
        .unwrap_or(0);
    assert!(folded >= 2, "repeated failures fold into a count: {folded}");
    let pod = wait_pod(
        &env,
        "never-starts",
        "restarted by its startup probe",
        TIMEOUT,
        |p| (restarts(p) >= 1).then(|| p.clone()),
    )
    .await?;
    let status = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .expect("a container status");
    assert!(!status.ready, "never started, never ready");
    Ok(())
}
}

e2e::over_runtimes! {
async fn grpc_health_checks_gate_readiness(runtime) -> anyhow::Result<()> {
    let env = TestEnv::on("grpcprobe", runtime).await?;
    let up = env.device_up("a", 10).await?;
    let health = HealthServer::start().await?;
    let mut app = busybox("app", "exec sleep 3600");
    app["readinessProbe"] = json!({
        "grpc": { "port": health.port },
        "periodSeconds": 1, "failureThreshold": 1,
    });
    // On the host's network, the pod's address is the host's: the probe
    // reaches the test's health server there.
    create_pod(
        &env,
        &up.name,
        "grpc",
        json!({ "hostNetwork": true, "containers": [app] }),
    )
    .await?;
    wait_ready(&env, "grpc", true).await?;
    health.set_serving(false);
    wait_ready(&env, "grpc", false).await?;
    wait_event(
        &env,
        "grpc",
        "Unhealthy",
        "service unhealthy (responded with \"NOT_SERVING\")",
    )
    .await?;
    health.set_serving(true);
    wait_ready(&env, "grpc", true).await?;
    Ok(())
}
}
