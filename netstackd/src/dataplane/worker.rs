//! One dataplane worker: an epoll loop over its links — a queue of every pod's TAP or packet
//! sockets, its uplink queue — a wakeup eventfd and a timerfd for shaping. Blocks in epoll when
//! idle (no busy polling); reads at most `BATCH` frames per fd per wakeup so one busy pod
//! cannot starve the others, then drains the fifo queues those frames went to (see `qdisc`).
//! How a link reads and writes its frames (one per call, or `recvmmsg`/`sendmmsg` batches)
//! is the link's business (`link`); the worker asks it for a batch, routes it, and hands each
//! link the batch queued for it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;

use crate::stack::{LinkCounters, PodPort, Router};
use crate::sys::packet::MMSG_BATCH;
use crate::sys::tap::RxFrame;

use super::balance::Balancer;
use super::capture::CaptureSink;
use super::link::Link;
use super::qdisc::{FifoQueue, SlotPool, TokenBucket, SLOT_LEN};
use super::throttle::Throttle;
use super::{InFlight, PodSpec};

mod rx;
mod tx;

/// Frames read from one fd per wakeup before moving on to the next.
const BATCH: usize = 64;
/// Frame buffers per worker for reading and forwarding: never held by a shaped queue.
const POOL_SLOTS: usize = 256;
/// Of those, allocated when the worker starts; the others the first time they are needed
/// (once: slots are reused, last freed first). Allocating all 256 up front touched most of
/// their 16 MiB: 12 MiB of RSS per worker, 3 GiB and a 4-second start at 256 workers.
const POOL_SLOTS_AT_START: usize = 16;
/// Frames the queue of a pod with an ingress rate may hold on one worker while they wait for
/// tokens: the pod's own share of slots, added to the worker's pool while the pod is attached.
/// Only a shaped queue keeps frames past a flush, so shaped pods together hold at most their
/// own shares and the `POOL_SLOTS` stay free for reading every fd, the uplink included.
const SHAPED_SLOTS: usize = 64;
/// Frames one egress queue holds before it tail-drops.
const QUEUE_LIMIT: usize = 128;
const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_UPLINK: u64 = u64::MAX - 1;
const TOKEN_TIMER: u64 = u64::MAX - 2;
/// How long a worker with every buffer in a shaped queue leaves a readable fd alone.
const POOL_WAIT: Duration = Duration::from_millis(1);
/// The egress id of the uplink in the drain list (attachment ids start at 1).
const UPLINK: u64 = 0;

/// A worker's handles on one pod: its link and what shapes, queues and copies its frames.
pub(super) struct PodIo {
    /// The pod's queues this worker reads (or only writes).
    pub link: Link,
    /// Where this pod's frames are copied while a capture runs.
    pub capture: Option<Arc<CaptureSink>>,
    /// Frames waiting to be written to the pod.
    pub queue: FifoQueue,
    /// Shapes traffic to the pod.
    pub ingress: Option<Arc<TokenBucket>>,
    /// Shapes traffic from the pod.
    pub egress: Option<Arc<TokenBucket>>,
    /// The pod's container id, for log lines.
    pub container_id: Arc<str>,
}

impl PodIo {
    /// Handles on `link` with an empty queue and no shaping.
    pub fn new(link: Link) -> Self {
        PodIo {
            link,
            capture: None,
            queue: FifoQueue::new(QUEUE_LIMIT),
            ingress: None,
            egress: None,
            container_id: Arc::from(""),
        }
    }
}

/// Messages from the daemon to a worker.
pub(super) enum WorkerCmd {
    Attach(
        // Boxed: a pod's addresses make the spec the largest part of the message.
        Box<PodSpec>,
        Arc<LinkCounters>,
        PodIo,
        mpsc::Sender<io::Result<()>>,
    ),
    Detach(u64, mpsc::Sender<()>),
    Capture(u64, Arc<CaptureSink>, mpsc::Sender<bool>),
    /// A VM pod's new call eventfd: (pod, pair, for its receive queue, the fd); acked with
    /// whether this worker reads that pair.
    SetCall(u64, usize, bool, Option<OwnedFd>, mpsc::Sender<bool>),
    Shutdown,
}

pub(super) struct Worker {
    index: usize,
    cmds: mpsc::Receiver<WorkerCmd>,
    wake: Arc<EventFd>,
    epoll: Epoll,
    /// Queues left unread for a while, and the shaping timer.
    throttle: Throttle,
    uplink: Link,
    uplink_queue: FifoQueue,
    uplink_counters: Arc<LinkCounters>,
    router: Router<PodIo>,
    wakeups: Arc<AtomicU64>,
    pool: SlotPool,
    /// Attached pods with an ingress rate (each adds `SHAPED_SLOTS` to the pool's limit).
    shaped_pods: usize,
    /// Egress ids (pods, or `UPLINK`) with frames queued.
    dirty: Vec<u64>,
    /// Segment every GSO super-frame before writing it (`--gso segment`).
    segment_gso: bool,
    /// Where software segmentation builds each segment.
    scratch: Box<[u8]>,
    /// Slots being filled by one receive, ascending, and what each received.
    rx_batch: Vec<u32>,
    rx_lens: [RxFrame; MMSG_BATCH],
    /// Where each frame of the batch being routed goes: (slot, egress id).
    routed: Vec<(u32, u64)>,
    /// Counts flows and moves busy ones to other workers (`None`: one worker, or off).
    balance: Option<Balancer>,
    /// Slots gathered for one send.
    tx_batch: Vec<u32>,
    /// Where the id of the pod whose batch this worker handles is published.
    in_flight: InFlight,
}

fn token(id: u64, queue: usize) -> u64 {
    (id << 8) | queue as u64
}

/// The fd of receive queue `q` of pod `id` (or of the uplink for `UPLINK`), with its token.
fn queue_fd<'a>(
    router: &'a Router<PodIo>,
    uplink: &'a Link,
    id: u64,
    q: usize,
) -> Option<(BorrowedFd<'a>, u64)> {
    if id == UPLINK {
        return Some((uplink.rx_fd(0)?, TOKEN_UPLINK));
    }
    let fd = router.pod(id)?.io.link.rx_fd(q)?;
    Some((fd, token(id, q)))
}

