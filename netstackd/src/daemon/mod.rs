//! The daemon: sets up the uplink, starts the dataplane, keeps the attachments and serves the
//! control socket.

#[cfg(feature = "metrics-http")]
mod http;
mod metrics;
mod procstat;
mod registry;
mod server;
mod uplink;
mod veth;

pub use registry::{Registry, RegistryError};
pub use veth::VethError;
pub use veth::DEFAULT_DP_NETNS;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use ipnet::Ipv4Net;

use crate::netlink::Netlink;
use crate::supervisor::DataplaneProcess;

/// How netstackd is set up (its command line).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The control socket path.
    pub socket: PathBuf,
    /// Where attachments are recorded.
    pub state_dir: PathBuf,
    /// This node's pod CIDR; its first address is the pods' gateway.
    pub pod_cidr: Ipv4Net,
    /// This node's IPv6 pod CIDR, if the pods are dual-stack; its first address is the pods'
    /// IPv6 gateway.
    pub pod_cidr_v6: Option<ipnet::Ipv6Net>,
    /// The uplink TUN's name in the host netns.
    pub uplink: String,
    /// Dataplane workers (one queue of every TAP each).
    pub workers: usize,
    /// The uplink MTU in bytes.
    pub uplink_mtu: u32,
    /// Segment every GSO super-frame in software on its way out instead of passing it whole
    /// (`--gso segment`: for kernels whose TAP/TUN refuse GSO writes, and for measuring).
    pub segment_gso: bool,
    /// Keep the service flow table (`--service-flows on`): replies of flows the uplink
    /// delivered go back to it.
    pub service_flows: bool,
    /// Move busy flows between workers (`--flow-balance on`).
    pub flow_balance: bool,
    /// Where to serve Prometheus metrics (any address; a non-loopback one is unauthenticated and
    /// logged as such); `None` disables the listener.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Node mode: host-gw routes to the other nodes, egress masquerade.
    pub node: crate::node::NodeConfig,
    /// The named network namespace for veth-mode peers (created at the first veth attach).
    pub dp_netns: PathBuf,
    /// veth-mode sockets receive through a TPACKET_V2 ring (`--veth-rx ring`), not recvmmsg.
    pub veth_rx_ring: bool,
    /// How TAP queues are read and written (`--tap-io`).
    pub tap_io: crate::dataplane::TapIo,
    /// BIG TCP for veth-mode pods: their GSO/GRO size in bytes (`--big-tcp-size` with
    /// `--big-tcp`), 0 when off.
    pub big_tcp_bytes: u32,
    /// The uid and gid the dataplane child runs as (`--dataplane-user`).
    pub dataplane_user: crate::dataplane::child::DataplaneUser,
    /// Where VM pods' vhost-user sockets are bound (`--vhost-dir`).
    pub vhost_dir: PathBuf,
    /// The time slice the dataplane's threads ask the scheduler for (`--worker-slice-us`);
    /// `None`: the kernel's default.
    pub worker_slice: Option<std::time::Duration>,
}

/// Gives this thread the dataplane's time slice before the dataplane child is started: a thread
/// inherits its creator's slice across fork and exec, so the child and all its workers have
/// it, and so does the supervisor's monitor thread (started after this), which restarts the
/// child. The supervisor's own threads keep the default unless started later; they are idle
/// but for control requests.
fn set_worker_slice(slice: Option<std::time::Duration>) {
    let Some(slice) = slice else {
        return;
    };
    match crate::sys::sched::set_slice(Some(slice)) {
        Ok(()) => tracing::info!(
            slice_us = slice.as_micros() as u64,
            "the dataplane's threads ask for a short time slice"
        ),
        // A kernel before 6.12 accepts and ignores it; only a refusal is worth a line.
        Err(e) => tracing::warn!("--worker-slice-us: sched_setattr refused ({e}): default slice"),
    }
}

/// Where VM pods' vhost-user sockets are bound unless `--vhost-dir` says otherwise.
pub const DEFAULT_VHOST_DIR: &str = "/run/netstack/vhost";

