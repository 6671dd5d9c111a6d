//! Proves the test bed: a real control plane whose API, controllers and scheduler work.
//!
//! These tests need the multi-call kube binary: `$ARANYA_KUBE_BIN`, or built from testbed/kube
//! with the Go toolchain on first use. Without Go they fail (never skip) with a message saying so.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use testbed::{ControlPlane, Issued, Options};

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        let last = match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn shared() -> anyhow::Result<&'static ControlPlane> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("testbed=info")),
        )
        .with_test_writer()
        .try_init();
    ControlPlane::shared()
        .await
        .context("starting the shared control plane")
}

#[tokio::test]
async fn api_answers_with_the_built_version() -> anyhow::Result<()> {
    let cp = shared().await?;
    let client = cp.client().await?;
    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, testbed::K8S_VERSION);

    // The multi-call binary's kubectl talks to it with the admin kubeconfig.
    let out = tokio::process::Command::new(cp.kube_binary())
        .arg("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["version", "-o", "json"])
        .output()
        .await
        .context("run kube kubectl version")?;
    ensure!(
        out.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.37.2", "{v}");
    assert_eq!(v["clientVersion"]["gitVersion"], "v1.37.2", "{v}");

    // Logs are where the docs say.
    for c in [
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
    ] {
        let log = cp.dir().join("logs").join(format!("{c}.log"));
        ensure!(log.is_file(), "missing {}", log.display());
    }
    cp.check_alive()?;
    Ok(())
}

#[tokio::test]
async fn deployment_becomes_replicaset_and_scheduled_pods() -> anyhow::Result<()> {
    let cp = shared().await?;
    let client = cp.client().await?;
    let ns_name = "testbed-deploy";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns_name}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns_name);
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": testbed::WORKER_NODE},
                    "containers": [{"name": "web", "image": "nginx:1.27"}],
                },
            },
        },
    }))?;
    deployments.create(&PostParams::default(), &deploy).await?;

    // Controller-manager: the deployment controller makes a ReplicaSet, which makes Pods.
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns_name);
    eventually("a ReplicaSet", Duration::from_secs(60), || async {
        let list = replicasets.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().next())
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns_name);
    // Scheduler: both pods get bound to the worker (they stay Pending: it has no kubelet).
    let bound = eventually(
        "2 pods bound to the worker",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let nodes: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
                .collect();
            Ok((nodes.len() == 2).then_some(nodes))
        },
    )
    .await?;
    assert!(bound.iter().all(|n| n == testbed::WORKER_NODE), "{bound:?}");

    // The service-account admission plugin found the controller-made default ServiceAccount.
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    let pod = list.items.first().ok_or_else(|| anyhow!("no pod"))?;
    assert_eq!(
        pod.spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref()),
        Some("default")
    );

    namespaces.delete(ns_name, &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn kubelet_client_identity_is_not_cluster_admin() -> anyhow::Result<()> {
    let cp = shared().await?;
    let client = cp.client().await?;

    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    let crb = crbs.get(testbed::KUBELET_CLIENT_BINDING).await?;
    assert_eq!(crb.role_ref.name, "system:kubelet-api-admin");

    // Authenticate as the apiserver's kubelet client and ask who we are.
    let read = |ext: &str| {
        std::fs::read_to_string(
            cp.dir()
                .join("pki")
                .join(format!("apiserver-kubelet-client.{ext}")),
        )
    };
    let cert = Issued {
        cert_pem: read("crt")?,
        key_pem: read("key")?,
    };
    let tmp = tempfile::tempdir()?;
    let kubeconfig = tmp.path().join("kubelet-client.kubeconfig");
    cp.write_kubeconfig(&kubeconfig, testbed::KUBELET_CLIENT_USER, &cert)?;
    let kc = testbed::client_from_kubeconfig(&kubeconfig).await?;
    let reviews: Api<SelfSubjectReview> = Api::all(kc.clone());
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}
    }))?;
    let me = reviews.create(&PostParams::default(), &review).await?;
    let user = me
        .status
        .and_then(|s| s.user_info)
        .ok_or_else(|| anyhow!("no user info"))?;
    assert_eq!(user.username.as_deref(), Some(testbed::KUBELET_CLIENT_USER));
    let groups = user.groups.unwrap_or_default();
    assert!(!groups.iter().any(|g| g == "system:masters"), "{groups:?}");

    // RBAC: may reach kubelets (nodes/proxy), may not read secrets.
    let sars: Api<SubjectAccessReview> = Api::all(client.clone());
    let allowed = |attrs: serde_json::Value| {
        let sars = sars.clone();
        let groups = groups.clone();
        async move {
            let sar: SubjectAccessReview = serde_json::from_value(json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": testbed::KUBELET_CLIENT_USER, "groups": groups, "resourceAttributes": attrs},
            }))?;
            let r = sars.create(&PostParams::default(), &sar).await?;
            anyhow::Ok(r.status.map(|s| s.allowed).unwrap_or(false))
        }
    };
    assert!(allowed(json!({"verb": "get", "resource": "nodes", "subresource": "proxy"})).await?);
    assert!(!allowed(json!({"verb": "list", "resource": "secrets"})).await?);
    assert!(!allowed(json!({"verb": "delete", "resource": "namespaces"})).await?);
    Ok(())
}

