//! The reconciler: one thread that owns netstack's host routes, masquerade table and forward
//! accept rules and brings them in line with the latest node list, whenever a source sends one
//! and every resync interval (to repair drift and retry what failed). Work is only done when
//! something differs, so a resync of an unchanged cluster makes no change to the kernel. It
//! reports what is in place to [`NodeHealth`] (readiness, the Node's `NetworkUnavailable`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::firewall::{self, FirewallError, UplinkOutcome};
use super::health::NodeHealth;
use super::kernel::RouteTable;
use super::masquerade::{self, Family};
use super::routes::{desired_routes, plan, Refusal, RouteGuard, RouteMap};
use super::{NodeInfo, RefusalCounts};
use crate::control::{NodeRoute, NodeStatus};

/// What the sources and the daemon tell the reconciler.
#[derive(Debug)]
pub enum Msg {
    /// The whole current node list.
    Nodes(Vec<NodeInfo>),
    /// Shut down: remove the masquerade table and return.
    Stop,
}

/// How the masquerade rules are written (the real `nft`, or a recorder in tests): one table
/// per address family.
pub trait MasqueradeRules {
    /// Writes the table of `pod_cidr`'s family with this no-masquerade set.
    fn apply(&mut self, pod_cidr: IpNet, set: &[IpNet]) -> Result<(), masquerade::NftError>;
    /// Whether the table of this family is still there.
    fn present(&mut self, family: Family) -> Result<bool, masquerade::NftError>;
    /// Removes the table of this family.
    fn remove(&mut self, family: Family) -> Result<bool, masquerade::NftError>;
}

/// The `nft` binary in the calling thread's namespace.
#[derive(Debug, Default)]
pub struct Nft;

impl MasqueradeRules for Nft {
    fn apply(&mut self, pod_cidr: IpNet, set: &[IpNet]) -> Result<(), masquerade::NftError> {
        masquerade::apply(pod_cidr, set)
    }
    fn present(&mut self, family: Family) -> Result<bool, masquerade::NftError> {
        masquerade::present(family)
    }
    fn remove(&mut self, family: Family) -> Result<bool, masquerade::NftError> {
        masquerade::remove(family)
    }
}

/// How the host firewall's forward accept rules are written (the real iptables and nft, or a
/// recorder in tests): iptables' per pod CIDR, and the uplink's in other tables' forward
/// chains that drop by default.
pub trait ForwardRules {
    /// Makes sure the accept rules of `pod_cidr` are in place; returns how many were added.
    fn ensure(&mut self, pod_cidr: IpNet) -> Result<usize, FirewallError>;
    /// Removes the accept rules of `pod_cidr`; returns how many went.
    fn remove(&mut self, pod_cidr: IpNet) -> Result<usize, FirewallError>;
    /// Makes sure every other table's forward chain that drops by default accepts the uplink;
    /// what was done, per such chain.
    fn ensure_uplink(&mut self) -> Result<Vec<UplinkOutcome>, masquerade::NftError>;
    /// Removes netstack's rules from other tables' forward chains; returns how many went.
    fn remove_uplink(&mut self) -> Result<usize, masquerade::NftError>;
}

/// iptables (forward accept rules) and nft (other tables' forward chains) in the calling
/// thread's namespace.
#[derive(Debug, Default)]
pub struct HostFirewall {
    /// The uplink's name, accepted in other tables' forward chains.
    pub uplink: String,
}

impl ForwardRules for HostFirewall {
    fn ensure(&mut self, pod_cidr: IpNet) -> Result<usize, FirewallError> {
        firewall::ensure(pod_cidr)
    }
    fn remove(&mut self, pod_cidr: IpNet) -> Result<usize, FirewallError> {
        firewall::remove(pod_cidr)
    }
    fn ensure_uplink(&mut self) -> Result<Vec<UplinkOutcome>, masquerade::NftError> {
        firewall::ensure_uplink(&self.uplink)
    }
    fn remove_uplink(&mut self) -> Result<usize, masquerade::NftError> {
        firewall::remove_uplink_rules()
    }
}

