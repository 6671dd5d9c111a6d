//! What a pod asks of its containers' environment reaches dockerd:
//! securityContext (users, groups, read-only root, capabilities), the host's
//! PID and IPC namespaces, dnsPolicy/dnsConfig and hostAliases.

use std::time::Duration;

use e2e::{
    TestEnv,
    pods::{busybox, create_pod, printed, running_and_ready, wait_pod},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn security_context_host_namespaces_dns_and_aliases_apply() -> anyhow::Result<()> {
    let env = TestEnv::new("security").await?;
    let up = env.device_up("a", 10).await?;
    let mut restricted = busybox(
        "restricted",
        "echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); \
         (touch /probe 2>/dev/null && echo root=rw) || echo root=ro; \
         echo ipc=$(readlink /proc/self/ns/ipc); echo pid=$(readlink /proc/self/ns/pid); \
         echo ndots=$(grep -c 'options ndots:2' /etc/resolv.conf); \
         echo nameserver=$(grep nameserver /etc/resolv.conf); \
         echo search=$(grep search /etc/resolv.conf); \
         echo alias=$(grep -cE '^10[.]1[.]2[.]3[[:space:]]+foo[.]example[[:space:]]+bar[.]example$' /etc/hosts); \
         echo self=$(grep -cE \"[[:space:]]$(hostname)$\" /etc/hosts); echo done; exec sleep 3600",
    );
    restricted["securityContext"] =
        json!({ "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false });
    let mut caps = busybox(
        "caps",
        "echo caps=$(grep CapEff /proc/self/status | cut -f2); echo done; exec sleep 3600",
    );
    caps["securityContext"] = json!({
        "runAsUser": 0,
        "capabilities": { "drop": ["ALL"], "add": ["NET_BIND_SERVICE"] },
    });
    create_pod(
        &env,
        &up.name,
        "secure",
        json!({
            "securityContext": { "runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000] },
            "hostPID": true,
            "hostIPC": true,
            "dnsPolicy": "None",
            "dnsConfig": {
                "nameservers": ["192.0.2.53"],
                "searches": ["example.internal"],
                "options": [{ "name": "ndots", "value": "2" }],
            },
            "hostAliases": [{ "ip": "10.1.2.3", "hostnames": ["foo.example", "bar.example"] }],
            "containers": [restricted, caps],
        }),
    )
    .await?;
    wait_pod(&env, "secure", "running", TIMEOUT, |p| {
        running_and_ready(p).then_some(())
    })
    .await?;

    let text = printed(&env, "secure", "restricted").await?;
    assert_eq!(value(&text, "uid"), "1000", "{text}");
    assert_eq!(value(&text, "gid"), "3000", "{text}");
    assert!(
        value(&text, "groups").split(' ').any(|g| g == "4000"),
        "{text}"
    );
    assert_eq!(value(&text, "root"), "ro", "{text}");
    let host_ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    assert_eq!(value(&text, "ipc"), host_ns("ipc"), "hostIPC: {text}");
    assert_eq!(value(&text, "pid"), host_ns("pid"), "hostPID: {text}");
    assert_eq!(
        value(&text, "nameserver"),
        "nameserver 192.0.2.53",
        "{text}"
    );
    assert_eq!(value(&text, "search"), "search example.internal", "{text}");
    assert_eq!(value(&text, "ndots"), "1", "{text}");
    // As a kubelet writes /etc/hosts: an alias's names on one line, and
    // the pod's own name on its address.
    assert_eq!(
        value(&text, "alias"),
        "1",
        "both names of the alias: {text}"
    );
    assert_eq!(value(&text, "self"), "1", "the pod's own entry: {text}");

    let text = printed(&env, "secure", "caps").await?;
    // CAP_NET_BIND_SERVICE (bit 10) and nothing else.
    assert_eq!(value(&text, "caps"), "0000000000000400", "{text}");
    Ok(())
}
