//! The links a worker reads and writes, one type for every kind (gVisor's `LinkEndpoint` is
//! the model): a link receives a batch of frames into the worker's slots, sends a batch from
//! them, and says which offloads it takes. The worker's epoll loop never asks which kind it
//! talks to.
//!
//! - [`TapLink`]: a pod's TAP queues, one frame per `readv`/`writev`, virtio-net header beside
//!   the frame; or, with the worker's restricted io_uring (`--tap-io uring`), a batch of
//!   reads or writes per `io_uring_enter`.
//! - [`PacketLink`]: a veth-mode pod's `AF_PACKET` sockets, up to `MMSG_BATCH` frames per
//!   `recvmmsg`/`sendmmsg`, or received through a TPACKET_V2 ring (`--veth-rx ring`).
//! - [`TunLink`]: the uplink TUN queue, whose frames start at layer 3: it reads behind room
//!   for an Ethernet header so the router can put one there.
//! - [`VhostLink`]: a VM pod's virtqueue pairs in its guest memory (vhost-user), woken by the
//!   guest's kick eventfds (`vhost`).
//!
//! `Link` is an enum over the kinds rather than a trait object: the set of kinds is closed,
//! the worker holds links by value in its pod table (no box, no vtable call per batch), and
//! each `match` compiles to a jump the branch predictor learns per pod. A test-only in-memory
//! kind (`MemLink`) lets the worker be tested without root.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::gso::GsoFrame;
use crate::stack::{DropReason, LinkCounters};
use crate::sys::packet::{recv_frames, send_frames, RxRing, MMSG_BATCH};
use crate::sys::tap::{read_frame, tap_rx_len, write_frame, RxFrame, VNET_HDR_LEN};
use crate::sys::uring::{TapRing, RING_ENTRIES};
use crate::wire::{ethernet, VnetHdr};

use super::qdisc::{Slot, SlotPool};

mod vhost;
pub(super) use vhost::{vhost_links, VhostLink};

/// How a pod's fds reach the dataplane, as the supervisor tells it in a [`super::PodSpec`].
///
/// On the IPC wire it keeps the two booleans earlier builds sent (`packet_sockets`,
/// `rx_ring`), so a dataplane child and a supervisor of different builds understand each
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "LinkKindWire", into = "LinkKindWire")]
pub enum LinkKind {
    /// TAP queues (TAP mode).
    #[default]
    Tap,
    /// Packet sockets on a veth peer (veth mode), read with `recvmmsg`.
    Packet,
    /// Packet sockets read through the TPACKET_V2 ring the supervisor set up on each
    /// (`--veth-rx ring`).
    PacketRing,
}

impl LinkKind {
    /// The fds are packet sockets (either receive path).
    pub fn is_packet(self) -> bool {
        matches!(self, LinkKind::Packet | LinkKind::PacketRing)
    }
}

/// [`LinkKind`] as the IPC messages carry it.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct LinkKindWire {
    #[serde(default)]
    packet_sockets: bool,
    #[serde(default)]
    rx_ring: bool,
}

impl From<LinkKindWire> for LinkKind {
    fn from(w: LinkKindWire) -> Self {
        match (w.packet_sockets, w.rx_ring) {
            (false, _) => LinkKind::Tap,
            (true, false) => LinkKind::Packet,
            (true, true) => LinkKind::PacketRing,
        }
    }
}

impl From<LinkKind> for LinkKindWire {
    fn from(k: LinkKind) -> Self {
        LinkKindWire {
            packet_sockets: k.is_packet(),
            rx_ring: k == LinkKind::PacketRing,
        }
    }
}

/// What a link takes besides plain frames. Every link carries a virtio-net header beside
/// each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Offloads {
    /// GSO super-frames are written whole (the device segments them, or the peer takes them
    /// as they are); otherwise the worker segments them in software first.
    pub gso: bool,
}

/// What one receive call brought.
#[derive(Debug)]
pub(super) enum RxOutcome {
    /// This many frames, described in the `lens` the call filled.
    Frames(usize),
    /// Nothing waiting.
    Empty,
    /// The kernel dropped a frame it could not describe in a virtio-net header (a packet
    /// socket with a GSO type the header has no flag for, e.g. SCTP or a tunnel): EINVAL.
    Refused,
    /// The fd failed for good (the device is gone): stop reading it.
    Dead(io::Error),
    /// No such queue on this link.
    NoQueue,
    /// A VM's virtqueue stopped on a fault of the guest's ring (`VirtqError::Stopped` when an
    /// earlier call met the fault): stop reading it.
    Stopped(crate::dataplane::virtq::VirtqError),
}

impl RxOutcome {
    fn from_io(r: io::Result<usize>) -> Self {
        match r {
            Ok(0) => RxOutcome::Empty,
            Ok(n) => RxOutcome::Frames(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => RxOutcome::Empty,
            Err(e) => RxOutcome::Dead(e),
        }
    }
}

/// What a send needs besides the frames: where to count, how to segment.
pub(super) struct TxCtx<'a> {
    /// Segment every GSO super-frame (`--gso segment`).
    pub segment_gso: bool,
    /// Where software segmentation builds each segment.
    pub scratch: &'a mut [u8],
    /// The link's counters.
    pub counters: &'a LinkCounters,
    /// The worker's index in the counters.
    pub worker: usize,
}

impl<'a> TxCtx<'a> {
    /// A send counted on `counters` (the uplink's, until a pod's replace them) by worker
    /// `worker`, segmenting GSO frames if `segment_gso`, in `scratch`.
    pub fn uplink(
        segment_gso: bool,
        scratch: &'a mut [u8],
        counters: &'a LinkCounters,
        worker: usize,
    ) -> Self {
        TxCtx {
            segment_gso,
            scratch,
            counters,
            worker,
        }
    }
}

