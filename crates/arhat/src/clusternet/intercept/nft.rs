//! The table as nftables writes it: a table of arhat's own (family inet)
//! whose chains sit just before the usual destination-NAT priority (-100;
//! nft 1.0 names it `dstnat` only in prerouting), so Docker's and
//! kube-proxy's chains (iptables or nftables) see only what it leaves alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use super::{OWN_MARK, Table};

/// `{ a, b, ... }`, or nothing for no elements (nft refuses an empty list).
fn elements(list: Vec<String>) -> String {
    if list.is_empty() {
        String::new()
    } else {
        format!("\n    elements = {{ {} }}", list.join(", "))
    }
}

/// The whole table, replacing any table of that name.
pub fn script(
    table: &Table,
    tcp: &BTreeSet<SocketAddrV4>,
    udp: &BTreeMap<SocketAddrV4, u16>,
) -> String {
    let Table {
        name,
        address,
        port,
        ..
    } = table;
    let tcp4 = elements(
        tcp.iter()
            .map(|t| format!("{} . {}", t.ip(), t.port()))
            .collect(),
    );
    let udp4 = elements(
        udp.iter()
            .map(|(t, p)| format!("{} . {} : {address} . {p}", t.ip(), t.port()))
            .collect(),
    );
    let ports = elements(udp.values().map(ToString::to_string).collect());
    let redirect = format!(
        "    ip daddr . tcp dport @tcp4 dnat ip to {address}:{port}\n    meta l4proto udp dnat ip to ip daddr . udp dport map @udp4"
    );
    format!(
        "table inet {name}\n\
         delete table inet {name}\n\
         table inet {name} {{\n\
         \x20 set tcp4 {{\n    type ipv4_addr . inet_service{tcp4}\n  }}\n\
         \x20 map udp4 {{\n    type ipv4_addr . inet_service : ipv4_addr . inet_service{udp4}\n  }}\n\
         \x20 set udp_ports {{\n    type inet_service{ports}\n  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat - 5; policy accept;\n{redirect}\n  }}\n\
         \x20 chain output {{\n    type nat hook output priority -105; policy accept;\n    meta mark {OWN_MARK:#x} return\n{redirect}\n  }}\n\
         \x20 chain input {{\n    type filter hook input priority filter - 5; policy accept;\n\
         \x20   ip daddr {address} tcp dport {port} ct status dnat accept\n\
         \x20   ip daddr {address} tcp dport {port} drop\n\
         \x20   ip daddr {address} udp dport @udp_ports ct status dnat accept\n\
         \x20   ip daddr {address} udp dport @udp_ports drop\n  }}\n\
         }}\n"
    )
}

/// Deletes the table if it is there (declaring it first makes the delete
/// succeed either way).
pub fn removal(name: &str) -> String {
    format!("table inet {name}\ndelete table inet {name}\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::clusternet::intercept::Backend;

    #[test]
    fn the_script_replaces_the_whole_table() {
        let table = Table {
            name: "arhat".into(),
            backend: Backend::Nftables,
            address: Ipv4Addr::new(169, 254, 20, 10),
            port: 15001,
        };
        let empty = script(&table, &BTreeSet::new(), &BTreeMap::new());
        assert!(empty.starts_with("table inet arhat\ndelete table inet arhat\n"));
        assert!(!empty.contains("elements"));
        let service = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 9), 80);
        let one = script(&table, &[service].into(), &[(service, 40000)].into());
        assert!(one.contains("elements = { 10.96.0.9 . 80 }"));
        assert!(one.contains("elements = { 10.96.0.9 . 80 : 169.254.20.10 . 40000 }"));
        assert!(one.contains("dnat ip to 169.254.20.10:15001"));
    }
}
