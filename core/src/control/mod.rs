//! The control protocol between netstackd and its clients (the CNI plugin, the hook, tools).
//!
//! A message is a 4-byte big-endian length followed by that many bytes of JSON. File
//! descriptors (the TAP queues of an `attach`) travel as SCM_RIGHTS on the first bytes of the
//! request; when there are more than [`FDS_PER_FRAME`], the first ones go ahead in frames of
//! descriptors only (see `framing`). Every request gets exactly one reply; a malformed request gets `Reply::Error`.
//! Each message says the protocol version of its sender (see [`version`]).
#![forbid(unsafe_code)]

mod client;
mod framing;
#[cfg(any(test, feature = "testing"))]
pub mod v0_1_0;
pub mod version;

pub use client::{Client, ClientError};
pub use framing::{recv_message, recv_message_before, send_message, FramingError};
pub use version::{PROTOCOL_V1, PROTOCOL_VERSION};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// Where netstackd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/netstack/netstackd.sock";

/// Largest request or reply body accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most file descriptors one message may carry: one per TAP queue of a pod at the kernel's
/// queue limit, plus one (the dataplane's `init` carries an uplink queue per worker and a
/// memfd). More than [`FDS_PER_FRAME`] travel in several frames (see `framing`).
pub const MAX_FDS: usize = crate::sys::tap::MAX_QUEUES + 1;

/// Most file descriptors one frame carries. It is what every netstack before big machines
/// accepted in one message, so a message with this few goes out exactly as it always did, and
/// a newer plugin that talks to an older netstackd (which reports at most 63 workers) never
/// sends it a frame it would refuse.
pub const FDS_PER_FRAME: usize = 64;

/// Ends the message of an error that changed nothing and may go away on its own (the
/// dataplane was hung and is being restarted): the CNI plugin reports it as "try again later"
/// (CNI error code 11).
pub const RETRYABLE: &str = "(retryable)";

/// Begins the error reply of a connection refused because every place is taken by a request
/// in progress: the daemon read nothing from that connection, so the client may send the same
/// request again on a new one ([`Client`] does, for a while).
pub const BUSY: &str = "netstackd is busy";

/// Identifies one attachment: the CNI (container id, interface name) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface name inside the pod.
    pub ifname: String,
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// How a pod interface reaches netstackd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    /// A persistent multi-queue TAP in the pod netns; its queue fds come with `attach`.
    #[default]
    Tap,
    /// A veth pair: the pod's end in the pod netns, the peer in netstackd's own netns, read
    /// and written through AF_PACKET sockets netstackd opens itself.
    Veth,
    /// A VM pod: netstackd serves a vhost-user socket its VMM (QEMU, Cloud Hypervisor)
    /// connects to; the pod netns holds only a placeholder dummy interface with the pod's
    /// MAC and addresses (Kata reads them from it). Control protocol 3 on.
    #[serde(rename = "vhost-user")]
    VhostUser,
}

impl LinkMode {
    /// The name in configs and replies: `tap`, `veth` or `vhost-user`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Tap => "tap",
            LinkMode::Veth => "veth",
            LinkMode::VhostUser => "vhost-user",
        }
    }

    /// The rtnetlink kind of the pod's interface in this mode (`tun` for a TAP, `dummy` for
    /// a VM pod's placeholder).
    pub fn device_kind(self) -> &'static str {
        match self {
            LinkMode::Tap => "tun",
            LinkMode::Veth => "veth",
            LinkMode::VhostUser => "dummy",
        }
    }

    /// Is `kind` (an interface's rtnetlink kind) what this mode makes? Its
    /// [`device_kind`](Self::device_kind), or for a VM pod's placeholder also `ifb`, which the
    /// plugin makes on a kernel without the dummy driver.
    pub fn is_device_kind(self, kind: Option<&str>) -> bool {
        kind == Some(self.device_kind()) || (self == LinkMode::VhostUser && kind == Some("ifb"))
    }

    /// Does the pod's interface carry the alias [`VETH_ALIAS`] (how DEL tells ours from
    /// someone else's)? A veth's and a placeholder dummy's do; a TAP is told by its kind.
    pub fn has_alias(self) -> bool {
        self != LinkMode::Tap
    }

    /// Is this the default mode (left out of the JSON, which keeps TAP requests as before)?
    pub fn is_tap(&self) -> bool {
        *self == LinkMode::Tap
    }
}

