//! The attachments netstackd serves: validation of `attach`, the state files, and the
//! hand-off to the dataplane.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::{
    valid_container_id, valid_ifname, veth_peer_name, vhost_socket_mode_problem, vhost_socket_name,
    Attachment, AttachmentKey, CaptureRequest, DaemonStatus, ErrorKind, LinkMode, PodInfo,
    PodState, PodStats, Reply, Request, DEFAULT_VHOST_SOCKET_MODE, MAX_CAPTURE_PACKETS,
    MAX_CAPTURE_SECONDS, MAX_CAPTURE_SNAPLEN, RESTORE_FAILED,
};
use crate::dataplane::{LinkKind, PodSpec};
use crate::netns::{NetnsError, NetnsId};
use crate::supervisor::{DataplaneError, DataplaneProcess};
use crate::sys::tap::{queue_info, set_nonblocking};
use crate::vhost::server::VhostServer;
use crate::vhost::socket::VhostSocket;

/// The TUNSETIFF flags a pod queue must carry.
const POD_QUEUE_FLAGS: i16 =
    (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE) as i16;

use super::DaemonConfig;

/// Why a request to the registry failed: the kind of the error reply and what happened,
/// naming the pod interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    /// What the client may do about it.
    pub kind: ErrorKind,
    /// What went wrong, naming the object.
    pub message: String,
}

impl RegistryError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RegistryError {
            kind,
            message: message.into(),
        }
    }

    /// A failure of the dataplane, its message after `context`: "try again later" while it
    /// restarts, a link failure when it refused, internal when the supervisor could not ask.
    fn dataplane(context: impl std::fmt::Display, e: DataplaneError) -> Self {
        let kind = match e {
            DataplaneError::Restarting(_) => ErrorKind::TryAgainLater,
            DataplaneError::Refused(_) => ErrorKind::Interface,
            DataplaneError::Local(_) => Internal,
        };
        RegistryError::new(kind, format!("{context}: {e}"))
    }

    /// The error reply that answers the request.
    pub fn reply(self) -> Reply {
        Reply::error(self.kind, self.message)
    }
}

impl From<super::veth::VethError> for RegistryError {
    fn from(e: super::veth::VethError) -> Self {
        RegistryError::new(e.kind(), e.to_string())
    }
}

