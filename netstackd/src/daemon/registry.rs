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
}

/// Every attachment, and the dataplane that serves them.
pub struct Registry {
    config: DaemonConfig,
    gateway: Ipv4Addr,
    dataplane: DataplaneProcess,
    attached: Mutex<BTreeMap<AttachmentKey, Attached>>,
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
            attached: Mutex::new(BTreeMap::new()),
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
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
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
            attachments: self.lock().len(),
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
        let mut attached = self.lock();
        if attached.contains_key(&key) {
            return Err(format!("{key}: already attached"));
        }
        if let Some(other) = attached.values().find(|o| {
            o.attachment
                .ips
                .iter()
                .any(|ip| a.ips.iter().any(|n| n.addr() == ip.addr()))
        }) {
            return Err(format!(
                "{key}: an address is already used by {}",
                other.attachment.key
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if record {
            self.write_state(&a)
                .map_err(|e| format!("{key}: recording the attachment: {e}"))?;
        }
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
        if let Err(e) = self.dataplane.attach(spec, fds) {
            if record {
                let _ = std::fs::remove_file(self.state_path(&key));
            }
            return Err(format!("{key}: handing the queues to the dataplane: {e}"));
        }
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
        attached.insert(key, Attached { id, attachment: a });
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
        let mut attached = self.lock();
        if let Some(a) = attached.remove(key) {
            self.dataplane.detach(a.id);
            self.control_metrics.detached();
            if let Some(peer) = a.attachment.peer.as_deref() {
                // netstackd's end of the veth; the pod's end goes with it.
                if let Err(e) = super::veth::delete_peer(&self.config.dp_netns, peer) {
                    tracing::warn!(container_id = %key.container_id, ifname = %key.ifname, "deleting veth peer {peer}: {e}");
                }
            }
            tracing::info!(container_id = %key.container_id, ifname = %key.ifname, "detached");
        }
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
}
