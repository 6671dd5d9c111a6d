//! The address pool of each virtual node's pods: the Node's `spec.podCIDRs`.
//!
//! It comes from the EdgeDevice (`spec.pod.ipv4CIDR` / `ipv6CIDR`) or, when
//! that is empty, from the cluster's node IPAM (kube-controller-manager
//! `--allocate-node-cidrs`), which fills in any Node created without one. A
//! CIDR from the EdgeDevice must lie inside the cluster CIDR aranya was told
//! (the controller-manager's range allocator fails at start on a Node whose
//! CIDR is outside it) and overlap no other device's (the allocator never
//! notices two Nodes sharing one). Once a Node has its CIDRs they are kept in
//! the EdgeDevice's status and never change: a Node deleted by hand comes back
//! with the same ones, and the device's pods keep their addresses.

use std::{fmt, net::IpAddr, str::FromStr};

/// A CIDR block, IPv4 or IPv6, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a CIDR such as 10.244.0.0/16 (address/prefix, no host bits set)")]
pub struct BadCidr(pub String);

impl Cidr {
    /// The address as 128 bits (IPv4 in the low 32) and the family's width.
    fn bits(&self) -> (u128, u8) {
        match self.network {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// The network part's bits of a `width`-bit address.
    fn mask(width: u8, prefix: u8) -> u128 {
        if prefix == 0 {
            return 0;
        }
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        let host = u32::from(width - prefix);
        (all >> host) << host
    }

    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    /// Whether `other` lies wholly inside this block.
    pub fn contains(&self, other: &Cidr) -> bool {
        let ((a, width), (b, other_width)) = (self.bits(), other.bits());
        width == other_width
            && other.prefix >= self.prefix
            && a & Self::mask(width, self.prefix) == b & Self::mask(width, self.prefix)
    }

    /// Whether the two blocks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.to_string());
        let (address, prefix) = s.split_once('/').ok_or_else(bad)?;
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let cidr = Cidr { network, prefix };
        let (bits, width) = cidr.bits();
        if prefix > width || bits & !Self::mask(width, prefix) != 0 {
            return Err(bad());
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parses `--cluster-cidr`: one CIDR per family, comma-separated.
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, BadCidr> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::parse)
        .collect()
}

/// Why the pod CIDR an EdgeDevice asks for is not used; each names the field.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("spec.pod.{field}: {source}")]
    Malformed {
        field: &'static str,
        #[source]
        source: BadCidr,
    },
    #[error(
        "spec.pod.{field}: {cidr} is outside the cluster CIDR ({cluster}); the controller-manager's node IPAM refuses such a Node"
    )]
    Outside {
        field: &'static str,
        cidr: String,
        cluster: String,
    },
    #[error("spec.pod.{field}: {cidr} overlaps {other}, the pod CIDR of {owner}")]
    Taken {
        field: &'static str,
        cidr: String,
        other: String,
        owner: String,
    },
    #[error(
        "spec.pod.{field}: {cidr} differs from the device's assigned pod CIDRs ({assigned}), which never change; delete and recreate the EdgeDevice to move it"
    )]
    Changed {
        field: &'static str,
        cidr: String,
        assigned: String,
    },
}

/// What a device's Node carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The Node's pod CIDRs; empty: the node IPAM assigns them.
    pub cidrs: Vec<String>,
    /// Why the spec's CIDRs are not used. With no `cidrs` the Node is not
    /// applied at all, so the node IPAM cannot give it others meanwhile.
    pub refused: Option<Refusal>,
}