impl std::fmt::Display for LinkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LinkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tap" => Ok(LinkMode::Tap),
            "veth" => Ok(LinkMode::Veth),
            "vhost-user" => Ok(LinkMode::VhostUser),
            other => Err(format!(
                "unknown link mode {other:?} (tap, veth or vhost-user)"
            )),
        }
    }
}

/// Is `id` a container id the CNI spec allows (`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)? The one rule
/// of the daemon, the plugin and the hook.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Is `name` an interface name the kernel accepts (`dev_valid_name`: 1 to 15 bytes, not `.`
/// or `..`, no '/', ':', NUL or whitespace, see [`ifname_problem`])? The one rule of the
/// daemon, the plugin and the hook.
pub fn valid_ifname(name: &str) -> bool {
    ifname_problem(name).is_none()
}

pub use crate::sys::ifname_problem;

/// The alias the plugin gives a pod's veth and a VM pod's placeholder dummy: how DEL and
/// netstackd tell a netstack device from someone else's.
pub const VETH_ALIAS: &str = "netstack";

/// The name of the veth peer of pod interface `key`: `nsv` and 12 hex digits of a hash of the
/// container id and interface name (15 bytes, a valid interface name), so the plugin and
/// netstackd derive the same unique name and a name says which attachment it belongs to.
pub fn veth_peer_name(key: &AttachmentKey) -> String {
    format!("nsv{:012x}", key_hash(key) >> 16)
}

