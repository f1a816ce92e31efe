//! Host-gw routing, decided without touching the kernel: which route each other node's pod
//! CIDR needs ([`desired_routes`]) and the changes that take the kernel's netstack routes
//! there ([`plan`]). Applying them is `kernel.rs`'s job.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::NodeInfo;

/// Routes by destination: pod CIDR → next hop (the owning node's internal address).
pub type RouteMap = BTreeMap<IpNet, IpAddr>;

/// What the node list asks for: the routes, and why some nodes or CIDRs got none.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// One route per other node's pod CIDR.
    pub routes: RouteMap,
    /// One entry per pod CIDR refused, naming the node and the reason.
    pub skipped: Vec<Refusal>,
}

/// Why a node's pod CIDR gets no route. [`RefusalReason::label`] is the `reason` label of
/// `netstack_node_routes_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// The prefix is shorter than the configured minimum of its family.
    PrefixTooShort,
    /// It overlaps a `--service-cidr`.
    OverlapsServiceCidr,
    /// It lies outside every `--cluster-cidr` (checked when any is given).
    OutsideClusterCidr,
    /// It overlaps this node's own pod CIDR.
    OverlapsNodeCidr,
    /// It overlaps a pod CIDR an earlier node (by name) already has.
    OverlapsOtherNode,
    /// The node has no internal address of the CIDR's family.
    NoNextHop,
    /// None of the node's internal addresses of that family is on a network this node is
    /// directly connected to (or the address is this node's own, or one of its pods').
    NextHopNotConnected,
}

impl RefusalReason {
    /// Every reason, in label order of the metric.
    pub const ALL: [RefusalReason; 7] = [
        RefusalReason::PrefixTooShort,
        RefusalReason::OverlapsServiceCidr,
        RefusalReason::OutsideClusterCidr,
        RefusalReason::OverlapsNodeCidr,
        RefusalReason::OverlapsOtherNode,
        RefusalReason::NoNextHop,
        RefusalReason::NextHopNotConnected,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::PrefixTooShort => "prefix_too_short",
            RefusalReason::OverlapsServiceCidr => "overlaps_service_cidr",
            RefusalReason::OutsideClusterCidr => "outside_cluster_cidr",
            RefusalReason::OverlapsNodeCidr => "overlaps_node_cidr",
            RefusalReason::OverlapsOtherNode => "overlaps_other_node",
            RefusalReason::NoNextHop => "no_next_hop",
            RefusalReason::NextHopNotConnected => "next_hop_not_connected",
        }
    }
}

/// One pod CIDR refused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Refusal {
    /// The node that claims it.
    pub node: String,
    /// The pod CIDR.
    pub cidr: IpNet,
    /// Why it gets no route.
    pub reason: RefusalReason,
    /// The particulars, for the log line.
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {}: pod CIDR {} refused ({}): {}",
            self.node,
            self.cidr,
            self.reason.label(),
            self.detail
        )
    }
}

/// What a node's pod CIDR must satisfy to be routed, from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteGuard {
    /// The cluster's pod CIDRs: when any is given, every routed pod CIDR lies inside one.
    pub cluster: Vec<IpNet>,
    /// The service CIDRs: no routed pod CIDR overlaps one.
    pub service: Vec<IpNet>,
    /// The shortest IPv4 pod CIDR prefix routed.
    pub min_prefix_v4: u8,
    /// The shortest IPv6 pod CIDR prefix routed.
    pub min_prefix_v6: u8,
}

/// What this node is directly connected to, read from the kernel: next hops must be on one
/// of `networks` and must not be one of `local`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connected {
    /// Directly connected networks (routes without a gateway in the main table).
    pub networks: Vec<IpNet>,
    /// This node's own addresses.
    pub local: Vec<IpAddr>,
}

impl Connected {
    /// Why `via` cannot be a next hop from this node (whose pods use `own_cidrs`), if it
    /// cannot.
    fn refuse(&self, via: IpAddr, own_cidrs: &[IpNet]) -> Option<String> {
        if self.local.contains(&via) {
            return Some(format!("next hop {via} is this node's own address"));
        }
        if let Some(own) = own_cidrs.iter().find(|o| o.contains(&via)) {
            return Some(format!("next hop {via} is in this node's pod CIDR {own}"));
        }
        if !self.networks.iter().any(|n| n.contains(&via)) {
            return Some(format!(
                "next hop {via} is not on a directly connected network"
            ));
        }
        None
    }
}

