//! arhat's YAML configuration. Every key is documented in `config.example.yaml`;
//! an error names the key it is about.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key at fault, if the problem is about one.
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Self::Key { key, .. } => Some(key),
            Self::Read { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub device: Device,
    pub connectivity: Connectivity,
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub relay: RelayConfig,
}

/// Connections to cluster Services: an nftables table sends them to a
/// listener of arhat's, which relays each to aranya.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayConfig {
    /// Intercept and relay at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where intercepted traffic is sent: the relay's listeners, on `lo` as
    /// a /32 (the DNS server's address will do).
    #[serde(default = "default_dns_address")]
    pub address: std::net::Ipv4Addr,
    /// The TCP listener's port; 0: any free port. UDP gets a port per
    /// Service port, chosen by the system.
    #[serde(default = "default_relay_port")]
    pub port: u16,
    /// The nftables table (family inet) arhat owns, or with iptables the
    /// prefix of its chains; two agents on one host need two.
    #[serde(default = "default_relay_table")]
    pub table: String,
    /// What writes it: nftables, iptables, or `auto` (nftables when `nft`
    /// runs).
    #[serde(default)]
    pub backend: RelayBackend,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayBackend {
    #[default]
    Auto,
    Nftables,
    Iptables,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: default_dns_address(),
            port: default_relay_port(),
            table: default_relay_table(),
            backend: RelayBackend::Auto,
        }
    }
}

fn default_relay_port() -> u16 {
    15001
}

fn default_relay_table() -> String {
    "arhat".into()
}

/// The DNS server arhat runs for the cluster's names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsConfig {
    /// Serve DNS at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The address it listens on (UDP and TCP port 53), put on `lo` as a /32
    /// at start so it exists before any pod.
    #[serde(default = "default_dns_address")]
    pub address: std::net::Ipv4Addr,
    /// Resolvers for names outside the cluster; empty: the device's
    /// /etc/resolv.conf.
    #[serde(default)]
    pub upstreams: Vec<std::net::SocketAddr>,
    /// The device host opts in: arhat points /etc/resolv.conf at itself
    /// (the cluster's search path first), forwards other names to the
    /// resolvers it named, and puts it back when it stops.
    #[serde(default)]
    pub host: bool,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: default_dns_address(),
            upstreams: Vec::new(),
            host: false,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_dns_address() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(169, 254, 20, 10)
}

/// The pods' network (pods on the host's network aside), wired by arhat
/// with the CNI plugins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkConfig {
    /// Where the CNI plugins are.
    #[serde(default = "default_cni_bin_dir")]
    pub cni_bin_dir: PathBuf,
    /// The Linux bridge the pods are attached to (made if missing).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Pod addresses come from here until aranya assigns the Node's pod
    /// CIDR; the bridge takes the first.
    #[serde(default = "default_subnet")]
    pub subnet: crate::network::Subnet,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            cni_bin_dir: default_cni_bin_dir(),
            bridge: default_bridge(),
            subnet: default_subnet(),
        }
    }
}

fn default_cni_bin_dir() -> PathBuf {
    "/usr/lib/cni".into()
}

fn default_bridge() -> String {
    "arhat0".into()
}

fn default_subnet() -> crate::network::Subnet {
    crate::network::Subnet {
        address: std::net::Ipv4Addr::new(10, 87, 0, 0),
        prefix: 16,
    }
}

/// How the device proves who it is. Its key and certificate live in
/// `<runtime.dataDir>/identity/`, owner-only; the key never leaves it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityConfig {
    /// The bootstrap token (`aranya bootstrap-token create --device <name>`),
    /// read when the device has no valid certificate (default
    /// `<runtime.dataDir>/identity/bootstrap-token`).
    #[serde(default)]
    pub bootstrap_token_file: Option<PathBuf>,
}