/// FNV-1a (64 bits) of a key's container id and interface name: stable across builds and
/// platforms, unlike std's hasher.
fn key_hash(key: &AttachmentKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(key.ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The file name of the vhost-user socket of VM pod interface `key` in netstackd's vhost dir:
/// `vu` and the 16 hex digits of a hash of the container id and interface name, then `.sock`
/// (23 bytes). A container id can be 64 bytes and more, and a unix socket path at most 107:
/// the name keeps it out of the path, so any vhost dir of up to 83 bytes fits.
pub fn vhost_socket_name(key: &AttachmentKey) -> String {
    format!("vu{:016x}.sock", key_hash(key))
}

/// Longest path a unix socket can be bound at (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The mode of a VM pod's socket unless the attachment names one (only root connects).
pub const DEFAULT_VHOST_SOCKET_MODE: u32 = 0o600;

/// Is `mode` a socket mode netstackd applies: permission bits only, read-write for its owner
/// (root), who must be able to connect, and nothing for other users (a frontend that connects
/// is the pod's VM, with its MAC and addresses)? A problem says what is wrong.
pub fn vhost_socket_mode_problem(mode: u32) -> Option<String> {
    if mode & !0o777 != 0 {
        return Some(format!(
            "socket mode {mode:#o} has bits other than permissions"
        ));
    }
    if mode & 0o600 != 0o600 {
        return Some(format!(
            "socket mode {mode:#o} does not let its owner read and write"
        ));
    }
    if mode & 0o007 != 0 {
        // Whoever connects first is the pod's VMM: it sends and receives as the pod.
        return Some(format!(
            "socket mode {mode:#o} lets any user connect and act as the pod's VM (give a group access instead)"
        ));
    }
    None
}

/// Everything netstackd needs to serve one pod interface; the queue fds travel beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Which pod interface this is.
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// The pod's network namespace path (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The pod interface's MAC: the only source MAC the pod may send from.
    pub mac: MacAddr,
    /// The pod's addresses with prefix length: the only source IPs it may send from.
    pub ips: Vec<IpNet>,
    /// The gateways the pod routes through (netstackd answers for them).
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    /// The pod interface MTU in bytes.
    pub mtu: u32,
    /// How many TAP queue fds accompany the request (0 in veth and vhost-user mode:
    /// netstackd opens its own packet sockets, or its VM pod's socket).
    pub queues: usize,
    /// Orchestrator metadata (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Shaping of the pod's traffic, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    /// How the interface reaches netstackd (absent: `tap`).
    #[serde(default, skip_serializing_if = "LinkMode::is_tap")]
    pub mode: LinkMode,
    /// veth mode: the peer's name, [`veth_peer_name`] of the key. The plugin leaves the peer
    /// in the pod netns; netstackd moves it into its own netns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// vhost-user mode: the permission bits of the pod's socket (absent:
    /// [`DEFAULT_VHOST_SOCKET_MODE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket_mode: Option<u32>,
    /// vhost-user mode: the group the pod's socket belongs to (absent: root's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket_group: Option<u32>,
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the daemon ready, and how is it set up.
    Status,
    /// Take over a pod interface; the request carries its TAP queue fds.
    Attach(Attachment),
    /// Release a pod interface. Succeeds when it is not attached.
    Detach(AttachmentKey),
    /// Per-pod counters.
    Stats,
    /// Every attachment, without counters.
    List,
    /// Prometheus text exposition of every metric.
    Metrics,
    /// Start a packet capture of one pod interface; the reply carries the read end of a pipe
    /// that yields pcap records (no file header) of the pod's frames in both directions.
    Capture(CaptureRequest),
    /// Take a pod interface out of quarantine: the frames its queues hold are discarded and
    /// the dataplane serves it again. An error when it is not quarantined.
    Release(AttachmentKey),
    /// Node mode's view: pod CIDRs, host-gw routes, masquerade, forward rules, health.
    Node,
}

/// What to capture, and when to stop on the daemon's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    /// The pod interface.
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// Bytes kept of each frame (at most [`MAX_CAPTURE_SNAPLEN`]).
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    /// Frames after which the daemon stops capturing (0: [`MAX_CAPTURE_PACKETS`]).
    #[serde(default)]
    pub max_packets: u64,
    /// Seconds after which the daemon stops capturing (0: [`MAX_CAPTURE_SECONDS`]).
    #[serde(default)]
    pub max_seconds: u64,
    /// Keep only the frames this filter matches (`host ADDR`, `port N`, `tcp|udp|icmp|
    /// icmp6|arp`, joined by `and`); empty: all. A daemon older than the filter ignores it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter: String,
}

/// Largest snapshot length: a record must fit one atomic pipe write (PIPE_BUF) with its header.
pub const MAX_CAPTURE_SNAPLEN: u32 = 4096 - 16;
/// Daemon-side cap on frames per capture.
pub const MAX_CAPTURE_PACKETS: u64 = 1_000_000;
/// Daemon-side cap on a capture's duration.
pub const MAX_CAPTURE_SECONDS: u64 = 3600;

fn default_snaplen() -> u32 {
    MAX_CAPTURE_SNAPLEN
}

/// One attachment in the `list` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// The attachment.
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// Its netns path.
    pub netns: PathBuf,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its addresses.
    pub ips: Vec<IpNet>,
    /// Link mode (`tap`, `veth` or `vhost-user` on the wire).
    pub mode: LinkMode,
    /// Whether the dataplane serves it (see [`PodState`]).
    pub state: PodState,
    /// Why the pod is quarantined, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_reason: Option<String>,
    /// Orchestrator metadata (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub labels: BTreeMap<String, String>,
    /// Why the pod is not served (with [`RESTORE_FAILED`]: the last restore attempt's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// vhost-user mode: the path of the pod's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<PathBuf>,
}

