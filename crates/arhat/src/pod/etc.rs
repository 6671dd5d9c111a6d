//! The pod's /etc/hosts and /etc/resolv.conf: written by arhat into the
//! pod's directory and mounted into each of its containers, as a kubelet
//! writes /etc/hosts and a CRI runtime resolv.conf. Every runtime so gives
//! the same files; a runtime's own (Docker's, from its bridge) are not used.

use std::path::Path;

use super::dns::Resolver;
use crate::runtime::Mount;

const HOSTS: &str = "/etc/hosts";
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the pod's files say.
#[derive(Debug, Clone, Default)]
pub struct Files<'a> {
    pub hostname: &'a str,
    /// The pod's own address; `None` on the host's network.
    pub pod_ip: Option<&'a str>,
    pub host_aliases: &'a [(String, Vec<String>)],
    /// The device's /etc/hosts, which a pod on the host's network sees.
    pub device_hosts: &'a str,
    pub resolver: Resolver,
}

/// The hosts file as a kubelet writes it: its own localhost entries and the
/// pod's name on its address, or the device's file on the host's network;
/// then the pod's hostAliases.
pub fn hosts(files: &Files<'_>) -> String {
    let mut out = String::new();
    match files.pod_ip {
        Some(ip) => {
            out.push_str("# Kubernetes-managed hosts file.\n");
            out.push_str(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\n\
                 fe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
            );
            if !files.hostname.is_empty() {
                out.push_str(&format!("{ip}\t{}\n", files.hostname));
            }
        }
        None => {
            out.push_str("# Kubernetes-managed hosts file (host network).\n");
            out.push_str(files.device_hosts);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    if !files.host_aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in files.host_aliases {
            out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    out
}

/// resolv.conf for `resolver`.
pub fn resolv_conf(resolver: &Resolver) -> String {
    let mut out = String::new();
    for ns in &resolver.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !resolver.searches.is_empty() {
        out.push_str(&format!("search {}\n", resolver.searches.join(" ")));
    }
    if !resolver.options.is_empty() {
        out.push_str(&format!("options {}\n", resolver.options.join(" ")));
    }
    out
}

/// Writes both files under `<pod_dir>/etc/` (in place: containers of an
/// earlier sandbox may still have them mounted); returns their mounts.
pub fn write(pod_dir: &Path, files: &Files<'_>) -> std::io::Result<Vec<Mount>> {
    let dir = pod_dir.join("etc");
    std::fs::create_dir_all(&dir)?;
    let mut mounts = Vec::new();
    for (name, target, text) in [
        ("hosts", HOSTS, hosts(files)),
        ("resolv.conf", RESOLV_CONF, resolv_conf(&files.resolver)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        mounts.push(Mount {
            host_path: path,
            container_path: target.to_string(),
            read_only: false,
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases() -> Vec<(String, Vec<String>)> {
        vec![(
            "10.1.2.3".into(),
            vec!["foo.example".into(), "bar.example".into()],
        )]
    }

    #[test]
    fn a_pods_hosts_file_names_it_on_its_address_then_its_aliases() {
        let aliases = aliases();
        let text = hosts(&Files {
            hostname: "web-0",
            pod_ip: Some("10.87.0.5"),
            host_aliases: &aliases,
            device_hosts: "192.0.2.9 device\n",
            ..Default::default()
        });
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(text.contains("\n10.87.0.5\tweb-0\n"), "{text}");
        assert!(!text.contains("device"), "{text}");
        assert!(
            text.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.example\tbar.example\n")
        );
    }

    #[test]
    fn on_the_hosts_network_it_is_the_devices_file() {
        let text = hosts(&Files {
            hostname: "web-0",
            pod_ip: None,
            device_hosts: "192.0.2.9 device",
            ..Default::default()
        });
        assert_eq!(
            text,
            "# Kubernetes-managed hosts file (host network).\n192.0.2.9 device\n"
        );
    }

    #[test]
    fn resolv_conf_lists_servers_searches_and_options() {
        let text = resolv_conf(&Resolver {
            nameservers: vec!["192.0.2.53".into(), "10.0.0.2".into()],
            searches: vec!["a.example".into(), "b.example".into()],
            options: vec!["ndots:2".into()],
        });
        assert_eq!(
            text,
            "nameserver 192.0.2.53\nnameserver 10.0.0.2\nsearch a.example b.example\noptions ndots:2\n"
        );
        assert_eq!(resolv_conf(&Resolver::default()), "");
    }

    #[test]
    fn both_files_are_written_and_mounted_over_the_containers_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounts = write(
            dir.path(),
            &Files {
                hostname: "p",
                pod_ip: Some("10.87.0.9"),
                ..Default::default()
            },
        )
        .expect("written");
        let targets: Vec<&str> = mounts.iter().map(|m| m.container_path.as_str()).collect();
        assert_eq!(targets, [HOSTS, RESOLV_CONF]);
        let hosts = std::fs::read_to_string(&mounts[0].host_path).expect("hosts");
        assert!(hosts.contains("10.87.0.9\tp"));
    }
}
