//! Pods bound to a virtual node run on the device through the real dockerd,
//! and report their truth back, as a kubelet would.

use std::time::Duration;

use e2e::{
    TestEnv,
    images::{BUSYBOX, container_env, container_exists, image_exists},
    pods::{
        busybox, container_id, create_pod, merge, placement, pods_of, running_and_ready,
        wait_events, wait_pod,
    },
    wait_for,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

e2e::over_transports! {
async fn deployment_runs_on_the_device_and_scales_down(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("deploy", transport).await?;
    let up = env.device_up("a", 10).await?;
    let node = up.name.clone();
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.name);
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "greeting" }, "data": { "text": "hello from a configmap" } }))?,
        )
        .await?;
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web", "namespace": env.name },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": merge(placement(&node), json!({
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": BUSYBOX,
                        "resources": { "limits": { "memory": "64Mi", "cpu": "250m" } },
                        "command": ["sh", "-c", "echo \"$GREETING\"; exec sleep 3600"],
                        "env": [
                            { "name": "GREETING", "valueFrom": { "configMapKeyRef": { "name": "greeting", "key": "text" } } },
                            { "name": "PLAIN", "value": "plain-value" },
                            { "name": "MY_POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            { "name": "MY_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                            { "name": "MEM_MI", "valueFrom": { "resourceFieldRef": { "resource": "limits.memory", "divisor": "1Mi" } } },
                            { "name": "CPU_LIMIT", "valueFrom": { "resourceFieldRef": { "resource": "limits.cpu" } } },
                        ],
                    }],
                })),
            },
        },
    });
    let path = env.dir.join("deployment.json");
    std::fs::write(&path, deployment.to_string())?;
    env.cluster
        .kubectl(&["apply", "-f", &path.to_string_lossy()])?;

    let pods = wait_for("3 pods Running and Ready", RUN_TIMEOUT, || async {
        let pods = pods_of(&env, "app=web").await.ok()?;
        (pods.len() == 3 && pods.iter().all(running_and_ready)).then_some(pods)
    })
    .await?;
    for pod in &pods {
        let status = pod.status.clone().unwrap_or_default();
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(node.as_str())
        );
        assert!(
            status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty()),
            "{status:?}"
        );
        assert!(
            status.host_ip.is_some() && status.start_time.is_some(),
            "{status:?}"
        );
        let c = &status.container_statuses.clone().unwrap_or_default()[0];
        assert!(
            c.ready && c.started == Some(true) && c.restart_count == 0,
            "{c:?}"
        );
        assert!(
            c.state.as_ref().and_then(|s| s.running.as_ref()).is_some(),
            "{c:?}"
        );
        assert!(!c.image_id.is_empty());
        let id = container_id(pod).expect("container id");
        assert!(container_exists(&id)?, "container {id} not in dockerd");
        let env_vars = container_env(&id)?;
        assert!(
            env_vars.contains(&"GREETING=hello from a configmap".to_string()),
            "{env_vars:?}"
        );
        assert!(
            env_vars.contains(&"PLAIN=plain-value".to_string()),
            "{env_vars:?}"
        );
        assert!(
            env_vars.contains(&format!(
                "MY_POD={}",
                pod.metadata.name.clone().unwrap_or_default()
            )),
            "{env_vars:?}"
        );
        let ip = status.pod_ip.clone().unwrap_or_default();
        assert!(env_vars.contains(&format!("MY_IP={ip}")), "{env_vars:?}");
        // resourceFieldRef: 64Mi in Mi; 250m rounds up to 1 CPU, as a kubelet does.
        assert!(env_vars.contains(&"MEM_MI=64".to_string()), "{env_vars:?}");
        assert!(
            env_vars.contains(&"CPU_LIMIT=1".to_string()),
            "{env_vars:?}"
        );
    }

    // `kubectl describe pod` tells the story.
    let first = pods[0].metadata.name.clone().unwrap_or_default();
    wait_events(&env, &first, &["Pulled", "Created", "Started"]).await?;

    // Scale down: two pods go, and so do their containers.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(env.client.clone(), &env.name);
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await?;
    let ids: Vec<String> = pods.iter().filter_map(container_id).collect();
    wait_for(
        "scaled down to 1 pod, 2 containers removed",
        RUN_TIMEOUT,
        || async {
            let left = pods_of(&env, "app=web").await.ok()?;
            let gone = ids
                .iter()
                .filter(|id| !container_exists(id).unwrap_or(true))
                .count();
            (left.len() == 1 && gone == 2).then_some(())
        },
    )
    .await?;
    Ok(())
}
}

