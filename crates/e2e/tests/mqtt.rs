//! What only MQTT has: the last will, broker credentials and ACLs, a second
//! agent under one name, and falling back to MQTT when gRPC is cut (and
//! returning). Each test runs its own Mosquitto.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use e2e::{
    TestEnv,
    netcut::LinkCut,
    pods::{busybox, container_id, create_pod, restarts, running_and_ready, wait_pod},
    transport::MQTT,
    wait_for,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::json;

/// The broker sees the agent's TCP connection close and publishes its last
/// will: aranya marks the Node NotReady within seconds, long before any
/// keepalive (5 s, so 7.5 s at the broker) or session timeout (30 s) would.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_will_turns_the_node_not_ready_within_seconds() -> anyhow::Result<()> {
    let env = TestEnv::over("will", MQTT).await?;
    let mut up = env.device_up("a", 10).await?;
    let killed = Instant::now();
    up.arhat.kill();
    env.wait_ready(
        &up.name,
        "False",
        Some("EdgeDeviceDisconnected"),
        Duration::from_secs(30),
    )
    .await?;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "NotReady {took:?} after the agent died: the will, not a timeout\naranya:\n{}",
        up.aranya.log_tail(20)
    );
    Ok(())
}

/// An agent whose Hello reached the broker before aranya subscribed (aranya
/// started after it) is told to dial again as soon as aranya subscribes, by
/// the link the broker replays as retained online, instead of waiting out
/// its handshake timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_hello_sent_before_aranya_subscribed_is_not_waited_out() -> anyhow::Result<()> {
    let env = TestEnv::over("early", MQTT).await?;
    let name = env.device("a");
    env.create_device(&name, 10).await?;
    let arhat = env.start_arhat(&name, "1", &[])?;
    arhat
        .wait_log("MQTT link up", Duration::from_secs(30))
        .await?;
    let aranya = env.start_aranya("a")?;
    env.wait_ready(
        &name,
        "True",
        Some("EdgeDeviceConnected"),
        Duration::from_secs(60),
    )
    .await?;
    let log = arhat.log();
    assert!(
        !log.contains("no handshake answer"),
        "the agent waited out its handshake\narhat:\n{}\naranya:\n{}",
        arhat.log_tail(30),
        aranya.log_tail(30)
    );
    Ok(())
}

fn client(broker: &str, id: &str, user: &str, password: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let (host, port) = broker.rsplit_once(':').unwrap_or((broker, "1883"));
    let mut opts = MqttOptions::new(id, host, port.parse().unwrap_or(1883));
    opts.set_credentials(user, password)
        .set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(opts, 16)
}

/// Polls `events` for `window`, collecting SUBACK codes and publishes.
async fn observe(
    events: &mut rumqttc::EventLoop,
    window: Duration,
) -> anyhow::Result<(Vec<SubscribeReasonCode>, Vec<String>)> {
    let deadline = tokio::time::Instant::now() + window;
    let (mut codes, mut topics) = (Vec::new(), Vec::new());
    loop {
        let event = tokio::select! {
            e = events.poll() => e.context("broker connection")?,
            () = tokio::time::sleep_until(deadline) => return Ok((codes, topics)),
        };
        match event {
            Event::Incoming(Packet::SubAck(ack)) => codes.extend(ack.return_codes),
            Event::Incoming(Packet::Publish(p)) => topics.push(p.topic),
            _ => {}
        }
    }
}

/// aranya may use every device's topics, each device only its own.
const ACL: &str = "user aranya\ntopic readwrite arhat/#\n\npattern readwrite arhat/%u/#\n";

/// A broker with [`ACL`] that knows `devices` and aranya (by
/// `aranya_password`), and the Secret `broker-login` that gives aranya
/// `secret_password`.
async fn broker_with_logins(
    env: &TestEnv,
    devices: &[(&str, &str)],
    aranya_password: &str,
    secret_password: &str,
) -> anyhow::Result<(String, Api<Secret>)> {
    let mut users = vec![("aranya".to_string(), aranya_password.to_string())];
    users.extend(devices.iter().map(|(u, p)| (u.to_string(), p.to_string())));
    let broker = env.start_broker(&testbed::BrokerOptions {
        users,
        acl: Some(ACL.into()),
        ..Default::default()
    })?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "broker-login" },
                "stringData": { "username": "aranya", "password": secret_password },
            }))?,
        )
        .await?;
    Ok((broker, secrets))
}

/// The EdgeDevice's method: `broker`, aranya's login from `broker-login`.
fn mqtt_with_login(broker: &str) -> serde_json::Value {
    json!([{ "name": "mqtt", "mqtt": {
        "broker": broker, "keepaliveSeconds": 5,
        "credentialsSecretRef": { "name": "broker-login" },
    }}])
}

