//! Node mode: what netstackd does for the node beyond its own pods.
//!
//! - **host-gw routes**: one host route per other node's pod CIDR via that node's internal
//!   address, so pods on different nodes reach each other by pod IP, without NAT or tunnels
//!   (the nodes must share a link). The node list comes from a static file (`--nodes-file`,
//!   polled) or from the Kubernetes API (`--kube`: this node's pod CIDR from its Node, and a
//!   watch on all Nodes). Routes carry protocol [`ROUTE_PROTOCOL`], so netstack only ever
//!   touches its own.
//! - **egress masquerade** (on unless `--masquerade=false`): pod traffic to destinations outside
//!   the cluster's pod and service CIDRs is SNATed to the node's address, in netstack's own
//!   nftables table `ip netstack` (and `ip6 netstack` on a dual-stack node).
//! - **host firewall** (on unless `--forward-accept=false`): accept rules for the pod CIDRs at
//!   the head of iptables' `filter FORWARD` chain, and for the uplink at the head of every
//!   other nftables forward chain that drops by default (firewalld's), so a node whose
//!   firewall drops forwarded traffic still forwards pod traffic (`firewall`).
//! - **Kubernetes integration** (`--kube`): the Node's `NetworkUnavailable` condition set to
//!   False once routes are in place; readiness (`health`) reflects the watch and the routes.
//! - **MTU**: the uplink's MTU, unless given, is that of the interface carrying the default
//!   route ([`default_route_mtu`]).
//!
//! Sources (`file`, `kube`) fold what they see into whole node lists (`watch`) and send them
//! to one reconciler thread (`sync`), which computes the wanted routes (`routes`, no I/O)
//! and applies the difference (`kernel`, `masquerade`).

mod file;
mod firewall;
mod health;
mod kernel;
#[cfg(feature = "kube")]
mod kube;
mod list;
mod masquerade;
mod routes;
mod sync;
mod watch;

pub use firewall::{ForeignChain, COMMENT as FIREWALL_COMMENT, UPLINK_COMMENT};
pub use health::{Check, NodeHealth, NodeMetrics};
pub use kernel::{default_route_mtu, KernelRoutes, RouteError, RouteTable, ROUTE_PROTOCOL};
pub use list::{parse_node_list, NodeInfo, NodeListError};
pub use masquerade::TABLE as NFT_TABLE;
pub use routes::{
    desired_routes, plan, Connected, Refusal, RefusalReason, RouteChange, RouteGuard, RouteMap,
    RoutePlan,
};
pub use watch::{NodeEvent, NodeFold};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Node-mode options of the netstackd command line.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Learn the cluster from the Kubernetes API (in-cluster service account, or KUBECONFIG):
    /// this node's pod CIDR when --pod-cidr is not given, and a host route per other node.
    #[arg(long, conflicts_with = "nodes_file")]
    pub kube: bool,
    /// Route to the nodes listed in this JSON file ({"nodes":[{"name","podCIDRs",
    /// "internalIPs"}]} or `kubectl get nodes -o json`), re-read when it changes.
    #[arg(long, value_name = "PATH")]
    pub nodes_file: Option<PathBuf>,
    /// This node's name in the node list [default: $NODE_NAME, else the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Masquerade pod traffic leaving the cluster to the node's address (`--masquerade=false`
    /// turns it off).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,
    /// Accept forwarded pod traffic in iptables' `filter FORWARD` chain (two rules per pod
    /// CIDR, at its head, tagged "netstack: pod CIDR") and in every other nftables forward
    /// chain that drops by default (the uplink both ways, tagged "netstack: uplink"), for
    /// nodes whose firewall drops forwarded traffic (`--forward-accept=false` leaves the host
    /// firewall alone).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub forward_accept: bool,
    /// The cluster's pod CIDR(s), never masqueraded (comma-separated or repeated, empty for
    /// none; every routed node's pod CIDR is exempt anyway). When given, a node's pod CIDR
    /// outside all of them gets no route.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = optional_cidr)]
    pub cluster_cidr: Vec<Option<IpNet>>,
    /// The cluster's service CIDR(s), never masqueraded; a node's pod CIDR overlapping one
    /// gets no route.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = optional_cidr)]
    pub service_cidr: Vec<Option<IpNet>>,
    /// The shortest prefix of another node's IPv4 pod CIDR that gets a route.
    #[arg(long, value_name = "BITS", default_value_t = 16,
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub node_cidr_min_prefix: u8,
    /// The shortest prefix of another node's IPv6 pod CIDR that gets a route.
    #[arg(long, value_name = "BITS", default_value_t = 48,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub node_cidr_min_prefix_v6: u8,
    /// Seconds between resyncs of routes and rules with the kernel.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub resync_secs: u64,
    /// Milliseconds between reads of --nodes-file.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub nodes_file_poll_ms: u64,
}