fn first_container(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    first_container(pod)?.state?.waiting?.reason
}

e2e::over_transports! {
async fn run_to_completion_reports_exit_codes(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("exit", transport).await?;
    let up = env.device_up("a", 10).await?;
    let never = json!({ "restartPolicy": "Never" });
    create_pod(
        &env,
        &up.name,
        "ok",
        merge(
            never.clone(),
            json!({ "containers": [busybox("main", "echo done; exit 0")] }),
        ),
    )
    .await?;
    create_pod(
        &env,
        &up.name,
        "three",
        merge(never, json!({ "containers": [busybox("main", "exit 3")] })),
    )
    .await?;
    wait_pod(&env, "ok", "Succeeded", RUN_TIMEOUT, |p| {
        let c = first_container(p)?;
        let t = c.state?.terminated?;
        (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")
            && t.exit_code == 0
            && t.reason.as_deref() == Some("Completed"))
        .then_some(())
    })
    .await?;
    wait_pod(&env, "three", "Failed with exit code 3", RUN_TIMEOUT, |p| {
        let t = first_container(p)?.state?.terminated?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")
            && t.exit_code == 3
            && t.reason.as_deref() == Some("Error"))
        .then_some(())
    })
    .await?;
    // A Job sees the same truth.
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": "job", "namespace": env.name },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": merge(placement(&up.name), json!({
                "restartPolicy": "Never",
                "containers": [busybox("main", "exit 0")],
            })) },
        },
    });
    let path = env.dir.join("job.json");
    std::fs::write(&path, job.to_string())?;
    env.cluster
        .kubectl(&["apply", "-f", &path.to_string_lossy()])?;
    env.cluster.kubectl(&[
        "wait",
        "-n",
        &env.name,
        "--for=condition=Complete",
        "--timeout=90s",
        "job/job",
    ])?;
    // A Job whose pod exits 3 fails, and says so.
    let failing = job
        .to_string()
        .replace("\"name\":\"job\"", "\"name\":\"failing\"")
        .replace("exit 0", "exit 3");
    std::fs::write(&path, failing)?;
    env.cluster
        .kubectl(&["apply", "-f", &path.to_string_lossy()])?;
    env.cluster.kubectl(&[
        "wait",
        "-n",
        &env.name,
        "--for=condition=Failed",
        "--timeout=90s",
        "job/failing",
    ])?;
    let failed = pods_of(&env, "job-name=failing").await?;
    let code = failed
        .first()
        .and_then(first_container)
        .and_then(|c| c.state?.terminated)
        .map(|t| t.exit_code);
    assert_eq!(code, Some(3));
    Ok(())
}
}

e2e::over_transports! {
async fn init_containers_run_first_in_order(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("init", transport).await?;
    let up = env.device_up("a", 10).await?;
    create_pod(
        &env,
        &up.name,
        "init",
        json!({
            "initContainers": [busybox("first", "exit 0"), busybox("second", "sleep 1")],
            "containers": [busybox("main", "exec sleep 3600")],
        }),
    )
    .await?;
    let pod = wait_pod(
        &env,
        "init",
        "Running after its init containers",
        RUN_TIMEOUT,
        |p| (p.status.as_ref()?.phase.as_deref() == Some("Running")).then(|| p.clone()),
    )
    .await?;
    let status = pod.status.unwrap_or_default();
    let init = status.init_container_statuses.unwrap_or_default();
    assert_eq!(init.len(), 2);
    let finished: Vec<_> = init
        .iter()
        .map(|c| {
            c.state
                .clone()
                .and_then(|s| s.terminated)
                .expect("init terminated")
        })
        .collect();
    assert!(finished.iter().all(|t| t.exit_code == 0));
    let main_started =
        first_container_running_since(&status.container_statuses.unwrap_or_default()[0]);
    assert!(
        finished[0].finished_at.as_ref().map(|t| t.0)
            <= finished[1].started_at.as_ref().map(|t| t.0)
    );
    assert!(finished[1].finished_at.as_ref().map(|t| t.0) <= main_started);
    assert!(
        status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Initialized" && c.status == "True")
    );
    Ok(())
}
}