/// Checks that a socket of any VM pod fits a unix socket path in `vhost_dir` (an absolute
/// directory).
pub fn check_vhost_dir(vhost_dir: &Path) -> anyhow::Result<()> {
    use crate::control::{vhost_socket_name, AttachmentKey, MAX_SOCKET_PATH};
    if !vhost_dir.is_absolute() {
        bail!(
            "--vhost-dir {} is not an absolute path",
            vhost_dir.display()
        );
    }
    let any = vhost_socket_name(&AttachmentKey {
        container_id: String::new(),
        ifname: String::new(),
    });
    let longest = vhost_dir.join(any).as_os_str().len();
    if longest > MAX_SOCKET_PATH {
        bail!(
            "--vhost-dir {} is too long: its sockets' paths would be {longest} bytes, a unix socket's at most {MAX_SOCKET_PATH}",
            vhost_dir.display()
        );
    }
    Ok(())
}

impl DaemonConfig {
    /// The pods' gateway: the first host address of the pod CIDR.
    pub fn gateway(&self) -> anyhow::Result<Ipv4Addr> {
        if self.pod_cidr.prefix_len() > 30 {
            bail!(
                "pod CIDR {} is too small: a gateway and at least one pod need a /30 or larger",
                self.pod_cidr
            );
        }
        let net = u32::from(self.pod_cidr.network());
        Ok(Ipv4Addr::from(net + 1))
    }

    /// The pods' IPv6 gateway: the first address after the IPv6 pod CIDR's network address.
    pub fn gateway_v6(&self) -> anyhow::Result<Option<std::net::Ipv6Addr>> {
        let Some(cidr) = self.pod_cidr_v6 else {
            return Ok(None);
        };
        if cidr.prefix_len() > 126 {
            bail!("IPv6 pod CIDR {cidr} is too small: a gateway and at least one pod need a /126 or larger");
        }
        Ok(Some(std::net::Ipv6Addr::from(
            u128::from(cidr.network()) + 1,
        )))
    }
}

/// Most dataplane workers: every pod's TAP, and the uplink TUN, has one queue per worker, and
/// the kernel gives a TAP at most this many (`MAX_TAP_QUEUES`).
pub const MAX_WORKERS: usize = crate::sys::tap::MAX_QUEUES;

/// Most workers netstackd starts when `--workers` is not given, however many CPUs it may use.
///
/// Why a cap, and why 16: a worker costs every pod one TAP queue, and that cost is paid per
/// pod whether or not the pod ever sends a frame: a queue's ring of [`crate::sys::tap::TXQUEUELEN`]
/// (2048) pointers, 16 KiB of kernel memory, one descriptor in the supervisor and one in the
/// dataplane child, an epoll registration, and one more `TUNSETIFF` and hand-off in every CNI
/// ADD (ADD latency grows with the queue count: see `e2e/bench`). At 110 pods (kubelet's
/// default `maxPods`) 96 workers would pin 165 MiB of rings and hold 21 000 descriptors.
/// What the queues buy is parallelism across flows only: the kernel puts each flow on one
/// queue, so one flow never goes faster than one worker, and one worker already moves
/// ~100 Gbit/s of 64 KB GSO frames or 200–500 kpps of MTU frames (research/performance.md §7):
/// 16 of them outrun a node's NIC and the pods' own TCP stacks, which are the bottleneck
/// once frames are 64 KB. A node that needs more says so with `--workers` (up to
/// [`MAX_WORKERS`]).
pub const DEFAULT_WORKERS_MAX: usize = 16;

/// The default worker count: one per CPU this process may run on — its affinity mask, which
/// the kernel keeps inside the cgroup's cpuset, so a DaemonSet pinned to a few CPUs gets as
/// many workers — capped at [`DEFAULT_WORKERS_MAX`]. A CPU quota (`cpu.max`) does not lower it:
/// a quota limits time, not how many CPUs the threads may spread over; pass `--workers` to
/// match a quota.
pub fn default_workers() -> usize {
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                .count()
        })
        .unwrap_or(1);
    allowed.clamp(1, DEFAULT_WORKERS_MAX)
}

/// The capabilities the supervisor keeps: netlink and TUNSETIFF (NET_ADMIN), setns into pod
/// namespaces (SYS_ADMIN), packet sockets for veth mode (NET_RAW).
pub const SUPERVISOR_CAPS: [caps::Capability; 4] = [
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_NET_RAW,
    // The dataplane runs as another user: signalling it (killing a hung or stopped child)
    // needs CAP_KILL.
    caps::Capability::CAP_KILL,
];

/// Kept besides [`SUPERVISOR_CAPS`] when netstackd starts with it: `CAP_CHOWN` gives a VM
/// pod's socket to the group `vhostSocketGroup` names (netstackd is no member of it). Without
/// it (a bounding set that lacks it) netstackd runs, and such an attach fails naming the
/// socket (EPERM).
pub const OPTIONAL_SUPERVISOR_CAPS: [caps::Capability; 1] = [caps::Capability::CAP_CHOWN];

