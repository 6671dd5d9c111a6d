//! The `EdgeDevice` custom resource (`aranya.arhat.dev/v1alpha1`), cluster-scoped
//! like the Node it stands for.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::Taint,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{Condition, LabelSelector},
    },
};
use kube::{
    Api, Client, CustomResource, CustomResourceExt, KubeSchema,
    api::{Patch, PatchParams},
};
use serde::{Deserialize, Serialize};

/// Finalizer that keeps an EdgeDevice until its Node and Lease are gone.
pub const FINALIZER: &str = "aranya.arhat.dev/virtual-node";

/// A device at the edge, represented in the cluster by a virtual Node of the same name.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aranya.arhat.dev",
    version = "v1alpha1",
    kind = "EdgeDevice",
    plural = "edgedevices",
    shortname = "ed",
    status = "EdgeDeviceStatus",
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.conditions[?(@.type==\"Connected\")].status"}"#,
    printcolumn = r#"{"name":"Via","type":"string","jsonPath":".status.connectedVia"}"#,
    printcolumn = r#"{"name":"Node-Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"NodeReady\")].status"}"#,
    printcolumn = r#"{"name":"Cert-Expires","type":"date","jsonPath":".status.identity.notAfter","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDeviceSpec {
    /// How the device may reach aranya.
    pub connectivity: Connectivity,
    /// What the virtual Node carries.
    #[serde(default)]
    pub node: NodeSettings,
    /// Pods on this device.
    #[serde(default)]
    pub pod: PodSettings,
    /// How the device proves who it is.
    #[serde(default)]
    pub identity: IdentitySettings,
    /// What of the cluster network the device reaches.
    #[serde(default)]
    pub network: NetworkSettings,
}

/// The cluster network as the device sees it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSettings {
    /// The Services the device may reach (by DNS name and ClusterIP): those
    /// any rule matches. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub services: Vec<ServiceRule>,
}

/// Services of some namespaces, chosen by their labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRule {
    /// Only Services of these namespaces; empty: any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only Services whose labels match; unset: any Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// The device's certificates: how they are approved, and revoking them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySettings {
    /// Who approves the CertificateSigningRequest of a device bootstrapping
    /// with a valid token: aranya (`Auto`), or an operator with
    /// `kubectl certificate approve` (`Manual`). Renewals by a device that
    /// proved its current certificate are always approved by aranya.
    #[serde(default)]
    pub approval: Approval,
    /// Raise it to revoke every certificate and bootstrap token of the
    /// device: its links close and it must bootstrap again with a new token.
    /// Its Node and pods stay.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub rotation: u32,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum Approval {
    #[default]
    Auto,
    Manual,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Connectivity {
    /// Transports the device may use; it tries them by priority (lowest first).
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub methods: Vec<ConnectivityMethod>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.name != 'mqtt' || has(self.mqtt)").message("an mqtt method needs its mqtt settings"))]
#[x_kube(validation = Rule::new("self.name != 'grpc' || !has(self.mqtt)").message("a grpc method takes no mqtt settings"))]
pub struct ConnectivityMethod {
    pub name: MethodName,
    /// Lower is preferred.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSettings>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    Grpc,
    Mqtt,
}

impl MethodName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Mqtt => "mqtt",
        }
    }
}

/// gRPC settings. Device authentication (client certificates) comes later.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcSettings {}

/// MQTT settings: aranya and the device are both clients of this broker.
/// Topics are `<topicNamespace>/<device>/{cmd,msg,status}`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttSettings {
    /// Broker address, host:port (the host is what its certificate must name).
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("self.matches('^([^:]+|\\\\[[0-9a-fA-F:.]+\\\\]):[0-9]{1,5}$')").message("must be host:port"))]
    pub broker: String,
    /// Topic prefix for this device's topics (default `arhat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(validation = Rule::new("!self.contains('+') && !self.contains('#') && !self.startsWith('/') && !self.endsWith('/')").message("must be a topic prefix without wildcards or a leading or trailing '/'"))]
    pub topic_namespace: Option<String>,
    /// Largest MQTT payload the broker accepts, bytes (default 131072).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8192, max = 268435455))]
    pub max_payload_size: Option<u32>,
    /// MQTT keepalive of aranya's connection (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub keepalive_seconds: Option<u32>,
    /// Client id prefix of aranya's connection (default `aranya-<device>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub client_id: Option<String>,
    /// Secret in aranya's namespace with `username` and `password` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
    /// Secret in aranya's namespace with `ca.crt` (and, for client
    /// certificates, `tls.crt` and `tls.key`); TLS is used when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretRef>,
}

