//! Admission on the device, for what only the device knows: a pod whose
//! requests do not fit what the device has (with what its other pods asked
//! for) ends Failed with the kubelet's OutOfcpu / OutOfmemory, instead of
//! starting containers that cannot get what they were promised. A pod sent
//! with `spec.nodeName` skips the scheduler; this is its only check.

use proto::api::{Container, PodSpec, refusal};

/// What the device has for pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Capacity {
    pub fn of_host() -> Self {
        Self {
            cpu_millis: crate::nodeinfo::cpu_count() * 1000,
            memory_bytes: crate::nodeinfo::mem_total().unwrap_or(u64::MAX),
        }
    }

    pub const UNLIMITED: Capacity = Capacity {
        cpu_millis: u64::MAX,
        memory_bytes: u64::MAX,
    };
}

/// What a pod asks for, as the scheduler counts it: its app containers
/// together, or its largest init container if that is more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Requests {
    pub fn of(spec: &PodSpec) -> Self {
        let sum = |cs: &[Container], f: fn(&Container) -> u64| {
            cs.iter().map(f).fold(0u64, u64::saturating_add)
        };
        let max = |cs: &[Container], f: fn(&Container) -> u64| cs.iter().map(f).max().unwrap_or(0);
        let cpu = |c: &Container| c.cpu_request_millis;
        let memory = |c: &Container| c.memory_request_bytes;
        Self {
            cpu_millis: sum(&spec.containers, cpu).max(max(&spec.init_containers, cpu)),
            memory_bytes: sum(&spec.containers, memory).max(max(&spec.init_containers, memory)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// Whether `spec` fits beside what the device's other pods requested (`used`).
pub fn check(spec: &PodSpec, capacity: Capacity, used: Requests) -> Result<(), Refusal> {
    let asked = Requests::of(spec);
    let fits = |want: u64, used: u64, have: u64| want == 0 || used.saturating_add(want) <= have;
    let refuse = |reason: &'static str, resource: &str, want: u64, used: u64, have: u64| Refusal {
        reason,
        message: format!(
            "Pod was rejected: Node didn't have enough resource: {resource}, requested: {want}, used: {used}, capacity: {have}"
        ),
    };
    let checks = [
        (
            refusal::OUT_OF_CPU,
            "cpu",
            asked.cpu_millis,
            used.cpu_millis,
            capacity.cpu_millis,
        ),
        (
            refusal::OUT_OF_MEMORY,
            "memory",
            asked.memory_bytes,
            used.memory_bytes,
            capacity.memory_bytes,
        ),
    ];
    for (reason, resource, want, used, have) in checks {
        if !fits(want, used, have) {
            return Err(refuse(reason, resource, want, used, have));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(cpu: u64, memory: u64) -> Container {
        Container {
            cpu_request_millis: cpu,
            memory_request_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn requests_count_as_the_scheduler_counts_them() {
        let spec = PodSpec {
            containers: vec![container(100, 10), container(200, 20)],
            init_containers: vec![container(500, 5)],
            ..Default::default()
        };
        assert_eq!(
            Requests::of(&spec),
            Requests {
                cpu_millis: 500,
                memory_bytes: 30
            }
        );
    }

    #[test]
    fn a_pod_that_does_not_fit_is_refused_naming_the_resource() {
        let capacity = Capacity {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
        };
        let spec = PodSpec {
            containers: vec![container(0, 2 << 30)],
            ..Default::default()
        };
        let refused = check(&spec, capacity, Requests::default()).expect_err("too big");
        assert_eq!(refused.reason, "OutOfmemory");
        assert!(
            refused.message.contains("memory, requested: 2147483648"),
            "{}",
            refused.message
        );
        let small = PodSpec {
            containers: vec![container(1500, 0)],
            ..Default::default()
        };
        assert_eq!(check(&small, capacity, Requests::default()), Ok(()));
        let busy = Requests {
            cpu_millis: 1000,
            memory_bytes: 0,
        };
        assert_eq!(
            check(&small, capacity, busy).expect_err("full").reason,
            "OutOfcpu"
        );
        assert_eq!(check(&PodSpec::default(), capacity, busy), Ok(()));
    }
}
