//! The dataplane: N worker threads, each owning one queue of every pod's multi-queue TAP and
//! one queue of the uplink TUN, so the hot path takes no lock. Pods are added and removed by
//! message; a call returns once every worker has applied it.
//!
//! In netstackd the dataplane runs in a child process with no capabilities under seccomp
//! (`child`, `seccomp`); the supervisor talks to it with the messages of `ipc`.

mod balance;
pub mod capture;
pub mod capture_filter;
pub mod child;
pub mod ipc;
mod link;
pub mod qdisc;
pub mod seccomp;
pub mod selftest;
mod throttle;
pub mod virtq;
mod worker;

use std::collections::HashMap;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use serde::{Deserialize, Serialize};

use crate::control::Counters;
use crate::stack::flow::{self, FlowStats, FlowTable};
use crate::stack::{LinkCounters, Router};
use crate::sys::shm::SharedU64s;
use crate::sys::uring::TapRing;
use crate::wire::MacAddr;

pub use balance::BalanceStats;
use link::Link;
pub use link::LinkKind;
use worker::{PodIo, Worker, WorkerCmd};

/// How long a worker may take to apply an attach or detach.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A pod interface as the dataplane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Attachment id, unique for the daemon's lifetime.
    pub id: u64,
    /// The pod's MAC.
    pub mac: MacAddr,
    /// The pod's IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// The pod's IPv6 addresses.
    #[serde(default)]
    pub ipv6: Vec<std::net::Ipv6Addr>,
    /// The pod's IPv6 gateway (the source of ICMPv6 errors to it).
    #[serde(default)]
    pub gateway_v6: Option<std::net::Ipv6Addr>,
    /// The pod interface MTU.
    pub mtu: u32,
    /// Shaping, if any.
    #[serde(default)]
    pub bandwidth: Option<crate::control::Bandwidth>,
    /// The container id, for log lines about this pod.
    #[serde(default)]
    pub container_id: String,
    /// What the fds are (TAP queues, packet sockets, packet sockets with receive rings). On
    /// the wire: the fields `packet_sockets` and `rx_ring`, as earlier builds sent them.
    #[serde(flatten)]
    pub link: LinkKind,
}

/// Where one worker publishes the attachment id whose batch it is handling (0: none), in
/// memory the supervisor shares: if the child dies, the supervisor knows whose frames were in
/// flight. Without shared memory (tests, benchmarks) it does nothing.
#[derive(Default)]
pub(crate) struct InFlight {
    slots: Option<Arc<SharedU64s>>,
    index: usize,
}

