//! The cluster's names as this device may see them, from its service
//! catalogue: `<service>.<namespace>.svc.<domain>` with the Service's
//! ClusterIPs (A, AAAA), `_<port>._<proto>.<service>...` SRV records for named
//! ports, a CNAME for an ExternalName Service; any other name in the cluster
//! domain does not exist (a Service the device may not reach is not told
//! apart from one that is not there), and names outside it are not ours.

use std::{collections::HashMap, net::IpAddr};

use hickory_proto::{
    op::Query,
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, SOA, SRV},
    },
};
use proto::api::{ServiceCatalogue, ServicePort};

/// Answers are cached this long, as CoreDNS's kubernetes plugin does.
pub const TTL: u32 = 5;
/// The domain until aranya says otherwise.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// What a query gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name exists; the records of the asked type (possibly none).
    Records(Vec<Record>),
    /// A name in the cluster domain that does not exist (for this device).
    NxDomain,
    /// Not in the cluster domain: the device's own resolvers answer.
    Forward,
}

/// `_<port>._<proto>.<service>` SRV records pointing at `target`, one per
/// named port.
fn srv(
    records: &mut HashMap<Name, Vec<Record>>,
    service: &Name,
    ports: &[ServicePort],
    target: &Name,
) {
    for port in ports.iter().filter(|p| !p.name.is_empty()) {
        let protocol = port.protocol.to_lowercase();
        let Ok(name) = Name::from_ascii(format!("_{}._{protocol}.{service}", port.name)) else {
            continue;
        };
        let number = u16::try_from(port.port).unwrap_or(0);
        let data = RData::SRV(SRV::new(0, 100, number, target.clone()));
        let name = name.to_lowercase();
        records
            .entry(name.clone())
            .or_default()
            .push(Record::from_rdata(name, TTL, data));
    }
}

/// A and AAAA records of `name` for each address that parses.
fn addresses(name: &Name, ips: &[String]) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Some(RData::A(A(a))),
            Ok(IpAddr::V6(a)) => Some(RData::AAAA(AAAA(a))),
            Err(_) => None,
        })
        .map(|data| Record::from_rdata(name.clone(), TTL, data))
        .collect()
}

/// The records of every name, by lower-case name.
#[derive(Debug, Clone)]
pub struct Names {
    domain: Name,
    records: HashMap<Name, Vec<Record>>,
}