/// A pod's TAP queues on one worker.
pub(super) struct TapLink {
    /// Every queue of the pod's TAP, shared by the pod's links on all workers (the fds close
    /// when the last of them goes): queue i is read by worker i mod N, and any worker may
    /// write a frame to another's queue to move a flow there (`balance`).
    all: Arc<[OwnedFd]>,
    /// The queues this worker reads, as indexes into `all`.
    mine: Vec<usize>,
    /// The queue it writes to: its first, or (a worker with none of its own) one of another.
    tx: usize,
    /// The worker's io_uring, when TAP queues are read and written through it.
    uring: Option<UringIo>,
}

/// A TAP link's share of its worker's io_uring: the ring (one per worker, shared by its TAP
/// links; only that worker's thread ever locks it, so the lock is never contended) and how
/// many reads the next receive submits.
struct UringIo {
    ring: Arc<Mutex<TapRing>>,
    /// Reads per receive: doubled while every read finds a frame, else one more than came
    /// (the adaptive window of `nsbench floor --io uring`), within `1..=RING_ENTRIES`.
    window: usize,
}

/// A TAP on io_uring reads with `readv` until a receive has found this many frames in a row,
/// and writes a batch of one frame with `writev`: a queue that holds a frame or two (a request,
/// a reply, a connection's handshake) costs one call per frame either way, and a plain call is
/// cheaper than a ring round trip (its RTT was 3 µs higher on the ring alone: the benchmark's
/// README, "Design evaluations", 7). Deeper queues (a flood of small frames) go through the
/// ring's growing window.
const URING_FROM: usize = 3;

/// The worker's ring, locked (a poisoned lock is still the same ring: a panic aborts the
/// dataplane anyway).
fn lock(ring: &Mutex<TapRing>) -> std::sync::MutexGuard<'_, TapRing> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

/// A veth-mode pod's packet sockets on one worker.
pub(super) struct PacketLink {
    sockets: Vec<OwnedFd>,
    tx_extra: Option<OwnedFd>,
    /// The receive ring of each socket, when they have one (`--veth-rx ring`).
    rings: Vec<RxRing>,
}

/// One queue of the uplink TUN: frames start at the IP header.
pub(super) struct TunLink {
    /// Every queue of the uplink, one per worker, shared as a TAP's are.
    all: Arc<[OwnedFd]>,
    /// This worker's.
    index: usize,
}

impl TunLink {
    fn fd(&self) -> BorrowedFd<'_> {
        self.all[self.index].as_fd()
    }
}

/// One link of a worker: a pod's queues of one kind, or the uplink.
pub(super) enum Link {
    /// TAP queues.
    Tap(TapLink),
    /// Packet sockets.
    Packet(PacketLink),
    /// The uplink TUN.
    Tun(TunLink),
    /// A VM pod's virtqueue pair (boxed: its two rings would make every link as large).
    Vhost(Box<VhostLink>),
    /// Frames in memory, for tests.
    #[cfg(test)]
    Mem(mem::MemLink),
}

impl Link {
    /// A pod link of `kind` over the queues this worker reads (`rx`) and, when it reads none,
    /// a queue to write to. A ring kind maps each socket's ring (which can fail).
    pub fn pod(kind: LinkKind, rx: Vec<OwnedFd>, tx_extra: Option<OwnedFd>) -> io::Result<Self> {
        Ok(match kind {
            LinkKind::Tap => {
                let mine = (0..rx.len()).collect();
                let all: Arc<[OwnedFd]> = rx.into_iter().chain(tx_extra).collect();
                Link::Tap(TapLink {
                    all,
                    mine,
                    tx: 0,
                    uring: None,
                })
            }
            LinkKind::Packet | LinkKind::PacketRing => Link::Packet(PacketLink {
                rings: if kind == LinkKind::PacketRing {
                    rx.iter()
                        .map(|fd| RxRing::map(fd.as_fd()))
                        .collect::<io::Result<_>>()?
                } else {
                    Vec::new()
                },
                sockets: rx,
                tx_extra,
            }),
        })
    }