impl InFlight {
    /// Publishes `id` (one relaxed store).
    fn set(&self, id: u64) {
        if let Some(slot) = self.slots.as_ref().and_then(|s| s.get(self.index)) {
            slot.store(id, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Publishes "no pod".
    fn clear(&self) {
        self.set(0);
    }
}

struct WorkerHandle {
    cmds: mpsc::Sender<WorkerCmd>,
    wake: Arc<EventFd>,
    wakeups: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn send(&self, cmd: WorkerCmd) -> io::Result<()> {
        self.cmds
            .send(cmd)
            .map_err(|_| io::Error::other("dataplane worker has exited"))?;
        self.wake.write(1)?;
        Ok(())
    }
}

/// The running workers.
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    uplink_counters: Arc<LinkCounters>,
    /// The service flow table every worker's router shares (`None`: turned off).
    flows: Option<Arc<FlowTable>>,
    /// The workers' flow counts (`None`: no balancing).
    loads: Option<Arc<balance::Loads>>,
    pod_counters: HashMap<u64, Arc<LinkCounters>>,
    /// Container ids by attachment id, for log lines.
    names: HashMap<u64, String>,
    /// The VM pods among the attached ones.
    vm_pods: std::collections::HashSet<u64>,
    /// The counters of VM pods taken away, by attachment id: a VM pod's device is taken away
    /// and handed over again whenever its frontend changes a ring, and its counters (its
    /// queue stops above all) go on rather than start again. At most `PARKED_MAX`, the
    /// oldest (lowest id) forgotten first.
    parked: std::collections::BTreeMap<u64, Arc<LinkCounters>>,
    /// Each worker's io_uring, when TAP queues are read and written through one (`--tap-io
    /// uring`); empty otherwise.
    rings: Vec<Arc<std::sync::Mutex<TapRing>>>,
}

/// How the dataplane reads and writes TAP queues (`--tap-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TapIo {
    /// io_uring where a restricted ring can be set up here, else `readv`/`writev` (the
    /// default: see `e2e/bench/README.md`, "Design evaluations", 9).
    #[default]
    Auto,
    /// A restricted io_uring per worker; refuse to start without one.
    Uring,
    /// One `readv`/`writev` per frame.
    Readv,
}

/// Decides whether the dataplane uses io_uring for TAP queues (`true`) under `choice`, by
/// setting up a restricted ring as the dataplane would: `Auto` falls back to `readv` (with
/// one log line saying why), `Uring` fails when no ring can be had.
pub fn resolve_tap_io(choice: TapIo) -> Result<bool, String> {
    if choice == TapIo::Readv {
        tracing::info!("TAP queues: readv/writev (--tap-io readv)");
        return Ok(false);
    }
    let why_not = match TapRing::new() {
        Ok(_) => None,
        Err(e) => Some(match crate::sys::uring::disabled_sysctl() {
            Some(v) if v != 0 => format!("kernel.io_uring_disabled is {v} ({e})"),
            _ => format!("no restricted io_uring here: {e}"),
        }),
    };
    let uring = decide_tap_io(choice, why_not.as_deref())?;
    match (uring, why_not) {
        (true, _) => {
            tracing::info!("TAP queues: io_uring restricted to READV/WRITEV, one ring per worker")
        }
        (false, Some(why)) => tracing::info!("TAP queues: readv/writev ({why})"),
        (false, None) => tracing::info!("TAP queues: readv/writev"),
    }
    Ok(uring)
}

/// The choice `choice` makes when a restricted ring could not be set up for the reason
/// `why_not` (`None`: it could): io_uring or not, or the refusal of `--tap-io uring`.
fn decide_tap_io(choice: TapIo, why_not: Option<&str>) -> Result<bool, String> {
    match (choice, why_not) {
        (TapIo::Readv, _) => Ok(false),
        (_, None) => Ok(true),
        (TapIo::Uring, Some(why)) => Err(format!("--tap-io uring: {why}")),
        (TapIo::Auto, Some(_)) => Ok(false),
    }
}

/// One restricted io_uring per worker, for [`Dataplane::start_with`]: made before the
/// dataplane locks itself down (its seccomp filter forbids `io_uring_setup`).
pub fn tap_rings(workers: usize) -> io::Result<Vec<TapRing>> {
    (0..workers).map(|_| TapRing::new()).collect()
}

/// Counters of VM pods taken away that the dataplane keeps for their next handover.
const PARKED_MAX: usize = 1024;

/// How the workers treat frames: the daemon's options that reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Segment every GSO super-frame in software before it leaves (`--gso segment`).
    pub segment_gso: bool,
    /// BIG TCP frames of up to this many bytes are taken from pods; 0: none (`--big-tcp`).
    pub big_tcp_bytes: u32,
    /// One service flow table shared by every worker (`--service-flows on`).
    pub service_flows: bool,
    /// Busy flows move between workers (`--flow-balance on`, see `balance`).
    pub flow_balance: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            segment_gso: false,
            big_tcp_bytes: 0,
            service_flows: true,
            flow_balance: true,
        }
    }
}

impl Dataplane {
    /// Starts one worker per uplink queue fd. ICMP errors are sourced from `gateway`.
    pub fn start(
        uplink_queues: Vec<OwnedFd>,
        gateway: Ipv4Addr,
        uplink_mtu: u32,
        segment_gso: bool,
    ) -> io::Result<Self> {
        let options = WorkerOptions {
            segment_gso,
            ..WorkerOptions::default()
        };
        Self::start_with(
            uplink_queues,
            gateway,
            uplink_mtu,
            options,
            None,
            Vec::new(),
        )
    }