/// Runs netstackd until a termination signal arrives.
///
/// Start-up order: drop every capability but [`SUPERVISOR_CAPS`]; the uplink (persistent, so
/// a restart keeps the node's route to the pods); forwarding; the dataplane child; re-open the
/// attachments recorded in the state dir; and only then put the control socket in place.
pub fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let gateway = config.gateway()?;
    check_vhost_dir(&config.vhost_dir)?;
    if let Some(addr) = config.metrics_addr.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            %addr,
            "the metrics listener is not on loopback: /metrics, /healthz and /readyz answer anyone who reaches {addr}, unauthenticated"
        );
    }
    // Every pod TAP and the uplink TUN get one queue per worker.
    if config.workers == 0 || config.workers > MAX_WORKERS {
        bail!(
            "--workers must be between 1 and {MAX_WORKERS} (the kernel's limit of queues per TAP, MAX_TAP_QUEUES), not {}",
            config.workers
        );
    }
    // Before anything else, so every dataplane child inherits the reduced bounding set too.
    let mut keep = SUPERVISOR_CAPS.to_vec();
    for cap in OPTIONAL_SUPERVISOR_CAPS {
        if caps::has_cap(None, caps::CapSet::Permitted, cap).unwrap_or(false) {
            keep.push(cap);
        }
    }
    crate::sys::process::restrict_capabilities(&keep, &crate::sys::process::BECOME_USER_CAPS)
        .context("dropping capabilities")?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    // Before the dataplane child starts, so it inherits the raised limit.
    raise_nofile_limit(&config);
    let signals = server::block_termination_signals()?;
    veth::tidy_netns_dirs(&config.dp_netns);

    let queues = uplink::create(&config, gateway).context("setting up the uplink")?;
    enable_ipv4_forwarding()?;
    if config.pod_cidr_v6.is_some() {
        enable_ipv6_forwarding()?;
    }
    let tap_uring =
        crate::dataplane::resolve_tap_io(config.tap_io).map_err(|e| anyhow::anyhow!(e))?;
    set_worker_slice(config.worker_slice);
    let options = crate::dataplane::WorkerOptions {
        segment_gso: config.segment_gso,
        big_tcp_bytes: config.big_tcp_bytes,
        service_flows: config.service_flows,
        flow_balance: config.flow_balance,
    };
    let dataplane = DataplaneProcess::start(
        queues,
        gateway,
        config.uplink_mtu,
        options,
        tap_uring,
        config.dataplane_user,
    )
    .context("starting the dataplane")?;
    tracing::info!(
        uplink = %config.uplink,
        pod_cidr = %config.pod_cidr,
        %gateway,
        workers = config.workers,
        dataplane_pid = dataplane.child().0,
        "dataplane running"
    );
    let registry = Arc::new(Registry::new(config.clone(), gateway, dataplane));
    let (restored, cleaned, failed) = registry.restore();
    if restored + cleaned + failed > 0 {
        tracing::info!(restored, cleaned, failed, "state dir re-read");
    }
    registry
        .spawn_restore_retry()
        .context("starting the restore retry thread")?;
    let listener = server::bind(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), "ready");
    if let Some(addr) = config.metrics_addr {
        serve_metrics(addr, &registry)?;
    }
    server::spawn_accept_loop(listener, Arc::clone(&registry))?;
    // Dropped on return: stops the node logic (the masquerade table goes with it).
    let _node = crate::node::start(
        &config.node,
        &config.uplink,
        config.pod_cidr,
        config.pod_cidr_v6,
    )?;
    let sig = server::wait_for_termination(&signals);
    tracing::info!("{sig}: shutting down; pod TAPs and the uplink stay for the next start");
    let _ = std::fs::remove_file(&config.socket);
    registry.dataplane().shutdown();
    Ok(())
}

/// Starts the metrics HTTP listener on `addr`.
#[cfg(feature = "metrics-http")]
fn serve_metrics(addr: std::net::SocketAddr, registry: &Arc<Registry>) -> anyhow::Result<()> {
    let metrics = http::bind(addr)?;
    let bound = metrics.local_addr()?;
    registry.set_metrics_addr(bound);
    http::serve(metrics, Arc::clone(registry))?;
    tracing::info!(%bound, "metrics on http://{bound}/metrics");
    Ok(())
}

