//! The runtime conformance suite: each runtime against its real daemon,
//! through the runtime seam alone. Every runtime: sandbox and containers,
//! exit codes, exec with and without a terminal, objects found by their
//! labels, a sandbox removed under its pod. Docker (the only runtime so far)
//! also: log entries (times, outputs, tail, the since hint, TTY output,
//! following until the container exits) and a missing container. A runtime
//! that does not answer fails its tests, saying how to get it: never a
//! silent pass.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arhat::{
    config::{RuntimeConfig, RuntimeKind},
    runtime::{
        self, ContainerSpec, ContainerState, ExecSpec, LABEL_CONTAINER, LogEntry, LogOptions,
        LogOutput, LogRotation, Runtime, RuntimeError, SANDBOX, SandboxSpec,
        docker::Docker as Runtimed,
        labels::{self, Owner},
    },
};
use bollard::{
    Docker,
    models::ContainerCreateBody,
    query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder},
};
use futures::StreamExt;

const IMAGE: &str = e2e::images::BUSYBOX;

/// The runtime and a raw client, with the test image in place.
async fn docker() -> (Runtimed, Docker) {
    let runtime = Runtimed::connect(PathBuf::new(), LogRotation::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no dockerd answers ({e}): install Debian's docker.io and start dockerd \
                 (scripts/docker.sh does both; make test runs it)"
            )
        });
    e2e::images::ensure_busybox().expect("importing the test image");
    let client = Docker::connect_with_local_defaults().expect("a docker client");
    (runtime, client)
}

/// A container removed when dropped.
struct Container {
    client: Docker,
    id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let client = self.client.clone();
        let id = self.id.clone();
        // Drop cannot await; a short runtime of its own does the removal.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let options = RemoveContainerOptionsBuilder::default().force(true).build();
            let _ = rt.block_on(client.remove_container(&id, Some(options)));
        })
        .join()
        .expect("removal thread");
    }
}

async fn run(client: &Docker, name: &str, tty: bool, script: &str) -> Container {
    let name = format!("arhat-logs-test-{name}-{}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        tty: Some(tty),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let id = client
        .create_container(Some(options), body)
        .await
        .expect("create")
        .id;
    let container = Container {
        client: client.clone(),
        id,
    };
    client
        .start_container(&container.id, None)
        .await
        .expect("start");
    container
}

async fn wait_exit(client: &Docker, id: &str) {
    let mut wait = client.wait_container(id, None);
    while wait.next().await.is_some() {}
}

async fn entries(runtime: &Runtimed, id: &str, options: LogOptions) -> Vec<LogEntry> {
    let stream = runtime.logs(id, &options).await.expect("logs");
    tokio::time::timeout(Duration::from_secs(20), stream.collect::<Vec<_>>())
        .await
        .expect("the log ends")
        .into_iter()
        .map(|e| e.expect("entry"))
        .collect()
}

fn texts(entries: &[LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.text).into_owned())
        .collect()
}

#[tokio::test]
async fn entries_carry_time_output_and_text() {
    let (runtime, client) = docker().await;
    let c = run(
        &client,
        "plain",
        false,
        "echo one; sleep 0.2; echo two >&2; sleep 1.2; echo three; printf last",
    )
    .await;
    wait_exit(&client, &c.id).await;
    let all = entries(&runtime, &c.id, LogOptions::default()).await;
    assert_eq!(texts(&all), ["one\n", "two\n", "three\n", "last"]);
    assert_eq!(all[1].output, LogOutput::Stderr);
    assert!(all.iter().all(|e| e.time.is_some()), "{all:?}");
    assert!(all.windows(2).all(|w| w[0].time <= w[1].time));

    let tail = entries(
        &runtime,
        &c.id,
        LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(texts(&tail), ["three\n", "last"]);

    // The hint may return earlier entries of the same second, never later ones lost.
    let since = all[2].time;
    let from = entries(
        &runtime,
        &c.id,
        LogOptions {
            since,
            ..Default::default()
        },
    )
    .await;
    assert!(texts(&from).ends_with(&["three\n".to_string(), "last".to_string()]));
    let second = since
        .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
        .expect("a time");
    assert!(from.iter().all(|e| e.time >= Some(second)), "{from:?}");
}

#[tokio::test]
async fn tty_output_is_split_into_lines() {
    let (runtime, client) = docker().await;
    let c = run(&client, "tty", true, "echo a; echo b").await;
    wait_exit(&client, &c.id).await;
    let all = entries(&runtime, &c.id, LogOptions::default()).await;
    assert_eq!(texts(&all), ["a\r\n", "b\r\n"]);
    assert!(all.iter().all(|e| e.time.is_some()), "{all:?}");
}

#[tokio::test]
async fn follow_ends_when_the_container_exits() {
    let (runtime, client) = docker().await;
    let c = run(&client, "follow", false, "echo start; sleep 1; echo end").await;
    let all = entries(
        &runtime,
        &c.id,
        LogOptions {
            follow: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(texts(&all), ["start\n", "end\n"]);
}

#[tokio::test]
async fn a_missing_container_is_not_found() {
    let (runtime, _) = docker().await;
    let got = runtime
        .logs("arhat-logs-test-no-such-container", &LogOptions::default())
        .await;
    assert!(matches!(got, Err(RuntimeError::NotFound(_))));
}

// ---- the seam's contract, for each runtime `runtime.kind` names ----

/// The runtime of `kind` through the seam, as arhat makes it.
async fn connected(kind: RuntimeKind) -> Arc<dyn Runtime> {
    let config = RuntimeConfig {
        kind,
        pause_binary: e2e::process::pause_binary().expect("the pause binary (make pause)"),
        ..Default::default()
    };
    e2e::images::ensure_busybox().expect("importing the test image");
    runtime::connect(&config)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the {kind:?} runtime does not answer ({e}): for Docker install Debian's \
                 docker.io and start dockerd (scripts/docker.sh does both; make test runs it)"
            )
        })
        .expect("a runtime kind that runs pods")
}

