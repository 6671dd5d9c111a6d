//! The bridge network: every pod on one Linux bridge, addresses from
//! host-local IPAM, forwarding opened by the firewall plugin, hostPorts by
//! portmap.

use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::{NetworkError, PodNetwork, Subnet, cni};
use crate::{config::NetworkConfig, runtime::PortMapping};

/// The plugins arhat runs, all from Debian's package.
const PLUGINS: [&str; 5] = ["loopback", "bridge", "host-local", "firewall", "portmap"];
/// The network's name (CNI's, which plugins key their state by).
const NETWORK: &str = "arhat";
/// The pod's interface.
const IFNAME: &str = "eth0";

/// What one sandbox's attachment ran and got: DEL runs the same plugins,
/// told the same result, as the spec asks.
#[derive(Debug, Serialize, Deserialize)]
struct Attachment {
    plugins: Vec<Value>,
    result: Value,
}

/// Where the pool aranya assigned is kept, under the state dir.
const POOL_FILE: &str = "pod-cidr";

/// The device's pod network.
#[derive(Debug)]
pub struct Bridge {
    bin_dir: PathBuf,
    bridge: String,
    /// Where new pods get addresses: the pool aranya assigned (the Node's pod
    /// CIDR), or `network.subnet` until it has.
    subnet: std::sync::Mutex<Subnet>,
    /// `<id>.json` per attached sandbox; host-local's allocations under `ipam/`.
    state_dir: PathBuf,
}

impl Bridge {
    /// Checks the plugins are there and sets the subnet's masquerade rule.
    pub async fn new(config: &NetworkConfig, data_dir: &Path) -> Result<Self, NetworkError> {
        for plugin in PLUGINS {
            let path = config.cni_bin_dir.join(plugin);
            if !path.is_file() {
                return Err(NetworkError::PluginMissing { path });
            }
        }
        let state_dir = data_dir.join("network");
        std::fs::create_dir_all(state_dir.join("ipam")).map_err(|source| NetworkError::State {
            path: state_dir.clone(),
            source,
        })?;
        // The pool aranya assigned, kept so pods start while offline.
        let assigned = std::fs::read_to_string(state_dir.join(POOL_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let subnet = assigned.unwrap_or(config.subnet);
        let network = Self {
            bin_dir: config.cni_bin_dir.clone(),
            bridge: config.bridge.clone(),
            subnet: std::sync::Mutex::new(subnet),
            state_dir,
        };
        network.masquerade(subnet, true).await?;
        info!(bridge = %network.bridge, %subnet, "pod network ready");
        Ok(network)
    }

    fn subnet(&self) -> Subnet {
        *self
            .subnet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether any attached sandbox has an address in `subnet`.
    fn in_use(&self, subnet: Subnet) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let name = e.file_name();
            let id = name.to_str().and_then(|n| n.strip_suffix(".json"));
            id.and_then(|id| self.address(id))
                .is_some_and(|a| subnet.contains(a))
        })
    }

    /// Traffic from the pods to anywhere else leaves with the device's
    /// address: the rule for `subnet` added, or removed (`add` false).
    async fn masquerade(&self, subnet: Subnet, add: bool) -> Result<(), NetworkError> {
        let subnet = subnet.to_string();
        let rule = [
            "-s",
            &subnet,
            "!",
            "-d",
            &subnet,
            "-m",
            "comment",
            "--comment",
            "arhat pod network",
            "-j",
            "MASQUERADE",
        ];
        let iptables = |op: &'static str| {
            let mut args = vec!["-w", "-t", "nat", op, "POSTROUTING"];
            args.extend(rule);
            async move {
                let out = tokio::process::Command::new("iptables")
                    .args(&args)
                    .env("PATH", cni::search_path())
                    .output()
                    .await;
                let failure = |message: String| NetworkError::Firewall {
                    args: args.join(" "),
                    message,
                };
                match out {
                    Ok(out) if out.status.success() => Ok(true),
                    Ok(out) if op == "-C" && out.status.code() == Some(1) => Ok(false),
                    Ok(out) => Err(failure(
                        String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    )),
                    Err(e) => Err(failure(e.to_string())),
                }
            }
        };
        match (iptables("-C").await?, add) {
            (false, true) => iptables("-A").await.map(drop),
            (true, false) => iptables("-D").await.map(drop),
            _ => Ok(()),
        }
    }

    fn plugins(&self, ports: &[PortMapping]) -> Vec<Value> {
        let mut plugins = vec![
            json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet().to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.state_dir.join("ipam"),
                },
            }),
            // Hosts whose FORWARD policy drops (Docker sets it so) pass the pods' traffic.
            json!({ "type": "firewall", "backend": "iptables" }),
        ];
        if !ports.is_empty() {
            let mappings: Vec<Value> = ports
                .iter()
                .map(|p| {
                    json!({
                        "hostPort": p.host_port,
                        "containerPort": p.container_port,
                        "protocol": p.protocol,
                        "hostIP": p.host_ip,
                    })
                })
                .collect();
            plugins.push(json!({
                "type": "portmap",
                "snat": true,
                "capabilities": { "portMappings": true },
                "runtimeConfig": { "portMappings": mappings },
            }));
        }
        plugins
    }

    fn state_file(&self, sandbox: &str) -> PathBuf {
        self.state_dir.join(format!("{sandbox}.json"))
    }
}

