//! Lifecycle hooks and termination messages, as a kubelet runs them:
//! postStart after the container starts, preStop before its SIGTERM, and
//! why a container ended in its status.

use std::time::Duration;

use e2e::{
    TestEnv,
    pods::{busybox, create_pod, wait_pod},
    wait_for,
};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Event, Pod};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn terminated(pod: &Pod) -> Option<ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()
}

e2e::over_runtimes! {
async fn post_start_and_pre_stop_run_in_order(runtime) -> anyhow::Result<()> {
    let env = TestEnv::on("hooks", runtime).await?;
    let up = env.device_up("a", 10).await?;
    let dir = env.dir.join("hooks");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("order");
    let mut app = busybox(
        "app",
        "trap 'echo term >> /log/order; exit 0' TERM; echo main >> /log/order; while true; do sleep 1; done",
    );
    app["volumeMounts"] = json!([{ "name": "log", "mountPath": "/log" }]);
    app["lifecycle"] = json!({
        "postStart": { "exec": { "command": ["sh", "-c", "echo postStart >> /log/order"] } },
        "preStop": { "exec": { "command": ["sh", "-c", "echo preStop >> /log/order; sleep 1"] } },
    });
    create_pod(
        &env,
        &up.name,
        "hooks",
        json!({
            "containers": [app],
            "terminationGracePeriodSeconds": 10,
            "volumes": [{ "name": "log", "hostPath": { "path": dir.to_string_lossy(), "type": "Directory" } }],
        }),
    )
    .await?;
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_for("postStart and main ran", TIMEOUT, || async {
        let l = lines();
        (l.contains(&"postStart".to_string()) && l.contains(&"main".to_string())).then_some(())
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.name);
    pods.delete("hooks", &DeleteParams::default()).await?;
    wait_for("the pod gone", TIMEOUT, || async {
        pods.get_opt("hooks").await.ok()?.is_none().then_some(())
    })
    .await?;
    let l = lines();
    assert_eq!(l.len(), 4, "{l:?}");
    assert_eq!(
        &l[2..],
        ["preStop", "term"],
        "preStop before SIGTERM: {l:?}"
    );
    Ok(())
}
}

e2e::over_runtimes! {
async fn termination_messages_and_failed_hooks_surface(runtime) -> anyhow::Result<()> {
    let env = TestEnv::on("termmsg", runtime).await?;
    let up = env.device_up("a", 10).await?;
    let never = |c: serde_json::Value| json!({ "restartPolicy": "Never", "containers": [c] });
    create_pod(
        &env,
        &up.name,
        "said",
        never(busybox(
            "app",
            "echo 'disk full' > /dev/termination-log; exit 3",
        )),
    )
    .await?;
    let mut custom = busybox("app", "echo 'bad config' > /tmp/why; exit 4");
    custom["terminationMessagePath"] = json!("/tmp/why");
    create_pod(&env, &up.name, "custom", never(custom)).await?;
    let mut fallback = busybox("app", "echo something broke; exit 2");
    fallback["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    create_pod(&env, &up.name, "fallback", never(fallback)).await?;
    let mut hook = busybox("app", "exec sleep 3600");
    hook["lifecycle"] =
        json!({ "postStart": { "exec": { "command": ["sh", "-c", "echo no; exit 1"] } } });
    create_pod(
        &env,
        &up.name,
        "badhook",
        json!({ "containers": [hook], "terminationGracePeriodSeconds": 1 }),
    )
    .await?;

    for (pod, code, want) in [
        ("said", 3, "disk full"),
        ("custom", 4, "bad config"),
        ("fallback", 2, "something broke"),
    ] {
        let t = wait_pod(&env, pod, "terminated", TIMEOUT, terminated).await?;
        assert_eq!(t.exit_code, code, "{pod}");
        let message = t.message.unwrap_or_default();
        assert!(message.contains(want), "{pod}: {message:?}");
    }
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.name);
    wait_for("FailedPostStartHook", TIMEOUT, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=badhook"))
            .await
            .ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedPostStartHook"))
            .then_some(())
    })
    .await?;
    Ok(())
}
}
