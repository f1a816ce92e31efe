//! The attachments netstackd serves: validation of `attach`, the state files, and the
//! hand-off to the dataplane.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::control::{
    veth_peer_name, Attachment, AttachmentKey, CaptureRequest, DaemonStatus, LinkMode, PodInfo,
    PodStats, Reply, Request, MAX_CAPTURE_PACKETS, MAX_CAPTURE_SECONDS, MAX_CAPTURE_SNAPLEN,
};
use crate::dataplane::PodSpec;
use crate::supervisor::DataplaneProcess;
use crate::sys::tap::{queue_info, set_nonblocking};

/// The TUNSETIFF flags a pod queue must carry.
const POD_QUEUE_FLAGS: i16 =
    (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE) as i16;

use super::DaemonConfig;

/// The addresses of a validated attachment, as the dataplane needs them.
struct PodAddrs {
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<std::net::Ipv6Addr>,
    gateway_v6: Option<std::net::Ipv6Addr>,
}

struct Attached {
    id: u64,
    attachment: Attachment,
    phase: Phase,
}

/// Where an attachment is in its life. Only `Serving` ones are listed, counted and measured;
/// the others hold their key and addresses while their attach or detach runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Attaching,
    Serving,
    Detaching,
}

/// The attachments by key.
///
/// The mutex is held only to look at or change the map, never across the disk, netlink or
/// the dataplane: an attach reserves its key and addresses (`Attaching`), does its slow work
/// without the lock and comes back to settle the entry; a detach marks its entry `Detaching`
/// the same way. So a slow attach of one pod does not hold up the status, attach or detach of
/// another.
#[derive(Default)]
struct Table {
    map: Mutex<BTreeMap<AttachmentKey, Attached>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<AttachmentKey, Attached>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `entry`'s key and addresses, runs `work` without the lock, then serves the
    /// entry if `work` succeeded or forgets it if not (or if `work` panicked).
    fn attach_with(
        &self,
        entry: Attached,
        work: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        let key = entry.attachment.key.clone();
        {
            let mut map = self.lock();
            if let Some(existing) = map.get(&key) {
                return Err(match existing.phase {
                    Phase::Serving => format!("{key}: already attached"),
                    Phase::Attaching => format!("{key}: an attach of it is in progress"),
                    Phase::Detaching => format!("{key}: a detach of it is in progress"),
                });
            }
            let ips = &entry.attachment.ips;
            if let Some(other) = map.values().find(|o| {
                o.attachment
                    .ips
                    .iter()
                    .any(|ip| ips.iter().any(|n| n.addr() == ip.addr()))
            }) {
                return Err(format!(
                    "{key}: an address is already used by {}",
                    other.attachment.key
                ));
            }
            map.insert(
                key.clone(),
                Attached {
                    phase: Phase::Attaching,
                    ..entry
                },
            );
        }
        let pending = Pending {
            table: self,
            key: Some(key),
        };
        work()?;
        pending.serve();
        Ok(())
    }

    /// Marks `key` detaching, runs `work` on it without the lock, then forgets it (even if
    /// `work` fails). `Ok(false)` if nothing is attached under `key`.
    fn detach_with(
        &self,
        key: &AttachmentKey,
        work: impl FnOnce(&Attached) -> Result<(), String>,
    ) -> Result<bool, String> {
        let entry = {
            let mut map = self.lock();
            let Some(entry) = map.get_mut(key) else {
                return Ok(false);
            };
            match entry.phase {
                Phase::Serving => entry.phase = Phase::Detaching,
                Phase::Attaching => return Err(format!("{key}: an attach of it is in progress")),
                Phase::Detaching => return Err(format!("{key}: a detach of it is in progress")),
            }
            Attached {
                id: entry.id,
                attachment: entry.attachment.clone(),
                phase: Phase::Detaching,
            }
        };
        // Forgets the entry even if `work` panics.
        let _gone = Pending {
            table: self,
            key: Some(key.clone()),
        };
        work(&entry).map(|()| true)
    }
}

/// An entry whose attach or detach is running: dropped, it is removed from the table unless
/// [`Pending::serve`] settled it.
struct Pending<'a> {
    table: &'a Table,
    key: Option<AttachmentKey>,
}

impl Pending<'_> {
    fn serve(mut self) {
        if let Some(key) = self.key.take() {
            if let Some(entry) = self.table.lock().get_mut(&key) {
                entry.phase = Phase::Serving;
            }
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table.lock().remove(&key);
        }
    }
}