/// A Secret in aranya's own namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSettings {
    /// Extra labels on the Node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the Node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Taints besides aranya's own NoSchedule edge taint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// `topology.kubernetes.io/zone` of the Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 63 && self.matches('^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$')").message("must be a valid label value"))]
    pub zone: Option<String>,
    /// Resources kept back from pods: allocatable = capacity - reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<Reserved>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reserved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<Quantity>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// The Node's IPv4 pod CIDR.
    #[serde(default, rename = "ipv4CIDR", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 4").message("must be an IPv4 CIDR such as 10.0.1.0/24"))]
    pub ipv4_cidr: Option<String>,
    /// The Node's IPv6 pod CIDR.
    #[serde(default, rename = "ipv6CIDR", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 6").message("must be an IPv6 CIDR such as fd00:1::/64"))]
    pub ipv6_cidr: Option<String>,
    /// How many pods the device may run (the Node's `pods` capacity). Without
    /// it nothing schedules.
    #[serde(default = "default_allocatable")]
    #[schemars(range(min = 0, max = 1000))]
    pub allocatable: u32,
    /// How long the device may be offline before its pods are evicted. Pods
    /// bound to it tolerate the not-ready and unreachable taints at least
    /// this long (aranya raises their tolerations; longer ones are kept).
    /// Unset: the cluster's default (300 s unless the apiserver says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub tolerate_offline_seconds: Option<u32>,
    /// Which pods bound to the device it runs at all; the others wait
    /// Pending with reason EdgeDevicePolicy and a message naming the rule.
    #[serde(default)]
    pub admission: PodAdmission,
}

/// Which pods a device takes. By default every pod, except DaemonSet pods
/// that do not tolerate the edge taint by its key: a cluster's DaemonSets
/// that tolerate every taint (kube-proxy, CNI agents) are not for devices.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodAdmission {
    /// Only pods of these namespaces; empty: any namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only pods whose labels match; unset: any pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// DaemonSet pods: EdgeTolerating (default; only those tolerating
    /// `aranya.arhat.dev/edge-device` by key), All, or None.
    #[serde(default)]
    pub daemon_sets: DaemonSetAdmission,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DaemonSetAdmission {
    #[default]
    EdgeTolerating,
    All,
    None,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            ipv4_cidr: None,
            ipv6_cidr: None,
            allocatable: default_allocatable(),
            tolerate_offline_seconds: None,
            admission: PodAdmission::default(),
        }
    }
}

fn default_allocatable() -> u32 {
    10
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDeviceStatus {
    /// `Connected`, `Identity`, `NodeReady` and `PodCIDR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The transport the device is connected over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_via: Option<String>,
    /// The virtual Node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityStatus>,
    /// The pod CIDRs the device's Node was given (from `spec.pod` or the
    /// cluster's node IPAM); they never change, so a Node deleted by hand
    /// comes back with the same ones.
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
}

/// Who the device is: the identity id its certificates must name, and the
/// certificate it last connected with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    /// Made by aranya for this EdgeDevice and each `spec.identity.rotation`;
    /// a certificate naming another id is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The `spec.identity.rotation` the id was made for.
    #[serde(default)]
    pub rotation: u32,
    /// Serial (hex) of the certificate the device last connected with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// When that certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// The CustomResourceDefinition, as aranya expects it.
pub fn definition() -> CustomResourceDefinition {
    EdgeDevice::crd()
}

/// YAML of the CRD, for `aranya crd` and the deploy manifests.
pub fn definition_yaml() -> Result<String, serde_norway::Error> {
    serde_norway::to_string(&definition())
}

/// Applies the CRD and waits until the apiserver serves it.
pub async fn install(client: Client) -> Result<(), kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let crd = definition();
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply("aranya").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let established = kube::runtime::wait::conditions::is_crd_established();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        kube::runtime::wait::await_condition(api, &name, established),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_is_cluster_scoped_with_status_and_rules() {
        let crd = definition();
        assert_eq!(crd.spec.scope, "Cluster");
        let yaml = definition_yaml().expect("serializes");
        assert!(yaml.contains("x-kubernetes-validations"), "{yaml}");
        assert!(yaml.contains("x-kubernetes-list-map-keys"), "{yaml}");
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
}
