//! The supervisor side of the privilege split: it keeps a duplicate of every fd (uplink queues,
//! every pod's TAP queues), runs the dataplane as a child process (`netstackd dataplane`) with
//! no capabilities under seccomp, and when that child dies starts a new one and hands it the
//! same fds, so pods barely notice.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::Counters;
use crate::dataplane::child::DataplaneUser;
use crate::dataplane::ipc::{self, DpReply, DpRequest, CHILD_FD};
use crate::dataplane::PodSpec;
use crate::sys::process::spawn_with_fd;

/// How long the dataplane may take to answer one message before it is killed and replaced.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
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
    user: DataplaneUser,
    uplink: Vec<OwnedFd>,
    pods: BTreeMap<u64, (PodSpec, Vec<OwnedFd>)>,
    restarts: u64,
    shutting_down: bool,
    /// Frames the kernel dropped on each veth pod's packet sockets so far (its own count
    /// restarts at every read).
    kernel_drops: HashMap<u64, u64>,
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
}

/// The dataplane child and everything needed to start it again.
pub struct DataplaneProcess {
    inner: Arc<Mutex<Inner>>,
    workers: usize,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// One request/reply; a broken link marks the child dead (the monitor replaces it).
    fn call(&mut self, req: &DpRequest, fds: &[std::os::fd::BorrowedFd<'_>]) -> Option<DpReply> {
        let conn = self.conn.as_ref()?;
        let result = ipc::send(conn, req, fds).and_then(|()| ipc::recv::<DpReply>(conn));
        match result {
            Ok((reply, _)) => Some(reply),
            Err(e) => {
                tracing::warn!("dataplane link broke: {e}");
                self.kill_child();
                None
            }
        }
    }

    /// Adds what the kernel dropped on each veth pod's packet sockets to its drops.
    fn count_kernel_drops(&mut self, counters: &mut HashMap<u64, Counters>) {
        for (id, (spec, fds)) in &self.pods {
            if !spec.packet_sockets {
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
        let mut child = spawn_with_fd(cmd, &theirs, CHILD_FD).context("starting the dataplane")?;
        drop(theirs);
        ours.set_read_timeout(Some(REPLY_TIMEOUT))?;
        ours.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let handshake = (|| -> anyhow::Result<()> {
            let uplink: Vec<_> = self.uplink.iter().map(|fd| fd.as_fd()).collect();
            let init = DpRequest::Init {
                gateway: self.gateway,
                uplink_mtu: self.uplink_mtu,
                segment_gso: self.segment_gso,
            };
            ipc::send(&ours, &init, &uplink)?;
            match ipc::recv::<DpReply>(&ours)?.0 {
                DpReply::Done => {}
                other => anyhow::bail!("dataplane refused init: {other:?}"),
            }
            for (spec, fds) in self.pods.values() {
                let fds: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
                ipc::send(&ours, &DpRequest::Attach(spec.clone()), &fds)?;
                if let (DpReply::Error { message }, _) = ipc::recv::<DpReply>(&ours)? {
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
            return Err(e.context(format!("bringing the dataplane up (it exited: {status})")));
        }
        self.pid = Some(child.id());
        self.conn = Some(ours);
        Ok(child)
    }
}

impl DataplaneProcess {
    /// Starts the dataplane child, running as `user`, with one worker per uplink queue, and a
    /// thread that restarts it whenever it dies (or when it could not start).
    pub fn start(
        uplink: Vec<OwnedFd>,
        gateway: Ipv4Addr,
        uplink_mtu: u32,
        segment_gso: bool,
        user: DataplaneUser,
    ) -> anyhow::Result<Self> {
        let workers = uplink.len();
        let inner = Arc::new(Mutex::new(Inner {
            conn: None,
            pid: None,
            gateway,
            uplink_mtu,
            segment_gso,
            user,
            uplink,
            pods: BTreeMap::new(),
            restarts: 0,
            shutting_down: false,
            kernel_drops: HashMap::new(),
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

    /// The dataplane child's pid, and how many times it was restarted.
    pub fn child(&self) -> (Option<u32>, u64) {
        let inner = lock(&self.inner);
        (inner.pid, inner.restarts)
    }

    /// Serves a pod. The fds are kept here (a restarted dataplane gets them again).
    pub fn attach(&self, spec: PodSpec, fds: Vec<OwnedFd>) -> Result<(), String> {
        let mut inner = lock(&self.inner);
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        let reply = inner.call(&DpRequest::Attach(spec.clone()), &borrowed);
        drop(borrowed);
        match reply {
            // Done, or the child died mid-call: a new one gets this pod in its replay.
            Some(DpReply::Done) | None => {
                inner.pods.insert(spec.id, (spec, fds));
                Ok(())
            }
            Some(DpReply::Error { message }) => Err(message),
            Some(other) => Err(format!("unexpected dataplane reply {other:?}")),
        }
    }

    /// Stops serving a pod and closes the fds kept for it. Idempotent.
    pub fn detach(&self, id: u64) {
        let mut inner = lock(&self.inner);
        inner.kernel_drops.remove(&id);
        if inner.pods.remove(&id).is_some() {
            let _ = inner.call(&DpRequest::Detach { id }, &[]);
        }
    }

    /// Counters per attachment id, of the uplink, and worker wakeups (empty while the
    /// dataplane restarts).
    pub fn stats(&self) -> DataplaneStats {
        let mut inner = lock(&self.inner);
        match inner.call(&DpRequest::Stats, &[]) {
            Some(DpReply::Stats {
                pods,
                uplink,
                wakeups,
            }) => {
                let mut pods: HashMap<u64, Counters> = pods.into_iter().collect();
                inner.count_kernel_drops(&mut pods);
                DataplaneStats {
                    pods,
                    uplink,
                    wakeups,
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
    ) -> Result<OwnedFd, String> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| format!("pipe: {e}"))?;
        // Room for bursts while the reader catches up; the default 64 KiB fills in microseconds.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(1 << 20));
        let mut inner = lock(&self.inner);
        let req = DpRequest::Capture {
            id,
            snaplen,
            max_packets,
            max_seconds,
        };
        match inner.call(&req, &[write.as_fd()]) {
            Some(DpReply::Done) => Ok(read),
            Some(DpReply::Error { message }) => Err(message),
            Some(other) => Err(format!("unexpected dataplane reply {other:?}")),
            None => Err("the dataplane is restarting; try again".into()),
        }
    }

    /// Asks the dataplane to finish its batches and exit, and does not restart it.
    pub fn shutdown(&self) {
        let mut inner = lock(&self.inner);
        inner.shutting_down = true;
        let _ = inner.call(&DpRequest::Shutdown, &[]);
        inner.conn = None;
    }
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
        {
            let mut guard = lock(&inner);
            if guard.shutting_down {
                return;
            }
            guard.conn = None;
            guard.pid = None;
        }
        if started.elapsed() > STABLE_AFTER {
            delay = RESTART_DELAY;
        }
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
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
