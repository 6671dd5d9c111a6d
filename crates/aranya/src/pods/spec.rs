//! A Pod object as the device runs it: everything the device cannot look up
//! (ConfigMap and Secret values, metadata field refs) resolved here.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret},
};
use kube::{Api, Client, ResourceExt};
use proto::api;

use crate::resources;

/// Why a pod cannot be handed to the device yet (a kubelet's CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "container {container:?}: {what}: no port {port:?} (a number, or the name of one of its ports)"
    )]
    Port {
        container: String,
        what: String,
        port: String,
    },
    #[error("unsupported field path {0:?}")]
    FieldPath(String),
    #[error("volume {volume:?}: {kind} volumes are not supported on edge devices yet")]
    UnsupportedVolume { volume: String, kind: &'static str },
    #[error("volume {volume:?}: service account token: {reason}")]
    Token { volume: String, reason: String },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Resolves the pod into the device's spec.
pub async fn device_spec(client: &Client, pod: &Pod) -> Result<api::PodSpec, SpecError> {
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut lookup = Lookup {
        client,
        namespace: &namespace,
        config_maps: BTreeMap::new(),
        secrets: BTreeMap::new(),
        node: None,
    };
    let credentials = super::pull::Credentials::of(&mut lookup, pod).await?;
    let mut containers = Vec::new();
    for c in &spec.containers {
        containers.push(container(&mut lookup, pod, c, &credentials).await?);
    }
    let mut init_containers = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        init_containers.push(container(&mut lookup, pod, c, &credentials).await?);
    }
    let mut volumes = Vec::new();
    for v in spec.volumes.iter().flatten() {
        volumes.push(super::volume::resolve(&mut lookup, pod, v).await?);
    }
    Ok(api::PodSpec {
        volumes,
        uid: pod.uid().unwrap_or_default(),
        namespace: namespace.clone(),
        name: pod.name_any(),
        init_containers,
        containers,
        restart_policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
        termination_grace_period_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
        host_network: spec.host_network.unwrap_or(false),
        host_pid: spec.host_pid.unwrap_or(false),
        host_ipc: spec.host_ipc.unwrap_or(false),
        dns: Some(api::DnsConfig {
            policy: spec
                .dns_policy
                .clone()
                .unwrap_or_else(|| "ClusterFirst".into()),
            nameservers: spec
                .dns_config
                .as_ref()
                .and_then(|d| d.nameservers.clone())
                .unwrap_or_default(),
            searches: spec
                .dns_config
                .as_ref()
                .and_then(|d| d.searches.clone())
                .unwrap_or_default(),
            options: spec
                .dns_config
                .iter()
                .flat_map(|d| d.options.iter().flatten())
                .filter_map(|o| {
                    let name = o.name.clone()?;
                    Some(match &o.value {
                        Some(v) => format!("{name}:{v}"),
                        None => name,
                    })
                })
                .collect(),
        }),
        host_aliases: spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| api::HostAlias {
                ip: a.ip.clone(),
                hostnames: a.hostnames.clone().unwrap_or_default(),
            })
            .collect(),
        hostname: spec.hostname.clone().unwrap_or_else(|| pod.name_any()),
    })
}

pub(super) struct Lookup<'a> {
    pub(super) client: &'a Client,
    pub(super) namespace: &'a str,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
    node: Option<Option<k8s_openapi::api::core::v1::Node>>,
}

impl Lookup<'_> {
    pub(super) async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, SpecError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
            self.config_maps
                .insert(name.to_string(), api.get_opt(name).await?);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    /// The node's allocatable amount of `resource`, in base units.
    async fn node_allocatable(
        &mut self,
        pod: &Pod,
        resource: &str,
    ) -> Result<Option<f64>, SpecError> {
        if self.node.is_none() {
            let name = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
            self.node = Some(api.get_opt(&name).await?);
        }
        Ok(self
            .node
            .as_ref()
            .and_then(Option::as_ref)
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(resource))
            .and_then(|q| resources::parse(&q.0)))
    }

    pub(super) async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, SpecError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
            self.secrets
                .insert(name.to_string(), api.get_opt(name).await?);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

