//! Streaming verbs end to end through the real apiserver with real kubectl:
//! exec, port-forward and cp to containers on the device and to the device
//! host, in kubectl's default WebSocket mode (the Node declares
//! `ExtendWebSocketsToKubelet`, so the apiserver passes the WebSocket
//! through: v5 exec, SPDY tunnelled for port-forward) and in its SPDY mode
//! (proxied byte for byte).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use e2e::{
    TestEnv,
    pods::{busybox, create_pod, running_and_ready, wait_pod},
    pty::Pty,
    wait_for,
};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// How kubectl talks to the apiserver for these verbs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    WebSocket,
    Spdy,
}

const MODES: [Mode; 2] = [Mode::WebSocket, Mode::Spdy];

fn kubectl(env: &TestEnv, mode: Mode, args: &[&str]) -> Command {
    let mut cmd = env.cluster.kubectl_command(args);
    let ws = matches!(mode, Mode::WebSocket).to_string();
    cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", &ws)
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", &ws);
    cmd
}

/// Runs kubectl with `stdin`, returning (exit code, stdout, stderr).
fn run(mut cmd: Command, stdin: &[u8]) -> anyhow::Result<(i32, Vec<u8>, String)> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning kubectl")?;
    let mut input = child.stdin.take().context("stdin")?;
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok((
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn running_pod(env: &TestEnv, node: &str, name: &str, script: &str) -> anyhow::Result<()> {
    create_pod(
        env,
        node,
        name,
        json!({ "containers": [busybox("main", script)] }),
    )
    .await?;
    wait_pod(env, name, "running", RUN_TIMEOUT, |p| {
        running_and_ready(p).then_some(())
    })
    .await
}

/// The apiserver's count of kubectl WebSockets it passed through to a
/// kubelet as they were (`proxied_to_kubelet`), for one subresource.
fn proxied_to_kubelet(env: &TestEnv, subresource: &str) -> anyhow::Result<u64> {
    let metrics = env.cluster.kubectl(&["get", "--raw", "/metrics"])?;
    let series = format!(
        "apiserver_websocket_streaming_requests_total{{proxy_type=\"proxied_to_kubelet\",subresource=\"{subresource}\"}}"
    );
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

e2e::over_transports! {
async fn kubectl_exec_exit_codes_and_stdin(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("exec", transport).await?;
    let up = env.device_up("a", 10).await?;
    running_pod(&env, &up.name, "shell", "exec sleep 3600").await?;
    let ns = env.name.as_str();
    let passed_through = proxied_to_kubelet(&env, "exec")?;
    for mode in MODES {
        let (code, out, err) = run(
            kubectl(
                &env,
                mode,
                &[
                    "exec",
                    "-n",
                    ns,
                    "shell",
                    "-c",
                    "main",
                    "--",
                    "sh",
                    "-c",
                    "echo out; echo err >&2; exit 7",
                ],
            ),
            b"",
        )?;
        assert_eq!(
            (code, out.as_slice()),
            (7, &b"out\n"[..]),
            "{mode:?}: {err}"
        );
        assert!(err.contains("err\n"), "{mode:?}: {err}");

        let (code, out, err) = run(
            kubectl(&env, mode, &["exec", "-i", "-n", ns, "shell", "--", "cat"]),
            b"hello\nworld\n",
        )?;
        assert_eq!(
            (code, out.as_slice()),
            (0, &b"hello\nworld\n"[..]),
            "{mode:?}: stdin EOF reaches cat: {err}"
        );

        // 1 MiB through stdin and back, byte for byte.
        let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (code, out, err) = run(
            kubectl(&env, mode, &["exec", "-i", "-n", ns, "shell", "--", "cat"]),
            &big,
        )?;
        assert_eq!(code, 0, "{mode:?}: {err}");
        assert!(
            out == big,
            "{mode:?}: {} bytes back of {}",
            out.len(),
            big.len()
        );

        let (code, _, err) = run(
            kubectl(
                &env,
                mode,
                &["exec", "-n", ns, "shell", "--", "/no/such/binary"],
            ),
            b"",
        )?;
        assert_ne!(code, 0, "{mode:?}: {err}");
    }
    // kubectl's v5 WebSockets reached our endpoint as they were.
    let now = proxied_to_kubelet(&env, "exec")?;
    assert!(
        now >= passed_through + 4,
        "exec WebSockets passed through: {passed_through} then {now}"
    );
    // Unknown container: 404 naming it.
    let (code, _, err) = run(
        kubectl(
            &env,
            Mode::Spdy,
            &["exec", "-n", ns, "shell", "-c", "nope", "--", "true"],
        ),
        b"",
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    Ok(())
}
}

/// `kubectl port-forward` running, and the local port it listens on.
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start(
        env: &TestEnv,
        mode: Mode,
        ns: &str,
        target: &str,
        remote: u16,
    ) -> anyhow::Result<Self> {
        let mut child = kubectl(
            env,
            mode,
            &["port-forward", "-n", ns, target, &format!(":{remote}")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:PORT -> REMOTE"
        let port = e2e::Cluster::forwarded_port(&mut lines)?;
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(Self { child, port })
    }

    fn connect(&self) -> anyhow::Result<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(s)
    }

    /// `GET path` over a new forwarded connection; the body.
    fn get(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let mut s = self.connect()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        let body = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| all[p + 4..].to_vec())
            .context("no HTTP response")?;
        Ok(body)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(env: &TestEnv, ns: &str, pod: &str, path: &str) -> anyhow::Result<String> {
    let out = env
        .cluster
        .kubectl(&["exec", "-n", ns, pod, "--", "sha256sum", path])?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn local_sha256(data: &[u8]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("data");
    std::fs::write(&file, data)?;
    let out = Command::new("sha256sum").arg(&file).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

e2e::over_transports! {
async fn kubectl_port_forward_is_byte_exact_and_concurrent(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("portfwd", transport).await?;
    let up = env.device_up("a", 10).await?;
    // Only on the pod's loopback: reachable from inside its network namespace.
    running_pod(
        &env,
        &up.name,
        "web",
        // Written aside and moved into place whole, so a checksum never sees
        // a file still being written.
        "mkdir -p /tmp/gen && head -c 104857600 /dev/urandom > /tmp/gen/big && head -c 1048576 /dev/urandom > /tmp/gen/small && mv /tmp/gen /tmp/www && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
    )
    .await?;
    let ns = env.name.as_str();
    let big_sum = wait_for("the files written", Duration::from_secs(60), || async {
        sha256(&env, ns, "web", "/tmp/www/big")
            .ok()
            .filter(|s| s.len() == 64)
    })
    .await?;
    let small_sum = sha256(&env, ns, "web", "/tmp/www/small")?;
    let passed_through = proxied_to_kubelet(&env, "portforward")?;
    for mode in MODES {
        let pf = PortForward::start(&env, mode, ns, "pod/web", 8080)?;
        let big = pf.get("/big")?;
        assert_eq!(big.len(), 104_857_600, "{mode:?}");
        assert_eq!(local_sha256(&big)?, big_sum, "{mode:?}: 100 MiB byte-exact");
        let pf = std::sync::Arc::new(pf);
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let pf = pf.clone();
                std::thread::spawn(move || pf.get("/small"))
            })
            .collect();
        for w in workers {
            let body = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
            assert_eq!(
                (body.len(), local_sha256(&body)?),
                (1 << 20, small_sum.clone()),
                "{mode:?}: concurrent connection"
            );
        }
    }
    // kubectl's WebSocket (SPDY tunnelled) reached our endpoint as it was.
    let now = proxied_to_kubelet(&env, "portforward")?;
    assert!(
        now > passed_through,
        "port-forward WebSockets passed through: {passed_through} then {now}"
    );
    // A port nothing listens on: the connection fails and kubectl says why.
    let mut refused = kubectl(
        &env,
        Mode::Spdy,
        &["port-forward", "-n", ns, "pod/web", ":7777"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let stdout = refused.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let port: u16 = e2e::Cluster::forwarded_port(&mut lines)?;
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut sink = Vec::new();
    let _ = conn.read_to_end(&mut sink);
    let _ = refused.kill();
    let out = refused.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(sink.is_empty());
    assert!(
        stderr.contains("7777") && stderr.contains("refused"),
        "{stderr}"
    );
    Ok(())
}
}

e2e::over_transports! {
async fn kubectl_cp_both_ways(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("cp", transport).await?;
    let up = env.device_up("a", 10).await?;
    running_pod(&env, &up.name, "box", "exec sleep 3600").await?;
    let ns = env.name.as_str();
    let data: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = env.dir.join("ten-mib");
    std::fs::write(&local, &data)?;
    for mode in MODES {
        let to = format!("{ns}/box:/tmp/ten-mib");
        let (code, _, err) = run(
            kubectl(&env, mode, &["cp", &local.to_string_lossy(), &to]),
            b"",
        )?;
        assert_eq!(code, 0, "{mode:?} cp in: {err}");
        assert_eq!(
            sha256(&env, ns, "box", "/tmp/ten-mib")?,
            local_sha256(&data)?,
            "{mode:?}"
        );
        let back = env.dir.join(format!("back-{mode:?}"));
        let (code, _, err) = run(
            kubectl(&env, mode, &["cp", &to, &back.to_string_lossy()]),
            b"",
        )?;
        assert_eq!(code, 0, "{mode:?} cp out: {err}");
        assert!(
            std::fs::read(&back)? == data,
            "{mode:?}: 10 MiB back byte-exact"
        );
    }
    Ok(())
}
}

e2e::over_transports! {
async fn host_pod_verbs_only_when_allowed(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("hostverbs", transport).await?;
    let mut up = env.device_up("a", 10).await?;
    let ns = env.name.clone();
    let host = up.name.clone();
    // Off by default: 403 naming the key.
    let refused = wait_for("host exec refused", Duration::from_secs(60), || async {
        let (code, _, err) = run(
            kubectl(&env, Mode::Spdy, &["exec", "-n", &ns, &host, "--", "true"]),
            b"",
        )
        .ok()?;
        (code != 0 && err.contains("host.allowExec")).then_some(err)
    })
    .await?;
    assert!(refused.contains("host.allowExec"), "{refused}");
    let (code, _, err) = run(
        kubectl(&env, Mode::WebSocket, &["attach", "-n", &ns, &host]),
        b"",
    )?;
    assert!(code != 0 && err.contains("host.allowAttach"), "{err}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let host_port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let _ = conn.write_all(b"hello from the host\n");
        }
    });
    {
        let pf = PortForward::start(&env, Mode::Spdy, &ns, &format!("pod/{host}"), host_port)?;
        let mut s = pf.connect()?;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty(), "forwarded although not allowed");
    }

    up.arhat.stop()?;
    let allowed = "host:\n  allowExec: true\n  allowAttach: true\n  allowPortForward: true\n";
    up.arhat = env.start_arhat_with(&up.name, "2", &[], allowed)?;
    env.wait_ready(&up.name, "True", None, Duration::from_secs(60))
        .await?;
    for mode in MODES {
        let (code, out, err) = wait_for("host exec", Duration::from_secs(30), || async {
            run(
                kubectl(
                    &env,
                    mode,
                    &[
                        "exec",
                        "-n",
                        &ns,
                        &host,
                        "--",
                        "sh",
                        "-c",
                        "echo $((6*7)); exit 4",
                    ],
                ),
                b"",
            )
            .ok()
            .filter(|(code, _, _)| *code == 4)
        })
        .await?;
        assert_eq!((code, out.as_slice()), (4, &b"42\n"[..]), "{mode:?}: {err}");
        let (_, out, err) = run(
            kubectl(&env, mode, &["exec", "-i", "-n", &ns, &host, "--", "cat"]),
            b"to the host\n",
        )?;
        assert_eq!(out, b"to the host\n", "{mode:?}: {err}");
        // A terminal on the host: its own pty, resized with the client's.
        let mut term = Pty::spawn(
            kubectl(&env, mode, &["exec", "-it", "-n", &ns, &host, "--", "sh"]),
            80,
            24,
        )?;
        term.type_text("echo host-$((40+2)); stty size\r")?;
        term.expect("host-42", Duration::from_secs(30))?;
        term.expect("24 80", Duration::from_secs(10))?;
        term.resize(100, 30)?;
        std::thread::sleep(Duration::from_millis(500));
        term.type_text("stty size\r")?;
        term.expect("30 100", Duration::from_secs(10))?;
        term.type_text("exit 6\r")?;
        assert_eq!(term.wait(Duration::from_secs(20))?, 6, "{mode:?}: host -it");
        // attach on the host: a login shell of its own.
        let mut term = Pty::spawn(
            kubectl(&env, mode, &["attach", "-it", "-n", &ns, &host]),
            80,
            24,
        )?;
        term.type_text("echo attached-$((6*7))\r")?;
        term.expect("attached-42", Duration::from_secs(30))?;
        term.type_text("exit\r")?;
        term.wait(Duration::from_secs(20))?;
        let pf = PortForward::start(&env, mode, &ns, &format!("pod/{host}"), host_port)?;
        let mut s = pf.connect()?;
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line)?;
        assert_eq!(line, "hello from the host\n", "{mode:?}");

        // kubectl cp both ways, though the host may have no tar (arhat
        // answers kubectl's tar commands itself).
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
            .collect();
        let local = env.dir.join(format!("to-host-{mode:?}"));
        std::fs::write(&local, &data)?;
        let on_host = env.dir.join(format!("on-host-{mode:?}"));
        let target = format!("{ns}/{host}:{}", on_host.display());
        let (code, _, err) = run(
            kubectl(&env, mode, &["cp", &local.to_string_lossy(), &target]),
            b"",
        )?;
        assert_eq!(code, 0, "{mode:?} cp to the host: {err}");
        assert!(
            std::fs::read(&on_host)? == data,
            "{mode:?}: file on the host"
        );
        let back = env.dir.join(format!("from-host-{mode:?}"));
        let (code, _, err) = run(
            kubectl(&env, mode, &["cp", &target, &back.to_string_lossy()]),
            b"",
        )?;
        assert_eq!(code, 0, "{mode:?} cp from the host: {err}");
        assert!(
            std::fs::read(&back)? == data,
            "{mode:?}: file back from the host"
        );
    }
    Ok(())
}
}

e2e::over_transports! {
async fn kubectl_exec_it_drives_a_terminal(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("exectty", transport).await?;
    let up = env.device_up("a", 10).await?;
    running_pod(&env, &up.name, "term", "exec sleep 3600").await?;
    let ns = env.name.as_str();
    for mode in MODES {
        let mut term = Pty::spawn(
            kubectl(&env, mode, &["exec", "-it", "-n", ns, "term", "--", "sh"]),
            80,
            24,
        )?;
        term.type_text("echo hello-$((40+2))\r")?;
        term.expect("hello-42", Duration::from_secs(30))?;
        // The process started at the client's size, before the first keys.
        term.type_text("stty size\r")?;
        term.expect("24 80", Duration::from_secs(10))?;
        term.resize(120, 40)?;
        // The resize travels separately from stdin: allow it to land.
        std::thread::sleep(Duration::from_millis(500));
        term.type_text("stty size\r")?;
        term.expect("40 120", Duration::from_secs(10))?;
        term.type_text("exit 3\r")?;
        assert_eq!(term.wait(Duration::from_secs(20))?, 3, "{mode:?}");
    }
    Ok(())
}
}

e2e::over_transports! {
async fn kubectl_attach_with_and_without_a_terminal(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("attach", transport).await?;
    let up = env.device_up("a", 10).await?;
    let ns = env.name.as_str();
    create_pod(
        &env,
        &up.name,
        "ticker",
        json!({ "containers": [busybox("main", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done")] }),
    )
    .await?;
    create_pod(
        &env,
        &up.name,
        "console",
        json!({ "containers": [{ "name": "main", "image": e2e::images::BUSYBOX, "command": ["sh"], "stdin": true, "tty": true }] }),
    )
    .await?;
    for pod in ["ticker", "console"] {
        wait_pod(&env, pod, "running", RUN_TIMEOUT, |p| {
            running_and_ready(p).then_some(())
        })
        .await?;
    }
    for mode in MODES {
        // Without a terminal: the running process's output as it comes.
        let mut attach = kubectl(&env, mode, &["attach", "-n", ns, "ticker", "-c", "main"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut lines = BufReader::new(attach.stdout.take().context("stdout")?).lines();
        let first = lines.next().context("attach ended")??;
        let second = lines.next().context("attach ended")??;
        let n = |l: &str| l.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok());
        assert_eq!(
            n(&second),
            n(&first).map(|n| n + 1),
            "{mode:?}: {first} then {second}"
        );
        let _ = attach.kill();
        let _ = attach.wait();

        // With one: the container's own shell, typed into.
        let mut term = Pty::spawn(
            kubectl(
                &env,
                mode,
                &["attach", "-it", "-n", ns, "console", "-c", "main"],
            ),
            80,
            24,
        )?;
        term.type_text("echo attached-$((6*7))\r")?;
        term.expect("attached-42", Duration::from_secs(30))?;
    }
    Ok(())
}
}

e2e::over_transports! {
async fn a_client_that_goes_away_leaves_nothing_behind(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("execgone", transport).await?;
    let up = env.device_up("a", 10).await?;
    running_pod(
        &env,
        &up.name,
        "host",
        // A server that ignores half-closes: only a teardown ends its connections.
        "nc -ll -p 8080 -e sleep 3600 & exec sleep 3600",
    )
    .await?;
    let ns = env.name.as_str();
    let sleepers = || -> anyhow::Result<usize> {
        let ps = env
            .cluster
            .kubectl(&["exec", "-n", ns, "host", "--", "ps", "-o", "args"])?;
        Ok(ps.lines().filter(|l| l.trim() == "sleep 4242").count())
    };
    // arhat's sockets to the pod's port: the device's end of every
    // forwarded connection, open exactly as long as its session-layer stream.
    let pod: k8s_openapi::api::core::v1::Pod = kube::Api::namespaced(env.client.clone(), ns)
        .get("host")
        .await?;
    let container = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().and_then(|c| c.container_id.clone()))
        .and_then(|id| id.strip_prefix("docker://").map(str::to_string))
        .context("the pod's container id")?;
    let inspected = Command::new("docker")
        .args(["inspect", "--format", "{{.State.Pid}}", &container])
        .output()?;
    let pod_pid = String::from_utf8_lossy(&inspected.stdout)
        .trim()
        .to_string();
    let arhat_pid = up.arhat.pid();
    let forwarded = || -> anyhow::Result<usize> {
        let held: std::collections::HashSet<String> =
            std::fs::read_dir(format!("/proc/{arhat_pid}/fd"))?
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect();
        let mut n = 0;
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{pod_pid}/net/{table}"))?;
            // local, remote (hex addr:port), ..., inode is the 10th column.
            n += text
                .lines()
                .skip(1)
                .filter(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.get(2).is_some_and(|r| r.ends_with(":1F90"))
                        && cols.get(9).is_some_and(|i| held.contains(*i))
                })
                .count();
        }
        Ok(n)
    };
    for mode in MODES {
        let mut clients: Vec<Child> = (0..4)
            .map(|_| {
                kubectl(
                    &env,
                    mode,
                    &["exec", "-i", "-n", ns, "host", "--", "sleep", "4242"],
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            })
            .collect::<Result<_, _>>()?;
        wait_for("4 exec processes", Duration::from_secs(30), || async {
            (sleepers().ok()? == 4).then_some(())
        })
        .await?;
        // Idle forwarded connections: nothing sent, so only teardown ends them.
        let pf = PortForward::start(&env, mode, ns, "pod/host", 8080)?;
        let idle: Vec<TcpStream> = (0..4).map(|_| pf.connect()).collect::<Result<_, _>>()?;
        wait_for(
            "4 forwarded connections",
            Duration::from_secs(30),
            || async { (forwarded().ok()? == 4).then_some(()) },
        )
        .await
        .with_context(|| format!("{mode:?}"))?;
        for c in &mut clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(pf);
        wait_for(
            "exec processes killed with their clients",
            Duration::from_secs(30),
            || async { (sleepers().ok()? == 0).then_some(()) },
        )
        .await
        .with_context(|| format!("{mode:?}"))?;
        wait_for(
            "forwarded connections closed with their client",
            Duration::from_secs(30),
            || async { (forwarded().ok()? == 0).then_some(()) },
        )
        .await
        .with_context(|| format!("{mode:?}"))?;
        drop(idle);
    }
    Ok(())
}
}

type ApiWebSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `path` on the apiserver as cluster admin, offering
/// `protocol`, as the Python client's `stream` opens one (a subprotocol the
/// apiserver passes through to the kubelet).
async fn apiserver_websocket(path: &str, protocol: &str, ca: &str) -> anyhow::Result<ApiWebSocket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let cp = testbed::ControlPlane::shared().await?;
    let admin = cp.ca().issue_client("ws-admin", &["system:masters"])?;
    let config = e2e::kubelet::client_config(ca, e2e::kubelet::Caller::Certificate(&admin))?;
    let server = cp.server_url().trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&server).await?;
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    let mut request = format!("wss://{server}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse()?);
    let (ws, response) = tokio_tungstenite::client_async(request, tls).await?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    anyhow::ensure!(
        chosen == protocol,
        "subprotocol {chosen:?}, asked {protocol:?}"
    );
    Ok(ws)
}

/// One channel message, raw or base64 as the protocol says.
fn channel_message(
    protocol: &str,
    channel: u8,
    data: &[u8],
) -> tokio_tungstenite::tungstenite::Message {
    use base64::Engine as _;
    use tokio_tungstenite::tungstenite::Message;
    if protocol.contains("base64") {
        let mut text = String::from(char::from(b'0' + channel));
        text.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
        Message::Text(text.into())
    } else {
        let mut bytes = vec![channel];
        bytes.extend_from_slice(data);
        Message::Binary(bytes.into())
    }
}

/// Every channel message until the server closes: (channel, data) in order.
async fn channel_messages(
    ws: &mut ApiWebSocket,
    protocol: &str,
) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    use base64::Engine as _;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut got = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
        match message? {
            Message::Binary(b) if !b.is_empty() => got.push((b[0], b[1..].to_vec())),
            Message::Text(t) if protocol.contains("base64") && !t.is_empty() => got.push((
                t.as_bytes()[0] - b'0',
                base64::engine::general_purpose::STANDARD.decode(&t.as_bytes()[1..])?,
            )),
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(got)
}

/// A WebSocket exec through the apiserver, sending each (pause, channel,
/// data) in turn: (stdout, stderr, status).
async fn websocket_exec(
    env: &TestEnv,
    pod: &str,
    query: &str,
    protocol: &str,
    send: &[(Duration, u8, &[u8])],
) -> anyhow::Result<(Vec<u8>, Vec<u8>, serde_json::Value)> {
    use futures::SinkExt;
    let ca = std::fs::read_to_string(&env.cluster.ca_file)?;
    let path = format!("/api/v1/namespaces/{}/pods/{pod}/exec?{query}", env.name);
    let mut ws = apiserver_websocket(&path, protocol, &ca).await?;
    for (after, channel, data) in send {
        tokio::time::sleep(*after).await;
        ws.send(channel_message(protocol, *channel, data)).await?;
    }
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    for (channel, data) in channel_messages(&mut ws, protocol).await? {
        match channel {
            1 => out.extend(data),
            2 => err.extend(data),
            3 => status.extend(data),
            _ => {}
        }
    }
    let status = if status.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&status)?
    };
    Ok((out, err, status))
}

/// A WebSocket port-forward through the apiserver (channel 0 data, 1
/// error, each first carrying the port): what came back on each.
async fn websocket_port_forward(
    env: &TestEnv,
    pod: &str,
    port: u16,
    protocol: &str,
    request: &[u8],
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    use futures::SinkExt;
    let ca = std::fs::read_to_string(&env.cluster.ca_file)?;
    let path = format!(
        "/api/v1/namespaces/{}/pods/{pod}/portforward?ports={port}",
        env.name
    );
    let mut ws = apiserver_websocket(&path, protocol, &ca).await?;
    ws.send(channel_message(protocol, 0, request)).await?;
    let (mut data, mut error) = (Vec::new(), Vec::new());
    for (channel, bytes) in channel_messages(&mut ws, protocol).await? {
        match channel {
            0 => data.extend(bytes),
            1 => error.extend(bytes),
            _ => {}
        }
    }
    let prefix = port.to_le_bytes();
    for (name, got) in [("data", &mut data), ("error", &mut error)] {
        anyhow::ensure!(
            got.starts_with(&prefix),
            "{name} channel does not start with the port: {got:?}"
        );
        got.drain(..2);
    }
    Ok((data, error))
}

e2e::over_transports! {
async fn websocket_clients_reach_the_kubelet_endpoint(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("wsexec", transport).await?;
    let up = env.device_up("a", 10).await?;
    running_pod(
        &env,
        &up.name,
        "ws",
        "echo ws-page > /tmp/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp",
    )
    .await?;
    let query = "command=sh&command=-c&command=echo+out%3B+echo+err+%3E%262%3B+exit+5&stdout=true&stderr=true";
    for protocol in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let (out, err, status) = websocket_exec(&env, "ws", query, protocol, &[]).await?;
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"out\n"[..], &b"err\n"[..]),
            "{protocol}"
        );
        assert_eq!(status["reason"], "NonZeroExitCode", "{protocol}: {status}");
        assert_eq!(status["details"]["causes"][0]["message"], "5", "{protocol}");
    }
    // stdin over base64 text frames.
    let query = "command=head&command=-n&command=1&stdin=true&stdout=true&stderr=true";
    let typed = [(Duration::ZERO, 0, &b"typed\n"[..])];
    let (out, _, status) =
        websocket_exec(&env, "ws", query, "base64.channel.k8s.io", &typed).await?;
    assert_eq!(out, b"typed\n");
    assert!(
        status.is_null(),
        "older protocols send no status on success: {status}"
    );
    // A terminal's first size trails the first keys (in SPDY it is a stream
    // of its own): the terminal is sized before the keys reach it.
    let query = "command=sh&stdin=true&stdout=true&tty=true";
    let keys_then_size = [
        (Duration::ZERO, 0, &b"stty size; exit\n"[..]),
        (Duration::from_millis(300), 4, br#"{"Width":80,"Height":24}"#),
    ];
    let (out, _, _) =
        websocket_exec(&env, "ws", query, "v4.channel.k8s.io", &keys_then_size).await?;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("\n24 80"), "{out:?}");
    // port-forward over channels, both flavours; then a refused port.
    for protocol in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let (data, error) = websocket_port_forward(
            &env,
            "ws",
            8080,
            protocol,
            b"GET /index.html HTTP/1.0\r\n\r\n",
        )
        .await?;
        let text = String::from_utf8_lossy(&data);
        assert!(
            text.starts_with("HTTP/1.") && text.ends_with("ws-page\n"),
            "{protocol}: {text}"
        );
        assert!(
            error.is_empty(),
            "{protocol}: {}",
            String::from_utf8_lossy(&error)
        );
    }
    let (data, error) =
        websocket_port_forward(&env, "ws", 7777, "v4.channel.k8s.io", b"hello").await?;
    let error = String::from_utf8_lossy(&error);
    assert!(data.is_empty());
    assert!(
        error.contains("7777") && error.contains("refused"),
        "{error}"
    );
    Ok(())
}
}

