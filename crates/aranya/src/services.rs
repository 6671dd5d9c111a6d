//! The cluster Services each device may reach. One watch of every Service
//! (and of every EndpointSlice, for headless Services' endpoints) serves all
//! virtual nodes; each node sends its device the catalogue its
//! EdgeDevice's `spec.network.services` allows (nothing by default), after
//! every handshake and whenever the Services or the rules change.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use connectivity::SessionHandle;
use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    core::SelectorExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use proto::api::{
    ServiceCatalogue, ServiceEndpoint, ServiceEntry, ServicePort, SyncServices, open::Kind,
};
use tokio::sync::watch;
use tracing::{Instrument, debug, warn};

use crate::crd::NetworkSettings;

mod index;

/// Changes closer together than this go out as one catalogue.
const SETTLE: Duration = Duration::from_millis(200);
/// A catalogue the device did not take is sent again this often.
const RETRY: Duration = Duration::from_secs(5);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The label naming an EndpointSlice's Service.
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Every Service and EndpointSlice in the cluster, as watches keep them.
#[derive(Debug)]
pub struct Services {
    store: reflector::Store<Service>,
    slices: reflector::Store<EndpointSlice>,
    changed: watch::Receiver<u64>,
    cluster_domain: String,
    index: Mutex<Arc<index::Index>>,
}

/// Keeps `writer` up to date with every `K`, counting each change in `tx`.
fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, tx: watch::Sender<u64>)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(
        async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(_) => tx.send_modify(|n| *n += 1),
                    Err(e) => warn!(error = %e, "watching {}", std::any::type_name::<K>()),
                }
            }
        }
        .in_current_span(),
    );
}

impl Services {
    /// Starts watching every Service and EndpointSlice.
    pub fn start(client: Client, cluster_domain: String) -> Arc<Self> {
        let (store, writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        let (tx, changed) = watch::channel(0u64);
        reflect(Api::<Service>::all(client.clone()), writer, tx.clone());
        reflect(Api::<EndpointSlice>::all(client), slice_writer, tx);
        Arc::new(Self {
            store,
            slices,
            changed,
            cluster_domain,
            index: Mutex::default(),
        })
    }

    /// The catalogue `settings` allow.
    pub fn catalogue(&self, settings: &NetworkSettings) -> ServiceCatalogue {
        let mut services: Vec<ServiceEntry> = self
            .store
            .state()
            .iter()
            .filter(|s| allowed(settings, s))
            .map(|s| {
                let mut e = entry(s);
                if e.headless {
                    e.endpoints = self.endpoints(s);
                }
                e
            })
            .collect();
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        ServiceCatalogue {
            cluster_domain: self.cluster_domain.clone(),
            services,
        }
    }

    /// A headless Service's endpoints that DNS publishes: the ready ones
    /// (all with `publishNotReadyAddresses`), from every slice of it.
    fn endpoints(&self, service: &Service) -> Vec<ServiceEndpoint> {
        let everyone = service
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let mut endpoints: Vec<ServiceEndpoint> = Vec::new();
        for slice in self.slices_of(service) {
            let ports: Vec<ServicePort> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: u32::try_from(p.port?).ok()?,
                    })
                })
                .collect();
            endpoints.extend(
                slice
                    .endpoints
                    .iter()
                    .flatten()
                    // Unset means ready.
                    .filter(|e| {
                        everyone || e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
                    })
                    .map(|e| ServiceEndpoint {
                        addresses: e.addresses.clone(),
                        hostname: e.hostname.clone().unwrap_or_default(),
                        ports: ports.clone(),
                    }),
            );
        }
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        endpoints
    }

    /// The Service with ClusterIP `ip`.
    pub fn by_cluster_ip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.index().by_cluster_ip(ip)
    }

    /// The headless Services with an endpoint at `ip`.
    pub fn headless_with_endpoint(&self, ip: IpAddr) -> Vec<Arc<Service>> {
        self.index().headless_with_endpoint(ip)
    }

    /// The EndpointSlices of `service`.
    pub fn slices_of(&self, service: &Service) -> Vec<Arc<EndpointSlice>> {
        self.index().slices_of(service)
    }

    /// The index, rebuilt first if the watches changed since it was built.
    /// (The count is read before the stores: a change in between is seen
    /// as newer next time.)
    fn index(&self) -> Arc<index::Index> {
        let version = *self.changed.borrow();
        let mut index = self
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if index.version != version {
            *index = Arc::new(index::Index::build(
                version,
                self.store.state(),
                self.slices.state(),
            ));
        }
        index.clone()
    }

    /// Keeps a device's catalogue up to date over its sessions until the
    /// senders of `settings` and `session` are dropped.
    pub fn sync(
        self: &Arc<Self>,
        mut settings: watch::Receiver<NetworkSettings>,
        mut session: watch::Receiver<Option<SessionHandle>>,
    ) -> tokio::task::JoinHandle<()> {
        let services = self.clone();
        let mut changed = self.changed.clone();
        tokio::spawn(
            async move {
                // What the current session took last.
                let mut sent: Option<ServiceCatalogue> = None;
                loop {
                    // Whether the device has not taken the latest catalogue.
                    let mut behind = false;
                    let current = session.borrow_and_update().clone();
                    if let Some(current) = current {
                        let catalogue = services.catalogue(&settings.borrow_and_update());
                        if sent.as_ref() != Some(&catalogue) {
                            if send(&current, &catalogue).await {
                                sent = Some(catalogue);
                            } else {
                                behind = true;
                            }
                        }
                    }
                    let retry = behind && session.borrow().is_some();
                    tokio::select! {
                        r = settings.changed() => if r.is_err() { return },
                        r = session.changed() => {
                            if r.is_err() {
                                return;
                            }
                            sent = None;
                        }
                        r = changed.changed() => if r.is_err() { return },
                        () = tokio::time::sleep(RETRY), if retry => {}
                    }
                    tokio::time::sleep(SETTLE).await;
                }
            }
            .in_current_span(),
        )
    }
}