/// arhat's config: `broker` as `user` with the password in `password_file`.
fn arhat_with_login(broker: &str, user: &str, password_file: &std::path::Path) -> String {
    format!(
        "connectivity:\n  methods:\n    - name: mqtt\n      mqtt:\n        broker: {broker}\n        username: {user}\n        passwordFile: {}\n",
        password_file.display()
    )
}

/// Devices log in with their own name and password; the ACL lets each use
/// only its own topics. aranya's broker login comes from a Secret.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_an_acl_keep_a_device_to_its_own_topics() -> anyhow::Result<()> {
    let env = TestEnv::new("mqttacl").await?;
    let a = env.device("a");
    let b = env.device("b");
    let (broker, _) = broker_with_logins(
        &env,
        &[(&a, "a-secret"), (&b, "b-secret")],
        "aranya-secret",
        "aranya-secret",
    )
    .await?;
    let password = env.dir.join("a.password");
    std::fs::write(&password, "a-secret\n")?;
    let _up = env
        .device_up_over(
            "a",
            10,
            json!({}),
            mqtt_with_login(&broker),
            &arhat_with_login(&broker, &a, &password),
        )
        .await?;

    // An observer with aranya's rights sees both devices' message topics.
    let (observer, mut observer_events) = client(&broker, "observer", "aranya", "aranya-secret");
    observer
        .subscribe(format!("arhat/{a}/msg"), QoS::AtLeastOnce)
        .await?;
    observer
        .subscribe(format!("arhat/{b}/msg"), QoS::AtLeastOnce)
        .await?;
    let (codes, _) = observe(&mut observer_events, Duration::from_millis(500)).await?;
    anyhow::ensure!(
        !codes.contains(&SubscribeReasonCode::Failure),
        "aranya may read every device: {codes:?}"
    );

    // Device a's login tries device b's topics. (Mosquitto 2.0 grants a
    // denied MQTT 3.1.1 subscription, then delivers nothing on it.)
    let (rogue, mut rogue_events) = client(&broker, "rogue", &a, "a-secret");
    rogue
        .subscribe(format!("arhat/{b}/cmd"), QoS::AtLeastOnce)
        .await?;
    observe(&mut rogue_events, Duration::from_millis(500)).await?;
    observer
        .publish(
            format!("arhat/{b}/cmd"),
            QoS::AtLeastOnce,
            false,
            b"for b only".to_vec(),
        )
        .await?;
    rogue
        .publish(
            format!("arhat/{b}/msg"),
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await?;
    // Its own topic is fine, and shows the observer would have seen a forgery.
    rogue
        .publish(
            format!("arhat/{a}/msg"),
            QoS::AtLeastOnce,
            false,
            b"\x01own".to_vec(),
        )
        .await?;
    let (rogue_got, seen) = tokio::join!(
        observe(&mut rogue_events, Duration::from_secs(2)),
        observe(&mut observer_events, Duration::from_secs(2)),
    );
    let (_, rogue_got) = rogue_got?;
    let (_, seen) = seen?;
    assert!(
        rogue_got.is_empty(),
        "nothing of b's reached a: {rogue_got:?}"
    );
    assert!(
        seen.contains(&format!("arhat/{a}/msg")),
        "a's own publish arrived: {seen:?}"
    );
    assert!(
        !seen.contains(&format!("arhat/{b}/msg")),
        "a's forgery on b's topic was dropped: {seen:?}"
    );
    // The device is still fine after the junk on its topic.
    assert_eq!(env.ready(&a).await.map(|r| r.0), Some("True".to_string()));
    Ok(())
}

/// Broker logins rotated on both sides are used without a restart: the
/// device's password file, read on every dial, and aranya's Secret, watched.
/// Both start out wrong, so only the rotations can bring the device in.
#[tokio::test(flavor = "multi_thread")]
async fn rotated_broker_logins_are_used_without_a_restart() -> anyhow::Result<()> {
    let env = TestEnv::new("mqttrotate").await?;
    let a = env.device("a");
    let (broker, secrets) =
        broker_with_logins(&env, &[(&a, "device-now")], "aranya-now", "aranya-expired").await?;
    let password = env.dir.join("device.password");
    std::fs::write(&password, "device-expired\n")?;
    env.create_device_over(&a, 10, json!({}), mqtt_with_login(&broker))
        .await?;
    let aranya = env.start_aranya("a")?;
    let arhat = env.start_arhat_with(&a, "1", &[], &arhat_with_login(&broker, &a, &password))?;
    // Logs only grow: one after the other is both at once.
    for p in [&aranya, &arhat] {
        p.wait_log("broker refused the connection", Duration::from_secs(30))
            .await?;
    }

    std::fs::write(&password, "device-now\n")?;
    arhat
        .wait_log("MQTT link up", Duration::from_secs(30))
        .await?;
    anyhow::ensure!(
        env.ready(&a).await.map(|r| r.0) != Some("True".to_string()),
        "Ready while aranya's login is still expired"
    );

    secrets
        .patch(
            "broker-login",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "password": "aranya-now" } })),
        )
        .await?;
    env.wait_ready(
        &a,
        "True",
        Some("EdgeDeviceConnected"),
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\naranya:\n{}\narhat:\n{}",
            aranya.log_tail(20),
            arhat.log_tail(10)
        )
    })?;
    anyhow::ensure!(
        aranya
            .log()
            .contains("a Secret of the MQTT settings changed"),
        "{}",
        aranya.log_tail(20)
    );
    Ok(())
}

