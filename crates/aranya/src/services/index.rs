//! What the relay looks up on every connection, by address: the Service
//! with a ClusterIP, the headless Services with an endpoint, and each
//! Service's EndpointSlices. Built from the watches' stores and rebuilt
//! only once they have changed, so a connection costs a hash lookup rather
//! than a scan of every Service and slice in the cluster.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::ResourceExt;

use super::LABEL_SERVICE_NAME;

#[derive(Debug, Default)]
pub(super) struct Index {
    /// The watches' change count it was built at.
    pub(super) version: u64,
    by_cluster_ip: HashMap<IpAddr, Arc<Service>>,
    headless_by_endpoint: HashMap<IpAddr, Vec<Arc<Service>>>,
    /// By namespace and Service name.
    slices: HashMap<(String, String), Vec<Arc<EndpointSlice>>>,
}

impl Index {
    pub(super) fn build(
        version: u64,
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
    ) -> Self {
        let mut index = Index {
            version,
            ..Default::default()
        };
        for slice in slices {
            let Some(service) = slice.labels().get(LABEL_SERVICE_NAME).cloned() else {
                continue;
            };
            let key = (slice.namespace().unwrap_or_default(), service);
            index.slices.entry(key).or_default().push(slice);
        }
        for service in services {
            for ip in cluster_ips(&service) {
                index.by_cluster_ip.insert(ip, service.clone());
            }
            if !is_headless(&service) {
                continue;
            }
            let mut addresses: Vec<IpAddr> = index
                .slices_of(&service)
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .flat_map(|e| e.addresses.iter())
                .filter_map(|a| a.parse().ok())
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            for ip in addresses {
                index
                    .headless_by_endpoint
                    .entry(ip)
                    .or_default()
                    .push(service.clone());
            }
        }
        index
    }

    pub(super) fn by_cluster_ip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.by_cluster_ip.get(&ip).cloned()
    }

    pub(super) fn headless_with_endpoint(&self, ip: IpAddr) -> Vec<Arc<Service>> {
        self.headless_by_endpoint
            .get(&ip)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn slices_of(&self, service: &Service) -> Vec<Arc<EndpointSlice>> {
        let key = (service.namespace().unwrap_or_default(), service.name_any());
        self.slices.get(&key).cloned().unwrap_or_default()
    }
}

/// A Service's ClusterIPs (none for a headless or ExternalName one).
fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

fn is_headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(namespace: &str, name: &str, cluster_ip: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": { "namespace": namespace, "name": name },
                "spec": { "clusterIP": cluster_ip, "clusterIPs": [cluster_ip] },
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn slice(namespace: &str, service: &str, address: &str) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "namespace": namespace,
                    "name": format!("{service}-x"),
                    "labels": { LABEL_SERVICE_NAME: service },
                },
                "addressType": "IPv4",
                "endpoints": [{ "addresses": [address] }],
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn services_are_found_by_cluster_ip_and_headless_ones_by_endpoint() {
        let index = Index::build(
            7,
            vec![
                service("shop", "web", "10.96.0.9"),
                service("shop", "db", "None"),
            ],
            vec![
                slice("shop", "web", "10.1.0.1"),
                slice("shop", "db", "10.1.0.2"),
                slice("other", "db", "10.1.0.3"),
            ],
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        let name = |s: Option<Arc<Service>>| s.map(|s| s.name_any());
        assert_eq!(
            name(index.by_cluster_ip(ip("10.96.0.9"))),
            Some("web".into())
        );
        assert_eq!(name(index.by_cluster_ip(ip("10.1.0.1"))), None);
        let headless = index.headless_with_endpoint(ip("10.1.0.2"));
        assert_eq!(headless.len(), 1);
        assert_eq!(headless[0].name_any(), "db");
        // A ClusterIP Service's endpoints, and another namespace's slice of
        // the same name, are no headless endpoints of it.
        assert!(index.headless_with_endpoint(ip("10.1.0.1")).is_empty());
        assert!(index.headless_with_endpoint(ip("10.1.0.3")).is_empty());
        assert_eq!(index.slices_of(&service("shop", "db", "None")).len(), 1);
    }
}