/// Where the node list comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NodeSource {
    /// Nowhere: no host-gw routes are managed.
    #[default]
    None,
    /// A JSON file, polled.
    File {
        /// The file.
        path: PathBuf,
        /// How often it is read.
        poll: Duration,
    },
    /// The Kubernetes API.
    Kube,
}

/// Node-mode configuration. The default does nothing (no source, no masquerade); the
/// command line's default turns masquerade on.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// This node's name in the node list.
    pub node_name: String,
    /// Where the node list comes from.
    pub source: NodeSource,
    /// Whether egress masquerade is on.
    pub masquerade: bool,
    /// Whether the forward accept rules are kept in iptables' FORWARD chain.
    pub forward_accept: bool,
    /// Cluster pod and service CIDRs, never masqueraded.
    pub no_masquerade: Vec<IpNet>,
    /// What another node's pod CIDR must satisfy to be routed.
    pub guard: RouteGuard,
    /// Interval of the full resync with the kernel.
    pub resync: Duration,
}

/// A CIDR flag value; empty (`--cluster-cidr=`, an empty ConfigMap key) is none.
fn optional_cidr(value: &str) -> Result<Option<IpNet>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("{value:?} is not a CIDR: {e}"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl NodeArgs {
    /// The configuration these options describe.
    pub fn config(&self) -> NodeConfig {
        let node_name = self
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(hostname);
        let source = match (&self.nodes_file, self.kube) {
            (_, true) => NodeSource::Kube,
            (Some(path), false) => NodeSource::File {
                path: path.clone(),
                poll: Duration::from_millis(self.nodes_file_poll_ms.max(10)),
            },
            (None, false) => NodeSource::None,
        };
        NodeConfig {
            node_name,
            source,
            masquerade: self.masquerade,
            forward_accept: self.forward_accept,
            no_masquerade: self
                .cluster_cidr
                .iter()
                .chain(&self.service_cidr)
                .flatten()
                .map(|n| n.trunc())
                .collect(),
            guard: RouteGuard {
                cluster: self
                    .cluster_cidr
                    .iter()
                    .flatten()
                    .map(|n| n.trunc())
                    .collect(),
                service: self
                    .service_cidr
                    .iter()
                    .flatten()
                    .map(|n| n.trunc())
                    .collect(),
                min_prefix_v4: self.node_cidr_min_prefix,
                min_prefix_v6: self.node_cidr_min_prefix_v6,
            },
            resync: Duration::from_secs(self.resync_secs.max(1)),
        }
    }
}

/// Other nodes' pod CIDRs refused a route since start, by reason: each refusal counts once,
/// when it appears (a node list or a resync that repeats it does not count it again).
#[derive(Debug, Default)]
pub struct RefusalCounts([AtomicU64; RefusalReason::ALL.len()]);

impl RefusalCounts {
    fn count(&self, reason: RefusalReason) {
        if let Some(i) = RefusalReason::ALL.iter().position(|r| *r == reason) {
            self.0[i].fetch_add(1, Relaxed);
        }
    }

    /// (reason label, count) for every reason, zeros included.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        RefusalReason::ALL
            .iter()
            .zip(&self.0)
            .map(|(r, n)| (r.label(), n.load(Relaxed)))
            .collect()
    }
}

