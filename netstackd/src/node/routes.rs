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
    /// One line per pod CIDR left out, naming the node and the reason.
    pub skipped: Vec<String>,
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
/// route per pod CIDR via that node's first internal address of the same family.
///
/// Left out, each with a line in [`RoutePlan::skipped`]: CIDRs overlapping ours, CIDRs of a
/// node with no internal address of that family, and CIDRs overlapping one an earlier node
/// (by name) already claimed, so the outcome never depends on the order nodes arrive in.
pub fn desired_routes(own_name: &str, own_cidrs: &[IpNet], nodes: &[NodeInfo]) -> RoutePlan {
    let mut sorted: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != own_name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = RoutePlan::default();
    let mut owner: BTreeMap<IpNet, &str> = BTreeMap::new();
    for node in sorted {
        for cidr in &node.pod_cidrs {
            let cidr = cidr.trunc();
            if let Some(own) = own_cidrs.iter().find(|o| overlaps(o, &cidr)) {
                plan.skipped.push(format!(
                    "node {}: pod CIDR {cidr} overlaps this node's {own}",
                    node.name
                ));
                continue;
            }
            if let Some((other, name)) = owner.iter().find(|(o, _)| overlaps(o, &cidr)) {
                plan.skipped.push(format!(
                    "node {}: pod CIDR {cidr} overlaps {other} of node {name}",
                    node.name
                ));
                continue;
            }
            let Some(via) = node
                .internal_ips
                .iter()
                .find(|ip| ip.is_ipv4() == cidr.addr().is_ipv4())
            else {
                plan.skipped.push(format!(
                    "node {}: no internal {} address to reach {cidr} through",
                    node.name,
                    if cidr.addr().is_ipv4() {
                        "IPv4"
                    } else {
                        "IPv6"
                    }
                ));
                continue;
            };
            owner.insert(cidr, &node.name);
            plan.routes.insert(cidr, *via);
        }
    }
    plan
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
        let plan = desired_routes("a", &[net("10.244.1.0/24")], &nodes);
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
    fn unroutable_and_conflicting_cidrs_are_skipped_with_a_reason() {
        // (what is wrong, nodes, expected routes, expected text of the one skip line)
        let cases: &[(&str, Vec<NodeInfo>, RouteMap, &str)] = &[
            (
                "a node claims our CIDR",
                vec![node("x", &["10.244.1.0/25"], &["192.168.0.9"])],
                routes(&[]),
                "node x: pod CIDR 10.244.1.0/25 overlaps this node's 10.244.1.0/24",
            ),
            (
                "no address of the CIDR's family",
                vec![node("y", &["10.244.5.0/24"], &["fd00::5"])],
                routes(&[]),
                "node y: no internal IPv4 address",
            ),
            (
                "two nodes claim one CIDR: the first by name keeps it, whatever the order",
                vec![
                    node("n2", &["10.244.7.0/24"], &["192.168.0.22"]),
                    node("n1", &["10.244.7.0/24"], &["192.168.0.21"]),
                ],
                routes(&[("10.244.7.0/24", "192.168.0.21")]),
                "node n2: pod CIDR 10.244.7.0/24 overlaps 10.244.7.0/24 of node n1",
            ),
        ];
        for (what, nodes, want, skip) in cases {
            let plan = desired_routes("self", &[net("10.244.1.0/24")], nodes);
            assert_eq!(&plan.routes, want, "{what}");
            assert_eq!(plan.skipped.len(), 1, "{what}: {:?}", plan.skipped);
            assert!(plan.skipped[0].contains(skip), "{what}: {:?}", plan.skipped);
        }
    }

    #[test]
    fn a_node_without_cidr_gets_no_route_and_no_complaint() {
        let plan = desired_routes("a", &[], &[node("new", &[], &["192.168.0.4"])]);
        assert_eq!(plan, RoutePlan::default());
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