/// One change to the kernel's netstack routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// A route that is no longer wanted (its node left, or its CIDR changed).
    Delete {
        /// The pod CIDR.
        dst: IpNet,
        /// The next hop it had.
        via: IpAddr,
    },
    /// Our route to `dst` moves to another next hop, in place (no gap).
    Replace {
        /// The pod CIDR.
        dst: IpNet,
        /// The new next hop.
        via: IpAddr,
    },
    /// A new route; one that another owner already has is left alone.
    Add {
        /// The pod CIDR.
        dst: IpNet,
        /// The next hop.
        via: IpAddr,
    },
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The routes node `own_name` (whose pods use `own_cidrs`) needs: for every other node, one
/// route per pod CIDR via that node's first internal address of the same family that is on a
/// network `connected` lists.
///
/// Refused, each with an entry in [`RoutePlan::skipped`] (see [`RefusalReason`]): CIDRs
/// that `guard` rules out (too short a prefix, overlapping a service CIDR, outside the cluster
/// CIDRs), CIDRs overlapping ours, CIDRs overlapping one an earlier node (by name) already
/// claimed, so the outcome never depends on the order nodes arrive in, and CIDRs of a node
/// with no usable next hop of that family.
pub fn desired_routes(
    own_name: &str,
    own_cidrs: &[IpNet],
    nodes: &[NodeInfo],
    guard: &RouteGuard,
    connected: &Connected,
) -> RoutePlan {
    let mut sorted: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != own_name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = RoutePlan::default();
    let mut owner: BTreeMap<IpNet, &str> = BTreeMap::new();
    for node in sorted {
        for cidr in &node.pod_cidrs {
            let cidr = cidr.trunc();
            let refuse = |reason, detail: String| Refusal {
                node: node.name.clone(),
                cidr,
                reason,
                detail,
            };
            if let Some((reason, detail)) = guard_refusal(guard, &cidr) {
                plan.skipped.push(refuse(reason, detail));
                continue;
            }
            if let Some(own) = own_cidrs.iter().find(|o| overlaps(o, &cidr)) {
                plan.skipped.push(refuse(
                    RefusalReason::OverlapsNodeCidr,
                    format!("overlaps this node's {own}"),
                ));
                continue;
            }
            if let Some((other, name)) = owner.iter().find(|(o, _)| overlaps(o, &cidr)) {
                plan.skipped.push(refuse(
                    RefusalReason::OverlapsOtherNode,
                    format!("overlaps {other} of node {name}"),
                ));
                continue;
            }
            let candidates: Vec<IpAddr> = node
                .internal_ips
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv4() == cidr.addr().is_ipv4())
                .collect();
            let Some(first) = candidates.first() else {
                plan.skipped.push(refuse(
                    RefusalReason::NoNextHop,
                    format!(
                        "no internal {} address to reach it through",
                        if cidr.addr().is_ipv4() {
                            "IPv4"
                        } else {
                            "IPv6"
                        }
                    ),
                ));
                continue;
            };
            let Some(via) = candidates
                .iter()
                .find(|ip| connected.refuse(**ip, own_cidrs).is_none())
            else {
                let why = connected.refuse(*first, own_cidrs).unwrap_or_default();
                plan.skipped
                    .push(refuse(RefusalReason::NextHopNotConnected, why));
                continue;
            };
            owner.insert(cidr, &node.name);
            plan.routes.insert(cidr, *via);
        }
    }
    plan
}

/// The first of `guard`'s rules `cidr` breaks, with the particulars.
fn guard_refusal(guard: &RouteGuard, cidr: &IpNet) -> Option<(RefusalReason, String)> {
    let min = match cidr {
        IpNet::V4(_) => guard.min_prefix_v4,
        IpNet::V6(_) => guard.min_prefix_v6,
    };
    if cidr.prefix_len() < min {
        return Some((
            RefusalReason::PrefixTooShort,
            format!(
                "prefix /{} is shorter than the minimum /{min}",
                cidr.prefix_len()
            ),
        ));
    }
    if let Some(service) = guard.service.iter().find(|s| overlaps(s, cidr)) {
        return Some((
            RefusalReason::OverlapsServiceCidr,
            format!("overlaps the service CIDR {service}"),
        ));
    }
    if !guard.cluster.is_empty() && !guard.cluster.iter().any(|c| c.contains(cidr)) {
        let listed: Vec<String> = guard.cluster.iter().map(|c| c.to_string()).collect();
        return Some((
            RefusalReason::OutsideClusterCidr,
            format!("outside the cluster CIDRs [{}]", listed.join(", ")),
        ));
    }
    None
}

