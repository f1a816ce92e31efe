//! The supervisor side of the privilege split: it keeps a duplicate of every fd (uplink queues,
//! every pod's TAP queues), runs the dataplane as a child process (`netstackd dataplane`) with
//! no capabilities under seccomp, and when that child dies starts a new one and hands it the
//! same fds, so pods barely notice.
//!
//! A crash loop is not possible: each worker publishes the pod whose frames it handles in
//! memory shared with the supervisor (`sys::shm`); each death of the child with a pod's frames
//! in flight is a strike against that pod, and a pod with [`STRIKES`] strikes within
//! [`STRIKE_WINDOW`] is quarantined: the next dataplane does not get it, so its queued frames
//! are never read, until DEL or `ctl release` (which discards what its queues hold first).
//! Every message to the child has a deadline; a child that misses one is killed as hung and
//! restarted, and the caller gets an error it may retry.

mod strikes;

pub use strikes::Strikes;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::{Counters, RETRYABLE};
use crate::dataplane::child::DataplaneUser;
use crate::dataplane::ipc::{self, DpReply, DpRequest, IpcError, CHILD_FD};
use crate::dataplane::PodSpec;
use crate::sys::process::spawn_with_fd;
use crate::sys::shm::SharedU64s;
use crate::vhost::attach::VhostAttach;

/// How long the dataplane may take to start its workers and answer `init`...
const INIT_DEADLINE: Duration = Duration::from_secs(5);
/// ...and more per worker: 256 of them take about 0.4 s to start on an idle 2-vCPU VM, and
/// a child killed as hung at start is started again, the same way, for ever.
const INIT_PER_WORKER: Duration = Duration::from_millis(10);
/// How long it may take to answer an attach, detach or capture: more than it gives its own
/// workers (5 s), so a stuck worker is reported by the child rather than taken for a hang.
const APPLY_DEADLINE: Duration = Duration::from_secs(8);
/// How long it may take to answer `stats` (called by every status, list and scrape).
const STATS_DEADLINE: Duration = Duration::from_secs(5);
/// Deaths of the dataplane with a pod's frames in flight that quarantine the pod...
pub const STRIKES: usize = 3;
/// ...when they fall within this long.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(60);
/// Most frames discarded from one queue of a pod released from quarantine.
const PURGE_MAX: usize = 100_000;
/// Pause before the first restart; doubled for each quick crash in a row, up to the maximum.
const RESTART_DELAY: Duration = Duration::from_millis(50);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);
/// A child that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

struct Inner {
    conn: Option<UnixStream>,
    pid: Option<u32>,
    gateway: Ipv4Addr,
    uplink_mtu: u32,
    segment_gso: bool,
    big_tcp_bytes: u32,
    service_flows: bool,
    flow_balance: bool,
    /// TAP queues through io_uring (`--tap-io`, resolved).
    tap_uring: bool,
    user: DataplaneUser,
    uplink: Vec<OwnedFd>,
    pods: BTreeMap<u64, (PodSpec, Vec<OwnedFd>)>,
    /// The VM pods among `pods`: their devices (whose fds are the pod's in `pods`).
    vhost: BTreeMap<u64, VhostAttach>,
    restarts: u64,
    shutting_down: bool,
    /// Frames the kernel dropped on each veth pod's packet sockets so far (its own count
    /// restarts at every read).
    kernel_drops: HashMap<u64, u64>,
    /// The running child's in-flight slots, one per worker.
    in_flight: Option<SharedU64s>,
    /// Deaths of the dataplane with each pod's frames in flight.
    strikes: Strikes,
    /// Pods the dataplane does not get, with the reason.
    quarantined: BTreeMap<u64, String>,
}

/// Why a message to the child got no answer.
enum CallError {
    /// No child runs (it is being restarted).
    Down,
    /// The link broke (the child died); the child is killed to be sure.
    Broken,
    /// The child missed the deadline: it was killed as hung.
    Hung(Duration),
}

/// The drop reason of frames the kernel dropped before netstackd could read them: a veth
/// pod's packet socket buffer or receive ring was full.
pub const KERNEL_QUEUE_FULL: &str = "kernel_queue_full";