fn first_container_running_since(
    c: &k8s_openapi::api::core::v1::ContainerStatus,
) -> Option<k8s_openapi::jiff::Timestamp> {
    c.state.clone()?.running?.started_at.map(|t| t.0)
}

e2e::over_transports! {
async fn crashing_container_backs_off(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("crash", transport).await?;
    let up = env.device_up("a", 10).await?;
    create_pod(
        &env,
        &up.name,
        "crash",
        json!({ "containers": [busybox("main", "exit 1")] }),
    )
    .await?;
    wait_pod(
        &env,
        "crash",
        "CrashLoopBackOff with restarts",
        Duration::from_secs(120),
        |p| {
            let c = first_container(p)?;
            let last = c.last_state.clone()?.terminated?;
            (waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
                && c.restart_count >= 2
                && last.exit_code == 1)
                .then_some(())
        },
    )
    .await?;
    wait_events(&env, "crash", &["Created", "Started", "BackOff"]).await?;
    Ok(())
}
}

e2e::over_transports! {
async fn unpullable_image_and_missing_secret_say_why(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("why", transport).await?;
    let up = env.device_up("a", 10).await?;
    // A registry that refuses connections: the pull fails at once.
    create_pod(&env, &up.name, "noimage", json!({
        "containers": [{ "name": "main", "image": "127.0.0.1:1/missing:1", "imagePullPolicy": "IfNotPresent" }],
    }))
    .await?;
    create_pod(&env, &up.name, "nosecret", json!({
        "containers": [merge(busybox("main", "sleep 3600"), json!({
            "env": [{ "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "absent", "key": "token" } } }],
        }))],
    }))
    .await?;
    wait_pod(&env, "noimage", "ErrImagePull", RUN_TIMEOUT, |p| {
        (waiting_reason(p).as_deref() == Some("ErrImagePull")).then_some(())
    })
    .await?;
    wait_pod(&env, "noimage", "ImagePullBackOff", RUN_TIMEOUT, |p| {
        (waiting_reason(p).as_deref() == Some("ImagePullBackOff")).then_some(())
    })
    .await?;
    wait_events(&env, "noimage", &["Pulling", "Failed", "BackOff"]).await?;
    let message = wait_pod(
        &env,
        "nosecret",
        "CreateContainerConfigError",
        RUN_TIMEOUT,
        |p| {
            let w = first_container(p)?.state?.waiting?;
            (w.reason.as_deref() == Some("CreateContainerConfigError"))
                .then_some(w.message.unwrap_or_default())
        },
    )
    .await?;
    assert!(message.contains("absent"), "{message}");
    Ok(())
}
}

e2e::over_transports! {
async fn deletion_honours_the_grace_period_and_force(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("grace", transport).await?;
    let up = env.device_up("a", 10).await?;
    // Exits as soon as SIGTERM arrives.
    let polite = "trap 'exit 0' TERM; while true; do sleep 1; done";
    // Ignores SIGTERM: only SIGKILL after the grace period ends it.
    let stubborn = "trap '' TERM; while true; do sleep 1; done";
    for (name, script) in [
        ("polite", polite),
        ("stubborn", stubborn),
        ("forced", stubborn),
    ] {
        create_pod(
            &env,
            &up.name,
            name,
            json!({
                "terminationGracePeriodSeconds": 8,
                "containers": [busybox("main", script)],
            }),
        )
        .await?;
    }
    let api: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    let mut ids = std::collections::HashMap::new();
    for name in ["polite", "stubborn", "forced"] {
        let pod = wait_pod(&env, name, "Running", RUN_TIMEOUT, |p| {
            running_and_ready(p).then(|| p.clone())
        })
        .await?;
        ids.insert(name, container_id(&pod).expect("container id"));
    }
    let gone = |name: &'static str| {
        let api = api.clone();
        async move {
            let started = std::time::Instant::now();
            wait_for(
                &format!("{name} removed"),
                Duration::from_secs(60),
                || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
            )
            .await
            .map(|()| started.elapsed())
        }
    };
    // A kubelet's order: containers, then sandbox, then the Pod object. The
    // moment the object is gone, the device runs nothing of the pod.
    let nothing_left = |name: &'static str, uid: String| {
        let node = up.name.clone();
        async move {
            let running = env.cluster.kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/nodes/{node}/proxy/runningpods/"),
            ])?;
            anyhow::ensure!(
                !running.contains(&format!("\"{name}\"")),
                "{name} still in /runningpods after its object went: {running}"
            );
            let left = e2e::images::pod_containers(&uid)?;
            anyhow::ensure!(left.is_empty(), "{name} left {left:?} behind its object");
            anyhow::Ok(())
        }
    };
    let uid = |name: &'static str| {
        let api = api.clone();
        async move { anyhow::Ok(kube::ResourceExt::uid(&api.get(name).await?).unwrap_or_default()) }
    };
    let polite_uid = uid("polite").await?;
    api.delete("polite", &DeleteParams::default()).await?;
    let polite_took = gone("polite").await?;
    nothing_left("polite", polite_uid).await?;
    let stubborn_uid = uid("stubborn").await?;
    api.delete("stubborn", &DeleteParams::default()).await?;
    let stubborn_took = gone("stubborn").await?;
    nothing_left("stubborn", stubborn_uid).await?;
    eprintln!("polite pod gone after {polite_took:?}, stubborn after {stubborn_took:?}");
    assert!(
        polite_took < Duration::from_secs(6),
        "SIGTERM not delivered: {polite_took:?}"
    );
    assert!(
        stubborn_took >= Duration::from_secs(7),
        "grace period cut short: {stubborn_took:?}"
    );
    assert!(!container_exists(&ids["polite"])? && !container_exists(&ids["stubborn"])?);
    wait_events(&env, "polite", &["Killing"]).await?;

    // Force: the object goes at once, the container shortly after, grace or not.
    env.cluster.kubectl(&[
        "delete",
        "pod",
        "forced",
        "-n",
        &env.name,
        "--grace-period=0",
        "--force",
    ])?;
    let forced = ids["forced"].clone();
    wait_for(
        "the forced pod's container removed",
        Duration::from_secs(6),
        || async { (!container_exists(&forced).unwrap_or(true)).then_some(()) },
    )
    .await?;
    Ok(())
}
}