    /// Worker `worker`'s link (of `workers`) on a pod's TAP queues `all`: it reads queue i
    /// when i mod `workers` is `worker`, and writes to its first one, or, with fewer queues
    /// than workers, to queue `worker` mod their number.
    pub fn tap(all: Arc<[OwnedFd]>, worker: usize, workers: usize) -> io::Result<Self> {
        if all.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no TAP queues"));
        }
        let mine: Vec<usize> = (0..all.len()).filter(|i| i % workers == worker).collect();
        let tx = mine.first().copied().unwrap_or(worker % all.len());
        Ok(Link::Tap(TapLink {
            all,
            mine,
            tx,
            uring: None,
        }))
    }

    /// Reads and writes a TAP link's queues through `ring`, the worker's io_uring (other
    /// kinds keep their calls).
    pub fn use_ring(&mut self, ring: Arc<Mutex<TapRing>>) {
        if let Link::Tap(t) = self {
            t.uring = Some(UringIo { ring, window: 1 });
        }
    }

    /// The uplink TUN queue `fd`.
    #[cfg(test)]
    pub fn tun(fd: OwnedFd) -> Self {
        Link::Tun(TunLink {
            all: Arc::from([fd]),
            index: 0,
        })
    }

    /// Worker `index`'s queue of the uplink TUN whose queues are `all`.
    pub fn tun_queue(all: Arc<[OwnedFd]>, index: usize) -> Self {
        Link::Tun(TunLink { all, index })
    }

    /// Whether a flow through this link can be moved to another worker by writing its
    /// frames to that worker's queue (TAP and TUN queues: tun's flow table follows the
    /// writes; a packet socket's fanout and a VM's queues do not).
    pub fn steerable(&self) -> bool {
        matches!(self, Link::Tap(_) | Link::Tun(_))
    }

    /// The offloads the link takes.
    pub fn offloads(&self) -> Offloads {
        match self {
            // TAP, TUN and packet sockets take GSO frames; a kernel without one GSO type
            // refuses that frame with EINVAL, and the send falls back to segments.
            Link::Tap(_) | Link::Packet(_) | Link::Tun(_) => Offloads { gso: true },
            // Per frame: only the GSO types the guest negotiated go whole.
            Link::Vhost(v) => Offloads { gso: v.takes_gso() },
            #[cfg(test)]
            Link::Mem(m) => m.offloads(),
        }
    }

    /// Where the L3 header starts in the frames of this link: after the Ethernet header, or
    /// at 0 for the uplink TUN.
    pub fn l3_offset(&self) -> usize {
        match self {
            Link::Tun(_) => 0,
            _ => ethernet::HEADER_LEN,
        }
    }

    /// The most frames one receive call brings (for a TAP on io_uring: its current window).
    pub fn rx_batch_max(&self) -> usize {
        match self {
            Link::Tap(TapLink { uring: Some(u), .. }) if u.window >= URING_FROM => u.window,
            Link::Packet(_) | Link::Vhost(_) => MMSG_BATCH,
            Link::Tap(_) | Link::Tun(_) => 1,
            #[cfg(test)]
            Link::Mem(_) => MMSG_BATCH,
        }
    }

    /// The fds the worker waits on, by queue index.
    pub fn rx_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        let (fds, mine): (&[OwnedFd], Option<&[usize]>) = match self {
            Link::Tap(t) => (&t.all, Some(&t.mine)),
            Link::Packet(p) => (&p.sockets, None),
            Link::Tun(t) => (std::slice::from_ref(&t.all[t.index]), None),
            Link::Vhost(v) => (v.fds(), None),
            #[cfg(test)]
            Link::Mem(m) => (m.fds(), None),
        };
        // A TAP's own queues out of all of them; every fd of the other kinds.
        let picked = mine.into_iter().flatten().filter_map(|&i| fds.get(i));
        let every = if mine.is_none() { fds } else { &[] };
        picked.chain(every).map(|fd| fd.as_fd())
    }

    /// Gives a VM pod's queue pair `pair` a new call eventfd for its receive queue
    /// (`to_guest`) or its transmit queue. False for other links, or a pair this worker does
    /// not read.
    pub fn set_call(&mut self, pair: usize, to_guest: bool, call: Option<OwnedFd>) -> bool {
        match self {
            Link::Vhost(v) => v.set_call(pair, to_guest, call),
            _ => false,
        }
    }

    /// The fd of receive queue `q`.
    pub fn rx_fd(&self, q: usize) -> Option<BorrowedFd<'_>> {
        self.rx_fds().nth(q)
    }

    /// The fd frames to the link leave by.
    fn tx_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Link::Tap(t) => t.all.get(t.tx).map(|fd| fd.as_fd()),
            Link::Packet(PacketLink {
                sockets: queues,
                tx_extra,
                ..
            }) => queues.first().or(tx_extra.as_ref()).map(|fd| fd.as_fd()),
            Link::Tun(t) => Some(t.fd()),
            Link::Vhost(_) => None,
            #[cfg(test)]
            Link::Mem(_) => None,
        }
    }

    /// Receives from queue `q` into the slots `batch` names (ascending), filling `lens` with
    /// what each got. A TAP or TUN gives one frame per `readv` (a TAP on io_uring: as many as
    /// one `io_uring_enter` of `batch.len()` reads brings); a packet socket as many as one
    /// `recvmmsg` brings (which tells a cut frame), or as many as wait in its ring.
    pub fn recv(
        &mut self,
        q: usize,
        pool: &mut SlotPool,
        batch: &[u32],
        lens: &mut [RxFrame; MMSG_BATCH],
    ) -> RxOutcome {
        match self {
            Link::Tap(t) => {
                let fd = t.mine.get(q).and_then(|&i| t.all.get(i));
                let (Some(fd), Some(&first)) = (fd, batch.first()) else {
                    return RxOutcome::NoQueue;
                };
                if let Some(u) = t.uring.as_mut().filter(|u| u.window >= URING_FROM) {
                    return recv_uring(u, fd.as_fd(), pool, batch, lens);
                }
                let s = pool.get_mut(first);
                let read = read_frame(fd.as_fd(), &mut s.vnet, &mut s.buf);
                if let Some(u) = &mut t.uring {
                    // A shallow queue so far: the window grows by each frame found.
                    u.window = if read.is_ok() { u.window + 1 } else { 1 };
                }
                RxOutcome::from_io(read.map(|f| {
                    lens[0] = f;
                    1
                }))
            }
            Link::Tun(t) => {
                let Some(&first) = batch.first() else {
                    return RxOutcome::Empty;
                };
                let s = pool.get_mut(first);
                let room = &mut s.buf[ethernet::HEADER_LEN..];
                RxOutcome::from_io(read_frame(t.fd(), &mut s.vnet, room).map(|f| {
                    lens[0] = f;
                    1
                }))
            }
            Link::Packet(p) => p.recv(q, pool, batch, lens),
            Link::Vhost(v) => v.recv(q, pool, batch, lens),
            #[cfg(test)]
            Link::Mem(m) => m.recv(pool, batch, lens),
        }
    }

    /// Sends the frames of the slots in `batch` (each `start..end`), counts what went out and
    /// why any did not on `tx.counters`, and gives every slot back to `pool`.
    ///
    /// A GSO super-frame goes whole unless `tx.segment_gso` is on, the link takes no GSO, or
    /// the device refuses it (EINVAL: a kernel without that GSO type); then it goes as segments
    /// with full checksums and no virtio-net offload flags, as Linux segments it.
    pub fn send(&mut self, pool: &mut SlotPool, batch: &mut Vec<u32>, tx: &mut TxCtx<'_>) {
        if batch.is_empty() {
            return;
        }
        let segment = tx.segment_gso || !self.offloads().gso;
        let l3 = self.l3_offset();
        match self {
            #[cfg(test)]
            Link::Mem(m) => return m.send(pool, batch, segment, tx),
            Link::Vhost(v) => return v.send(pool, batch, tx.segment_gso, tx),
            Link::Tap(_) | Link::Packet(_) | Link::Tun(_) => {}
        }
        let batched = matches!(self, Link::Packet(_)) && !segment;
        let ring = match self {
            Link::Tap(TapLink { uring: Some(u), .. }) if !segment && batch.len() > 1 => {
                Some(Arc::clone(&u.ring))
            }
            _ => None,
        };
        match self.tx_fd() {
            None => {
                for &i in batch.iter() {
                    tx.counters.dropped(tx.worker, DropReason::TxError);
                    pool.put(i);
                }
                batch.clear();
            }
            Some(fd) if batched => send_mmsg(fd, pool, batch, tx),
            Some(fd) if ring.is_some() => {
                if let Some(ring) = ring {
                    send_uring(&mut lock(&ring), fd, pool, batch, tx);
                }
            }
            Some(fd) => {
                for &i in batch.iter() {
                    let sent =
                        send_frame(|v, f| write_frame(fd, v, f), pool.get(i), l3, segment, tx);
                    if let Err(reason) = sent {
                        tx.counters.dropped(tx.worker, reason);
                    }
                    pool.put(i);
                }
                batch.clear();
            }
        }
    }
}