impl Names {
    pub fn new(catalogue: &ServiceCatalogue) -> Self {
        let domain = Some(catalogue.cluster_domain.as_str())
            .filter(|d| !d.is_empty())
            .unwrap_or(DEFAULT_DOMAIN);
        let domain = Name::from_ascii(format!("{domain}."))
            .unwrap_or_else(|_| Name::from_ascii(format!("{DEFAULT_DOMAIN}.")).unwrap_or_default())
            .to_lowercase();
        let mut records: HashMap<Name, Vec<Record>> = HashMap::new();
        for service in &catalogue.services {
            let Ok(name) = Name::from_ascii(format!(
                "{}.{}.svc.{domain}",
                service.name, service.namespace
            )) else {
                continue;
            };
            let name = name.to_lowercase();
            if !service.external_name.is_empty() {
                let target = service.external_name.trim_end_matches('.');
                if let Ok(target) = Name::from_ascii(format!("{target}.")) {
                    let alias = Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target)));
                    records.entry(name).or_default().push(alias);
                }
                continue;
            }
            // A headless Service has a record per ready endpoint, and each
            // endpoint with a hostname its own name under the Service's.
            // Its SRV records name each endpoint (by its own name where it
            // has one) on the ports it serves; a ClusterIP Service's name
            // the Service on its ports.
            let mut own = addresses(&name, &service.cluster_ips);
            if !service.headless {
                srv(&mut records, &name, &service.ports, &name);
            }
            for endpoint in &service.endpoints {
                own.extend(addresses(&name, &endpoint.addresses));
                let ports = if endpoint.ports.is_empty() {
                    &service.ports
                } else {
                    &endpoint.ports
                };
                let host = Name::from_ascii(format!("{}.{name}", endpoint.hostname))
                    .ok()
                    .filter(|_| !endpoint.hostname.is_empty())
                    .map(|h| h.to_lowercase());
                srv(&mut records, &name, ports, host.as_ref().unwrap_or(&name));
                if let Some(host) = host {
                    let found = addresses(&host, &endpoint.addresses);
                    records.entry(host).or_default().extend(found);
                }
            }
            records.entry(name).or_default().extend(own);
        }
        Self { domain, records }
    }

    /// The answer to `query`.
    pub fn answer(&self, query: &Query) -> Answer {
        let name = query.name().to_lowercase();
        if !self.domain.zone_of(&name) {
            return Answer::Forward;
        }
        let Some(records) = self.records.get(&name) else {
            return Answer::NxDomain;
        };
        let asked = query.query_type();
        Answer::Records(
            records
                .iter()
                .filter(|r| {
                    asked == RecordType::ANY
                        || r.record_type() == asked
                        || r.record_type() == RecordType::CNAME
                })
                .cloned()
                .collect(),
        )
    }

    /// The zone's SOA, for negative answers (their caching time).
    pub fn soa(&self) -> Record {
        let ns = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_default();
        let mail = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_default();
        let soa = SOA::new(ns, mail, 1, 7200, 1800, 86400, TTL);
        Record::from_rdata(self.domain.clone(), TTL, RData::SOA(soa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::{ServiceEndpoint, ServiceEntry};

    fn names() -> Names {
        Names::new(&ServiceCatalogue {
            cluster_domain: "cluster.local".into(),
            services: vec![
                ServiceEntry {
                    namespace: "shop".into(),
                    name: "web".into(),
                    cluster_ips: vec!["10.96.0.9".into(), "fd00::9".into()],
                    ports: vec![ServicePort {
                        name: "http".into(),
                        protocol: "TCP".into(),
                        port: 8080,
                    }],
                    ..Default::default()
                },
                ServiceEntry {
                    namespace: "shop".into(),
                    name: "ext".into(),
                    external_name: "example.com".into(),
                    ..Default::default()
                },
                ServiceEntry {
                    namespace: "shop".into(),
                    name: "db".into(),
                    headless: true,
                    endpoints: vec![
                        ServiceEndpoint {
                            addresses: vec!["10.128.9.5".into()],
                            hostname: "db-0".into(),
                            ports: vec![ServicePort {
                                name: "pg".into(),
                                protocol: "TCP".into(),
                                port: 5432,
                            }],
                        },
                        ServiceEndpoint {
                            addresses: vec!["10.128.9.6".into()],
                            hostname: String::new(),
                            ports: vec![ServicePort {
                                name: "pg".into(),
                                protocol: "TCP".into(),
                                port: 6432,
                            }],
                        },
                    ],
                    ..Default::default()
                },
            ],
        })
    }

    fn ask(name: &str, kind: RecordType) -> Answer {
        let name = Name::from_ascii(name).unwrap_or_else(|e| panic!("{e}"));
        names().answer(&Query::query(name, kind))
    }

    fn data(answer: Answer) -> Vec<String> {
        match answer {
            Answer::Records(r) => r.iter().map(|r| r.data.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services_answer_by_type_and_case_does_not_matter() {
        assert_eq!(
            data(ask("web.shop.svc.cluster.local.", RecordType::A)),
            ["10.96.0.9"]
        );
        assert_eq!(
            data(ask("WEB.Shop.svc.cluster.local.", RecordType::AAAA)),
            ["fd00::9"]
        );
        assert!(data(ask("web.shop.svc.cluster.local.", RecordType::MX)).is_empty());
        assert_eq!(
            data(ask(
                "_http._tcp.web.shop.svc.cluster.local.",
                RecordType::SRV
            )),
            ["0 100 8080 web.shop.svc.cluster.local."]
        );
        assert_eq!(
            data(ask("ext.shop.svc.cluster.local.", RecordType::A)),
            ["example.com."]
        );
    }

    #[test]
    fn a_headless_service_names_its_endpoints() {
        assert_eq!(
            data(ask("db.shop.svc.cluster.local.", RecordType::A)),
            ["10.128.9.5", "10.128.9.6"]
        );
        assert_eq!(
            data(ask("db-0.db.shop.svc.cluster.local.", RecordType::A)),
            ["10.128.9.5"]
        );
        // SRV: each endpoint on the port it serves, by its own name where
        // it has one.
        assert_eq!(
            data(ask("_pg._tcp.db.shop.svc.cluster.local.", RecordType::SRV)),
            [
                "0 100 5432 db-0.db.shop.svc.cluster.local.",
                "0 100 6432 db.shop.svc.cluster.local."
            ]
        );
    }

    #[test]
    fn other_cluster_names_do_not_exist_and_the_rest_is_forwarded() {
        assert_eq!(
            ask("orders.shop.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(ask("cluster.local.", RecordType::A), Answer::NxDomain);
        assert_eq!(ask("example.com.", RecordType::A), Answer::Forward);
        assert_eq!(ask("local.", RecordType::A), Answer::Forward);
        assert_eq!(names().soa().record_type(), RecordType::SOA);
    }
}