/// Refuses a metrics address: this build has no HTTP listener.
#[cfg(not(feature = "metrics-http"))]
fn serve_metrics(addr: std::net::SocketAddr, _: &Arc<Registry>) -> anyhow::Result<()> {
    bail!("--metrics-addr {addr}: netstackd was built without the metrics-http feature; pass --metrics-addr off (`netstackd ctl metrics` still works)")
}

/// `netstackd cleanup`: removes everything netstack created on this node (for uninstall):
/// every recorded pod TAP, veth or VM pod placeholder (in its netns) and VM pod socket (in
/// `vhost_dir`), the state files, the namespace of the veth peers, the uplink and the socket.
/// Refuses while a netstackd answers on the socket.
pub fn cleanup(
    socket: &Path,
    state_dir: &Path,
    uplink: &str,
    dp_netns: &Path,
    vhost_dir: &Path,
) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "netstackd is running on {}: stop it before cleaning up",
            socket.display()
        );
    }
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(state_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                if let Ok(a) = std::fs::read(&path)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Ok(serde_json::from_slice::<crate::control::Attachment>(&b)?))
                {
                    let ifname = a.key.ifname.clone();
                    let mode = a.mode;
                    let gone = crate::netns::run_in_netns(&a.netns, move || {
                        let nl = crate::netlink::Netlink::new()?;
                        match nl.link_info(&ifname)? {
                            Some(i) if mode.is_device_kind(i.kind.as_deref()) => {
                                nl.del_link(&ifname)
                            }
                            _ => Ok(false),
                        }
                    });
                    if a.mode == crate::control::LinkMode::VhostUser {
                        let sock = vhost_dir.join(crate::control::vhost_socket_name(&a.key));
                        let is_socket = std::fs::symlink_metadata(&sock).is_ok_and(|m| {
                            std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())
                        });
                        if is_socket {
                            let _ = std::fs::remove_file(&sock);
                        }
                    }
                    let peer_gone = match a.peer.as_deref() {
                        Some(peer) => veth::delete_peer(dp_netns, peer).unwrap_or(false),
                        None => false,
                    };
                    if matches!(gone, Ok(Ok(true))) || peer_gone {
                        removed += 1;
                    }
                }
            }
            if name.ends_with(".json") || name.ends_with(".json.tmp") {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    // Takes any peer without a state file with it; the namespaces hidden by an older
    // netstack's self-bind of its directory go too.
    veth::tidy_netns_dirs(dp_netns);
    let mut dp_removed = crate::netns::remove_named_netns(dp_netns)
        .with_context(|| format!("removing {}", dp_netns.display()))?;
    let legacy = Path::new(veth::LEGACY_DP_NETNS);
    if dp_netns != legacy {
        dp_removed |= crate::netns::remove_named_netns(legacy)
            .with_context(|| format!("removing {}", legacy.display()))?;
    }
    veth::remove_default_dir(dp_netns);
    // Only when empty: anything else in it is not netstack's.
    let _ = std::fs::remove_dir(vhost_dir);
    let nl = Netlink::new().context("opening rtnetlink")?;
    let uplink_removed = nl
        .del_link(uplink)
        .with_context(|| format!("deleting {uplink}"))?;
    let _ = std::fs::remove_file(socket);
    println!(
        "netstack cleanup: {removed} pod TAP(s)/veth(s) removed, uplink {uplink} {}, veth namespace {} {}",
        if uplink_removed {
            "removed"
        } else {
            "was absent"
        },
        dp_netns.display(),
        if dp_removed { "removed" } else { "was absent" }
    );
    println!("netstack cleanup: {}", crate::node::cleanup()?);
    Ok(())
}

/// Descriptors netstackd needs besides the pods' (uplink queues, sockets, threads' netlink
/// sockets, the control and metrics connections).
const FD_BASE: u64 = 256;
/// Pods planned for when fewer are recorded: above kubelet's default `maxPods` (110).
const PLANNED_PODS: u64 = 256;

/// Descriptors a dataplane worker holds besides the pods' queues: its uplink queue, epoll,
/// wake-up eventfd and timerfd (1030 in the idle child at 256 workers).
const FDS_PER_WORKER: u64 = 4;