/// Where an attachment stands, as `ctl list` and the plugin's CHECK see it. On the wire the
/// snake_case names v0.1.0 used (`attached`, `pending`, `quarantined`, `restore_failed`);
/// a state this build does not know (from a newer daemon) reads as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// The dataplane serves it.
    Attached,
    /// Recorded, waiting for the dataplane (it is restarting).
    Pending,
    /// Kept from the dataplane (see `quarantine_reason`).
    Quarantined,
    /// A recorded pod netstackd could not serve again after a restart: its state file is kept
    /// and the restore retried until it works or the pod is gone (`error` says why).
    RestoreFailed,
    /// A state of a newer daemon.
    #[serde(other)]
    Unknown,
}

impl PodState {
    /// The name on the wire and in `ctl list`.
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Attached => "attached",
            PodState::Pending => "pending",
            PodState::Quarantined => "quarantined",
            PodState::RestoreFailed => RESTORE_FAILED,
            PodState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for PodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire name of [`PodState::RestoreFailed`], for messages.
pub const RESTORE_FAILED: &str = "restore_failed";

/// One host-gw route node mode installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRoute {
    /// The peer node whose pod CIDR it is ("" when no listed node has it any more).
    pub node: String,
    /// The peer node's pod CIDR.
    pub cidr: IpNet,
    /// The next hop: the peer node's address.
    pub via: IpAddr,
}

/// One readiness check of node mode (as `/readyz` shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCheck {
    /// What is checked (`node source`, `routes`, `masquerade`).
    pub what: String,
    /// Whether it passes.
    pub ok: bool,
    /// Why, in a few words.
    pub detail: String,
}

/// The daemon's answer to `node`: what node mode has in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Whether node mode runs (a node source: `--nodes-file` or `--kube`).
    pub enabled: bool,
    /// Where the node list comes from: `none`, `file PATH` or `kube`.
    pub source: String,
    /// This node's name in the node list.
    pub node_name: String,
    /// This node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// The host-gw routes in place, by pod CIDR.
    pub routes: Vec<NodeRoute>,
    /// Whether egress masquerade is on.
    pub masquerade: bool,
    /// The nftables tables written (`ip netstack`, `ip6 netstack`).
    pub masquerade_tables: Vec<String>,
    /// The no-masquerade set written, every family.
    pub no_masquerade: Vec<IpNet>,
    /// Whether the forward accept rules are kept.
    pub forward_accept: bool,
    /// The pod CIDRs whose forward accept rules are in place.
    pub forward_rules: Vec<IpNet>,
    /// Readiness checks; ready when all pass.
    pub health: Vec<NodeCheck>,
    /// When the reconciler last synced (seconds since the Unix epoch); none before the first.
    pub last_sync_unix: Option<u64>,
    /// What failed at the last sync, if anything.
    pub last_error: Option<String>,
}

/// The daemon's answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// netstackd's version and the commit it was built from (`0.1.0 (commit 0123456789ab)`).
    pub version: String,
    /// Dataplane workers; the plugin creates one TAP queue per worker.
    pub workers: usize,
    /// The uplink device in the host netns.
    pub uplink: String,
    /// The node's pod CIDR.
    pub pod_cidr: IpNet,
    /// The node's IPv6 pod CIDR, when dual-stack (the install step writes both into the
    /// conflist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<IpNet>,
    /// The pods' gateway address (held by the uplink).
    pub gateway: IpAddr,
    /// The network namespace netstackd keeps the veth peers of veth-mode pods in (the plugin
    /// creates it at the first veth ADD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_netns: Option<PathBuf>,
    /// How veth-mode packet sockets receive: `mmsg` or `ring` (`--veth-rx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth_rx: Option<String>,
    /// BIG TCP for veth-mode pods (`--big-tcp`): the GSO/GRO size in bytes the plugin gives a
    /// new veth pod's eth0 and its peer. Absent when off (and from daemons before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub big_tcp: Option<u32>,
    /// Where VM pods' vhost-user sockets are bound (`--vhost-dir`; protocol 3 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_dir: Option<PathBuf>,
    /// How the dataplane reads and writes TAP queues: `uring` (a restricted io_uring per
    /// worker) or `readv` (`--tap-io`); absent from earlier daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_io: Option<String>,
    /// Attachments currently served.
    pub attachments: usize,
    /// Where Prometheus metrics are served, if anywhere.
    #[serde(default)]
    pub metrics: Option<String>,
    /// The dataplane process (absent while it restarts).
    #[serde(default)]
    pub dataplane_pid: Option<u32>,
    /// Times the dataplane was restarted.
    #[serde(default)]
    pub dataplane_restarts: u64,
    /// Quarantined pod interfaces (`container_id/ifname`): the dataplane does not serve them.
    #[serde(default)]
    pub quarantined: Vec<String>,
}

