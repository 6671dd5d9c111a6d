//! Device identity end to end (real control plane, real broker): only a
//! device that proves it holds its own current certificate acts as it;
//! certificates are issued from bootstrap tokens, renewed, revoked by
//! rotation, and outlived offline.

use std::time::{Duration, SystemTime};

use aranya::crd::EdgeDevice;
use e2e::{
    cluster::{DeviceUp, TestEnv, write_token},
    impostor::{DeviceCredentials, Outcome, device_ca, try_grpc, try_mqtt},
    pods::{busybox, create_pod, running_and_ready, wait_pod},
    process::Proc,
    transport::Transport,
    wait::wait_for,
};
use identity::TrustStore;
use kube::api::{Patch, PatchParams};
use proto::envelope::RefuseReason;
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

fn endpoint(env: &TestEnv) -> String {
    format!("127.0.0.1:{}", env.grpc_port)
}

/// The identity id aranya assigned `device` (waiting for it).
async fn identity_id(env: &TestEnv, device: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("{device}'s identity id"),
        Duration::from_secs(30),
        || async {
            let ed = env.devices().get_opt(device).await.ok()??;
            ed.status?.identity?.id
        },
    )
    .await
}

/// The serial of the certificate `device` last connected with.
async fn status_serial(env: &TestEnv, device: &str) -> Option<String> {
    let ed: EdgeDevice = env.devices().get_opt(device).await.ok()??;
    ed.status?.identity?.serial
}

fn refused(outcome: &Outcome, want: RefuseReason) -> Option<&str> {
    match outcome {
        Outcome::Refused { reason, message } if *reason == want => Some(message),
        _ => None,
    }
}