e2e::over_transports! {
async fn volumes_carry_configmaps_secrets_init_output_and_the_token(transport) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let env = TestEnv::over("volumes", transport).await?;
    let up = env.device_up("a", 10).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.name);
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({ "metadata": { "name": "conf" }, "data": { "a": "alpha", "b": "beta" } }),
            )?,
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({ "metadata": { "name": "sec" }, "stringData": { "token": "s3cret" } }),
            )?,
        )
        .await?;
    create_pod(&env, &up.name, "vols", json!({
        "volumes": [
            { "name": "conf", "configMap": { "name": "conf" } },
            { "name": "sec", "secret": { "secretName": "sec", "defaultMode": 256 } },
            { "name": "work", "emptyDir": {} },
            { "name": "meta", "downwardAPI": { "items": [{ "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } }] } },
        ],
        "initContainers": [merge(busybox("prepare", "echo from-init > /work/msg"), json!({
            "volumeMounts": [{ "name": "work", "mountPath": "/work" }],
        }))],
        "containers": [merge(busybox("main", "exec sleep 3600"), json!({
            "env": [{ "name": "SECRET_TOKEN", "valueFrom": { "secretKeyRef": { "name": "sec", "key": "token" } } }],
            "envFrom": [{ "configMapRef": { "name": "conf" }, "prefix": "CONF_" }],
            "volumeMounts": [
                { "name": "conf", "mountPath": "/etc/conf", "readOnly": true },
                { "name": "conf", "mountPath": "/etc/a-only", "subPath": "a" },
                { "name": "sec", "mountPath": "/etc/sec" },
                { "name": "work", "mountPath": "/work" },
                { "name": "meta", "mountPath": "/etc/meta" },
            ],
        }))],
    }))
    .await?;
    let pod = wait_pod(&env, "vols", "Running", RUN_TIMEOUT, |p| {
        running_and_ready(p).then(|| p.clone())
    })
    .await?;
    let id = container_id(&pod).expect("container id");
    let read = |path: &str| e2e::images::exec(&id, &["cat", path]);
    let vars = container_env(&id)?;
    for want in ["SECRET_TOKEN=s3cret", "CONF_a=alpha", "CONF_b=beta"] {
        assert!(
            vars.iter().any(|v| v == want),
            "{want} missing from {vars:?}"
        );
    }
    assert_eq!(read("/etc/conf/a")?, "alpha");
    assert_eq!(read("/etc/conf/b")?, "beta");
    assert_eq!(read("/etc/a-only")?, "alpha");
    assert_eq!(read("/etc/sec/token")?, "s3cret");
    assert_eq!(read("/work/msg")?.trim(), "from-init");
    assert!(read("/etc/meta/labels")?.contains("test=\"vols\""));
    assert_eq!(
        e2e::images::exec(&id, &["stat", "-c", "%a", "/etc/sec/token"])?.trim(),
        "400"
    );
    assert!(
        e2e::images::exec(&id, &["sh", "-c", "echo x > /etc/conf/new"]).is_err(),
        "readOnly mount was writable"
    );

    // The service-account token every pod gets, accepted by the apiserver.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(read(&format!("{sa}/namespace"))?, env.name);
    assert!(read(&format!("{sa}/ca.crt"))?.contains("BEGIN CERTIFICATE"));
    let token = read(&format!("{sa}/token"))?;
    let status = e2e::pods::review_token(&env, &token).await?;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.and_then(|u| u.username).unwrap_or_default();
    assert_eq!(user, format!("system:serviceaccount:{}:default", env.name));

    // Updates reach the files, and the token is renewed, without a restart.
    configmaps
        .patch(
            "conf",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "a": "omega" } })),
        )
        .await?;
    wait_for(
        "the ConfigMap update in the container",
        Duration::from_secs(30),
        || async { (read("/etc/conf/a").ok()?.as_str() == "omega").then_some(()) },
    )
    .await?;
    wait_for("a renewed token", Duration::from_secs(30), || async {
        (read(&format!("{sa}/token")).ok()? != token).then_some(())
    })
    .await?;
    Ok(())
}
}