#[tokio::test]
async fn worker_node_is_ready_and_renews_its_lease() -> anyhow::Result<()> {
    let cp = shared().await?;
    let client = cp.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(testbed::WORKER_NODE).await?;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("True"));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(taints.is_empty(), "{taints:?}");
    assert_eq!(
        node.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/hostname"))
            .map(String::as_str),
        Some(testbed::WORKER_NODE)
    );

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew_time = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let first = renew_time(leases.get(testbed::WORKER_NODE).await?)
        .ok_or_else(|| anyhow!("lease without renewTime"))?;
    let later = eventually(
        "the lease to be renewed",
        Duration::from_secs(30),
        || async {
            let t = renew_time(leases.get(testbed::WORKER_NODE).await?);
            Ok(t.filter(|t| *t > first))
        },
    )
    .await?;
    assert!(later > first);
    Ok(())
}

/// The controller-manager signs approved kubelet-serving CSRs with the cluster CA.
#[tokio::test]
async fn approved_kubelet_serving_csr_gets_signed() -> anyhow::Result<()> {
    use base64::Engine as _;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;

    let cp = shared().await?;
    let client = cp.client().await?;
    let node = "testbed-csr-node";
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![format!("{node}.local")])?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    let request = params.serialize_request(&key)?.pem()?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": {"name": node},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request),
            "signerName": "kubernetes.io/kubelet-serving",
            "usages": ["digital signature", "server auth"],
        },
    }))?;
    csrs.create(&PostParams::default(), &csr).await?;
    let approval = json!({"status": {"conditions": [{
        "type": "Approved", "status": "True", "reason": "TestApproved", "message": "test",
    }]}});
    csrs.patch_approval(
        node,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&approval),
    )
    .await?;
    let cert = eventually("the CSR to be signed", Duration::from_secs(60), || async {
        let csr = csrs.get(node).await?;
        Ok(csr.status.and_then(|s| s.certificate))
    })
    .await?;
    let pem = String::from_utf8(cert.0)?;
    ensure!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    // Signed by the cluster CA: the CA's subject is the issuer. Compare DER-encoded names
    // cheaply by checking the CA common name appears in the issued certificate.
    let der = base64::engine::general_purpose::STANDARD.decode(
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )?;
    let needle = b"aranya-testbed-ca";
    ensure!(
        der.windows(needle.len()).any(|w| w == needle),
        "issued certificate does not name the cluster CA as issuer"
    );
    csrs.delete(node, &DeleteParams::default()).await?;
    Ok(())
}

/// A control plane of its own with non-default options; dropping it stops everything.
#[tokio::test]
async fn own_control_plane_applies_options_and_tears_down() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options {
        not_ready_toleration_seconds: Some(7),
        unreachable_toleration_seconds: Some(9),
        node_monitor_grace_period: Some(Duration::from_secs(20)),
    })
    .await
    .context("starting a control plane")?;
    let client = cp.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "tolerations"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))?;
    let pod = pods.create(&PostParams::default(), &pod).await?;
    // The DefaultTolerationSeconds admission plugin applies the apiserver flags.
    let tolerations = pod.spec.and_then(|s| s.tolerations).unwrap_or_default();
    let seconds = |key: &str| {
        tolerations
            .iter()
            .find(|t| t.key.as_deref() == Some(key))
            .and_then(|t| t.toleration_seconds)
    };
    assert_eq!(seconds("node.kubernetes.io/not-ready"), Some(7));
    assert_eq!(seconds("node.kubernetes.io/unreachable"), Some(9));

    let cm_cmdline = cmdlines_containing("kube-controller-manager", cp.dir())?;
    assert!(
        cm_cmdline
            .iter()
            .any(|c| c.contains("--node-monitor-grace-period=20s")),
        "{cm_cmdline:?}"
    );

    let dir = cp.dir().to_owned();
    let before = cmdlines_containing("", &dir)?;
    assert_eq!(before.len(), 4, "{before:?}");
    drop(client);
    drop(pods);
    tokio::task::spawn_blocking(move || drop(cp)).await?;
    let after = cmdlines_containing("", &dir)?;
    assert!(after.is_empty(), "still running: {after:?}");
    if std::env::var_os(testbed::KEEP_ENV).is_none() {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
    Ok(())
}

/// Command lines of live processes that mention `dir` (and `needle`).
fn cmdlines_containing(needle: &str, dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        // Zombies have an empty cmdline.
        if cmdline.contains(&dir) && cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    Ok(found)
}

/// Without Go (and without a built binary) the build fails loudly, never silently.
#[test]
fn build_without_go_fails_clearly() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    // A PATH with just what build.sh needs besides go.
    let bin = tempfile::tempdir()?;
    for tool in ["bash", "cat", "sha256sum", "cut", "dirname", "mkdir"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("{tool} not found"))?;
        std::os::unix::fs::symlink(found, bin.path().join(tool))?;
    }
    let script = testbed::kube_source_dir().join("build.sh");
    let out = std::process::Command::new(bin.path().join("bash"))
        .arg(&script)
        .env("ARANYA_CACHE", cache.path())
        .env("PATH", bin.path())
        .output()?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Go toolchain"), "{stderr}");
    Ok(())
}