/// Counters of one pod interface (or of the uplink), summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Frames received from the pod.
    pub rx_packets: u64,
    /// Bytes received from the pod (Ethernet frames, without the virtio-net header).
    pub rx_bytes: u64,
    /// Frames delivered to the pod.
    pub tx_packets: u64,
    /// Bytes delivered to the pod.
    pub tx_bytes: u64,
    /// Frames dropped, by reason.
    pub drops: BTreeMap<String, u64>,
    /// GSO super-frames received and forwarded whole (a subset of rx_packets).
    #[serde(default)]
    pub rx_gso_packets: u64,
    /// GSO super-frames for this link segmented in software because the link refused them
    /// whole (0 while GSO passes through end to end).
    #[serde(default)]
    pub tx_gso_segmented: u64,
    /// BIG TCP frames received (GSO frames longer than 64 KiB, `--big-tcp`; a subset of
    /// rx_gso_packets).
    #[serde(default)]
    pub rx_big_tcp_packets: u64,
    /// BIG TCP frames for this link cut into GSO frames of at most 64 KiB, because the link
    /// (a TAP, the uplink TUN, a VM) takes no larger.
    #[serde(default)]
    pub tx_big_tcp_chunked: u64,
    /// Frames waiting in the link's fifo queues right now.
    #[serde(default)]
    pub qdisc_depth: u64,
    /// Read system calls that brought frames in from the link: one per frame on a TAP (one
    /// per `io_uring_enter` batch with `--tap-io uring`), one per `recvmmsg` batch on a veth's
    /// packet sockets, one per batch taken from a receive ring (`--veth-rx ring`)
    /// (rx_packets / rx_calls = frames per call).
    #[serde(default)]
    pub rx_calls: u64,
    /// Write system calls that sent frames to the link (one per `sendmmsg` batch in veth
    /// mode, one per `io_uring_enter` batch on a TAP with `--tap-io uring`).
    #[serde(default)]
    pub tx_calls: u64,
    /// A VM pod's virtqueues stopped because the guest put garbage in a ring (each counted
    /// once; the queue runs again once the frontend sets it up anew).
    #[serde(default)]
    pub vhost_queue_stops: u64,
}

/// Per-pod rate limits, as the CNI `bandwidth` capability gives them: rates in bit/s, bursts
/// in bits; 0 means unlimited. Ingress is traffic to the pod, egress traffic from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Rate of traffic to the pod.
    #[serde(default)]
    pub ingress_rate: u64,
    /// Burst of traffic to the pod.
    #[serde(default)]
    pub ingress_burst: u64,
    /// Rate of traffic from the pod.
    #[serde(default)]
    pub egress_rate: u64,
    /// Burst of traffic from the pod.
    #[serde(default)]
    pub egress_burst: u64,
}

/// One pod's entry in the `stats` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStats {
    /// The attachment.
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// Its netns path.
    pub netns: PathBuf,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its addresses.
    pub ips: Vec<IpNet>,
    /// Its counters.
    pub counters: Counters,
}