e2e::over_transports! {
async fn private_images_pull_with_image_pull_secrets(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("pull", transport).await?;
    let registry = e2e::registry::Registry::shared(&env.cluster.dir).await?;
    let up = env.device_up("a", 10).await?;
    registry.create_pull_secret(env.cluster, &env.name, "regcred")?;
    let image = registry.private_image();
    let container = |name: &str| json!({ "name": name, "image": image, "imagePullPolicy": "Always", "command": ["sleep", "3600"] });
    create_pod(
        &env,
        &up.name,
        "private",
        json!({
            "imagePullSecrets": [{ "name": "regcred" }],
            "containers": [container("main")],
        }),
    )
    .await?;
    create_pod(
        &env,
        &up.name,
        "nocreds",
        json!({ "containers": [container("main")] }),
    )
    .await?;
    let pod = wait_pod(
        &env,
        "private",
        "Running from the private registry",
        RUN_TIMEOUT,
        |p| running_and_ready(p).then(|| p.clone()),
    )
    .await?;
    let c = first_container(&pod).expect("status");
    assert_eq!(c.image, image);
    assert!(!c.image_id.is_empty());
    let reasons = wait_events(&env, "private", &["Pulling", "Pulled", "Started"]).await?;
    assert!(reasons.iter().any(|r| r == "Pulled"));
    let message = wait_pod(
        &env,
        "nocreds",
        "ErrImagePull without credentials",
        RUN_TIMEOUT,
        |p| {
            let w = first_container(p)?.state?.waiting?;
            matches!(
                w.reason.as_deref(),
                Some("ErrImagePull") | Some("ImagePullBackOff")
            )
            .then(|| w.message.unwrap_or_default())
        },
    )
    .await?;
    assert!(
        message.contains("auth") || message.contains("denied"),
        "{message}"
    );
    Ok(())
}
}

