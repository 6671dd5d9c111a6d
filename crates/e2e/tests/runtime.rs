//! The runtime conformance suite: every runtime of [`e2e::runtimes::RUNTIMES`]
//! against its real daemon, through the runtime seam alone. Sandbox and
//! containers with their exit codes; objects found again by their labels,
//! as a restarted agent finds them; a sandbox removed under its pod; exec
//! with and without a terminal; attach to a container's own process; log
//! entries with every option (time, output, tail, the since hint, terminal
//! output, following until the container exits, a missing container);
//! port-forward's dial inside the sandbox's namespace; the pod network;
//! pulls with a registry's credentials and the image bookkeeping garbage
//! collection relies on. A runtime that does not answer fails its tests,
//! saying how to get it: never a silent pass.

use std::{sync::Arc, time::Duration};

use arhat::{
    config::RuntimeKind,
    runtime::{
        self, ContainerSpec, ContainerState, ExecSpec, LABEL_CONTAINER, LogEntry, LogOptions,
        LogOutput, Process, PullAuth, Runtime, RuntimeError, SANDBOX, Sandbox, SandboxSpec,
        TerminalSize,
        labels::{self, Owner},
    },
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = e2e::images::BUSYBOX;
const DEVICE: &str = "runtime-test";

/// The runtime of `kind` through the seam, as arhat makes it.
async fn connected(kind: RuntimeKind) -> Arc<dyn Runtime> {
    let config = arhat::config::RuntimeConfig {
        kind,
        pause_binary: e2e::process::pause_binary().expect("the pause binary (make pause)"),
        ..Default::default()
    };
    e2e::images::ensure_busybox().expect("importing the test image");
    runtime::connect(&config)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the {} runtime does not answer ({e}): {}",
                e2e::runtimes::name(kind),
                e2e::runtimes::how_to_get(kind)
            )
        })
        .expect("a runtime kind that runs pods")
}

fn owner(uid: &str) -> Owner<'_> {
    Owner {
        device: DEVICE,
        pod_uid: uid,
        namespace: "ns",
        pod_name: uid,
    }
}

/// A pod's sandbox made through the seam; its objects are removed when
/// it is dropped, whatever the test's outcome.
struct Pod {
    rt: Arc<dyn Runtime>,
    uid: String,
    sandbox: Sandbox,
    /// For a runtime that keeps no logs: each container's log, kept as
    /// arhat keeps it, and whether its keeper is done.
    kept: std::sync::Mutex<std::collections::HashMap<String, Kept>>,
    dir: tempfile::TempDir,
}