fn certificate_refused(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Transport(connectivity::TransportError::CertificateRefused { cause, .. }) => {
            Some(cause)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_device_itself_opens_its_session_over_grpc() -> anyhow::Result<()> {
    let env = TestEnv::new("impostor").await?;
    let up = env.device_up("a", 2).await?;
    let b = env.device("b");
    env.create_device(&b, 2).await?;
    let b_id = identity_id(&env, &b).await?;
    let (endpoint, ca_file) = (endpoint(&env), &env.cluster.ca_file);
    let stolen = DeviceCredentials::of_agent(&env.arhat_data_dir(&up.name))?;

    // The EdgeDevice says its device is enrolled, and with what.
    let serial = stolen.serial()?;
    wait_for(
        "A's Identity condition",
        Duration::from_secs(30),
        || async {
            let ed = env.devices().get_opt(&up.name).await.ok()??;
            let status = ed.status?;
            let c = status.conditions.iter().find(|c| c.type_ == "Identity")?;
            (c.status == "True" && c.reason == "CertificateValid" && c.message.contains(&serial))
                .then_some(())
        },
    )
    .await?;

    // No certificate: the caller gets a link, to bootstrap only.
    let none = try_grpc(&endpoint, ca_file, &b, None, None).await?;
    let message = refused(&none, RefuseReason::CertificateRequired)
        .ok_or_else(|| anyhow::anyhow!("no certificate: {none:?}"))?;
    assert!(message.contains("bootstrap-token create"), "{message}");
    // A's certificate in the Hello, none in TLS: the two must agree.
    let untls = try_grpc(&endpoint, ca_file, &up.name, None, Some(&stolen)).await?;
    let message = refused(&untls, RefuseReason::CertificateRequired)
        .ok_or_else(|| anyhow::anyhow!("no TLS certificate: {untls:?}"))?;
    assert!(message.contains("TLS client certificate"), "{message}");

    // A's certificate and key, presented for B: refused, and B hears of it.
    let as_b = try_grpc(&endpoint, ca_file, &b, Some(&stolen), Some(&stolen)).await?;
    let message = refused(&as_b, RefuseReason::IdentityMismatch)
        .ok_or_else(|| anyhow::anyhow!("A's certificate for B: {as_b:?}"))?;
    assert!(message.contains(&up.name), "{message}");
    wait_for(
        "an ImpersonationRefused Event on B",
        Duration::from_secs(20),
        || async {
            env.device_events(&b, "ImpersonationRefused")
                .ok()
                .filter(|m| m.contains(&up.name))
        },
    )
    .await?;

    // A certificate from a CA aranya does not trust: refused before anything runs.
    let foreign = identity::DeviceCa::generate("foreign")?;
    let forged = DeviceCredentials::issue(&foreign, &b, &b_id, SystemTime::now(), HOUR)?;
    let outcome = try_grpc(&endpoint, ca_file, &b, Some(&forged), Some(&forged)).await?;
    assert_eq!(
        certificate_refused(&outcome),
        Some("UnknownCA"),
        "{outcome:?}"
    );

    // B's own CA, B's identity, but expired: refused, naming expiry.
    let ca = device_ca(&env.client, &env.name).await?;
    let expired = DeviceCredentials::issue(&ca, &b, &b_id, SystemTime::now() - 2 * HOUR, HOUR)?;
    let outcome = try_grpc(&endpoint, ca_file, &b, Some(&expired), Some(&expired)).await?;
    assert_eq!(
        certificate_refused(&outcome),
        Some("CertificateExpired"),
        "{outcome:?}"
    );

    // A valid certificate of B in the Hello, A's in TLS: the two must agree.
    let b_cert = DeviceCredentials::issue(&ca, &b, &b_id, SystemTime::now(), HOUR)?;
    let mixed = try_grpc(&endpoint, ca_file, &b, Some(&stolen), Some(&b_cert)).await?;
    assert!(
        refused(&mixed, RefuseReason::BadCertificate).is_some(),
        "{mixed:?}"
    );
    // B's certificate itself is good: this is the control.
    let own = try_grpc(&endpoint, ca_file, &b, Some(&b_cert), Some(&b_cert)).await?;
    assert!(matches!(own, Outcome::Welcomed), "{own:?}");

    // B deleted and created again: a new identity, the old certificate is dead.
    env.devices()
        .delete(&b, &Default::default())
        .await
        .map(drop)
        .or_else(|e| anyhow::bail!("deleting {b}: {e}"))?;
    wait_for("B gone", Duration::from_secs(30), || async {
        env.devices()
            .get_opt(&b)
            .await
            .ok()
            .and_then(|d| d.is_none().then_some(()))
    })
    .await?;
    env.create_device(&b, 2).await?;
    let new_id = identity_id(&env, &b).await?;
    assert_ne!(new_id, b_id);
    let recreated = try_grpc(&endpoint, ca_file, &b, Some(&b_cert), Some(&b_cert)).await?;
    assert!(
        refused(&recreated, RefuseReason::IdentityRevoked).is_some(),
        "{recreated:?}"
    );
    // A was never disturbed.
    assert_eq!(
        env.ready(&up.name).await.map(|r| r.0).as_deref(),
        Some("True")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_the_identity_revokes_the_live_link_and_the_device_bootstraps_again()
-> anyhow::Result<()> {
    let env = TestEnv::new("rotate").await?;
    let up = env.device_up("a", 2).await?;
    let old = DeviceCredentials::of_agent(&env.arhat_data_dir(&up.name))?;
    let old_serial = old.serial()?;
    let node_uid = up.node.metadata.uid.clone();
    env.devices()
        .patch(
            &up.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "identity": { "rotation": 1 } } })),
        )
        .await?;
    up.arhat
        .wait_log("IdentityRevoked", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", up.logs(30)))?;
    // Its token went with the old identity: the operator enrols it anew.
    up.arhat
        .wait_log("revoked by a rotation", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", up.logs(30)))?;
    env.cluster
        .bootstrap_token(&env.name, &up.name, &env.arhat_data_dir(&up.name))
        .await?;
    up.arhat
        .wait_log("device certificate issued", Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", up.logs(30)))?;
    let new_serial = wait_for(
        "a new serial in the status",
        Duration::from_secs(60),
        || async {
            status_serial(&env, &up.name)
                .await
                .filter(|s| *s != old_serial)
        },
    )
    .await?;
    assert_eq!(
        DeviceCredentials::of_agent(&env.arhat_data_dir(&up.name))?.serial()?,
        new_serial
    );
    let node = env
        .wait_ready(&up.name, "True", None, Duration::from_secs(30))
        .await?;
    assert_eq!(node.metadata.uid, node_uid, "the Node was kept");
    // The revoked certificate is refused, naming why.
    let again = try_grpc(
        &endpoint(&env),
        &env.cluster.ca_file,
        &up.name,
        Some(&old),
        Some(&old),
    )
    .await?;
    let message = refused(&again, RefuseReason::IdentityRevoked)
        .ok_or_else(|| anyhow::anyhow!("revoked certificate: {again:?}"))?;
    assert!(message.contains("bootstrap again"), "{message}");
    Ok(())
}

/// Runs `aranya bootstrap-token create` as an operator would; the token.
fn cli_token(env: &TestEnv, device: &str, ttl: &str) -> anyhow::Result<String> {
    let text = aranya_cli(
        env,
        &[
            "bootstrap-token",
            "create",
            "--device",
            device,
            "--ttl",
            ttl,
        ],
    )?;
    assert!(text.contains("bootstrapTokenFile"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("# token: "))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no token in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_tokens_bind_one_device_until_they_expire() -> anyhow::Result<()> {
    let env = TestEnv::new("tokens").await?;
    let (x, y, z) = (env.device("x"), env.device("y"), env.device("z"));
    env.create_device(&x, 2).await?;
    env.create_device(&y, 2).await?;
    env.create_device_with(&z, 2, json!({})).await?;
    env.devices()
        .patch(
            &z,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "identity": { "approval": "Manual" } } })),
        )
        .await?;
    let aranya = env.start_aranya("a")?;
    let token_file = |device: &str| env.arhat_data_dir(device).join("identity/bootstrap-token");

    // X holding Y's token: refused, the cause in X's log.
    let y_token = std::fs::read_to_string(token_file(&y))?;
    write_token(&token_file(&x), y_token.trim())?;
    let arhat_x = env.start_arhat(&x, "1", &[])?;
    arhat_x
        .wait_log("BadToken", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat_x.log_tail(20)))?;
    assert!(
        arhat_x.log().contains(&format!("not {x:?}")),
        "{}",
        arhat_x.log_tail(10)
    );

    // Y with an expired token (from the CLI): refused, naming expiry.
    let short = cli_token(&env, &y, "1s")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    write_token(&token_file(&y), &short)?;
    let arhat_y = env.start_arhat(&y, "1", &[])?;
    arhat_y
        .wait_log("expired", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat_y.log_tail(20)))?;
    // A fresh token from the CLI: the agent picks it up on its next try.
    write_token(&token_file(&y), &cli_token(&env, &y, "1h")?)?;
    env.wait_ready(&y, "True", None, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat_y.log_tail(20)))?;

    // Z asks for approval; an operator's `kubectl certificate approve` lets it in.
    let arhat_z = env.start_arhat(&z, "1", &[])?;
    arhat_z
        .wait_log("PendingApproval", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat_z.log_tail(20)))?;
    let log = arhat_z.log();
    let csr = log
        .split("kubectl certificate approve ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
        .ok_or_else(|| anyhow::anyhow!("no CSR named in:\n{}", arhat_z.log_tail(10)))?
        .to_string();
    assert_eq!(env.device_events(&z, "ImpersonationRefused")?, "");
    env.cluster.kubectl(&["certificate", "approve", &csr])?;
    env.wait_ready(&z, "True", None, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat_z.log_tail(20)))?;
    // X never got in.
    assert_ne!(env.ready(&x).await.map(|r| r.0).as_deref(), Some("True"));
    drop(aranya);
    Ok(())
}