/// Descriptors each of netstackd's processes (the supervisor and the dataplane child each
/// hold every pod's queues) needs for `pods` pods with `workers` workers: one TAP queue or
/// packet socket per worker per pod, [`FDS_PER_WORKER`] more per worker, plus [`FD_BASE`].
pub fn nofile_need(pods: u64, workers: u64) -> u64 {
    FD_BASE + (pods.max(PLANNED_PODS) + FDS_PER_WORKER) * workers
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (raising the hard limit needs
/// CAP_SYS_RESOURCE, which netstackd does not keep) and warns, with the numbers, when that is
/// short of what the recorded pods (at least [`PLANNED_PODS`]) × workers need. A pod whose
/// restore runs out of descriptors shows as `restore_failed` and is retried.
fn raise_nofile_limit(config: &DaemonConfig) {
    use crate::sys::rlimit;
    let recorded = std::fs::read_dir(&config.state_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count() as u64
        })
        .unwrap_or(0);
    let need = nofile_need(recorded, config.workers as u64);
    let limit = match rlimit::nofile() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("reading RLIMIT_NOFILE: {e}");
            return;
        }
    };
    let mut soft = limit.soft;
    if limit.soft < limit.hard {
        match rlimit::set_nofile(rlimit::Limit {
            soft: limit.hard,
            hard: limit.hard,
        }) {
            Ok(()) => soft = limit.hard,
            Err(e) => tracing::warn!(
                soft = limit.soft,
                hard = limit.hard,
                "raising the soft RLIMIT_NOFILE to the hard limit: {e}"
            ),
        }
    }
    if soft < need {
        tracing::warn!(
            limit = soft,
            hard = limit.hard,
            need,
            recorded_pods = recorded,
            workers = config.workers,
            "RLIMIT_NOFILE is short: {soft} descriptors, {need} needed for (max({recorded} recorded, {PLANNED_PODS}) pods + {FDS_PER_WORKER}) x {} workers + {FD_BASE}; pods beyond it fail to attach or restore (restore_failed). Raise the hard limit (LimitNOFILE=, ulimit -Hn) before starting netstackd",
            config.workers
        );
    } else {
        tracing::info!(limit = soft, need, "RLIMIT_NOFILE");
    }
}

/// Routes IPv6 between the uplink and the node's other links. Note that with forwarding on,
/// Linux ignores router advertisements on links whose `accept_ra` is 1 (set it to 2 where the
/// node configures itself by SLAAC).
fn enable_ipv6_forwarding() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
        .context("enabling net.ipv6.conf.all.forwarding")
}

fn enable_ipv4_forwarding() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling net.ipv4.ip_forward")
}

/// Gives `name` (link `index`) the `noqueue` root qdisc unless it has it: a TUN or TAP that
/// an older netstack brought up keeps the kernel's default, a `pfifo_fast` for each of its 256
/// transmit queues (12 MiB), until then. Problems are logged: the qdisc only costs memory.
pub(crate) fn no_qdisc(nl: &Netlink, index: u32, name: &str) {
    match nl.root_qdisc(index) {
        Ok(Some(kind)) if kind == "noqueue" => {}
        Ok(kind) => match nl.set_noqueue_root(index, name) {
            Ok(()) if kind.as_deref().is_some_and(|k| k != "noop") => {
                tracing::info!(
                    link = name,
                    was = kind.as_deref(),
                    "qdisc replaced by noqueue"
                )
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(link = name, "{e}; it keeps the kernel's default qdisc"),
        },
        Err(e) => tracing::warn!(link = name, "{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_need_counts_each_workers_own() {
        // 256 planned pods and 4 of the worker's own, per worker, and the base.
        assert_eq!(nofile_need(0, 1), FD_BASE + 260);
        assert_eq!(nofile_need(300, 256), FD_BASE + 304 * 256);
    }

    #[test]
    fn default_workers_follow_the_affinity_mask_and_the_cap() {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        let me = Pid::from_raw(0);
        let before = sched_getaffinity(me).unwrap();
        let allowed = (0..CpuSet::count())
            .filter(|&c| before.is_set(c).unwrap())
            .count();
        assert_eq!(default_workers(), allowed.min(DEFAULT_WORKERS_MAX));
        // This thread on one CPU only: one worker.
        let first = (0..CpuSet::count())
            .find(|&c| before.is_set(c).unwrap())
            .unwrap();
        let mut one = CpuSet::new();
        one.set(first).unwrap();
        sched_setaffinity(me, &one).unwrap();
        let workers = default_workers();
        sched_setaffinity(me, &before).unwrap();
        assert_eq!(workers, 1);
    }
}