/// What the dataplane reports: counters per attachment id, the uplink's, and epoll wakeups
/// per worker.
#[derive(Debug, Default)]
pub struct DataplaneStats {
    /// Per attachment id.
    pub pods: HashMap<u64, Counters>,
    /// The uplink.
    pub uplink: Counters,
    /// Per worker.
    pub wakeups: Vec<u64>,
    /// Flow balancing, per worker.
    pub balance: crate::dataplane::BalanceStats,
    /// The service flow table.
    pub flows: crate::stack::FlowStats,
}

/// Why the dataplane did not do what the supervisor asked of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// It is restarting, or did not answer in time and is being restarted: ask again (the
    /// message ends in [`RETRYABLE`], as clients of protocol 1 expect).
    #[error("{0} {RETRYABLE}")]
    Restarting(String),
    /// It refused the request (its own words) or answered something unexpected.
    #[error("{0}")]
    Refused(String),
    /// The supervisor could not prepare the request (a pipe, a copy of the pod's fds).
    #[error("{0}")]
    Local(String),
}

/// The dataplane child and everything needed to start it again (a clone is a handle to the
/// same child).
#[derive(Clone)]
pub struct DataplaneProcess {
    inner: Arc<Mutex<Inner>>,
    workers: usize,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// One request/reply within `deadline`; a broken link or a missed deadline kills the
    /// child (the monitor replaces it).
    fn call(
        &mut self,
        req: &DpRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
        deadline: Duration,
    ) -> Result<DpReply, CallError> {
        let conn = self.conn.as_ref().ok_or(CallError::Down)?;
        match ipc::exchange::<_, DpReply>(conn, req, fds, deadline) {
            Ok((reply, _)) => Ok(reply),
            Err(IpcError::Timeout(d)) => {
                tracing::warn!(
                    pid = self.pid,
                    "the dataplane did not answer within {d:?}: killing it as hung"
                );
                self.kill_child();
                Err(CallError::Hung(d))
            }
            Err(e) => {
                tracing::warn!("dataplane link broke: {e}");
                self.kill_child();
                Err(CallError::Broken)
            }
        }
    }