impl Link {
    /// Whether worker `worker` reads a queue of this TAP or TUN link (queue `worker`).
    pub fn has_worker_queue(&self, worker: usize) -> bool {
        match self {
            Link::Tap(t) => worker < t.all.len(),
            Link::Tun(t) => worker < t.all.len(),
            _ => false,
        }
    }

    /// Writes the frame of `slot` to the queue that worker `worker` reads — a TAP's or the
    /// uplink's, to move the frame's flow to that worker (`balance`) — counted as `send`
    /// counts it, and gives the slot back to `pool`. `Err(slot)` when the link has no such
    /// queue (another kind, or a TAP with fewer queues): the caller queues it as usual.
    pub fn send_to_worker(
        &mut self,
        worker: usize,
        pool: &mut SlotPool,
        slot: u32,
        tx: &mut TxCtx<'_>,
    ) -> Result<(), u32> {
        let l3 = self.l3_offset();
        let all = match self {
            Link::Tap(t) => &t.all,
            Link::Tun(t) => &t.all,
            _ => return Err(slot),
        };
        let Some(fd) = all.get(worker).map(|fd| fd.as_fd()) else {
            return Err(slot);
        };
        let segment = tx.segment_gso;
        let sent = send_frame(
            |v, f| write_frame(fd, v, f),
            pool.get(slot),
            l3,
            segment,
            tx,
        );
        if let Err(reason) = sent {
            tx.counters.dropped(tx.worker, reason);
        }
        pool.put(slot);
        Ok(())
    }
}

impl PacketLink {
    fn recv(
        &mut self,
        q: usize,
        pool: &mut SlotPool,
        batch: &[u32],
        lens: &mut [RxFrame; MMSG_BATCH],
    ) -> RxOutcome {
        if let Some(ring) = self.rings.get_mut(q) {
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
                return RxOutcome::Frames(n);
            }
            // An empty ring: the socket itself says whether it failed (ENETDOWN: the veth is
            // gone), else EAGAIN — its receive queue stays empty while it has a ring.
        }
        let Some(fd) = self.sockets.get(q) else {
            return RxOutcome::NoQueue;
        };
        let bufs = pool.many_mut(batch).map(|s| (&mut s.vnet, &mut s.buf[..]));
        match recv_frames(fd.as_fd(), bufs, lens) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => RxOutcome::Refused,
            r => RxOutcome::from_io(r),
        }
    }
}

/// Reads up to `batch.len()` frames (at most [`RING_ENTRIES`]) from TAP queue `fd` into the
/// slots of `batch` with one `io_uring_enter`, and moves the frames that came to the front of
/// the batch: a read that found nothing (`-EAGAIN`) leaves a gap a later read may have filled
/// (its slot's buffer is swapped forward, not copied). Each read is judged as `read_frame`
/// judges a `readv` (cut or short frames are `Oversize`/`Malformed`, dropped and counted by
/// the caller); a read that failed otherwise makes the link `Dead` once no frame came before
/// it. Adjusts the window of the next receive.
fn recv_uring(
    u: &mut UringIo,
    fd: BorrowedFd<'_>,
    pool: &mut SlotPool,
    batch: &[u32],
    lens: &mut [RxFrame; MMSG_BATCH],
) -> RxOutcome {
    let want = batch.len().min(RING_ENTRIES).min(MMSG_BATCH);
    let mut slots: [Option<&mut Slot>; RING_ENTRIES] = std::array::from_fn(|_| None);
    for (dst, s) in slots.iter_mut().zip(pool.many_mut(&batch[..want])) {
        *dst = Some(s);
    }
    let mut res = [0i32; RING_ENTRIES];
    let bufs = slots
        .iter_mut()
        .flatten()
        .map(|s| (&mut s.vnet, &mut s.buf[..]));
    let submitted = lock(&u.ring).read_batch(fd, bufs, &mut res[..want]);
    let (n, failed) = gather_reads(&res[..submitted], &mut slots, lens);
    // Every read found a frame: more may be waiting. Else one more than came, next time.
    u.window = if n == submitted && n > 0 {
        (n * 2).min(RING_ENTRIES)
    } else {
        (n + 1).min(RING_ENTRIES)
    };
    match (n, failed) {
        (0, Some(e)) => RxOutcome::Dead(e),
        (0, None) => RxOutcome::Empty,
        (n, _) => RxOutcome::Frames(n),
    }
}