use ErrorKind::{Exists, Internal, InvalidName, InvalidNetworkConfig, InvalidRequest, NotFound};

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
        work: impl FnOnce() -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let key = entry.attachment.key.clone();
        {
            let mut map = self.lock();
            if let Some(existing) = map.get(&key) {
                return Err(match existing.phase {
                    Phase::Serving => {
                        RegistryError::new(Exists, format!("{key}: already attached"))
                    }
                    Phase::Attaching => in_progress(&key, "an attach"),
                    Phase::Detaching => in_progress(&key, "a detach"),
                });
            }
            let ips = &entry.attachment.ips;
            if let Some(other) = map.values().find(|o| {
                o.attachment
                    .ips
                    .iter()
                    .any(|ip| ips.iter().any(|n| n.addr() == ip.addr()))
            }) {
                return Err(RegistryError::new(
                    Exists,
                    format!(
                        "{key}: an address is already used by {}",
                        other.attachment.key
                    ),
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
        work: impl FnOnce(&Attached) -> Result<(), RegistryError>,
    ) -> Result<bool, RegistryError> {
        let entry = {
            let mut map = self.lock();
            let Some(entry) = map.get_mut(key) else {
                return Ok(false);
            };
            match entry.phase {
                Phase::Serving => entry.phase = Phase::Detaching,
                Phase::Attaching => return Err(in_progress(key, "an attach")),
                Phase::Detaching => return Err(in_progress(key, "a detach")),
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

/// The refusal of a request for `key` while `what` of it runs: "try again later".
fn in_progress(key: &AttachmentKey, what: &str) -> RegistryError {
    RegistryError::new(
        ErrorKind::TryAgainLater,
        format!("{key}: {what} of it is in progress"),
    )
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

/// The format of the state files this build writes.
///
/// - 1: netstack v0.1.0 and before (no `state_version` field).
/// - 2: the file says its version.
///
/// Like the control protocol (see [`crate::control::version`]), the format only grows by
/// fields an older netstackd may ignore (v0.1.0 ignores fields it does not know), so a rollback
/// to v0.1.0 still restores the pods. A file of a newer format is served from the fields this
/// build knows and never rewritten, so that a later upgrade finds it as it was written.
pub const STATE_VERSION: u32 = 2;

/// The format of a state file without a `state_version` field.
const STATE_V1: u32 = 1;

fn state_v1() -> u32 {
    STATE_V1
}

/// What a state file holds: its format, the attachment as `attach` carried it, and the
/// identity of its network namespace when it was attached (absent in files of older
/// netstackds).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StateRecord {
    /// The format the file was written in ([`STATE_VERSION`] when this build writes it).
    #[serde(default = "state_v1")]
    state_version: u32,
    #[serde(flatten)]
    attachment: Attachment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    netns_id: Option<NetnsId>,
}

impl StateRecord {
    /// A record of this build's format.
    fn new(attachment: Attachment, netns_id: Option<NetnsId>) -> Self {
        StateRecord {
            state_version: STATE_VERSION,
            attachment,
            netns_id,
        }
    }

    /// Was it written by a newer netstackd (so it must not be rewritten by this one)?
    fn is_newer(&self) -> bool {
        self.state_version > STATE_VERSION
    }
}

/// Why a state file could not be read as an attachment.
#[derive(Debug, thiserror::Error)]
enum StateFileError {
    /// Reading the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A newer netstackd wrote it in a format this one cannot read.
    #[error("written by a newer netstackd (state format {version}, this one reads up to {STATE_VERSION}): {source}")]
    Newer {
        /// The file's format.
        version: u32,
        /// What did not parse.
        source: serde_json::Error,
    },
    /// It is not a state file of any version.
    #[error("{0}")]
    Malformed(serde_json::Error),
}

/// Reads a state file's content; an error names the format when the file is of a newer one.
fn parse_state_file(bytes: &[u8]) -> Result<StateRecord, StateFileError> {
    #[derive(serde::Deserialize)]
    struct Version {
        #[serde(default = "state_v1")]
        state_version: u32,
    }
    serde_json::from_slice::<StateRecord>(bytes).map_err(|source| {
        match serde_json::from_slice::<Version>(bytes) {
            Ok(v) if v.state_version > STATE_VERSION => StateFileError::Newer {
                version: v.state_version,
                source,
            },
            _ => StateFileError::Malformed(source),
        }
    })
}

/// A recorded pod that could not be served again after a restart: its state file stays, and
/// the retry thread tries again at `next_try` until it works or the pod is gone.
struct Failed {
    record: StateRecord,
    error: String,
    attempts: u32,
    next_try: Instant,
}

/// The first retry of a failed restore comes after this long; each later one waits twice as
/// long as the one before, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two retries of a failed restore.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long to wait before retry number `attempts + 1` of a failed restore.
fn retry_delay(attempts: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << attempts.saturating_sub(1).min(8))
        .min(RETRY_MAX)
}

/// What became of one recorded attachment on restore.
#[derive(Debug)]
enum Restore {
    /// Served again.
    Restored,
    /// The pod is gone (its netns or its TAP/veth no longer exists, or the netns path names
    /// another namespace now): the state file goes.
    Gone(String),
    /// Anything else (EMFILE, EAGAIN, a netlink error, a changed pod CIDR, ...): the state
    /// file stays and the restore is retried.
    Failed(String),
}

/// The state file name of an attachment: `<container id>:<ifname>.json`. Neither part may
/// contain ':' (the CNI container id pattern and Linux interface names exclude it), so every
/// (container id, ifname) has its own name, and no name of the older form
/// ([`legacy_state_file_name`], which has no ':') is one.
pub fn state_file_name(key: &AttachmentKey) -> String {
    format!("{}:{}.json", key.container_id, key.ifname)
}

/// The name older netstackds gave state files, `<container id>_<ifname>.json`: ambiguous
/// (`a_b`+`c` and `a`+`b_c` share it). Such files are still read, and rewritten under
/// [`state_file_name`] on restore.
pub fn legacy_state_file_name(key: &AttachmentKey) -> String {
    format!("{}_{}.json", key.container_id, key.ifname)
}

/// Reads every state file in `dir` (removing leftover `.json.tmp` files of writes that never
/// reached their rename; unreadable files are logged and left in place), canonical names
/// first, so that a key recorded twice (an upgrade cut short) is served from its new file.
fn read_state_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, StateRecord)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
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
        match std::fs::read(&path)
            .map_err(StateFileError::from)
            .and_then(|b| parse_state_file(&b))
        {
            Ok(record) => {
                if record.is_newer() {
                    tracing::warn!(file = %path.display(), state_version = record.state_version, "state file of a newer netstackd (format {}; this one writes {STATE_VERSION}): served from the fields this version knows, not rewritten", record.state_version);
                }
                found.push((path, record))
            }
            Err(e) => {
                tracing::error!(file = %path.display(), "unreadable state file left in place: {e}")
            }
        }
    }
    found.sort_by_key(|(path, record)| {
        let canonical = path.file_name().map(|n| n.to_string_lossy().into_owned())
            == Some(state_file_name(&record.attachment.key));
        (!canonical, path.clone())
    });
    Ok(found)
}

/// Writes `record` to `path`: a temporary file, fsync, rename over the final name. A reader
/// (a restarted netstackd) sees the old file or the whole new one, never part of one.
///
/// The directory is not fsynced: that would only make the rename survive a power loss, and
/// a state file is of no use after one, since the pod's netns and devices are kernel objects
/// that do not survive it either (the restore then removes the files of pods that are gone).
/// It cost an ADD about 7 ms on an idle ext4 disk, more with other writers.
fn write_state_file(path: &Path, record: &StateRecord) -> std::io::Result<()> {
    let record = &StateRecord {
        state_version: STATE_VERSION,
        ..record.clone()
    };
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(record)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Moves a state file found at `path` to its canonical name in `dir` (the upgrade from
/// [`legacy_state_file_name`]); returns where it is now. A no-op for a canonical file and for
/// one of a newer format.
fn upgrade_state_file(dir: &Path, path: &Path, record: &StateRecord) -> std::io::Result<PathBuf> {
    if record.is_newer() {
        // Left as a newer netstackd wrote it; this one reads either name.
        return Ok(path.to_owned());
    }
    let canonical = dir.join(state_file_name(&record.attachment.key));
    if canonical != path {
        write_state_file(&canonical, record)?;
        std::fs::remove_file(path)?;
    }
    Ok(canonical)
}

/// Every attachment, and the dataplane that serves them.
pub struct Registry {
    config: DaemonConfig,
    gateway: Ipv4Addr,
    dataplane: DataplaneProcess,
    attached: Table,
    /// Recorded pods whose restore failed; retried by [`Registry::spawn_restore_retry`].
    failed: Mutex<BTreeMap<AttachmentKey, Failed>>,
    next_id: AtomicU64,
    control_metrics: super::metrics::ControlMetrics,
    metrics_addr: Mutex<Option<std::net::SocketAddr>>,
    /// The vhost-user servers of VM pods, by attachment id.
    servers: Mutex<BTreeMap<u64, VhostServer>>,
}

impl Registry {
    /// A registry with nothing attached.
    pub fn new(config: DaemonConfig, gateway: Ipv4Addr, dataplane: DataplaneProcess) -> Self {
        Registry {
            config,
            gateway,
            dataplane,
            attached: Table::default(),
            failed: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            control_metrics: Default::default(),
            metrics_addr: Mutex::new(None),
            servers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Where the socket of VM pod interface `key` is bound: `<vhost dir>/<`[`vhost_socket_name`]`>`.
    pub fn vhost_socket_path(&self, key: &AttachmentKey) -> PathBuf {
        self.config.vhost_dir.join(vhost_socket_name(key))
    }

    fn lock_servers(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, VhostServer>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The socket path `list` shows for an attachment (VM pods only).
    fn socket_path_of(&self, a: &Attachment) -> Option<PathBuf> {
        (a.mode == LinkMode::VhostUser).then(|| self.vhost_socket_path(&a.key))
    }

    /// Carries out one request; `fds` are the descriptors that came with it. Returns the
    /// reply and the descriptors to send with it.
    pub fn handle(&self, request: Request, fds: Vec<OwnedFd>) -> (Reply, Vec<OwnedFd>) {
        let result = match request {
            Request::Status => Ok(Reply::Status(self.status())),
            Request::Attach(a) => {
                let started = std::time::Instant::now();
                let container_id = a.key.container_id.clone();
                let socket_path = self.socket_path_of(&a);
                let result = self.attach(a, fds).map(|()| match socket_path {
                    Some(socket_path) => Reply::Attached { socket_path },
                    None => Reply::Done,
                });
                if let Err(e) = &result {
                    tracing::warn!(%container_id, kind = ?e.kind, "attach refused: {e}");
                }
                self.control_metrics
                    .attached(result.is_ok(), started.elapsed());
                result
            }
            Request::Detach(key) => self.detach(&key).map(|()| Reply::Done),
            Request::Release(key) => self.release(&key).map(|()| Reply::Done),
            Request::Stats => Ok(self.stats()),
            Request::List => Ok(Reply::List { pods: self.list() }),
            Request::Node => Ok(Reply::Node(crate::node::status())),
            Request::Metrics => Ok(Reply::Metrics {
                text: self.metrics_text(),
            }),
            Request::Capture(c) => {
                return match self.capture(&c) {
                    Ok(pipe) => (Reply::Capture, vec![pipe]),
                    Err(e) => (e.reply(), Vec::new()),
                }
            }
        };
        (result.unwrap_or_else(RegistryError::reply), Vec::new())
    }

    fn pod_info(
        &self,
        a: &Attached,
        serving: bool,
        quarantined: &BTreeMap<u64, String>,
    ) -> PodInfo {
        let quarantine_reason = quarantined.get(&a.id).cloned();
        let state = match (&quarantine_reason, serving) {
            (Some(_), _) => PodState::Quarantined,
            (None, true) => PodState::Attached,
            (None, false) => PodState::Pending,
        };
        PodInfo {
            key: a.attachment.key.clone(),
            netns: a.attachment.netns.clone(),
            mac: a.attachment.mac,
            ips: a.attachment.ips.clone(),
            mode: a.attachment.mode,
            state,
            quarantine_reason,
            labels: a.attachment.labels.clone(),
            error: None,
            socket_path: self.socket_path_of(&a.attachment),
        }
    }

    /// The pods whose restore failed, as `list` shows them.
    fn failed_pods(&self) -> Vec<PodInfo> {
        self.lock_failed()
            .values()
            .map(|f| {
                let a = &f.record.attachment;
                PodInfo {
                    key: a.key.clone(),
                    netns: a.netns.clone(),
                    mac: a.mac,
                    ips: a.ips.clone(),
                    mode: a.mode,
                    state: PodState::RestoreFailed,
                    quarantine_reason: None,
                    labels: a.labels.clone(),
                    error: Some(f.error.clone()),
                    socket_path: self.socket_path_of(a),
                }
            })
            .collect()
    }

    fn list(&self) -> Vec<PodInfo> {
        let serving = self.dataplane.serving();
        let quarantined = self.dataplane.quarantined();
        let mut pods: Vec<PodInfo> = self
            .lock()
            .values()
            .filter(|a| a.phase == Phase::Serving)
            .map(|a| self.pod_info(a, serving, &quarantined))
            .collect();
        pods.extend(self.failed_pods());
        pods
    }

    /// The Prometheus exposition of every metric.
    pub fn metrics_text(&self) -> String {
        let stats = self.dataplane.stats();
        let serving = self.dataplane.serving();
        let quarantined = self.dataplane.quarantined();
        let (dataplane_pid, dataplane_restarts) = self.dataplane.child();
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
            balance: stats.balance,
            flows: stats.flows,
            control: &self.control_metrics,
            dataplane_restarts,
            restore_failed: self.failed_pods(),
            supervisor: super::procstat::read(std::path::Path::new("/proc/self")),
            dataplane: dataplane_pid.and_then(|pid| {
                super::procstat::read(std::path::Path::new(&format!("/proc/{pid}")))
            }),
            node: crate::node::metrics(),
        })
    }

    fn capture(&self, c: &CaptureRequest) -> Result<OwnedFd, RegistryError> {
        let id = self
            .lock()
            .get(&c.key)
            .filter(|a| a.phase == Phase::Serving)
            .map(|a| a.id)
            .ok_or_else(|| RegistryError::new(NotFound, format!("{}: not attached", c.key)))?;
        let snaplen = c.snaplen.clamp(64, MAX_CAPTURE_SNAPLEN);
        let packets = match c.max_packets {
            0 => MAX_CAPTURE_PACKETS,
            n => n.min(MAX_CAPTURE_PACKETS),
        };
        let seconds = match c.max_seconds {
            0 => MAX_CAPTURE_SECONDS,
            n => n.min(MAX_CAPTURE_SECONDS),
        };
        crate::dataplane::capture_filter::CaptureFilter::parse(&c.filter).map_err(|e| {
            RegistryError::new(
                InvalidRequest,
                format!("{}: capture filter {:?}: {e}", c.key, c.filter),
            )
        })?;
        let pipe = self
            .dataplane
            .capture(id, snaplen, packets, seconds, &c.filter)
            .map_err(|e| RegistryError::dataplane(&c.key, e))?;
        tracing::info!(container_id = %c.key.container_id, ifname = %c.key.ifname, snaplen, packets, seconds, "capture started");
        Ok(pipe)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<AttachmentKey, Attached>> {
        self.attached.lock()
    }

    fn lock_failed(&self) -> std::sync::MutexGuard<'_, BTreeMap<AttachmentKey, Failed>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
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
            version: crate::version::LONG.to_owned(),
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
            vhost_dir: Some(self.config.vhost_dir.clone()),
            tap_io: Some(self.dataplane.tap_io().to_owned()),
            big_tcp: (self.config.big_tcp_bytes != 0).then_some(self.config.big_tcp_bytes),
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
    fn release(&self, key: &AttachmentKey) -> Result<(), RegistryError> {
        let id = self
            .lock()
            .get(key)
            .map(|a| a.id)
            .ok_or_else(|| RegistryError::new(NotFound, format!("{key}: not attached")))?;
        match self.dataplane.release(id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(RegistryError::new(
                NotFound,
                format!("{key}: not quarantined"),
            )),
            Err(e) => Err(RegistryError::dataplane(key, e)),
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
    fn validate(&self, a: &Attachment, fds: &[OwnedFd]) -> Result<PodAddrs, RegistryError> {
        let key = &a.key;
        let config = |message: String| RegistryError::new(InvalidNetworkConfig, message);
        if !valid_container_id(&key.container_id) {
            return Err(RegistryError::new(
                InvalidName,
                format!("invalid container id {:?}", key.container_id),
            ));
        }
        if !valid_ifname(&key.ifname) {
            return Err(RegistryError::new(
                InvalidName,
                format!("{key}: invalid interface name {:?}", key.ifname),
            ));
        }
        match a.mode {
            LinkMode::Tap if a.queues == 0 || a.queues != fds.len() => {
                return Err(RegistryError::new(
                    InvalidRequest,
                    format!(
                        "{key}: request announces {} TAP queues but carries {} fds",
                        a.queues,
                        fds.len()
                    ),
                ));
            }
            LinkMode::Tap => {}
            LinkMode::VhostUser => {
                if a.queues != 0 || !fds.is_empty() {
                    return Err(RegistryError::new(InvalidRequest, format!(
                        "{key}: a vhost-user attachment announces no queues and carries no fds (netstackd binds its socket), not {} and {}",
                        a.queues,
                        fds.len()
                    )));
                }
                if let Some(problem) = a.vhost_socket_mode.and_then(vhost_socket_mode_problem) {
                    return Err(config(format!("{key}: {problem}")));
                }
                if a.peer.is_some() {
                    return Err(RegistryError::new(
                        InvalidRequest,
                        format!("{key}: a vhost-user attachment has no veth peer"),
                    ));
                }
            }
            LinkMode::Veth => {
                if a.queues != 0 {
                    return Err(RegistryError::new(InvalidRequest, format!(
                        "{key}: a veth attachment announces no queues (netstackd opens its own sockets), not {}",
                        a.queues
                    )));
                }
                let want = veth_peer_name(key);
                if a.peer.as_deref() != Some(want.as_str()) {
                    return Err(config(format!(
                        "{key}: the veth peer must be named {want}, not {:?}",
                        a.peer
                    )));
                }
            }
        }
        if !a.mac.is_unicast() || a.mac.is_zero() {
            return Err(config(format!(
                "{key}: MAC {} is not a unicast address",
                a.mac
            )));
        }
        if !(68..=65535).contains(&a.mtu) {
            return Err(config(format!(
                "{key}: MTU {} out of range 68-65535",
                a.mtu
            )));
        }
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for ip in &a.ips {
            match ip {
                ipnet::IpNet::V4(v4) => {
                    let addr = v4.addr();
                    if !self.config.pod_cidr.contains(&addr) || addr == self.gateway {
                        return Err(config(format!(
                            "{key}: address {addr} is not a pod address of this node's pod CIDR {}",
                            self.config.pod_cidr
                        )));
                    }
                    ipv4.push(addr);
                }
                ipnet::IpNet::V6(v6) => {
                    let addr = v6.addr();
                    let gateway_v6 = self.config.gateway_v6().ok().flatten();
                    match self.config.pod_cidr_v6 {
                        None => {
                            return Err(config(format!(
                                "{key}: IPv6 address {addr} but netstackd has no --pod-cidr-v6"
                            )))
                        }
                        Some(cidr) if !cidr.contains(&addr) || Some(addr) == gateway_v6 => {
                            return Err(config(format!(
                                "{key}: address {addr} is not a pod address of this node's IPv6 pod CIDR {cidr}"
                            )))
                        }
                        Some(_) => ipv6.push(addr),
                    }
                }
            }
        }
        if ipv4.is_empty() && ipv6.is_empty() {
            return Err(config(format!("{key}: no IP address")));
        }
        // A veth attachment's fds are the packet sockets netstackd opened itself.
        let tap_fds = if a.mode == LinkMode::Tap { fds } else { &[] };
        for (i, fd) in tap_fds.iter().enumerate() {
            let interface = |message: String| RegistryError::new(ErrorKind::Interface, message);
            let (name, flags) = queue_info(fd.as_fd())
                .map_err(|e| interface(format!("{key}: fd {i} is not a TAP queue: {e}")))?;
            let want = POD_QUEUE_FLAGS;
            if flags & want != want {
                return Err(interface(format!(
                    "{key}: fd {i} ({name}) lacks IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|IFF_MULTI_QUEUE (flags {flags:#x})"
                )));
            }
            if name != key.ifname {
                return Err(interface(format!(
                    "{key}: fd {i} is a queue of {name}, not {}",
                    key.ifname
                )));
            }
            set_nonblocking(fd.as_fd()).map_err(|e| interface(format!("{key}: fd {i}: {e}")))?;
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

    fn attach(&self, a: Attachment, fds: Vec<OwnedFd>) -> Result<(), RegistryError> {
        if self.lock_failed().contains_key(&a.key) {
            return Err(RegistryError::new(
                Exists,
                format!(
                    "{}: recorded but not restored ({RESTORE_FAILED}): DEL it first",
                    a.key
                ),
            ));
        }
        if a.mode == LinkMode::Veth {
            let key = &a.key;
            if !fds.is_empty() {
                return Err(RegistryError::new(
                    InvalidRequest,
                    format!(
                        "{key}: a veth attachment carries no fds, this one carries {}",
                        fds.len()
                    ),
                ));
            }
            // Checked before any device is touched; admit checks again under the lock.
            self.validate(&a, &[])?;
            if self.lock().contains_key(key) {
                return Err(RegistryError::new(
                    Exists,
                    format!("{key}: already attached"),
                ));
            }
            let sockets = super::veth::open_peer(&self.config, &a, self.dataplane.workers())?;
            return self.admit(a, sockets, true);
        }
        self.admit(a, fds, true)
    }

    /// The identity of a new attachment's netns, kept in its state file so that a restart
    /// re-enters only the same namespace. Required for a `/proc/PID/ns/net` path (that path
    /// names another namespace once the process exits and its pid is reused).
    fn netns_identity(a: &Attachment) -> Result<Option<NetnsId>, RegistryError> {
        match NetnsId::of(&a.netns) {
            Ok(id) => {
                if id.ino.is_none() {
                    tracing::warn!(container_id = %a.key.container_id, netns = %a.netns.display(), "cannot open the netns (no ptrace access to a process with capabilities netstackd lacks): after a restart this pod stays restore_failed until its process exits");
                }
                Ok(Some(id))
            }
            Err(e) if crate::netns::proc_pid(&a.netns).is_some() => {
                let kind = match e {
                    NetnsError::NotFound { .. } | NetnsError::NotANetns { .. } => {
                        ErrorKind::NetnsGone
                    }
                    _ => Internal,
                };
                Err(RegistryError::new(
                    kind,
                    format!("{}: recording its netns: {e}", a.key),
                ))
            }
            Err(e) => {
                tracing::warn!(container_id = %a.key.container_id, "netns identity not recorded: {e}");
                Ok(None)
            }
        }
    }

    /// Validates an attachment and hands it to the dataplane; `record` writes its state file
    /// first (false when it comes from the state dir on restart).
    fn admit(&self, a: Attachment, fds: Vec<OwnedFd>, record: bool) -> Result<(), RegistryError> {
        let addrs = self.validate(&a, &fds)?;
        let netns_id = if record {
            Self::netns_identity(&a)?
        } else {
            None
        };
        let key = a.key.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = StateRecord::new(a.clone(), netns_id);
        let spec = PodSpec {
            id,
            mac: a.mac,
            ipv4: addrs.ipv4,
            ipv6: addrs.ipv6,
            gateway_v6: addrs.gateway_v6,
            mtu: a.mtu,
            bandwidth: a.bandwidth,
            container_id: key.container_id.clone(),
            link: match (a.mode, self.config.veth_rx_ring) {
                (LinkMode::Veth, true) => LinkKind::PacketRing,
                (LinkMode::Veth, false) => LinkKind::Packet,
                _ => LinkKind::Tap,
            },
        };
        let entry = Attached {
            id,
            attachment: a.clone(),
            phase: Phase::Attaching,
        };
        // How long the state file and the dataplane took, for the log line (an operator with
        // a slow ADD sees which: the plugin's log has the rest).
        let (mut state_took, mut served_took) = (Duration::ZERO, Duration::ZERO);
        // The disk and the dataplane without the registry lock (see `Table`).
        self.attached.attach_with(entry, || {
            let started = Instant::now();
            if record {
                self.write_state(&state).map_err(|e| {
                    RegistryError::new(Internal, format!("{key}: recording the attachment: {e}"))
                })?;
            }
            state_took = started.elapsed();
            let started = Instant::now();
            let served = if a.mode == LinkMode::VhostUser {
                self.start_vhost_server(&a, spec)
            } else {
                self.dataplane.attach(spec, fds).map_err(|e| {
                    RegistryError::dataplane(
                        format_args!("{key}: handing the queues to the dataplane"),
                        e,
                    )
                })
            };
            served_took = started.elapsed();
            if let Err(e) = served {
                if record {
                    let _ = std::fs::remove_file(self.state_path(&key));
                }
                return Err(e);
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
            state_ms = format_args!("{:.1}", state_took.as_secs_f64() * 1e3),
            dataplane_ms = format_args!("{:.1}", served_took.as_secs_f64() * 1e3),
            "attached"
        );
        Ok(())
    }

    /// Binds VM pod `a`'s socket (its mode and group from the attachment) and starts the
    /// server that hands the device to the dataplane once a VMM has connected and set it up.
    fn start_vhost_server(&self, a: &Attachment, spec: PodSpec) -> Result<(), RegistryError> {
        let key = &a.key;
        let id = spec.id;
        let mode = a.vhost_socket_mode.unwrap_or(DEFAULT_VHOST_SOCKET_MODE);
        let sock = VhostSocket::bind_with(
            &self.config.vhost_dir,
            &vhost_socket_name(key),
            mode,
            a.vhost_socket_group,
        )
        .map_err(|e| RegistryError::new(ErrorKind::Interface, format!("{key}: {e}")))?;
        let sink: Arc<dyn crate::vhost::server::DeviceSink> = Arc::new(self.dataplane.clone());
        let server =
            VhostServer::start(sock, spec, self.dataplane.workers(), sink).map_err(|e| {
                let _ = std::fs::remove_file(self.vhost_socket_path(key));
                RegistryError::new(
                    Internal,
                    format!("{key}: starting its vhost-user server: {e}"),
                )
            })?;
        tracing::info!(container_id = %key.container_id, ifname = %key.ifname, socket = %server.path().display(), mode = format_args!("{mode:#o}"), group = ?a.vhost_socket_group, "vhost-user socket bound");
        self.lock_servers().insert(id, server);
        Ok(())
    }

    /// Re-reads the state dir after a restart. Every recorded attachment whose netns (the
    /// same namespace: see [`NetnsId`]) and TAP still exist is re-opened (the TAP is
    /// persistent) and served again; the state files of pods that are gone are removed; any
    /// other failure keeps the file and shows the pod as `restore_failed` until a retry
    /// works ([`Registry::spawn_restore_retry`]). Files of the older naming are renamed.
    /// Returns (restored, cleaned up, failed).
    pub fn restore(&self) -> (usize, usize, usize) {
        let dir = &self.config.state_dir;
        let records = match read_state_dir(dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(dir = %dir.display(), "reading the state dir: {e}");
                return (0, 0, 0);
            }
        };
        let (mut restored, mut cleaned, mut failed) = (0, 0, 0);
        let mut seen = std::collections::BTreeSet::new();
        for (path, record) in records {
            let key = record.attachment.key.clone();
            if !seen.insert(key.clone()) {
                // An older copy of a file already read (an upgrade cut short).
                tracing::info!(file = %path.display(), "duplicate state file of {key} removed");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let path = match upgrade_state_file(dir, &path, &record) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "renaming the state file of {key}: {e}");
                    path
                }
            };
            match self.restore_one(&record) {
                Restore::Restored => {
                    restored += 1;
                    if record.netns_id.is_none() && !record.is_newer() {
                        // A file of an older netstackd: record its namespace's identity now.
                        self.complete_identity(&path, record);
                    }
                }
                Restore::Gone(e) => {
                    tracing::warn!(container_id = %key.container_id, ifname = %key.ifname, "pod is gone, cleaning up: {e}");
                    let _ = std::fs::remove_file(&path);
                    self.remove_stale_socket(&record.attachment);
                    cleaned += 1;
                }
                Restore::Failed(e) => {
                    tracing::error!(container_id = %key.container_id, ifname = %key.ifname, "cannot restore; state file kept, retrying in {:?}: {e}", retry_delay(1));
                    self.lock_failed().insert(
                        key,
                        Failed {
                            record,
                            error: e,
                            attempts: 1,
                            next_try: Instant::now() + retry_delay(1),
                        },
                    );
                    failed += 1;
                }
            }
        }
        (restored, cleaned, failed)
    }

    /// Adds the netns identity to the state file at `path` of a restored attachment recorded
    /// without one (only for pinned netns paths: a `/proc/PID/ns/net` one is never restored
    /// without it).
    fn complete_identity(&self, path: &Path, mut record: StateRecord) {
        match NetnsId::of(&record.attachment.netns) {
            Ok(id) => {
                record.netns_id = Some(id);
                if let Err(e) = write_state_file(path, &record) {
                    tracing::warn!(file = %path.display(), "recording the netns identity: {e}");
                }
            }
            Err(e) => tracing::warn!(file = %path.display(), "netns identity not recorded: {e}"),
        }
    }

    /// Starts the thread that retries the restores that failed at start, with backoff
    /// ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]), until each pod is served again, gone or
    /// released by DEL; the thread ends then (only a restart adds failed restores).
    pub fn spawn_restore_retry(self: &Arc<Self>) -> std::io::Result<()> {
        if self.lock_failed().is_empty() {
            return Ok(());
        }
        let registry = Arc::clone(self);
        std::thread::Builder::new()
            .name("restore-retry".into())
            .spawn(move || registry.retry_loop())?;
        Ok(())
    }

    fn retry_loop(&self) {
        let mut failed = self.lock_failed();
        loop {
            let now = Instant::now();
            let due = failed
                .iter()
                .find(|(_, f)| f.next_try <= now)
                .map(|(k, f)| (k.clone(), f.record.clone()));
            let Some((key, record)) = due else {
                let Some(next) = failed.values().map(|f| f.next_try).min() else {
                    tracing::info!("every failed restore is resolved");
                    return;
                };
                drop(failed);
                std::thread::sleep(next.saturating_duration_since(now));
                failed = self.lock_failed();
                continue;
            };
            drop(failed);
            let outcome = self.restore_one(&record);
            failed = self.lock_failed();
            let Some(entry) = failed.get_mut(&key) else {
                // DEL came while this retry ran: undo what it may have restored.
                if matches!(outcome, Restore::Restored) {
                    drop(failed);
                    let _ = self.detach(&key);
                    failed = self.lock_failed();
                }
                continue;
            };
            match outcome {
                Restore::Restored => {
                    tracing::info!(container_id = %key.container_id, ifname = %key.ifname, attempts = entry.attempts + 1, "restored on retry");
                    failed.remove(&key);
                }
                Restore::Gone(e) => {
                    tracing::warn!(container_id = %key.container_id, ifname = %key.ifname, "pod is gone, cleaning up: {e}");
                    failed.remove(&key);
                    self.remove_state(&key);
                    self.remove_stale_socket(&record.attachment);
                }
                Restore::Failed(e) => {
                    entry.attempts += 1;
                    let delay = retry_delay(entry.attempts);
                    tracing::warn!(container_id = %key.container_id, ifname = %key.ifname, attempts = entry.attempts, "restore failed again, retrying in {delay:?}: {e}");
                    entry.error = e;
                    entry.next_try = Instant::now() + delay;
                }
            }
        }
    }

    /// Re-opens one recorded attachment and hands it to the dataplane.
    fn restore_one(&self, record: &StateRecord) -> Restore {
        let fds = match self.reopen(record) {
            Ok(fds) => fds,
            Err(outcome) => return outcome,
        };
        match self.admit(record.attachment.clone(), fds, false) {
            Ok(()) => Restore::Restored,
            Err(e) => Restore::Failed(e.message),
        }
    }

    /// Runs `f` in a recorded attachment's netns, only if it is still the namespace recorded
    /// (a `/proc/PID/ns/net` path recorded without an identity is never re-entered). Errors
    /// are sorted into [`Restore::Gone`] and [`Restore::Failed`].
    fn in_recorded_netns<T: Send>(
        record: &StateRecord,
        f: impl FnOnce() -> Result<T, Restore> + Send,
    ) -> Result<T, Restore> {
        let netns = &record.attachment.netns;
        let result = match &record.netns_id {
            Some(id) => crate::netns::run_in_recorded_netns(netns, id, f),
            None if crate::netns::proc_pid(netns).is_some() => {
                if !netns.exists() {
                    return Err(Restore::Gone(format!(
                        "{} no longer exists (the process exited)",
                        netns.display()
                    )));
                }
                return Err(Restore::Failed(format!(
                    "{} was recorded without its namespace identity (an older netstackd): \
                     it cannot be proven to be the same namespace, so it is not re-entered",
                    netns.display()
                )));
            }
            None => crate::netns::run_in_netns(netns, f),
        };
        match result {
            Ok(r) => r,
            Err(
                e @ (NetnsError::NotFound { .. }
                | NetnsError::NotANetns { .. }
                | NetnsError::Changed { .. }),
            ) => Err(Restore::Gone(e.to_string())),
            Err(e) => Err(Restore::Failed(e.to_string())),
        }
    }

    /// Opens the queues of a recorded attachment's persistent TAP inside its netns, or new
    /// packet sockets on its veth peer.
    fn reopen(&self, record: &StateRecord) -> Result<Vec<OwnedFd>, Restore> {
        let a = &record.attachment;
        let ifname = a.key.ifname.clone();
        let mode = a.mode;
        let kind = mode.device_kind();
        let queues = self.dataplane.workers();
        let tap = a.mode == LinkMode::Tap;
        let fds = Self::in_recorded_netns(record, move || -> Result<_, Restore> {
            let nl = crate::netlink::Netlink::new().map_err(|e| Restore::Failed(e.to_string()))?;
            let index = match nl
                .link_info(&ifname)
                .map_err(|e| Restore::Failed(e.to_string()))?
            {
                Some(info) if mode.is_device_kind(info.kind.as_deref()) => info.index,
                Some(_) => return Err(Restore::Gone(format!("{ifname} is no longer a {kind}"))),
                None => return Err(Restore::Gone(format!("{ifname} no longer exists"))),
            };
            if !tap {
                // A veth's peer is opened below; a VM pod's socket is bound again by admit.
                return Ok(Vec::new());
            }
            // A TAP an older netstack made has the kernel's default qdiscs: 12 MiB each.
            super::no_qdisc(&nl, index, &ifname);
            crate::sys::tap::open_queues(&ifname, crate::sys::tap::TunKind::Tap, queues, true)
                .map(|q| q.fds)
                .map_err(|e| Restore::Failed(e.to_string()))
        })?;
        if tap || a.mode == LinkMode::VhostUser {
            return Ok(fds);
        }
        super::veth::open_peer(&self.config, a, queues).map_err(|e| Restore::Failed(e.to_string()))
    }

    fn detach(&self, key: &AttachmentKey) -> Result<(), RegistryError> {
        if !valid_container_id(&key.container_id) || !valid_ifname(&key.ifname) {
            return Err(RegistryError::new(
                InvalidName,
                format!("invalid attachment {key}"),
            ));
        }
        if self.lock_failed().remove(key).is_some() {
            tracing::info!(container_id = %key.container_id, ifname = %key.ifname, "released while {RESTORE_FAILED}");
        }
        // The dataplane and netlink without the registry lock (see `Table`).
        let detached = self.attached.detach_with(key, |a| {
            // A VM pod's server first: the VMM sees the connection close, the socket goes,
            // and the server takes the device from the dataplane.
            let server = self.lock_servers().remove(&a.id);
            if let Some(mut server) = server {
                server.stop();
            }
            self.dataplane.detach(a.id);
            self.control_metrics.detached();
            if let Some(peer) = a.attachment.peer.as_deref() {
                // netstackd's end of the veth; the pod's end goes with it.
                if let Err(e) = super::veth::delete_peer(&self.config.dp_netns, peer) {
                    tracing::warn!(container_id = %key.container_id, ifname = %key.ifname, "deleting veth peer {peer}: {e}");
                }
            }
            tracing::info!(container_id = %key.container_id, ifname = %key.ifname, "detached");
            self.remove_state_file(key)
        })?;
        if detached {
            Ok(())
        } else {
            // Nothing attached: a state file (and a VM pod's socket) left from an earlier run
            // still goes.
            let path = self.vhost_socket_path(key);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&path);
            }
            self.remove_state_file(key)
        }
    }

    /// Removes the socket a netstackd that died left for VM pod `a` (nothing for other
    /// modes, or when something other than a socket is at the path).
    fn remove_stale_socket(&self, a: &Attachment) {
        if let Some(path) = self.socket_path_of(a) {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(container_id = %a.key.container_id, socket = %path.display(), "removing a stale vhost-user socket: {e}");
                }
            }
        }
    }

    /// Removes an attachment's state file (and one of the older naming); an error says why.
    fn remove_state_file(&self, key: &AttachmentKey) -> Result<(), RegistryError> {
        match std::fs::remove_file(self.state_path(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RegistryError::new(
                    Internal,
                    format!("{key}: removing its state file: {e}"),
                ))
            }
        }
        self.remove_legacy_state(key);
        Ok(())
    }

    /// Removes an attachment's state file (and a file of the older naming of it), logging
    /// what fails.
    fn remove_state(&self, key: &AttachmentKey) {
        match std::fs::remove_file(self.state_path(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(container_id = %key.container_id, "removing its state file: {e}")
            }
        }
        self.remove_legacy_state(key);
    }

    /// Removes a file of the older naming if it records `key` (one whose rename failed on
    /// restore); one of the same name that records another key is left alone.
    fn remove_legacy_state(&self, key: &AttachmentKey) {
        let legacy = self.config.state_dir.join(legacy_state_file_name(key));
        let records_key = std::fs::read(&legacy)
            .ok()
            .and_then(|b| parse_state_file(&b).ok())
            .is_some_and(|r| r.attachment.key == *key);
        if records_key {
            let _ = std::fs::remove_file(&legacy);
        }
    }

    fn state_path(&self, key: &AttachmentKey) -> PathBuf {
        self.config.state_dir.join(state_file_name(key))
    }

    /// Records an attachment: write a temporary file, fsync, rename over the final name.
    fn write_state(&self, record: &StateRecord) -> std::io::Result<()> {
        let path = self.state_path(&record.attachment.key);
        write_state_file(&path, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(container_id: &str, ifname: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    fn record(container_id: &str, ifname: &str) -> StateRecord {
        let json = serde_json::json!({
            "container_id": container_id,
            "ifname": ifname,
            "netns": "/run/netns/p1",
            "mac": "02:00:00:00:00:01",
            "ips": ["10.244.1.2/24"],
            "mtu": 1500,
            "queues": 2,
        });
        serde_json::from_value(json).unwrap()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netstack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn state_file_names_do_not_collide() {
        let keys = [
            key("a_b", "c"),
            key("a", "b_c"),
            key("a", "b"),
            key("a.b", "c"),
            key("a", "b.c"),
            key("a", "b@c"),
            key("a", "c.json"),
        ];
        let names: std::collections::BTreeSet<String> = keys.iter().map(state_file_name).collect();
        assert_eq!(names.len(), keys.len(), "{names:?}");
        // The older naming did collide, and no new name is an old one.
        assert_eq!(
            legacy_state_file_name(&key("a_b", "c")),
            legacy_state_file_name(&key("a", "b_c"))
        );
        for k in &keys {
            assert_ne!(state_file_name(k), legacy_state_file_name(k));
            assert!(state_file_name(k).ends_with(".json"));
        }
    }

    #[test]
    fn colliding_keys_get_files_of_their_own() {
        let dir = temp_dir("collide");
        for (id, ifname) in [("a_b", "c"), ("a", "b_c")] {
            let r = record(id, ifname);
            let path = dir.join(state_file_name(&r.attachment.key));
            write_state_file(&path, &r).unwrap();
        }
        let read = read_state_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let keys: Vec<_> = read.iter().map(|(_, r)| r.attachment.key.clone()).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&key("a_b", "c")) && keys.contains(&key("a", "b_c")));
    }

    #[test]
    fn old_state_files_are_read_and_renamed() {
        let dir = temp_dir("upgrade");
        // What an older netstackd wrote: the bare attachment, under the older name.
        let old = record("c1", "eth0");
        let legacy = dir.join(legacy_state_file_name(&old.attachment.key));
        std::fs::write(&legacy, serde_json::to_vec(&old.attachment).unwrap()).unwrap();
        std::fs::write(dir.join("c9_eth0.json.tmp"), b"{").unwrap();
        let read = read_state_dir(&dir).unwrap();
        assert_eq!(read.len(), 1);
        let (path, r) = &read[0];
        assert_eq!(path, &legacy);
        assert_eq!(r.attachment, old.attachment);
        assert_eq!(r.netns_id, None);
        let canonical = upgrade_state_file(&dir, path, r).unwrap();
        assert_eq!(canonical, dir.join("c1:eth0.json"));
        assert!(!legacy.exists());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["c1:eth0.json"], "tmp file removed, old name gone");
        let again = read_state_dir(&dir).unwrap();
        assert_eq!(again[0].1.attachment, old.attachment);
        // A canonical file stays where it is.
        assert_eq!(
            upgrade_state_file(&dir, &again[0].0, &again[0].1).unwrap(),
            canonical
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_half_done_upgrade_reads_the_new_file_first() {
        let dir = temp_dir("half-upgrade");
        let r = record("c1", "eth0");
        std::fs::write(
            dir.join(legacy_state_file_name(&r.attachment.key)),
            serde_json::to_vec(&r.attachment).unwrap(),
        )
        .unwrap();
        let mut newer = r.clone();
        newer.netns_id = Some(NetnsId {
            dev: Some(4),
            ino: Some(4026531840),
            pid_start: None,
        });
        write_state_file(&dir.join("c1:eth0.json"), &newer).unwrap();
        let read = read_state_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].0.file_name().unwrap(), "c1:eth0.json");
        assert_eq!(read[0].1.netns_id, newer.netns_id);
    }

    /// A TAP pod's state file as netstack v0.1.0 wrote it (`serde_json::to_vec_pretty`).
    const V1_TAP_STATE: &str = r#"{
  "container_id": "upg-old-a",
  "ifname": "eth0",
  "netns": "/run/netns/upg-a",
  "mac": "0a:58:0a:f4:15:02",
  "ips": [
    "10.244.21.2/24"
  ],
  "gateways": [
    "10.244.21.1"
  ],
  "mtu": 1500,
  "queues": 2,
  "labels": {
    "K8S_POD_NAME": "upg-old-a",
    "K8S_POD_NAMESPACE": "e2e",
    "cni.network": "netstack-e2e"
  },
  "netns_id": {
    "dev": 4,
    "ino": 4026532291
  }
}"#;

    /// A veth pod's, dual-stack, with shaping.
    const V1_VETH_STATE: &str = r#"{
  "container_id": "upg-old-b",
  "ifname": "eth0",
  "netns": "/run/netns/upg-b",
  "mac": "0a:58:0a:f4:15:03",
  "ips": [
    "10.244.21.3/24",
    "fd00:10:244:21::3/64"
  ],
  "gateways": [
    "10.244.21.1",
    "fd00:10:244:21::1"
  ],
  "mtu": 1500,
  "queues": 0,
  "labels": {},
  "bandwidth": {
    "ingressRate": 8000000,
    "ingressBurst": 0,
    "egressRate": 0,
    "egressBurst": 0
  },
  "mode": "veth",
  "peer": "nsv5f0c3a1b2d4e",
  "netns_id": {
    "dev": 4,
    "ino": 4026532400
  }
}"#;

    #[test]
    fn state_files_of_v0_1_0_are_read_as_format_1_and_rewritten_as_2() {
        let dir = temp_dir("v1-state");
        for (name, text) in [
            ("upg-old-a:eth0.json", V1_TAP_STATE),
            ("upg-old-b:eth0.json", V1_VETH_STATE),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let read = read_state_dir(&dir).unwrap();
        assert_eq!(read.len(), 2);
        let (path, tap) = &read[0];
        assert_eq!(path, &dir.join("upg-old-a:eth0.json"));
        assert_eq!(tap.state_version, STATE_V1);
        assert_eq!(tap.attachment.key, key("upg-old-a", "eth0"));
        assert_eq!(tap.attachment.mode, LinkMode::Tap);
        assert_eq!(tap.attachment.queues, 2);
        assert_eq!(tap.netns_id.as_ref().and_then(|n| n.ino), Some(4026532291));
        let veth = &read[1].1;
        assert_eq!(veth.state_version, STATE_V1);
        assert_eq!(veth.attachment.mode, LinkMode::Veth);
        assert_eq!(veth.attachment.peer.as_deref(), Some("nsv5f0c3a1b2d4e"));
        assert_eq!(veth.attachment.ips.len(), 2);
        assert_eq!(
            veth.attachment.bandwidth.map(|b| b.ingress_rate),
            Some(8_000_000)
        );
        // Written again by this build: format 2 and otherwise the same JSON.
        write_state_file(path, tap).unwrap();
        let again: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut again = again.as_object().unwrap().clone();
        assert_eq!(again.remove("state_version"), Some(STATE_VERSION.into()));
        let v1: serde_json::Value = serde_json::from_str(V1_TAP_STATE).unwrap();
        assert_eq!(serde_json::Value::Object(again), v1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_files_of_this_build_are_read_by_v0_1_0() {
        // A rollback to v0.1.0 restores the pods this build recorded.
        let dir = temp_dir("v2-state");
        for text in [V1_TAP_STATE, V1_VETH_STATE] {
            let record = parse_state_file(text.as_bytes()).unwrap();
            let path = dir.join(state_file_name(&record.attachment.key));
            write_state_file(&path, &record).unwrap();
            let written = std::fs::read(&path).unwrap();
            assert!(
                String::from_utf8_lossy(&written).contains("\"state_version\": 2"),
                "{}",
                String::from_utf8_lossy(&written)
            );
            let old: crate::control::v0_1_0::StateRecord = serde_json::from_slice(&written)
                .unwrap_or_else(|e| panic!("v0.1.0 cannot read {}: {e}", path.display()));
            let as_v1: crate::control::v0_1_0::StateRecord = serde_json::from_str(text).unwrap();
            assert_eq!(old, as_v1);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_file_of_a_newer_format_is_read_and_left_as_written() {
        let dir = temp_dir("v3-state");
        let newer = V1_TAP_STATE.replacen('{', r#"{"state_version": 3, "ecn": "on","#, 1);
        // Under the older name, which this build would otherwise rename.
        let legacy = dir.join(legacy_state_file_name(&key("upg-old-a", "eth0")));
        std::fs::write(&legacy, &newer).unwrap();
        let read = read_state_dir(&dir).unwrap();
        let (path, record) = &read[0];
        assert_eq!(record.state_version, 3);
        assert!(record.is_newer());
        assert_eq!(record.attachment.key, key("upg-old-a", "eth0"));
        assert_eq!(upgrade_state_file(&dir, path, record).unwrap(), legacy);
        assert_eq!(std::fs::read_to_string(&legacy).unwrap(), newer);
        // One this build cannot read says which format it is.
        let e = parse_state_file(br#"{"state_version": 3, "container_id": 7}"#).unwrap_err();
        assert!(matches!(e, StateFileError::Newer { version: 3, .. }), "{e}");
        assert!(
            e.to_string().starts_with(
                "written by a newer netstackd (state format 3, this one reads up to 2)"
            ),
            "{e}"
        );
        let e = parse_state_file(br#"{"container_id": 7}"#).unwrap_err();
        assert!(matches!(e, StateFileError::Malformed(_)), "{e}");
        assert!(!e.to_string().contains("newer"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A VM pod's state file records its mode, socket mode and group, and reads back the
    /// same; v0.1.0 (which has no such mode) cannot read it and, after a rollback, leaves it
    /// in place for the next upgrade rather than serve the pod as something else.
    #[test]
    fn a_vm_pods_state_file_keeps_its_mode_and_socket_settings() {
        let dir = temp_dir("vhost-state");
        let mut r = record("vm1", "eth0");
        r.attachment.mode = LinkMode::VhostUser;
        r.attachment.queues = 0;
        r.attachment.vhost_socket_mode = Some(0o660);
        r.attachment.vhost_socket_group = Some(107);
        let path = dir.join(state_file_name(&r.attachment.key));
        write_state_file(&path, &r).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#""mode": "vhost-user""#)
                && text.contains(r#""vhost_socket_mode": 432"#)
                && text.contains(r#""vhost_socket_group": 107"#),
            "{text}"
        );
        let read = read_state_dir(&dir).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].1.attachment, r.attachment);
        assert!(
            serde_json::from_str::<crate::control::v0_1_0::StateRecord>(&text).is_err(),
            "v0.1.0 must not take a VM pod for a TAP pod"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retries_back_off_from_5_to_30_seconds() {
        let delays: Vec<u64> = (1..=6).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    fn pod_key(id: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn entry(id: u64, container: &str, ip: &str) -> Attached {
        Attached {
            id,
            attachment: Attachment {
                key: pod_key(container),
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
                vhost_socket_mode: None,
                vhost_socket_group: None,
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
                assert_eq!(table.detach_with(&pod_key("b"), |_| Ok(())), Ok(true));
                // Pod a's key and address stay reserved.
                let again = table.attach_with(entry(4, "a", "10.0.0.9/24"), || Ok(()));
                let again = again.unwrap_err();
                assert!(again.message.contains("in progress"));
                assert_eq!(again.kind, ErrorKind::TryAgainLater);
                let same_ip = table.attach_with(entry(5, "d", "10.0.0.2/24"), || Ok(()));
                let same_ip = same_ip.unwrap_err();
                assert!(same_ip.message.contains("already used by a/eth0"));
                assert_eq!(same_ip.kind, ErrorKind::Exists);
                let detach = table.detach_with(&pod_key("a"), |_| Ok(())).unwrap_err();
                assert!(detach.message.contains("in progress"));
                assert_eq!(detach.kind, ErrorKind::TryAgainLater);
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
        let detached = table.detach_with(&pod_key("a"), |a| {
            assert_eq!(a.id, 1);
            assert!(table.map.try_lock().is_ok(), "the lock is free meanwhile");
            assert!(serving(&table).is_empty(), "a detaching pod is not listed");
            let again = table.attach_with(entry(2, "a", "10.0.0.5/24"), || Ok(()));
            assert!(again
                .unwrap_err()
                .message
                .contains("detach of it is in progress"));
            table
                .attach_with(entry(3, "b", "10.0.0.3/24"), || Ok(()))
                .unwrap();
            Err(RegistryError::new(Internal, "state file: disk on fire"))
        });
        assert_eq!(
            detached,
            Err(RegistryError::new(Internal, "state file: disk on fire"))
        );
        assert_eq!(
            serving(&table),
            ["b"],
            "a failed detach still forgets the pod"
        );
        assert_eq!(table.detach_with(&pod_key("a"), |_| Ok(())), Ok(false));
    }

    #[test]
    fn a_failed_or_panicking_attach_gives_its_key_back() {
        let table = Table::default();
        let no = || RegistryError::new(Internal, "no");
        let failed = table.attach_with(entry(1, "a", "10.0.0.2/24"), || Err(no()));
        assert_eq!(failed, Err(no()));
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