    /// The pods whose frames the dead child's workers were handling (their slots are reset).
    fn take_in_flight(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        if let Some(slots) = &self.in_flight {
            for i in 0..slots.len() {
                if let Some(slot) = slots.get(i) {
                    let id = slot.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if id != 0 && !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
        ids
    }

    /// Counts a strike against every pod whose frames were in flight when the child died
    /// (`status`), and quarantines those with too many. True when one was quarantined.
    fn strike_in_flight(&mut self, status: &str) -> bool {
        let now = Instant::now();
        let mut any = false;
        for id in self.take_in_flight() {
            let Some((spec, _)) = self.pods.get(&id) else {
                continue;
            };
            if self.quarantined.contains_key(&id) {
                continue;
            }
            let container_id = spec.container_id.clone();
            let count = self.strikes.strike(id, now);
            if !self.strikes.reached(count) {
                tracing::warn!(
                    %container_id,
                    id,
                    strikes = count,
                    "the dataplane died ({status}) while handling this pod's frames"
                );
                continue;
            }
            let reason = format!(
                "the dataplane died {count} times within {} s while handling its frames (last: {status})",
                STRIKE_WINDOW.as_secs()
            );
            tracing::warn!(
                %container_id,
                id,
                "pod quarantined: {reason}; its queues are no longer read until DEL or `netstackd ctl release`"
            );
            self.strikes.forget(id);
            self.quarantined.insert(id, reason);
            any = true;
        }
        any
    }

    /// Adds what the kernel dropped on each veth pod's packet sockets to its drops.
    fn count_kernel_drops(&mut self, counters: &mut HashMap<u64, Counters>) {
        for (id, (spec, fds)) in &self.pods {
            if !spec.link.is_packet() {
                continue;
            }
            let total = self.kernel_drops.entry(*id).or_default();
            for fd in fds {
                match crate::sys::packet::take_drops(fd.as_fd()) {
                    Ok(n) => *total += n,
                    Err(e) => tracing::debug!(container_id = %spec.container_id, "{e}"),
                }
            }
            if let Some(c) = counters.get_mut(id) {
                c.drops.insert(KERNEL_QUEUE_FULL.to_owned(), *total);
            }
        }
    }

    /// The request that hands pod `spec` to a dataplane: `Attach`, or for a VM pod
    /// `AttachVhost` with its rings resumed at the used index when `resume`.
    fn attach_request(&self, spec: &PodSpec, resume: bool) -> DpRequest {
        match self.vhost.get(&spec.id) {
            Some(d) => DpRequest::AttachVhost {
                spec: spec.clone(),
                device: if resume { d.resumed() } else { d.clone() },
            },
            None => DpRequest::Attach(spec.clone()),
        }
    }

    fn kill_child(&mut self) {
        self.conn = None;
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Starts a child and brings it up to date: init with the uplink, then every pod.
    fn spawn(&mut self) -> anyhow::Result<Child> {
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        let exe = std::env::current_exe().context("finding netstackd's own binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("dataplane")
            .args(["--user", &self.user.to_string()])
            .stdin(Stdio::null());
        let theirs: OwnedFd = theirs.into();
        let (slots, memfd) =
            SharedU64s::create(self.uplink.len().max(1)).context("in-flight shared memory")?;
        let mut child = spawn_with_fd(cmd, &theirs, CHILD_FD).context("starting the dataplane")?;
        drop(theirs);
        let handshake = (|| -> anyhow::Result<()> {
            let mut fds: Vec<_> = self.uplink.iter().map(|fd| fd.as_fd()).collect();
            fds.push(memfd.as_fd());
            let init = DpRequest::Init {
                gateway: self.gateway,
                uplink_mtu: self.uplink_mtu,
                segment_gso: self.segment_gso,
                big_tcp_bytes: self.big_tcp_bytes,
                service_flows_off: !self.service_flows,
                flow_balance_off: !self.flow_balance,
                in_flight: true,
                tap_uring: self.tap_uring,
            };
            let deadline = INIT_DEADLINE + INIT_PER_WORKER * self.uplink.len() as u32;
            match ipc::exchange::<_, DpReply>(&ours, &init, &fds, deadline)?.0 {
                DpReply::Done => {}
                other => anyhow::bail!("dataplane refused init: {other:?}"),
            }
            for (id, (spec, fds)) in &self.pods {
                if self.quarantined.contains_key(id) {
                    continue;
                }
                let fds: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
                let req = self.attach_request(spec, true);
                if let (DpReply::Error { message }, _) =
                    ipc::exchange::<_, DpReply>(&ours, &req, &fds, APPLY_DEADLINE)?
                {
                    tracing::error!(
                        container_id = %spec.container_id,
                        id = spec.id,
                        "dataplane refused a pod on restart: {message}"
                    );
                }
            }
            Ok(())
        })();
        if let Err(e) = handshake {
            let _ = child.kill();
            let status = child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            // Replayed pods are polled as soon as they are attached: a pod whose queued frames
            // kill the child before the replay ends gets its strikes here.
            self.in_flight = Some(slots);
            self.strike_in_flight(&status);
            self.in_flight = None;
            return Err(e.context(format!("bringing the dataplane up (it exited: {status})")));
        }
        self.pid = Some(child.id());
        self.conn = Some(ours);
        self.in_flight = Some(slots);
        Ok(child)
    }
}

impl DataplaneProcess {
    /// Starts the dataplane child, running as `user`, with one worker per uplink queue set up
    /// as `options` say (TAP queues on io_uring if `tap_uring`), and a thread that restarts it
    /// whenever it dies (or when it could not start).
    pub fn start(
        uplink: Vec<OwnedFd>,
        gateway: Ipv4Addr,
        uplink_mtu: u32,
        options: crate::dataplane::WorkerOptions,
        tap_uring: bool,
        user: DataplaneUser,
    ) -> anyhow::Result<Self> {
        let crate::dataplane::WorkerOptions {
            segment_gso,
            big_tcp_bytes,
            service_flows,
            flow_balance,
        } = options;
        let workers = uplink.len();
        let inner = Arc::new(Mutex::new(Inner {
            conn: None,
            pid: None,
            gateway,
            uplink_mtu,
            segment_gso,
            big_tcp_bytes,
            service_flows,
            flow_balance,
            tap_uring,
            user,
            uplink,
            pods: BTreeMap::new(),
            vhost: BTreeMap::new(),
            restarts: 0,
            shutting_down: false,
            kernel_drops: HashMap::new(),
            in_flight: None,
            strikes: Strikes::new(STRIKES, STRIKE_WINDOW),
            quarantined: BTreeMap::new(),
        }));
        // A dataplane that fails to come up is retried by the monitor like one that crashed:
        // the supervisor serves (and records attachments) meanwhile.
        let child = match lock(&inner).spawn() {
            Ok(child) => Some(child),
            Err(e) => {
                tracing::error!("starting the dataplane: {e:#}");
                None
            }
        };
        let monitored = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("dp-monitor".into())
            .spawn(move || monitor(monitored, child))
            .context("starting the dataplane monitor")?;
        Ok(DataplaneProcess { inner, workers })
    }

    /// Dataplane workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How the dataplane reads and writes TAP queues: `uring` or `readv`.
    pub fn tap_io(&self) -> &'static str {
        if lock(&self.inner).tap_uring {
            "uring"
        } else {
            "readv"
        }
    }

    /// The dataplane child's pid, and how many times it was restarted.
    pub fn child(&self) -> (Option<u32>, u64) {
        let inner = lock(&self.inner);
        (inner.pid, inner.restarts)
    }

    /// Serves a pod. The fds are kept here (a restarted dataplane gets them again).
    pub fn attach(&self, spec: PodSpec, fds: Vec<OwnedFd>) -> Result<(), DataplaneError> {
        self.attach_pod(spec, None, fds)
    }

    /// Serves a VM pod over its vhost-user device (`fds` as `crate::vhost::attach` orders
    /// them). The description and the fds are kept: a restarted dataplane gets them again,
    /// each ring resuming at the used index in guest memory.
    pub fn attach_vhost(
        &self,
        spec: PodSpec,
        device: VhostAttach,
        fds: Vec<OwnedFd>,
    ) -> Result<(), DataplaneError> {
        self.attach_pod(spec, Some(device), fds)
    }

    fn attach_pod(
        &self,
        spec: PodSpec,
        device: Option<VhostAttach>,
        fds: Vec<OwnedFd>,
    ) -> Result<(), DataplaneError> {
        let mut inner = lock(&self.inner);
        let req = match &device {
            Some(device) => DpRequest::AttachVhost {
                spec: spec.clone(),
                device: device.clone(),
            },
            None => DpRequest::Attach(spec.clone()),
        };
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        let reply = inner.call(&req, &borrowed, APPLY_DEADLINE);
        drop(borrowed);
        match reply {
            // Done, or no child runs / it died mid-call: a new one gets this pod in its replay.
            Ok(DpReply::Done) | Err(CallError::Down | CallError::Broken) => {
                if let Some(device) = device {
                    inner.vhost.insert(spec.id, device);
                }
                inner.pods.insert(spec.id, (spec, fds));
                Ok(())
            }
            Err(CallError::Hung(d)) => Err(DataplaneError::Restarting(format!(
                "the dataplane did not answer within {} s and is being restarted; try again",
                d.as_secs()
            ))),
            Ok(DpReply::Error { message }) => Err(DataplaneError::Refused(message)),
            Ok(other) => Err(DataplaneError::Refused(format!(
                "unexpected dataplane reply {other:?}"
            ))),
        }
    }

    /// VM pod `id`'s vring `vring` has the call eventfd `call` now (the guest changed its
    /// interrupt vectors): kept with the pod's device (a restarted dataplane gets it) and
    /// handed to the running dataplane, which goes on serving the rings.
    pub fn set_vring_call(
        &self,
        id: u64,
        vring: usize,
        call: Option<OwnedFd>,
    ) -> Result<(), DataplaneError> {
        let mut inner = lock(&self.inner);
        let dup = call
            .as_ref()
            .map(|fd| fd.try_clone())
            .transpose()
            .map_err(|e| DataplaneError::Local(format!("duplicating a call eventfd: {e}")))?;
        let Inner { vhost, pods, .. } = &mut *inner;
        let (Some(device), Some((_, fds))) = (vhost.get_mut(&id), pods.get_mut(&id)) else {
            return Err(DataplaneError::Refused(format!("no VM pod {id}")));
        };
        device
            .set_call(fds, vring, call)
            .map_err(|e| DataplaneError::Refused(e.to_string()))?;
        if inner.quarantined.contains_key(&id) {
            return Ok(());
        }
        let req = DpRequest::SetVringCall {
            id,
            vring,
            call: dup.is_some(),
        };
        let borrowed: Vec<_> = dup.iter().map(|fd| fd.as_fd()).collect();
        match inner.call(&req, &borrowed, APPLY_DEADLINE) {
            // No child runs, or it died mid-call: a new one gets the kept device.
            Ok(DpReply::Done) | Err(CallError::Down | CallError::Broken) => Ok(()),
            Err(CallError::Hung(d)) => Err(DataplaneError::Restarting(format!(
                "the dataplane did not answer within {} s and is being restarted",
                d.as_secs()
            ))),
            Ok(DpReply::Error { message }) => Err(DataplaneError::Refused(message)),
            Ok(other) => Err(DataplaneError::Refused(format!(
                "unexpected dataplane reply {other:?}"
            ))),
        }
    }

    /// Stops serving a pod (quarantined or not) and closes the fds kept for it. Idempotent.
    pub fn detach(&self, id: u64) {
        let mut inner = lock(&self.inner);
        inner.vhost.remove(&id);
        inner.kernel_drops.remove(&id);
        inner.strikes.forget(id);
        let was_quarantined = inner.quarantined.remove(&id).is_some();
        if inner.pods.remove(&id).is_some() && !was_quarantined {
            let _ = inner.call(&DpRequest::Detach { id }, &[], APPLY_DEADLINE);
        }
    }

    /// Quarantined pods (by attachment id) with the reason.
    pub fn quarantined(&self) -> BTreeMap<u64, String> {
        lock(&self.inner).quarantined.clone()
    }

    /// Takes pod `id` out of quarantine: discards every frame its queues hold (they may be
    /// the ones that crashed the dataplane), then hands it to the dataplane again. False when
    /// it is not quarantined.
    pub fn release(&self, id: u64) -> Result<bool, DataplaneError> {
        let mut inner = lock(&self.inner);
        if !inner.quarantined.contains_key(&id) {
            return Ok(false);
        }
        let Some((spec, fds)) = inner.pods.get(&id) else {
            inner.quarantined.remove(&id);
            return Ok(false);
        };
        let spec = spec.clone();
        // A VM pod's fds are guest memory and eventfds: its rings hold what the guest sent.
        let discarded: usize = if inner.vhost.contains_key(&id) {
            0
        } else {
            fds.iter().map(|fd| purge(fd.as_fd())).sum()
        };
        // Duplicates to send (the originals stay in `pods`, borrowed from `inner`).
        let dups = fds
            .iter()
            .map(|fd| fd.try_clone())
            .collect::<std::io::Result<Vec<OwnedFd>>>()
            .map_err(|e| DataplaneError::Local(format!("duplicating the pod's fds: {e}")))?;
        // Out of quarantine first: if the child dies now, its replay includes the pod.
        let reason = inner.quarantined.remove(&id);
        let borrowed: Vec<_> = dups.iter().map(|fd| fd.as_fd()).collect();
        let req = inner.attach_request(&spec, true);
        let reply = inner.call(&req, &borrowed, APPLY_DEADLINE);
        match reply {
            Ok(DpReply::Done) | Err(CallError::Down | CallError::Broken) => {
                tracing::info!(
                    container_id = %spec.container_id,
                    id,
                    discarded,
                    "released from quarantine; the frames its queues held were discarded"
                );
                Ok(true)
            }
            Err(CallError::Hung(d)) => Err(DataplaneError::Restarting(format!(
                "released, but the dataplane did not answer within {} s and is being restarted",
                d.as_secs()
            ))),
            Ok(other) => {
                let message = match other {
                    DpReply::Error { message } => message,
                    other => format!("unexpected dataplane reply {other:?}"),
                };
                if let Some(reason) = reason {
                    inner.quarantined.insert(id, reason);
                }
                Err(DataplaneError::Refused(format!(
                    "the dataplane refused the pod: {message}"
                )))
            }
        }
    }

    /// Counters per attachment id, of the uplink, and worker wakeups (empty while the
    /// dataplane restarts).
    pub fn stats(&self) -> DataplaneStats {
        let mut inner = lock(&self.inner);
        match inner.call(&DpRequest::Stats, &[], STATS_DEADLINE) {
            Ok(DpReply::Stats {
                pods,
                uplink,
                wakeups,
                balance,
                flows,
            }) => {
                let mut pods: HashMap<u64, Counters> = pods.into_iter().collect();
                inner.count_kernel_drops(&mut pods);
                DataplaneStats {
                    pods,
                    uplink,
                    wakeups,
                    balance: *balance,
                    flows,
                }
            }
            _ => DataplaneStats::default(),
        }
    }

    /// Is pod `id` handed to a running dataplane?
    pub fn serving(&self) -> bool {
        lock(&self.inner).conn.is_some()
    }

    /// Starts a capture of pod `id`; returns the read end of the pipe the records go to.
    pub fn capture(
        &self,
        id: u64,
        snaplen: u32,
        max_packets: u64,
        max_seconds: u64,
        filter: &str,
    ) -> Result<OwnedFd, DataplaneError> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let pipe_error = |e| DataplaneError::Local(format!("pipe: {e}"));
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(pipe_error)?;
        fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(pipe_error)?;
        // Room for bursts while the reader catches up; the default 64 KiB fills in microseconds.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(1 << 20));
        let mut inner = lock(&self.inner);
        let req = DpRequest::Capture {
            id,
            snaplen,
            max_packets,
            max_seconds,
            filter: filter.to_owned(),
        };
        match inner.call(&req, &[write.as_fd()], APPLY_DEADLINE) {
            Ok(DpReply::Done) => Ok(read),
            Ok(DpReply::Error { message }) => Err(DataplaneError::Refused(message)),
            Ok(other) => Err(DataplaneError::Refused(format!(
                "unexpected dataplane reply {other:?}"
            ))),
            Err(_) => Err(DataplaneError::Restarting(
                "the dataplane is restarting; try again".into(),
            )),
        }
    }

    /// Asks the dataplane to finish its batches and exit, and does not restart it.
    pub fn shutdown(&self) {
        let mut inner = lock(&self.inner);
        inner.shutting_down = true;
        let _ = inner.call(&DpRequest::Shutdown, &[], APPLY_DEADLINE);
        inner.conn = None;
    }
}

/// Reads and discards what a pod's queue (a TAP queue or a packet socket) holds, at most
/// [`PURGE_MAX`] frames; returns how many. The supervisor never parses them.
fn purge(fd: std::os::fd::BorrowedFd<'_>) -> usize {
    if let Err(e) = crate::sys::tap::set_nonblocking(fd) {
        tracing::debug!("purging a pod queue: {e}");
        return 0;
    }
    let mut vnet = [0u8; crate::sys::tap::VNET_HDR_LEN];
    let mut buf = vec![0u8; 65536 + 64];
    let mut n = 0;
    while n < PURGE_MAX {
        match crate::sys::tap::read_frame(fd, &mut vnet, &mut buf) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => n += 1,
            Err(_) => break,
        }
    }
    n
}

/// Waits for the child to die and starts another, with backoff for crash loops.
fn monitor(inner: Arc<Mutex<Inner>>, first: Option<Child>) {
    let mut delay = RESTART_DELAY;
    let mut child = first;
    loop {
        let started = Instant::now();
        let status = match child.as_mut() {
            Some(c) => c.wait(),
            None => Err(std::io::Error::other("it did not start")),
        };
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        {
            let mut guard = lock(&inner);
            if guard.shutting_down {
                return;
            }
            guard.conn = None;
            guard.pid = None;
            // The pods that made it crash are left out of the next one: no backoff for the rest.
            if guard.strike_in_flight(&status) {
                delay = RESTART_DELAY;
            }
        }
        if started.elapsed() > STABLE_AFTER {
            delay = RESTART_DELAY;
        }
        tracing::warn!(%status, restart_in_ms = delay.as_millis() as u64, "dataplane exited; restarting it");
        loop {
            std::thread::sleep(delay);
            delay = (delay * 2).min(RESTART_DELAY_MAX);
            let mut guard = lock(&inner);
            if guard.shutting_down {
                return;
            }
            match guard.spawn() {
                Ok(c) => {
                    guard.restarts += 1;
                    tracing::info!(pid = c.id(), pods = guard.pods.len(), "dataplane restarted");
                    child = Some(c);
                    break;
                }
                Err(e) => tracing::error!("restarting the dataplane: {e:#}"),
            }
        }
    }
}

/// The supervisor's VM pod threads hand devices to the dataplane through this.
impl crate::vhost::server::DeviceSink for DataplaneProcess {
    fn attach(&self, spec: &PodSpec, device: VhostAttach, fds: Vec<OwnedFd>) -> Result<(), String> {
        self.attach_vhost(spec.clone(), device, fds)
            .map_err(|e| e.to_string())
    }

    fn detach(&self, id: u64) {
        DataplaneProcess::detach(self, id);
    }

    fn set_call(&self, id: u64, vring: usize, call: Option<OwnedFd>) -> Result<(), String> {
        self.set_vring_call(id, vring, call)
            .map_err(|e| e.to_string())
    }
}
