//! One dataplane worker: an epoll loop over its TAP queues, its uplink queue, a wakeup eventfd
//! and a timerfd for shaping. Blocks in epoll when idle (no busy polling); reads at most
//! `BATCH` frames per fd per wakeup so one busy pod cannot starve the others, then drains the
//! fifo queues those frames went to (see `qdisc`). A TAP gives one frame per `readv`; the
//! packet sockets of a veth-mode pod give up to `MMSG_BATCH` per `recvmmsg`, and frames to
//! such a pod leave in `sendmmsg` batches.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::gso::{self, GsoError, GsoFrame};
use crate::stack::{DropReason, LinkCounters, PodPort, Router, Verdict};
use crate::sys::packet::{recv_frames, send_frames, RxRing, MMSG_BATCH};
use crate::sys::tap::{read_frame, write_frame, RxFrame, VNET_HDR_LEN};
use crate::wire::{ethernet, VnetHdr};

use super::capture::CaptureSink;
use super::qdisc::{FifoQueue, Slot, SlotPool, TokenBucket, SLOT_LEN};
use super::{InFlight, PodSpec};

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

/// A worker's handles on one pod's TAP.
pub(super) struct PodIo {
    /// The queues this worker reads.
    pub rx: Vec<OwnedFd>,
    /// A queue to write to when this worker reads none of the pod's queues.
    pub tx_extra: Option<OwnedFd>,
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
    /// The fds are packet sockets (veth mode): read and written in batches.
    pub packet_sockets: bool,
    /// The receive ring of each `rx` socket, when they have one (`--veth-rx ring`).
    pub rings: Vec<RxRing>,
}

impl PodIo {
    /// Handles with empty queues and no shaping.
    pub fn new(rx: Vec<OwnedFd>, tx_extra: Option<OwnedFd>) -> Self {
        PodIo {
            rx,
            tx_extra,
            capture: None,
            queue: FifoQueue::new(QUEUE_LIMIT),
            ingress: None,
            egress: None,
            container_id: Arc::from(""),
            packet_sockets: false,
            rings: Vec::new(),
        }
    }

    fn tx(&self) -> Option<BorrowedFd<'_>> {
        self.rx
            .first()
            .or(self.tx_extra.as_ref())
            .map(|fd| fd.as_fd())
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
    Shutdown,
}

pub(super) struct Worker {
    index: usize,
    cmds: mpsc::Receiver<WorkerCmd>,
    wake: Arc<EventFd>,
    epoll: Epoll,
    timer: TimerFd,
    timer_at: Option<Instant>,
    uplink: OwnedFd,
    uplink_queue: FifoQueue,
    uplink_counters: Arc<LinkCounters>,
    router: Router<PodIo>,
    wakeups: Arc<AtomicU64>,
    pool: SlotPool,
    /// Attached pods with an ingress rate (each adds `SHAPED_SLOTS` to the pool's limit).
    shaped_pods: usize,
    /// Egress ids (pods, or `UPLINK`) with frames queued.
    dirty: Vec<u64>,
    /// Pod queues not read while their egress bucket is empty.
    throttled: Vec<(u64, usize)>,
    /// Segment every GSO super-frame before writing it (`--gso segment`).
    segment_gso: bool,
    /// Where software segmentation builds each segment.
    scratch: Box<[u8]>,
    /// Slots being filled by one `recvmmsg`, ascending, and what each received.
    rx_batch: Vec<u32>,
    rx_lens: [RxFrame; MMSG_BATCH],
    /// Slots gathered for one `sendmmsg`.
    tx_batch: Vec<u32>,
    /// Where the id of the pod whose batch this worker handles is published.
    in_flight: InFlight,
}

/// A super-frame the segmenter refuses is a malformed frame.
impl From<GsoError> for DropReason {
    fn from(_: GsoError) -> Self {
        DropReason::Malformed
    }
}