fn owner(uid: &str) -> Owner<'_> {
    Owner {
        device: "runtime-test",
        pod_uid: uid,
        namespace: "ns",
        pod_name: uid,
    }
}

fn busybox(uid: &str, name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        pod_uid: uid.into(),
        namespace: "ns".into(),
        pod_name: uid.into(),
        name: name.into(),
        image: IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        labels: owner(uid).labels(name, 0),
        ..Default::default()
    }
}

/// Exit code of `command` run in container `id`, with a terminal or without.
async fn exec_code(rt: &Arc<dyn Runtime>, id: &str, command: &str, tty: bool) -> i32 {
    let spec = ExecSpec {
        command: vec!["sh".into(), "-c".into(), command.into()],
        stdout: true,
        stderr: !tty,
        tty,
        ..Default::default()
    };
    let mut process = rt.exec(id, &spec).await.expect("exec");
    drop(process.stdin.take());
    while process.output.next().await.is_some() {}
    process.handle.exit_code().await.expect("exit code")
}

async fn sandbox_and_containers_keep_the_contract(kind: RuntimeKind) {
    let rt = connected(kind).await;
    let uid = format!("conformance-{}", std::process::id());
    let sandbox = rt
        .create_sandbox(&SandboxSpec {
            pod_uid: uid.clone(),
            namespace: "ns".into(),
            name: uid.clone(),
            hostname: "conformance".into(),
            labels: owner(&uid).labels(SANDBOX, 0),
            ..Default::default()
        })
        .await
        .expect("create_sandbox");
    assert!(sandbox.ready, "a new sandbox is ready");

    // A container's own exit code comes back from wait and inspect.
    let exits = rt
        .create_container(&sandbox, &busybox(&uid, "exits", "exit 3"))
        .await
        .expect("create_container");
    rt.start_container(&exits).await.expect("start");
    assert_eq!(rt.wait_container(&exits).await.expect("wait"), 3);
    assert!(matches!(
        rt.inspect_container(&exits).await.expect("inspect").state,
        ContainerState::Exited { exit_code: 3, .. }
    ));

    // Exec, with a terminal and without, reports the command's exit code.
    let runs = rt
        .create_container(&sandbox, &busybox(&uid, "runs", "sleep 600"))
        .await
        .expect("create_container");
    rt.start_container(&runs).await.expect("start");
    assert_eq!(exec_code(&rt, &runs, "exit 7", false).await, 7);
    assert_eq!(exec_code(&rt, &runs, "exit 5", true).await, 5);
    assert!(rt.network_namespace(&runs).await.is_ok());

    // Everything is found again by its labels, as a restarted agent finds it.
    let found = rt
        .list_labelled(&labels::of_pod("runtime-test", &uid))
        .await
        .expect("list_labelled");
    let mut names: Vec<&str> = found
        .iter()
        .filter_map(|o| o.labels.get(LABEL_CONTAINER).map(String::as_str))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["POD", "exits", "runs"]);

    // A sandbox removed under its pod: the wait ends and it reads as gone.
    let waiter = {
        let (rt, id) = (rt.clone(), sandbox.id.clone());
        tokio::spawn(async move { rt.wait_sandbox(&id).await })
    };
    rt.remove_container(&sandbox.id).await.expect("remove");
    tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the sandbox wait ended")
        .expect("join")
        .ok();
    assert!(matches!(
        rt.sandbox(&sandbox.id).await,
        Err(RuntimeError::NotFound(_))
    ));
    for id in [exits, runs] {
        rt.remove_container(&id).await.expect("remove");
        assert!(matches!(
            rt.inspect_container(&id).await,
            Err(RuntimeError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn docker_keeps_the_runtime_contract() {
    sandbox_and_containers_keep_the_contract(RuntimeKind::Docker).await;
}

// ---- the pod network, on each runtime's sandboxes ----

/// Two sandboxes of `kind` attached by the real CNI plugins: each has its
/// own address, one pod reaches the other's server and its hostPort is
/// published on the device; detached, the address is given back.
async fn the_pod_network_attaches_sandboxes(kind: RuntimeKind) {
    use arhat::network::{Bridge, PodNetwork};
    let rt = connected(kind).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config: arhat::config::NetworkConfig = serde_norway::from_str::<serde_norway::Value>(
        &e2e::podnet::config_yaml(dir.path()).expect("slot"),
    )
    .ok()
    .and_then(|v| serde_norway::from_value(v.get("network")?.clone()).ok())
    .expect("network config");
    let network = Bridge::new(&config, dir.path()).await.unwrap_or_else(|e| {
        panic!("{e}: run scripts/cni.sh (make test does), or apt-get install containernetworking-plugins iptables")
    });
    let host_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut pods = Vec::new();
    for (i, ports) in [
        (0, vec![]),
        (
            1,
            vec![runtime::PortMapping {
                container_port: 8080,
                protocol: "tcp".into(),
                host_port,
                host_ip: "127.0.0.1".into(),
            }],
        ),
    ] {
        let uid = format!("network-{i}-{}", std::process::id());
        let sandbox = rt
            .create_sandbox(&SandboxSpec {
                pod_uid: uid.clone(),
                namespace: "ns".into(),
                name: uid.clone(),
                hostname: uid.clone(),
                labels: owner(&uid).labels(SANDBOX, 0),
                ..Default::default()
            })
            .await
            .expect("create_sandbox");
        let netns = rt
            .network_namespace(&sandbox.id)
            .await
            .expect("the sandbox's namespace");
        let address = network
            .attach(&sandbox.id, &netns, &ports)
            .await
            .expect("attach");
        assert_eq!(network.address(&sandbox.id), Some(address));
        let c = rt
            .create_container(
                &sandbox,
                &busybox(
                    &uid,
                    "web",
                    "echo pod-$HOSTNAME > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
                ),
            )
            .await
            .expect("create_container");
        rt.start_container(&c).await.expect("start");
        pods.push((sandbox, address, c));
    }
    let (a, b) = (&pods[0], &pods[1]);
    assert_ne!(a.1, b.1, "each pod its own address");
    let subnet_prefix = config.subnet.to_string();
    let subnet_prefix = subnet_prefix
        .rsplit_once('.')
        .map(|(p, _)| p)
        .unwrap_or_default();
    assert!(
        a.1.to_string().starts_with(subnet_prefix),
        "{} in {}",
        a.1,
        config.subnet
    );
    // The address is on the pod's eth0, and pod a reaches pod b's server.
    assert_eq!(
        exec_code(
            &rt,
            &a.2,
            &format!("ip addr show eth0 | grep -q 'inet {}/'", a.1),
            false
        )
        .await,
        0
    );
    let fetch = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} 8080 | grep -q pod-",
        b.1
    );
    let mut code = -1;
    for _ in 0..20 {
        code = exec_code(&rt, &a.2, &fetch, false).await;
        if code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(code, 0, "pod a fetched pod b's page");
    // b's hostPort answers on the device.
    let served = e2e::wait_for("the hostPort answers", Duration::from_secs(20), || async {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", host_port)).ok()?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        answer.contains("pod-").then_some(answer)
    })
    .await;
    for (sandbox, _, c) in &pods {
        rt.remove_container(c).await.expect("remove");
        rt.remove_container(&sandbox.id).await.expect("remove");
        network.detach(&sandbox.id).await.expect("detach");
        assert_eq!(network.address(&sandbox.id), None);
    }
    served.expect("the hostPort answered");
    // host-local keeps one file per address it handed out: none are left.
    let ipam = std::fs::read_dir(dir.path().join("network/ipam/arhat"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0);
    assert_eq!(ipam, 0, "every address given back");
}

#[tokio::test]
async fn the_pod_network_attaches_docker_sandboxes() {
    the_pod_network_attaches_sandboxes(RuntimeKind::Docker).await;
}