/// The broker over TLS, asking every client for a certificate from its CA
/// and naming the client by it (the ACL keys on that name): aranya's comes
/// from a Secret (`tlsSecretRef`), the device's from files. A pod runs
/// through it; an agent without a certificate is refused.
#[tokio::test(flavor = "multi_thread")]
async fn tls_with_client_certificates_end_to_end() -> anyhow::Result<()> {
    let env = TestEnv::new("mqtttls").await?;
    let pki = env.dir.join("broker-pki");
    let ca = testbed::Ca::new("broker-ca")?;
    let (ca_file, _) = ca.write(&pki, "ca")?;
    let (cert_file, key_file) = ca
        .issue_server("broker", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?
        .write(&pki, "broker")?;
    let broker = env.start_broker(&testbed::BrokerOptions {
        tls: Some(testbed::BrokerTls {
            ca_file: ca_file.clone(),
            cert_file,
            key_file,
            require_client_cert: true,
        }),
        acl: Some(ACL.into()),
        ..Default::default()
    })?;
    let aranya_cert = ca.issue_client("aranya", &[])?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "broker-tls" },
                "stringData": {
                    "ca.crt": ca.cert_pem(),
                    "tls.crt": aranya_cert.cert_pem,
                    "tls.key": aranya_cert.key_pem,
                },
            }))?,
        )
        .await?;
    let methods = json!([{ "name": "mqtt", "mqtt": {
        "broker": broker, "keepaliveSeconds": 5,
        "tlsSecretRef": { "name": "broker-tls" },
    }}]);
    let arhat_yaml = |client: Option<(PathBuf, PathBuf)>| {
        let client = client
            .map(|(c, k)| {
                format!(
                    "          certFile: {}\n          keyFile: {}\n",
                    c.display(),
                    k.display()
                )
            })
            .unwrap_or_default();
        format!(
            "connectivity:\n  methods:\n    - name: mqtt\n      mqtt:\n        broker: {broker}\n        tls:\n          caFile: {}\n{client}",
            ca_file.display()
        )
    };
    let a = env.device("a");
    let device_cert = ca.issue_client(&a, &[])?.write(&pki, "device-a")?;
    let up = env
        .device_up_over(
            "a",
            10,
            json!({}),
            methods.clone(),
            &arhat_yaml(Some(device_cert)),
        )
        .await?;
    let logs = || up.logs(20);
    wait_connected_via(&env, &a, "mqtt", Duration::from_secs(30), &logs).await?;
    create_pod(
        &env,
        &a,
        "over-tls",
        json!({ "containers": [busybox("main", "exec sleep 3600")] }),
    )
    .await?;
    wait_pod(&env, "over-tls", "running", Duration::from_secs(90), |p| {
        running_and_ready(p).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;

    // No certificate: the broker ends the handshake, and the device stays away.
    let b = env.device("b");
    env.create_device_over(&b, 10, json!({}), methods).await?;
    let without = env.start_arhat_with(&b, "1", &[], &arhat_yaml(None))?;
    without
        .wait_log("CertificateRequired", Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    anyhow::ensure!(
        env.ready(&b).await.map(|r| r.0) != Some("True".to_string()),
        "b got in without a certificate:\n{}",
        without.log_tail(20)
    );
    Ok(())
}

async fn connected_via(env: &TestEnv, device: &str) -> Option<String> {
    let d = env.devices().get_opt(device).await.ok()??;
    let status = serde_json::to_value(d.status?).ok()?;
    status["connectedVia"].as_str().map(str::to_string)
}

/// Waits for the EdgeDevice's `status.connectedVia` to read `via`.
async fn wait_connected_via(
    env: &TestEnv,
    device: &str,
    via: &str,
    timeout: Duration,
    logs: &dyn Fn() -> String,
) -> anyhow::Result<()> {
    wait_for(&format!("connected via {via}"), timeout, || async {
        (connected_via(env, device).await.as_deref() == Some(via)).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))
}

/// gRPC cut: arhat notices within its 1 s keepalive and moves the session to
/// MQTT before aranya notices anything; gRPC back: it returns within
/// `preferredRetry`. The Node stays Ready and the pod keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_grpc_link_falls_back_to_mqtt_and_returns() -> anyhow::Result<()> {
    let env = TestEnv::new("fallback").await?;
    let broker = env.start_broker(&testbed::BrokerOptions {
        persistence: true,
        ..Default::default()
    })?;
    let up = env
        .device_up_over(
            "a",
            10,
            json!({}),
            json!([
                { "name": "grpc", "priority": 0 },
                { "name": "mqtt", "priority": 1, "mqtt": { "broker": broker, "keepaliveSeconds": 5 } },
            ]),
            &format!(
                "connectivity:\n  preferredRetry: 3s\n  methods:\n    - name: grpc\n      priority: 0\n      grpc:\n        endpoint: 127.0.0.1:{port}\n        caFile: {ca}\n        serverName: localhost\n        connectTimeout: 2s\n        keepalive: 1s\n    - name: mqtt\n      priority: 1\n      mqtt:\n        broker: {broker}\n        keepalive: 5s\n",
                port = env.grpc_port,
                ca = env.cluster.ca_file.display(),
            ),
        )
        .await?;
    let name = up.name.clone();
    let logs = || up.logs(25);
    create_pod(
        &env,
        &name,
        "steady",
        json!({ "containers": [busybox("main", "exec sleep 3600")] }),
    )
    .await?;
    let before = wait_pod(&env, "steady", "running", Duration::from_secs(90), |p| {
        running_and_ready(p).then(|| container_id(p)).flatten()
    })
    .await?;
    wait_connected_via(&env, &name, "grpc", Duration::from_secs(30), &logs).await?;

    // Watch Ready the whole time.
    let watch_env = env.nodes();
    let watched = name.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut not_ready = Vec::new();
        loop {
            if let Ok(Some(node)) = watch_env.get_opt(&watched).await
                && let Some((status, reason)) = e2e::cluster::node_ready(&node)
                && status != "True"
            {
                not_ready.push(reason);
            }
            tokio::select! {
                _ = &mut stop_rx => return not_ready,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });

    let cut = LinkCut::new(env.grpc_port)?;
    let switched = Instant::now();
    wait_connected_via(&env, &name, "mqtt", Duration::from_secs(30), &logs).await?;
    let fallback = switched.elapsed();
    // Stay cut past aranya's own gRPC keepalive (15 s): it must not matter.
    tokio::time::sleep(Duration::from_secs(16)).await;
    cut.restore();
    let restored = Instant::now();
    wait_connected_via(&env, &name, "grpc", Duration::from_secs(40), &logs).await?;
    let back = restored.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(());
    let not_ready = watcher.await?;
    assert!(
        not_ready.is_empty(),
        "the Node left Ready: {not_ready:?}\n{}",
        logs()
    );
    let pod = wait_pod(
        &env,
        "steady",
        "still running",
        Duration::from_secs(10),
        |p| running_and_ready(p).then(|| p.clone()),
    )
    .await?;
    assert_eq!(restarts(&pod), 0, "the pod never restarted");
    assert_eq!(container_id(&pod), Some(before), "the same container runs");
    eprintln!("fell back to mqtt in {fallback:?}; back on grpc {back:?} after the link returned");
    Ok(())
}

/// A second agent under the same name is refused while the first lives
/// (they do not take turns at the broker); once the first is gone, the
/// second takes over.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_with_the_same_name_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::over("dupmqtt", MQTT).await?;
    let mut up = env.device_up("a", 10).await?;
    let first_sessions = up.arhat.log().matches("session resumed").count();
    // A clone of the device (its credentials copied): one identity, twice.
    let second_dir = env.dir.join("second-agent");
    std::fs::create_dir_all(second_dir.join("identity"))?;
    std::fs::copy(
        env.arhat_data_dir(&up.name).join("identity/device.pem"),
        second_dir.join("identity/device.pem"),
    )?;
    let second = env.start_arhat_with(
        &up.name,
        "2",
        &[],
        &format!(
            "runtime:\n  kind: none\n  dataDir: {}\n",
            second_dir.display()
        ),
    )?;
    second
        .wait_log("already connected", Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        up.arhat.log().matches("session resumed").count(),
        first_sessions,
        "the first agent kept its link:\n{}",
        up.arhat.log_tail(20)
    );
    assert_eq!(
        env.ready(&up.name).await.map(|r| r.0),
        Some("True".to_string())
    );
    // The first dies: its will frees the name, and the second is let in.
    up.arhat.kill();
    second
        .wait_log("connected to aranya", Duration::from_secs(60))
        .await?;
    env.wait_ready(
        &up.name,
        "True",
        Some("EdgeDeviceConnected"),
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}