/// aranya `instance` for `env`, issuing certificates that live `lifetime`.
fn aranya_with_lifetime(env: &TestEnv, instance: &str, lifetime: &str) -> anyhow::Result<Proc> {
    let mut cmd = env.aranya_command(instance)?;
    cmd.args(["--device-cert-lifetime", lifetime]);
    let name = format!("aranya-{instance}");
    Proc::spawn(&name, cmd, &env.dir.join(format!("{name}.log")))
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_renew_under_live_streams_and_an_offline_device_comes_back()
-> anyhow::Result<()> {
    e2e::images::ensure_busybox()?;
    let env = TestEnv::new("renew").await?;
    let name = env.device("a");
    env.create_device(&name, 2).await?;
    // Renewal at two thirds of a minute's life.
    let mut aranya = aranya_with_lifetime(&env, "a", "60s")?;
    let mut arhat = env.start_arhat(&name, "1", &[])?;
    env.wait_ready(&name, "True", None, Duration::from_secs(60))
        .await?;
    env.wait_serving_cert(&name).await?;
    let first = DeviceCredentials::of_agent(&env.arhat_data_dir(&name))?.serial()?;
    create_pod(
        &env,
        &name,
        "shell",
        json!({ "containers": [busybox("main", "nc -ll -p 7000 -e cat & exec sleep 3600")] }),
    )
    .await?;
    wait_pod(&env, "shell", "running", Duration::from_secs(120), |p| {
        running_and_ready(p).then_some(())
    })
    .await?;

    // A port-forwarded connection and an exec that span the renewal.
    let mut forward = env
        .cluster
        .kubectl_command(&["port-forward", "-n", &env.name, "pod/shell", ":7000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        forward
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?,
    ));
    let port = e2e::Cluster::forwarded_port(&mut lines)?;
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let mut echo = std::net::TcpStream::connect(("127.0.0.1", port))?;
    echo.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut roundtrip = |line: &str| -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        echo.write_all(line.as_bytes())?;
        let mut back = vec![0; line.len()];
        echo.read_exact(&mut back)?;
        anyhow::ensure!(back == line.as_bytes(), "echoed {back:?}");
        Ok(())
    };
    roundtrip("before renewal\n")?;
    let exec = env
        .cluster
        .kubectl_command(&[
            "exec",
            "-n",
            &env.name,
            "shell",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 50); do echo line-$i; sleep 1; done",
        ])
        .output();
    let exec = tokio::task::spawn_blocking(move || exec);
    arhat
        .wait_log("device certificate renewed", Duration::from_secs(70))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat.log_tail(20)))?;
    roundtrip("after renewal\n")?;
    let _ = forward.kill();
    let out = exec.await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 50, "{stdout}");
    assert!(stdout.ends_with("line-50\n"), "{stdout}");
    let renewed = DeviceCredentials::of_agent(&env.arhat_data_dir(&name))?.serial()?;
    assert_ne!(renewed, first);

    // A forced new link presents the renewed certificate.
    aranya.kill();
    aranya = aranya_with_lifetime(&env, "b", "60s")?;
    wait_for(
        "the renewed serial in the status",
        Duration::from_secs(60),
        || async { status_serial(&env, &name).await.filter(|s| *s != first) },
    )
    .await?;

    // Offline until the certificate expired: back with the bootstrap token,
    // and its pod kept running on the device meanwhile.
    arhat.kill();
    let held = DeviceCredentials::of_agent(&env.arhat_data_dir(&name))?;
    let not_after = identity::DeviceCert::from_pem(held.cert_pem.as_bytes())?.not_after;
    if let Ok(left) = not_after.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_secs(2)).await;
    }
    arhat = env.start_arhat(&name, "2", &[])?;
    arhat
        .wait_log("bootstrapping with the token", Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat.log_tail(20)))?;
    env.wait_ready(
        &name,
        "True",
        Some("EdgeDeviceConnected"),
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat.log_tail(20)))?;
    wait_pod(
        &env,
        "shell",
        "running after the outage",
        Duration::from_secs(30),
        |p| running_and_ready(p).then_some(()),
    )
    .await?;
    drop(aranya);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn over_mqtt_a_valid_broker_login_with_another_devices_certificate_is_refused()