/// Where a key-value source lives: kubelets treat both kinds alike.
#[derive(Debug, Clone, Copy)]
pub(super) enum Store {
    ConfigMap,
    Secret,
}

impl Store {
    fn kind(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        }
    }

    fn missing(self, name: &str) -> SpecError {
        match self {
            Self::ConfigMap => SpecError::ConfigMapNotFound(name.to_string()),
            Self::Secret => SpecError::SecretNotFound(name.to_string()),
        }
    }
}

impl Lookup<'_> {
    /// The named object's data; `Ok(None)` when it is absent and `optional`.
    pub(super) async fn data(
        &mut self,
        store: Store,
        name: &str,
        optional: Option<bool>,
    ) -> Result<Option<BTreeMap<String, String>>, SpecError> {
        let data = match store {
            Store::ConfigMap => self.config_map(name).await?.map(config_map_data),
            Store::Secret => self.secret(name).await?.map(secret_data),
        };
        match data {
            Some(d) => Ok(Some(d)),
            None if optional.unwrap_or(false) => Ok(None),
            None => Err(store.missing(name)),
        }
    }

    pub(super) fn key_missing(&self, store: Store, name: &str, key: &str) -> SpecError {
        SpecError::KeyNotFound {
            kind: store.kind(),
            namespace: self.namespace.to_string(),
            name: name.to_string(),
            key: key.to_string(),
        }
    }
}

pub(super) fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, String> {
    let mut data = cm.data.clone().unwrap_or_default();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    data
}

pub(super) fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = s
        .data
        .iter()
        .flatten()
        .map(|(k, ByteString(v))| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    data.extend(s.string_data.clone().unwrap_or_default());
    data
}

async fn container(
    lookup: &mut Lookup<'_>,
    pod: &Pod,
    c: &Container,
    credentials: &super::pull::Credentials,
) -> Result<api::Container, SpecError> {
    let mut env: Vec<api::EnvVar> = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let sources = [
            from.config_map_ref
                .as_ref()
                .map(|r| (Store::ConfigMap, &r.name, r.optional)),
            from.secret_ref
                .as_ref()
                .map(|r| (Store::Secret, &r.name, r.optional)),
        ];
        for (store, name, optional) in sources.into_iter().flatten() {
            if let Some(data) = lookup.data(store, name, optional).await? {
                env.extend(data.into_iter().map(|(k, v)| api::EnvVar {
                    name: format!("{prefix}{k}"),
                    value: v,
                    field_path: String::new(),
                }));
            }
        }
    }
    for e in c.env.iter().flatten() {
        let device_field = e
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.clone())
            .filter(|p| p.starts_with("status."));
        if let Some(field_path) = device_field {
            env.push(api::EnvVar {
                name: e.name.clone(),
                value: String::new(),
                field_path,
            });
        } else if let Some(value) = env_value(lookup, pod, e).await? {
            env.push(api::EnvVar {
                name: e.name.clone(),
                value,
                field_path: String::new(),
            });
        }
    }
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let quantity = |name: &str| limits.get(name).and_then(|q| resources::parse(&q.0));
    let requests = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .unwrap_or_default();
    let requested = |name: &str| requests.get(name).and_then(|q| resources::parse(&q.0));
    let image = c.image.clone().unwrap_or_default();
    Ok(api::Container {
        pull_auth: credentials.for_image(&image),
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        env,
        image_pull_policy: c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into()),
        ports: c
            .ports
            .iter()
            .flatten()
            .map(|p| api::ContainerPort {
                name: p.name.clone().unwrap_or_default(),
                container_port: u32::try_from(p.container_port).unwrap_or(0),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                host_port: p.host_port.and_then(|h| u32::try_from(h).ok()).unwrap_or(0),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
            .collect(),
        cpu_millis: quantity("cpu").map_or(0, |v| (v * 1000.0).round() as u64),
        memory_bytes: quantity("memory").map_or(0, |v| v as u64),
        liveness_probe: super::probe::probe(c, c.liveness_probe.as_ref(), "livenessProbe")?,
        readiness_probe: super::probe::probe(c, c.readiness_probe.as_ref(), "readinessProbe")?,
        startup_probe: super::probe::probe(c, c.startup_probe.as_ref(), "startupProbe")?,
        post_start: super::probe::hook(
            c,
            c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()),
            "lifecycle.postStart",
        )?,
        pre_stop: super::probe::hook(
            c,
            c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()),
            "lifecycle.preStop",
        )?,
        termination_message_path: c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into()),
        termination_message_fallback_to_logs: c.termination_message_policy.as_deref()
            == Some("FallbackToLogsOnError"),
        security: Some(security(pod, c)),
        cpu_request_millis: requested("cpu").map_or(0, |v| (v * 1000.0).round() as u64),
        memory_request_bytes: requested("memory").map_or(0, |v| v as u64),
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
        mounts: c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| api::VolumeMount {
                volume: m.name.clone(),
                mount_path: m.mount_path.clone(),
                sub_path: m.sub_path.clone().unwrap_or_default(),
                read_only: m.read_only.unwrap_or(false),
            })
            .collect(),
    })
}

