//! EdgeDevice -> a live virtual Node over gRPC, on the real control plane.

use std::time::Duration;

use aranya::podcidr::Cidr;
use e2e::{
    TestEnv,
    cluster::{DeviceUp, labels},
    wait_for,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn host_memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    kib * 1024
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => panic!("extend this test for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn device_becomes_a_ready_node_with_its_real_facts() -> anyhow::Result<()> {
    let env = TestEnv::new("ready").await?;
    // Keep the whole value: dropping it stops aranya and arhat.
    let up = env.device_up("a", 7).await?;
    let (name, node) = (up.name.clone(), up.node.clone());

    let labels = labels(&node);
    assert_eq!(
        labels
            .get("node-role.kubernetes.io/edge")
            .map(String::as_str),
        Some("")
    );
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&name));
    assert_eq!(labels.get("aranya.arhat.dev/edge-device"), Some(&name));
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some(host_arch())
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("edge-zone-a")
    );
    assert_eq!(
        labels.get("example.com/site").map(String::as_str),
        Some("lab")
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    assert_eq!(
        node.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("aranya.arhat.dev/device-hostname")),
        Some(&hostname.trim().to_string())
    );

    let spec = node.spec.clone().unwrap_or_default();
    let taints = spec.taints.unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "aranya.arhat.dev/edge-device" && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    // The device's own, kept in its status.
    let cidr = env.devices().get(&name).await?.spec.pod.ipv4_cidr;
    assert!(cidr.is_some());
    assert_eq!(spec.pod_cidrs, cidr.clone().map(|c| vec![c]));
    let status = env.devices().get_status(&name).await?.status;
    assert_eq!(status.map(|s| s.pod_cidrs), cidr.map(|c| vec![c]));

    let status = node.status.clone().unwrap_or_default();
    let capacity = status.capacity.unwrap_or_default();
    let cpus = std::thread::available_parallelism()?.get();
    assert_eq!(capacity["cpu"].0, cpus.to_string());
    assert_eq!(capacity["memory"].0, host_memory_bytes().to_string());
    assert_eq!(capacity["pods"].0, "7");
    assert!(capacity["ephemeral-storage"].0.parse::<u64>()? > 0);
    assert_eq!(status.allocatable.unwrap_or_default()["pods"].0, "7");

    let addresses = status.addresses.unwrap_or_default();
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    // The address aranya was told to advertise (routable, not loopback).
    let advertised = e2e::cluster::node_address().to_string();
    assert_eq!(
        (addresses[0].type_.as_str(), addresses[0].address.as_str()),
        ("InternalIP", advertised.as_str())
    );
    let port = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .unwrap_or_default();
    // The node's own kubelet port, listening.
    assert!(port > 0, "no kubelet port advertised");
    std::net::TcpStream::connect((advertised.as_str(), port as u16))?;

    let info = status.node_info.expect("nodeInfo");
    let uname_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    assert_eq!(info.kernel_version, uname_release.trim());
    assert_eq!(info.architecture, host_arch());
    assert_eq!(
        info.boot_id,
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim()
    );
    assert!(!info.os_image.is_empty());
    assert!(!info.container_runtime_version.is_empty());
    // A kubelet version the apiserver accepts: semver, never newer than it.
    let server = env.client.apiserver_version().await?;
    let expected_prefix = format!(
        "v{}.{}.0-aranya.",
        server.major,
        server.minor.trim_end_matches('+')
    );
    assert!(
        info.kubelet_version.starts_with(&expected_prefix),
        "{}",
        info.kubelet_version
    );

    // The EdgeDevice reports it too (its status is written after the Node's).
    let connected = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conditions
            .iter()
            .any(|c| c.type_ == "Connected" && c.status == "True")
    };
    let _ = e2e::wait_for(
        "the EdgeDevice Connected",
        Duration::from_secs(20),
        || async {
            let device = env.devices().get(&name).await.ok()?;
            connected(&device.status.unwrap_or_default().conditions).then_some(())
        },
    )
    .await;
    let device = env.devices().get(&name).await?;
    let conditions = device.status.unwrap_or_default().conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Connected" && c.status == "True"),
        "{conditions:?}"
    );

    // kubectl shows the role.
    let wide = env.cluster.kubectl(&["get", "node", &name, "-o", "wide"])?;
    assert!(wide.contains("edge") && wide.contains(" Ready"), "{wide}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_renews_while_aranya_lives() -> anyhow::Result<()> {
    let env = TestEnv::new("lease").await?;
    let DeviceUp {
        name,
        aranya: _aranya,
        arhat: _arhat,
        node,
    } = env.device_up("a", 3).await?;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-node-lease");
    let first = wait_for("the node lease", Duration::from_secs(20), || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await?;
    let owner = first.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owner.first().map(|o| o.uid.as_str()),
        node.metadata.uid.as_deref()
    );
    let spec = first.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some(name.as_str()));
    assert!(spec.lease_duration_seconds.unwrap_or(0) >= 40);
    let renewed = spec.renew_time.expect("renewTime").0;
    wait_for("the lease renewed", Duration::from_secs(25), || async {
        let l = leases.get_opt(&name).await.ok().flatten()?;
        let t = l.spec?.renew_time?.0;
        (t > renewed).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn arhat_killed_goes_not_ready_and_back() -> anyhow::Result<()> {
    let env = TestEnv::new("disconnect").await?;
    let DeviceUp {
        name,
        aranya: _aranya,
        mut arhat,
        node: _,
    } = env.device_up("a", 3).await?;

    arhat.kill();
    let started = std::time::Instant::now();
    let node = env
        .wait_ready(
            &name,
            "False",
            Some("EdgeDeviceDisconnected"),
            Duration::from_secs(10),
        )
        .await?;
    eprintln!("Ready=False {:?} after the kill", started.elapsed());
    let device = env.devices().get(&name).await?;
    let connected = device.status.unwrap_or_default().conditions;
    assert!(
        connected
            .iter()
            .any(|c| c.type_ == "Connected" && c.status == "False"),
        "{connected:?}"
    );
    let uid = node.metadata.uid.clone();

    let _arhat = env.start_arhat(&name, "2", &[])?;
    let node = env
        .wait_ready(&name, "True", Some("EdgeDeviceConnected"), READY_TIMEOUT)
        .await?;
    assert_eq!(node.metadata.uid, uid, "the Node is kept, not recreated");
    Ok(())
}

/// A device that is offline costs aranya (nearly) nothing: its virtual node
/// once polled a closed channel until the device connected, a core each.
#[tokio::test(flavor = "multi_thread")]
async fn aranya_idles_while_a_device_is_offline() -> anyhow::Result<()> {
    let env = TestEnv::new("offline").await?;
    let name = env.device("a");
    env.create_device(&name, 3).await?;
    let aranya = env.start_aranya("a")?;
    env.wait_ready(
        &name,
        "False",
        Some("EdgeDeviceDisconnected"),
        READY_TIMEOUT,
    )
    .await?;
    let (before, from) = (aranya.cpu_time()?, std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (busy, idle) = (aranya.cpu_time()? - before, from.elapsed());
    eprintln!("aranya used {busy:?} of CPU in {idle:?} with its device never connected");
    assert!(
        busy < idle / 4,
        "aranya used {busy:?} of CPU in {idle:?} with its only device offline:\n{}",
        aranya.log_tail(20)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn aranya_restart_keeps_nodes_consistent() -> anyhow::Result<()> {
    let env = TestEnv::new("restart").await?;
    let names = [env.device("a"), env.device("b")];
    for name in &names {
        env.create_device(name, 3).await?;
    }
    let mut aranya = env.start_aranya("a")?;
    let _arhats: Vec<_> = names
        .iter()
        .map(|n| env.start_arhat(n, "1", &[]))
        .collect::<Result<_, _>>()?;
    let mut uids = Vec::new();
    for name in &names {
        uids.push(
            env.wait_ready(name, "True", None, READY_TIMEOUT)
                .await?
                .metadata
                .uid,
        );
    }

    aranya.kill();
    let aranya2 = env.start_aranya("b")?;
    // Devices reconnect to the new process; the Nodes stay the same objects.
    for (name, uid) in names.iter().zip(&uids) {
        wait_for(&format!("{name} reconnected"), READY_TIMEOUT, || async {
            aranya2
                .log()
                .lines()
                .any(|l| l.contains("device connected") && l.contains(name.as_str()))
                .then_some(())
        })
        .await?;
        let node = env
            .wait_ready(name, "True", Some("EdgeDeviceConnected"), READY_TIMEOUT)
            .await?;
        assert_eq!(&node.metadata.uid, uid);
    }
    // No duplicates: exactly one Node and one Lease per device.
    let selector = format!("aranya.arhat.dev/edge-device in ({})", names.join(","));
    let nodes = env
        .nodes()
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    assert_eq!(nodes.items.len(), names.len());
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-node-lease");
    for name in &names {
        assert!(leases.get_opt(name).await?.is_some());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_replica_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let env = TestEnv::new("failover").await?;
    let name = env.device("a");
    env.create_device(&name, 3).await?;
    let mut leader = env.start_aranya("one")?;
    leader
        .wait_log("became leader", Duration::from_secs(30))
        .await?;
    let standby = env.start_aranya("two")?;
    let _arhat = env.start_arhat(&name, "1", &[])?;
    env.wait_ready(&name, "True", None, READY_TIMEOUT).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        standby.log().contains("standing by"),
        "{}",
        standby.log_tail(20)
    );
    assert!(!standby.log().contains("became leader"));

    leader.kill();
    standby
        .wait_log("became leader", Duration::from_secs(40))
        .await?;
    standby.wait_log("device connected", READY_TIMEOUT).await?;
    env.wait_ready(&name, "True", Some("EdgeDeviceConnected"), READY_TIMEOUT)
        .await?;
    Ok(())
}

/// A device with no pod CIDR of its own gets one from the node IPAM, its
/// pods get addresses from it, and a Node deleted by hand comes back with it.
#[tokio::test(flavor = "multi_thread")]
async fn node_deleted_by_hand_is_recreated_with_its_pod_cidr() -> anyhow::Result<()> {
    let env = TestEnv::new("recreate").await?;
    let DeviceUp {
        name,
        aranya: _aranya,
        arhat: _arhat,
        node,
    } = env
        .device_up_with("a", 3, serde_json::json!({ "ipv4CIDR": null }))
        .await?;
    let assigned = wait_for(
        "the pod CIDR in the EdgeDevice status",
        READY_TIMEOUT,
        || async {
            let cidrs = env
                .devices()
                .get_status(&name)
                .await
                .ok()?
                .status?
                .pod_cidrs;
            (!cidrs.is_empty()).then_some(cidrs)
        },
    )
    .await?;
    let node_cidrs = env.nodes().get(&name).await?.spec.and_then(|s| s.pod_cidrs);
    assert_eq!(node_cidrs.as_ref(), Some(&assigned));
    let cidr: Cidr = assigned[0].parse()?;
    assert!(
        testbed::CLUSTER_CIDR.parse::<Cidr>()?.contains(&cidr),
        "{cidr}"
    );

    e2e::pods::create_pod(
        &env,
        &name,
        "web",
        serde_json::json!({ "containers": [e2e::pods::busybox("web", "sleep 3600")] }),
    )
    .await?;
    let ip = e2e::pods::wait_pod(&env, "web", "an address", Duration::from_secs(90), |p| {
        p.status.as_ref()?.pod_ip.clone()
    })
    .await?;
    assert!(
        cidr.contains(&format!("{ip}/32").parse()?),
        "{ip} not in {cidr}"
    );

    env.nodes().delete(&name, &Default::default()).await?;
    let recreated = wait_for("the node recreated", Duration::from_secs(30), || async {
        let n = env.nodes().get_opt(&name).await.ok()??;
        (n.metadata.uid != node.metadata.uid).then_some(n)
    })
    .await?;
    assert!(labels(&recreated).contains_key("kubernetes.io/arch"));
    assert_eq!(recreated.spec.and_then(|s| s.pod_cidrs), Some(assigned));
    env.wait_ready(&name, "True", Some("EdgeDeviceConnected"), READY_TIMEOUT)
        .await?;
    Ok(())
}

/// aranya refuses a pod CIDR the node IPAM would choke on or that another
/// device holds, naming the field, and makes no Node for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_cidr_outside_the_cluster_or_taken_is_refused_naming_the_field() -> anyhow::Result<()>
{
    let env = TestEnv::new("cidr").await?;
    let up = env.device_up("a", 1).await?;
    let taken = env
        .devices()
        .get(&up.name)
        .await?
        .spec
        .pod
        .ipv4_cidr
        .unwrap_or_default();
    let outside = env.device("out");
    env.create_device_with(
        &outside,
        1,
        serde_json::json!({ "ipv4CIDR": "10.100.1.0/24" }),
    )
    .await?;
    let twin = env.device("twin");
    env.create_device_with(&twin, 1, serde_json::json!({ "ipv4CIDR": taken }))
        .await?;
    for (device, why) in [
        (
            &outside,
            format!(
                "10.100.1.0/24 is outside the cluster CIDR ({})",
                testbed::CLUSTER_CIDR
            ),
        ),
        (
            &twin,
            format!(
                "{taken} overlaps {taken}, the pod CIDR of EdgeDevice {}",
                up.name
            ),
        ),
    ] {
        let message = wait_for("the PodCIDR condition", READY_TIMEOUT, || async {
            let status = env.devices().get_status(device).await.ok()?.status?;
            let c = status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "PodCIDR")?;
            (c.status == "False").then_some(c.message)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", up.logs(40)))?;
        assert!(message.starts_with("spec.pod.ipv4CIDR: "), "{message}");
        assert!(message.contains(&why), "{message}");
        let recorded = wait_for("the PodCIDRRefused event", READY_TIMEOUT, || async {
            let events = env.device_events(device, "PodCIDRRefused").ok()?;
            (!events.is_empty()).then_some(events)
        })
        .await?;
        assert!(recorded.contains("spec.pod.ipv4CIDR"), "{recorded}");
        assert!(
            env.nodes().get_opt(device).await?.is_none(),
            "a Node for {device}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn edge_device_deleted_removes_node_and_lease() -> anyhow::Result<()> {
    let env = TestEnv::new("delete").await?;
    let DeviceUp {
        name,
        aranya: _aranya,
        arhat: _arhat,
        node: _,
    } = env.device_up("a", 3).await?;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-node-lease");
    wait_for("the lease", Duration::from_secs(20), || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await?;

    env.devices().delete(&name, &Default::default()).await?;
    wait_for(
        "node, lease and EdgeDevice gone",
        Duration::from_secs(30),
        || async {
            let node = env.nodes().get_opt(&name).await.ok()?;
            let lease = leases.get_opt(&name).await.ok()?;
            let device = env.devices().get_opt(&name).await.ok()?;
            (node.is_none() && lease.is_none() && device.is_none()).then_some(())
        },
    )
    .await?;
    // Its serving-certificate requests go too.
    let csrs: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        Api::all(env.client.clone());
    let selector = format!("aranya.arhat.dev/serving-node={name}");
    let left = csrs
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    assert!(left.items.is_empty(), "{} CSRs left", left.items.len());
    // And it stays gone (the agent keeps dialing, and is refused).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(env.nodes().get_opt(&name).await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn second_agent_with_the_same_name_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new("duplicate").await?;
    let DeviceUp {
        name,
        aranya,
        arhat: first,
        node: _,
    } = env.device_up("a", 3).await?;
    let second = env.start_arhat(&name, "2", &[])?;
    second
        .wait_log("already connected", Duration::from_secs(20))
        .await?;
    assert!(aranya.log().contains("refusing device"));
    // The first keeps its session: no reconnect, node stays Ready.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        first.log().matches("connected to aranya").count(),
        1,
        "{}",
        first.log_tail(20)
    );
    assert_eq!(env.ready(&name).await.map(|r| r.0).as_deref(), Some("True"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_with_unknown_protocol_version_is_refused_with_a_message() -> anyhow::Result<()> {
    let env = TestEnv::new("version").await?;
    let name = env.device("a");
    env.create_device(&name, 3).await?;
    let _aranya = env.start_aranya("a")?;
    let mut arhat = env.start_arhat(&name, "1", &["--protocol-version", "99"])?;
    let status = arhat.wait_exit(Duration::from_secs(30)).await?;
    assert!(!status.success());
    let log = arhat.log();
    assert!(
        log.contains("protocol version 99 is not supported"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_edge_devices_are_refused_naming_the_field() -> anyhow::Result<()> {
    let env = TestEnv::new("invalid").await?;
    let cases = [
        (
            r#"{"connectivity":{"methods":[{"name":"carrier-pigeon"}]}}"#,
            "spec.connectivity.methods[0].name",
        ),
        (
            r#"{"connectivity":{"methods":[]}}"#,
            "spec.connectivity.methods",
        ),
        (
            r#"{"connectivity":{"methods":[{"name":"mqtt"}]}}"#,
            "spec.connectivity.methods[0]",
        ),
        (
            r#"{"connectivity":{"methods":[{"name":"grpc"}]},"pod":{"ipv4CIDR":"10.0.0.300/24"}}"#,
            "spec.pod.ipv4CIDR",
        ),
        (
            r#"{"connectivity":{"methods":[{"name":"grpc"}]},"pod":{"allocatable":-1}}"#,
            "spec.pod.allocatable",
        ),
        (
            r#"{"connectivity":{"methods":[{"name":"grpc"},{"name":"grpc"}]}}"#,
            "spec.connectivity.methods[1]",
        ),
        (r#"{"node":{}}"#, "spec.connectivity"),
    ];
    for (i, (spec, field)) in cases.iter().enumerate() {
        let manifest = format!(
            r#"{{"apiVersion":"aranya.arhat.dev/v1alpha1","kind":"EdgeDevice","metadata":{{"name":"{}-{i}"}},"spec":{spec}}}"#,
            env.name
        );
        let path = env.dir.join(format!("invalid-{i}.json"));
        std::fs::write(&path, manifest)?;
        let out = env
            .cluster
            .kubectl_output(&["apply", "-f", &path.to_string_lossy()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} was accepted");
        assert!(
            stderr.contains(field),
            "case {i}: expected {field} in: {stderr}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_serving_certificate_is_issued_for_the_node() -> anyhow::Result<()> {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let env = TestEnv::new("serving").await?;
    let up = env.device_up("a", 3).await?;
    let csrs: Api<CertificateSigningRequest> = Api::all(env.client.clone());
    let selector = format!("aranya.arhat.dev/serving-node={}", up.name);
    let csr = wait_for(
        "an issued serving certificate",
        Duration::from_secs(60),
        || async {
            let list = csrs
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .ok()?;
            list.items.into_iter().find(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.certificate.as_ref())
                    .is_some()
            })
        },
    )
    .await?;
    assert_eq!(csr.spec.signer_name, "kubernetes.io/kubelet-serving");
    let status = csr.status.clone().unwrap_or_default();
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Approved" && c.status == "True")
    );
    let cert = env.dir.join("serving.crt");
    std::fs::write(&cert, &status.certificate.expect("certificate").0)?;
    let openssl = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("openssl").args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let cert_path = cert.to_string_lossy().into_owned();
    let text = openssl(&[
        "x509",
        "-in",
        &cert_path,
        "-noout",
        "-subject",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ])?;
    assert!(
        text.contains(&format!("CN = system:node:{}", up.name))
            || text.contains(&format!("CN=system:node:{}", up.name)),
        "{text}"
    );
    assert!(text.contains("system:nodes"), "{text}");
    let san = format!("IP Address:{}", e2e::cluster::node_address());
    assert!(text.contains(&san), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    // Signed by the cluster CA the apiserver trusts for kubelets.
    let verified = openssl(&[
        "verify",
        "-CAfile",
        &env.cluster.ca_file.to_string_lossy(),
        &cert_path,
    ])?;
    assert!(verified.contains(": OK"), "{verified}");
    Ok(())
}
