//! A pod's resolv.conf from its dnsPolicy and dnsConfig, merged with the
//! device's own resolver settings as a kubelet merges them with the node's.

use proto::api::{DnsConfig, ServiceCatalogue};
use tokio::sync::watch;

/// arhat's DNS server, for pods whose policy asks for the cluster's.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    pub nameserver: std::net::Ipv4Addr,
    /// The catalogue names the cluster domain.
    pub catalogue: watch::Receiver<ServiceCatalogue>,
}

impl ClusterDns {
    /// (nameserver, cluster domain), as a pod starts.
    pub fn now(&self) -> (String, String) {
        let domain = Some(self.catalogue.borrow().cluster_domain.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| crate::clusternet::names::DEFAULT_DOMAIN.to_string());
        (self.nameserver.to_string(), domain)
    }
}

/// The cluster's DNS for one pod: the server, the cluster domain, the pod's
/// namespace.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub nameserver: &'a str,
    pub domain: &'a str,
    pub namespace: &'a str,
}

/// What the pod's resolv.conf says ([`super::etc`] writes it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A kubelet's limits: 3 nameservers, 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The pod's resolver, as a kubelet makes it. ClusterFirst (on the pod's
/// own network) and ClusterFirstWithHostNet use arhat's DNS server with the
/// cluster's search path, when `cluster` is given (else they fall back to
/// Default). On its own network a pod cannot reach the device's loopback
/// resolvers (systemd-resolved's 127.0.0.53), so they are left out there; on
/// the host's network it keeps them.
pub fn resolver(
    dns: Option<&DnsConfig>,
    host_resolv_conf: &str,
    host_network: bool,
    cluster: Option<Cluster<'_>>,
) -> Resolver {
    let device = || parse(host_resolv_conf, host_network);
    let Some(dns) = dns else {
        return device();
    };
    let cluster_first = match dns.policy.as_str() {
        "ClusterFirst" => !host_network,
        "ClusterFirstWithHostNet" => true,
        _ => false,
    };
    let mut out = match (dns.policy.as_str(), cluster) {
        ("None", _) => Resolver::default(),
        (_, Some(c)) if cluster_first => {
            let mut searches = vec![
                format!("{}.svc.{}", c.namespace, c.domain),
                format!("svc.{}", c.domain),
                c.domain.to_string(),
            ];
            searches.extend(device().searches);
            Resolver {
                nameservers: vec![c.nameserver.to_string()],
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        _ => device(),
    };
    let push_unique = |list: &mut Vec<String>, items: &[String]| {
        for item in items {
            if !list.contains(item) {
                list.push(item.clone());
            }
        }
    };
    push_unique(&mut out.nameservers, &dns.nameservers);
    push_unique(&mut out.searches, &dns.searches);
    // A pod's option replaces the device's option of the same name.
    for option in &dns.options {
        let name = option.split(':').next().unwrap_or_default();
        out.options
            .retain(|o| o.split(':').next().unwrap_or_default() != name);
        out.options.push(option.clone());
    }
    out.nameservers.truncate(MAX_NAMESERVERS);
    out.searches.truncate(MAX_SEARCHES);
    out
}

/// The device's resolv.conf; loopback servers only if `keep_loopback`.
fn parse(text: &str, keep_loopback: bool) -> Resolver {
    let mut out = Resolver::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ns) = words.next()
                    && (keep_loopback || (!ns.starts_with("127.") && ns != "::1"))
                {
                    out.nameservers.push(ns.to_string());
                }
            }
            Some("search") | Some("domain") => out.searches.extend(words.map(str::to_string)),
            Some("options") => out.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str =
        "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\noptions ndots:1 edns0\n";

    fn config(policy: &str, ns: &[&str], search: &[&str], options: &[&str]) -> DnsConfig {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        DnsConfig {
            policy: policy.into(),
            nameservers: owned(ns),
            searches: owned(search),
            options: owned(options),
        }
    }

    #[test]
    fn none_takes_only_the_pods_settings() {
        let r = resolver(
            Some(&config(
                "None",
                &["192.0.2.53"],
                &["example.internal"],
                &["ndots:2"],
            )),
            HOST,
            false,
            None,
        );
        assert_eq!(r.nameservers, ["192.0.2.53"]);
        assert_eq!(r.searches, ["example.internal"]);
        assert_eq!(r.options, ["ndots:2"]);
    }

    #[test]
    fn other_policies_add_to_the_devices_settings() {
        let device = resolver(None, HOST, false, None);
        assert_eq!(device.nameservers, ["10.0.0.2"]);
        assert_eq!(device.options, ["ndots:1", "edns0"]);
        assert_eq!(
            resolver(
                Some(&config("ClusterFirst", &[], &[], &[])),
                HOST,
                false,
                None
            ),
            device
        );
        // On the host's network the device's loopback resolver works.
        assert_eq!(
            resolver(None, HOST, true, None).nameservers,
            ["127.0.0.53", "10.0.0.2"]
        );
        let r = resolver(
            Some(&config("Default", &["192.0.2.53"], &["x"], &["ndots:5"])),
            HOST,
            false,
            None,
        );
        assert_eq!(r.nameservers, ["10.0.0.2", "192.0.2.53"]);
        assert_eq!(r.searches, ["lan", "x"]);
        assert_eq!(r.options, ["edns0", "ndots:5"]);
    }

    #[test]
    fn cluster_first_uses_the_devices_dns_server_with_the_cluster_search_path() {
        let cluster = Cluster {
            nameserver: "169.254.20.10",
            domain: "cluster.local",
            namespace: "shop",
        };
        let r = resolver(
            Some(&config("ClusterFirst", &[], &["extra"], &["timeout:2"])),
            HOST,
            false,
            Some(cluster),
        );
        assert_eq!(r.nameservers, ["169.254.20.10"]);
        assert_eq!(
            r.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "lan",
                "extra"
            ]
        );
        assert_eq!(r.options, ["ndots:5", "timeout:2"]);
        // On the host's network only ClusterFirstWithHostNet asks for it.
        let host = resolver(
            Some(&config("ClusterFirst", &[], &[], &[])),
            HOST,
            true,
            Some(cluster),
        );
        assert_eq!(host.nameservers, ["127.0.0.53", "10.0.0.2"]);
        let with = resolver(
            Some(&config("ClusterFirstWithHostNet", &[], &[], &[])),
            HOST,
            true,
            Some(cluster),
        );
        assert_eq!(with.nameservers, ["169.254.20.10"]);
        let default = resolver(
            Some(&config("Default", &[], &[], &[])),
            HOST,
            false,
            Some(cluster),
        );
        assert_eq!(default.nameservers, ["10.0.0.2"]);
    }
}