impl Config {
    /// Where the device's key and certificate live.
    pub fn identity_dir(&self) -> PathBuf {
        self.runtime.data_dir.join("identity")
    }

    pub fn bootstrap_token_file(&self) -> PathBuf {
        self.identity
            .bootstrap_token_file
            .clone()
            .unwrap_or_else(|| self.identity_dir().join("bootstrap-token"))
    }
}

/// What the cloud may do on the device host itself (its virtual pod).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostConfig {
    /// Files `kubectl logs` on the host pod shows, in this order; none
    /// disables host logs.
    #[serde(default)]
    pub log_files: Vec<PathBuf>,
    /// Commands on the host (`kubectl exec` on the host pod).
    #[serde(default)]
    pub allow_exec: bool,
    #[serde(default)]
    pub allow_attach: bool,
    #[serde(default)]
    pub allow_port_forward: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Which container runtime runs pods.
    #[serde(default)]
    pub kind: RuntimeKind,
    /// The static `pause` binary the pod sandbox image is built from.
    #[serde(default = "default_pause_binary")]
    pub pause_binary: PathBuf,
    /// Where pod volumes live on the device.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How container logs are kept.
    #[serde(default)]
    pub logs: ContainerLogs,
    /// When images pulled for pods and no longer used are removed.
    #[serde(default, rename = "imageGC")]
    pub image_gc: ImageGc,
    /// How the runtime's health is checked for the Node's Ready condition.
    #[serde(default)]
    pub health: RuntimeHealth,
}

/// A kubelet's runtime check: the runtime is asked for its version every
/// `interval`; failing every check for `downAfter` turns the Node NotReady
/// ("container runtime is down"), one success turns it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeHealth {
    #[serde(default = "default_health_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_health_down_after", with = "duration")]
    pub down_after: Duration,
}

impl Default for RuntimeHealth {
    fn default() -> Self {
        Self {
            interval: default_health_interval(),
            down_after: default_health_down_after(),
        }
    }
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}

/// A kubelet's threshold for its runtime status checks.
fn default_health_down_after() -> Duration {
    Duration::from_secs(30)
}

/// A kubelet's image garbage collection, for images this agent pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageGc {
    /// Disk use (percent of the image filesystem) that starts a collection.
    #[serde(default = "default_gc_high")]
    pub high_threshold_percent: u8,
    /// Where a collection stops.
    #[serde(default = "default_gc_low")]
    pub low_threshold_percent: u8,
    /// Unused this long: removed whatever the disk says. Unset: never.
    #[serde(default, with = "duration_opt")]
    pub unused_for: Option<Duration>,
    #[serde(default = "default_gc_interval", with = "duration")]
    pub interval: Duration,
}

impl Default for ImageGc {
    fn default() -> Self {
        Self {
            high_threshold_percent: default_gc_high(),
            low_threshold_percent: default_gc_low(),
            unused_for: None,
            interval: default_gc_interval(),
        }
    }
}

fn default_gc_high() -> u8 {
    85
}

fn default_gc_low() -> u8 {
    80
}

fn default_gc_interval() -> Duration {
    Duration::from_secs(60)
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            kind: RuntimeKind::default(),
            pause_binary: default_pause_binary(),
            data_dir: default_data_dir(),
            logs: ContainerLogs::default(),
            image_gc: ImageGc::default(),
            health: RuntimeHealth::default(),
        }
    }
}

/// Container logs rotated as a kubelet rotates them: a file grows to
/// `maxSize`, then a new one starts; `maxFiles` are kept (the oldest goes).
/// `kubectl logs` reads across all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerLogs {
    /// `10Mi`, `512Ki`, `1G`, or bytes.
    #[serde(default = "default_log_max_size", with = "size")]
    pub max_size: u64,
    #[serde(default = "default_log_max_files")]
    pub max_files: u32,
}

impl Default for ContainerLogs {
    fn default() -> Self {
        Self {
            max_size: default_log_max_size(),
            max_files: default_log_max_files(),
        }
    }
}

