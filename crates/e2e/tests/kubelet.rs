//! The kubelet endpoint, end to end: `kubectl logs` through the real
//! apiserver to containers on the device and to the device host, and the
//! endpoint trusted both ways (the apiserver verifies its certificate; it
//! authenticates and authorizes every caller).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use e2e::{
    TestEnv,
    cluster::node_address,
    kubelet::{Caller, get, port},
    pods::{busybox, create_pod, running_and_ready, wait_pod},
    wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// `kubectl logs` in the test's namespace; Err carries kubectl's stderr.
fn logs(env: &TestEnv, namespace: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["logs", "-n", namespace];
    all.extend_from_slice(args);
    let out = env
        .cluster
        .kubectl_output(&all)
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `kubectl logs -f` and hands its lines over a channel.
struct Follow {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Follow {
    fn start(env: &TestEnv, namespace: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(&env.cluster.kube_binary)
            .arg("kubectl")
            .arg("--kubeconfig")
            .arg(&env.cluster.admin_kubeconfig)
            .args(["logs", "-f", "-n", namespace])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// Waits for a line satisfying `want`.
    fn wait(&self, what: &str, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        anyhow::bail!("kubectl logs -f never showed {what}; saw {seen:?}")
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tick(line: &str) -> Option<u64> {
    line.strip_prefix("tick ")?.parse().ok()
}

fn is_timestamped(line: &str, text: &str) -> bool {
    // 2026-11-25T05:00:00.123456789Z <text>
    let Some((stamp, rest)) = line.split_once(' ') else {
        return false;
    };
    rest == text
        && stamp.len() == 30
        && stamp.ends_with('Z')
        && stamp.parse::<jiff::Timestamp>().is_ok()
}

e2e::over_transports! {
async fn kubectl_logs_with_every_option(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("logs", transport).await?;
    let mut up = env.device_up("a", 10).await?;
    let ns = env.name.clone();
    create_pod(
        &env,
        &up.name,
        "talker",
        json!({ "containers": [busybox("talker", "echo first; echo second; echo third; sleep 2; echo later; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done")] }),
    )
    .await?;
    wait_pod(&env, "talker", "running", RUN_TIMEOUT, |p| {
        running_and_ready(p).then_some(())
    })
    .await?;
    let all = wait_for("tick lines", Duration::from_secs(20), || async {
        logs(&env, &ns, &["talker"])
            .ok()
            .filter(|l| l.contains("tick 2\n"))
    })
    .await?;
    assert!(
        all.starts_with("first\nsecond\nthird\nlater\ntick 1\n"),
        "{all}"
    );

    // --tail and --limit-bytes.
    let tail = logs(&env, &ns, &["talker", "--tail=1"]).map_err(anyhow::Error::msg)?;
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    assert!(tail.starts_with("tick "), "{tail:?}");
    let limited = logs(&env, &ns, &["talker", "--limit-bytes=8"]).map_err(anyhow::Error::msg)?;
    assert_eq!(limited, "first\nse");

    // --timestamps: the kubelet's RFC 3339 with nanoseconds, before each line.
    let stamped = logs(&env, &ns, &["talker", "--timestamps"]).map_err(anyhow::Error::msg)?;
    let lines: Vec<&str> = stamped.lines().collect();
    assert!(is_timestamped(lines[0], "first"), "{stamped}");
    assert!(is_timestamped(lines[3], "later"), "{stamped}");

    // --since-time at the second of "later" (kubectl sends whole seconds):
    // "later" and after, none of the lines written two seconds before it.
    let later_at = lines[3].split(' ').next().unwrap_or_default();
    let since = logs(&env, &ns, &["talker", &format!("--since-time={later_at}")])
        .map_err(anyhow::Error::msg)?;
    assert!(since.starts_with("later\ntick 1\n"), "{since}");
    let recent = logs(&env, &ns, &["talker", "--since=1h"]).map_err(anyhow::Error::msg)?;
    assert!(recent.starts_with("first\n"), "{recent}");

    // -f sees lines as they are written.
    let newest = logs(&env, &ns, &["talker", "--tail=1"])
        .ok()
        .as_deref()
        .and_then(|l| tick(l.trim()))
        .unwrap_or(0);
    let follow = Follow::start(&env, &ns, &["talker", "--tail=1"])?;
    follow.wait(&format!("a tick after {}", newest + 2), |l| {
        tick(l).is_some_and(|n| n > newest + 2)
    })?;
    drop(follow);

    // No previous instance yet: refused, naming the container.
    let previous = logs(&env, &ns, &["talker", "--previous"]);
    assert!(
        previous.as_ref().is_err_and(|e| e.contains("talker")),
        "{previous:?}"
    );

    // The device goes away: the error says so.
    up.arhat.stop()?;
    env.wait_ready(&up.name, "False", None, Duration::from_secs(60))
        .await?;
    let offline = logs(&env, &ns, &["talker"]);
    assert!(
        offline.as_ref().is_err_and(|e| e.contains("disconnected")),
        "{offline:?}"
    );
    Ok(())
}
}

e2e::over_transports! {
async fn kubectl_logs_previous_after_a_restart(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("logs-prev", transport).await?;
    let up = env.device_up("a", 10).await?;
    let ns = env.name.clone();
    create_pod(
        &env,
        &up.name,
        "crasher",
        json!({ "containers": [busybox("crasher", "echo run-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 3")] }),
    )
    .await?;
    wait_pod(&env, "crasher", "restarted once", RUN_TIMEOUT, |p: &Pod| {
        let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
        (c.restart_count >= 1 && c.state.as_ref()?.waiting.is_none()).then_some(())
    })
    .await?;
    let current = logs(&env, &ns, &["crasher"]).map_err(anyhow::Error::msg)?;
    let previous = logs(&env, &ns, &["crasher", "--previous"]).map_err(anyhow::Error::msg)?;
    assert!(current.starts_with("run-"), "{current:?}");
    assert!(previous.starts_with("run-"), "{previous:?}");
    assert_ne!(
        current, previous,
        "the previous instance printed its own id"
    );
    Ok(())
}
}

e2e::over_transports! {
async fn kubectl_logs_reads_across_rotated_files(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("rotate", transport).await?;
    let up = env
        .device_up_configured(
            "a",
            5,
            json!({}),
            "runtime:\n  logs:\n    maxSize: 64Ki\n    maxFiles: 4\n",
        )
        .await?;
    let name = up.name.clone();
    // About 125 KiB as Docker stores it: two files or more, none dropped.
    create_pod(
        &env,
        &name,
        "chatty",
        json!({ "containers": [busybox("app", "for i in $(seq 1 1000); do printf 'line %04d %050d\\n' $i 0; done; exec sleep 3600")] }),
    )
    .await?;
    let id = wait_pod(&env, "chatty", "running", RUN_TIMEOUT, |p: &Pod| {
        running_and_ready(p)
            .then(|| e2e::pods::container_id(p))
            .flatten()
    })
    .await?;
    let all = wait_for("every line logged", RUN_TIMEOUT, || async {
        let text = logs(&env, &env.name, &["chatty"]).ok()?;
        text.contains("line 1000").then_some(text)
    })
    .await?;
    let log_path = e2e::images::log_path(&id)?;
    assert!(
        std::path::Path::new(&format!("{log_path}.1")).exists(),
        "the log rotated ({log_path}.1)"
    );
    assert!(
        !std::path::Path::new(&format!("{log_path}.4")).exists(),
        "at most 4 files are kept"
    );
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 1000, "complete across the rotation");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!("line {:04} ", i + 1)),
            "{i}: {line}"
        );
    }
    let tail = logs(&env, &env.name, &["chatty", "--tail", "3"]).map_err(anyhow::Error::msg)?;
    assert_eq!(tail.lines().count(), 3);
    assert!(
        tail.lines()
            .last()
            .is_some_and(|l| l.starts_with("line 1000"))
    );
    Ok(())
}
}

e2e::over_transports! {
async fn host_pod_shows_the_host_log_files_only_when_allowed(transport) -> anyhow::Result<()> {
    let env = TestEnv::over("hostlogs", transport).await?;
    let mut up = env.device_up("a", 10).await?;
    let ns = env.name.clone();
    let host_pod: kube::Api<Pod> = kube::Api::namespaced(env.client.clone(), &ns);
    let pod = wait_for("the host pod Running and Ready", RUN_TIMEOUT, || async {
        let pod = host_pod.get_opt(&up.name).await.ok()??;
        let status = pod.status.as_ref()?;
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (status.phase.as_deref() == Some("Running") && ready).then_some(pod)
    })
    .await?;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(up.name.as_str())
    );

    // Off by default: 403 naming the key that enables it.
    let refused = wait_for("host logs refused", Duration::from_secs(30), || async {
        logs(&env, &ns, &[&up.name]).err()
    })
    .await?;
    assert!(refused.contains("host.logFiles"), "{refused}");

    // Allowed: the files' content, and new lines as they are written.
    let file = env.dir.join("host.log");
    std::fs::write(&file, "boot ok\nservice up\n")?;
    up.arhat.stop()?;
    let host = format!("host:\n  logFiles:\n    - {}\n", file.display());
    up.arhat = env.start_arhat_with(&up.name, "2", &[], &host)?;
    env.wait_ready(&up.name, "True", None, Duration::from_secs(60))
        .await?;
    let shown = wait_for("host logs", Duration::from_secs(30), || async {
        logs(&env, &ns, &[&up.name]).ok()
    })
    .await?;
    assert_eq!(shown, "boot ok\nservice up\n");
    let tail =
        logs(&env, &ns, &[&up.name, "-c", "host", "--tail=1"]).map_err(anyhow::Error::msg)?;
    assert_eq!(tail, "service up\n");
    let follow = Follow::start(&env, &ns, &[&up.name])?;
    follow.wait("the existing lines", |l| l == "service up")?;
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&file)?;
        writeln!(f, "written later")?;
    }
    follow.wait("the appended line", |l| l == "written later")?;
    Ok(())
}
}