/// The reconciler's state.
pub struct NodeState<T, M> {
    node_name: String,
    /// This node's pod CIDRs: the IPv4 one, then the IPv6 one when dual-stack.
    pod_cidrs: Vec<IpNet>,
    /// `None` without a node source: then netstack's routes are left as they are.
    routes: Option<T>,
    /// The masquerade backend and the fixed no-masquerade CIDRs; `None` when disabled.
    masquerade: Option<(M, Vec<IpNet>)>,
    /// What a pod CIDR must satisfy to be routed.
    guard: RouteGuard,
    nodes: Option<Vec<NodeInfo>>,
    applied_routes: Option<RouteMap>,
    /// The other nodes' pod CIDRs last accepted (routed): exempt from masquerade.
    accepted: Vec<IpNet>,
    /// The no-masquerade set last written, per family.
    applied_sets: BTreeMap<Family, Vec<IpNet>>,
    /// The refusals in force, each logged and counted once when it appeared.
    reported: BTreeSet<Refusal>,
    counts: &'static RefusalCounts,
    /// The forward accept rules' backend; `None` when disabled.
    forward: Option<Box<dyn ForwardRules + Send>>,
    /// The pod CIDRs whose accept rules are known to be in place.
    forward_applied: BTreeSet<IpNet>,
    /// Where what is in place is reported.
    health: Option<&'static NodeHealth>,
    /// Where what is in place is published for `netstackd ctl node`.
    view: Option<&'static Mutex<Option<NodeStatus>>>,
    /// What failed during the sync under way (or the last one).
    errors: Vec<String>,
}

/// What one sync did (for logs and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Route changes made.
    pub route_changes: usize,
    /// Route changes that failed (retried on the next resync).
    pub route_failures: usize,
    /// Whether a masquerade table was (re)written.
    pub masquerade_written: bool,
    /// Pod CIDRs newly refused (each is logged and counted once, when it first appears).
    pub refused: usize,
    /// Forward accept rules added (iptables').
    pub forward_added: usize,
    /// Uplink accept rules added to other tables' forward chains.
    pub uplink_added: usize,
}

impl<T: RouteTable, M: MasqueradeRules> NodeState<T, M> {
    /// A reconciler for node `node_name` with pod CIDR `pod_cidr` (and `pod_cidr_v6` when
    /// dual-stack), routing the pod CIDRs `guard` allows and counting refusals in `counts`.
    pub fn new(
        node_name: String,
        pod_cidr: Ipv4Net,
        pod_cidr_v6: Option<Ipv6Net>,
        routes: Option<T>,
        masquerade: Option<(M, Vec<IpNet>)>,
        guard: RouteGuard,
        counts: &'static RefusalCounts,
    ) -> Self {
        let pod_cidrs = std::iter::once(IpNet::V4(pod_cidr.trunc()))
            .chain(pod_cidr_v6.map(|n| IpNet::V6(n.trunc())))
            .collect();
        NodeState {
            node_name,
            pod_cidrs,
            routes,
            masquerade,
            guard,
            nodes: None,
            applied_routes: None,
            accepted: Vec::new(),
            applied_sets: BTreeMap::new(),
            reported: BTreeSet::new(),
            counts,
            forward: None,
            forward_applied: BTreeSet::new(),
            health: None,
            view: None,
            errors: Vec::new(),
        }
    }

    /// Also keeps the host firewall's forward accept rules of the pod CIDRs.
    pub fn with_forward_rules(mut self, rules: Box<dyn ForwardRules + Send>) -> Self {
        self.forward = Some(rules);
        self
    }

