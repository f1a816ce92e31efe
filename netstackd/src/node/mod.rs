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
//!   nftables table `ip netstack`.
//!
//! Sources (`file`, `kube`) fold what they see into whole node lists (`watch`) and send them
//! to one reconciler thread (`sync`), which computes the wanted routes (`routes`, no I/O)
//! and applies the difference (`kernel`, `masquerade`).

mod file;
mod kernel;
#[cfg(feature = "kube")]
mod kube;
mod list;
mod masquerade;
mod routes;
mod sync;
mod watch;

pub use kernel::{KernelRoutes, RouteError, RouteTable, ROUTE_PROTOCOL};
pub use list::{parse_node_list, NodeInfo, NodeListError};
pub use masquerade::TABLE as NFT_TABLE;
pub use routes::{desired_routes, plan, RouteChange, RouteMap, RoutePlan};
pub use watch::{NodeEvent, NodeFold};

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use ipnet::{IpNet, Ipv4Net};

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
    /// The cluster's pod CIDR(s), never masqueraded (comma-separated or repeated; every
    /// known node's pod CIDR is exempt anyway).
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// The cluster's service CIDR(s), never masqueraded.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub service_cidr: Vec<IpNet>,
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
    /// Cluster pod and service CIDRs, never masqueraded.
    pub no_masquerade: Vec<IpNet>,
    /// Interval of the full resync with the kernel.
    pub resync: Duration,
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
            no_masquerade: self
                .cluster_cidr
                .iter()
                .chain(&self.service_cidr)
                .map(|n| n.trunc())
                .collect(),
            resync: Duration::from_secs(self.resync_secs.max(1)),
        }
    }
}

/// How long `--kube` waits at start for the Node's pod CIDR.
pub const POD_CIDR_WAIT: Duration = Duration::from_secs(300);

/// netstackd's pod CIDR: `--pod-cidr` if given; with `--kube` the IPv4 one of the Node's
/// `spec.podCIDRs` (and `--pod-cidr`, if also given, must be one of them).
pub fn resolve_pod_cidr(config: &NodeConfig, given: Option<Ipv4Net>) -> anyhow::Result<Ipv4Net> {
    if config.source != NodeSource::Kube {
        return given.context("--pod-cidr is required (or --kube to read it from the Node)");
    }
    let cidrs = kube_pod_cidrs(&config.node_name)?;
    let v4 = cidrs.iter().find_map(|c| match c {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    });
    match (given, v4) {
        (Some(g), _) if cidrs.contains(&IpNet::V4(g.trunc())) => Ok(g.trunc()),
        (Some(g), _) => bail!(
            "--pod-cidr {g} is not among Node {}'s pod CIDRs {cidrs:?}",
            config.node_name
        ),
        (None, Some(n)) => {
            tracing::info!(node = %config.node_name, pod_cidr = %n, "pod CIDR from the Node");
            Ok(n)
        }
        (None, None) => bail!(
            "Node {} has no IPv4 pod CIDR ({cidrs:?}); netstack needs one",
            config.node_name
        ),
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

/// Starts the node logic for a node with pod CIDR `pod_cidr`: the reconciler thread (in the
/// calling thread's network namespace) and the configured node source.
pub fn start(config: &NodeConfig, pod_cidr: Ipv4Net) -> anyhow::Result<NodeTask> {
    let (tx, rx) = mpsc::channel();
    let routes = match config.source {
        NodeSource::None => None,
        _ => Some(KernelRoutes::open().context("opening rtnetlink for host-gw routes")?),
    };
    let masquerade = config
        .masquerade
        .then(|| (sync::Nft, config.no_masquerade.clone()));
    let state = sync::NodeState::new(config.node_name.clone(), pod_cidr, routes, masquerade);
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
        NodeSource::Kube => kube::spawn_watcher(tx).context("starting the node watcher")?,
        #[cfg(not(feature = "kube"))]
        NodeSource::Kube => bail!("--kube: this netstackd was built without the `kube` feature"),
    }
    tracing::info!(
        node = %config.node_name,
        source = ?config.source,
        masquerade = config.masquerade,
        "node logic running"
    );
    Ok(task)
}

/// `netstackd cleanup`'s part: removes netstack's host-gw routes and its nftables table from
/// the calling thread's namespace. Returns a summary line.
pub fn cleanup() -> anyhow::Result<String> {
    let routes = kernel::remove_all().context("removing netstack's host-gw routes")?;
    let table = match masquerade::remove() {
        Ok(true) => "removed",
        Ok(false) => "was absent",
        // No nft binary: there can be no table of ours either.
        Err(masquerade::NftError::Spawn { .. }) => "was absent (no nft)",
        Err(e) => return Err(e).context("removing netstack's nftables table"),
    };
    Ok(format!(
        "{routes} host-gw route(s) removed, nftables table ip {NFT_TABLE} {table}"
    ))
}