-> anyhow::Result<()> {
    let env = TestEnv::over(
        "impostor",
        Transport::Mqtt {
            max_payload: connectivity::mqtt::DEFAULT_MAX_PAYLOAD,
        },
    )
    .await?;
    let DeviceUp {
        name,
        aranya,
        arhat,
        ..
    } = env.device_up("a", 2).await?;
    let b = env.device("b");
    env.create_device(&b, 2).await?;
    identity_id(&env, &b).await?;
    let broker = env
        .broker_address()
        .ok_or_else(|| anyhow::anyhow!("no broker"))?;
    let stolen = DeviceCredentials::of_agent(&env.arhat_data_dir(&name))?;
    // aranya listens on B's topics once it has taken B up: until then a
    // Hello goes unanswered, and a device tries again.
    let outcome = wait_for(
        "aranya answering for B",
        Duration::from_secs(90),
        || async { try_mqtt(&broker, &b, &stolen).await.ok() },
    )
    .await?;
    let message = refused(&outcome, RefuseReason::IdentityMismatch).ok_or_else(|| {
        anyhow::anyhow!(
            "A's certificate for B over MQTT: {outcome:?}\n{}",
            aranya.log_tail(20)
        )
    })?;
    assert!(message.contains(&name), "{message}");
    assert_ne!(env.ready(&b).await.map(|r| r.0).as_deref(), Some("True"));
    // A kept its session.
    assert_eq!(env.ready(&name).await.map(|r| r.0).as_deref(), Some("True"));
    drop(arhat);
    Ok(())
}