/// Whether any rule lets the device reach `service`.
pub fn allowed(settings: &NetworkSettings, service: &Service) -> bool {
    let namespace = service.namespace().unwrap_or_default();
    settings.services.iter().enumerate().any(|(i, rule)| {
        if !rule.namespaces.is_empty() && !rule.namespaces.contains(&namespace) {
            return false;
        }
        let Some(selector) = &rule.selector else {
            return true;
        };
        match kube::core::Selector::try_from(selector.clone()) {
            Ok(selector) => selector.matches(service.labels()),
            Err(e) => {
                debug!(error = %e, "spec.network.services[{i}].selector is invalid: it matches nothing");
                false
            }
        }
    })
}

fn entry(service: &Service) -> ServiceEntry {
    let spec = service.spec.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let cluster_ips = spec
        .cluster_ips
        .or_else(|| spec.cluster_ip.map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    ServiceEntry {
        namespace: service.namespace().unwrap_or_default(),
        name: service.name_any(),
        cluster_ips,
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| ServicePort {
                name: p.name.unwrap_or_default(),
                protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                port: u32::try_from(p.port).unwrap_or(0),
            })
            .collect(),
        external_name: spec.external_name.unwrap_or_default(),
        headless,
        endpoints: Vec::new(),
    }
}

/// Whether the device took `catalogue`.
async fn send(session: &SessionHandle, catalogue: &ServiceCatalogue) -> bool {
    let kind = Kind::SyncServices(SyncServices {});
    match crate::push::push(session, kind, catalogue, SEND_TIMEOUT).await {
        Ok(()) => {
            debug!(
                services = catalogue.services.len(),
                "device took its service catalogue"
            );
            true
        }
        Err(e) => {
            warn!(error = %e, "sending the service catalogue");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn service(namespace: &str, name: &str, app: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": namespace, "name": name, "labels": { "app": app } },
            "spec": { "clusterIP": "10.96.0.9", "ports": [{ "name": "http", "port": 80 }] },
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn nothing_is_allowed_unless_a_rule_matches() {
        let web = service("shop", "web", "web");
        let db = service("shop", "db", "db");
        let other = service("other", "web", "web");
        assert!(!allowed(&NetworkSettings::default(), &web));

        let by_label = NetworkSettings {
            services: vec![ServiceRule {
                namespaces: vec!["shop".into()],
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                }),
            }],
        };
        assert!(allowed(&by_label, &web));
        assert!(!allowed(&by_label, &db));
        assert!(!allowed(&by_label, &other));

        let whole_namespace = NetworkSettings {
            services: vec![ServiceRule {
                namespaces: vec!["shop".into()],
                selector: None,
            }],
        };
        assert!(allowed(&whole_namespace, &db));
        assert!(!allowed(&whole_namespace, &other));
    }

    #[test]
    fn entries_carry_addresses_ports_and_kinds() {
        let e = entry(&service("shop", "web", "web"));
        assert_eq!(e.cluster_ips, vec!["10.96.0.9"]);
        assert_eq!(e.ports[0].protocol, "TCP");
        assert_eq!(e.ports[0].port, 80);
        assert!(!e.headless);
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "shop", "name": "hl" },
            "spec": { "clusterIP": "None", "clusterIPs": ["None"] },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let e = entry(&headless);
        assert!(e.headless && e.cluster_ips.is_empty());
    }
}