/// This process's refusal counts (one node logic per netstackd).
static REFUSALS: RefusalCounts =
    RefusalCounts([const { AtomicU64::new(0) }; RefusalReason::ALL.len()]);

/// The pod CIDRs refused a route so far, by reason label (`netstack_node_routes_refused_total`).
pub fn refused_routes() -> Vec<(&'static str, u64)> {
    REFUSALS.snapshot()
}

/// This process's node-mode health (one node logic per netstackd).
static HEALTH: NodeHealth = NodeHealth::new();

/// Node mode's state for the metrics (`netstack_node_*`).
pub fn metrics() -> NodeMetrics {
    HEALTH.metrics()
}

/// Node mode's readiness checks (`/readyz`): every one must pass.
pub fn readiness() -> Vec<Check> {
    HEALTH.readiness()
}

/// What node mode has in place, for `netstackd ctl node` (`None` until the node logic starts).
static VIEW: std::sync::Mutex<Option<crate::control::NodeStatus>> = std::sync::Mutex::new(None);

/// Node mode's status (`netstackd ctl node`): the reconciler's last published view with the
/// readiness checks of now.
pub fn status() -> crate::control::NodeStatus {
    let mut status = VIEW
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| crate::control::NodeStatus {
            source: "none".into(),
            ..Default::default()
        });
    status.health = readiness()
        .into_iter()
        .map(|c| crate::control::NodeCheck {
            what: c.what.into(),
            ok: c.ok,
            detail: c.detail.into(),
        })
        .collect();
    status
}

/// The MTU a node falls back to without a default route.
pub const FALLBACK_MTU: u32 = 1500;

/// The uplink's MTU: `given` unless it is 0, else the MTU of the interface carrying the
/// calling thread's namespace's default route ([`default_route_mtu`]), else [`FALLBACK_MTU`].
pub fn uplink_mtu(given: u32) -> u32 {
    if given != 0 {
        tracing::info!(mtu = given, "uplink MTU as given");
        return given;
    }
    match default_route_mtu() {
        Ok(Some((link, mtu))) => {
            tracing::info!(mtu, %link, "uplink MTU from the default route's interface");
            mtu
        }
        Ok(None) => {
            tracing::info!(
                mtu = FALLBACK_MTU,
                "no default route: uplink MTU {FALLBACK_MTU}"
            );
            FALLBACK_MTU
        }
        Err(e) => {
            tracing::warn!("reading the default route's MTU: {e}; uplink MTU {FALLBACK_MTU}");
            FALLBACK_MTU
        }
    }
}

/// How long `--kube` waits at start for the Node's pod CIDR.
pub const POD_CIDR_WAIT: Duration = Duration::from_secs(300);

/// netstackd's pod CIDRs (IPv4, and IPv6 when dual-stack): `--pod-cidr` and `--pod-cidr-v6`
/// as given; with `--kube` they come from the Node's `spec.podCIDRs` (see [`choose_pod_cidrs`]).
pub fn resolve_pod_cidrs(
    config: &NodeConfig,
    given_v4: Option<Ipv4Net>,
    given_v6: Option<Ipv6Net>,
) -> anyhow::Result<(Ipv4Net, Option<Ipv6Net>)> {
    if config.source != NodeSource::Kube {
        let v4 = given_v4.context("--pod-cidr is required (or --kube to read it from the Node)")?;
        return Ok((v4, given_v6));
    }
    let cidrs = kube_pod_cidrs(&config.node_name)?;
    let chosen = choose_pod_cidrs(&config.node_name, &cidrs, given_v4, given_v6)?;
    tracing::info!(
        node = %config.node_name,
        pod_cidr = %chosen.0,
        pod_cidr_v6 = ?chosen.1.map(|n| n.to_string()),
        "pod CIDRs from the Node"
    );
    Ok(chosen)
}