/// Judges the results `res` of reads into `slots` (in order), as `read_frame` judges a
/// `readv`, and moves the frames to the front: a read that found nothing (`-EAGAIN`) leaves a
/// gap, which the next frame's slot fills by swapping buffers with it (no copy). Fills `lens`
/// with the frames' lengths; returns how many came and the first error other than `EAGAIN`.
fn gather_reads(
    res: &[i32],
    slots: &mut [Option<&mut Slot>],
    lens: &mut [RxFrame; MMSG_BATCH],
) -> (usize, Option<io::Error>) {
    let mut n = 0;
    let mut failed = None;
    for (i, &r) in res.iter().enumerate().take(slots.len().min(MMSG_BATCH)) {
        let buf_len = slots[i].as_ref().map_or(0, |s| s.buf.len());
        let frame = match usize::try_from(r) {
            Ok(read) => tap_rx_len(read, buf_len),
            Err(_) if r == -libc::EAGAIN => continue,
            Err(_) => {
                failed.get_or_insert_with(|| io::Error::from_raw_os_error(r.saturating_neg()));
                continue;
            }
        };
        if i != n {
            let (front, back) = slots.split_at_mut(i);
            if let (Some(to), Some(from)) = (front[n].as_deref_mut(), back[0].as_deref_mut()) {
                std::mem::swap(&mut to.vnet, &mut from.vnet);
                std::mem::swap(&mut to.buf, &mut from.buf);
            }
        }
        lens[n] = frame;
        n += 1;
    }
    (n, failed)
}

/// Writes the frames of `batch` to TAP queue `fd` through `ring`, [`RING_ENTRIES`] per
/// `io_uring_enter` (each enter counted as one send call), and counts each frame as a
/// `writev` of it would be: sent, or dropped as `tx_error` (a full queue, a device gone, a
/// short write). A GSO frame the device refuses (EINVAL) goes again through `send_frame`,
/// which segments it. Returns every slot to `pool`.
fn send_uring(
    ring: &mut TapRing,
    fd: BorrowedFd<'_>,
    pool: &mut SlotPool,
    batch: &mut Vec<u32>,
    tx: &mut TxCtx<'_>,
) {
    let (counters, w) = (tx.counters, tx.worker);
    let mut res = [0i32; RING_ENTRIES];
    for chunk in batch.chunks(RING_ENTRIES) {
        let frames = chunk.iter().map(|&i| {
            let s = pool.get(i);
            (&s.vnet, &s.buf[s.start..s.end])
        });
        let submitted = ring.write_batch(fd, frames, &mut res);
        if submitted > 0 {
            counters.tx_call(w);
        }
        for (&i, &r) in chunk.iter().zip(&res[..submitted]) {
            let s = pool.get(i);
            let len = s.end - s.start;
            if usize::try_from(r).ok() == Some(VNET_HDR_LEN + len) {
                counters.tx(w, len);
            } else if r == -libc::EINVAL && VnetHdr::parse(&s.vnet).is_gso() {
                let write = |v: &[u8; VNET_HDR_LEN], f: &[u8]| write_frame(fd, v, f);
                if let Err(reason) = send_frame(write, s, ethernet::HEADER_LEN, false, tx) {
                    counters.dropped(w, reason);
                }
            } else {
                counters.dropped(w, DropReason::TxError);
            }
        }
    }
    for &i in batch.iter() {
        pool.put(i);
    }
    batch.clear();
}

/// A guest receive queue's backlog was full (`vhost::GuestRx`): the frame is dropped as
/// `guest_rx_full`.
#[derive(Debug)]
struct BacklogFull;

impl std::fmt::Display for BacklogFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the guest has no receive buffer and its backlog is full")
    }
}

impl std::error::Error for BacklogFull {}

/// The error a write to a VM returns when its backlog is full.
fn backlog_full() -> io::Error {
    io::Error::other(BacklogFull)
}

/// Why a write that failed dropped its frame.
fn write_drop_reason(e: &io::Error) -> DropReason {
    if e.get_ref().is_some_and(|inner| inner.is::<BacklogFull>()) {
        DropReason::GuestRxFull
    } else {
        DropReason::TxError
    }
}

/// A super-frame the segmenter refuses is a malformed frame.
impl From<crate::gso::GsoError> for DropReason {
    fn from(_: crate::gso::GsoError) -> Self {
        DropReason::Malformed
    }
}

/// Writes one slot's frame, whose L3 header starts at `l3_offset` in it, with `write`: whole,
/// or — when `segment` is on, or `write` refuses the GSO frame with EINVAL — as segments with
/// full checksums and no virtio-net offload flags. Counts what went out on `tx.counters`.
///
/// A BIG TCP frame (an IP packet over 64 KiB, `--big-tcp`) is never written whole here: the
/// links this serves (a TAP, the TUN, a guest, a packet socket that refused it) take no
/// more than 64 KiB, so it is cut into GSO frames of at most 64 KiB ([`send_chunks`]), or
/// segmented when `segment` is on.
fn send_frame(
    mut write: impl FnMut(&[u8; VNET_HDR_LEN], &[u8]) -> io::Result<()>,
    slot: &Slot,
    l3_offset: usize,
    segment: bool,
    tx: &mut TxCtx<'_>,
) -> Result<(), DropReason> {
    let (counters, w) = (tx.counters, tx.worker);
    let frame = &slot.buf[slot.start..slot.end];
    let vnet = VnetHdr::parse(&slot.vnet);
    let big = frame.len().saturating_sub(l3_offset) > crate::wire::ipv4::MAX_LEN;
    if big && !segment {
        let gso = GsoFrame::parse(&vnet, frame, l3_offset)?;
        return send_chunks(write, &gso, l3_offset, tx);
    }
    if !(big || segment && vnet.is_gso()) {
        match write(&slot.vnet, frame) {
            Ok(()) => {
                counters.tx_call(w);
                counters.tx(w, frame.len());
                return Ok(());
            }
            Err(e) if vnet.is_gso() && e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(write_drop_reason(&e)),
        }
    }
    let gso = GsoFrame::parse(&vnet, frame, l3_offset)?;
    counters.segmented(w);
    let plain = [0u8; VNET_HDR_LEN];
    gso.segment_each(tx.scratch, |seg| {
        write(&plain, seg).map_err(|e| write_drop_reason(&e))?;
        counters.tx_call(w);
        counters.tx(w, seg.len());
        Ok(())
    })
    .map(|_| ())
}