/// The pod CIDRs a device's Node carries. `requested` is the spec's
/// (field, value) pairs; `assigned` what the device already has (its status,
/// or its Node's); `cluster` the cluster CIDRs (empty: not checked);
/// `others` each other device's name and CIDRs.
pub fn decide(
    requested: &[(&'static str, String)],
    assigned: &[String],
    cluster: &[Cidr],
    others: &[(String, Vec<String>)],
) -> Decision {
    if !assigned.is_empty() {
        let refused = requested
            .iter()
            .find(|(_, cidr)| !assigned.contains(cidr))
            .map(|(field, cidr)| Refusal::Changed {
                field,
                cidr: cidr.clone(),
                assigned: assigned.join(","),
            });
        return Decision {
            cidrs: assigned.to_vec(),
            refused,
        };
    }
    match check(requested, cluster, others) {
        Ok(()) => Decision {
            cidrs: requested.iter().map(|(_, c)| c.clone()).collect(),
            refused: None,
        },
        Err(refusal) => Decision {
            cidrs: Vec::new(),
            refused: Some(refusal),
        },
    }
}

fn check(
    requested: &[(&'static str, String)],
    cluster: &[Cidr],
    others: &[(String, Vec<String>)],
) -> Result<(), Refusal> {
    for (field, value) in requested {
        let cidr: Cidr = value
            .parse()
            .map_err(|source| Refusal::Malformed { field, source })?;
        if !cluster.is_empty() && !cluster.iter().any(|c| c.contains(&cidr)) {
            return Err(Refusal::Outside {
                field,
                cidr: value.clone(),
                cluster: cluster
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        for (owner, theirs) in others {
            let taken = theirs
                .iter()
                .find(|t| t.parse::<Cidr>().is_ok_and(|t| t.overlaps(&cidr)));
            if let Some(other) = taken {
                return Err(Refusal::Taken {
                    field,
                    cidr: value.clone(),
                    other: other.clone(),
                    owner: owner.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn cidrs_parse_contain_and_overlap() {
        assert_eq!(cidr("10.244.3.0/24").to_string(), "10.244.3.0/24");
        assert_eq!(cidr("fd00:1::/64").to_string(), "fd00:1::/64");
        for bad in [
            "10.244.3.1/24",
            "10.244.3.0",
            "10.244.3.0/33",
            "nowhere/8",
            "fd00::1/64",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let cluster = cidr("10.128.0.0/10");
        assert!(cluster.contains(&cidr("10.130.7.0/24")));
        assert!(!cluster.contains(&cidr("10.200.1.0/24")));
        assert!(!cluster.contains(&cidr("10.0.0.0/8")));
        assert!(cidr("10.0.0.0/8").overlaps(&cluster));
        assert!(!cidr("10.130.7.0/24").overlaps(&cidr("10.130.8.0/24")));
        assert!(!cidr("fd00::/8").contains(&cidr("10.0.0.0/24")));
        assert!(cidr("0.0.0.0/0").contains(&cidr("192.0.2.0/24")));
        assert!(cidr("::/0").contains(&cidr("fd00::/64")));
        assert_eq!(
            parse_list("10.128.0.0/10, fd00::/48").map(|l| l.len()),
            Ok(2)
        );
    }

    #[test]
    fn the_spec_is_checked_until_assigned_and_then_never_changes() {
        let cluster = [cidr("10.128.0.0/10")];
        let others = vec![(
            "EdgeDevice other".to_string(),
            vec!["10.128.5.0/24".to_string()],
        )];
        let ask = |c: &str| vec![("ipv4CIDR", c.to_string())];

        let ok = decide(&ask("10.128.6.0/24"), &[], &cluster, &others);
        assert_eq!(ok.cidrs, vec!["10.128.6.0/24"]);
        assert_eq!(ok.refused, None);

        let ipam = decide(&[], &[], &cluster, &others);
        assert!(ipam.cidrs.is_empty() && ipam.refused.is_none());

        for (asked, why) in [
            ("10.200.1.0/24", "outside the cluster CIDR (10.128.0.0/10)"),
            (
                "10.128.5.0/25",
                "overlaps 10.128.5.0/24, the pod CIDR of EdgeDevice other",
            ),
            ("10.128.5.1/24", "is not a CIDR"),
        ] {
            let d = decide(&ask(asked), &[], &cluster, &others);
            assert!(d.cidrs.is_empty(), "{asked}");
            let message = d.refused.map(|r| r.to_string()).unwrap_or_default();
            assert!(message.starts_with("spec.pod.ipv4CIDR: "), "{message}");
            assert!(message.contains(why), "{message}");
        }

        let assigned = vec!["10.128.9.0/24".to_string()];
        let kept = decide(&ask("10.128.6.0/24"), &assigned, &cluster, &others);
        assert_eq!(kept.cidrs, assigned);
        assert!(matches!(kept.refused, Some(Refusal::Changed { .. })));
        let same = decide(&ask("10.128.9.0/24"), &assigned, &cluster, &others);
        assert_eq!(same.refused, None);
    }
}