/// Writes one queued frame to `fd`, whose L3 header starts at `l3_offset` in it: whole, or —
/// when `segment` is on, or the device refuses the GSO frame (EINVAL: a kernel without that
/// GSO type on tun) — as segments with full checksums and no virtio-net offload flags, as
/// Linux segments it. Counts what went out on `counters`.
fn send_frame(
    fd: BorrowedFd<'_>,
    slot: &Slot,
    l3_offset: usize,
    segment: bool,
    scratch: &mut [u8],
    counters: &LinkCounters,
    w: usize,
) -> Result<(), DropReason> {
    let frame = &slot.buf[slot.start..slot.end];
    let vnet = VnetHdr::parse(&slot.vnet);
    if !(segment && vnet.is_gso()) {
        match write_frame(fd, &slot.vnet, frame) {
            Ok(()) => {
                counters.tx_call(w);
                counters.tx(w, frame.len());
                return Ok(());
            }
            Err(e) if vnet.is_gso() && e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(_) => return Err(DropReason::TxError),
        }
    }
    let gso = GsoFrame::parse(&vnet, frame, l3_offset)?;
    counters.segmented(w);
    let plain = [0u8; VNET_HDR_LEN];
    gso.segment_each(scratch, |seg| {
        write_frame(fd, &plain, seg).map_err(|_| DropReason::TxError)?;
        counters.tx_call(w);
        counters.tx(w, seg.len());
        Ok(())
    })
    .map(|_| ())
}

/// Writes the frames of `batch` to packet socket `fd` with as few `sendmmsg` calls as it
/// takes; a frame the kernel refuses goes again alone through `send_frame`, which counts why
/// (or segments a GSO frame the socket cannot take). Returns every slot to `pool`.
fn send_batch(
    fd: BorrowedFd<'_>,
    pool: &mut SlotPool,
    batch: &mut Vec<u32>,
    scratch: &mut [u8],
    counters: &LinkCounters,
    w: usize,
) {
    let mut done = 0;
    while done < batch.len() {
        let frames = batch[done..].iter().map(|&i| {
            let s = pool.get(i);
            (&s.vnet, &s.buf[s.start..s.end])
        });
        let sent = send_frames(fd, frames).unwrap_or(0);
        if sent > 0 {
            counters.tx_call(w);
        }
        for &i in &batch[done..done + sent] {
            let s = pool.get(i);
            counters.tx(w, s.end - s.start);
        }
        done += sent;
        if let Some(&refused) = batch.get(done) {
            let s = pool.get(refused);
            let again = send_frame(fd, s, ethernet::HEADER_LEN, false, scratch, counters, w);
            if let Err(reason) = again {
                counters.dropped(w, reason);
            }
            done += 1;
        }
    }
    for &i in batch.iter() {
        pool.put(i);
    }
    batch.clear();
}

/// Pod `id` is read through packet sockets (veth mode).
fn src_is_socket(router: &Router<PodIo>, id: u64) -> bool {
    router.pod(id).is_some_and(|p| p.io.packet_sockets)
}

fn token(id: u64, queue: usize) -> u64 {
    (id << 8) | queue as u64
}