/// Picks this node's pod CIDRs from its Node's `spec.podCIDRs`: the IPv4 one (required:
/// netstack's gateway and uplink are IPv4 first) and the IPv6 one if the Node has one
/// (dual-stack). A CIDR also given on the command line must be the Node's.
pub fn choose_pod_cidrs(
    node_name: &str,
    cidrs: &[IpNet],
    given_v4: Option<Ipv4Net>,
    given_v6: Option<Ipv6Net>,
) -> anyhow::Result<(Ipv4Net, Option<Ipv6Net>)> {
    let listed = || {
        cidrs
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let v4 = match (given_v4, cidrs.iter().find_map(|c| as_v4(*c))) {
        (Some(g), _) if cidrs.contains(&IpNet::V4(g.trunc())) => g.trunc(),
        (Some(g), _) => bail!(
            "--pod-cidr {g} is not among Node {node_name}'s pod CIDRs [{}]",
            listed()
        ),
        (None, Some(n)) => n,
        (None, None) => bail!(
            "Node {node_name} has no IPv4 pod CIDR ([{}]); netstack needs one",
            listed()
        ),
    };
    let v6 = match (given_v6, cidrs.iter().find_map(|c| as_v6(*c))) {
        (Some(g), _) if cidrs.contains(&IpNet::V6(g.trunc())) => Some(g.trunc()),
        (Some(g), _) => bail!(
            "--pod-cidr-v6 {g} is not among Node {node_name}'s pod CIDRs [{}]",
            listed()
        ),
        (None, found) => found,
    };
    Ok((v4, v6))
}

fn as_v4(net: IpNet) -> Option<Ipv4Net> {
    match net.trunc() {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    }
}

fn as_v6(net: IpNet) -> Option<Ipv6Net> {
    match net.trunc() {
        IpNet::V6(n) => Some(n),
        IpNet::V4(_) => None,
    }
}

#[cfg(feature = "kube")]
fn kube_pod_cidrs(node_name: &str) -> anyhow::Result<Vec<IpNet>> {
    kube::own_pod_cidrs(node_name, POD_CIDR_WAIT)
}

#[cfg(not(feature = "kube"))]
fn kube_pod_cidrs(_: &str) -> anyhow::Result<Vec<IpNet>> {
    bail!("--kube: this netstackd was built without the `kube` feature")
}

/// The running node logic; dropping it stops the reconciler, which removes the masquerade
/// table (the routes stay for the next start).
#[derive(Debug)]
pub struct NodeTask {
    tx: mpsc::Sender<sync::Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NodeTask {
    fn drop(&mut self) {
        let _ = self.tx.send(sync::Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the node logic for a node with uplink `uplink` and pod CIDR `pod_cidr` (and
/// `pod_cidr_v6` when dual-stack): the reconciler thread (in the calling thread's network namespace) and the
/// configured node source.
pub fn start(
    config: &NodeConfig,
    uplink: &str,
    pod_cidr: Ipv4Net,
    pod_cidr_v6: Option<Ipv6Net>,
) -> anyhow::Result<NodeTask> {
    let (tx, rx) = mpsc::channel();
    let routes = match config.source {
        NodeSource::None => None,
        _ => Some(KernelRoutes::open().context("opening rtnetlink for host-gw routes")?),
    };
    let masquerade = config
        .masquerade
        .then(|| (sync::Nft, config.no_masquerade.clone()));
    HEALTH.start(
        config.source != NodeSource::None,
        config.source == NodeSource::Kube,
        config.masquerade,
    );
    let mut state = sync::NodeState::new(
        config.node_name.clone(),
        pod_cidr,
        pod_cidr_v6,
        routes,
        masquerade,
        config.guard.clone(),
        &REFUSALS,
    )
    .with_health(&HEALTH)
    .with_view(&VIEW);
    *VIEW.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::control::NodeStatus {
        enabled: config.source != NodeSource::None,
        source: match &config.source {
            NodeSource::None => "none".into(),
            NodeSource::File { path, .. } => format!("file {}", path.display()),
            NodeSource::Kube => "kube".into(),
        },
        node_name: config.node_name.clone(),
        masquerade: config.masquerade,
        forward_accept: config.forward_accept,
        ..Default::default()
    });
    if config.forward_accept {
        state = state.with_forward_rules(Box::new(sync::HostFirewall {
            uplink: uplink.to_owned(),
        }));
    }
    let resync = config.resync;
    let thread = std::thread::Builder::new()
        .name("node-sync".into())
        .spawn(move || sync::run(state, rx, resync))
        .context("starting the node reconciler")?;
    let task = NodeTask {
        tx: tx.clone(),
        thread: Some(thread),
    };
    match &config.source {
        NodeSource::None => {}
        NodeSource::File { path, poll } => {
            file::spawn(path.clone(), *poll, tx).context("starting the nodes-file reader")?
        }
        #[cfg(feature = "kube")]
        NodeSource::Kube => kube::spawn_watcher(tx, config.node_name.clone(), &HEALTH)
            .context("starting the node watcher")?,
        #[cfg(not(feature = "kube"))]
        NodeSource::Kube => bail!("--kube: this netstackd was built without the `kube` feature"),
    }
    tracing::info!(
        node = %config.node_name,
        source = ?config.source,
        masquerade = config.masquerade,
        forward_accept = config.forward_accept,
        "node logic running"
    );
    Ok(task)
}

/// `netstackd cleanup`'s part: removes netstack's host-gw routes, its nftables tables and its
/// forward accept rules (both families) from the calling thread's namespace. Returns a summary
/// line.
pub fn cleanup() -> anyhow::Result<String> {
    let routes = kernel::remove_all().context("removing netstack's host-gw routes")?;
    let mut line = format!("{routes} host-gw route(s) removed");
    for family in masquerade::Family::ALL {
        let table = match masquerade::remove(family) {
            Ok(true) => "removed",
            Ok(false) => "was absent",
            // No nft binary: there can be no table of ours either.
            Err(masquerade::NftError::Spawn { .. }) => "was absent (no nft)",
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("removing nftables table {} {NFT_TABLE}", family.nft())
                })
            }
        };
        line += &format!(", nftables table {} {NFT_TABLE} {table}", family.nft());
    }
    for family in masquerade::Family::ALL {
        let removed = firewall::remove_all(family).with_context(|| {
            format!(
                "removing the forward accept rules from {} {}",
                family.nft(),
                firewall::CHAIN
            )
        })?;
        let tool = match family {
            masquerade::Family::V4 => "iptables",
            masquerade::Family::V6 => "ip6tables",
        };
        line += &format!(", {removed} {tool} {} rule(s) removed", firewall::CHAIN);
    }
    let removed = firewall::remove_uplink_rules()
        .context("removing the uplink accept rules from other tables' forward chains")?;
    line += &format!(", {removed} nftables forward rule(s) removed");
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn parse(args: &[&str]) -> Result<NodeConfig, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("netstackd").chain(args.iter().copied()))
            .map(|c| c.node.config())
    }

    #[test]
    fn masquerade_is_on_by_default_and_its_exemptions_come_from_the_flags() {
        let config = parse(&[]).unwrap();
        assert!(config.masquerade);
        assert!(config.forward_accept, "on by default, as flannel's");
        assert!(!parse(&["--forward-accept=false"]).unwrap().forward_accept);
        assert!(config.no_masquerade.is_empty());
        assert_eq!(config.source, NodeSource::None);
        assert!(!parse(&["--masquerade=false"]).unwrap().masquerade);
        // The DaemonSet passes the ConfigMap's values: an empty key means none.
        let config = parse(&[
            "--kube",
            "--cluster-cidr=",
            "--service-cidr=10.96.0.7/12,fd00:10:96::/112",
        ])
        .unwrap();
        assert_eq!(config.source, NodeSource::Kube);
        assert_eq!(
            config.no_masquerade,
            nets(&["10.96.0.0/12", "fd00:10:96::/112"])
        );
        assert_eq!(
            config.guard,
            RouteGuard {
                cluster: vec![],
                service: nets(&["10.96.0.0/12", "fd00:10:96::/112"]),
                min_prefix_v4: 16,
                min_prefix_v6: 48,
            },
            "the route guard: the same CIDRs, the default minimum prefixes"
        );
        let config = parse(&[
            "--cluster-cidr=10.244.0.0/16",
            "--node-cidr-min-prefix=20",
            "--node-cidr-min-prefix-v6=64",
        ])
        .unwrap();
        assert_eq!(config.guard.cluster, nets(&["10.244.0.0/16"]));
        assert_eq!(
            (config.guard.min_prefix_v4, config.guard.min_prefix_v6),
            (20, 64)
        );
        assert!(parse(&["--node-cidr-min-prefix=33"]).is_err());
        assert!(parse(&["--node-cidr-min-prefix-v6=129"]).is_err());
        let err = parse(&["--cluster-cidr=10.244.0.0/16,bogus"]).unwrap_err();
        assert!(err.to_string().contains("\"bogus\" is not a CIDR"), "{err}");
        assert!(parse(&["--kube", "--nodes-file=/x"]).is_err(), "one source");
    }

    #[test]
    fn pod_cidrs_come_from_the_node_per_family() {
        // (what, the Node's spec.podCIDRs, --pod-cidr, --pod-cidr-v6, Ok((v4, v6)) or error text)
        type Case = (
            &'static str,
            Vec<IpNet>,
            Option<&'static str>,
            Option<&'static str>,
            Result<(&'static str, Option<&'static str>), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "IPv4-only node",
                nets(&["10.244.1.0/24"]),
                None,
                None,
                Ok(("10.244.1.0/24", None)),
            ),
            (
                "dual-stack node: both, whatever the order",
                nets(&["fd00:10:244:1::/64", "10.244.1.0/24"]),
                None,
                None,
                Ok(("10.244.1.0/24", Some("fd00:10:244:1::/64"))),
            ),
            (
                "flags that agree with the Node",
                nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
                Some("10.244.1.0/24"),
                Some("fd00:10:244:1::/64"),
                Ok(("10.244.1.0/24", Some("fd00:10:244:1::/64"))),
            ),
            (
                "a --pod-cidr the Node does not have",
                nets(&["10.244.1.0/24"]),
                Some("10.244.9.0/24"),
                None,
                Err("--pod-cidr 10.244.9.0/24 is not among Node n's pod CIDRs [10.244.1.0/24]"),
            ),
            (
                "a --pod-cidr-v6 the Node does not have",
                nets(&["10.244.1.0/24"]),
                None,
                Some("fd00:9::/64"),
                Err("--pod-cidr-v6 fd00:9::/64 is not among Node n's pod CIDRs"),
            ),
            (
                "IPv6-only node",
                nets(&["fd00:10:244:1::/64"]),
                None,
                None,
                Err("Node n has no IPv4 pod CIDR ([fd00:10:244:1::/64])"),
            ),
        ];
        for (what, cidrs, v4, v6, want) in cases {
            let got = choose_pod_cidrs(
                "n",
                &cidrs,
                v4.map(|s| s.parse().unwrap()),
                v6.map(|s| s.parse().unwrap()),
            );
            match (got, want) {
                (Ok((g4, g6)), Ok((w4, w6))) => {
                    assert_eq!(g4.to_string(), w4, "{what}");
                    assert_eq!(g6.map(|n| n.to_string()).as_deref(), w6, "{what}");
                }
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
