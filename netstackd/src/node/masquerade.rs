//! Egress masquerade: pod traffic to anywhere outside the cluster's pod and service CIDRs is
//! SNATed to the node's address on its way out, so pods reach upstream DNS and the outside
//! world; pod-to-pod and pod-to-service traffic keeps its source address.
//!
//! The rules live in netstack's own nftables table `netstack`, one per address family (`ip`,
//! and `ip6` on a dual-stack node), each written whole through the `nft` binary in one
//! transaction (create, delete, define: atomic, and idempotent):
//!
//! ```text
//! table ip netstack {
//!     set no_masquerade { type ipv4_addr; flags interval; elements = { 10.244.0.0/16, ... } }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.244.1.0/24 ip daddr != @no_masquerade masquerade fully-random
//!     }
//! }
//! ```
//!
//! (`table ip6 netstack` likewise, with `ipv6_addr` and `ip6 saddr`/`ip6 daddr`.)
//!
//! `fully-random` (as kube-proxy and flannel ask for) picks each flow's source port at random
//! across the whole range, so two pods' flows to the same destination never race for the
//! same port in conntrack's port allocation (the lost race drops a SYN or a DNS query).

use ipnet::IpNet;

/// The nftables table netstack owns (in family `ip`, and `ip6` when dual-stack).
pub const TABLE: &str = "netstack";

/// An address family of netstack's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `table ip netstack`.
    V4,
    /// `table ip6 netstack`.
    V6,
}

impl Family {
    /// Both families, in the order tables are removed.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of a network.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The nftables table family (`ip`, `ip6`), also the payload keyword of its rules.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// The `nft` binary (`NETSTACK_NFT` overrides it, for tests).
pub(super) fn nft_binary() -> String {
    std::env::var("NETSTACK_NFT").unwrap_or_else(|_| "nft".to_owned())
}

/// Errors of running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The binary could not be run.
    #[error("running {binary}: {source} (is the nftables package installed?)")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// nft refused the rules.
    #[error("nft {what}: {stderr}")]
    Refused {
        /// What was asked (`applying table ip netstack`, ...).
        what: String,
        /// nft's complaint.
        stderr: String,
    },
}

/// The addresses never masqueraded, of `pod_cidr`'s family only, overlaps merged: the node's
/// own pod CIDR, `fixed` (the cluster and service CIDRs from the command line) and every
/// node's pod CIDR.
pub fn no_masquerade_set(
    pod_cidr: IpNet,
    fixed: &[IpNet],
    node_cidrs: impl IntoIterator<Item = IpNet>,
) -> Vec<IpNet> {
    let family = Family::of(&pod_cidr);
    let all: Vec<IpNet> = std::iter::once(pod_cidr)
        .chain(fixed.iter().copied())
        .chain(node_cidrs)
        .map(|n| n.trunc())
        .filter(|n| Family::of(n) == family)
        .collect();
    IpNet::aggregate(&all)
}