/// The ways a value could show up in a log: as is, base64, JSON-escaped,
/// and as Rust prints bytes (`[112, 97, …]` and `b"…"`).
fn renderings(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let json = serde_json::to_string(value).unwrap_or_default();
    let debug_bytes = format!("{:?}", bytes::Bytes::copy_from_slice(value.as_bytes()));
    vec![
        value.to_string(),
        base64::engine::general_purpose::STANDARD.encode(value),
        json.trim_matches('"').to_string(),
        format!("{:?}", value.as_bytes())
            .trim_matches(['[', ']'])
            .to_string(),
        debug_bytes
            .trim_start_matches("b\"")
            .trim_end_matches('"')
            .to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_token_or_key_reaches_the_logs_at_trace_level() -> anyhow::Result<()> {
    e2e::images::ensure_busybox()?;
    let env = TestEnv::new("nolog").await?;
    let name = env.device("a");
    env.create_device(&name, 2).await?;
    let token =
        std::fs::read_to_string(env.arhat_data_dir(&name).join("identity/bootstrap-token"))?
            .trim()
            .to_string();
    let mut cmd = env.aranya_command("a")?;
    cmd.env("RUST_LOG", "trace");
    let aranya = Proc::spawn("aranya-a", cmd, &env.dir.join("aranya-a.log"))?;
    let mut cmd = std::process::Command::new(e2e::process::binary("arhat")?);
    cmd.arg("--config")
        .arg(env.arhat_config(&name)?)
        .env("RUST_LOG", "trace");
    let arhat = Proc::spawn("arhat-a", cmd, &env.dir.join("arhat-a.log"))?;
    env.wait_ready(&name, "True", None, Duration::from_secs(60))
        .await?;
    env.wait_serving_cert(&name).await?;

    // A value JSON and Debug would both escape, in a Secret the pod uses
    // as env and as a file, read back through exec.
    let secret_value = format!("pa\"ss\\word-{}", rand::random::<u64>());
    env.cluster.kubectl(&[
        "create",
        "secret",
        "generic",
        "app",
        "-n",
        &env.name,
        &format!("--from-literal=value={secret_value}"),
    ])?;
    create_pod(
        &env,
        &name,
        "app",
        json!({
            "containers": [merge_env(busybox("main", "exec sleep 3600"))],
            "volumes": [{ "name": "s", "secret": { "secretName": "app" } }],
        }),
    )
    .await?;
    wait_pod(&env, "app", "running", Duration::from_secs(120), |p| {
        running_and_ready(p).then_some(())
    })
    .await?;
    let read = env.cluster.kubectl(&[
        "exec",
        "-n",
        &env.name,
        "app",
        "--",
        "sh",
        "-c",
        "cat /etc/s/value; echo; echo $VALUE",
    ])?;
    assert_eq!(read, format!("{secret_value}\n{secret_value}\n"));
    let sa_token = env
        .cluster
        .kubectl(&[
            "exec",
            "-n",
            &env.name,
            "app",
            "--",
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ])
        .unwrap_or_default();

    let key_pem = DeviceCredentials::of_agent(&env.arhat_data_dir(&name))?.key_pem;
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let ca_key_pem = device_ca(&env.client, &env.name).await?.key_pem();
    let ca_key_body: String = ca_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let token_secret = token
        .split_once('.')
        .map_or(token.as_str(), |(_, s)| s)
        .to_string();
    let mut secrets = vec![
        ("the Secret's value", secret_value.clone()),
        ("the bootstrap token", token.clone()),
        ("the bootstrap token's secret", token_secret),
        ("the device key", key_body[..48].to_string()),
        ("the device CA key", ca_key_body[..48].to_string()),
    ];
    if sa_token.len() > 40 {
        // The signature part: the header and claims are not secret.
        let signature = sa_token.rsplit('.').next().unwrap_or_default().to_string();
        secrets.push(("the service-account token", signature));
    }
    // Let trace logging catch up with everything above.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = [("aranya", aranya.log()), ("arhat", arhat.log())];
    let lines: usize = logs.iter().map(|(_, l)| l.lines().count()).sum();
    assert!(
        lines > 1000,
        "trace logs are too short to mean anything: {lines} lines"
    );
    for (what, value) in &secrets {
        for form in renderings(value) {
            for (who, log) in &logs {
                if let Some(line) = log.lines().find(|l| l.contains(&form)) {
                    let at = line.find(&form).unwrap_or(0);
                    let start = line.floor_char_boundary(at.saturating_sub(300));
                    panic!(
                        "{what} is in {who}'s log as {form:?}: …{}",
                        &line[start..line.ceil_char_boundary(at + form.len())]
                    );
                }
            }
        }
    }
    Ok(())
}

/// `VALUE` from the Secret `app`, mounted at `/etc/s` too.
fn merge_env(mut container: serde_json::Value) -> serde_json::Value {
    container["env"] = json!([{
        "name": "VALUE",
        "valueFrom": { "secretKeyRef": { "name": "app", "key": "value" } },
    }]);
    container["volumeMounts"] = json!([{ "name": "s", "mountPath": "/etc/s" }]);
    container
}

/// Runs an `aranya` subcommand against `env` as an operator would; its output.
fn aranya_cli(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = env
        .cluster
        .aranya_command(&env.name, env.grpc_port, "warn")?;
    cmd.args(args);
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "aranya {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_ca_rotation_keeps_devices_connected_and_prune_retires_the_old_ca()
-> anyhow::Result<()> {
    let env = TestEnv::new("carotate").await?;
    let name = env.device("a");
    env.create_device(&name, 2).await?;
    let mut aranya = aranya_with_lifetime(&env, "a", "60s")?;
    let arhat = env.start_arhat(&name, "1", &[])?;
    env.wait_ready(&name, "True", None, Duration::from_secs(60))
        .await?;
    let old_ca = device_ca(&env.client, &env.name).await?;
    let first = DeviceCredentials::of_agent(&env.arhat_data_dir(&name))?;
    let id = identity_id(&env, &name).await?;
    let out = aranya_cli(&env, &["device-ca", "rotate"])?;
    assert!(out.contains("stay trusted"), "{out}");
    let new_ca = device_ca(&env.client, &env.name).await?;
    assert_ne!(new_ca.cert_pem(), old_ca.cert_pem());

    // The device stays connected through its next renewal, which the new CA
    // signs (aranya reads the Secret within 30 s).
    let serial = first.serial()?;
    let renewed = wait_for(
        "a certificate from the new CA",
        Duration::from_secs(120),
        || async {
            let held = DeviceCredentials::of_agent(&env.arhat_data_dir(&name)).ok()?;
            let pem = held.cert_pem.clone();
            (held.serial().ok()? != serial
                && TrustStore::from_pem(new_ca.cert_pem().as_bytes())
                    .ok()?
                    .verify(
                        &identity::DeviceCert::from_pem(pem.as_bytes()).ok()?.der,
                        SystemTime::now(),
                    )
                    .is_ok())
            .then_some(held)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", arhat.log_tail(20)))?;
    assert!(!arhat.log().contains("IdentityRevoked"));
    assert_eq!(env.ready(&name).await.map(|r| r.0).as_deref(), Some("True"));

    // Pruned: the old CA's certificates stop working; the device's new one
    // still does, on a new link.
    aranya_cli(&env, &["device-ca", "prune"])?;
    aranya.kill();
    aranya = aranya_with_lifetime(&env, "b", "60s")?;
    let old = DeviceCredentials::issue(&old_ca, &name, &id, SystemTime::now(), HOUR)?;
    let (endpoint, ca_file) = (endpoint(&env), &env.cluster.ca_file);
    let outcome = wait_for("aranya back", Duration::from_secs(30), || async {
        try_grpc(&endpoint, ca_file, &name, Some(&old), Some(&old))
            .await
            .ok()
            .filter(|o| certificate_refused(o).is_some())
    })
    .await?;
    assert_eq!(
        certificate_refused(&outcome),
        Some("UnknownCA"),
        "{outcome:?}"
    );
    let now_serial = renewed.serial()?;
    wait_for(
        "the device back on a new link",
        Duration::from_secs(60),
        || async {
            let serial = status_serial(&env, &name).await?;
            let ready = env.ready(&name).await?.0 == "True";
            (ready && serial != first.serial().ok()?).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e} (renewed serial {now_serial})\n{}", arhat.log_tail(20)))?;
    drop(aranya);
    Ok(())
}