    /// [`start`](Self::start), with worker i publishing the pod it handles in slot i of
    /// `in_flight`, the workers set up as `options` say, and TAP queues read and written
    /// through worker i's ring `rings[i]` (one per worker, from [`tap_rings`]) unless `rings`
    /// is empty.
    pub fn start_with(
        uplink_queues: Vec<OwnedFd>,
        gateway: Ipv4Addr,
        uplink_mtu: u32,
        options: WorkerOptions,
        in_flight: Option<Arc<SharedU64s>>,
        rings: Vec<TapRing>,
    ) -> io::Result<Self> {
        let n = uplink_queues.len();
        if !rings.is_empty() && rings.len() != n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} io_uring rings for {n} workers", rings.len()),
            ));
        }
        let rings = rings
            .into_iter()
            .map(|r| Arc::new(std::sync::Mutex::new(r)))
            .collect();
        let uplink_counters = Arc::new(LinkCounters::new(n));
        let WorkerOptions {
            segment_gso,
            big_tcp_bytes,
            service_flows,
            flow_balance,
        } = options;
        let flows = service_flows.then(|| Arc::new(FlowTable::new(flow::DEFAULT_CAPACITY)));
        // One worker has nobody to balance with.
        let loads = (flow_balance && n > 1).then(|| balance::Loads::new(n));
        for uplink in &uplink_queues {
            crate::sys::tap::set_nonblocking(std::os::fd::AsFd::as_fd(uplink))
                .map_err(io::Error::other)?;
        }
        let uplink_queues: Arc<[OwnedFd]> = uplink_queues.into();
        let mut workers = Vec::with_capacity(n);
        for index in 0..n {
            let (tx, rx) = mpsc::channel();
            let wake = Arc::new(EventFd::from_flags(
                EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
            )?);
            let wakeups = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let worker = Worker::new(
                index,
                rx,
                Arc::clone(&wake),
                Link::tun_queue(Arc::clone(&uplink_queues), index),
                Arc::clone(&uplink_counters),
                match &flows {
                    Some(f) => Router::new(gateway, uplink_mtu).with_flows(Arc::clone(f)),
                    None => Router::new(gateway, uplink_mtu),
                },
                Arc::clone(&wakeups),
            )?
            .segment_gso(segment_gso)
            .big_tcp(big_tcp_bytes as usize)
            .balance(
                loads
                    .as_ref()
                    .map(|l| balance::Balancer::new(index, Arc::clone(l))),
            )
            .in_flight(InFlight {
                slots: in_flight.clone(),
                index,
            });
            let thread = std::thread::Builder::new()
                .name(format!("dp-{index}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                cmds: tx,
                wake,
                wakeups,
                thread: Some(thread),
            });
        }
        Ok(Dataplane {
            workers,
            uplink_counters,
            flows,
            loads,
            pod_counters: HashMap::new(),
            names: HashMap::new(),
            vm_pods: std::collections::HashSet::new(),
            parked: std::collections::BTreeMap::new(),
            rings,
        })
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Counters of every pod (by attachment id) and of the uplink.
    pub fn stats(&self) -> (Vec<(u64, Counters)>, Counters) {
        let pods = self
            .pod_counters
            .iter()
            .map(|(id, c)| (*id, c.snapshot()))
            .collect();
        (pods, self.uplink_counters.snapshot())
    }

    /// The service flow table's size and tallies (zero when it is off).
    pub fn flow_stats(&self) -> FlowStats {
        self.flows.as_ref().map(|f| f.stats()).unwrap_or_default()
    }

    /// Per worker: flows active in its last window of flow balancing, and flows it moved
    /// to another worker (empty with one worker or `--flow-balance off`).
    pub fn balance(&self) -> BalanceStats {
        match &self.loads {
            Some(l) => BalanceStats {
                active: l.active(),
                moves: l.moves(),
            },
            None => BalanceStats::default(),
        }
    }

    /// How many times each worker woke up from epoll.
    pub fn wakeups(&self) -> Vec<u64> {
        self.workers
            .iter()
            .map(|w| w.wakeups.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// Starts copying pod `id`'s frames into `sink` on every worker. False when no such pod.
    pub fn capture(&self, id: u64, sink: capture::CaptureSink) -> io::Result<bool> {
        let sink = Arc::new(sink);
        let (ack_tx, ack_rx) = mpsc::channel();
        for handle in &self.workers {
            handle.send(WorkerCmd::Capture(id, Arc::clone(&sink), ack_tx.clone()))?;
        }
        let mut found = true;
        for _ in 0..self.workers.len() {
            found &= ack_rx.recv_timeout(APPLY_TIMEOUT).unwrap_or(false);
        }
        Ok(found)
    }

    /// Hands a pod's TAP queues (or packet sockets) to the workers: queue q is read by
    /// worker q mod N; a worker without a queue of its own writes to the pod through one of
    /// another's (a TAP's: shared, as every TAP queue is, see `Link::tap`; a packet socket's:
    /// a duplicate).
    pub fn attach(&mut self, spec: &PodSpec, queues: Vec<OwnedFd>) -> io::Result<()> {
        if queues.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no TAP queues"));
        }
        let n = self.workers.len();
        // Every worker's link first (mapping a ring can fail): nothing is sent to any worker
        // unless all of them can take the pod.
        let mut links = if spec.link == LinkKind::Tap {
            let all: Arc<[OwnedFd]> = queues.into();
            (0..n)
                .map(|w| Link::tap(Arc::clone(&all), w, n))
                .collect::<io::Result<Vec<_>>>()?
        } else {
            let q = queues.len();
            let mut extra: Vec<Option<OwnedFd>> = Vec::with_capacity(n);
            for w in 0..n {
                extra.push(if w < q {
                    None
                } else {
                    Some(queues[w % q].try_clone()?)
                });
            }
            let mut per_worker: Vec<Vec<OwnedFd>> = (0..n).map(|_| Vec::new()).collect();
            for (i, fd) in queues.into_iter().enumerate() {
                per_worker[i % n].push(fd);
            }
            per_worker
                .into_iter()
                .zip(extra)
                .map(|(rx, tx_extra)| Link::pod(spec.link, rx, tx_extra))
                .collect::<io::Result<Vec<_>>>()?
        };
        for (link, ring) in links.iter_mut().zip(&self.rings) {
            link.use_ring(Arc::clone(ring));
        }
        self.attach_links(spec, links, None)
    }

    /// Serves a VM pod whose vhost-user device the supervisor negotiated: pair i is read by
    /// worker i % N (so any number of pairs works on any number of workers), and worker w
    /// writes frames to the guest into the receive queue of the device's pair w % pairs
    /// (shared by the workers that write to it when the pairs are fewer than the workers).
    pub fn attach_vhost(&mut self, spec: &PodSpec, device: virtq::VhostDevice) -> io::Result<()> {
        let links = link::vhost_links(&spec.container_id, device, self.workers.len())?;
        let counters = self.parked.remove(&spec.id);
        self.attach_links(spec, links, counters)?;
        self.vm_pods.insert(spec.id);
        Ok(())
    }

    /// Gives vring `vring` of VM pod `id` (receive queues even, transmit odd) the call eventfd
    /// `call`, on the worker that reads its pair, without taking the pod away: frames keep
    /// flowing. An error when no worker serves that vring.
    pub fn set_vring_call(&self, id: u64, vring: usize, call: Option<OwnedFd>) -> io::Result<()> {
        let pair = vring / 2;
        let handle = &self.workers[pair % self.workers.len()];
        let (ack_tx, ack_rx) = mpsc::channel();
        handle.send(WorkerCmd::SetCall(
            id,
            pair,
            vring.is_multiple_of(2),
            call,
            ack_tx,
        ))?;
        match ack_rx.recv_timeout(APPLY_TIMEOUT) {
            Ok(true) => Ok(()),
            Ok(false) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no VM pod {id} with vring {vring}"),
            )),
            Err(_) => Err(io::Error::other("dataplane worker did not answer")),
        }
    }

    /// Hands `links` (one per worker, in worker order) of pod `spec` to the workers, with the
    /// pod's counters (`counters`, or new ones) and shaping.
    fn attach_links(
        &mut self,
        spec: &PodSpec,
        links: Vec<Link>,
        counters: Option<Arc<LinkCounters>>,
    ) -> io::Result<()> {
        let n = self.workers.len();
        let (ack_tx, ack_rx) = mpsc::channel();
        let counters = counters.unwrap_or_else(|| Arc::new(LinkCounters::new(n)));
        let bw = spec.bandwidth.unwrap_or_default();
        let ingress = qdisc::TokenBucket::new(bw.ingress_rate, bw.ingress_burst).map(Arc::new);
        let egress = qdisc::TokenBucket::new(bw.egress_rate, bw.egress_burst).map(Arc::new);
        let container_id: Arc<str> = Arc::from(spec.container_id.as_str());
        let mut ios = Vec::with_capacity(n);
        for link in links {
            let mut io = PodIo::new(link);
            if let Some(bucket) = &ingress {
                // The shaped queue is bounded in time as well as in frames.
                io.queue.set_byte_limit(bucket.queue_bytes());
            }
            io.ingress = ingress.clone();
            io.container_id = Arc::clone(&container_id);
            io.egress = egress.clone();
            ios.push(io);
        }
        let mut result = Ok(());
        let mut sent = 0;
        for (handle, io) in self.workers.iter().zip(ios) {
            let cmd = WorkerCmd::Attach(
                Box::new(spec.clone()),
                Arc::clone(&counters),
                io,
                ack_tx.clone(),
            );
            match handle.send(cmd) {
                Ok(()) => sent += 1,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        for _ in 0..sent {
            match ack_rx.recv_timeout(APPLY_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("dataplane worker did not answer")),
            }
        }
        if result.is_err() {
            self.detach(spec.id);
        } else {
            self.pod_counters.insert(spec.id, counters);
            self.names.insert(spec.id, spec.container_id.clone());
        }
        result
    }

    /// Takes a pod away from every worker and closes its queue fds. Idempotent.
    pub fn detach(&mut self, id: u64) {
        let counters = self.pod_counters.remove(&id);
        if let (true, Some(c)) = (self.vm_pods.remove(&id), counters) {
            self.parked.insert(id, c);
            while self.parked.len() > PARKED_MAX {
                self.parked.pop_first();
            }
        }
        let name = self.names.remove(&id).unwrap_or_default();
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut sent = 0;
        for handle in &self.workers {
            if handle.send(WorkerCmd::Detach(id, ack_tx.clone())).is_ok() {
                sent += 1;
            }
        }
        for _ in 0..sent {
            if ack_rx.recv_timeout(APPLY_TIMEOUT).is_err() {
                tracing::warn!(
                    container_id = %name,
                    id,
                    "a dataplane worker did not confirm a detach"
                );
            }
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for handle in &self.workers {
            let _ = handle.send(WorkerCmd::Shutdown);
        }
        for handle in &mut self.workers {
            if let Some(t) = handle.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--tap-io`: readv whatever the kernel offers; auto takes io_uring where a restricted
    /// ring can be had, else readv; uring refuses to start without one, saying why.
    #[test]
    fn tap_io_choice_falls_back_or_refuses() {
        let why = "kernel.io_uring_disabled is 2 (Operation not permitted)";
        // (choice, why no ring (None: a ring could be set up), decision)
        let rows: [(TapIo, Option<&str>, Result<bool, String>); 6] = [
            (TapIo::Readv, None, Ok(false)),
            (TapIo::Readv, Some(why), Ok(false)),
            (TapIo::Auto, None, Ok(true)),
            (TapIo::Auto, Some(why), Ok(false)),
            (TapIo::Uring, None, Ok(true)),
            (
                TapIo::Uring,
                Some(why),
                Err(format!("--tap-io uring: {why}")),
            ),
        ];
        for (choice, why_not, want) in rows {
            assert_eq!(
                decide_tap_io(choice, why_not),
                want,
                "{choice:?} {why_not:?}"
            );
        }
        assert_eq!(TapIo::default(), TapIo::Auto);
    }
}
