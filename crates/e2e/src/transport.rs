//! The transports the end-to-end suites run over, and the macro that runs a
//! test once per transport.

use crate::cluster::MqttMethod;

/// How the device reaches aranya in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// aranya's gRPC endpoint, directly.
    Grpc,
    /// Through the test's own Mosquitto, which refuses payloads above `max_payload`.
    Mqtt { max_payload: usize },
}

/// MQTT at the default payload limit.
pub const MQTT: Transport = Transport::Mqtt {
    max_payload: connectivity::mqtt::DEFAULT_MAX_PAYLOAD,
};
/// MQTT at the smallest payload limit a managed broker is likely to set.
pub const MQTT_8K: Transport = Transport::Mqtt {
    max_payload: 8 << 10,
};

impl Transport {
    /// The EdgeDevice's `spec.connectivity.methods` and arhat's MQTT method
    /// (none over gRPC) for this transport through `broker`.
    pub fn methods(self, broker: Option<&str>) -> (serde_json::Value, Option<MqttMethod>) {
        match (self, broker) {
            (Self::Mqtt { max_payload }, Some(broker)) => (
                serde_json::json!([{
                    "name": "mqtt",
                    "priority": 0,
                    "mqtt": { "broker": broker, "maxPayloadSize": max_payload, "keepaliveSeconds": 5 },
                }]),
                Some(MqttMethod {
                    broker: broker.to_string(),
                    max_payload,
                }),
            ),
            _ => (serde_json::json!([{ "name": "grpc", "priority": 0 }]), None),
        }
    }

    /// A short name for namespaces and logs: `grpc`, `mqtt`, `mqtt8k`.
    pub fn short(self) -> String {
        match self {
            Self::Grpc => "grpc".into(),
            Self::Mqtt { max_payload }
                if max_payload == connectivity::mqtt::DEFAULT_MAX_PAYLOAD =>
            {
                "mqtt".into()
            }
            Self::Mqtt { max_payload } => format!("mqtt{}k", max_payload >> 10),
        }
    }
}

/// Runs a test over gRPC, MQTT and MQTT at 8 KiB payloads: a module named
/// after the test holds one `#[tokio::test]` per transport (`<test>::grpc`,
/// `<test>::mqtt`, `<test>::mqtt_8k`); the body gets the [`Transport`].
#[macro_export]
macro_rules! over_transports {
    ($(#[$attr:meta])* async fn $name:ident($t:ident) -> $ret:ty $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($t: $crate::transport::Transport) -> $ret $body

            #[tokio::test(flavor = "multi_thread")]
            async fn grpc() -> $ret {
                body($crate::transport::Transport::Grpc).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn mqtt() -> $ret {
                body($crate::transport::MQTT).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn mqtt_8k() -> $ret {
                body($crate::transport::MQTT_8K).await
            }
        }
    };
}