/// A reply on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The request was carried out.
    Done,
    /// The answer to a vhost-user `attach` (protocol 3 on; only such an attach gets it): the
    /// pod is attached and its VMM connects to `socket_path`.
    Attached {
        /// The pod's vhost-user socket.
        socket_path: PathBuf,
    },
    /// The answer to `status`.
    Status(DaemonStatus),
    /// The answer to `list`.
    List {
        /// Every attachment.
        pods: Vec<PodInfo>,
    },
    /// The answer to `metrics`: Prometheus text format 0.0.4.
    Metrics {
        /// The exposition.
        text: String,
    },
    /// A capture started; the reply carries the pipe's read end.
    Capture,
    /// The answer to `stats`.
    Stats {
        /// Every attached pod interface.
        pods: Vec<PodStats>,
        /// The uplink's counters (rx = from the node, tx = to the node).
        uplink: Counters,
    },
    /// The answer to `node`.
    Node(NodeStatus),
    /// The request failed; nothing was changed.
    Error {
        /// What went wrong, naming the object.
        message: String,
        /// What kind of failure it is, so a client can act on it without reading the message
        /// (the plugin picks its CNI error code by it). Absent from a v0.1.0 daemon's errors
        /// (see [`Reply::error_kind`]); a v0.1.0 client ignores it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<ErrorKind>,
    },
}

impl Reply {
    /// An error reply of `kind`.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error {
            message: message.into(),
            kind: Some(kind),
        }
    }

    /// The kind of an error reply (`None` for any other reply). An error without a kind (from
    /// a v0.1.0 daemon) or of a kind this build does not know is read from the message's
    /// conventions: [`BUSY`] at its start, [`RETRYABLE`] at its end, otherwise
    /// [`ErrorKind::Internal`].
    pub fn error_kind(&self) -> Option<ErrorKind> {
        let Reply::Error { message, kind } = self else {
            return None;
        };
        Some(ErrorKind::of(*kind, message))
    }
}

impl ErrorKind {
    /// The kind of an error reply with the `kind` field `kind` and `message`: `kind` when it
    /// is one this build knows, otherwise read from the message's conventions (a v0.1.0
    /// daemon's errors have no kind): [`BUSY`] at its start, [`RETRYABLE`] at its end,
    /// otherwise [`ErrorKind::Internal`].
    pub fn of(kind: Option<ErrorKind>, message: &str) -> ErrorKind {
        match kind {
            Some(kind) if kind != ErrorKind::Unknown => kind,
            _ if message.starts_with(BUSY) => ErrorKind::Busy,
            _ if message.ends_with(RETRYABLE) => ErrorKind::TryAgainLater,
            _ => ErrorKind::Internal,
        }
    }
}