    /// Reports what is in place to `health`.
    pub fn with_health(mut self, health: &'static NodeHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Publishes what is in place after every sync into `view` (which holds the rest of
    /// node mode's status: source, flags), for `netstackd ctl node`.
    pub fn with_view(mut self, view: &'static Mutex<Option<NodeStatus>>) -> Self {
        self.view = Some(view);
        self
    }

    /// Fills the parts of `status` this reconciler knows: routes, masquerade, forward rules,
    /// the last sync's time and error.
    pub fn fill_status(&self, status: &mut NodeStatus) {
        status.pod_cidrs = self.pod_cidrs.clone();
        status.routes = self
            .applied_routes
            .iter()
            .flatten()
            .map(|(cidr, via)| NodeRoute {
                node: self
                    .nodes
                    .iter()
                    .flatten()
                    .find(|n| n.pod_cidrs.iter().any(|c| c.trunc() == *cidr))
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                cidr: *cidr,
                via: *via,
            })
            .collect();
        status.masquerade_tables = self
            .applied_sets
            .keys()
            .map(|f| format!("{} {}", f.nft(), masquerade::TABLE))
            .collect();
        status.no_masquerade = self.applied_sets.values().flatten().copied().collect();
        status.forward_rules = self.forward_applied.iter().copied().collect();
        status.last_sync_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        status.last_error = (!self.errors.is_empty()).then(|| self.errors.join("; "));
    }

    /// A new node list arrived: act on what changed.
    pub fn on_nodes(&mut self, nodes: Vec<NodeInfo>) -> SyncReport {
        self.nodes = Some(nodes);
        if let Some(h) = self.health {
            h.set_source_connected(true);
        }
        self.sync(false)
    }

    /// Brings routes and rules in line. With `check_kernel` the kernel's state is compared
    /// even when the wanted state did not change (a resync); otherwise only a changed wanted
    /// state is acted on.
    pub fn sync(&mut self, check_kernel: bool) -> SyncReport {
        self.errors.clear();
        let report = self.sync_all(check_kernel);
        if let Some(view) = self.view {
            let mut guard = view.lock().unwrap_or_else(|e| e.into_inner());
            let status = guard.get_or_insert_with(NodeStatus::default);
            self.fill_status(status);
        }
        report
    }

    fn sync_all(&mut self, check_kernel: bool) -> SyncReport {
        let mut report = SyncReport::default();
        if let (Some(table), Some(nodes)) = (self.routes.as_mut(), self.nodes.as_ref()) {
            // Next hops are checked against the links as they are now, at every sync.
            match table.connected() {
                Ok(connected) => {
                    let wanted = desired_routes(
                        &self.node_name,
                        &self.pod_cidrs,
                        nodes,
                        &self.guard,
                        &connected,
                    );
                    let refused: BTreeSet<Refusal> = wanted.skipped.iter().cloned().collect();
                    for r in refused.difference(&self.reported) {
                        report.refused += 1;
                        self.counts.count(r.reason);
                        tracing::warn!(node = %r.node, reason = r.reason.label(), "no route: {r}");
                    }
                    self.reported = refused;
                    self.accepted = wanted.routes.keys().copied().collect();
                    if check_kernel || self.applied_routes.as_ref() != Some(&wanted.routes) {
                        match table.list() {
                            Ok(current) => {
                                for change in plan(&current, &wanted.routes) {
                                    match table.apply(change) {
                                        Ok(()) => {
                                            report.route_changes += 1;
                                            tracing::info!(?change, "host-gw route");
                                        }
                                        Err(e) => {
                                            report.route_failures += 1;
                                            self.errors.push(e.to_string());
                                            tracing::warn!("{e} (retried at the next resync)");
                                        }
                                    }
                                }
                            }
                            Err(e) => {
                                report.route_failures += 1;
                                self.errors.push(e.to_string());
                                tracing::warn!("{e}");
                            }
                        }
                        self.applied_routes = (report.route_failures == 0).then_some(wanted.routes);
                    }
                }
                Err(e) => {
                    report.route_failures += 1;
                    self.applied_routes = None;
                    self.errors.push(format!("reading this node's links: {e}"));
                    tracing::warn!("reading this node's links: {e} (retried at the next resync)");
                }
            }
        }
        let mut masquerade_failures = 0u64;
        if let Some((rules, fixed)) = self.masquerade.as_mut() {
            for &pod_cidr in &self.pod_cidrs {
                let family = Family::of(&pod_cidr);
                // Only the pod CIDRs routed: a refused one (0.0.0.0/0, say) exempts nothing.
                let node_cidrs = self.accepted.iter().copied();
                let set = masquerade::no_masquerade_set(pod_cidr, fixed, node_cidrs);
                let stale = self.applied_sets.get(&family) != Some(&set);
                let gone = !stale && check_kernel && !rules.present(family).unwrap_or(false);
                if !(stale || gone) {
                    continue;
                }
                match rules.apply(pod_cidr, &set) {
                    Ok(()) => {
                        report.masquerade_written = true;
                        tracing::info!(
                            table = %format!("{} {}", family.nft(), masquerade::TABLE),
                            no_masquerade = ?set.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                            "egress masquerade rules written"
                        );
                        self.applied_sets.insert(family, set);
                    }
                    Err(e) => {
                        masquerade_failures += 1;
                        self.errors.push(format!("egress masquerade: {e}"));
                        tracing::error!("egress masquerade: {e} (retried at the next resync)");
                        self.applied_sets.remove(&family);
                    }
                }
            }
        }
        self.sync_forward(check_kernel, &mut report);
        if let Some(h) = self.health {
            // Without a node source there are no routes to wait for.
            let routes_in_place =
                self.routes.is_none() || (self.nodes.is_some() && self.applied_routes.is_some());
            h.set_routes_synced(routes_in_place);
            let masquerade_in_place = self.applied_sets.len() == self.pod_cidrs.len();
            h.set_masquerade_written(masquerade_in_place);
            h.record_sync(
                self.applied_routes.as_ref().map(|r| r.len()),
                report.route_failures as u64 + masquerade_failures,
                routes_in_place && (self.masquerade.is_none() || masquerade_in_place),
            );
        }
        report
    }

    /// The forward accept rules: written once, checked again at every resync (someone may
    /// have flushed the chain); other tables' forward chains that drop by default are looked
    /// for at every resync and made to accept the uplink.
    fn sync_forward(&mut self, check_kernel: bool, report: &mut SyncReport) {
        let Some(rules) = self.forward.as_mut() else {
            return;
        };
        for &pod_cidr in &self.pod_cidrs {
            if !check_kernel && self.forward_applied.contains(&pod_cidr) {
                continue;
            }
            match rules.ensure(pod_cidr) {
                Ok(added) => {
                    if added > 0 {
                        report.forward_added += added;
                        tracing::info!(
                            %pod_cidr,
                            chain = firewall::CHAIN,
                            comment = firewall::COMMENT,
                            added,
                            "forward accept rules written"
                        );
                    }
                    self.forward_applied.insert(pod_cidr);
                }
                // No iptables binary: there is no iptables policy to get past either.
                Err(FirewallError::Spawn { .. }) if !self.forward_applied.contains(&pod_cidr) => {
                    tracing::info!("no iptables on this node: no forward accept rules written");
                    self.forward_applied.insert(pod_cidr);
                }
                Err(FirewallError::Spawn { .. }) => {}
                Err(e) => {
                    self.errors.push(format!("forward accept rules: {e}"));
                    tracing::error!("forward accept rules: {e} (retried at the next resync)");
                    self.forward_applied.remove(&pod_cidr);
                }
            }
        }
        if !check_kernel {
            return;
        }
        match rules.ensure_uplink() {
            Ok(outcomes) => {
                for (chain, result) in outcomes {
                    match result {
                        Ok(0) => {}
                        Ok(added) => {
                            report.uplink_added += added;
                            tracing::info!(
                                comment = firewall::UPLINK_COMMENT,
                                added,
                                "{chain} drops forwarded packets by default: uplink accept \
                                 rules written at its head"
                            );
                        }
                        Err(e) => tracing::error!(
                            "{chain} drops forwarded packets by default, and accepting the \
                             uplink there failed: {e} (retried at the next resync)"
                        ),
                    }
                }
            }
            Err(e) => tracing::warn!(
                "looking for forward chains that drop: {e} (retried at the next resync)"
            ),
        }
    }

    /// Shutdown: the masquerade table and the forward accept rules go (the dataplane stops
    /// with netstackd, so nothing of the pods' traffic needs them until the next start writes
    /// them again); routes stay, like the uplink, for the node's own traffic to other nodes'
    /// pods.
    pub fn stop(&mut self) {
        if let Some(rules) = self.forward.as_mut() {
            for &pod_cidr in &self.pod_cidrs {
                match rules.remove(pod_cidr) {
                    Ok(removed) => {
                        tracing::info!(%pod_cidr, removed, "forward accept rules removed")
                    }
                    Err(FirewallError::Spawn { .. }) => {}
                    Err(e) => {
                        tracing::warn!("removing the forward accept rules of {pod_cidr}: {e}")
                    }
                }
            }
            match rules.remove_uplink() {
                Ok(0) => {}
                Ok(removed) => tracing::info!(
                    removed,
                    comment = firewall::UPLINK_COMMENT,
                    "uplink accept rules removed from other tables' forward chains"
                ),
                Err(e) => tracing::warn!("removing the uplink accept rules: {e}"),
            }
        }
        if let Some((rules, _)) = self.masquerade.as_mut() {
            for family in self.pod_cidrs.iter().map(Family::of) {
                let table = format!("{} {}", family.nft(), masquerade::TABLE);
                match rules.remove(family) {
                    Ok(_) => tracing::info!(%table, "egress masquerade removed"),
                    Err(e) => tracing::warn!("removing the masquerade table {table}: {e}"),
                }
            }
        }
    }
}

/// The reconciler thread's loop: sync now, then on every message and every `resync`.
pub fn run<T: RouteTable, M: MasqueradeRules>(
    mut state: NodeState<T, M>,
    rx: Receiver<Msg>,
    resync: Duration,
) {
    state.sync(true);
    loop {
        match rx.recv_timeout(resync) {
            Ok(Msg::Nodes(nodes)) => {
                state.on_nodes(nodes);
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                state.stop();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                state.sync(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::node::kernel::RouteError;
    use crate::node::routes::{Connected, RefusalReason, RouteChange};

    /// An in-memory route table that counts writes and can be told to fail.
    #[derive(Default)]
    struct FakeRoutes {
        routes: Vec<(IpNet, IpAddr)>,
        writes: usize,
        fail_next: usize,
        /// Reading the links fails (once per count).
        links_fail: usize,
    }

    impl RouteTable for &mut FakeRoutes {
        fn list(&mut self) -> Result<Vec<(IpNet, IpAddr)>, RouteError> {
            Ok(self.routes.clone())
        }
        fn apply(&mut self, change: RouteChange) -> Result<(), RouteError> {
            if self.fail_next > 0 {
                self.fail_next -= 1;
                return Err(RouteError::Connect(std::io::Error::other("injected")));
            }
            self.writes += 1;
            match change {
                RouteChange::Add { dst, via } => self.routes.push((dst, via)),
                RouteChange::Replace { dst, via } => {
                    self.routes.retain(|r| r.0 != dst);
                    self.routes.push((dst, via));
                }
                RouteChange::Delete { dst, via } => self.routes.retain(|r| *r != (dst, via)),
            }
            Ok(())
        }
        fn connected(&mut self) -> Result<Connected, RouteError> {
            if self.links_fail > 0 {
                self.links_fail -= 1;
                return Err(RouteError::Connect(std::io::Error::other("injected")));
            }
            Ok(Connected {
                networks: vec![
                    "192.168.0.0/24".parse().unwrap(),
                    "fd00::/64".parse().unwrap(),
                ],
                local: vec!["192.168.0.1".parse().unwrap()],
            })
        }
    }

    /// Counters of one test (the daemon's are process-wide).
    fn counts() -> &'static RefusalCounts {
        Box::leak(Box::default())
    }

    /// Records masquerade writes, per family.
    #[derive(Default)]
    struct FakeNft {
        sets: Vec<(Family, Vec<IpNet>)>,
        present: BTreeSet<Family>,
        removed: Vec<Family>,
    }

    impl MasqueradeRules for &mut FakeNft {
        fn apply(&mut self, pod_cidr: IpNet, set: &[IpNet]) -> Result<(), masquerade::NftError> {
            let family = Family::of(&pod_cidr);
            self.sets.push((family, set.to_vec()));
            self.present.insert(family);
            Ok(())
        }
        fn present(&mut self, family: Family) -> Result<bool, masquerade::NftError> {
            Ok(self.present.contains(&family))
        }
        fn remove(&mut self, family: Family) -> Result<bool, masquerade::NftError> {
            self.removed.push(family);
            Ok(self.present.remove(&family))
        }
    }

    fn node(name: &str, cidr: &str, ip: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            internal_ips: vec![ip.parse().unwrap()],
        }
    }
    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn routes_follow_the_list_and_resyncs_do_not_flap() {
        let mut table = FakeRoutes::default();
        let mut nft = FakeNft::default();
        let cluster = vec!["10.96.0.0/12".parse().unwrap()];
        let mut state = NodeState::new(
            "a".into(),
            v4("10.244.1.0/24"),
            None,
            Some(&mut table),
            Some((&mut nft, cluster)),
            RouteGuard::default(),
            counts(),
        );
        // Before any list: masquerade only, routes untouched.
        let r = state.sync(true);
        assert_eq!((r.route_changes, r.masquerade_written), (0, true));

        let a = node("a", "10.244.1.0/24", "192.168.0.1");
        let b = node("b", "10.244.2.0/24", "192.168.0.2");
        let c = node("c", "10.244.3.0/24", "192.168.0.3");
        let r = state.on_nodes(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!((r.route_changes, r.masquerade_written), (2, true));
        // The same list again, and resyncs: nothing written.
        for _ in 0..3 {
            assert_eq!(
                state.on_nodes(vec![a.clone(), b.clone(), c.clone()]),
                SyncReport::default()
            );
            assert_eq!(state.sync(true), SyncReport::default());
        }
        // c leaves.
        let r = state.on_nodes(vec![a.clone(), b.clone()]);
        assert_eq!((r.route_changes, r.route_failures), (1, 0));
        // A failed write is retried at the next resync, and only then.
        state.routes.as_mut().unwrap().fail_next = 1;
        let r = state.on_nodes(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!((r.route_changes, r.route_failures), (0, 1));
        let r = state.sync(true);
        assert_eq!((r.route_changes, r.route_failures), (1, 0));
        // Someone deleted our route behind our back: the resync puts it back.
        state
            .routes
            .as_mut()
            .unwrap()
            .routes
            .retain(|r| r.0 != "10.244.2.0/24".parse::<IpNet>().unwrap());
        assert_eq!(state.sync(true).route_changes, 1);
        // ... and our table: rewritten too.
        state.masquerade.as_mut().unwrap().0.present.clear();
        assert!(state.sync(true).masquerade_written);
        state.stop();
        drop(state);

        let mut got = table.routes.clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "10.244.2.0/24".parse().unwrap(),
                    "192.168.0.2".parse().unwrap()
                ),
                (
                    "10.244.3.0/24".parse().unwrap(),
                    "192.168.0.3".parse().unwrap()
                ),
            ]
        );
        // Writes: 2 adds, 1 delete, 1 add, 1 re-add.
        assert_eq!(table.writes, 5);
        assert_eq!(nft.removed, vec![Family::V4]);
        assert!(nft.present.is_empty());
        assert_eq!(
            nft.sets[0],
            (Family::V4, nets(&["10.96.0.0/12", "10.244.1.0/24"]))
        );
        assert_eq!(
            nft.sets[1],
            (
                Family::V4,
                nets(&["10.96.0.0/12", "10.244.1.0/24", "10.244.2.0/23"])
            ),
            "every node's pod CIDR is exempt, merged"
        );
        assert!(
            nft.sets.iter().all(|(f, _)| *f == Family::V4),
            "no IPv6 table on an IPv4 node"
        );
    }

    #[test]
    fn the_view_names_each_route_s_node_and_the_last_error() {
        let mut table = FakeRoutes::default();
        let mut nft = FakeNft::default();
        let view: &'static Mutex<Option<NodeStatus>> = Box::leak(Box::default());
        let mut state = NodeState::new(
            "a".into(),
            v4("10.244.1.0/24"),
            None,
            Some(&mut table),
            Some((&mut nft, nets(&["10.96.0.0/12"]))),
            RouteGuard::default(),
            counts(),
        )
        .with_view(view);
        let seen = || view.lock().unwrap().clone().unwrap();
        state.sync(true);
        assert!(seen().routes.is_empty(), "no node list yet");
        assert!(seen().last_sync_unix.is_some());
        state.on_nodes(vec![
            node("a", "10.244.1.0/24", "192.168.0.1"),
            node("b", "10.244.2.0/24", "192.168.0.2"),
        ]);
        let v = seen();
        assert_eq!(
            v.routes,
            vec![NodeRoute {
                node: "b".into(),
                cidr: "10.244.2.0/24".parse().unwrap(),
                via: "192.168.0.2".parse().unwrap(),
            }]
        );
        assert_eq!(v.masquerade_tables, vec!["ip netstack"]);
        assert_eq!(
            v.no_masquerade,
            nets(&["10.96.0.0/12", "10.244.1.0/24", "10.244.2.0/24"])
        );
        assert_eq!(
            (v.pod_cidrs, v.last_error),
            (nets(&["10.244.1.0/24"]), None)
        );
        // A failing sync is named until a sync succeeds again.
        state.routes.as_mut().unwrap().links_fail = 1;
        state.sync(true);
        let v = seen();
        assert!(v.routes.is_empty(), "routes not known to be in place");
        assert!(
            v.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("reading this node's links")),
            "{:?}",
            v.last_error
        );
        state.sync(true);
        assert_eq!((seen().routes.len(), seen().last_error), (1, None));
    }

    #[test]
    fn without_a_node_source_routes_are_never_touched() {
        let mut nft = FakeNft::default();
        let mut state: NodeState<&mut FakeRoutes, _> = NodeState::new(
            "a".into(),
            v4("10.244.1.0/24"),
            None,
            None,
            Some((&mut nft, vec![])),
            RouteGuard::default(),
            counts(),
        );
        state.on_nodes(vec![node("b", "10.244.2.0/24", "192.168.0.2")]);
        assert_eq!(state.sync(true).route_changes, 0);
    }

    #[test]
    fn a_dual_stack_node_keeps_one_table_per_family() {
        let mut table = FakeRoutes::default();
        let mut nft = FakeNft::default();
        let fixed = nets(&["10.96.0.0/12", "fd00:10:96::/112"]);
        let mut state = NodeState::new(
            "a".into(),
            v4("10.244.1.0/24"),
            Some("fd00:10:244:1::/64".parse().unwrap()),
            Some(&mut table),
            Some((&mut nft, fixed)),
            RouteGuard::default(),
            counts(),
        );
        let dual = |name: &str, cidrs: &[&str], ips: &[&str]| NodeInfo {
            name: name.into(),
            pod_cidrs: nets(cidrs),
            internal_ips: ips.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let a = dual(
            "a",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &["192.168.0.1", "fd00::1"],
        );
        let b = dual("b", &["10.244.2.0/24"], &["192.168.0.2", "fd00::2"]);
        // x claims our IPv6 CIDR: no route for it.
        let x = dual("x", &["fd00:10:244:1::/64"], &["fd00::9"]);
        let r = state.on_nodes(vec![a.clone(), b.clone(), x.clone()]);
        assert_eq!(
            r.route_changes, 1,
            "b's IPv4 CIDR only: x's IPv6 one is ours"
        );
        assert_eq!(state.nft_sets_written(), [Family::V4, Family::V6]);
        // b turns dual-stack: its IPv6 CIDR is routed and exempt; only the IPv6 table changes.
        let b6 = dual(
            "b",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["192.168.0.2", "fd00::2"],
        );
        let r = state.on_nodes(vec![a.clone(), b6.clone(), x.clone()]);
        assert_eq!((r.route_changes, r.masquerade_written), (1, true));
        assert_eq!(
            state.nft_sets_written(),
            [Family::V4, Family::V6, Family::V6]
        );
        // Resyncs change nothing; the IPv6 table deleted behind our back comes back alone.
        assert_eq!(state.sync(true), SyncReport::default());
        state
            .masquerade
            .as_mut()
            .unwrap()
            .0
            .present
            .remove(&Family::V6);
        assert!(state.sync(true).masquerade_written);
        assert_eq!(
            state.nft_sets_written(),
            [Family::V4, Family::V6, Family::V6, Family::V6]
        );
        state.stop();
        drop(state);

        let mut got = table.routes.clone();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "10.244.2.0/24".parse().unwrap(),
                    "192.168.0.2".parse().unwrap()
                ),
                (
                    "fd00:10:244:2::/64".parse().unwrap(),
                    "fd00::2".parse().unwrap()
                ),
            ]
        );
        assert_eq!(nft.removed, vec![Family::V4, Family::V6]);
        let last6 = nft
            .sets
            .iter()
            .rev()
            .find(|(f, _)| *f == Family::V6)
            .unwrap();
        assert_eq!(
            last6.1,
            nets(&[
                "fd00:10:96::/112",
                "fd00:10:244:1::/64",
                "fd00:10:244:2::/64"
            ])
        );
    }

    #[test]
    fn refusals_are_counted_once_never_routed_nor_exempt() {
        let mut table = FakeRoutes::default();
        let mut nft = FakeNft::default();
        let counts = counts();
        let guard = RouteGuard {
            cluster: nets(&["10.244.0.0/16"]),
            service: nets(&["10.96.0.0/12"]),
            min_prefix_v4: 16,
            min_prefix_v6: 48,
        };
        let mut state = NodeState::new(
            "a".into(),
            v4("10.244.1.0/24"),
            None,
            Some(&mut table),
            Some((&mut nft, nets(&["10.96.0.0/12"]))),
            guard,
            counts,
        );
        let good = node("b", "10.244.2.0/24", "192.168.0.2");
        let list = vec![
            good.clone(),
            node("everything", "0.0.0.0/0", "192.168.0.9"),
            node("outside", "10.55.0.0/24", "192.168.0.9"),
            node("far", "10.244.8.0/24", "172.31.0.9"),
        ];
        let r = state.on_nodes(list.clone());
        assert_eq!((r.route_changes, r.refused), (1, 3));
        let count = |reason| {
            counts
                .snapshot()
                .into_iter()
                .find(|(l, _)| *l == RefusalReason::label(reason))
                .map(|(_, n)| n)
        };
        assert_eq!(count(RefusalReason::PrefixTooShort), Some(1));
        assert_eq!(count(RefusalReason::OutsideClusterCidr), Some(1));
        assert_eq!(count(RefusalReason::NextHopNotConnected), Some(1));
        assert_eq!(count(RefusalReason::OverlapsServiceCidr), Some(0));
        // Resyncs and the same list again: nothing new to count.
        assert_eq!(state.sync(true), SyncReport::default());
        assert_eq!(state.on_nodes(list.clone()).refused, 0);
        assert_eq!(count(RefusalReason::PrefixTooShort), Some(1));
        // Gone and back: counted again.
        state.on_nodes(vec![good.clone()]);
        assert_eq!(state.on_nodes(list).refused, 3);
        assert_eq!(count(RefusalReason::PrefixTooShort), Some(2));
        // The links cannot be read: nothing is routed unchecked, and the resync retries.
        state.routes.as_mut().unwrap().links_fail = 1;
        state.routes.as_mut().unwrap().routes.clear();
        assert_eq!(state.sync(true).route_failures, 1);
        assert!(state.routes.as_ref().unwrap().routes.is_empty());
        assert_eq!(state.sync(true).route_changes, 1);
        state.stop();
        drop(state);
        assert_eq!(
            table.routes,
            vec![(
                "10.244.2.0/24".parse().unwrap(),
                "192.168.0.2".parse().unwrap()
            )]
        );
        assert!(
            nft.sets.iter().all(|(_, set)| !set.iter().any(
                |n| n.prefix_len() == 0 || n.contains(&"10.55.0.1".parse::<IpAddr>().unwrap())
            )),
            "a refused CIDR is never exempt from masquerade: {:?}",
            nft.sets
        );
    }

    /// Records forward-rule calls (shared with the test through an Arc: the state owns a box).
    #[derive(Default)]
    struct FakeForward {
        log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        /// Rules added per call of `ensure_uplink` (one foreign chain).
        uplink_added: usize,
        fail: bool,
    }

    impl ForwardRules for FakeForward {
        fn ensure(&mut self, pod_cidr: IpNet) -> Result<usize, FirewallError> {
            self.log.lock().unwrap().push(format!("ensure {pod_cidr}"));
            if self.fail {
                return Err(FirewallError::Refused {
                    binary: "iptables".into(),
                    args: "-I".into(),
                    stderr: "injected".into(),
                });
            }
            Ok(2)
        }
        fn remove(&mut self, pod_cidr: IpNet) -> Result<usize, FirewallError> {
            self.log.lock().unwrap().push(format!("remove {pod_cidr}"));
            Ok(2)
        }
        fn ensure_uplink(&mut self) -> Result<Vec<UplinkOutcome>, masquerade::NftError> {
            self.log.lock().unwrap().push("uplink".into());
            let chain = firewall::ForeignChain {
                family: "inet".into(),
                table: "firewalld".into(),
                chain: "filter_FORWARD".into(),
            };
            Ok(vec![(chain, Ok(std::mem::take(&mut self.uplink_added)))])
        }
        fn remove_uplink(&mut self) -> Result<usize, masquerade::NftError> {
            self.log.lock().unwrap().push("remove uplink".into());
            Ok(2)
        }
    }

    #[test]
    fn forward_rules_per_pod_cidr_are_checked_at_resyncs_and_removed_at_stop() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let health: &'static NodeHealth = Box::leak(Box::default());
        health.start(true, false, true);
        let mut table = FakeRoutes::default();
        let mut nft = FakeNft::default();
        let forward = FakeForward {
            log: log.clone(),
            uplink_added: 2,
            fail: false,
        };
        let mut state = NodeState::new(
            "a".into(),
            v4("10.244.1.0/24"),
            Some("fd00:10:244:1::/64".parse().unwrap()),
            Some(&mut table),
            Some((&mut nft, vec![])),
            RouteGuard::default(),
            counts(),
        )
        .with_forward_rules(Box::new(forward))
        .with_health(health);
        let taken = || std::mem::take(&mut *log.lock().unwrap());
        let r = state.sync(true);
        assert_eq!(r.forward_added, 4, "two rules per pod CIDR, both families");
        assert_eq!(r.uplink_added, 2, "two in the foreign chain");
        assert_eq!(
            taken(),
            [
                "ensure 10.244.1.0/24",
                "ensure fd00:10:244:1::/64",
                "uplink"
            ]
        );
        assert!(
            !health.routes_synced(),
            "no node list yet: routes are not in place"
        );
        assert!(health.readiness().iter().any(|c| !c.ok));
        // A node list: the rules are not written again, routes are now in place.
        state.on_nodes(vec![node("b", "10.244.2.0/24", "192.168.0.2")]);
        assert_eq!(taken(), Vec::<String>::new());
        assert!(health.routes_synced());
        assert!(
            health.readiness().iter().all(|c| c.ok),
            "{:?}",
            health.readiness()
        );
        // A resync checks them again (iptables -C inside ensure), and the foreign chains.
        assert_eq!(state.sync(true).uplink_added, 0, "they are there");
        assert_eq!(
            taken(),
            [
                "ensure 10.244.1.0/24",
                "ensure fd00:10:244:1::/64",
                "uplink"
            ]
        );
        // A route that cannot be written: routes are not in place until a resync succeeds.
        state.routes.as_mut().unwrap().fail_next = 1;
        state.on_nodes(vec![node("c", "10.244.3.0/24", "192.168.0.3")]);
        assert!(!health.routes_synced());
        state.sync(true);
        assert!(health.routes_synced());
        taken();
        state.stop();
        assert_eq!(
            taken(),
            [
                "remove 10.244.1.0/24",
                "remove fd00:10:244:1::/64",
                "remove uplink"
            ]
        );

        // A refused write is retried at the next node list too.
        let log2 = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut nft2 = FakeNft::default();
        let mut failing: NodeState<&mut FakeRoutes, _> = NodeState::new(
            "a".into(),
            v4("10.244.1.0/24"),
            None,
            None,
            Some((&mut nft2, vec![])),
            RouteGuard::default(),
            counts(),
        )
        .with_forward_rules(Box::new(FakeForward {
            log: log2.clone(),
            uplink_added: 0,
            fail: true,
        }));
        assert_eq!(failing.sync(true).forward_added, 0);
        failing.on_nodes(vec![]);
        assert_eq!(
            log2.lock().unwrap().as_slice(),
            ["ensure 10.244.1.0/24", "uplink", "ensure 10.244.1.0/24"]
        );
    }

    impl<T> NodeState<T, &mut FakeNft> {
        /// The families of the tables written so far, in order.
        fn nft_sets_written(&self) -> Vec<Family> {
            let (nft, _) = self.masquerade.as_ref().unwrap();
            nft.sets.iter().map(|(f, _)| *f).collect()
        }
    }
}