/// The changes that turn `current` (the kernel's netstack routes, possibly with duplicates)
/// into `desired`: deletions first, then in-place replacements, then additions. Routes that
/// are already right are not touched, so a resync with nothing new changes nothing.
pub fn plan(current: &[(IpNet, IpAddr)], desired: &RouteMap) -> Vec<RouteChange> {
    let mut deletes = Vec::new();
    let mut replaces = Vec::new();
    let mut kept: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
    let mut present: BTreeMap<IpNet, usize> = BTreeMap::new();
    for &(dst, via) in current {
        *present.entry(dst).or_default() += 1;
        if desired.get(&dst) == Some(&via) && !kept.contains_key(&dst) {
            kept.insert(dst, via);
        } else {
            deletes.push((dst, via));
        }
    }
    // A wrong next hop on a destination we route anyway is replaced in place rather than
    // deleted and added, so traffic to that CIDR never finds no route.
    let mut adds = Vec::new();
    for (&dst, &via) in desired {
        if kept.contains_key(&dst) {
            continue;
        }
        if let Some(i) = deletes.iter().position(|&(d, _)| d == dst) {
            if present[&dst] == 1 {
                deletes.remove(i);
                replaces.push(RouteChange::Replace { dst, via });
                continue;
            }
        }
        adds.push(RouteChange::Add { dst, via });
    }
    deletes
        .into_iter()
        .map(|(dst, via)| RouteChange::Delete { dst, via })
        .chain(replaces)
        .chain(adds)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
            internal_ips: ips.iter().map(|a| ip(a)).collect(),
        }
    }
    fn routes(pairs: &[(&str, &str)]) -> RouteMap {
        pairs.iter().map(|(d, v)| (net(d), ip(v))).collect()
    }
    /// The nodes' link: 192.168.0.0/24 and fd00::/64; this node is 192.168.0.254.
    fn lan() -> Connected {
        Connected {
            networks: vec![net("192.168.0.0/24"), net("fd00::/64")],
            local: vec![ip("192.168.0.254"), ip("fd00::fe")],
        }
    }
    fn open() -> RouteGuard {
        RouteGuard::default()
    }

    #[test]
    fn one_route_per_other_node_cidr_by_family() {
        let nodes = [
            node("a", &["10.244.1.0/24"], &["192.168.0.1"]),
            node(
                "b",
                &["10.244.2.0/24", "fd00:2::/64"],
                &["fd00::2", "192.168.0.2"],
            ),
            node("c", &["10.244.3.0/24"], &["192.168.0.3"]),
        ];
        let plan = desired_routes("a", &[net("10.244.1.0/24")], &nodes, &open(), &lan());
        assert_eq!(
            plan.routes,
            routes(&[
                ("10.244.2.0/24", "192.168.0.2"),
                ("fd00:2::/64", "fd00::2"),
                ("10.244.3.0/24", "192.168.0.3"),
            ])
        );
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
    }

    #[test]
    fn refused_cidrs_get_no_route_and_one_reason_each() {
        use RefusalReason::*;
        let guard = RouteGuard {
            cluster: vec![net("10.244.0.0/16"), net("fd00:10:244::/48")],
            service: vec![net("10.244.240.0/20"), net("fd00:10:96::/112")],
            min_prefix_v4: 20,
            min_prefix_v6: 56,
        };
        // (what is wrong, nodes, expected routes, expected reason, expected text of the
        // one refusal)
        type Case = (
            &'static str,
            Vec<NodeInfo>,
            RouteMap,
            RefusalReason,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "outside the cluster CIDR",
                vec![node("o", &["10.55.0.0/24"], &["192.168.0.9"])],
                routes(&[]),
                OutsideClusterCidr,
                "node o: pod CIDR 10.55.0.0/24 refused (outside_cluster_cidr): outside the cluster CIDRs [10.244.0.0/16, fd00:10:244::/48]",
            ),
            (
                "IPv6 outside the cluster CIDR",
                vec![node("o6", &["fd00:99::/64"], &["fd00::9"])],
                routes(&[]),
                OutsideClusterCidr,
                "outside the cluster CIDRs",
            ),
            (
                "a default route in disguise",
                vec![node("d", &["0.0.0.0/0"], &["192.168.0.9"])],
                routes(&[]),
                PrefixTooShort,
                "prefix /0 is shorter than the minimum /20",
            ),
            (
                "too short a prefix inside the cluster CIDR",
                vec![node("s", &["10.244.0.0/19"], &["192.168.0.9"])],
                routes(&[]),
                PrefixTooShort,
                "prefix /19 is shorter than the minimum /20",
            ),
            (
                "too short an IPv6 prefix",
                vec![node("s6", &["fd00:10:244::/52"], &["fd00::9"])],
                routes(&[]),
                PrefixTooShort,
                "prefix /52 is shorter than the minimum /56",
            ),
            (
                "overlaps the service CIDR",
                vec![node("v", &["10.244.241.0/24"], &["192.168.0.9"])],
                routes(&[]),
                OverlapsServiceCidr,
                "overlaps the service CIDR 10.244.240.0/20",
            ),
            (
                "a node claims our CIDR",
                vec![node("x", &["10.244.1.0/25"], &["192.168.0.9"])],
                routes(&[]),
                OverlapsNodeCidr,
                "node x: pod CIDR 10.244.1.0/25 refused (overlaps_node_cidr): overlaps this node's 10.244.1.0/24",
            ),
            (
                "no address of the CIDR's family",
                vec![node("y", &["10.244.5.0/24"], &["fd00::5"])],
                routes(&[]),
                NoNextHop,
                "node y: pod CIDR 10.244.5.0/24 refused (no_next_hop): no internal IPv4 address",
            ),
            (
                "two nodes claim one CIDR: the first by name keeps it, whatever the order",
                vec![
                    node("n2", &["10.244.7.0/24"], &["192.168.0.22"]),
                    node("n1", &["10.244.7.0/24"], &["192.168.0.21"]),
                ],
                routes(&[("10.244.7.0/24", "192.168.0.21")]),
                OverlapsOtherNode,
                "node n2: pod CIDR 10.244.7.0/24 refused (overlaps_other_node): overlaps 10.244.7.0/24 of node n1",
            ),
            (
                "a next hop off the link",
                vec![node("f", &["10.244.8.0/24"], &["172.31.0.9"])],
                routes(&[]),
                NextHopNotConnected,
                "next hop 172.31.0.9 is not on a directly connected network",
            ),
            (
                "an IPv6 next hop off the link",
                vec![node("f6", &["fd00:10:244:8::/64"], &["fd00:77::9"])],
                routes(&[]),
                NextHopNotConnected,
                "next hop fd00:77::9 is not on a directly connected network",
            ),
            (
                "this node's own address as next hop",
                vec![node("l", &["10.244.9.0/24"], &["192.168.0.254"])],
                routes(&[]),
                NextHopNotConnected,
                "next hop 192.168.0.254 is this node's own address",
            ),
            (
                "one of our pods as next hop",
                vec![node("p", &["10.244.10.0/24"], &["10.244.1.7"])],
                routes(&[]),
                NextHopNotConnected,
                "next hop 10.244.1.7 is in this node's pod CIDR 10.244.1.0/24",
            ),
        ];
        for (what, nodes, want, reason, text) in cases {
            let plan = desired_routes("self", &[net("10.244.1.0/24")], &nodes, &guard, &lan());
            assert_eq!(plan.routes, want, "{what}");
            assert_eq!(plan.skipped.len(), 1, "{what}: {:?}", plan.skipped);
            assert_eq!(plan.skipped[0].reason, reason, "{what}");
            let line = plan.skipped[0].to_string();
            assert!(line.contains(text), "{what}: {line}");
        }
    }

    #[test]
    fn good_cidrs_beside_refused_ones_are_routed() {
        let guard = RouteGuard {
            cluster: vec![net("10.244.0.0/16")],
            service: vec![net("10.96.0.0/12")],
            min_prefix_v4: 16,
            min_prefix_v6: 48,
        };
        let nodes = [
            node("b", &["10.244.2.0/24"], &["192.168.0.2"]),
            node("bad", &["10.96.0.0/24", "10.244.9.0/24"], &["192.168.0.9"]),
            // The first address is off the link, the second is on it: the second is used.
            node("c", &["10.244.3.0/24"], &["172.31.0.3", "192.168.0.3"]),
            node("d", &["10.244.4.0/24"], &["172.31.0.4"]),
        ];
        let plan = desired_routes("a", &[net("10.244.1.0/24")], &nodes, &guard, &lan());
        assert_eq!(
            plan.routes,
            routes(&[
                ("10.244.2.0/24", "192.168.0.2"),
                ("10.244.9.0/24", "192.168.0.9"),
                ("10.244.3.0/24", "192.168.0.3"),
            ])
        );
        let reasons: Vec<_> = plan
            .skipped
            .iter()
            .map(|r| (r.node.as_str(), r.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("bad", RefusalReason::OverlapsServiceCidr),
                ("d", RefusalReason::NextHopNotConnected)
            ]
        );
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: std::collections::BTreeSet<_> =
            RefusalReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
    }

    #[test]
    fn plan_changes_only_what_differs() {
        let d = |a: &str, v: &str| RouteChange::Delete {
            dst: net(a),
            via: ip(v),
        };
        let r = |a: &str, v: &str| RouteChange::Replace {
            dst: net(a),
            via: ip(v),
        };
        let add = |a: &str, v: &str| RouteChange::Add {
            dst: net(a),
            via: ip(v),
        };
        // (what, current kernel routes, desired, expected changes)
        type Case = (
            &'static str,
            Vec<(IpNet, IpAddr)>,
            RouteMap,
            Vec<RouteChange>,
        );
        let cases: Vec<Case> = vec![
            (
                "resync with nothing new: no change at all",
                vec![(net("10.2.0.0/24"), ip("192.168.0.2"))],
                routes(&[("10.2.0.0/24", "192.168.0.2")]),
                vec![],
            ),
            ("empty both ways", vec![], routes(&[]), vec![]),
            (
                "a node joins",
                vec![(net("10.2.0.0/24"), ip("192.168.0.2"))],
                routes(&[
                    ("10.2.0.0/24", "192.168.0.2"),
                    ("10.3.0.0/24", "192.168.0.3"),
                ]),
                vec![add("10.3.0.0/24", "192.168.0.3")],
            ),
            (
                "a node leaves",
                vec![
                    (net("10.2.0.0/24"), ip("192.168.0.2")),
                    (net("10.3.0.0/24"), ip("192.168.0.3")),
                ],
                routes(&[("10.2.0.0/24", "192.168.0.2")]),
                vec![d("10.3.0.0/24", "192.168.0.3")],
            ),
            (
                "a node's address changes: replaced in place",
                vec![(net("10.2.0.0/24"), ip("192.168.0.2"))],
                routes(&[("10.2.0.0/24", "192.168.0.20")]),
                vec![r("10.2.0.0/24", "192.168.0.20")],
            ),
            (
                "a duplicate of a right route is deleted, the right one kept",
                vec![
                    (net("10.2.0.0/24"), ip("192.168.0.9")),
                    (net("10.2.0.0/24"), ip("192.168.0.2")),
                ],
                routes(&[("10.2.0.0/24", "192.168.0.2")]),
                vec![d("10.2.0.0/24", "192.168.0.9")],
            ),
            (
                "two wrong duplicates: both deleted, then added",
                vec![
                    (net("10.2.0.0/24"), ip("192.168.0.8")),
                    (net("10.2.0.0/24"), ip("192.168.0.9")),
                ],
                routes(&[("10.2.0.0/24", "192.168.0.2")]),
                vec![
                    d("10.2.0.0/24", "192.168.0.8"),
                    d("10.2.0.0/24", "192.168.0.9"),
                    add("10.2.0.0/24", "192.168.0.2"),
                ],
            ),
        ];
        for (what, current, desired, want) in cases {
            assert_eq!(plan(&current, &desired), want, "{what}");
        }
    }
}