impl Worker {
    pub(super) fn new(
        index: usize,
        cmds: mpsc::Receiver<WorkerCmd>,
        wake: Arc<EventFd>,
        uplink: Link,
        uplink_counters: Arc<LinkCounters>,
        router: Router<PodIo>,
        wakeups: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let throttle = Throttle::new()?;
        epoll.add(
            wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
        )?;
        for fd in uplink.rx_fds() {
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_UPLINK))?;
        }
        epoll.add(
            throttle.fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER),
        )?;
        Ok(Worker {
            index,
            cmds,
            wake,
            epoll,
            throttle,
            uplink,
            uplink_queue: FifoQueue::new(QUEUE_LIMIT),
            uplink_counters,
            router,
            wakeups,
            pool: {
                let mut pool = SlotPool::new(POOL_SLOTS_AT_START);
                pool.set_limit(POOL_SLOTS);
                pool
            },
            shaped_pods: 0,
            dirty: Vec::new(),
            segment_gso: false,
            scratch: vec![0u8; 2 * SLOT_LEN].into_boxed_slice(),
            rx_batch: Vec::with_capacity(MMSG_BATCH),
            rx_lens: [RxFrame::Malformed; MMSG_BATCH],
            routed: Vec::with_capacity(MMSG_BATCH),
            balance: None,
            tx_batch: Vec::with_capacity(MMSG_BATCH),
            in_flight: InFlight::default(),
        })
    }

    /// Takes BIG TCP frames of up to `gso_max_bytes` (`--big-tcp`; 0: off): slots that
    /// hold them (allocated as the pool grows, as ever), and a router that accepts them.
    pub(super) fn big_tcp(mut self, gso_max_bytes: usize) -> Self {
        if gso_max_bytes == 0 {
            return self;
        }
        let mut pool = SlotPool::with_slot_len(
            POOL_SLOTS_AT_START,
            super::qdisc::big_tcp_slot_len(gso_max_bytes),
        );
        pool.set_limit(POOL_SLOTS);
        self.pool = pool;
        self.router = self.router.with_big_tcp(true);
        self
    }

    /// Balances flows with the other workers through `balance`.
    pub(super) fn balance(mut self, balance: Option<Balancer>) -> Self {
        self.balance = balance;
        self
    }

    /// Segments every GSO super-frame in software before it leaves.
    pub(super) fn segment_gso(mut self, on: bool) -> Self {
        self.segment_gso = on;
        self
    }

    /// Publishes the pod whose batch is being handled in `in_flight`.
    pub(super) fn in_flight(mut self, in_flight: InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    pub(super) fn run(mut self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::error!(worker = self.index, "epoll_wait failed: {e}");
                    return;
                }
            };
            // Only this worker writes its counter: a plain load and store.
            self.wakeups
                .store(self.wakeups.load(Relaxed).wrapping_add(1), Relaxed);
            if let Some(b) = &mut self.balance {
                b.tick(std::time::Instant::now());
            }
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_WAKE => {
                        if !self.apply_commands() {
                            self.flush();
                            return;
                        }
                    }
                    TOKEN_TIMER => self.on_timer(),
                    TOKEN_UPLINK => self.drain_uplink(),
                    t => {
                        // One store before the pod's batch and one after its flush.
                        self.in_flight.set(t >> 8);
                        self.drain_pod(t >> 8, (t & 0xff) as usize);
                        self.flush();
                        self.in_flight.clear();
                    }
                }
                self.flush();
            }
        }
    }

    /// Applies pending commands; false when the worker must stop.
    fn apply_commands(&mut self) -> bool {
        let _ = self.wake.read();
        loop {
            match self.cmds.try_recv() {
                Ok(WorkerCmd::Attach(spec, counters, io, ack)) => {
                    let _ = ack.send(self.attach(*spec, counters, io));
                }
                Ok(WorkerCmd::Detach(id, ack)) => {
                    self.detach(id);
                    let _ = ack.send(());
                }
                Ok(WorkerCmd::Capture(id, sink, ack)) => {
                    let found = match self.router.pod_mut(id) {
                        Some(pod) => {
                            pod.io.capture = Some(sink);
                            true
                        }
                        None => false,
                    };
                    let _ = ack.send(found);
                }
                Ok(WorkerCmd::SetCall(id, pair, to_guest, call, ack)) => {
                    let done = self
                        .router
                        .pod_mut(id)
                        .is_some_and(|pod| pod.io.link.set_call(pair, to_guest, call));
                    let _ = ack.send(done);
                }
                Ok(WorkerCmd::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    /// Slots the pool may hold: the reading share plus each shaped pod's.
    fn pool_limit(&self) -> usize {
        POOL_SLOTS + self.shaped_pods * SHAPED_SLOTS
    }

    fn attach(
        &mut self,
        spec: PodSpec,
        counters: Arc<LinkCounters>,
        mut io: PodIo,
    ) -> io::Result<()> {
        for (q, fd) in io.link.rx_fds().enumerate() {
            if let Err(e) = self
                .epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token(spec.id, q)))
            {
                for fd in io.link.rx_fds().take(q) {
                    let _ = self.epoll.delete(fd);
                }
                return Err(e.into());
            }
        }
        if io.ingress.is_some() {
            // Frames to the pod wait for tokens in its queue: they may hold its share only.
            io.queue.set_limit(SHAPED_SLOTS);
            self.shaped_pods += 1;
            self.pool.set_limit(self.pool_limit());
        }
        self.router.insert(PodPort {
            id: spec.id,
            mac: spec.mac,
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            gateway_v6: spec.gateway_v6,
            mtu: spec.mtu,
            counters,
            io,
        });
        Ok(())
    }

    /// Forgets pod `id`: its fds leave epoll (they close when its link drops), its queued
    /// frames go back to the pool.
    fn detach(&mut self, id: u64) {
        let Some(mut port) = self.router.remove(id) else {
            return;
        };
        for fd in port.io.link.rx_fds() {
            let _ = self.epoll.delete(fd);
        }
        while let Some(slot) = port.io.queue.pop() {
            self.pool.put(slot);
        }
        if port.io.ingress.is_some() {
            self.shaped_pods -= 1;
            self.pool.set_limit(self.pool_limit());
        }
        self.dirty.retain(|d| *d != id);
        self.throttle.forget(id);
    }

    /// Shaping time passed: read throttled pods again and retry waiting queues.
    fn on_timer(&mut self) {
        for (id, q) in self.throttle.fired() {
            if let Some((fd, tok)) = queue_fd(&self.router, &self.uplink, id, q) {
                let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, tok);
                let _ = self.epoll.modify(fd, &mut ev);
            }
        }
    }

    /// Stops reading an fd that failed for good — a pod TAP or an uplink deleted under us
    /// (EBADFD, reported as EPOLLERR for ever: level-triggered epoll would spin on it). The
    /// attachment stays until DEL or a restart cleans it up.
    fn forget_fd(&mut self, id: u64, q: usize, e: &io::Error) {
        if let Some((fd, _)) = queue_fd(&self.router, &self.uplink, id, q) {
            let _ = self.epoll.delete(fd);
        }
        self.throttle.forget_queue(id, q);
        if id == UPLINK {
            tracing::error!(
                worker = self.index,
                "the uplink failed ({e}): no longer read"
            );
        } else {
            // Displayed (`%`), not quoted: `container_id=<id>`, as every other log line has it.
            let container_id = self.router.pod(id).map_or("", |p| &*p.io.container_id);
            tracing::warn!(
                worker = self.index,
                %container_id,
                queue = q,
                "the pod's device is gone ({e}): its queue is no longer read"
            );
        }
    }

    /// A VM pod's virtqueue behind queue `q` stopped on garbage in the guest's ring: its kick
    /// leaves epoll (the queue is served again once the frontend sets it up anew and the
    /// device is handed over again); the stop is counted on the pod and logged once, where
    /// it happened (`VirtqError::Stopped`: an earlier call met it and counted it).
    fn stop_virtqueue(&mut self, id: u64, q: usize, e: crate::dataplane::virtq::VirtqError) {
        if let Some((fd, _)) = queue_fd(&self.router, &self.uplink, id, q) {
            let _ = self.epoll.delete(fd);
        }
        self.throttle.forget_queue(id, q);
        if e == crate::dataplane::virtq::VirtqError::Stopped {
            return;
        }
        if let Some(pod) = self.router.pod(id) {
            pod.counters.queue_stopped(self.index);
            tracing::warn!(
                worker = self.index,
                container_id = %pod.io.container_id,
                queue = q,
                "the VM put garbage in a ring: its virtqueue is stopped ({e})"
            );
        }
    }

    /// Stops reading pod queue `q` (or the uplink) for `wait`: its egress bucket is empty, or
    /// every buffer waits in a shaped queue. Epoll is level-triggered, so without this the
    /// worker would spin on a readable fd it cannot serve.
    fn throttle(&mut self, id: u64, q: usize, wait: Duration) {
        let Some((fd, tok)) = queue_fd(&self.router, &self.uplink, id, q) else {
            return;
        };
        if self.throttle.hold(id, q, wait) {
            let mut ev = EpollEvent::new(EpollFlags::empty(), tok);
            let _ = self.epoll.modify(fd, &mut ev);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The worker's slot accounting, without root: datagram socketpairs stand in for the pods'
    //! TAP queues (one frame per message, with its virtio-net header, as a TAP gives them).

    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixDatagram;

    use std::os::fd::OwnedFd;

    use super::*;
    use crate::dataplane::{LinkKind, TapIo};
    use crate::stack::GATEWAY_MAC;
    use crate::sys::tap::VNET_HDR_LEN;
    use crate::wire::{ethernet, VnetHdr};
    use crate::wire::{ipv4, MacAddr};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as VRING_WRITE;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, n)
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x0a, 0x58, 10, 77, 0, n])
    }

    /// An Ethernet + IPv4 + UDP frame from pod `src` to pod `dst` with `payload` bytes, behind
    /// an all-zero virtio-net header.
    fn udp_frame(src: u8, dst: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN + 14 + 28 + payload];
        let frame = &mut f[VNET_HDR_LEN..];
        ethernet::write_header(frame, GATEWAY_MAC, mac(src), ethernet::ETHERTYPE_IPV4);
        ipv4::emit_header(
            &mut frame[14..],
            ip(src),
            ip(dst),
            ipv4::PROTO_UDP,
            64,
            8 + payload,
            1,
        );
        let udp = &mut frame[34..];
        udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&9u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f
    }

    /// Pod `id` (10.77.0.id, its MAC from the id) as a TAP pod with MTU 1500.
    fn tap_spec(id: u8) -> PodSpec {
        PodSpec {
            id: u64::from(id),
            mac: mac(id),
            ipv4: vec![ip(id)],
            ipv6: Vec::new(),
            gateway_v6: None,
            mtu: 1500,
            bandwidth: None,
            container_id: format!("pod{id}"),
            link: LinkKind::Tap,
        }
    }

    /// A worker with no pods, whose uplink's other end is closed.
    fn empty_worker() -> Worker {
        let (_cmd_tx, cmds) = mpsc::channel();
        let wake = Arc::new(EventFd::new().unwrap());
        let (uplink, _peer) = UnixDatagram::pair().unwrap();
        uplink.set_nonblocking(true).unwrap();
        Worker::new(
            0,
            cmds,
            wake,
            Link::tun(OwnedFd::from(uplink)),
            Arc::new(LinkCounters::new(1)),
            Router::new(GW, 1500),
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap()
    }

    /// A worker with pods 1..=4: pod 1 unshaped (the flooder), pods 2 and 3 shaped to 1 kbit/s
    /// towards them, pod 4 unshaped, its TAP links read and written with `readv`/`writev` or
    /// through one restricted io_uring (`TapIo::Uring`), as the dataplane's worker would.
    /// Returns the worker, the test's end of each pod's "TAP" (index = pod id - 1) and the
    /// pods' counters.
    fn worker_on(io: TapIo) -> (Worker, Vec<UnixDatagram>, Vec<Arc<LinkCounters>>) {
        let mut w = empty_worker();
        let ring = (io == TapIo::Uring).then(|| {
            Arc::new(std::sync::Mutex::new(
                crate::sys::uring::TapRing::new().expect("a restricted io_uring"),
            ))
        });
        let (mut peers, mut counters) = (Vec::new(), Vec::new());
        for id in 1..=4u8 {
            let (ours, theirs) = UnixDatagram::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            theirs.set_nonblocking(true).unwrap();
            let mut link = Link::pod(LinkKind::Tap, vec![OwnedFd::from(ours)], None).unwrap();
            if let Some(r) = &ring {
                link.use_ring(Arc::clone(r));
            }
            let mut io = PodIo::new(link);
            if id == 2 || id == 3 {
                let bucket = TokenBucket::new(1000, 8000).unwrap();
                // Spend the burst up front: every frame to the pod now waits in its queue.
                bucket.charge(bucket.burst_bytes() + 1_000_000);
                io.ingress = Some(Arc::new(bucket));
            }
            let spec = tap_spec(id);
            let c = Arc::new(LinkCounters::new(1));
            w.attach(spec, Arc::clone(&c), io).unwrap();
            peers.push(theirs);
            counters.push(c);
        }
        (w, peers, counters)
    }

    /// Pod 1 sends `rounds` × 4 small frames to each of pods 2 and 3, read by the worker as
    /// its epoll loop would (a drain of pod 1's queue, then a flush).
    fn flood_shaped(w: &mut Worker, from: &UnixDatagram, rounds: usize) {
        let (to_b, to_c) = (udp_frame(1, 2, 22), udp_frame(1, 3, 22));
        for _ in 0..rounds {
            for _ in 0..4 {
                // A full socket here means the worker stopped reading pod 1.
                from.send(&to_b).expect("pod 1 is read");
                from.send(&to_c).expect("pod 1 is read");
            }
            w.drain_pod(1, 0);
            w.flush();
        }
    }

    #[test]
    fn shaped_queues_hold_only_their_share_and_the_others_are_still_read() {
        shaped_queues_hold_their_share(TapIo::Readv);
    }

    #[test]
    fn shaped_queues_hold_only_their_share_and_the_others_are_still_read_on_uring() {
        shaped_queues_hold_their_share(TapIo::Uring);
    }

    fn shaped_queues_hold_their_share(io: TapIo) {
        let (mut w, peers, counters) = worker_on(io);
        flood_shaped(&mut w, &peers[0], 200);

        // Pod 1 still gets through to pod 4, and pod 4 back to pod 1.
        let to_d = udp_frame(1, 4, 100);
        peers[0].send(&to_d).unwrap();
        w.drain_pod(1, 0);
        w.flush();
        let mut got = [0u8; 2048];
        let n = peers[3].recv(&mut got).expect("pod 4 got pod 1's frame");
        assert_eq!(n, to_d.len());
        peers[3].send(&udp_frame(4, 1, 100)).unwrap();
        w.drain_pod(4, 0);
        w.flush();
        assert!(peers[0].recv(&mut got).is_ok(), "pod 1 got pod 4's frame");
        for id in [2u64, 3] {
            let q = &w.router.pod(id).unwrap().io.queue;
            assert_eq!(q.len(), SHAPED_SLOTS, "pod {id}'s queue holds its share");
        }
        assert!(
            w.pool.available() >= POOL_SLOTS,
            "{} slots left for reading",
            w.pool.available()
        );
        let shaped_drops: u64 = [1, 2]
            .iter()
            .map(|&i| counters[i].snapshot().drops.values().sum::<u64>())
            .sum();
        assert_eq!(
            shaped_drops,
            2 * (800 - SHAPED_SLOTS as u64),
            "the excess is tail-dropped on the shaped pods"
        );
        assert_eq!(counters[0].snapshot().drops.values().sum::<u64>(), 0);

        assert!(w.throttle.is_empty(), "no fd is left unread");
    }

    /// Worker 0 of 2 with TAP pods 1 and 2 of two queues each (the test's ends: `[pod][queue]`)
    /// and a balancer; worker 1 is idle.
    fn balancing_worker() -> (
        Worker,
        Vec<Vec<UnixDatagram>>,
        Arc<super::super::balance::Loads>,
    ) {
        let loads = super::super::balance::Loads::new(2);
        let mut w = empty_worker().balance(Some(super::super::balance::Balancer::new(
            0,
            Arc::clone(&loads),
        )));
        let mut peers = Vec::new();
        for id in 1..=2u8 {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..2 {
                let (o, t) = UnixDatagram::pair().unwrap();
                o.set_nonblocking(true).unwrap();
                t.set_nonblocking(true).unwrap();
                ours.push(OwnedFd::from(o));
                theirs.push(t);
            }
            let link = Link::tap(ours.into(), 0, 2).unwrap();
            let spec = tap_spec(id);
            let c = Arc::new(LinkCounters::new(2));
            w.attach(spec, c, PodIo::new(link)).unwrap();
            peers.push(theirs);
        }
        (w, peers, loads)
    }

    /// A UDP frame from pod 1 to pod 2 from source port `port` (one flow per port).
    fn flow_frame(port: u16) -> Vec<u8> {
        let mut f = udp_frame(1, 2, 64);
        f[VNET_HDR_LEN + 34..VNET_HDR_LEN + 36].copy_from_slice(&port.to_be_bytes());
        f
    }

    /// What reached the test's end `end`, as source ports.
    fn ports_at(end: &UnixDatagram) -> Vec<u16> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = end.recv(&mut buf) {
            assert!(n > VNET_HDR_LEN + 36);
            got.push(u16::from_be_bytes([
                buf[VNET_HDR_LEN + 34],
                buf[VNET_HDR_LEN + 35],
            ]));
        }
        got
    }

    #[test]
    fn a_busy_worker_writes_a_moved_flow_to_the_other_workers_queue() {
        let (mut w, peers, loads) = balancing_worker();
        let send = |w: &mut Worker, frames: u32| {
            for _ in 0..frames {
                for port in [1000, 2000, 3000] {
                    peers[0][0].send(&flow_frame(port)).unwrap();
                }
                w.drain_pod(1, 0);
                w.flush();
            }
        };
        // Three busy flows, all on this worker's queue of pod 2.
        send(&mut w, 40);
        assert_eq!(ports_at(&peers[1][0]).len(), 120);
        assert!(ports_at(&peers[1][1]).is_empty());
        // The window ends: 3 active flows here, none on worker 1: one moves.
        let now = std::time::Instant::now() + super::super::balance::WINDOW;
        assert!(w.balance.as_mut().unwrap().tick(now));
        assert_eq!(loads.moves(), vec![1, 0]);
        send(&mut w, 2);
        let (here, there) = (ports_at(&peers[1][0]), ports_at(&peers[1][1]));
        // The moved flow's frames go to worker 1's queue of pod 2, the others stay.
        assert_eq!(there.len(), 2, "{there:?}");
        assert_eq!(there[0], there[1]);
        assert_eq!(here.len(), 4);
        assert!(!here.contains(&there[0]));
        // Counted as sent to pod 2, nothing dropped.
        let c = &w.router.pod(2).unwrap().counters.snapshot();
        assert_eq!(c.tx_packets, 126);
        assert!(c.drops.values().all(|&n| n == 0), "{:?}", c.drops);
        // The window after: the move is over, every frame stays here again.
        w.balance
            .as_mut()
            .unwrap()
            .tick(now + super::super::balance::WINDOW);
        send(&mut w, 1);
        assert_eq!(ports_at(&peers[1][0]).len(), 3);
        assert!(ports_at(&peers[1][1]).is_empty());
    }

    #[test]
    fn a_shaped_pods_share_comes_and_goes_with_it() {
        a_shaped_share_comes_and_goes(TapIo::Readv);
    }

    #[test]
    fn a_shaped_pods_share_comes_and_goes_with_it_on_uring() {
        a_shaped_share_comes_and_goes(TapIo::Uring);
    }

    /// On io_uring a TAP is read in windows that double while every read finds a frame (1,
    /// 2, 4, 8 reads: four calls for eleven frames, the last finding four) and written in one
    /// call per batch; garbage shorter than a virtio-net header among the frames is counted
    /// as malformed and the frames behind it still go. On readv the same frames take a call
    /// each.
    #[test]
    fn a_tap_on_uring_reads_a_growing_window_per_call_and_drops_garbage() {
        for (io, rx_calls, tx_calls) in [(TapIo::Uring, 4, 1), (TapIo::Readv, 11, 10)] {
            let (mut w, peers, counters) = worker_on(io);
            let frame = udp_frame(4, 1, 100);
            for i in 0..11 {
                if i == 5 {
                    peers[3].send(&[0xa5; 5]).unwrap();
                } else {
                    peers[3].send(&frame).unwrap();
                }
            }
            w.drain_pod(4, 0);
            w.flush();
            let mut got = [0u8; 2048];
            for i in 0..10 {
                let n = peers[0]
                    .recv(&mut got)
                    .unwrap_or_else(|e| panic!("{io:?}: frame {i} to pod 1: {e}"));
                // Routed: new MACs and TTL; the UDP datagram as sent.
                assert_eq!(n, frame.len(), "{io:?}: frame {i}");
                let udp = VNET_HDR_LEN + 14 + 20;
                assert_eq!(got[udp..n], frame[udp..], "{io:?}: frame {i}");
            }
            assert!(peers[0].recv(&mut got).is_err(), "{io:?}: no more frames");
            let from = counters[3].snapshot();
            assert_eq!(from.rx_packets, 10, "{io:?}");
            assert_eq!(from.drops.get("malformed"), Some(&1), "{io:?}");
            assert_eq!(from.rx_calls, rx_calls, "{io:?}: receive calls");
            let to = counters[0].snapshot();
            assert_eq!((to.tx_packets, to.tx_calls), (10, tx_calls), "{io:?}");
            assert_eq!(to.drops.values().sum::<u64>(), 0, "{io:?}: {:?}", to.drops);
        }
    }

    fn a_shaped_share_comes_and_goes(io: TapIo) {
        let (mut w, peers, _) = worker_on(io);
        assert_eq!(w.pool_limit(), POOL_SLOTS + 2 * SHAPED_SLOTS);
        flood_shaped(&mut w, &peers[0], 50);
        let (ack, _done) = mpsc::channel();
        let (cmd_tx, cmds) = mpsc::channel();
        w.cmds = cmds;
        cmd_tx.send(WorkerCmd::Detach(2, ack)).unwrap();
        w.wake.write(1).unwrap();
        assert!(w.apply_commands());
        assert_eq!(w.pool_limit(), POOL_SLOTS + SHAPED_SLOTS);
        assert!(
            w.pool.allocated() <= POOL_SLOTS + 2 * SHAPED_SLOTS,
            "{} slots",
            w.pool.allocated()
        );
        assert!(w.pool.available() >= POOL_SLOTS);
    }

    // --- The worker over in-memory links -------------------------------------------------

    use std::collections::HashSet;
    use std::io::Read;
    use std::sync::Mutex;

    use super::super::link::mem::{MemLink, MemState};
    use crate::wire::vnet::{FLAG_NEEDS_CSUM, GSO_TCPV4};

    /// A pod of [`mem_worker`]: its id, whether its link takes GSO frames, and what to set on
    /// its handles before it is attached.
    struct MemPod {
        id: u8,
        gso: bool,
        shape: fn(&mut PodIo),
    }

    fn unshaped(_: &mut PodIo) {}

    /// A bucket of 1 kbit/s whose burst is spent: it lets nothing through for a long while.
    fn spent_bucket() -> Option<Arc<TokenBucket>> {
        let bucket = TokenBucket::new(1000, 8000).unwrap();
        bucket.charge(bucket.burst_bytes() + 1_000_000);
        Some(Arc::new(bucket))
    }

    fn pod(id: u8) -> MemPod {
        MemPod {
            id,
            gso: true,
            shape: unshaped,
        }
    }

    /// What a test keeps of each in-memory link.
    type MemLinks = Vec<Arc<Mutex<MemState>>>;

    /// A worker whose pods sit on in-memory links: the state of each link and the pods'
    /// counters, in the order of `pods`.
    fn mem_worker(pods: &[MemPod]) -> (Worker, MemLinks, Vec<Arc<LinkCounters>>) {
        let mut w = empty_worker();
        let (mut states, mut counters) = (Vec::new(), Vec::new());
        for p in pods {
            let (link, state) = MemLink::new(p.gso);
            let mut io = PodIo::new(Link::Mem(link));
            (p.shape)(&mut io);
            let spec = tap_spec(p.id);
            let c = Arc::new(LinkCounters::new(1));
            w.attach(spec, Arc::clone(&c), io).unwrap();
            states.push(state);
            counters.push(c);
        }
        (w, states, counters)
    }

    /// Queues `frame` (virtio-net header first) on `link` for the worker to receive, `n` times.
    fn offer(link: &Mutex<MemState>, frame: &[u8], n: usize) {
        let mut st = link.lock().unwrap();
        for _ in 0..n {
            let vnet: [u8; VNET_HDR_LEN] = frame[..VNET_HDR_LEN].try_into().unwrap();
            st.rx.push_back((vnet, frame[VNET_HDR_LEN..].to_vec()));
        }
    }

    /// The epoll tokens ready now (no wait).
    fn ready_tokens(w: &Worker) -> HashSet<u64> {
        let mut events = [EpollEvent::empty(); 16];
        let n = w.epoll.wait(&mut events, EpollTimeout::ZERO).unwrap();
        events[..n].iter().map(|e| e.data()).collect()
    }

    /// An IPv4 BIG TCP frame (total length 0) of `ip_len` IP bytes from pod 1 to pod 2, as
    /// a veth pod's kernel hands it over with `--big-tcp`, virtio-net header first.
    fn big_tcp_frame(ip_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN + 14 + ip_len];
        VnetHdr {
            flags: crate::wire::vnet::FLAG_NEEDS_CSUM,
            gso_type: crate::wire::vnet::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
        .emit((&mut f[..VNET_HDR_LEN]).try_into().unwrap());
        let frame = &mut f[VNET_HDR_LEN..];
        ethernet::write_header(frame, GATEWAY_MAC, mac(1), ethernet::ETHERTYPE_IPV4);
        ipv4::emit_header(&mut frame[14..], ip(1), ip(2), ipv4::PROTO_TCP, 64, 20, 1);
        frame[16..18].fill(0);
        ipv4::Ipv4Packet::new_unchecked(&mut frame[14..34]).fill_checksum();
        frame[34 + 12] = 5 << 4;
        f
    }

    /// `--big-tcp`: a worker's slots hold a BIG TCP frame and its router takes it (here to a
    /// link of 64 KiB, which gets it in chunks); without the option the slot cuts it and it
    /// is dropped as `oversize`, counted, nothing sent.
    #[test]
    fn big_tcp_frames_cross_a_worker_only_with_the_option() {
        for on in [false, true] {
            let (w, links, counters) = mem_worker(&[pod(1), pod(2)]);
            let mut w = w.big_tcp(if on { 196_608 } else { 0 });
            offer(&links[0], &big_tcp_frame(150_000), 1);
            w.drain_pod(1, 0);
            w.flush();
            let (from, to) = (counters[0].snapshot(), counters[1].snapshot());
            let sent = links[1].lock().unwrap().tx.len();
            if on {
                assert_eq!(w.pool.slot_len(), 196_608 + 14 + 8 + 256);
                assert_eq!((from.rx_big_tcp_packets, to.tx_big_tcp_chunked), (1, 1));
                assert_eq!(sent, 3, "150 000 bytes in chunks of 45 segments");
            } else {
                assert_eq!(w.pool.slot_len(), super::SLOT_LEN);
                assert_eq!(from.drops.get("oversize"), Some(&1));
                assert_eq!(sent, 0);
            }
        }
    }

    #[test]
    fn a_batch_is_read_in_one_call_and_sent_in_one_call() {
        let (mut w, links, counters) = mem_worker(&[pod(1), pod(2)]);
        let frame = udp_frame(1, 2, 100);
        offer(&links[0], &frame, 8);
        w.drain_pod(1, 0);
        w.flush();
        let (from, to) = (links[0].lock().unwrap(), links[1].lock().unwrap());
        assert_eq!(from.rx_calls, 1, "eight frames read with one call");
        assert_eq!(counters[0].snapshot().rx_calls, 1);
        assert_eq!(to.tx_calls, 1, "and sent with one");
        assert_eq!(to.tx.len(), 8);
        let udp = 14 + 20; // the UDP header and payload, untouched by the router
        assert!(to
            .tx
            .iter()
            .all(|(_, f)| f[udp..] == frame[VNET_HDR_LEN + udp..]));
        drop((from, to));

        // More than one call takes: `MMSG_BATCH` a call.
        offer(&links[0], &frame, MMSG_BATCH + 3);
        w.drain_pod(1, 0);
        w.flush();
        assert_eq!(links[0].lock().unwrap().rx_calls, 1 + 2);
        assert_eq!(links[1].lock().unwrap().tx.len(), 8 + MMSG_BATCH + 3);
        assert_eq!(w.pool.available(), w.pool_limit(), "every slot came back");
    }

    #[test]
    fn an_empty_egress_bucket_stops_reading_the_pod() {
        let shaped = MemPod {
            shape: |io| io.egress = spent_bucket(),
            ..pod(1)
        };
        let (mut w, links, _) = mem_worker(&[shaped, pod(2)]);
        assert!(ready_tokens(&w).contains(&token(1, 0)));
        offer(&links[0], &udp_frame(1, 2, 100), 3);
        w.drain_pod(1, 0);
        w.flush();
        assert_eq!(links[0].lock().unwrap().rx.len(), 3, "nothing read");
        assert!(links[1].lock().unwrap().tx.is_empty());
        assert!(w.throttle.holds(1, 0));
        let ready = ready_tokens(&w);
        assert!(!ready.contains(&token(1, 0)), "the pod's fd is left alone");
        assert!(ready.contains(&token(2, 0)), "the other pod's is not");
    }

    #[test]
    fn frames_to_a_pod_without_tokens_wait_in_its_queue() {
        let shaped = MemPod {
            shape: |io| io.ingress = spent_bucket(),
            ..pod(2)
        };
        let (mut w, links, _) = mem_worker(&[pod(1), shaped, pod(3)]);
        offer(&links[0], &udp_frame(1, 2, 100), 5);
        offer(&links[0], &udp_frame(1, 3, 100), 1);
        w.drain_pod(1, 0);
        w.flush();
        assert!(
            links[1].lock().unwrap().tx.is_empty(),
            "nothing sent to pod 2"
        );
        assert_eq!(w.router.pod(2).unwrap().io.queue.len(), 5);
        assert_eq!(w.dirty, vec![2], "its queue is drained again later");
        assert_eq!(links[2].lock().unwrap().tx.len(), 1, "pod 3 is not held up");
    }

    /// An Ethernet + IPv4 + TCP super-frame from pod `src` to pod `dst` of `segments` full
    /// 1448-byte segments, behind a virtio-net header asking for TCPv4 segmentation, as a pod
    /// with TSO sends it.
    fn tso_frame(src: u8, dst: u8, segments: usize) -> Vec<u8> {
        const MSS: usize = 1448;
        let payload = segments * MSS;
        let mut f = vec![0u8; VNET_HDR_LEN + 14 + 40 + payload];
        let vnet = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: MSS as u16,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        vnet.emit((&mut f[..VNET_HDR_LEN]).try_into().unwrap());
        let frame = &mut f[VNET_HDR_LEN..];
        ethernet::write_header(frame, GATEWAY_MAC, mac(src), ethernet::ETHERTYPE_IPV4);
        ipv4::emit_header(
            &mut frame[14..],
            ip(src),
            ip(dst),
            ipv4::PROTO_TCP,
            64,
            20 + payload,
            1,
        );
        let tcp = &mut frame[34..54];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
        tcp[12] = 5 << 4; // data offset: 20 bytes
        tcp[13] = 0x18; // PSH, ACK
        tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
        for (i, b) in frame[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn a_tso_frame_to_a_link_without_gso_is_segmented() {
        let no_gso = MemPod {
            gso: false,
            ..pod(2)
        };
        let (mut w, links, counters) = mem_worker(&[pod(1), no_gso, pod(3)]);
        let segments = 45;
        let to_b = tso_frame(1, 2, segments);
        assert!(to_b.len() > 64_000);
        offer(&links[0], &to_b, 1);
        offer(&links[0], &tso_frame(1, 3, segments), 1);
        w.drain_pod(1, 0);
        w.flush();

        let b = links[1].lock().unwrap();
        assert_eq!(b.tx.len(), segments, "one frame per segment");
        let mut payload = Vec::new();
        for (vnet, seg) in &b.tx {
            assert_eq!(*vnet, [0u8; VNET_HDR_LEN], "no offload left to the link");
            assert_eq!(seg.len(), 14 + 40 + 1448);
            payload.extend_from_slice(&seg[54..]);
        }
        assert_eq!(payload, to_b[VNET_HDR_LEN + 54..], "the payload, in order");
        assert_eq!(counters[1].snapshot().tx_gso_segmented, 1);

        let c = links[2].lock().unwrap();
        assert_eq!(c.tx.len(), 1, "a link with GSO takes the super-frame whole");
        assert!(VnetHdr::parse(&c.tx[0].0).is_gso());
        assert_eq!(counters[2].snapshot().tx_gso_segmented, 0);
    }

    #[test]
    fn a_dead_link_is_forgotten_and_the_others_go_on() {
        let (mut w, links, _) = mem_worker(&[pod(1), pod(2), pod(3)]);
        assert!(ready_tokens(&w).contains(&token(1, 0)));
        offer(&links[0], &udp_frame(1, 3, 100), 2);
        links[0].lock().unwrap().dead = true;
        w.drain_pod(1, 0);
        w.flush();
        let ready = ready_tokens(&w);
        assert!(
            !ready.contains(&token(1, 0)),
            "the dead link is no longer polled"
        );
        assert!(ready.contains(&token(2, 0)) && ready.contains(&token(3, 0)));
        assert!(w.router.pod(1).is_some(), "the attachment stays until DEL");
        assert_eq!(w.pool.available(), w.pool_limit(), "its slots came back");

        offer(&links[1], &udp_frame(2, 3, 100), 1);
        w.drain_pod(2, 0);
        w.flush();
        assert_eq!(
            links[2].lock().unwrap().tx.len(),
            1,
            "pod 2 still reaches pod 3"
        );
    }

    /// The frames of the pcap records in `bytes`.
    fn pcap_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while bytes.len() >= 16 {
            let incl = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
            frames.push(bytes[16..16 + incl].to_vec());
            bytes = &bytes[16 + incl..];
        }
        assert!(bytes.is_empty(), "whole records");
        frames
    }

    #[test]
    fn capture_copies_the_frames_a_pod_sends_and_receives() {
        let (mut w, links, _) = mem_worker(&[pod(1), pod(2), pod(3)]);
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        crate::sys::tap::set_nonblocking(write_end.as_fd()).unwrap();
        crate::sys::tap::set_nonblocking(read_end.as_fd()).unwrap();
        let sink = Arc::new(CaptureSink::new(write_end, 65535, 100, 3600));
        w.router.pod_mut(2).unwrap().io.capture = Some(sink);

        let (to_b, from_b, other) = (
            udp_frame(1, 2, 10),
            udp_frame(2, 1, 20),
            udp_frame(1, 3, 30),
        );
        offer(&links[0], &to_b, 2);
        offer(&links[0], &other, 1);
        w.drain_pod(1, 0);
        w.flush();
        offer(&links[1], &from_b, 1);
        w.drain_pod(2, 0);
        w.flush();

        let mut bytes = vec![0u8; 1 << 16];
        let n = std::fs::File::from(read_end).read(&mut bytes).unwrap();
        let got = pcap_frames(&bytes[..n]);
        // Frames to pod 2 as they left for it, frames from it as it sent them.
        let delivered = links[1].lock().unwrap().tx.clone();
        assert_eq!(delivered.len(), 2);
        let mut want: Vec<Vec<u8>> = delivered.into_iter().map(|(_, f)| f).collect();
        want.push(from_b[VNET_HDR_LEN..].to_vec());
        assert_eq!(got, want, "pod 2's frames, each way, and no other pod's");
    }

    /// A VM pod's side, played by the test: 1 MiB of memfd guest memory with the guest's
    /// receive ring at 0 and transmit ring at 0x1000 (16 entries each, available ring 256
    /// bytes and used ring 2 KiB after the table), and the three eventfds of its queue pair.
    struct Vm {
        mem: vm_memory::GuestMemoryMmap,
        kick: EventFd,
        /// The receive queue's kick: the guest added buffers.
        rx_kick: EventFd,
        rx_call: EventFd,
        tx_call: EventFd,
    }

    const VM_RX: u64 = 0;
    const VM_TX: u64 = 0x1000;

    impl Vm {
        /// The guest and the worker's link to it, with `features` acked.
        fn new(features: u64) -> (Vm, Link) {
            use crate::dataplane::virtq::{RingConfig, VhostDevice, VhostPair};
            use crate::vhost::{map_regions, MemRegion};
            use nix::sys::eventfd::EfdFlags;

            let file = std::fs::File::from(
                nix::sys::memfd::memfd_create("guest-ram", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                    .unwrap(),
            );
            file.set_len(1 << 20).unwrap();
            let mem = map_regions(&[MemRegion {
                guest_addr: 0,
                size: 1 << 20,
                user_addr: 0x7f00_0000_0000,
                mmap_offset: 0,
                file,
            }])
            .unwrap();
            let cfg = |base: u64| RingConfig {
                size: 16,
                desc: base,
                avail: base + 0x100,
                used: base + 0x800,
                event_idx: true,
                base: None,
            };
            let eventfd = || EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap();
            let vm = Vm {
                mem,
                kick: eventfd(),
                rx_kick: eventfd(),
                rx_call: eventfd(),
                tx_call: eventfd(),
            };
            let dup = |e: &EventFd| e.as_fd().try_clone_to_owned().unwrap();
            let pair = VhostPair {
                index: 0,
                to_guest: cfg(VM_RX),
                to_guest_call: Some(dup(&vm.rx_call)),
                to_guest_kick: dup(&vm.rx_kick),
                from_guest: cfg(VM_TX),
                from_guest_call: Some(dup(&vm.tx_call)),
                kick: dup(&vm.kick),
            };
            let device = VhostDevice {
                mem: vm.mem.clone(),
                features,
                pairs: vec![pair],
            };
            let link = crate::dataplane::link::vhost_links("vm", device, 1)
                .unwrap()
                .pop()
                .unwrap();
            (vm, link)
        }

        fn write(&self, at: u64, bytes: &[u8]) {
            use vm_memory::{Bytes, GuestAddress};
            self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        }

        fn read(&self, at: u64, len: usize) -> Vec<u8> {
            use vm_memory::{Bytes, GuestAddress};
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
            v
        }

        /// Makes descriptor `i` of `ring` (one buffer, no chain) available as entry `i`.
        fn offer(&self, ring: u64, i: u16, addr: u64, len: u32, flags: u16) {
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&0u16.to_le_bytes());
            self.write(ring + 16 * u64::from(i), &d);
            self.write(ring + 0x100 + 4 + 2 * u64::from(i % 16), &i.to_le_bytes());
            self.write(ring + 0x100 + 2, &(i + 1).to_le_bytes());
        }

        /// The guest sends `frame` (behind a zero 12-byte header) as transmit entry `i`.
        fn send(&self, i: u16, frame: &[u8]) {
            let at = 0x1_0000 + 0x1000 * u64::from(i);
            let mut bytes = vec![0u8; 12];
            bytes.extend_from_slice(frame);
            self.write(at, &bytes);
            self.offer(VM_TX, i, at, bytes.len() as u32, 0);
            self.kick.write(1).unwrap();
        }

        /// The guest posts a 2 KiB receive buffer as entry `i`; returns its address.
        fn post(&self, i: u16) -> u64 {
            let at = 0x8_0000 + 0x1000 * u64::from(i);
            self.offer(VM_RX, i, at, 2048, VRING_WRITE as u16);
            at
        }

        /// `ring`'s used index and the length of used element `i`.
        fn used(&self, ring: u64, i: u64) -> (u16, u32) {
            let b = self.read(ring + 0x800 + 2, 2);
            let l = self.read(ring + 0x800 + 4 + 8 * i + 4, 4);
            (
                u16::from_le_bytes([b[0], b[1]]),
                u32::from_le_bytes([l[0], l[1], l[2], l[3]]),
            )
        }
    }

    /// A worker with VM pod 1 (`link`) and TAP pod 2; returns the TAP pod's end.
    fn worker_with_a_vm(link: Link) -> (Worker, UnixDatagram) {
        let (w, tap, _) = worker_with_a_vm_counted(link);
        (w, tap)
    }

    /// [`worker_with_a_vm`], with the VM pod's counters.
    fn worker_with_a_vm_counted(link: Link) -> (Worker, UnixDatagram, Arc<LinkCounters>) {
        let mut w = empty_worker();
        let (tap_ours, tap) = UnixDatagram::pair().unwrap();
        tap_ours.set_nonblocking(true).unwrap();
        tap.set_nonblocking(true).unwrap();
        let tap_link = Link::pod(LinkKind::Tap, vec![OwnedFd::from(tap_ours)], None).unwrap();
        let mut vm_counters = None;
        for (id, link) in [(1u8, link), (2, tap_link)] {
            let spec = tap_spec(id);
            let c = Arc::new(LinkCounters::new(1));
            if id == 1 {
                vm_counters = Some(Arc::clone(&c));
            }
            w.attach(spec, c, PodIo::new(link)).unwrap();
        }
        (w, tap, vm_counters.expect("the VM's counters"))
    }

    /// A VM pod (vhost-user queue pair over memfd guest memory) and a TAP pod forward to each
    /// other through the worker: the VM's frame reaches the TAP with its header as a TAP takes
    /// it, the TAP's frame lands in the guest's receive buffer behind a 12-byte header, each
    /// side's buffers come back used, each call eventfd fires, the kick is cleared. A ring
    /// fault stops only the VM's transmit queue: frames to it still go.
    #[test]
    fn a_vm_pod_and_a_tap_pod_forward_to_each_other() {
        let (vm, link) = Vm::new(crate::vhost::OFFERED_FEATURES);
        let (mut w, tap) = worker_with_a_vm(link);

        let to_tap = udp_frame(1, 2, 100);
        vm.send(0, &to_tap[VNET_HDR_LEN..]);
        w.drain_pod(1, 0);
        w.flush();
        let mut got = [0u8; 2048];
        let n = tap.recv(&mut got).expect("the TAP pod got the VM's frame");
        assert_eq!(n, to_tap.len());
        // Routed: MACs rewritten, TTL decremented; the UDP datagram as the VM sent it.
        assert_eq!(&got[VNET_HDR_LEN + 34..n], &to_tap[VNET_HDR_LEN + 34..]);
        assert_eq!(vm.used(VM_TX, 0), (1, 0), "the VM's buffer came back");
        assert_eq!(vm.tx_call.read().unwrap(), 1);
        assert!(vm.kick.read().is_err(), "the kick was cleared");

        let at = vm.post(0);
        let to_vm = udp_frame(2, 1, 200);
        tap.send(&to_vm).unwrap();
        w.drain_pod(2, 0);
        w.flush();
        let frame_len = to_vm.len() - VNET_HDR_LEN;
        assert_eq!(vm.used(VM_RX, 0), (1, (12 + frame_len) as u32));
        let landed = vm.read(at, 12 + frame_len);
        assert_eq!(&landed[10..12], &1u16.to_le_bytes(), "num_buffers");
        assert_eq!(&landed[12..18], &mac(1).0, "to the VM's MAC");
        assert_eq!(&landed[12 + 34..], &to_vm[VNET_HDR_LEN + 34..]);
        assert_eq!(vm.rx_call.read().unwrap(), 1);

        // The VM's transmit ring goes bad (its available index jumps): that queue stops
        // and is no longer read; the VM still receives.
        vm.write(VM_TX + 0x100 + 2, &100u16.to_le_bytes());
        vm.kick.write(1).unwrap();
        w.drain_pod(1, 0);
        w.flush();
        vm.post(1);
        tap.send(&to_vm).unwrap();
        w.drain_pod(2, 0);
        w.flush();
        assert_eq!(vm.used(VM_RX, 1).0, 2, "the VM still receives");
    }

    /// A guest that did not negotiate checksum offload gets a frame whose checksum the TAP
    /// pod left partial completed, with an all-zero header (no NEEDS_CSUM it cannot honour).
    #[test]
    fn a_vm_without_checksum_offload_gets_complete_checksums() {
        use virtio_bindings::virtio_net::{
            VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
        };
        let features = crate::vhost::OFFERED_FEATURES
            & !(1 << VIRTIO_NET_F_GUEST_CSUM
                | 1 << VIRTIO_NET_F_GUEST_TSO4
                | 1 << VIRTIO_NET_F_GUEST_TSO6);
        let (vm, link) = Vm::new(features);
        let (mut w, tap) = worker_with_a_vm(link);
        let at = vm.post(0);
        // A UDP frame whose checksum is partial: the field holds a stand-in for the
        // pseudo-header sum, csum_start at the UDP header, csum_offset 6.
        let mut to_vm = udp_frame(2, 1, 64);
        let v = VnetHdr {
            flags: crate::wire::vnet::FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        let mut hdr = [0u8; VNET_HDR_LEN];
        v.emit(&mut hdr);
        to_vm[..VNET_HDR_LEN].copy_from_slice(&hdr);
        to_vm[VNET_HDR_LEN + 34 + 6..VNET_HDR_LEN + 34 + 8].copy_from_slice(&[0x12, 0x34]);
        let mut want = to_vm[VNET_HDR_LEN..].to_vec();
        crate::gso::complete_checksum(&v, &mut want, 14).unwrap();
        assert_ne!(
            &want[34..],
            &to_vm[VNET_HDR_LEN + 34..],
            "the checksum changes"
        );
        tap.send(&to_vm).unwrap();
        w.drain_pod(2, 0);
        w.flush();
        let frame_len = to_vm.len() - VNET_HDR_LEN;
        assert_eq!(vm.used(VM_RX, 0), (1, (12 + frame_len) as u32));
        let landed = vm.read(at, 12 + frame_len);
        assert_eq!(&landed[..10], &[0u8; 10], "no offload flags");
        assert_eq!(&landed[12 + 34..], &want[34..], "the checksum completed");
    }

    /// `udp_frame(2, 1, 64)` with its last payload byte `n`: the frames of one flow, numbered.
    fn numbered_to_vm(n: u8) -> Vec<u8> {
        let mut f = udp_frame(2, 1, 64);
        let last = f.len() - 1;
        f[last] = n;
        f
    }

    /// The available ring's `avail_event` of a 16-entry ring: what the guest kicks at.
    fn avail_event(vm: &Vm, ring: u64) -> u16 {
        let b = vm.read(ring + 0x800 + 4 + 8 * 16, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// A burst to a VM whose receive ring is full waits in the pair's backlog, with the guest
    /// asked to kick at its next buffer; when it posts buffers and kicks, the worker (woken by
    /// that kick through epoll) writes the waiting frames into them in order, and interrupts
    /// the guest. Nothing is dropped.
    #[test]
    fn frames_to_a_vm_with_a_full_ring_wait_and_arrive_in_order() {
        let (vm, link) = Vm::new(crate::vhost::OFFERED_FEATURES);
        let (mut w, tap, counters) = worker_with_a_vm_counted(link);
        let first = vm.post(0);
        for n in 0..5u8 {
            tap.send(&numbered_to_vm(n)).unwrap();
        }
        w.drain_pod(2, 0);
        w.flush();
        let frame_len = numbered_to_vm(0).len() - VNET_HDR_LEN;
        assert_eq!(vm.used(VM_RX, 0).0, 1, "one buffer: one frame in");
        assert_eq!(vm.read(first, 12 + frame_len)[12 + frame_len - 1], 0);
        assert_eq!(
            avail_event(&vm, VM_RX),
            1,
            "asked to kick at its next buffer"
        );
        assert_eq!(vm.rx_call.read().unwrap(), 1);
        assert!(
            ready_tokens(&w).is_empty(),
            "nothing to do until the guest kicks"
        );

        let at: Vec<u64> = (1..5).map(|i| vm.post(i)).collect();
        // The guest asks to be interrupted past the buffer it consumed (`used_event` 1).
        vm.write(VM_RX + 0x100 + 4 + 2 * 16, &1u16.to_le_bytes());
        vm.rx_kick.write(1).unwrap();
        assert!(
            ready_tokens(&w).contains(&token(1, 1)),
            "the worker waits on the receive queue's kick"
        );
        w.drain_pod(1, 1);
        w.flush();
        assert_eq!(
            vm.used(VM_RX, 4).0,
            5,
            "the backlog went into the new buffers"
        );
        for (i, a) in at.iter().enumerate() {
            let landed = vm.read(*a, 12 + frame_len);
            assert_eq!(landed[12 + frame_len - 1], i as u8 + 1, "in order");
        }
        assert_eq!(vm.rx_call.read().unwrap(), 1, "interrupted once more");
        assert!(vm.rx_kick.read().is_err(), "the kick was cleared");
        let c = counters.snapshot();
        assert_eq!(c.tx_packets, 5);
        assert_eq!(c.drops.values().sum::<u64>(), 0, "{:?}", c.drops);

        // Later frames go straight to the ring again.
        let next = vm.post(5);
        tap.send(&numbered_to_vm(9)).unwrap();
        w.drain_pod(2, 0);
        w.flush();
        assert_eq!(vm.used(VM_RX, 5).0, 6);
        assert_eq!(vm.read(next, 12 + frame_len)[12 + frame_len - 1], 9);
    }

    /// The backlog is bounded (here by the 16-entry ring): a longer burst to a guest with no
    /// buffer drops the rest as `guest_rx_full`, and what was kept arrives in order.
    #[test]
    fn a_full_backlog_drops_as_guest_rx_full() {
        let (vm, link) = Vm::new(crate::vhost::OFFERED_FEATURES);
        let (mut w, tap, counters) = worker_with_a_vm_counted(link);
        for n in 0..20u8 {
            tap.send(&numbered_to_vm(n)).unwrap();
        }
        w.drain_pod(2, 0);
        w.flush();
        assert_eq!(vm.used(VM_RX, 0).0, 0);
        let c = counters.snapshot();
        assert_eq!(c.drops["guest_rx_full"], 4);
        assert_eq!(c.drops["tx_error"], 0);
        let at: Vec<u64> = (0..16).map(|i| vm.post(i)).collect();
        vm.rx_kick.write(1).unwrap();
        w.drain_pod(1, 1);
        w.flush();
        assert_eq!(vm.used(VM_RX, 15).0, 16);
        let frame_len = numbered_to_vm(0).len() - VNET_HDR_LEN;
        for (i, a) in at.iter().enumerate() {
            assert_eq!(vm.read(*a, 12 + frame_len)[12 + frame_len - 1], i as u8);
        }
    }

    /// Each kind of garbage in the VM's transmit ring stops that queue without a panic: the
    /// stop is counted once on the VM pod (`vhost_queue_stops`), its kick leaves epoll, and a
    /// second VM pod and the TAP pod on the same worker keep forwarding. Garbage in the
    /// receive ring stops that queue, counted once as well.
    #[test]
    fn a_vm_that_puts_garbage_in_its_rings_stops_its_queue_counted() {
        // (what it covers, the bytes written at an offset of the transmit ring)
        let descriptor = |addr: u64, len: u32, flags: u16, next: u16| {
            let mut d = Vec::with_capacity(16);
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            d
        };
        const NEXT: u16 = 1;
        /// Bytes written at an offset of the transmit ring.
        type Pokes = Vec<(u64, Vec<u8>)>;
        let cases: Vec<(&str, Pokes)> = vec![
            (
                "a descriptor outside guest memory",
                vec![(0, descriptor(1 << 21, 100, 0, 0))],
            ),
            (
                "a length beyond guest memory",
                vec![(0, descriptor(0xf_0000, 0x10_0000, 0, 0))],
            ),
            (
                "a descriptor loop",
                vec![
                    (0, descriptor(0x1_0000, 64, NEXT, 1)),
                    (16, descriptor(0x1_0100, 64, NEXT, 0)),
                ],
            ),
            (
                "a next index past the table",
                vec![(0, descriptor(0x1_0000, 64, NEXT, 200))],
            ),
            (
                "an available index jump beyond the ring",
                vec![
                    (0, descriptor(0x1_0000, 64, 0, 0)),
                    (0x102, 100u16.to_le_bytes().to_vec()),
                ],
            ),
        ];
        for (what, pokes) in cases {
            let (vm, link) = Vm::new(crate::vhost::OFFERED_FEATURES);
            let (mut w, tap, counters) = worker_with_a_vm_counted(link);
            // A second VM pod on the same worker.
            let (vm3, link3) = Vm::new(crate::vhost::OFFERED_FEATURES);
            let spec3 = PodSpec {
                id: 3,
                mac: mac(3),
                ipv4: vec![ip(3)],
                ipv6: Vec::new(),
                gateway_v6: None,
                mtu: 1500,
                bandwidth: None,
                container_id: "pod3".into(),
                link: LinkKind::Tap,
            };
            w.attach(spec3, Arc::new(LinkCounters::new(1)), PodIo::new(link3))
                .unwrap();

            // The entry the guest makes available (head 0), with the garbage.
            vm.write(VM_TX + 0x100 + 4, &0u16.to_le_bytes());
            vm.write(VM_TX + 0x100 + 2, &1u16.to_le_bytes());
            for (off, bytes) in &pokes {
                vm.write(VM_TX + off, bytes);
            }
            vm.kick.write(1).unwrap();
            w.drain_pod(1, 0);
            w.flush();
            assert_eq!(counters.snapshot().vhost_queue_stops, 1, "{what}");
            assert!(
                !ready_tokens(&w).contains(&token(1, 0)),
                "{what}: the stopped queue is no longer waited on"
            );
            w.drain_pod(1, 0);
            assert_eq!(
                counters.snapshot().vhost_queue_stops,
                1,
                "{what}: counted once"
            );

            // The other VM still sends to the TAP pod, and the TAP pod to it.
            let to_tap = udp_frame(3, 2, 100);
            vm3.send(0, &to_tap[VNET_HDR_LEN..]);
            w.drain_pod(3, 0);
            w.flush();
            let mut got = [0u8; 2048];
            assert_eq!(tap.recv(&mut got).unwrap(), to_tap.len(), "{what}");
            vm3.post(0);
            tap.send(&udp_frame(2, 3, 100)).unwrap();
            w.drain_pod(2, 0);
            w.flush();
            assert_eq!(vm3.used(VM_RX, 0).0, 1, "{what}: the other VM receives");
        }

        // The receive ring: a buffer outside guest memory stops it at the next frame to it.
        let (vm, link) = Vm::new(crate::vhost::OFFERED_FEATURES);
        let (mut w, tap, counters) = worker_with_a_vm_counted(link);
        vm.offer(VM_RX, 0, 1 << 21, 2048, VRING_WRITE as u16);
        tap.send(&udp_frame(2, 1, 100)).unwrap();
        tap.send(&udp_frame(2, 1, 100)).unwrap();
        w.drain_pod(2, 0);
        w.flush();
        let c = counters.snapshot();
        assert_eq!(c.vhost_queue_stops, 1);
        assert_eq!(c.drops["tx_error"], 2, "both frames dropped");
    }
}
