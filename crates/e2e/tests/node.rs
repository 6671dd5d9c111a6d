//! EdgeDevice -> a live virtual Node over gRPC, on the real control plane.

use std::time::Duration;

use e2e::{TestEnv, cluster::labels, wait_for};
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
    let name = env.device("a");
    env.create_device(&name, 7).await?;
    let _aranya = env.start_aranya("a")?;
    let arhat = env.start_arhat(&name, "1", &[])?;
    let node = env
        .wait_ready(&name, "True", Some("EdgeDeviceConnected"), READY_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\narhat log:\n{}", arhat.log_tail(30)))?;

    let labels = labels(&node);
    assert_eq!(labels.get("node-role.kubernetes.io/edge").map(String::as_str), Some(""));
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&name));
    assert_eq!(labels.get("aranya.arhat.dev/edge-device"), Some(&name));
    assert_eq!(labels.get("kubernetes.io/arch").map(String::as_str), Some(host_arch()));
    assert_eq!(labels.get("kubernetes.io/os").map(String::as_str), Some("linux"));
    assert_eq!(labels.get("topology.kubernetes.io/zone").map(String::as_str), Some("edge-zone-a"));
    assert_eq!(labels.get("example.com/site").map(String::as_str), Some("lab"));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    assert_eq!(
        node.metadata.annotations.as_ref().and_then(|a| a.get("aranya.arhat.dev/device-hostname")),
        Some(&hostname.trim().to_string())
    );

    let spec = node.spec.clone().unwrap_or_default();
    let taints = spec.taints.unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "aranya.arhat.dev/edge-device" && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    assert_eq!(spec.pod_cidrs, Some(vec!["10.200.1.0/24".to_string()]));

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
    assert_eq!((addresses[0].type_.as_str(), addresses[0].address.as_str()), ("InternalIP", "127.0.0.1"));
    let port = status.daemon_endpoints.and_then(|d| d.kubelet_endpoint).map(|e| e.port);
    assert_eq!(port, Some(10250));

    let info = status.node_info.expect("nodeInfo");
    let uname_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    assert_eq!(info.kernel_version, uname_release.trim());
    assert_eq!(info.architecture, host_arch());
    assert_eq!(info.boot_id, std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim());
    assert!(!info.os_image.is_empty());
    assert!(!info.container_runtime_version.is_empty());
    // A kubelet version the apiserver accepts: semver, never newer than it.
    let server = env.client.apiserver_version().await?;
    let expected_prefix = format!("v{}.{}.0-aranya.", server.major, server.minor.trim_end_matches('+'));
    assert!(info.kubelet_version.starts_with(&expected_prefix), "{}", info.kubelet_version);

    // The EdgeDevice reports it too.
    let device = env.devices().get(&name).await?;
    let conditions = device.status.unwrap_or_default().conditions;
    assert!(conditions.iter().any(|c| c.type_ == "Connected" && c.status == "True"), "{conditions:?}");

    // kubectl shows the role.
    let wide = env.cluster.kubectl(&["get", "node", &name, "-o", "wide"])?;
    assert!(wide.contains("edge") && wide.contains(" Ready"), "{wide}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_renews_while_aranya_lives() -> anyhow::Result<()> {
    let env = TestEnv::new("lease").await?;
    let name = env.device("a");
    env.create_device(&name, 3).await?;
    let _aranya = env.start_aranya("a")?;
    let _arhat = env.start_arhat(&name, "1", &[])?;
    let node = env.wait_ready(&name, "True", None, READY_TIMEOUT).await?;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-node-lease");
    let first = wait_for("the node lease", Duration::from_secs(20), || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await?;
    let owner = first.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.first().map(|o| o.uid.as_str()), node.metadata.uid.as_deref());
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
