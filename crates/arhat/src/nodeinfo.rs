//! What the device is: system identity and capacity, read from the host.

use std::path::Path;

use proto::api::{NodeStatus, Resources, SystemInfo};

/// Reads the device's status now. Missing sources leave fields empty rather
/// than failing: a device without DMI or machine-id still runs pods.
pub fn collect(storage_path: &Path, runtime_version: &str) -> NodeStatus {
    let uname = rustix::system::uname();
    let machine = uname.machine().to_string_lossy().into_owned();
    let (architecture, arch_variant) = kube_arch(&machine);
    NodeStatus {
        system: Some(SystemInfo {
            machine_id: first_line(&["/etc/machine-id", "/var/lib/dbus/machine-id"]),
            system_uuid: first_line(&["/sys/class/dmi/id/product_uuid"]),
            boot_id: first_line(&["/proc/sys/kernel/random/boot_id"]),
            kernel_version: uname.release().to_string_lossy().into_owned(),
            os_image: os_image(),
            operating_system: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            arch_variant: arch_variant.to_string(),
            container_runtime_version: runtime_version.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }),
        capacity: Some(Resources {
            cpu_millis: cpu_count() * 1000,
            memory_bytes: mem_total().unwrap_or(0),
            ephemeral_storage_bytes: storage_bytes(storage_path).unwrap_or(0),
            pids: first_line(&["/proc/sys/kernel/pid_max"])
                .parse()
                .unwrap_or(0),
        }),
        hostname: uname.nodename().to_string_lossy().into_owned(),
        generation: 0,
        runtime: None,
    }
}

/// Kubernetes' (GOARCH) name for a `uname -m`, and the arm variant.
pub fn kube_arch(machine: &str) -> (&'static str, &'static str) {
    match machine {
        "x86_64" | "amd64" => ("amd64", ""),
        "aarch64" | "arm64" | "armv8l" => ("arm64", ""),
        "armv7l" | "armv7" => ("arm", "7"),
        "armv6l" | "armv6" => ("arm", "6"),
        "armv5tel" | "armv5l" | "armv5" => ("arm", "5"),
        "i386" | "i486" | "i586" | "i686" | "x86" => ("386", ""),
        "riscv64" => ("riscv64", ""),
        "ppc64le" => ("ppc64le", ""),
        "s390x" => ("s390x", ""),
        "mips" => ("mips", ""),
        "mipsel" => ("mipsle", ""),
        "mips64" => ("mips64", ""),
        "mips64el" => ("mips64le", ""),
        "loongarch64" => ("loong64", ""),
        _ => ("unknown", ""),
    }
}

/// The device's primary IPv4 address (the first local, non-loopback one the
/// kernel's routing table lists), reported as pods' hostIP.
pub fn host_ip() -> Option<String> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    parse_fib_trie(&trie)
}

fn parse_fib_trie(trie: &str) -> Option<String> {
    let lines: Vec<&str> = trie.lines().collect();
    lines.windows(2).find_map(|w| {
        let ip = w[0].trim().strip_prefix("|-- ")?;
        let local = w[1].trim() == "/32 host LOCAL";
        (local && !ip.starts_with("127.")).then(|| ip.to_string())
    })
}

fn first_line(paths: &[&str]) -> String {
    paths
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_default()
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_os_release(&text).unwrap_or_else(|| "Linux".to_string())
}

fn parse_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// CPUs this process may use (affinity and cgroup quota respected).
pub fn cpu_count() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

pub fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn storage_bytes(path: &Path) -> Option<u64> {
    disk_use(path).map(|(_, total)| total)
}

/// Bytes used and total on the filesystem holding `path`.
pub fn disk_use(path: &Path) -> Option<(u64, u64)> {
    let fs = rustix::fs::statvfs(path).ok()?;
    let total = fs.f_blocks.saturating_mul(fs.f_frsize);
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    Some((total.saturating_sub(free), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_follow_kubernetes() {
        assert_eq!(kube_arch("x86_64"), ("amd64", ""));
        assert_eq!(kube_arch("aarch64"), ("arm64", ""));
        assert_eq!(kube_arch("armv7l"), ("arm", "7"));
    }

    #[test]
    fn meminfo_and_os_release_parse() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       1000 kB\nMemFree: 1 kB\n"),
            Some(1_024_000)
        );
        assert_eq!(
            parse_os_release("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn fib_trie_gives_the_first_local_address() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 10.0.2.15\n        /32 host LOCAL\n";
        assert_eq!(parse_fib_trie(trie).as_deref(), Some("10.0.2.15"));
    }

    #[test]
    fn collect_reads_this_host() {
        let status = collect(Path::new("/"), "none://");
        let system = status.system.expect("system info");
        assert_eq!(system.operating_system, "linux");
        assert!(!system.kernel_version.is_empty());
        let capacity = status.capacity.expect("capacity");
        assert!(capacity.cpu_millis >= 1000);
        assert!(capacity.memory_bytes > 0);
        assert!(capacity.ephemeral_storage_bytes > 0);
    }
}