impl Worker {
    pub(super) fn new(
        index: usize,
        cmds: mpsc::Receiver<WorkerCmd>,
        wake: Arc<EventFd>,
        uplink: OwnedFd,
        uplink_counters: Arc<LinkCounters>,
        router: Router<PodIo>,
        wakeups: Arc<AtomicU64>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
        )?;
        epoll.add(
            wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
        )?;
        epoll.add(
            uplink.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_UPLINK),
        )?;
        epoll.add(
            timer.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER),
        )?;
        Ok(Worker {
            index,
            cmds,
            wake,
            epoll,
            timer,
            timer_at: None,
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
            throttled: Vec::new(),
            segment_gso: false,
            scratch: vec![0u8; 2 * SLOT_LEN].into_boxed_slice(),
            rx_batch: Vec::with_capacity(MMSG_BATCH),
            rx_lens: [RxFrame::Malformed; MMSG_BATCH],
            tx_batch: Vec::with_capacity(MMSG_BATCH),
            in_flight: InFlight::default(),
        })
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
                    if let Some(mut port) = self.router.remove(id) {
                        for fd in &port.io.rx {
                            let _ = self.epoll.delete(fd.as_fd());
                        }
                        while let Some(slot) = port.io.queue.pop() {
                            self.pool.put(slot);
                        }
                        if port.io.ingress.is_some() {
                            self.shaped_pods -= 1;
                            self.pool.set_limit(self.pool_limit());
                        }
                        self.dirty.retain(|d| *d != id);
                        self.throttled.retain(|(t, _)| *t != id);
                    }
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
        for (q, fd) in io.rx.iter().enumerate() {
            if let Err(e) = self.epoll.add(
                fd.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, token(spec.id, q)),
            ) {
                for fd in &io.rx[..q] {
                    let _ = self.epoll.delete(fd.as_fd());
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

    /// Wakes the timer at `at` at the latest.
    fn arm_timer(&mut self, at: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        let wait = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(50));
        if self
            .timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            )
            .is_ok()
        {
            self.timer_at = Some(at);
        }
    }

    /// Shaping time passed: read throttled pods again and retry waiting queues.
    fn on_timer(&mut self) {
        let _ = self.timer.wait();
        self.timer_at = None;
        for (id, q) in std::mem::take(&mut self.throttled) {
            if let Some((fd, tok)) = self.rx_fd(id, q) {
                let mut ev = EpollEvent::new(EpollFlags::EPOLLIN, tok);
                let _ = self.epoll.modify(fd, &mut ev);
            }
        }
    }

    /// The fd of pod queue `q`, or of the uplink for `UPLINK`, with its epoll token.
    fn rx_fd(&self, id: u64, q: usize) -> Option<(BorrowedFd<'_>, u64)> {
        if id == UPLINK {
            return Some((self.uplink.as_fd(), TOKEN_UPLINK));
        }
        let fd = self.router.pod(id).and_then(|p| p.io.rx.get(q))?;
        Some((fd.as_fd(), token(id, q)))
    }

    /// Stops reading an fd that failed for good — a pod TAP or an uplink deleted under us
    /// (EBADFD, reported as EPOLLERR for ever: level-triggered epoll would spin on it). The attachment stays until DEL or a restart cleans it up.
    fn forget_fd(&mut self, id: u64, q: usize, container_id: &str, e: &io::Error) {
        if let Some((fd, _)) = self.rx_fd(id, q) {
            let _ = self.epoll.delete(fd);
        }
        self.throttled.retain(|t| *t != (id, q));
        if id == UPLINK {
            tracing::error!(
                worker = self.index,
                "the uplink failed ({e}): no longer read"
            );
        } else {
            tracing::warn!(
                worker = self.index,
                %container_id,
                queue = q,
                "the pod's device is gone ({e}): its queue is no longer read"
            );
        }
    }

    /// Stops reading pod queue `q` (or the uplink) for `wait`: its egress bucket is empty, or
    /// every buffer waits in a shaped queue. Epoll is level-triggered, so without this the
    /// worker would spin on a readable fd it cannot serve.
    fn throttle(&mut self, id: u64, q: usize, wait: Duration) {
        if self.throttled.contains(&(id, q)) {
            return;
        }
        if let Some((fd, tok)) = self.rx_fd(id, q) {
            let mut ev = EpollEvent::new(EpollFlags::empty(), tok);
            let _ = self.epoll.modify(fd, &mut ev);
            self.throttled.push((id, q));
            self.arm_timer(Instant::now() + wait);
        }
    }

    /// Queues slot `slot` on egress `dst` (a pod id or `UPLINK`); tail-drops when full.
    fn enqueue(&mut self, dst: u64, slot: u32) {
        let w = self.index;
        let (queue, counters) = if dst == UPLINK {
            (&mut self.uplink_queue, &self.uplink_counters)
        } else {
            match self.router.pod_mut(dst) {
                Some(p) => (&mut p.io.queue, &p.counters),
                None => {
                    self.pool.put(slot);
                    return;
                }
            }
        };
        let s = self.pool.get(slot);
        match queue.push(slot, s.end - s.start) {
            Ok(()) => {
                if !queue.dirty {
                    queue.dirty = true;
                    self.dirty.push(dst);
                }
            }
            Err(slot) => {
                counters.dropped(w, DropReason::QdiscFull);
                self.pool.put(slot);
            }
        }
    }

    /// Writes out every queue with frames, as far as shaping allows.
    fn flush(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut next_at: Option<Instant> = None;
        // Work on the list in place (draining never queues more), keeping what shaping
        // holds back at its front: the list keeps its capacity, so no allocation per batch.
        let mut pending = std::mem::take(&mut self.dirty);
        let mut kept = 0;
        for k in 0..pending.len() {
            let dst = pending[k];
            if let Some(wait) = self.drain_queue(dst, now) {
                pending[kept] = dst;
                kept += 1;
                let at = now + wait;
                next_at = Some(next_at.map_or(at, |n| n.min(at)));
            }
        }
        pending.truncate(kept);
        self.dirty = pending;
        if let Some(at) = next_at {
            self.arm_timer(at);
        }
    }

    /// Writes queue `dst` out; `Some(wait)` when shaping stopped it with frames left.
    fn drain_queue(&mut self, dst: u64, now: Instant) -> Option<Duration> {
        let w = self.index;
        let Worker {
            router,
            pool,
            uplink,
            uplink_queue,
            uplink_counters,
            segment_gso,
            scratch,
            tx_batch,
            ..
        } = self;
        if dst == UPLINK {
            while let Some(slot) = uplink_queue.pop() {
                // The uplink is a TUN: the frame starts at the IP header.
                if let Err(reason) = send_frame(
                    uplink.as_fd(),
                    pool.get(slot),
                    0,
                    *segment_gso,
                    scratch,
                    uplink_counters,
                    w,
                ) {
                    uplink_counters.dropped(w, reason);
                }
                pool.put(slot);
            }
            uplink_queue.dirty = false;
            return None;
        }
        let pod = router.pod_mut(dst)?;
        let batched = pod.io.packet_sockets && !*segment_gso;
        let mut held = None;
        while let Some(slot) = pod.io.queue.front() {
            if let Some(bucket) = &pod.io.ingress {
                if let Err(wait) = bucket.ready(now) {
                    held = Some(wait);
                    break;
                }
                // Charged as the segments it stands for, headers and all.
                let s = pool.get(slot);
                let vnet = VnetHdr::parse(&s.vnet);
                bucket.charge(gso::wire_len(
                    &vnet,
                    &s.buf[s.start..s.end],
                    ethernet::HEADER_LEN,
                ));
            }
            pod.io.queue.pop();
            let s = pool.get(slot);
            if let Some(sink) = &pod.io.capture {
                sink.record(&s.buf[s.start..s.end]);
            }
            let Some(fd) = pod.io.tx() else {
                pod.counters.dropped(w, DropReason::TxError);
                pool.put(slot);
                continue;
            };
            if batched {
                tx_batch.push(slot);
                if tx_batch.len() == MMSG_BATCH {
                    send_batch(fd, pool, tx_batch, scratch, &pod.counters, w);
                }
                continue;
            }
            let sent = send_frame(
                fd,
                s,
                ethernet::HEADER_LEN,
                *segment_gso,
                scratch,
                &pod.counters,
                w,
            );
            if let Err(reason) = sent {
                pod.counters.dropped(w, reason);
            }
            pool.put(slot);
        }
        if let Some(fd) = pod.io.tx() {
            send_batch(fd, pool, tx_batch, scratch, &pod.counters, w);
        }
        if let Some(wait) = held {
            pod.counters.set_queued(w, pod.io.queue.len());
            return Some(wait);
        }
        pod.io.queue.dirty = false;
        pod.counters.set_queued(w, 0);
        None
    }

    /// Reads up to `BATCH` frames from pod queue `queue` and routes them.
    fn drain_pod(&mut self, id: u64, queue: usize) {
        let w = self.index;
        let mut budget = BATCH;
        while budget > 0 {
            let Some(src) = self.router.pod(id) else {
                return;
            };
            if let Some(bucket) = &src.io.egress {
                if let Err(wait) = bucket.ready(Instant::now()) {
                    self.throttle(id, queue, wait);
                    return;
                }
            }
            // A shaped pod is read a frame at a time: its bucket is asked before each one.
            let want = if src.io.packet_sockets && src.io.egress.is_none() {
                budget.min(MMSG_BATCH)
            } else {
                1
            };
            self.rx_batch.clear();
            while self.rx_batch.len() < want {
                match self.take_slot() {
                    Some(slot) => self.rx_batch.push(slot),
                    None => break,
                }
            }
            if self.rx_batch.is_empty() {
                self.throttle(id, queue, POOL_WAIT);
                return;
            }
            self.rx_batch.sort_unstable();
            let got = match self.receive(id, queue) {
                Some(Ok(n)) => n,
                Some(Err(e))
                    if e.raw_os_error() == Some(libc::EINVAL)
                        && src_is_socket(&self.router, id) =>
                {
                    // A frame the packet socket cannot describe in a virtio-net header (a GSO
                    // type without a flag there, e.g. SCTP or a tunnel): the kernel dropped it.
                    self.return_rx_slots(0);
                    if let Some(src) = self.router.pod(id) {
                        src.counters.dropped(w, DropReason::Malformed);
                    }
                    budget -= 1;
                    continue;
                }
                Some(Err(e)) if e.kind() != io::ErrorKind::WouldBlock => {
                    self.return_rx_slots(0);
                    let container_id = self
                        .router
                        .pod(id)
                        .map(|p| Arc::clone(&p.io.container_id))
                        .unwrap_or_else(|| Arc::from(""));
                    self.forget_fd(id, queue, &container_id, &e);
                    return;
                }
                // Empty, or the pod or its queue is gone.
                _ => 0,
            };
            if got > 0 {
                if let Some(src) = self.router.pod(id) {
                    src.counters.rx_call(w);
                }
            }
            for k in 0..got {
                let (slot, len) = (self.rx_batch[k], self.rx_lens[k]);
                let reason = match len {
                    RxFrame::Whole(n) => {
                        self.route_from_pod(id, slot, n);
                        continue;
                    }
                    RxFrame::Malformed => DropReason::Malformed,
                    RxFrame::Oversize => DropReason::Oversize,
                };
                if let Some(src) = self.router.pod(id) {
                    src.counters.dropped(w, reason);
                }
                self.pool.put(slot);
            }
            self.return_rx_slots(got);
            if got < want {
                break;
            }
            budget -= got;
        }
        self.end_finished_capture(id);
    }

    /// Reads into the slots of `rx_batch` from pod queue `queue`: one frame with `readv`
    /// (a TAP), as many as come with one `recvmmsg` (packet sockets), or as many as wait in
    /// the socket's receive ring. Fills `rx_lens` with what each got; `None` when the pod or
    /// queue is gone. A packet socket is always read with `recvmmsg`, which tells a cut frame.
    fn receive(&mut self, id: u64, queue: usize) -> Option<io::Result<usize>> {
        let (pool, batch, lens) = (&mut self.pool, &self.rx_batch, &mut self.rx_lens);
        let io = &mut self.router.pod_mut(id)?.io;
        if let Some(ring) = io.rings.get_mut(queue) {
            let mut n = 0;
            for s in pool.many_mut(batch) {
                match ring.take(&mut s.vnet, &mut s.buf) {
                    Some(frame) => {
                        lens[n] = frame;
                        n += 1;
                    }
                    None => break,
                }
            }
            if n > 0 {
                return Some(Ok(n));
            }
            // An empty ring: the socket itself says whether it failed (ENETDOWN: the veth is
            // gone), else EAGAIN — its receive queue stays empty while it has a ring.
        }
        let fd = io.rx.get(queue)?.as_fd();
        if batch.len() > 1 || io.packet_sockets {
            let bufs = pool.many_mut(batch).map(|s| (&mut s.vnet, &mut s.buf[..]));
            return Some(recv_frames(fd, bufs, lens));
        }
        let s = pool.get_mut(batch[0]);
        Some(read_frame(fd, &mut s.vnet, &mut s.buf).map(|frame| {
            lens[0] = frame;
            1
        }))
    }

    /// Gives back the slots of `rx_batch` from position `from` on (those nothing was read into).
    fn return_rx_slots(&mut self, from: usize) {
        for &slot in &self.rx_batch[from..] {
            self.pool.put(slot);
        }
        self.rx_batch.clear();
    }

    /// Counts, captures, shapes and routes one frame of `n` bytes read from pod `id` into `slot`.
    fn route_from_pod(&mut self, id: u64, slot: u32, n: usize) {
        let w = self.index;
        let Some(src) = self.router.pod(id) else {
            self.pool.put(slot);
            return;
        };
        let s = self.pool.get_mut(slot);
        src.counters.rx(w, n);
        if let Some(sink) = &src.io.capture {
            sink.record(&s.buf[..n]);
        }
        let mut vnet = VnetHdr::parse(&s.vnet);
        if let Some(bucket) = &src.io.egress {
            bucket.charge(gso::wire_len(&vnet, &s.buf[..n], ethernet::HEADER_LEN));
        }
        if vnet.is_gso() {
            src.counters.rx_gso(w);
        }
        let verdict = self.router.from_pod(id, &mut vnet, &mut s.buf, n);
        vnet.emit(&mut s.vnet);
        match verdict {
            Verdict::ToPod { id: dst, len } => {
                (s.start, s.end) = (0, len);
                self.enqueue(dst, slot);
            }
            Verdict::ToUplink { len } => {
                (s.start, s.end) = (ethernet::HEADER_LEN, len);
                self.enqueue(UPLINK, slot);
            }
            Verdict::Reply { len, dropped } => {
                if let Some(reason) = dropped {
                    src.counters.dropped(w, reason);
                }
                (s.start, s.end) = (0, len);
                self.enqueue(id, slot);
            }
            Verdict::Consumed => self.pool.put(slot),
            Verdict::Drop(reason) => {
                src.counters.dropped(w, reason);
                self.pool.put(slot);
            }
        }
    }

    /// A free slot; drains the queues first when none is free. `None` means every slot waits
    /// in a shaped queue: the frame stays in the kernel's ring until the shaper lets go.
    fn take_slot(&mut self) -> Option<u32> {
        if let Some(s) = self.pool.take() {
            return Some(s);
        }
        self.flush();
        self.pool.take()
    }

    /// Forgets a pod's capture once it is over, so the hot path is back to one branch.
    fn end_finished_capture(&mut self, id: u64) {
        if let Some(pod) = self.router.pod_mut(id) {
            if pod.io.capture.as_ref().is_some_and(|c| c.is_closed()) {
                pod.io.capture = None;
            }
        }
    }

    fn drain_uplink(&mut self) {
        let w = self.index;
        for _ in 0..BATCH {
            let Some(slot) = self.take_slot() else {
                self.throttle(UPLINK, 0, POOL_WAIT);
                return;
            };
            let s = self.pool.get_mut(slot);
            let n = match read_frame(
                self.uplink.as_fd(),
                &mut s.vnet,
                &mut s.buf[ethernet::HEADER_LEN..],
            ) {
                Ok(RxFrame::Whole(n)) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pool.put(slot);
                    return;
                }
                Ok(bad) => {
                    let reason = match bad {
                        RxFrame::Oversize => DropReason::Oversize,
                        _ => DropReason::Malformed,
                    };
                    self.uplink_counters.dropped(w, reason);
                    self.pool.put(slot);
                    continue;
                }
                Err(e) => {
                    self.pool.put(slot);
                    self.forget_fd(UPLINK, 0, "", &e);
                    return;
                }
            };
            self.uplink_counters.rx_call(w);
            self.uplink_counters.rx(w, n);
            let mut vnet = VnetHdr::parse(&s.vnet);
            if vnet.is_gso() {
                self.uplink_counters.rx_gso(w);
            }
            let verdict = self.router.from_uplink(&mut vnet, &mut s.buf, n);
            vnet.emit(&mut s.vnet);
            match verdict {
                Verdict::ToPod { id, len } => {
                    (s.start, s.end) = (0, len);
                    self.enqueue(id, slot);
                }
                Verdict::Drop(reason) => {
                    self.uplink_counters.dropped(w, reason);
                    self.pool.put(slot);
                }
                _ => {
                    self.uplink_counters.dropped(w, DropReason::NoRoute);
                    self.pool.put(slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The worker's slot accounting, without root: datagram socketpairs stand in for the pods'
    //! TAP queues (one frame per message, with its virtio-net header, as a TAP gives them).

    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::stack::GATEWAY_MAC;
    use crate::wire::{ipv4, MacAddr};

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

    /// A worker with pods 1..=4: pod 1 unshaped (the flooder), pods 2 and 3 shaped to 1 kbit/s
    /// towards them, pod 4 unshaped. Returns the worker, the test's end of each pod's "TAP"
    /// (index = pod id - 1) and the pods' counters.
    fn worker() -> (Worker, Vec<UnixDatagram>, Vec<Arc<LinkCounters>>) {
        let (_cmd_tx, cmds) = mpsc::channel();
        let wake = Arc::new(EventFd::new().unwrap());
        let (uplink, _uplink_peer) = UnixDatagram::pair().unwrap();
        uplink.set_nonblocking(true).unwrap();
        let mut w = Worker::new(
            0,
            cmds,
            wake,
            OwnedFd::from(uplink),
            Arc::new(LinkCounters::new(1)),
            Router::new(GW, 1500),
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap();
        let (mut peers, mut counters) = (Vec::new(), Vec::new());
        for id in 1..=4u8 {
            let (ours, theirs) = UnixDatagram::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            theirs.set_nonblocking(true).unwrap();
            let mut io = PodIo::new(vec![OwnedFd::from(ours)], None);
            if id == 2 || id == 3 {
                let bucket = TokenBucket::new(1000, 8000).unwrap();
                // Spend the burst up front: every frame to the pod now waits in its queue.
                bucket.charge(bucket.burst_bytes() + 1_000_000);
                io.ingress = Some(Arc::new(bucket));
            }
            let spec = PodSpec {
                id: u64::from(id),
                mac: mac(id),
                ipv4: vec![ip(id)],
                ipv6: Vec::new(),
                gateway_v6: None,
                mtu: 1500,
                bandwidth: None,
                container_id: format!("pod{id}"),
                packet_sockets: false,
                rx_ring: false,
            };
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
        let (mut w, peers, counters) = worker();
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

        assert!(w.throttled.is_empty(), "no fd is left unread");
    }

    #[test]
    fn a_shaped_pods_share_comes_and_goes_with_it() {
        let (mut w, peers, _) = worker();
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
}