/// A metadata field as the downward API renders it.
pub(super) fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let kv = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "metadata.labels" => kv(pod.labels()),
        "metadata.annotations" => kv(pod.annotations()),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        p => {
            if let Some(key) = p
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                pod.labels().get(key).cloned().unwrap_or_default()
            } else if let Some(key) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                pod.annotations().get(key).cloned().unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// `None` for values the device resolves itself (status.podIP and the like).
async fn env_value(
    lookup: &mut Lookup<'_>,
    pod: &Pod,
    e: &EnvVar,
) -> Result<Option<String>, SpecError> {
    let Some(from) = &e.value_from else {
        return Ok(Some(e.value.clone().unwrap_or_default()));
    };
    let key_ref = [
        from.config_map_key_ref
            .as_ref()
            .map(|r| (Store::ConfigMap, &r.name, &r.key, r.optional)),
        from.secret_key_ref
            .as_ref()
            .map(|r| (Store::Secret, &r.name, &r.key, r.optional)),
    ];
    if let Some((store, name, key, optional)) = key_ref.into_iter().flatten().next() {
        let Some(mut data) = lookup.data(store, name, optional).await? else {
            return Ok(None);
        };
        return match data.remove(key) {
            Some(v) => Ok(Some(v)),
            None if optional.unwrap_or(false) => Ok(None),
            None => Err(lookup.key_missing(store, name, key)),
        };
    }
    if let Some(f) = &from.field_ref {
        let path = f.field_path.as_str();
        return field_value(pod, path)
            .map(Some)
            .ok_or_else(|| SpecError::FieldPath(path.to_string()));
    }
    if let Some(r) = &from.resource_field_ref {
        return resource_value(lookup, pod, r).await.map(Some);
    }
    Ok(None)
}

/// A container's limit or request, divided by the divisor and rounded up as a
/// kubelet does; an unset limit is the node's allocatable amount.
async fn resource_value(
    lookup: &mut Lookup<'_>,
    pod: &Pod,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, SpecError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let container = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| {
            r.container_name
                .as_deref()
                .is_none_or(|n| n.is_empty() || n == c.name)
        });
    let (kind, resource) = r
        .resource
        .split_once('.')
        .ok_or_else(|| SpecError::FieldPath(r.resource.clone()))?;
    let resources = container
        .and_then(|c| c.resources.clone())
        .unwrap_or_default();
    let set = match kind {
        "limits" => resources.limits,
        "requests" => resources.requests,
        _ => return Err(SpecError::FieldPath(r.resource.clone())),
    };
    let mut value = set
        .as_ref()
        .and_then(|m| m.get(resource))
        .and_then(|q| resources::parse(&q.0));
    if value.is_none() && kind == "limits" {
        value = lookup.node_allocatable(pod, resource).await?;
    }
    let value = value.unwrap_or(0.0);
    let divisor = r
        .divisor
        .as_ref()
        .and_then(|d| resources::parse(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as u64))
}

/// The container's securityContext over the pod's, as a kubelet merges them.
fn security(pod: &Pod, c: &Container) -> api::SecurityContext {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    api::SecurityContext {
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .or_else(|| pod_sc.and_then(|s| s.run_as_user)),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or_else(|| pod_sc.and_then(|s| s.run_as_group)),
        supplemental_groups: pod_sc
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
        read_only_root_filesystem: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
    }
}