/// `kubectl exec -i <pod> -- cat`: a line typed, and the same line back.
struct Cat {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<std::io::Result<String>>,
}

impl Cat {
    fn start(env: &TestEnv, pod: &str) -> anyhow::Result<Self> {
        let mut child = kubectl(
            env,
            Mode::WebSocket,
            &["exec", "-i", "-n", &env.name, pod, "--", "cat"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.by_ref() {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    /// Types `line {i}` and waits (at most 60 s) for it back; the round trip.
    fn echo(&mut self, i: usize) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        writeln!(self.stdin, "line {i}")?;
        self.stdin.flush()?;
        let got = self.lines.recv_timeout(Duration::from_secs(60))??;
        anyhow::ensure!(got == format!("line {i}"), "line {i} came back as {got:?}");
        Ok(started.elapsed())
    }
}

impl Drop for Cat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker crashes (SIGKILL) and comes back five times in a minute while
/// a port-forward downloads a 4 MiB file over and over and an interactive
/// `cat` through exec answers a line every half second: both sides resume
/// their session on new links each time, every download is byte-exact (or
/// fails with a clear error) and every line comes back, in order.
#[tokio::test(flavor = "multi_thread")]
async fn mqtt_broker_restarted_five_times_in_a_minute_under_exec_and_port_forward()
-> anyhow::Result<()> {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let env = TestEnv::over("brokerchaos", e2e::transport::MQTT).await?;
    let up = env.device_up("a", 10).await?;
    running_pod(
        &env,
        &up.name,
        "web",
        "mkdir -p /tmp/gen && head -c 4194304 /dev/urandom > /tmp/gen/big && mv /tmp/gen /tmp/www && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
    )
    .await?;
    let ns = env.name.as_str();
    let sum = wait_for("the file written", Duration::from_secs(60), || async {
        sha256(&env, ns, "web", "/tmp/www/big")
            .ok()
            .filter(|s| s.len() == 64)
    })
    .await?;
    let pf = PortForward::start(&env, Mode::WebSocket, ns, "pod/web", 8080)?;
    let mut cat = Cat::start(&env, "web")?;
    let done = Arc::new(AtomicBool::new(false));
    // (exact, failed with an error, wrong bytes)
    let downloads = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = (0u32, Vec::new(), 0u32);
            while !done.load(Ordering::Relaxed) {
                match pf.get("/big") {
                    Ok(body) if local_sha256(&body).ok().as_ref() == Some(&sum) => seen.0 += 1,
                    Ok(body) => {
                        eprintln!("a download came back wrong: {} bytes", body.len());
                        seen.2 += 1;
                    }
                    Err(e) => seen.1.push(format!("{e:#}")),
                }
                // Paced: a download back to back with the next starves the
                // binary's other MQTT tests of CPU on a 2-core machine.
                std::thread::sleep(Duration::from_millis(500));
            }
            seen
        })
    };
    let typing = {
        let done = done.clone();
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                cat.echo(i)?;
                i += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(i)
        })
    };
    let mut outcome = e2e::chaos::Outcome::default();
    for _ in 0..e2e::chaos::rounds() {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let resumed = up.arhat.log().matches("session resumed").count();
            env.with_broker(|b| b.restart())
                .context("the test's broker")??;
            outcome.injected += 1;
            let restarted = std::time::Instant::now();
            wait_for(
                "the device's session resumed",
                Duration::from_secs(60),
                || async {
                    (up.arhat.log().matches("session resumed").count() > resumed).then_some(())
                },
            )
            .await?;
            outcome.back_to_ready.push(restarted.elapsed());
            tokio::time::sleep(Duration::from_secs(6).saturating_sub(restarted.elapsed())).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    done.store(true, Ordering::Relaxed);
    let (exact, errors, wrong) = downloads
        .join()
        .map_err(|_| anyhow::anyhow!("the downloads panicked"))?;
    let lines = typing
        .join()
        .map_err(|_| anyhow::anyhow!("the typing panicked"))?;
    outcome.corrupted = wrong + u32::from(lines.is_err());
    outcome.record("MQTT broker restarted 5 times a minute under exec and port-forward");
    eprintln!(
        "{exact} downloads exact, {} failed with an error ({errors:?}), {wrong} wrong",
        errors.len()
    );
    let lines = lines.context("the interactive exec")?;
    eprintln!("{lines} lines typed and echoed in order");
    assert_eq!(wrong, 0, "downloads with wrong bytes");
    assert!(exact > 0, "no download got through");
    assert!(
        up.arhat.log().contains("session resumed"),
        "the device resumed its session:\n{}",
        up.arhat.log_tail(20)
    );
    Ok(())
}