/// A client certificate signed by the cluster CA (what the apiserver holds).
async fn cluster_identity(user: &str) -> anyhow::Result<testbed::Issued> {
    let cp = testbed::ControlPlane::shared().await?;
    Ok(cp.ca().issue_client(user, &[])?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_endpoint_authenticates_and_authorizes_callers() -> anyhow::Result<()> {
    let env = TestEnv::new("kauth").await?;
    let up = env.device_up("a", 10).await?;
    let ns = env.name.clone();
    create_pod(
        &env,
        &up.name,
        "web",
        json!({ "containers": [busybox("web", "echo hello; exec sleep 3600")] }),
    )
    .await?;
    wait_pod(&env, "web", "running", RUN_TIMEOUT, |p| {
        running_and_ready(p).then_some(())
    })
    .await?;
    let node = env.nodes().get(&up.name).await?;
    let port = port(&node).ok_or_else(|| anyhow::anyhow!("no kubelet port on {node:?}"))?;
    let ca = std::fs::read_to_string(&env.cluster.ca_file)?;
    let address = node_address();

    // The apiserver reaches it (it verifies our certificate against the
    // cluster CA: the test bed runs it with --kubelet-certificate-authority).
    let via_apiserver = env.cluster.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/pods", up.name),
    ])?;
    assert!(via_apiserver.contains("\"PodList\""), "{via_apiserver}");
    assert!(via_apiserver.contains("\"web\""), "{via_apiserver}");

    // No identity: 401.
    let anonymous = get(address, port, &ca, "/pods", Caller::Anonymous).await?;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    // A certificate from a CA the cluster does not know: 401.
    let foreign = testbed::Ca::new("foreign-ca")?.issue_client("system:kube-apiserver", &[])?;
    let untrusted = get(address, port, &ca, "/pods", Caller::Certificate(&foreign)).await?;
    assert_eq!(untrusted.status, 401, "{untrusted:?}");
    // A trusted identity without RBAC: 403 saying who and what.
    let nobody_user = format!("{}-nobody", env.name);
    let nobody = cluster_identity(&nobody_user).await?;
    let denied = get(address, port, &ca, "/pods", Caller::Certificate(&nobody)).await?;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(
        denied.body.contains(&format!("user={nobody_user}")) && denied.body.contains("nodes"),
        "{denied:?}"
    );

    // A trusted identity bound to system:kubelet-api-admin: served.
    let admin_user = format!("{}-caller", env.name);
    env.cluster.kubectl(&[
        "create",
        "clusterrolebinding",
        &admin_user,
        "--clusterrole=system:kubelet-api-admin",
        &format!("--user={admin_user}"),
    ])?;
    let admin = cluster_identity(&admin_user).await?;
    let pods = wait_for(
        "the bound identity served",
        Duration::from_secs(30),
        || async {
            get(address, port, &ca, "/pods", Caller::Certificate(&admin))
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await?;
    assert!(pods.body.contains("\"web\""), "{pods:?}");
    let running = get(
        address,
        port,
        &ca,
        "/runningpods/",
        Caller::Certificate(&admin),
    )
    .await?;
    assert_eq!(running.status, 200, "{running:?}");
    assert!(running.body.contains("\"web\""), "{running:?}");
    let healthz = get(address, port, &ca, "/healthz", Caller::Certificate(&admin)).await?;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok"));
    let log = get(
        address,
        port,
        &ca,
        &format!("/containerLogs/{ns}/web/web"),
        Caller::Certificate(&admin),
    )
    .await?;
    assert_eq!((log.status, log.body.as_str()), (200, "hello\n"));
    // Unknown container or pod: 404 naming it.
    let missing = get(
        address,
        port,
        &ca,
        &format!("/containerLogs/{ns}/web/nope"),
        Caller::Certificate(&admin),
    )
    .await?;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains("\"nope\""), "{missing:?}");
    let missing = get(
        address,
        port,
        &ca,
        &format!("/containerLogs/{ns}/ghost/web"),
        Caller::Certificate(&admin),
    )
    .await?;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains("ghost"), "{missing:?}");

    // A service account's token, as metrics-server calls: TokenReview, then SAR.
    let sa = format!("{}-metrics", env.name);
    env.cluster
        .kubectl(&["create", "serviceaccount", "-n", &ns, "metrics"])?;
    env.cluster.kubectl(&[
        "create",
        "clusterrolebinding",
        &sa,
        "--clusterrole=system:kubelet-api-admin",
        &format!("--serviceaccount={ns}:metrics"),
    ])?;
    let token = env
        .cluster
        .kubectl(&["create", "token", "-n", &ns, "metrics"])?;
    let served = wait_for("the token served", Duration::from_secs(30), || async {
        get(address, port, &ca, "/pods", Caller::Bearer(token.trim()))
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await?;
    assert!(served.body.contains("\"web\""), "{served:?}");
    let forged = get(address, port, &ca, "/pods", Caller::Bearer("not-a-token")).await?;
    assert_eq!(forged.status, 401, "{forged:?}");
    let _ = env
        .cluster
        .kubectl(&["delete", "clusterrolebinding", &admin_user, &sa]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apiserver_refuses_a_kubelet_certificate_it_does_not_trust() -> anyhow::Result<()> {
    let env = TestEnv::new("impostor").await?;
    // A kubelet endpoint with a certificate from a CA the cluster does not know.
    let address = node_address();
    let impostor = testbed::Ca::new("impostor-ca")?.issue_server("impostor", &[], &[address])?;
    let listener = tokio::net::TcpListener::bind((address, 0)).await?;
    let port = listener.local_addr()?.port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn(serve_impostor(listener, impostor, accepted.clone()));
    let node = env.device("impostor");
    let manifest = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": node },
        "spec": { "taints": [{ "key": "e2e/impostor", "effect": "NoSchedule" }] },
    });
    let path = env.dir.join("impostor.json");
    std::fs::write(&path, manifest.to_string())?;
    env.cluster
        .kubectl(&["create", "-f", &path.to_string_lossy()])?;
    let status = json!({ "status": {
        "addresses": [{ "type": "InternalIP", "address": address.to_string() }],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": port } },
    }});
    env.cluster.kubectl(&[
        "patch",
        "node",
        &node,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])?;
    let out = env.cluster.kubectl_output(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/healthz"),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = env.cluster.kubectl(&["delete", "node", &node]);
    server.abort();
    assert!(!out.status.success(), "the apiserver trusted an unknown CA");
    assert!(
        stderr.contains("certificate") || stderr.contains("x509"),
        "{stderr}"
    );
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the apiserver never dialed the impostor"
    );
    Ok(())
}

/// Accepts TLS handshakes with `issued`, answering `ok` to anything.
async fn serve_impostor(
    listener: tokio::net::TcpListener,
    issued: testbed::Issued,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> anyhow::Result<()> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    use tokio::io::AsyncWriteExt;
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    loop {
        let (tcp, _) = listener.accept().await?;
        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
    }
}