#[async_trait::async_trait]
impl PodNetwork for Bridge {
    /// Attaches the sandbox whose network namespace is at `netns`; returns
    /// the pod's address. A failure leaves nothing behind.
    async fn attach(
        &self,
        sandbox: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<IpAddr, NetworkError> {
        let netns = netns.to_string_lossy();
        let at = |command| cni::Invocation {
            command,
            container_id: sandbox,
            netns: &netns,
            ifname: IFNAME,
            bin_dir: &self.bin_dir,
        };
        // Not every runtime brings the namespace's loopback up.
        let loopback = cni::Invocation {
            ifname: "lo",
            ..at(cni::Command::Add)
        };
        cni::add(&[json!({ "type": "loopback" })], NETWORK, &loopback).await?;
        let plugins = self.plugins(ports);
        let result = match cni::add(&plugins, NETWORK, &at(cni::Command::Add)).await {
            Ok(result) => result,
            Err(e) => {
                // Whatever the plugins before the failing one did is undone.
                if let Err(undo) = cni::del(&plugins, NETWORK, None, &at(cni::Command::Del)).await {
                    debug!(error = %undo, "undoing a failed attachment");
                }
                return Err(e.into());
            }
        };
        let address = cni::first_address(&result).ok_or(NetworkError::NoAddress)?;
        let path = self.state_file(sandbox);
        let state = serde_json::to_vec(&Attachment { plugins, result }).unwrap_or_default();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, state)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| NetworkError::State { path, source })?;
        debug!(%sandbox, %address, "sandbox attached");
        Ok(address)
    }

    /// The address the sandbox was given, if it is attached.
    fn address(&self, sandbox: &str) -> Option<IpAddr> {
        let state = std::fs::read(self.state_file(sandbox)).ok()?;
        let attachment: Attachment = serde_json::from_slice(&state).ok()?;
        cni::first_address(&attachment.result)
    }

    /// Gives back what the sandbox's attachment holds (its address, its
    /// forwarding and hostPort rules); a sandbox never attached is no error.
    /// Works whether its namespace still exists or not.
    async fn detach(&self, sandbox: &str) -> Result<(), NetworkError> {
        let path = self.state_file(sandbox);
        let state = match std::fs::read(&path) {
            Ok(state) => state,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(NetworkError::State { path, source }),
        };
        if let Ok(attachment) = serde_json::from_slice::<Attachment>(&state) {
            let at = cni::Invocation {
                command: cni::Command::Del,
                container_id: sandbox,
                // The plugins clean up what they keep by the id alone; the
                // interface goes with the namespace.
                netns: "",
                ifname: IFNAME,
                bin_dir: &self.bin_dir,
            };
            cni::del(&attachment.plugins, NETWORK, Some(&attachment.result), &at).await?;
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NetworkError::State { path, source: e })
            }
            _ => {
                debug!(%sandbox, "sandbox detached");
                Ok(())
            }
        }
    }

    /// New pods get addresses from the first IPv4 CIDR of `cidrs` from now
    /// on, also after a restart. Pods attached before keep theirs; the old
    /// subnet's rule and the bridge's address in it go once no pod holds one.
    async fn set_pool(&self, cidrs: &[String]) -> Result<(), NetworkError> {
        let pool: Subnet = cidrs
            .iter()
            .find_map(|c| c.parse().ok())
            .ok_or_else(|| NetworkError::Pool(cidrs.join(",")))?;
        let old = self.subnet();
        if pool == old {
            return Ok(());
        }
        self.masquerade(pool, true).await?;
        let path = self.state_dir.join(POOL_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pool.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| NetworkError::State { path, source })?;
        *self
            .subnet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pool;
        info!(bridge = %self.bridge, from = %old, to = %pool, "pods get addresses from the Node's pod CIDR");
        if !self.in_use(old) {
            if let Err(e) = self.masquerade(old, false).await {
                warn!(error = %e, subnet = %old, "removing the old subnet's masquerade rule");
            }
            // The bridge plugin gave the bridge the old subnet's gateway;
            // left there, it would route that subnet here if another
            // device's pool took it.
            let gateway = format!("{}/{}", old.gateway(), old.prefix);
            let removed = tokio::process::Command::new("ip")
                .args(["addr", "del", &gateway, "dev", &self.bridge])
                .env("PATH", cni::search_path())
                .output()
                .await;
            debug!(%gateway, ?removed, "removing the old gateway address");
        }
        Ok(())
    }

    /// Detaches every sandbox attached earlier that is not among `alive`
    /// (the runtime lost it while the agent was away).
    async fn sweep(&self, alive: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else {
            return;
        };
        let stale: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?.to_string();
                (!alive.contains(&id)).then_some(id)
            })
            .collect();
        for id in stale {
            if let Err(e) = self.detach(&id).await {
                warn!(sandbox = %id, error = %e, "detaching a sandbox that is gone");
            }
        }
    }
}