/// What kind of failure an error reply reports: what the client may do about it. The JSON
/// names are snake case (`"invalid_network_config"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Every place is taken by a request in progress: the daemon read nothing from this
    /// connection, so the same request may be sent again on a new one ([`Client`] does).
    Busy,
    /// Nothing was changed and the cause may go away on its own (the dataplane is being
    /// restarted, an attach or detach of the same pod is in progress): try again later.
    TryAgainLater,
    /// The request came from a newer protocol and was not understood: try again once the
    /// daemon is upgraded.
    ProtocolVersion,
    /// The request is not a valid message of the protocol (undecodable, descriptors that do
    /// not match what it announces).
    InvalidRequest,
    /// The container id or the interface name is not valid.
    InvalidName,
    /// The attachment does not fit this node: addresses outside the pod CIDRs, no address, a
    /// bad MAC or MTU, a veth peer of the wrong name.
    InvalidNetworkConfig,
    /// The attachment, or an address it claims, is already attached.
    Exists,
    /// Nothing is attached (or quarantined) under that key.
    NotFound,
    /// The pod's network namespace is gone.
    NetnsGone,
    /// A link operation failed: the TAP queues, the veth peer, the dataplane's hand-off.
    Interface,
    /// The client may not use the control socket (not root).
    PermissionDenied,
    /// Anything else on the daemon's side (its state directory, for instance).
    Internal,
    /// A kind from a newer daemon that this build does not know.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_request_json_is_stable() {
        let req = Request::Attach(Attachment {
            key: AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/p1".into(),
            mac: "0a:58:0a:f4:01:05".parse().unwrap(),
            ips: vec!["10.244.1.5/24".parse().unwrap()],
            gateways: vec!["10.244.1.1".parse().unwrap()],
            mtu: 1500,
            queues: 2,
            labels: BTreeMap::new(),
            bandwidth: None,
            mode: LinkMode::Tap,
            peer: None,
            vhost_socket_mode: None,
            vhost_socket_group: None,
        });
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"op":"attach","container_id":"c1","ifname":"eth0","netns":"/run/netns/p1","mac":"0a:58:0a:f4:01:05","ips":["10.244.1.5/24"],"gateways":["10.244.1.1"],"mtu":1500,"queues":2,"labels":{}}"#
        );
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn veth_attach_names_its_mode_and_peer() {
        let key = AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let json = format!(
            r#"{{"op":"attach","container_id":"c1","ifname":"eth0","netns":"/run/netns/p1","mac":"0a:58:0a:f4:01:05","ips":["10.244.1.5/24"],"gateways":[],"mtu":1500,"queues":0,"labels":{{}},"mode":"veth","peer":"{}"}}"#,
            veth_peer_name(&key)
        );
        let Request::Attach(a) = serde_json::from_str(&json).unwrap() else {
            panic!("not an attach");
        };
        assert_eq!(a.mode, LinkMode::Veth);
        assert_eq!(a.peer, Some(veth_peer_name(&key)));
        assert_eq!(serde_json::to_string(&Request::Attach(a)).unwrap(), json);
        assert!(serde_json::from_str::<Request>(&json.replace("veth", "macvlan")).is_err());
    }

    #[test]
    fn veth_peer_names_are_valid_stable_and_distinct() {
        let key = |c: &str, i: &str| AttachmentKey {
            container_id: c.into(),
            ifname: i.into(),
        };
        let a = veth_peer_name(&key("c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("nsv"));
        assert_eq!(crate::sys::ifname_problem(&a), None);
        // Stable: the plugin and a restarted netstackd derive the same name.
        assert_eq!(a, veth_peer_name(&key("c1", "eth0")));
        // Distinct for another container, another interface, and a shifted boundary.
        let others = [
            veth_peer_name(&key("c2", "eth0")),
            veth_peer_name(&key("c1", "eth1")),
            veth_peer_name(&key("c1e", "th0")),
        ];
        for o in &others {
            assert_ne!(&a, o);
        }
        let long = "f".repeat(64);
        assert_eq!(veth_peer_name(&key(&long, "eth0")).len(), 15);
    }

    #[test]
    fn vhost_socket_names_are_short_stable_and_distinct() {
        let key = |c: &str, i: &str| AttachmentKey {
            container_id: c.into(),
            ifname: i.into(),
        };
        let long = "f".repeat(64);
        let a = vhost_socket_name(&key(&long, "eth0"));
        // Stable across builds: the plugin, netstackd and a restarted netstackd agree (and
        // it is the hash the veth peer's name shows the first 48 bits of).
        assert_eq!(
            vhost_socket_name(&key("c1", "eth0")),
            "vuf53f02b3bfe94942.sock"
        );
        let veth = veth_peer_name(&key("c1", "eth0"));
        assert_eq!(
            &vhost_socket_name(&key("c1", "eth0"))[2..14],
            &veth[3..],
            "one hash for both names"
        );
        assert_eq!(a.len(), 23, "{a}");
        assert_eq!(a, vhost_socket_name(&key(&long, "eth0")));
        assert!(!a.contains(&long[..8]), "no container id in the path");
        // Two interfaces of one container, another container, a shifted boundary.
        let names: std::collections::BTreeSet<String> = [
            key(&long, "eth0"),
            key(&long, "net1"),
            key(&long, "eth1"),
            key("c1", "eth0"),
            key("c1e", "th0"),
        ]
        .iter()
        .map(vhost_socket_name)
        .collect();
        assert_eq!(names.len(), 5, "{names:?}");
        // The default vhost dir leaves room to spare in a socket path.
        let path = format!("/run/netstack/vhost/{a}");
        assert!(path.len() <= MAX_SOCKET_PATH, "{path}");
    }

    #[test]
    fn vhost_socket_modes_are_permissions_the_owner_can_use() {
        // (mode, accepted, what the row covers)
        let table = [
            (0o600, true, "the default"),
            (0o660, true, "a group of VMMs"),
            (
                0o640,
                true,
                "a group that may only read (connect needs write)",
            ),
            (0o666, false, "anyone could act as the pod's VM"),
            (0o602, false, "others may write"),
            (0o400, false, "owner cannot write"),
            (0o060, false, "owner cannot read or write"),
            (0o4600, false, "setuid bit"),
            (0o1777, false, "sticky bit"),
        ];
        for (mode, ok, what) in table {
            assert_eq!(vhost_socket_mode_problem(mode).is_none(), ok, "{what}");
        }
    }

    #[test]
    fn link_modes_parse_and_print() {
        assert_eq!("vhost-user".parse::<LinkMode>(), Ok(LinkMode::VhostUser));
        assert_eq!(LinkMode::VhostUser.to_string(), "vhost-user");
        assert_eq!(LinkMode::VhostUser.device_kind(), "dummy");
        assert!(LinkMode::VhostUser.is_device_kind(Some("ifb")));
        assert!(LinkMode::VhostUser.is_device_kind(Some("dummy")));
        assert!(!LinkMode::VhostUser.is_device_kind(Some("tun")));
        assert!(!LinkMode::Tap.is_device_kind(Some("ifb")));
        assert!(LinkMode::Tap.is_device_kind(Some("tun")));
        assert_eq!(
            serde_json::to_string(&LinkMode::VhostUser).unwrap(),
            r#""vhost-user""#
        );
        assert!("vhost_user".parse::<LinkMode>().is_err());
        assert_eq!("veth".parse::<LinkMode>(), Ok(LinkMode::Veth));
        assert_eq!("tap".parse::<LinkMode>(), Ok(LinkMode::Tap));
        assert!("macvlan".parse::<LinkMode>().is_err());
        assert_eq!(LinkMode::Veth.to_string(), "veth");
        assert_eq!(LinkMode::Tap.device_kind(), "tun");
        assert_eq!(LinkMode::default(), LinkMode::Tap);
    }

    #[test]
    fn container_ids_follow_the_cni_pattern() {
        for ok in ["a", "abc-123", "A.b_c-d", "0"] {
            assert!(valid_container_id(ok), "{ok}");
        }
        for bad in [
            "", "-a", ".a", "a/b", "a b", "../x", "é", "a\0b", "a\u{a0}b",
        ] {
            assert!(!valid_container_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn interface_names_follow_the_kernels_dev_valid_name() {
        // (name, valid?, what the row covers)
        let cases = [
            ("eth0", true, "plain"),
            ("abcdefghijklmno", true, "15 bytes, the most"),
            ("abcdefghijklmnop", false, "16 bytes"),
            ("eé0123456789abc", false, "15 characters but 16 bytes"),
            ("", false, "empty"),
            (".", false, "reserved"),
            ("..", false, "reserved"),
            ("...", true, "only . and .. are reserved"),
            ("a/b", false, "slash"),
            ("a:b", false, "colon (alias syntax)"),
            ("a b", false, "space"),
            ("a\tb", false, "tab"),
            ("a\x0bb", false, "vertical tab"),
            ("a\0b", false, "NUL"),
            ("\0", false, "only NUL"),
            (
                "a\u{a0}b",
                false,
                "no-break space (the kernel's isspace(0xa0))",
            ),
            ("a\u{2003}b", false, "em space: Unicode whitespace"),
            ("a\u{3000}b", false, "ideographic space"),
            ("a\u{85}b", false, "next line"),
            ("eth-ü", true, "non-ASCII letter"),
        ];
        for (name, valid, what) in cases {
            assert_eq!(valid_ifname(name), valid, "{name:?}: {what}");
        }
    }

    #[test]
    fn unknown_op_is_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"detach"}"#).is_err());
    }
}
