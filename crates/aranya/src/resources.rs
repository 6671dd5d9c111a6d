//! Node capacity and allocatable from what the device reports and what its
//! EdgeDevice reserves.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proto::api::NodeStatus;

use crate::crd::EdgeDeviceSpec;

/// Capacity as the device reports it, with `pods` from the spec.
pub fn capacity(report: &NodeStatus, spec: &EdgeDeviceSpec) -> BTreeMap<String, Quantity> {
    let c = report.capacity.unwrap_or_default();
    let mut out = BTreeMap::new();
    out.insert("cpu".into(), millis(c.cpu_millis));
    out.insert("memory".into(), Quantity(c.memory_bytes.to_string()));
    out.insert(
        "ephemeral-storage".into(),
        Quantity(c.ephemeral_storage_bytes.to_string()),
    );
    out.insert("pods".into(), Quantity(spec.pod.allocatable.to_string()));
    out
}

/// Capacity minus the spec's reservations, never below zero.
pub fn allocatable(
    capacity: &BTreeMap<String, Quantity>,
    spec: &EdgeDeviceSpec,
) -> BTreeMap<String, Quantity> {
    let mut out = capacity.clone();
    let Some(reserved) = &spec.node.reserved else {
        return out;
    };
    let pairs = [
        ("cpu", &reserved.cpu, true),
        ("memory", &reserved.memory, false),
        ("ephemeral-storage", &reserved.ephemeral_storage, false),
    ];
    for (name, reserve, is_cpu) in pairs {
        let (Some(reserve), Some(total)) = (reserve, capacity.get(name)) else {
            continue;
        };
        let (Some(reserve), Some(total)) = (parse(&reserve.0), parse(&total.0)) else {
            continue;
        };
        let left = (total - reserve).max(0.0);
        let q = if is_cpu {
            millis((left * 1000.0).round() as u64)
        } else {
            Quantity((left.floor() as u64).to_string())
        };
        out.insert(name.into(), q);
    }
    out
}

fn millis(m: u64) -> Quantity {
    if m.is_multiple_of(1000) {
        Quantity((m / 1000).to_string())
    } else {
        Quantity(format!("{m}m"))
    }
}

/// A Kubernetes quantity in base units ("500m" = 0.5, "1Ki" = 1024).
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Connectivity, NodeSettings, PodSettings, Reserved};
    use proto::api::Resources;

    fn spec(reserved: Option<Reserved>) -> EdgeDeviceSpec {
        EdgeDeviceSpec {
            connectivity: Connectivity { methods: vec![] },
            node: NodeSettings {
                reserved,
                ..Default::default()
            },
            pod: PodSettings {
                allocatable: 7,
                ..Default::default()
            },
            identity: Default::default(),
            network: Default::default(),
        }
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("1Ki"), Some(1024.0));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("bogus"), None);
    }

    #[test]
    fn allocatable_subtracts_reserved_and_keeps_pods() {
        let report = NodeStatus {
            capacity: Some(Resources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                ephemeral_storage_bytes: 100 << 30,
                pids: 0,
            }),
            ..Default::default()
        };
        let spec = spec(Some(Reserved {
            cpu: Some(Quantity("500m".into())),
            memory: Some(Quantity("1Gi".into())),
            ephemeral_storage: None,
        }));
        let cap = capacity(&report, &spec);
        assert_eq!(cap["cpu"].0, "4");
        assert_eq!(cap["pods"].0, "7");
        let alloc = allocatable(&cap, &spec);
        assert_eq!(alloc["cpu"].0, "3500m");
        assert_eq!(alloc["memory"].0, (7u64 << 30).to_string());
        assert_eq!(alloc["ephemeral-storage"].0, (100u64 << 30).to_string());
        assert_eq!(alloc["pods"].0, "7");
    }
}