e2e::over_runtimes! {
async fn host_ports_are_published_on_the_device(runtime) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let env = TestEnv::on("hostport", runtime).await?;
    let up = env.device_up("a", 10).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    create_pod(&env, &up.name, "web", json!({
        "containers": [merge(busybox("httpd", "echo served-from-the-edge > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"), json!({
            "ports": [{ "containerPort": 8080, "hostPort": port, "hostIP": "127.0.0.1" }],
        }))],
    }))
    .await?;
    wait_pod(&env, "web", "Running", RUN_TIMEOUT, |p| {
        running_and_ready(p).then_some(())
    })
    .await?;
    let body = wait_for(
        "an answer on the host port",
        Duration::from_secs(20),
        || async {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            conn.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut answer = String::new();
            conn.read_to_string(&mut answer).ok()?;
            answer.contains("served-from-the-edge").then_some(answer)
        },
    )
    .await?;
    assert!(body.starts_with("HTTP/1."), "{body}");
    // A deleted pod's host port is released, as a kubelet releases it: no
    // rule is left to send a later connection on the port to a dead address.
    let published = || -> anyhow::Result<bool> {
        let rules = std::process::Command::new("iptables")
            .args(["-w", "-t", "nat", "-S"])
            .output()?;
        anyhow::ensure!(rules.status.success(), "iptables -t nat -S failed");
        Ok(String::from_utf8_lossy(&rules.stdout).contains(&format!("--dports {port} ")))
    };
    assert!(published()?, "the host port has no DNAT rule");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    pods.delete("web", &DeleteParams::default()).await?;
    wait_for("the pod gone", RUN_TIMEOUT, || async {
        pods.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await?;
    wait_for("the host port released", Duration::from_secs(20), || async {
        (!published().ok()?).then_some(())
    })
    .await?;
    Ok(())
}
}

#[tokio::test(flavor = "multi_thread")]
async fn unused_pulled_images_are_collected_by_policy() -> anyhow::Result<()> {
    let env = TestEnv::new("imagegc").await?;
    let registry = e2e::registry::Registry::shared(&env.cluster.dir).await?;
    let unused = registry.push_unique("gc-unused")?;
    let used = registry.push_unique("gc-used")?;
    let up = env
        .device_up_configured(
            "a",
            5,
            json!({}),
            "runtime:\n  imageGC:\n    unusedFor: 3s\n    interval: 1s\n",
        )
        .await?;
    let name = up.name.clone();
    registry.create_pull_secret(env.cluster, &env.name, "regcred")?;
    for (pod, image) in [("unused", &unused), ("used", &used)] {
        create_pod(
            &env,
            &name,
            pod,
            json!({
                "imagePullSecrets": [{ "name": "regcred" }],
                "terminationGracePeriodSeconds": 1,
                "containers": [{ "name": "app", "image": image, "command": ["sleep", "3600"] }],
            }),
        )
        .await?;
        wait_pod(&env, pod, "running", RUN_TIMEOUT, |p| {
            running_and_ready(p).then_some(())
        })
        .await?;
    }
    assert!(
        image_exists(&unused)? && image_exists(&used)?,
        "both pulled"
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    pods.delete("unused", &DeleteParams::default()).await?;
    wait_for("the unused image collected", RUN_TIMEOUT, || async {
        (!image_exists(&unused).ok()?).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(image_exists(&used)?, "an image in use stays");
    assert!(image_exists(BUSYBOX)?, "images the agent did not pull stay");
    Ok(())
}