fn default_log_max_size() -> u64 {
    10 << 20
}

fn default_log_max_files() -> u32 {
    5
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// The host's dockerd on its default socket (`DOCKER_HOST` honoured).
    #[default]
    Docker,
    /// No runtime: the device reports itself but runs no pods.
    None,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/arhat")
}

fn default_pause_binary() -> PathBuf {
    PathBuf::from("/usr/lib/arhat/pause")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    /// The EdgeDevice's name.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Connectivity {
    #[serde(default)]
    pub backoff: Backoff,
    pub methods: Vec<Method>,
    /// While connected over a method other than the most preferred, how
    /// often the preferred ones are tried again (the session moves over to the
    /// first that answers, without a restart of anything above it).
    #[serde(default = "default_preferred_retry", with = "duration")]
    pub preferred_retry: Duration,
}

fn default_preferred_retry() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    #[serde(default = "default_backoff_initial", with = "duration")]
    pub initial: Duration,
    #[serde(default = "default_backoff_max", with = "duration")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Method {
    pub name: MethodName,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub grpc: Option<Grpc>,
    #[serde(default)]
    pub mqtt: Option<Mqtt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    Grpc,
    Mqtt,
}

/// A broker aranya also connects to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mqtt {
    /// `host:port`; the host is what the broker's certificate must name.
    pub broker: String,
    /// Topic prefix; must match the EdgeDevice's `topicNamespace`.
    #[serde(default = "default_topic_namespace")]
    pub topic_namespace: String,
    /// Client id at the broker (a per-connection suffix is appended).
    /// Default: `arhat-<device name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_mqtt_keepalive", with = "duration")]
    pub keepalive: Duration,
    /// Largest payload the broker accepts (at least 8Ki).
    #[serde(default = "default_mqtt_max_payload", with = "size")]
    pub max_payload: u64,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// TLS to the broker; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<MqttTls>,
    /// Username; the password is read from `passwordFile`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MqttTls {
    /// PEM CA bundle that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Client certificate and key, for brokers that authenticate devices by certificate.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_topic_namespace() -> String {
    connectivity::mqtt::DEFAULT_NAMESPACE.to_string()
}

fn default_mqtt_keepalive() -> Duration {
    Duration::from_secs(30)
}

fn default_mqtt_max_payload() -> u64 {
    connectivity::mqtt::DEFAULT_MAX_PAYLOAD as u64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grpc {
    /// aranya's gRPC endpoint, `host:port`.
    pub endpoint: String,
    /// PEM CA bundle that signed aranya's certificate.
    pub ca_file: PathBuf,
    /// Name expected in aranya's certificate (default: the endpoint's host).
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// HTTP/2 ping interval; a link is declared dead when a ping goes
    /// unanswered for twice this. Short on links that have a fallback, so the
    /// device moves before aranya notices.
    #[serde(default = "default_grpc_keepalive", with = "duration")]
    pub keepalive: Duration,
}

fn default_grpc_keepalive() -> Duration {
    Duration::from_secs(5)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// How often the device's status is sampled; a change is reported at once.
    #[serde(default = "default_status_interval", with = "duration")]
    pub status_interval: Duration,
    /// Filesystem whose size is the node's ephemeral-storage capacity.
    #[serde(default = "default_storage_path")]
    pub storage_path: PathBuf,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            status_interval: default_status_interval(),
            storage_path: default_storage_path(),
        }
    }
}

fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_storage_path() -> PathBuf {
    PathBuf::from("/var/lib")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Log {
    /// A tracing filter: `info`, `debug`, `arhat=debug,info`, ...
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            ConfigError::key(key, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !is_dns_label_ish(&self.device.name) {
            return Err(ConfigError::key(
                "device.name",
                format!(
                    "{:?} is not a valid Node name (lowercase letters, digits, '-' and '.')",
                    self.device.name
                ),
            ));
        }
        if self.connectivity.methods.is_empty() {
            return Err(ConfigError::key(
                "connectivity.methods",
                "at least one method is required",
            ));
        }
        for (i, m) in self.connectivity.methods.iter().enumerate() {
            match m.name {
                MethodName::Grpc => {
                    let Some(grpc) = &m.grpc else {
                        return Err(ConfigError::key(
                            format!("connectivity.methods[{i}].grpc"),
                            "required for a grpc method",
                        ));
                    };
                    if !grpc.endpoint.contains(':') {
                        return Err(ConfigError::key(
                            format!("connectivity.methods[{i}].grpc.endpoint"),
                            format!("{:?} is not host:port", grpc.endpoint),
                        ));
                    }
                    if grpc.keepalive < Duration::from_millis(100) {
                        return Err(ConfigError::key(
                            format!("connectivity.methods[{i}].grpc.keepalive"),
                            "must be at least 100ms",
                        ));
                    }
                }
                MethodName::Mqtt => self.validate_mqtt(i, m.mqtt.as_ref())?,
            }
        }
        let table = &self.relay.table;
        if table.is_empty()
            || table.len() > 24
            || !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::key(
                "relay.table",
                format!(
                    "{table:?} is not an nftables table name (up to 32 letters, digits, '_' and '-')"
                ),
            ));
        }
        if self.connectivity.preferred_retry < Duration::from_secs(1) {
            return Err(ConfigError::key(
                "connectivity.preferredRetry",
                "must be at least 1s",
            ));
        }
        let b = &self.connectivity.backoff;
        if b.initial.is_zero() || b.max < b.initial {
            return Err(ConfigError::key(
                "connectivity.backoff",
                "initial must be above zero and max at least initial",
            ));
        }
        for (i, path) in self.host.log_files.iter().enumerate() {
            // The agent's working directory is no place to resolve against.
            if !path.is_absolute() {
                return Err(ConfigError::key(
                    format!("host.logFiles[{i}]"),
                    format!("{} is not an absolute path", path.display()),
                ));
            }
        }
        let logs = &self.runtime.logs;
        if logs.max_size < 1024 {
            return Err(ConfigError::key(
                "runtime.logs.maxSize",
                "must be at least 1Ki",
            ));
        }
        if logs.max_files < 2 {
            return Err(ConfigError::key(
                "runtime.logs.maxFiles",
                "must be at least 2 (the file being written and one rotated)",
            ));
        }
        let gc = &self.runtime.image_gc;
        if gc.high_threshold_percent > 100 || gc.low_threshold_percent > gc.high_threshold_percent {
            return Err(ConfigError::key(
                "runtime.imageGC",
                "lowThresholdPercent must not exceed highThresholdPercent, nor that 100",
            ));
        }
        if gc.interval < Duration::from_secs(1) {
            return Err(ConfigError::key(
                "runtime.imageGC.interval",
                "must be at least 1s",
            ));
        }
        let health = &self.runtime.health;
        if health.interval < Duration::from_millis(100) {
            return Err(ConfigError::key(
                "runtime.health.interval",
                "must be at least 100ms",
            ));
        }
        if health.down_after < health.interval {
            return Err(ConfigError::key(
                "runtime.health.downAfter",
                "must be at least runtime.health.interval",
            ));
        }
        let bridge = &self.network.bridge;
        // Linux interface names: at most 15 bytes, no '/', no whitespace.
        if bridge.is_empty()
            || bridge.len() > 15
            || bridge.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(ConfigError::key(
                "network.bridge",
                format!(
                    "{bridge:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
                ),
            ));
        }
        if self.node.status_interval < Duration::from_secs(1) {
            return Err(ConfigError::key(
                "node.statusInterval",
                "must be at least 1s",
            ));
        }
        Ok(())
    }

    fn validate_mqtt(&self, i: usize, mqtt: Option<&Mqtt>) -> Result<(), ConfigError> {
        let key = |k: &str| format!("connectivity.methods[{i}].mqtt{k}");
        let Some(mqtt) = mqtt else {
            return Err(ConfigError::key(key(""), "required for an mqtt method"));
        };
        let checks: [(&str, bool, String); 5] = [
            (
                ".broker",
                mqtt.broker
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                format!("{:?} is not host:port", mqtt.broker),
            ),
            (
                ".topicNamespace",
                connectivity::mqtt::Topics::new(&mqtt.topic_namespace, &self.device.name).is_ok(),
                format!(
                    "{:?} is not usable in a topic (no wildcards, no leading or trailing '/')",
                    mqtt.topic_namespace
                ),
            ),
            (
                ".maxPayload",
                mqtt.max_payload >= connectivity::mqtt::MIN_MAX_PAYLOAD as u64
                    && mqtt.max_payload <= 256 << 20,
                "must be between 8Ki and 256Mi".to_string(),
            ),
            (
                ".keepalive",
                mqtt.keepalive >= Duration::from_secs(1)
                    && mqtt.keepalive <= Duration::from_secs(65535),
                "must be between 1s and 65535s".to_string(),
            ),
            (
                ".passwordFile",
                mqtt.password_file.is_none() || mqtt.username.is_some(),
                "needs a username".to_string(),
            ),
        ];
        for (k, ok, message) in checks {
            if !ok {
                return Err(ConfigError::key(key(k), message));
            }
        }
        if let Some(tls) = &mqtt.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(ConfigError::key(
                key(".tls"),
                "certFile and keyFile go together",
            ));
        }
        Ok(())
    }

    /// Methods in the order to try them.
    pub fn methods_by_priority(&self) -> Vec<&Method> {
        let mut methods: Vec<_> = self.connectivity.methods.iter().collect();
        methods.sort_by_key(|m| m.priority);
        methods
    }
}

