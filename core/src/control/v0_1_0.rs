//! netstack v0.1.0's control and state-file types, frozen as that release declared them (the
//! serde attributes are what matter: they decide what v0.1.0 accepts), for the tests that
//! prove a new plugin can talk to a v0.1.0 daemon, a v0.1.0 plugin can read this daemon's
//! replies, and a rolled-back v0.1.0 daemon can read this daemon's state files. Never change
//! these to match the current types: they stand for binaries already on nodes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use crate::wire::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMode {
    #[default]
    Tap,
    Veth,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub netns: PathBuf,
    pub mac: MacAddr,
    pub ips: Vec<IpNet>,
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    pub mtu: u32,
    pub queues: usize,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default)]
    pub mode: LinkMode,
    #[serde(default)]
    pub peer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Attach(Attachment),
    Detach(AttachmentKey),
    Stats,
    List,
    Metrics,
    Capture(CaptureRequest),
    Release(AttachmentKey),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CaptureRequest {
    #[serde(flatten)]
    pub key: AttachmentKey,
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    #[serde(default)]
    pub max_packets: u64,
    #[serde(default)]
    pub max_seconds: u64,
}

fn default_snaplen() -> u32 {
    4096 - 16
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PodInfo {
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub netns: PathBuf,
    pub mac: MacAddr,
    pub ips: Vec<IpNet>,
    pub mode: String,
    pub state: String,
    #[serde(default)]
    pub quarantine_reason: Option<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub workers: usize,
    pub uplink: String,
    pub pod_cidr: IpNet,
    #[serde(default)]
    pub pod_cidr_v6: Option<IpNet>,
    pub gateway: IpAddr,
    #[serde(default)]
    pub dp_netns: Option<PathBuf>,
    #[serde(default)]
    pub veth_rx: Option<String>,
    pub attachments: usize,
    #[serde(default)]
    pub metrics: Option<String>,
    #[serde(default)]
    pub dataplane_pid: Option<u32>,
    #[serde(default)]
    pub dataplane_restarts: u64,
    #[serde(default)]
    pub quarantined: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: BTreeMap<String, u64>,
    #[serde(default)]
    pub rx_gso_packets: u64,
    #[serde(default)]
    pub tx_gso_segmented: u64,
    #[serde(default)]
    pub qdisc_depth: u64,
    #[serde(default)]
    pub rx_calls: u64,
    #[serde(default)]
    pub tx_calls: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PodStats {
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub netns: PathBuf,
    pub mac: MacAddr,
    pub ips: Vec<IpNet>,
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Status(DaemonStatus),
    List {
        pods: Vec<PodInfo>,
    },
    Metrics {
        text: String,
    },
    Capture,
    Stats {
        pods: Vec<PodStats>,
        uplink: Counters,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetnsId {
    #[serde(default)]
    pub dev: Option<u64>,
    #[serde(default)]
    pub ino: Option<u64>,
    #[serde(default)]
    pub pid_start: Option<u64>,
}

/// A state file as v0.1.0's `read_state_dir` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StateRecord {
    #[serde(flatten)]
    pub attachment: Attachment,
    #[serde(default)]
    pub netns_id: Option<NetnsId>,
}