/// Writes BIG TCP frame `gso` as GSO frames of at most 64 KiB with `write`
/// ([`GsoFrame::write_chunk`], built in the first half of `tx.scratch`); a chunk that `write`
/// refuses with EINVAL (a device without that GSO type, a guest buffer too small) goes as
/// segments, built in the second half. Counts what went out on `tx.counters`.
fn send_chunks(
    mut write: impl FnMut(&[u8; VNET_HDR_LEN], &[u8]) -> io::Result<()>,
    gso: &GsoFrame<'_>,
    l3_offset: usize,
    tx: &mut TxCtx<'_>,
) -> Result<(), DropReason> {
    let (counters, w) = (tx.counters, tx.worker);
    counters.chunked(w);
    let half = tx.scratch.len() / 2;
    let (chunk_buf, seg_buf) = tx.scratch.split_at_mut(half);
    for i in 0..gso.chunk_count() {
        let (cv, chunk) = gso.write_chunk(i, chunk_buf)?;
        let mut raw = [0u8; VNET_HDR_LEN];
        cv.emit(&mut raw);
        match write(&raw, chunk) {
            Ok(()) => {
                counters.tx_call(w);
                counters.tx(w, chunk.len());
            }
            Err(e) if cv.is_gso() && e.raw_os_error() == Some(libc::EINVAL) => {
                counters.segmented(w);
                let plain = [0u8; VNET_HDR_LEN];
                GsoFrame::parse(&cv, chunk, l3_offset)?.segment_each(seg_buf, |seg| {
                    write(&plain, seg).map_err(|e| write_drop_reason(&e))?;
                    counters.tx_call(w);
                    counters.tx(w, seg.len());
                    Ok::<(), DropReason>(())
                })?;
            }
            Err(e) => return Err(write_drop_reason(&e)),
        }
    }
    Ok(())
}

/// Can a veth take this frame whole from a packet socket? Every frame but an IPv6 BIG TCP
/// one: Linux 6.18 sends a frame from a packet socket (`SKB_GSO_DODGY`) through the GSO
/// check, which strips the jumbo header of an IPv6 BIG TCP frame and leaves its payload
/// length 0, and the receiving kernel then drops it as a header error (`Ip6InHdrErrors`;
/// kernels that take payload length 0 without the jumbo header came after). IPv4 ones
/// (total length 0) arrive whole.
fn veth_takes_whole(s: &Slot) -> bool {
    let frame = &s.buf[s.start..s.end];
    frame.len() <= ethernet::HEADER_LEN + crate::wire::ipv4::MAX_LEN
        || frame.get(12..14) != Some(&ethernet::ETHERTYPE_IPV6.to_be_bytes()[..])
}