struct Kept {
    path: std::path::PathBuf,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Pod {
    async fn new(rt: &Arc<dyn Runtime>, name: &str) -> Pod {
        let uid = format!("{name}-{}-{}", std::process::id(), rand::random::<u16>());
        let sandbox = rt
            .create_sandbox(&SandboxSpec {
                pod_uid: uid.clone(),
                namespace: "ns".into(),
                name: uid.clone(),
                hostname: name.into(),
                labels: owner(&uid).labels(SANDBOX, 0),
                ..Default::default()
            })
            .await
            .expect("create_sandbox");
        assert!(sandbox.ready, "a new sandbox is ready");
        Pod {
            rt: rt.clone(),
            uid,
            sandbox,
            kept: Default::default(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn spec(&self, name: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            pod_uid: self.uid.clone(),
            namespace: "ns".into(),
            pod_name: self.uid.clone(),
            name: name.into(),
            image: IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            labels: owner(&self.uid).labels(name, 0),
            ..Default::default()
        }
    }

    /// Creates and starts a container of `spec`; its id.
    async fn start(&self, spec: &ContainerSpec) -> String {
        let id = self
            .rt
            .create_container(&self.sandbox, spec)
            .await
            .expect("create_container");
        if !self.rt.keeps_logs() {
            let output = self.rt.output(&id).await.expect("the container's output");
            let path = self.dir.path().join(format!("{id}.log"));
            let (tx, done) = tokio::sync::watch::channel(false);
            let keeping = path.clone();
            tokio::spawn(async move {
                let rotation = runtime::LogRotation::default();
                arhat::containerlog::keep(output, keeping, rotation)
                    .await
                    .expect("keeping the log");
                let _ = tx.send(true);
            });
            self.kept
                .lock()
                .expect("kept")
                .insert(id.clone(), Kept { path, done });
        }
        self.rt.start_container(&id).await.expect("start");
        id
    }

    /// The container's log: the runtime's own, or the one kept from its output.
    async fn logs(
        &self,
        id: &str,
        options: &LogOptions,
    ) -> Result<runtime::LogStream, RuntimeError> {
        let kept = self
            .kept
            .lock()
            .expect("kept")
            .get(id)
            .map(|k| (k.path.clone(), k.done.clone()));
        match kept {
            None => self.rt.logs(id, options).await,
            Some((path, mut done)) => {
                let done = Box::pin(async move {
                    let _ = done.wait_for(|d| *d).await;
                });
                arhat::containerlog::read(path, arhat::containerlog::Format::Cri, options, done)
                    .await
                    .map_err(|e| RuntimeError::failed("reading the kept log", e))
            }
        }
    }

    async fn run(&self, name: &str, script: &str) -> String {
        self.start(&self.spec(name, script)).await
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let (rt, uid) = (self.rt.clone(), self.uid.clone());
        // Drop cannot await; a short runtime of its own does the removal.
        let _ = std::thread::spawn(move || {
            let Ok(tokio) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            tokio.block_on(async {
                let objects = rt
                    .list_labelled(&labels::of_pod(DEVICE, &uid))
                    .await
                    .unwrap_or_default();
                for o in objects {
                    let _ = rt.remove_container(&o.id).await;
                }
            });
        })
        .join();
    }
}

async fn exec(rt: &Arc<dyn Runtime>, id: &str, command: &str, tty: bool) -> Process {
    let spec = ExecSpec {
        command: vec!["sh".into(), "-c".into(), command.into()],
        stdout: true,
        stderr: !tty,
        tty,
        ..Default::default()
    };
    rt.exec(id, &spec).await.expect("exec")
}

/// Exit code of `command` run in container `id`, with a terminal or without.
async fn exec_code(rt: &Arc<dyn Runtime>, id: &str, command: &str, tty: bool) -> i32 {
    let mut process = exec(rt, id, command, tty).await;
    drop(process.stdin.take());
    while process.output.next().await.is_some() {}
    process.handle.exit_code().await.expect("exit code")
}

/// Reads the process's output until it holds `wanted`; all of it.
async fn output_until(process: &mut Process, wanted: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(wanted) {
            match process.output.next().await {
                Some(Ok((_, bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    assert!(seen.contains(wanted), "{wanted:?} not in {seen:?}");
    seen
}

async fn entries(pod: &Pod, id: &str, options: LogOptions) -> Vec<LogEntry> {
    let stream = pod.logs(id, &options).await.expect("logs");
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

// ---- sandbox and containers ----

e2e::over_runtimes! {
    async fn sandbox_and_containers_keep_the_contract(kind) -> () {
        let rt = connected(kind).await;
        let pod = Pod::new(&rt, "contract").await;

        // A container's own exit code comes back from wait and inspect.
        let exits = pod.run("exits", "exit 3").await;
        assert_eq!(rt.wait_container(&exits).await.expect("wait"), 3);
        assert!(matches!(
            rt.inspect_container(&exits).await.expect("inspect").state,
            ContainerState::Exited { exit_code: 3, .. }
        ));

        // Exec, with a terminal and without, reports the command's exit code.
        let runs = pod.run("runs", "sleep 600").await;
        assert_eq!(exec_code(&rt, &runs, "exit 7", false).await, 7);
        assert_eq!(exec_code(&rt, &runs, "exit 5", true).await, 5);
        let mut tty = exec(&rt, &runs, "tty", true).await;
        output_until(&mut tty, "/dev/pts/").await;
        // A terminal takes the size asked. (Docker before 23 cannot start an
        // exec at a size, only resize it once it runs: hence the pause.)
        let sized = ExecSpec {
            command: vec!["sh".into(), "-c".into(), "sleep 0.5; stty size".into()],
            stdout: true,
            tty: true,
            size: Some(TerminalSize { width: 91, height: 17 }),
            ..Default::default()
        };
        let mut sized = rt.exec(&runs, &sized).await.expect("exec");
        output_until(&mut sized, "17 91").await;
        assert!(rt.network_namespace(&runs).await.is_ok());

        // Everything is found again by its labels, as a restarted agent finds it.
        let found = rt
            .list_labelled(&labels::of_pod(DEVICE, &pod.uid))
            .await
            .expect("list_labelled");
        let mut names: Vec<&str> = found
            .iter()
            .filter_map(|o| o.labels.get(LABEL_CONTAINER).map(String::as_str))
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["POD", "exits", "runs"]);
        assert!(
            found.iter().any(|o| o.id == runs && o.running),
            "{found:?}"
        );

        // A sandbox removed under its pod: the wait ends and it reads as gone.
        let waiter = {
            let (rt, id) = (rt.clone(), pod.sandbox.id.clone());
            tokio::spawn(async move { rt.wait_sandbox(&id).await })
        };
        rt.remove_container(&pod.sandbox.id).await.expect("remove");
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("the sandbox wait ended")
            .expect("join")
            .ok();
        assert!(matches!(
            rt.sandbox(&pod.sandbox.id).await,
            Err(RuntimeError::NotFound(_))
        ));
        for id in [exits, runs] {
            rt.remove_container(&id).await.expect("remove");
            assert!(matches!(
                rt.inspect_container(&id).await,
                Err(RuntimeError::NotFound(_))
            ));
            rt.remove_container(&id).await.expect("removing it again is no error");
        }
    }
}

e2e::over_runtimes! {
    async fn attach_reaches_the_containers_own_process(kind) -> () {
        let rt = connected(kind).await;
        let pod = Pod::new(&rt, "attach").await;
        let attach = |tty: bool| ExecSpec {
            stdin: true,
            stdout: true,
            stderr: !tty,
            tty,
            ..Default::default()
        };
        for tty in [false, true] {
            let name = if tty { "tty" } else { "plain" };
            let id = pod
                .start(&ContainerSpec {
                    stdin: true,
                    tty,
                    ..pod.spec(name, "read line; echo got-$line; exit 4")
                })
                .await;
            let mut process = rt.attach(&id, &attach(tty)).await.expect("attach");
            let mut stdin = process.stdin.take().expect("attach with stdin");
            stdin.write_all(b"x\n").await.expect("write");
            stdin.flush().await.expect("flush");
            output_until(&mut process, "got-x").await;
            assert_eq!(rt.wait_container(&id).await.expect("wait"), 4, "{name}");
        }
    }
}

// ---- logs ----

e2e::over_runtimes! {
    async fn logs_keep_time_output_and_every_option(kind) -> () {
        let rt = connected(kind).await;
        let pod = Pod::new(&rt, "logs").await;
        let plain = pod
            .run(
                "plain",
                "echo one; sleep 0.2; echo two >&2; sleep 1.2; echo three; echo last",
            )
            .await;
        rt.wait_container(&plain).await.expect("wait");
        let all = entries(&pod, &plain, LogOptions::default()).await;
        assert_eq!(texts(&all), ["one\n", "two\n", "three\n", "last\n"]);
        assert_eq!(all[0].output, LogOutput::Stdout);
        assert_eq!(all[1].output, LogOutput::Stderr);
        assert!(all.iter().all(|e| e.time.is_some()), "{all:?}");
        assert!(all.windows(2).all(|w| w[0].time <= w[1].time));

        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        };
        assert_eq!(texts(&entries(&pod, &plain, tail(2)).await), ["three\n", "last\n"]);
        assert!(entries(&pod, &plain, tail(0)).await.is_empty());

        // The hint may return earlier entries of the same second, never
        // later ones lost.
        let since = all[2].time;
        let from = entries(
            &pod,
            &plain,
            LogOptions {
                since,
                ..Default::default()
            },
        )
        .await;
        assert!(texts(&from).ends_with(&["three\n".to_string(), "last\n".to_string()]));
        let second = since
            .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
            .expect("a time");
        assert!(from.iter().all(|e| e.time >= Some(second)), "{from:?}");

        // A terminal's output is split into lines, each with its time.
        let tty = pod
            .start(&ContainerSpec {
                tty: true,
                ..pod.spec("tty", "echo a; echo b")
            })
            .await;
        rt.wait_container(&tty).await.expect("wait");
        let lines = entries(&pod, &tty, LogOptions::default()).await;
        assert_eq!(texts(&lines), ["a\r\n", "b\r\n"]);
        assert!(lines.iter().all(|e| e.time.is_some()), "{lines:?}");

        // Following ends when the container exits.
        let follows = pod.run("follow", "echo start; sleep 1; echo end").await;
        let followed = entries(
            &pod,
            &follows,
            LogOptions {
                follow: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(texts(&followed), ["start\n", "end\n"]);

        // A container that is gone, or never was, is not found (a runtime
        // keeping no logs has none to find).
        rt.remove_container(&plain).await.expect("remove");
        if rt.keeps_logs() {
            for id in [plain.as_str(), "arhat-conformance-no-such-container"] {
                assert!(matches!(
                    rt.logs(id, &LogOptions::default()).await,
                    Err(RuntimeError::NotFound(_))
                ));
            }
        }
    }
}

// ---- the sandbox's network namespace ----

e2e::over_runtimes! {
    /// Port-forward dials the pod's loopback from inside its namespace, as
    /// a kubelet does: a server only on the pod's 127.0.0.1 is reached
    /// without the pod network.
    async fn port_forward_dials_inside_the_sandbox(kind) -> () {
        let rt = connected(kind).await;
        let pod = Pod::new(&rt, "forward").await;
        let web = pod
            .run(
                "web",
                "echo inside > /tmp/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp",
            )
            .await;
        let netns = rt.network_namespace(&pod.sandbox.id).await.expect("netns");
        let inode = |path: &std::path::Path| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("a namespace"))
        };
        assert_eq!(
            inode(&rt.network_namespace(&web).await.expect("netns")),
            inode(&netns),
            "a container is in its sandbox's namespace"
        );
        let page = e2e::wait_for("the page through the namespace", Duration::from_secs(20), || {
            let netns = netns.clone();
            async move {
                let mut conn = arhat::netns::dial(netns, 8080).await.ok()?;
                conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await.ok()?;
                let mut answer = String::new();
                conn.read_to_string(&mut answer).await.ok()?;
                answer.contains("inside").then_some(answer)
            }
        })
        .await;
        page.expect("the pod's loopback server answered");
    }
}

e2e::over_runtimes! {
    async fn the_pod_network_attaches_sandboxes(kind) -> () {
        pod_network(kind).await;
    }
}

/// Two sandboxes attached by the real CNI plugins: each has its own address,
/// one pod reaches the other's server and its hostPort is published on the
/// device; detached, the address is given back.
async fn pod_network(kind: RuntimeKind) {
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
        let pod = Pod::new(&rt, &format!("network-{i}")).await;
        let netns = rt
            .network_namespace(&pod.sandbox.id)
            .await
            .expect("the sandbox's namespace");
        let address = network
            .attach(&pod.sandbox.id, &netns, &ports)
            .await
            .expect("attach");
        assert_eq!(network.address(&pod.sandbox.id), Some(address));
        let web = pod
            .run(
                "web",
                "echo pod-$HOSTNAME > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
            )
            .await;
        pods.push((pod, address, web));
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
    for (pod, _, web) in &pods {
        rt.remove_container(web).await.expect("remove");
        rt.remove_container(&pod.sandbox.id).await.expect("remove");
        network.detach(&pod.sandbox.id).await.expect("detach");
        assert_eq!(network.address(&pod.sandbox.id), None);
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

// ---- images ----

e2e::over_runtimes! {
    /// A private image pulls only with the registry's credentials; what
    /// image garbage collection relies on holds: an image a container uses
    /// is in use and stays, one no container uses goes when removed.
    async fn images_pull_with_credentials_and_are_kept_while_used(kind) -> () {
        let rt = connected(kind).await;
        let dir = std::env::temp_dir().join(format!("arhat-conformance-{}", std::process::id()));
        let registry = e2e::registry::Registry::shared(&dir).await.expect("the registry");
        let image = registry.push_unique("conformance").expect("a unique image");
        assert_eq!(rt.image_id(&image).await.expect("image_id"), None, "only the registry has it");

        let refused = rt.pull_image(&image, None).await;
        assert!(matches!(refused, Err(RuntimeError::Pull { .. })), "{refused:?}");
        let wrong = PullAuth {
            server: registry.address.clone(),
            username: registry.username.clone(),
            password: "not-the-password".into(),
        };
        assert!(matches!(rt.pull_image(&image, Some(&wrong)).await, Err(RuntimeError::Pull { .. })));
        let auth = PullAuth {
            password: registry.password.clone(),
            ..wrong
        };
        let id = rt.pull_image(&image, Some(&auth)).await.expect("the pull with credentials");
        assert_eq!(rt.image_id(&image).await.expect("image_id"), Some(id.clone()));
        let (info_id, size) = rt
            .image_info(&image)
            .await
            .expect("image_info")
            .expect("the image is present");
        assert_eq!(info_id, id);
        assert!(size > 0, "an image has a size");

        let pod = Pod::new(&rt, "images").await;
        let user = pod
            .start(&ContainerSpec {
                image: image.clone(),
                ..pod.spec("user", "exit 0")
            })
            .await;
        rt.wait_container(&user).await.expect("wait");
        assert!(rt.images_in_use().await.expect("in use").contains(&id), "a stopped container still uses its image");
        let _ = rt.remove_image(&image).await;
        assert!(rt.image_id(&image).await.expect("image_id").is_some(), "an image in use stays");

        rt.remove_container(&user).await.expect("remove");
        assert!(!rt.images_in_use().await.expect("in use").contains(&id));
        rt.remove_image(&image).await.expect("remove_image");
        assert_eq!(rt.image_id(&image).await.expect("image_id"), None);
        rt.remove_image(&image).await.expect("an absent image is no error");
        assert_eq!(rt.image_info(&image).await.expect("image_info"), None);
        if let Some(store) = rt.image_store().await.expect("image_store") {
            assert!(store.is_dir(), "{} holds the images", store.display());
        }
    }
}