fn is_dns_label_ish(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Durations as `500ms`, `10s`, `3m`, `1h`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| {
            D::Error::custom(format!("{s:?} is not a duration like 500ms, 10s, 3m or 1h"))
        })
    }

    pub fn parse(s: &str) -> Option<Duration> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
            "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
            _ => None,
        }
    }
}

/// An optional duration (see [`duration`]).
pub mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::duration::parse(&s).map(Some).ok_or_else(|| {
            D::Error::custom(format!("{s:?} is not a duration like 500ms, 10s, 3m or 1h"))
        })
    }
}

/// Sizes as Kubernetes quantities: `10Mi`, `512Ki`, `1G`, `1500`.
pub mod size {
    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(s) => parse(&s).ok_or_else(|| {
                D::Error::custom(format!("{s:?} is not a size like 10Mi, 512Ki, 1G or 1500"))
            }),
        }
    }

    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        let factor: u64 = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            _ => return None,
        };
        n.checked_mul(factor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_norway::Value;

    use super::*;

    #[test]
    fn log_rotation_defaults_to_the_kubelets_and_bad_values_name_the_key() {
        let config = Config::parse(GOOD).expect("parses");
        assert_eq!(config.runtime.logs.max_size, 10 << 20);
        assert_eq!(config.runtime.logs.max_files, 5);
        let small = format!("{GOOD}runtime:\n  logs:\n    maxSize: 64Ki\n    maxFiles: 3\n");
        let config = Config::parse(&small).expect("parses");
        assert_eq!(config.runtime.logs.max_size, 64 << 10);
        for (yaml, key) in [
            ("maxSize: 10 MB", "runtime.logs.maxSize"),
            ("maxFiles: 1", "runtime.logs.maxFiles"),
        ] {
            let bad = format!("{GOOD}runtime:\n  logs:\n    {yaml}\n");
            let e = Config::parse(&bad).expect_err("refused").to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    const GOOD: &str = r#"
device:
  name: edge-1
connectivity:
  methods:
    - name: grpc
      grpc:
        endpoint: 127.0.0.1:9443
        caFile: /tmp/ca.crt
"#;

    #[test]
    fn example_parses() {
        let text = include_str!("../config.example.yaml");
        let config = Config::parse(text).expect("the documented example is valid");
        assert_eq!(config.device.name, "edge-1");
        assert_eq!(config.connectivity.backoff.max, Duration::from_secs(10));
    }

    /// Every key the config accepts is in the documented example: at each
    /// mapping of the example, a key the struct does not know makes serde list
    /// the keys it does know (every struct denies unknown fields), and each of
    /// them must be there (in a list, in one of its items at least). A struct
    /// the example leaves out entirely shows up as its parent's missing key.
    #[test]
    fn example_documents_every_key() {
        let text = include_str!("../config.example.yaml");
        let example: serde_norway::Value = serde_norway::from_str(text).expect("yaml");
        let (mut accepted, mut present) = (BTreeSet::new(), BTreeSet::new());
        let mut path = Vec::new();
        collect_keys(&example, &example, &mut path, &mut accepted, &mut present);
        let missing: Vec<_> = accepted.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "config.example.yaml lacks keys the config accepts: {missing:?}"
        );
    }

    /// Records under `accepted` the keys serde lists for each mapping of the
    /// example, and under `present` the keys it has, both as dotted paths with
    /// list indices written `[]`.
    fn collect_keys(
        root: &Value,
        node: &Value,
        path: &mut Vec<Value>,
        accepted: &mut BTreeSet<String>,
        present: &mut BTreeSet<String>,
    ) {
        match node {
            Value::Mapping(map) => {
                let mut probed = root.clone();
                let at = path
                    .iter()
                    .try_fold(&mut probed, |v, k| match (v, k) {
                        (Value::Mapping(m), k) => m.get_mut(k),
                        (Value::Sequence(s), Value::Number(i)) => {
                            s.get_mut(usize::try_from(i.as_u64()?).ok()?)
                        }
                        _ => None,
                    })
                    .and_then(Value::as_mapping_mut)
                    .expect("path into the example");
                at.insert("zzUndocumentedProbe".into(), Value::Null);
                let yaml = serde_norway::to_string(&probed).expect("yaml");
                let message = Config::parse(&yaml)
                    .expect_err("every struct refuses an unknown key")
                    .to_string();
                let (_, expected) = message
                    .split_once("expected ")
                    .unwrap_or_else(|| panic!("no list of keys in: {message}"));
                let prefix = dotted(path);
                for key in expected.split('`').skip(1).step_by(2) {
                    accepted.insert(format!("{prefix}{key}"));
                }
                for (key, value) in map {
                    if let Value::String(k) = key {
                        present.insert(format!("{prefix}{k}"));
                    }
                    path.push(key.clone());
                    collect_keys(root, value, path, accepted, present);
                    path.pop();
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Value::Number(i.into()));
                    collect_keys(root, item, path, accepted, present);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn dotted(path: &[Value]) -> String {
        let mut out = String::new();
        for k in path {
            match k {
                Value::String(s) => {
                    out.push_str(s);
                    out.push('.');
                }
                Value::Number(_) => {
                    out.pop();
                    out.push_str("[].");
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn minimal_parses_with_defaults() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.node.status_interval, Duration::from_secs(10));
        assert_eq!(config.connectivity.backoff.max, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_named() {
        let bad = GOOD.replace("caFile", "caFiel");
        let err = Config::parse(&bad).expect_err("unknown key");
        assert_eq!(
            err.key_name(),
            Some("connectivity.methods[0].grpc.caFiel"),
            "{err}"
        );
        assert!(err.to_string().contains("caFile"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let bad = format!("{GOOD}node:\n  statusInterval: soon\n");
        let err = Config::parse(&bad).expect_err("bad duration");
        assert_eq!(err.key_name(), Some("node.statusInterval"), "{err}");
    }

    #[test]
    fn bad_endpoint_is_named() {
        let bad = GOOD.replace("127.0.0.1:9443", "localhost");
        let err = Config::parse(&bad).expect_err("bad endpoint");
        assert_eq!(
            err.key_name(),
            Some("connectivity.methods[0].grpc.endpoint"),
            "{err}"
        );
    }

    #[test]
    fn the_pod_network_and_dns_defaults_and_bad_values_name_the_key() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.network.bridge, "arhat0");
        assert_eq!(config.network.subnet.to_string(), "10.87.0.0/16");
        assert_eq!(config.network.cni_bin_dir, PathBuf::from("/usr/lib/cni"));
        assert!(config.dns.enabled);
        assert_eq!(config.dns.address.to_string(), "169.254.20.10");
        for (yaml, key) in [
            ("network:\n  subnet: 10.87.0.1/16\n", "network.subnet"),
            ("network:\n  subnet: nowhere\n", "network.subnet"),
            ("dns:\n  address: nowhere\n", "dns.address"),
            ("dns:\n  upstreams: [10.0.0.2]\n", "dns.upstreams[0]"),
            (
                "network:\n  bridge: a-bridge-name-too-long\n",
                "network.bridge",
            ),
        ] {
            let err = Config::parse(&format!("{GOOD}{yaml}")).expect_err(yaml);
            assert_eq!(err.key_name(), Some(key), "{err}");
        }
    }

    #[test]
    fn runtime_health_defaults_to_a_kubelets_and_bad_values_name_the_key() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.runtime.health.interval, Duration::from_secs(5));
        assert_eq!(config.runtime.health.down_after, Duration::from_secs(30));
        for (yaml, key) in [
            (
                "runtime:\n  health:\n    interval: 5s\n    downAfter: 1s\n",
                "runtime.health.downAfter",
            ),
            (
                "runtime:\n  health:\n    interval: 1ms\n",
                "runtime.health.interval",
            ),
            (
                "runtime:\n  health:\n    every: 1s\n",
                "runtime.health.every",
            ),
        ] {
            let err = Config::parse(&format!("{GOOD}{yaml}")).expect_err(yaml);
            assert_eq!(err.key_name(), Some(key), "{err}");
        }
    }

    #[test]
    fn host_defaults_to_nothing_allowed() {
        let config = Config::parse(GOOD).expect("valid");
        assert!(config.host.log_files.is_empty());
        assert!(!config.host.allow_exec && !config.host.allow_attach);
        assert!(!config.host.allow_port_forward);
    }

    #[test]
    fn relative_host_log_file_is_named() {
        let bad = format!("{GOOD}host:\n  logFiles: [/var/log/syslog, messages]\n");
        let err = Config::parse(&bad).expect_err("relative path");
        assert_eq!(err.key_name(), Some("host.logFiles[1]"), "{err}");
    }

    #[test]
    fn unknown_host_key_is_named() {
        let bad = format!("{GOOD}host:\n  logfiles: []\n");
        let err = Config::parse(&bad).expect_err("unknown key");
        assert_eq!(err.key_name(), Some("host.logfiles"), "{err}");
    }

    #[test]
    fn bad_name_is_named() {
        let bad = GOOD.replace("edge-1", "Edge_1");
        let err = Config::parse(&bad).expect_err("bad name");
        assert_eq!(err.key_name(), Some("device.name"), "{err}");
    }

    #[test]
    fn missing_method_settings_are_named() {
        let bad = "device:\n  name: a\nconnectivity:\n  methods:\n    - name: grpc\n";
        let err = Config::parse(bad).expect_err("no grpc block");
        assert_eq!(
            err.key_name(),
            Some("connectivity.methods[0].grpc"),
            "{err}"
        );
    }
}