/// Every attachment, and the dataplane that serves them.
pub struct Registry {
    config: DaemonConfig,
    gateway: Ipv4Addr,
    dataplane: DataplaneProcess,
    attached: Table,
    next_id: AtomicU64,
    control_metrics: super::metrics::ControlMetrics,
    metrics_addr: Mutex<Option<std::net::SocketAddr>>,
}

/// Is `id` a container id the CNI spec allows (`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)?
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Is `name` a valid Linux interface name (1–15 bytes, no '/', ':' or whitespace, not . or ..)?
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Registry {
    /// A registry with nothing attached.
    pub fn new(config: DaemonConfig, gateway: Ipv4Addr, dataplane: DataplaneProcess) -> Self {
        Registry {
            config,
            gateway,
            dataplane,
            attached: Table::default(),
            next_id: AtomicU64::new(1),
            control_metrics: Default::default(),
            metrics_addr: Mutex::new(None),
        }
    }

    /// Carries out one request; `fds` are the descriptors that came with it. Returns the
    /// reply and the descriptors to send with it.
    pub fn handle(&self, request: Request, fds: Vec<OwnedFd>) -> (Reply, Vec<OwnedFd>) {
        let result = match request {
            Request::Status => Ok(Reply::Status(self.status())),
            Request::Attach(a) => {
                let started = std::time::Instant::now();
                let container_id = a.key.container_id.clone();
                let result = self.attach(a, fds).map(|()| Reply::Done);
                if let Err(message) = &result {
                    tracing::warn!(%container_id, "attach refused: {message}");
                }
                self.control_metrics
                    .attached(result.is_ok(), started.elapsed());
                result
            }
            Request::Detach(key) => self.detach(&key).map(|()| Reply::Done),
            Request::Release(key) => self.release(&key).map(|()| Reply::Done),
            Request::Stats => Ok(self.stats()),
            Request::List => Ok(Reply::List { pods: self.list() }),
            Request::Metrics => Ok(Reply::Metrics {
                text: self.metrics_text(),
            }),
            Request::Capture(c) => {
                return match self.capture(&c) {
                    Ok(pipe) => (Reply::Capture, vec![pipe]),
                    Err(message) => (Reply::Error { message }, Vec::new()),
                }
            }
        };
        (
            result.unwrap_or_else(|message| Reply::Error { message }),
            Vec::new(),
        )
    }

    fn pod_info(
        &self,
        a: &Attached,
        serving: bool,
        quarantined: &BTreeMap<u64, String>,
    ) -> PodInfo {
        let quarantine_reason = quarantined.get(&a.id).cloned();
        let state = match (&quarantine_reason, serving) {
            (Some(_), _) => "quarantined",
            (None, true) => "attached",
            (None, false) => "pending",
        };
        PodInfo {
            key: a.attachment.key.clone(),
            netns: a.attachment.netns.clone(),
            mac: a.attachment.mac,
            ips: a.attachment.ips.clone(),
            mode: a.attachment.mode.as_str().into(),
            state: state.into(),
            quarantine_reason,
            labels: a.attachment.labels.clone(),
        }
    }

    fn list(&self) -> Vec<PodInfo> {
        let serving = self.dataplane.serving();
        let quarantined = self.dataplane.quarantined();
        self.lock()
            .values()
            .filter(|a| a.phase == Phase::Serving)
            .map(|a| self.pod_info(a, serving, &quarantined))
            .collect()
    }

    /// The Prometheus exposition of every metric.
    pub fn metrics_text(&self) -> String {
        let stats = self.dataplane.stats();
        let serving = self.dataplane.serving();
        let quarantined = self.dataplane.quarantined();
        let mut counters = stats.pods;
        let pods = self
            .lock()
            .values()
            .filter(|a| a.phase == Phase::Serving)
            .map(|a| {
                (
                    self.pod_info(a, serving, &quarantined),
                    counters.remove(&a.id).unwrap_or_default(),
                )
            })
            .collect();
        super::metrics::render(&super::metrics::Snapshot {
            pods,
            uplink: stats.uplink,
            wakeups: stats.wakeups,
            control: &self.control_metrics,
            dataplane_restarts: self.dataplane.child().1,
        })
    }

    fn capture(&self, c: &CaptureRequest) -> Result<OwnedFd, String> {
        let id = self
            .lock()
            .get(&c.key)
            .filter(|a| a.phase == Phase::Serving)
            .map(|a| a.id)
            .ok_or_else(|| format!("{}: not attached", c.key))?;
        let snaplen = c.snaplen.clamp(64, MAX_CAPTURE_SNAPLEN);
        let packets = match c.max_packets {
            0 => MAX_CAPTURE_PACKETS,
            n => n.min(MAX_CAPTURE_PACKETS),
        };
        let seconds = match c.max_seconds {
            0 => MAX_CAPTURE_SECONDS,
            n => n.min(MAX_CAPTURE_SECONDS),
        };
        let pipe = self
            .dataplane
            .capture(id, snaplen, packets, seconds)
            .map_err(|e| format!("{}: {e}", c.key))?;
        tracing::info!(container_id = %c.key.container_id, ifname = %c.key.ifname, snaplen, packets, seconds, "capture started");
        Ok(pipe)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<AttachmentKey, Attached>> {
        self.attached.lock()
    }

    fn status(&self) -> DaemonStatus {
        let quarantined = self.dataplane.quarantined();
        let quarantined = self
            .lock()
            .values()
            .filter(|a| quarantined.contains_key(&a.id))
            .map(|a| a.attachment.key.to_string())
            .collect();
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            workers: self.dataplane.workers(),
            uplink: self.config.uplink.clone(),
            pod_cidr: self.config.pod_cidr.into(),
            pod_cidr_v6: self.config.pod_cidr_v6.map(ipnet::IpNet::from),
            gateway: IpAddr::V4(self.gateway),
            dp_netns: Some(self.config.dp_netns.clone()),
            veth_rx: Some(
                if self.config.veth_rx_ring {
                    "ring"
                } else {
                    "mmsg"
                }
                .to_owned(),
            ),
            attachments: self
                .lock()
                .values()
                .filter(|a| a.phase == Phase::Serving)
                .count(),
            metrics: self
                .metrics_addr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|a| a.to_string()),
            dataplane_pid: self.dataplane.child().0,
            dataplane_restarts: self.dataplane.child().1,
            quarantined,
        }
    }

    /// `release`: takes a quarantined pod interface back into the dataplane.
    fn release(&self, key: &AttachmentKey) -> Result<(), String> {
        let id = self
            .lock()
            .get(key)
            .map(|a| a.id)
            .ok_or_else(|| format!("{key}: not attached"))?;
        match self.dataplane.release(id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{key}: not quarantined")),
            Err(e) => Err(format!("{key}: {e}")),
        }
    }

    /// Records where the metrics listener ended up (for `status`).
    pub fn set_metrics_addr(&self, addr: std::net::SocketAddr) {
        *self.metrics_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    fn stats(&self) -> Reply {
        let stats = self.dataplane.stats();
        let (mut counters, uplink) = (stats.pods, stats.uplink);
        let pods = self
            .lock()
            .values()
            .filter(|a| a.phase == Phase::Serving)
            .map(|a| PodStats {
                key: a.attachment.key.clone(),
                netns: a.attachment.netns.clone(),
                mac: a.attachment.mac,
                ips: a.attachment.ips.clone(),
                counters: counters.remove(&a.id).unwrap_or_default(),
            })
            .collect();
        Reply::Stats { pods, uplink }
    }

    /// The dataplane process, for shutdown and status.
    pub fn dataplane(&self) -> &DataplaneProcess {
        &self.dataplane
    }

    /// Checks an attach request before anything is changed.
    fn validate(&self, a: &Attachment, fds: &[OwnedFd]) -> Result<PodAddrs, String> {
        let key = &a.key;
        if !valid_container_id(&key.container_id) {
            return Err(format!("invalid container id {:?}", key.container_id));
        }
        if !valid_ifname(&key.ifname) {
            return Err(format!("{key}: invalid interface name {:?}", key.ifname));
        }
        match a.mode {
            LinkMode::Tap if a.queues == 0 || a.queues != fds.len() => {
                return Err(format!(
                    "{key}: request announces {} TAP queues but carries {} fds",
                    a.queues,
                    fds.len()
                ));
            }
            LinkMode::Tap => {}
            LinkMode::Veth => {
                if a.queues != 0 {
                    return Err(format!(
                        "{key}: a veth attachment announces no queues (netstackd opens its own sockets), not {}",
                        a.queues
                    ));
                }
                let want = veth_peer_name(key);
                if a.peer.as_deref() != Some(want.as_str()) {
                    return Err(format!(
                        "{key}: the veth peer must be named {want}, not {:?}",
                        a.peer
                    ));
                }
            }
        }
        if !a.mac.is_unicast() || a.mac.is_zero() {
            return Err(format!("{key}: MAC {} is not a unicast address", a.mac));
        }
        if !(68..=65535).contains(&a.mtu) {
            return Err(format!("{key}: MTU {} out of range 68-65535", a.mtu));
        }
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for ip in &a.ips {
            match ip {
                ipnet::IpNet::V4(v4) => {
                    let addr = v4.addr();
                    if !self.config.pod_cidr.contains(&addr) || addr == self.gateway {
                        return Err(format!(
                            "{key}: address {addr} is not a pod address of this node's pod CIDR {}",
                            self.config.pod_cidr
                        ));
                    }
                    ipv4.push(addr);
                }
                ipnet::IpNet::V6(v6) => {
                    let addr = v6.addr();
                    let gateway_v6 = self.config.gateway_v6().ok().flatten();
                    match self.config.pod_cidr_v6 {
                        None => {
                            return Err(format!(
                                "{key}: IPv6 address {addr} but netstackd has no --pod-cidr-v6"
                            ))
                        }
                        Some(cidr) if !cidr.contains(&addr) || Some(addr) == gateway_v6 => {
                            return Err(format!(
                                "{key}: address {addr} is not a pod address of this node's IPv6 pod CIDR {cidr}"
                            ))
                        }
                        Some(_) => ipv6.push(addr),
                    }
                }
            }
        }
        if ipv4.is_empty() && ipv6.is_empty() {
            return Err(format!("{key}: no IP address"));
        }
        // A veth attachment's fds are the packet sockets netstackd opened itself.
        let tap_fds = if a.mode == LinkMode::Tap { fds } else { &[] };
        for (i, fd) in tap_fds.iter().enumerate() {
            let (name, flags) = queue_info(fd.as_fd())
                .map_err(|e| format!("{key}: fd {i} is not a TAP queue: {e}"))?;
            let want = POD_QUEUE_FLAGS;
            if flags & want != want {
                return Err(format!(
                    "{key}: fd {i} ({name}) lacks IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|IFF_MULTI_QUEUE (flags {flags:#x})"
                ));
            }
            if name != key.ifname {
                return Err(format!(
                    "{key}: fd {i} is a queue of {name}, not {}",
                    key.ifname
                ));
            }
            set_nonblocking(fd.as_fd()).map_err(|e| format!("{key}: fd {i}: {e}"))?;
        }
        let gateway_v6 = a.gateways.iter().find_map(|g| match g {
            IpAddr::V6(g) => Some(*g),
            IpAddr::V4(_) => None,
        });
        Ok(PodAddrs {
            ipv4,
            ipv6,
            gateway_v6,
        })
    }

    fn attach(&self, a: Attachment, fds: Vec<OwnedFd>) -> Result<(), String> {
        if a.mode == LinkMode::Veth {
            let key = &a.key;
            if !fds.is_empty() {
                return Err(format!(
                    "{key}: a veth attachment carries no fds, this one carries {}",
                    fds.len()
                ));
            }
            // Checked before any device is touched; admit checks again under the lock.
            self.validate(&a, &[])?;
            if self.lock().contains_key(key) {
                return Err(format!("{key}: already attached"));
            }
            let sockets = super::veth::open_peer(&self.config, &a, self.dataplane.workers())?;
            return self.admit(a, sockets, true);
        }
        self.admit(a, fds, true)
    }

    /// Validates an attachment and hands it to the dataplane; `record` writes its state file
    /// first (false when it comes from the state dir on restart).
    fn admit(&self, a: Attachment, fds: Vec<OwnedFd>, record: bool) -> Result<(), String> {
        let addrs = self.validate(&a, &fds)?;
        let key = a.key.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let spec = PodSpec {
            id,
            mac: a.mac,
            ipv4: addrs.ipv4,
            ipv6: addrs.ipv6,
            gateway_v6: addrs.gateway_v6,
            mtu: a.mtu,
            bandwidth: a.bandwidth,
            container_id: key.container_id.clone(),
            packet_sockets: a.mode == LinkMode::Veth,
            rx_ring: a.mode == LinkMode::Veth && self.config.veth_rx_ring,
        };
        let entry = Attached {
            id,
            attachment: a.clone(),
            phase: Phase::Attaching,
        };
        // The disk and the dataplane without the registry lock (see `Table`).
        self.attached.attach_with(entry, || {
            if record {
                self.write_state(&a)
                    .map_err(|e| format!("{key}: recording the attachment: {e}"))?;
            }
            if let Err(e) = self.dataplane.attach(spec, fds) {
                if record {
                    let _ = std::fs::remove_file(self.state_path(&key));
                }
                return Err(format!("{key}: handing the queues to the dataplane: {e}"));
            }
            Ok(())
        })?;
        tracing::info!(
            container_id = %key.container_id,
            ifname = %key.ifname,
            netns = %a.netns.display(),
            mode = %a.mode,
            mac = %a.mac,
            ips = ?a.ips,
            queues = a.queues,
            restored = !record,
            "attached"
        );
        Ok(())
    }

    /// Re-reads the state dir after a restart: every recorded attachment whose netns and TAP
    /// still exist is re-opened (the TAP is persistent) and served again; the others are
    /// removed and logged. Returns (restored, cleaned up).
    pub fn restore(&self) -> (usize, usize) {
        let entries = match std::fs::read_dir(&self.config.state_dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.config.state_dir.display(), "reading the state dir: {e}");
                return (0, 0);
            }
        };
        let (mut restored, mut cleaned) = (0, 0);
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json.tmp") {
                // A write that never reached its rename: the attach was never acknowledged.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let attachment: Attachment = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(file = %path.display(), "unreadable state file left in place: {e}");
                    continue;
                }
            };
            let key = attachment.key.clone();
            match self.reopen(&attachment) {
                Ok(fds) => match self.admit(attachment, fds, false) {
                    Ok(()) => restored += 1,
                    Err(e) => {
                        tracing::warn!(container_id = %key.container_id, "cannot restore, cleaning up: {e}");
                        let _ = std::fs::remove_file(&path);
                        cleaned += 1;
                    }
                },
                Err(e) => {
                    tracing::warn!(container_id = %key.container_id, ifname = %key.ifname, "pod is gone, cleaning up: {e}");
                    let _ = std::fs::remove_file(&path);
                    cleaned += 1;
                }
            }
        }
        (restored, cleaned)
    }

    /// Opens the queues of a recorded attachment's persistent TAP inside its netns, or new
    /// packet sockets on its veth peer.
    fn reopen(&self, a: &Attachment) -> Result<Vec<OwnedFd>, String> {
        if a.mode == LinkMode::Veth {
            if !a.netns.exists() {
                return Err(format!("netns {} no longer exists", a.netns.display()));
            }
            return super::veth::open_peer(&self.config, a, self.dataplane.workers());
        }
        let ifname = a.key.ifname.clone();
        let queues = self.dataplane.workers();
        crate::netns::run_in_netns(&a.netns, move || -> Result<Vec<OwnedFd>, String> {
            let nl = crate::netlink::Netlink::new().map_err(|e| e.to_string())?;
            match nl.link_info(&ifname).map_err(|e| e.to_string())? {
                Some(info) if info.kind.as_deref() == Some("tun") => {}
                Some(_) => return Err(format!("{ifname} is no longer a TAP")),
                None => return Err(format!("{ifname} no longer exists")),
            }
            crate::sys::tap::open_queues(&ifname, crate::sys::tap::TunKind::Tap, queues, true)
                .map(|q| q.fds)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())?
    }

    fn detach(&self, key: &AttachmentKey) -> Result<(), String> {
        if !valid_container_id(&key.container_id) || !valid_ifname(&key.ifname) {
            return Err(format!("invalid attachment {key}"));
        }
        // The dataplane and netlink without the registry lock (see `Table`).
        let detached = self.attached.detach_with(key, |a| {
            self.dataplane.detach(a.id);
            self.control_metrics.detached();
            if let Some(peer) = a.attachment.peer.as_deref() {
                // netstackd's end of the veth; the pod's end goes with it.
                if let Err(e) = super::veth::delete_peer(&self.config.dp_netns, peer) {
                    tracing::warn!(container_id = %key.container_id, ifname = %key.ifname, "deleting veth peer {peer}: {e}");
                }
            }
            tracing::info!(container_id = %key.container_id, ifname = %key.ifname, "detached");
            self.remove_state(key)
        })?;
        if detached {
            Ok(())
        } else {
            // Nothing attached: a state file left from an earlier run still goes.
            self.remove_state(key)
        }
    }

    fn remove_state(&self, key: &AttachmentKey) -> Result<(), String> {
        match std::fs::remove_file(self.state_path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{key}: removing its state file: {e}")),
        }
    }

    fn state_path(&self, key: &AttachmentKey) -> PathBuf {
        self.config
            .state_dir
            .join(format!("{}_{}.json", key.container_id, key.ifname))
    }

    /// Records an attachment: write a temporary file, fsync, rename over the final name.
    fn write_state(&self, a: &Attachment) -> std::io::Result<()> {
        let path = self.state_path(&a.key);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(a)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.config.state_dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_the_cni_pattern() {
        for ok in ["a", "abc-123", "A.b_c-d", "0"] {
            assert!(valid_container_id(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "../x", "é"] {
            assert!(!valid_container_id(bad), "{bad}");
        }
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("abcdefghijklmno"));
        for bad in ["", "abcdefghijklmnop", "a/b", "a:b", ".", "..", "a b"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }

    fn key(id: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn entry(id: u64, container: &str, ip: &str) -> Attached {
        Attached {
            id,
            attachment: Attachment {
                key: key(container),
                netns: "/run/netns/test".into(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
                ips: vec![ip.parse().unwrap()],
                gateways: Vec::new(),
                mtu: 1500,
                queues: 1,
                labels: BTreeMap::new(),
                bandwidth: None,
                mode: LinkMode::Tap,
                peer: None,
            },
            phase: Phase::Attaching,
        }
    }

    fn serving(table: &Table) -> Vec<String> {
        table
            .lock()
            .values()
            .filter(|a| a.phase == Phase::Serving)
            .map(|a| a.attachment.key.container_id.clone())
            .collect()
    }

    #[test]
    fn a_slow_attach_holds_no_lock_over_other_pods() {
        let table = Table::default();
        table
            .attach_with(entry(1, "b", "10.0.0.3/24"), || Ok(()))
            .unwrap();
        // Pod a's attach is slow (it waits on the disk, netlink, the dataplane): all of this
        // runs while it waits, on the same thread, so a lock held across it would deadlock.
        table
            .attach_with(entry(2, "a", "10.0.0.2/24"), || {
                assert!(table.map.try_lock().is_ok(), "the lock is free meanwhile");
                assert_eq!(serving(&table), ["b"], "status and list skip pod a");
                table
                    .attach_with(entry(3, "c", "10.0.0.4/24"), || Ok(()))
                    .unwrap();
                assert_eq!(table.detach_with(&key("b"), |_| Ok(())), Ok(true));
                // Pod a's key and address stay reserved.
                let again = table.attach_with(entry(4, "a", "10.0.0.9/24"), || Ok(()));
                assert!(again.unwrap_err().contains("in progress"));
                let same_ip = table.attach_with(entry(5, "d", "10.0.0.2/24"), || Ok(()));
                assert!(same_ip.unwrap_err().contains("already used by a/eth0"));
                let detach = table.detach_with(&key("a"), |_| Ok(()));
                assert!(detach.unwrap_err().contains("in progress"));
                Ok(())
            })
            .unwrap();
        assert_eq!(serving(&table), ["a", "c"]);
    }

    #[test]
    fn a_slow_detach_holds_no_lock_and_keeps_its_key_until_done() {
        let table = Table::default();
        table
            .attach_with(entry(1, "a", "10.0.0.2/24"), || Ok(()))
            .unwrap();
        let detached = table.detach_with(&key("a"), |a| {
            assert_eq!(a.id, 1);
            assert!(table.map.try_lock().is_ok(), "the lock is free meanwhile");
            assert!(serving(&table).is_empty(), "a detaching pod is not listed");
            let again = table.attach_with(entry(2, "a", "10.0.0.5/24"), || Ok(()));
            assert!(again.unwrap_err().contains("detach of it is in progress"));
            table
                .attach_with(entry(3, "b", "10.0.0.3/24"), || Ok(()))
                .unwrap();
            Err("state file: disk on fire".into())
        });
        assert_eq!(detached, Err("state file: disk on fire".into()));
        assert_eq!(
            serving(&table),
            ["b"],
            "a failed detach still forgets the pod"
        );
        assert_eq!(table.detach_with(&key("a"), |_| Ok(())), Ok(false));
    }

    #[test]
    fn a_failed_or_panicking_attach_gives_its_key_back() {
        let table = Table::default();
        let failed = table.attach_with(entry(1, "a", "10.0.0.2/24"), || Err("no".into()));
        assert_eq!(failed, Err("no".into()));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            table.attach_with(entry(2, "a", "10.0.0.2/24"), || {
                panic!("dataplane went away")
            })
        }));
        assert!(panicked.is_err());
        assert!(table.lock().is_empty());
        table
            .attach_with(entry(3, "a", "10.0.0.2/24"), || Ok(()))
            .unwrap();
        assert_eq!(serving(&table), ["a"]);
    }
}