/// Writes the frames of `batch` to packet socket `fd` with as few `sendmmsg` calls as it
/// takes; a frame the kernel refuses goes again alone through `send_frame`, which counts why
/// (or segments a GSO frame the socket cannot take), and so does an IPv6 BIG TCP frame
/// (cut into 64 KiB GSO frames there: [`veth_takes_whole`]). Returns every slot to `pool`.
fn send_mmsg(fd: BorrowedFd<'_>, pool: &mut SlotPool, batch: &mut Vec<u32>, tx: &mut TxCtx<'_>) {
    let (counters, w) = (tx.counters, tx.worker);
    let mut done = 0;
    while done < batch.len() {
        let whole = batch[done..]
            .iter()
            .take_while(|&&i| veth_takes_whole(pool.get(i)))
            .count();
        let frames = batch[done..done + whole].iter().map(|&i| {
            let s = pool.get(i);
            (&s.vnet, &s.buf[s.start..s.end])
        });
        let sent = if whole > 0 {
            send_frames(fd, frames).unwrap_or(0)
        } else {
            0
        };
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
            let write = |v: &[u8; VNET_HDR_LEN], f: &[u8]| write_frame(fd, v, f);
            if let Err(reason) = send_frame(write, s, ethernet::HEADER_LEN, false, tx) {
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

#[cfg(test)]
pub(super) mod mem {
    //! An in-memory link for the worker's tests: frames to receive are queued by the test,
    //! frames sent are kept for it to read, and every call is counted.

    use std::collections::VecDeque;
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, Mutex};

    use nix::sys::eventfd::EventFd;

    use super::*;

    /// What a test sees of a [`MemLink`].
    #[derive(Default)]
    pub struct MemState {
        /// Frames to receive, each a virtio-net header and the frame.
        pub rx: VecDeque<([u8; VNET_HDR_LEN], Vec<u8>)>,
        /// Frames sent, in order.
        pub tx: Vec<([u8; VNET_HDR_LEN], Vec<u8>)>,
        /// Receive calls that brought frames.
        pub rx_calls: usize,
        /// Send calls (each a batch).
        pub tx_calls: usize,
        /// The next receive fails for good.
        pub dead: bool,
    }

    /// A link whose frames live in a [`MemState`] the test shares. Its fd is an eventfd the
    /// worker registers with epoll, readable while the test keeps it so.
    pub struct MemLink {
        fds: Vec<OwnedFd>,
        gso: bool,
        state: Arc<Mutex<MemState>>,
    }

    impl MemLink {
        /// A link taking GSO frames or not, and the state the test keeps.
        pub fn new(gso: bool) -> (Self, Arc<Mutex<MemState>>) {
            let ready = EventFd::from_value(1).expect("eventfd");
            let state = Arc::new(Mutex::new(MemState::default()));
            let link = MemLink {
                fds: vec![OwnedFd::from(ready)],
                gso,
                state: Arc::clone(&state),
            };
            (link, state)
        }

        pub(super) fn offloads(&self) -> Offloads {
            Offloads { gso: self.gso }
        }

        pub(super) fn fds(&self) -> &[OwnedFd] {
            &self.fds
        }

        pub(super) fn recv(
            &mut self,
            pool: &mut SlotPool,
            batch: &[u32],
            lens: &mut [RxFrame; MMSG_BATCH],
        ) -> RxOutcome {
            let mut st = self.state.lock().expect("mem link state");
            if st.dead {
                return RxOutcome::Dead(io::Error::from_raw_os_error(libc::EBADFD));
            }
            let mut n = 0;
            for s in pool.many_mut(batch) {
                let Some((vnet, frame)) = st.rx.pop_front() else {
                    break;
                };
                s.vnet = vnet;
                // As a packet socket: a frame longer than the slot is cut, and said so.
                let fits = frame.len().min(s.buf.len());
                s.buf[..fits].copy_from_slice(&frame[..fits]);
                lens[n] = if fits < frame.len() {
                    RxFrame::Oversize
                } else {
                    RxFrame::Whole(frame.len())
                };
                n += 1;
            }
            if n == 0 {
                return RxOutcome::Empty;
            }
            st.rx_calls += 1;
            RxOutcome::Frames(n)
        }

        pub(super) fn send(
            &mut self,
            pool: &mut SlotPool,
            batch: &mut Vec<u32>,
            segment: bool,
            tx: &mut TxCtx<'_>,
        ) {
            let state = Arc::clone(&self.state);
            let mut st = state.lock().expect("mem link state");
            st.tx_calls += 1;
            for &i in batch.iter() {
                let write = |v: &[u8; VNET_HDR_LEN], f: &[u8]| {
                    st.tx.push((*v, f.to_vec()));
                    Ok(())
                };
                let slot = pool.get(i);
                if let Err(reason) = send_frame(write, slot, ethernet::HEADER_LEN, segment, tx) {
                    tx.counters.dropped(tx.worker, reason);
                }
                pool.put(i);
            }
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reads of one io_uring batch, judged and gathered: frames move to the front past the
    /// reads that found nothing, each with its own buffer and header; a cut or short frame is
    /// still a frame (dropped and counted by the worker); an error other than EAGAIN is kept.
    #[test]
    fn gather_reads_moves_frames_past_empty_reads() {
        let eagain = -libc::EAGAIN;
        let hdr = VNET_HDR_LEN as i32;
        // (read results, frames expected (the index of the slot each came from, its length),
        // error expected)
        /// Read results, the frames expected and the error expected.
        type Row<'a> = (&'a [i32], &'a [(u8, RxFrame)], Option<i32>);
        let rows: [Row<'_>; 5] = [
            (&[eagain, eagain], &[], None),
            (
                &[hdr + 60, hdr + 70],
                &[(0, RxFrame::Whole(60)), (1, RxFrame::Whole(70))],
                None,
            ),
            (
                &[eagain, hdr + 60, eagain, hdr + 70],
                &[(1, RxFrame::Whole(60)), (3, RxFrame::Whole(70))],
                None,
            ),
            // Short (no whole header) and cut (fills the 100-byte buffer): frames to drop.
            (
                &[eagain, 3, hdr + 100],
                &[(1, RxFrame::Malformed), (2, RxFrame::Oversize)],
                None,
            ),
            (
                &[hdr + 60, -libc::EBADFD, eagain],
                &[(0, RxFrame::Whole(60))],
                Some(libc::EBADFD),
            ),
        ];
        for (res, want, err) in rows {
            let mut pool = SlotPool::new(4);
            let idx: Vec<u32> = (0..res.len()).map(|_| pool.take().unwrap()).collect();
            let mut slots: Vec<Option<&mut Slot>> = Vec::new();
            for (k, s) in pool.many_mut(&idx).enumerate() {
                // Each slot's header and buffer say which slot they were read into.
                s.vnet = [k as u8; VNET_HDR_LEN];
                s.buf = vec![k as u8; 100].into_boxed_slice();
                slots.push(Some(s));
            }
            let mut lens = [RxFrame::Malformed; MMSG_BATCH];
            let (n, failed) = gather_reads(res, &mut slots, &mut lens);
            assert_eq!(n, want.len(), "{res:?}");
            assert_eq!(failed.and_then(|e| e.raw_os_error()), err, "{res:?}");
            for (k, &(from, len)) in want.iter().enumerate() {
                assert_eq!(lens[k], len, "{res:?}: frame {k}");
                let s = slots[k].as_ref().unwrap();
                assert_eq!(s.vnet, [from; VNET_HDR_LEN], "{res:?}: frame {k}'s header");
                assert_eq!(s.buf[0], from, "{res:?}: frame {k}'s buffer");
            }
        }
    }

    /// The kinds travel as the two booleans earlier builds sent, both ways.
    #[test]
    fn link_kind_keeps_the_wire_format_of_earlier_builds() {
        let table = [
            // (kind, what earlier builds sent)
            (LinkKind::Tap, r#"{"packet_sockets":false,"rx_ring":false}"#),
            (
                LinkKind::Packet,
                r#"{"packet_sockets":true,"rx_ring":false}"#,
            ),
            (
                LinkKind::PacketRing,
                r#"{"packet_sockets":true,"rx_ring":true}"#,
            ),
        ];
        for (kind, json) in table {
            assert_eq!(serde_json::to_string(&kind).unwrap(), json);
            assert_eq!(serde_json::from_str::<LinkKind>(json).unwrap(), kind);
        }
        // The oldest builds sent neither field: a TAP.
        assert_eq!(
            serde_json::from_str::<LinkKind>("{}").unwrap(),
            LinkKind::Tap
        );
    }

    /// A pod spec carries its kind as the top-level fields earlier builds sent and read.
    #[test]
    fn a_pod_spec_keeps_the_fields_of_earlier_builds() {
        let spec = crate::dataplane::PodSpec {
            id: 7,
            mac: crate::wire::MacAddr([0x0a, 0x58, 10, 0, 0, 7]),
            ipv4: vec![std::net::Ipv4Addr::new(10, 0, 0, 7)],
            ipv6: Vec::new(),
            gateway_v6: None,
            mtu: 1500,
            bandwidth: None,
            container_id: "c7".into(),
            link: LinkKind::PacketRing,
        };
        let mut v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["packet_sockets"], true);
        assert_eq!(v["rx_ring"], true);
        assert!(v.get("link").is_none());
        let back: crate::dataplane::PodSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, spec);
        v["rx_ring"] = false.into();
        let packet: crate::dataplane::PodSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(packet.link, LinkKind::Packet);
        let obj = v.as_object_mut().unwrap();
        obj.remove("packet_sockets");
        obj.remove("rx_ring");
        let oldest: crate::dataplane::PodSpec = serde_json::from_value(v).unwrap();
        assert_eq!(oldest.link, LinkKind::Tap);
    }

    /// A slot holding an IPv4 BIG TCP frame (total length 0) of `ip_len` IP bytes, as a veth
    /// pod's kernel hands it over with `--big-tcp`.
    fn big_tcp_slot(ip_len: usize) -> Slot {
        let mut buf = vec![0u8; 14 + ip_len].into_boxed_slice();
        buf[12..14].copy_from_slice(&[0x08, 0x00]);
        crate::wire::ipv4::emit_header(
            &mut buf[14..],
            std::net::Ipv4Addr::new(10, 0, 0, 1),
            std::net::Ipv4Addr::new(10, 0, 0, 2),
            crate::wire::ipv4::PROTO_TCP,
            64,
            20,
            9,
        );
        buf[16..18].fill(0);
        crate::wire::Ipv4Packet::new_unchecked(&mut buf[14..34]).fill_checksum();
        buf[34 + 12] = 5 << 4;
        buf[34 + 13] = 0x18;
        for (i, b) in buf[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut vnet = [0u8; VNET_HDR_LEN];
        VnetHdr {
            flags: crate::wire::vnet::FLAG_NEEDS_CSUM,
            gso_type: crate::wire::vnet::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
        .emit(&mut vnet);
        let end = buf.len();
        Slot {
            vnet,
            buf,
            start: 0,
            end,
        }
    }

    /// A BIG TCP frame to a link that takes 64 KiB at most goes as GSO frames of at most
    /// 65535 IP bytes carrying the whole payload in order (counted as cut, not segmented); a
    /// chunk the link refuses (EINVAL) goes as MTU-sized segments instead; with `segment` on,
    /// the whole frame goes as segments.
    #[test]
    fn big_tcp_frames_leave_in_64_kib_chunks_or_segments() {
        let slot = big_tcp_slot(150_000);
        let counters = LinkCounters::new(1);
        let mut scratch = vec![0u8; 2 * super::super::qdisc::SLOT_LEN];
        // (refuse GSO writes, segment, what)
        for (refuse, segment, what) in [
            (false, false, "chunks"),
            (true, false, "refused chunks as segments"),
            (false, true, "--gso segment"),
        ] {
            let mut out: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
            let write = |v: &[u8; VNET_HDR_LEN], f: &[u8]| {
                let v = VnetHdr::parse(v);
                if refuse && v.is_gso() {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                out.push((v, f.to_vec()));
                Ok(())
            };
            let mut tx = TxCtx {
                segment_gso: segment,
                scratch: &mut scratch,
                counters: &counters,
                worker: 0,
            };
            send_frame(write, &slot, 14, segment, &mut tx).expect(what);
            let payload: Vec<u8> = out.iter().flat_map(|(_, f)| f[54..].to_vec()).collect();
            assert_eq!(
                payload,
                slot.buf[54..].to_vec(),
                "{what}: the payload, in order"
            );
            for (v, f) in &out {
                let ip = crate::wire::Ipv4Packet::new_checked(&f[14..]).expect(what);
                assert_eq!(ip.packet_len(), f.len() - 14, "{what}");
                assert_eq!(v.is_gso(), !refuse && !segment, "{what}");
            }
            let want = if refuse || segment {
                150_000usize.div_ceil(1448 + 40).max(1)
            } else {
                3
            };
            assert!(out.len() >= want, "{what}: {} frames", out.len());
        }
        let c = counters.snapshot();
        assert_eq!((c.tx_big_tcp_chunked, c.tx_gso_segmented), (2, 4), "{c:?}");
    }

    /// A veth takes every frame whole from a packet socket but an IPv6 BIG TCP one.
    #[test]
    fn veth_takes_all_but_ipv6_big_tcp_frames_whole() {
        let v4 = big_tcp_slot(150_000);
        assert!(veth_takes_whole(&v4), "IPv4 BIG TCP");
        let mut v6 = big_tcp_slot(150_000);
        v6.buf[12..14].copy_from_slice(&ethernet::ETHERTYPE_IPV6.to_be_bytes());
        assert!(!veth_takes_whole(&v6), "IPv6 BIG TCP");
        v6.end = 14 + 65_535;
        assert!(veth_takes_whole(&v6), "IPv6 of 64 KiB");
    }
}