/// The nft script that (re)defines netstack's table of `pod_cidr`'s family atomically: pod
/// traffic from `pod_cidr` to anything outside `no_masquerade` is masqueraded.
pub fn ruleset(pod_cidr: IpNet, no_masquerade: &[IpNet]) -> String {
    let family = Family::of(&pod_cidr);
    let (fam, addr_type) = (family.nft(), family.addr_type());
    let elements = no_masquerade
        .iter()
        .filter(|n| Family::of(n) == family)
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let pod_cidr = pod_cidr.trunc();
    // An empty set literal is a syntax error; the pod CIDR is always in the set anyway.
    let elements_line = if elements.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {elements} }}\n")
    };
    format!(
        "table {fam} {TABLE} {{}}\n\
         delete table {fam} {TABLE}\n\
         table {fam} {TABLE} {{\n\
         \tset no_masquerade {{\n\
         \t\ttype {addr_type}\n\
         \t\tflags interval\n\
         {elements_line}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\t{fam} saddr {pod_cidr} {fam} daddr != @no_masquerade masquerade fully-random\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft` with `args` (and `stdin`): its stdout, or why not; killed if it does not answer
/// within [`firewall::NFT_WAIT`](super::firewall::NFT_WAIT).
pub(super) fn nft(args: &[&str], stdin: Option<&str>, what: &str) -> Result<String, NftError> {
    super::firewall::run_bounded(&nft_binary(), args, stdin, what, super::firewall::NFT_WAIT)
}

/// Writes the table of `pod_cidr`'s family (see [`ruleset`]) in the calling thread's network
/// namespace.
pub fn apply(pod_cidr: IpNet, no_masquerade: &[IpNet]) -> Result<(), NftError> {
    nft(
        &["-f", "-"],
        Some(&ruleset(pod_cidr, no_masquerade)),
        &format!("applying table {} {TABLE}", Family::of(&pod_cidr).nft()),
    )
    .map(drop)
}

/// Whether netstack's table of this family exists.
pub fn present(family: Family) -> Result<bool, NftError> {
    match nft(&["list", "table", family.nft(), TABLE], None, "listing") {
        Ok(_) => Ok(true),
        Err(NftError::Refused { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes netstack's table of this family; `Ok(false)` when there was none.
pub fn remove(family: Family) -> Result<bool, NftError> {
    if !present(family)? {
        return Ok(false);
    }
    nft(
        &["delete", "table", family.nft(), TABLE],
        None,
        &format!("deleting table {} {TABLE}", family.nft()),
    )
    .map(|_| true)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::netns::run_in_netns;
    use crate::netns::testing::NamedNetns;

    /// Whether an address is in one of the networks.
    fn covered(set: &[IpNet], addr: &str) -> bool {
        let addr: IpAddr = addr.parse().unwrap();
        set.iter().any(|n| n.contains(&addr))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn set_merges_overlaps_and_keeps_the_pod_cidrs_family() {
        let fixed = nets(&["10.244.0.0/16", "10.96.0.0/12", "fd00:10:244::/56"]);
        let nodes = nets(&["10.244.2.0/24", "10.250.0.0/24", "fd00:2::/64"]);
        let set = no_masquerade_set(net("10.244.1.0/24"), &fixed, nodes.clone());
        assert_eq!(
            set,
            nets(&["10.96.0.0/12", "10.244.0.0/16", "10.250.0.0/24"])
        );
        assert!(covered(&set, "10.244.9.9"));
        assert!(!covered(&set, "8.8.8.8"));
        let set6 = no_masquerade_set(net("fd00:10:244:1::/64"), &fixed, nodes);
        assert_eq!(set6, nets(&["fd00:2::/64", "fd00:10:244::/56"]));
        assert!(!covered(&set6, "2001:db8::1"));
    }

    #[test]
    fn ruleset_replaces_the_table_in_one_go() {
        // (pod CIDR, set, expected lines: table, set type, elements, rule)
        let cases = [
            (
                "10.244.1.7/24",
                nets(&["10.244.0.0/16", "10.96.0.0/12"]),
                [
                    "table ip netstack {",
                    "type ipv4_addr",
                    "elements = { 10.244.0.0/16, 10.96.0.0/12 }",
                    "ip saddr 10.244.1.0/24 ip daddr != @no_masquerade masquerade fully-random",
                ],
            ),
            (
                "fd00:10:244:1::7/64",
                nets(&["fd00:10:244::/56", "10.96.0.0/12"]),
                [
                    "table ip6 netstack {",
                    "type ipv6_addr",
                    "elements = { fd00:10:244::/56 }",
                    "ip6 saddr fd00:10:244:1::/64 ip6 daddr != @no_masquerade masquerade fully-random",
                ],
            ),
        ];
        for (pod_cidr, set, want) in cases {
            let text = ruleset(net(pod_cidr), &set);
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            let fam = if want[0].contains("ip6") { "ip6" } else { "ip" };
            assert_eq!(
                &lines[..2],
                [
                    format!("table {fam} netstack {{}}"),
                    format!("delete table {fam} netstack")
                ],
                "{text}"
            );
            for line in want {
                assert!(lines.contains(&line), "{line:?} in {text}");
            }
            assert!(lines.contains(&"type nat hook postrouting priority srcnat; policy accept;"));
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn tables_are_applied_rewritten_and_removed_per_family() {
        let ns = NamedNetns::new();
        let listing = |f: Family| nft(&["list", "table", f.nft(), TABLE], None, "list").unwrap();
        run_in_netns(&ns.path, || {
            assert!(!present(Family::V4).unwrap());
            assert!(
                !remove(Family::V4).unwrap(),
                "removing what is absent is fine"
            );
            apply(net("10.244.1.0/24"), &nets(&["10.244.0.0/16"])).unwrap();
            let first = listing(Family::V4);
            assert!(first.contains("10.244.0.0/16"), "{first}");
            assert!(
                first.contains(
                    "ip saddr 10.244.1.0/24 ip daddr != @no_masquerade masquerade fully-random"
                ),
                "{first}"
            );
            // Applying again replaces, never duplicates.
            apply(
                net("10.244.1.0/24"),
                &nets(&["10.244.0.0/16", "10.96.0.0/12"]),
            )
            .unwrap();
            let second = listing(Family::V4);
            assert!(second.contains("10.96.0.0/12"), "{second}");
            assert_eq!(
                second.matches("masquerade").count() - second.matches("no_masquerade").count(),
                1,
                "{second}"
            );
            // The IPv6 table is its own, beside the IPv4 one.
            assert!(!present(Family::V6).unwrap());
            apply(net("fd00:10:244:1::/64"), &nets(&["fd00:10:244::/56"])).unwrap();
            let six = listing(Family::V6);
            assert!(
                six.contains(
                    "ip6 saddr fd00:10:244:1::/64 ip6 daddr != @no_masquerade masquerade fully-random"
                ),
                "{six}"
            );
            assert!(present(Family::V4).unwrap());
            assert!(remove(Family::V4).unwrap());
            assert!(!present(Family::V4).unwrap());
            assert!(
                present(Family::V6).unwrap(),
                "removing one family keeps the other"
            );
            assert!(remove(Family::V6).unwrap());
            assert!(!present(Family::V6).unwrap());
        })
        .unwrap();
    }
}