e2e::over_transports! {
/// A shell answers while a port-forward downloads as fast as it can: the
/// download (4 GiB, sparse) outlasts the typing, so a starved shell would
/// hang here rather than answer late.
async fn a_shell_answers_during_a_bulk_port_forward(transport) -> anyhow::Result<()> {
    use std::sync::{Arc, atomic::{AtomicBool, AtomicU64, Ordering}};
    let env = TestEnv::over("busyshell", transport).await?;
    let up = env.device_up("a", 10).await?;
    running_pod(
        &env,
        &up.name,
        "bulk",
        "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1M count=0 seek=4096 && exec httpd -f -p 8080 -h /tmp/www",
    )
    .await?;
    let pf = PortForward::start(&env, Mode::WebSocket, &env.name, "pod/bulk", 8080)?;
    let mut conn = pf.connect()?;
    write!(conn, "GET /big HTTP/1.0\r\n\r\n")?;
    let (received, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let downloader = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
        })
    };
    wait_for("the download under way", Duration::from_secs(30), || {
        let got = received.load(Ordering::Relaxed);
        async move { (got > 4 << 20).then_some(()) }
    })
    .await?;
    let mut cat = Cat::start(&env, "bulk")?;
    cat.echo(0)?;
    // Typed at a person's pace, so the download has time to show it kept going.
    let before = received.load(Ordering::Relaxed);
    let mut rtts = Vec::new();
    for i in 1..=20 {
        std::thread::sleep(Duration::from_millis(100));
        rtts.push(cat.echo(i)?);
    }
    let during = received.load(Ordering::Relaxed) - before;
    let still_running = !downloader.is_finished();
    stop.store(true, Ordering::Relaxed);
    drop(pf);
    anyhow::ensure!(
        still_running && during > 1 << 20,
        "the download ran the whole time ({during} bytes while typing)\n{}",
        up.logs(20)
    );
    rtts.sort();
    eprintln!(
        "{}: 20 lines echoed during the download: median {:?}, worst {:?}; {} MiB downloaded in those 2 s",
        transport.short(),
        rtts[10],
        rtts[19],
        during >> 20
    );
    Ok(())
}
}
