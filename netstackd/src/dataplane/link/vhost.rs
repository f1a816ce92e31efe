//! A VM pod's link on one worker: the queue pairs of its vhost-user-net device this worker
//! reads (pair i goes to worker i % workers), and the guest receive queue it writes to.
//!
//! The worker waits on the kick eventfd of each of its pairs' transmit queues; a receive takes
//! frames from that queue ([`Virtq::take_frame`]) and gives the guest its buffers back at
//! once. Frames to the guest go into one receive queue per worker — pair w % pairs, shared
//! through a mutex by the workers that write to it when the guest enabled fewer pairs than
//! there are workers, locked once per batch — and the guest is interrupted once per batch.
//!
//! A guest whose receive ring is full: the frames wait in that queue's backlog ([`GuestRx`],
//! at most `min(BACKLOG_FRAMES, ring size)` frames and `BACKLOG_BYTES` bytes; beyond, a frame
//! is dropped as `guest_rx_full`), and the guest is asked to kick when it adds buffers (with
//! event index: at its next available entry). The owner of the pair waits on that kick
//! eventfd too and, when it fires, writes the backlog into the new buffers in order; once the
//! backlog is empty the guest is asked not to kick again (no wakeup for an idle VM). While a
//! backlog waits every new frame joins it, so the order of the frames is kept. A frame in the
//! backlog counts as delivered (tx); those still there when the device is taken away are
//! lost.
//!
//! What the guest negotiated decides what it is given: a GSO frame goes whole only when the
//! guest takes that GSO type (`GUEST_TSO4`/`GUEST_TSO6`; never ECN or UDP), else as segments;
//! without `GUEST_CSUM` a partial checksum is completed first and no offload flag reaches it.
//! A ring fault stops the queue (`Virtq`): it is counted on the pod (`vhost_queue_stops`),
//! logged once, and the worker stops reading it, until the frontend sets the ring up again
//! and the device is handed over anew.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use vm_memory::GuestMemoryMmap;

use crate::dataplane::virtq::{set_nonblocking, Put, VhostDevice, Virtq, VirtqError};
use crate::gso::complete_checksum;
use crate::stack::DropReason;
use crate::sys::packet::MMSG_BATCH;
use crate::sys::tap::{RxFrame, VNET_HDR_LEN};
use crate::wire::vnet::{GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6};
use crate::wire::{ethernet, VnetHdr};

use super::super::qdisc::SlotPool;
use super::{backlog_full, send_frame, Link, RxOutcome, TxCtx};

/// Frames one guest receive queue holds back at most while the guest has no buffer (or its
/// ring size, when smaller).
pub const BACKLOG_FRAMES: usize = 256;
/// Bytes one backlog holds at most (a few GSO frames, or the frames of a full ring).
pub const BACKLOG_BYTES: usize = 4 << 20;

/// One frame waiting for the guest's buffers.
struct Backlogged {
    vnet: [u8; VNET_HDR_LEN],
    frame: Vec<u8>,
}

/// What [`GuestRx::put`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::dataplane) enum Placed {
    /// Written into the guest's buffers.
    Delivered,
    /// Kept in the backlog until the guest adds buffers.
    Backlogged,
    /// Without mergeable buffers, too big for the guest's buffer: nothing was taken.
    TooBig,
    /// The backlog is full: dropped.
    Full,
}

/// A guest receive queue and the frames waiting for its buffers.
pub(in crate::dataplane) struct GuestRx {
    queue: Virtq,
    backlog: VecDeque<Backlogged>,
    backlog_bytes: usize,
    limit: usize,
    /// Frame buffers of earlier backlogs, reused.
    spare: Vec<Vec<u8>>,
    /// The guest was asked to kick when it adds buffers.
    notify: bool,
}

impl GuestRx {
    /// The receive queue `queue` of size `ring_size`, with the guest asked not to kick it.
    pub fn new(
        mut queue: Virtq,
        mem: &GuestMemoryMmap,
        ring_size: u16,
    ) -> Result<Self, VirtqError> {
        queue.disable_notification(mem)?;
        Ok(GuestRx {
            queue,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            limit: BACKLOG_FRAMES.min(usize::from(ring_size)),
            spare: Vec::new(),
            notify: false,
        })
    }

    /// Gives one frame to the guest, or to the backlog when the guest has no buffer for it
    /// (or frames wait already).
    pub fn put(
        &mut self,
        mem: &GuestMemoryMmap,
        hdr_len: usize,
        mergeable: bool,
        vnet: &[u8; VNET_HDR_LEN],
        frame: &[u8],
    ) -> Result<Placed, VirtqError> {
        if !self.backlog.is_empty() {
            self.drain(mem, hdr_len, mergeable)?;
        }
        if self.backlog.is_empty() {
            match self.queue.put_frame(mem, hdr_len, mergeable, vnet, frame)? {
                Put::Delivered(_) => return Ok(Placed::Delivered),
                Put::TooBig => return Ok(Placed::TooBig),
                Put::NoRoom => {}
            }
        }
        if self.backlog.len() >= self.limit || self.backlog_bytes + frame.len() > BACKLOG_BYTES {
            return Ok(Placed::Full);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.backlog_bytes += frame.len();
        self.backlog.push_back(Backlogged {
            vnet: *vnet,
            frame: buf,
        });
        if !self.notify {
            self.notify = true;
            // Buffers that arrived before the guest saw the request are looked for now.
            if self.queue.notify_on_new_buffers(mem)? {
                self.drain(mem, hdr_len, mergeable)?;
            }
        }
        Ok(Placed::Backlogged)
    }

    /// Writes the backlog into the guest's buffers, in order, as far as they go; then asks the
    /// guest to kick at its next buffer while frames wait, or not to kick once none do. The
    /// buffers are published at the next [`GuestRx::flush`]. A frame too big for a guest
    /// without mergeable buffers is dropped.
    pub fn drain(
        &mut self,
        mem: &GuestMemoryMmap,
        hdr_len: usize,
        mergeable: bool,
    ) -> Result<(), VirtqError> {
        // A guest that keeps adding too few buffers cannot keep the worker here.
        for _ in 0..4 {
            while let Some(b) = self.backlog.front() {
                match self
                    .queue
                    .put_frame(mem, hdr_len, mergeable, &b.vnet, &b.frame)?
                {
                    Put::NoRoom => break,
                    Put::Delivered(_) | Put::TooBig => {
                        if let Some(b) = self.backlog.pop_front() {
                            self.backlog_bytes -= b.frame.len();
                            if self.spare.len() < 8 {
                                self.spare.push(b.frame);
                            }
                        }
                    }
                }
            }
            if self.backlog.is_empty() {
                if self.notify {
                    self.notify = false;
                    self.queue.disable_notification(mem)?;
                }
                return Ok(());
            }
            // Frames wait: the guest kicks when it adds its next buffer.
            self.notify = true;
            if !self.queue.notify_on_new_buffers(mem)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Publishes what was written and interrupts the guest if it asked.
    pub fn flush(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtqError> {
        self.queue.flush(mem)
    }
}

/// Locks a guest receive queue (a worker that panicked holding it left it usable).
fn lock(rx: &Mutex<GuestRx>) -> MutexGuard<'_, GuestRx> {
    rx.lock().unwrap_or_else(|p| p.into_inner())
}

/// One queue pair a worker reads: the guest's transmit queue, and its receive queue whose
/// kick this worker waits on.
pub(in crate::dataplane) struct ReadPair {
    /// Its number in the device.
    pub index: usize,
    /// The guest's transmit queue: frames from it.
    pub from_guest: Virtq,
    /// The guest's receive queue of the same pair.
    pub to_guest: Arc<Mutex<GuestRx>>,
}

/// A VM pod's queues on one worker.
pub(in crate::dataplane) struct VhostLink {
    mem: GuestMemoryMmap,
    container_id: Arc<str>,
    hdr_len: usize,
    mergeable: bool,
    guest_csum: bool,
    guest_tso4: bool,
    guest_tso6: bool,
    /// The pairs this worker reads.
    pairs: Vec<ReadPair>,
    /// Where this worker writes frames to the guest.
    to_guest: Arc<Mutex<GuestRx>>,
    /// The kick eventfds the worker waits on: each pair's transmit kick, then each pair's
    /// receive kick.
    kicks: Vec<OwnedFd>,
}

impl VhostLink {
    /// The queues of a VM pod (`container_id`, for log lines) over `mem` with the acked
    /// virtio `features` that one worker serves: it reads `pairs`, whose transmit and
    /// receive kick eventfds are `kicks` (`pairs.len()` of each, in that order), and writes
    /// frames to the guest into `to_guest`.
    pub fn new(
        mem: GuestMemoryMmap,
        container_id: Arc<str>,
        features: u64,
        pairs: Vec<ReadPair>,
        kicks: Vec<OwnedFd>,
        to_guest: Arc<Mutex<GuestRx>>,
    ) -> Self {
        let has = |bit: u32| features & (1 << bit) != 0;
        VhostLink {
            mem,
            container_id,
            hdr_len: crate::vhost::net_hdr_len(features),
            mergeable: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso4: has(VIRTIO_NET_F_GUEST_TSO4) && has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso6: has(VIRTIO_NET_F_GUEST_TSO6) && has(VIRTIO_NET_F_GUEST_CSUM),
            pairs,
            to_guest,
            kicks,
        }
    }

    /// Gives queue pair `pair`'s receive queue (`to_guest`) or transmit queue a new call
    /// eventfd. False when this worker does not read that pair.
    pub fn set_call(&mut self, pair: usize, to_guest: bool, call: Option<OwnedFd>) -> bool {
        let Some(p) = self.pairs.iter_mut().find(|p| p.index == pair) else {
            return false;
        };
        if to_guest {
            lock(&p.to_guest).queue.set_call(call);
        } else {
            p.from_guest.set_call(call);
        }
        true
    }

    /// The fds the worker waits on.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.kicks
    }

    /// Whether any GSO frame can go to the guest whole.
    pub fn takes_gso(&self) -> bool {
        self.guest_tso4 || self.guest_tso6
    }

    /// Does the guest take a frame with this header as it is?
    fn takes(&self, vnet: &VnetHdr) -> bool {
        if vnet.gso_type & GSO_ECN != 0 {
            return false;
        }
        match vnet.gso_type {
            GSO_NONE => true,
            GSO_TCPV4 => self.guest_tso4,
            GSO_TCPV6 => self.guest_tso6,
            _ => false,
        }
    }

    /// Serves queue `q` of [`VhostLink::fds`]: takes up to `batch.len()` frames the guest
    /// sent on pair `q` into the slots `batch` names, or, for a receive kick, writes the
    /// frames waiting for the guest's buffers into the new ones.
    pub fn recv(
        &mut self,
        q: usize,
        pool: &mut SlotPool,
        batch: &[u32],
        lens: &mut [RxFrame; MMSG_BATCH],
    ) -> RxOutcome {
        let n = self.pairs.len();
        if q < n {
            self.take(q, pool, batch, lens)
        } else if q < 2 * n {
            self.room(q - n)
        } else {
            RxOutcome::NoQueue
        }
    }

    /// The guest added receive buffers to pair `p`: the backlog goes into them.
    fn room(&mut self, p: usize) -> RxOutcome {
        let mut counter = [0u8; 8];
        // EAGAIN: no kick pending, nothing to clear.
        let _ = nix::unistd::read(self.kicks[self.pairs.len() + p].as_fd(), &mut counter);
        let mut rx = lock(&self.pairs[p].to_guest);
        let done = rx
            .drain(&self.mem, self.hdr_len, self.mergeable)
            .and_then(|()| rx.flush(&self.mem));
        match done {
            Ok(_) => RxOutcome::Empty,
            Err(e) => RxOutcome::Stopped(e),
        }
    }

    /// Takes up to `batch.len()` frames the guest sent on pair `p` into the slots `batch`
    /// names. Once the queue is drained it clears the kick and asks the guest for the next
    /// one (with event index: at the next entry), so that level-triggered epoll sleeps until
    /// the guest kicks; frames that arrived meanwhile are looked for once more, or the kick
    /// set again for them.
    fn take(
        &mut self,
        p: usize,
        pool: &mut SlotPool,
        batch: &[u32],
        lens: &mut [RxFrame; MMSG_BATCH],
    ) -> RxOutcome {
        let kick = self.kicks[p].as_fd();
        let from_guest = &mut self.pairs[p].from_guest;
        let mut looked_again = false;
        loop {
            let mut n = 0;
            for s in pool.many_mut(batch) {
                let taken = from_guest.take_frame(&self.mem, self.hdr_len, &mut s.vnet, &mut s.buf);
                match taken {
                    Ok(Some(frame)) => {
                        lens[n] = frame;
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return RxOutcome::Stopped(e),
                }
            }
            if n == batch.len() {
                // A full batch: the kick stays set, so epoll brings the worker back.
                let _ = from_guest.flush(&self.mem);
                return RxOutcome::Frames(n);
            }
            // Drained: clear the kick and ask for the next one.
            let mut counter = [0u8; 8];
            // EAGAIN: no kick pending, nothing to clear.
            let _ = nix::unistd::read(kick, &mut counter);
            let more = match from_guest.enable_notification(&self.mem) {
                Ok(more) => more,
                Err(e) => return RxOutcome::Stopped(e),
            };
            if n > 0 || looked_again {
                // The guest gets its buffers back now; a failure stops the queue, which the
                // next receive reports.
                let _ = from_guest.flush(&self.mem);
                if more {
                    // Frames arrived meanwhile and their kick may be the one just cleared.
                    let _ = nix::unistd::write(kick, &1u64.to_ne_bytes());
                }
                return if n > 0 {
                    RxOutcome::Frames(n)
                } else {
                    RxOutcome::Empty
                };
            }
            if !more {
                return RxOutcome::Empty;
            }
            looked_again = true;
        }
    }

    /// Writes the frames of the slots in `batch` into the guest's receive queue (as segments
    /// where the guest does not take the frame's GSO type, or `segment` is on), or into its
    /// backlog while the guest has no buffer; counts them on `tx.counters`, gives every slot
    /// back to `pool`, and interrupts the guest once. A ring fault met here is counted and
    /// logged once (the queue stays stopped; later frames are dropped as `tx_error`).
    pub fn send(
        &mut self,
        pool: &mut SlotPool,
        batch: &mut Vec<u32>,
        segment: bool,
        tx: &mut TxCtx<'_>,
    ) {
        let to_guest = Arc::clone(&self.to_guest);
        let mut rx = lock(&to_guest);
        let mut fault = None;
        for &i in batch.iter() {
            let slot = pool.get_mut(i);
            let vnet = VnetHdr::parse(&slot.vnet);
            if !self.guest_csum && !vnet.is_gso() {
                let frame = &mut slot.buf[slot.start..slot.end];
                if complete_checksum(&vnet, frame, ethernet::HEADER_LEN).is_err() {
                    tx.counters.dropped(tx.worker, DropReason::Malformed);
                    pool.put(i);
                    continue;
                }
                slot.vnet = [0; VNET_HDR_LEN];
            }
            let whole = !segment && self.takes(&vnet);
            let (mem, hdr_len, mergeable) = (&self.mem, self.hdr_len, self.mergeable);
            let write =
                |v: &[u8; VNET_HDR_LEN], f: &[u8]| match rx.put(mem, hdr_len, mergeable, v, f) {
                    Ok(Placed::Delivered | Placed::Backlogged) => Ok(()),
                    Ok(Placed::Full) => Err(backlog_full()),
                    // A GSO frame that does not fit a guest buffer goes as segments.
                    Ok(Placed::TooBig) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
                    Err(e) => {
                        if e != VirtqError::Stopped {
                            fault = Some(e);
                        }
                        Err(io::Error::other(e))
                    }
                };
            if let Err(reason) = send_frame(write, pool.get(i), ethernet::HEADER_LEN, !whole, tx) {
                tx.counters.dropped(tx.worker, reason);
            }
            pool.put(i);
        }
        batch.clear();
        if let Err(e) = rx.flush(&self.mem) {
            if e != VirtqError::Stopped {
                fault = Some(e);
            }
        }
        drop(rx);
        if let Some(e) = fault {
            tx.counters.queue_stopped(tx.worker);
            tracing::warn!(
                worker = tx.worker,
                container_id = %self.container_id,
                "the VM's receive queue stopped: {e}"
            );
        }
    }
}

/// The links of a VM pod's `device` (`container_id`, for log lines) on `workers` workers, in
/// worker order: pair i is read by worker i % `workers`, and worker w writes frames to the
/// guest into the receive queue of the device's pair w % pairs (shared by the workers that
/// write to it when the pairs are fewer than the workers). The kick eventfds are made
/// non-blocking (the worker reads them to clear a kick).
pub(in crate::dataplane) fn vhost_links(
    container_id: &str,
    device: VhostDevice,
    workers: usize,
) -> io::Result<Vec<Link>> {
    let (n, p) = (workers.max(1), device.pairs.len());
    if p == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a VM pod without a queue pair",
        ));
    }
    let mem = device.mem;
    let container_id: Arc<str> = Arc::from(container_id);
    let mut to_guest = Vec::with_capacity(p);
    let mut read: Vec<(Vec<ReadPair>, Vec<OwnedFd>, Vec<OwnedFd>)> = (0..n)
        .map(|_| (Vec::new(), Vec::new(), Vec::new()))
        .collect();
    for pair in device.pairs {
        let rx = Virtq::new(&mem, &pair.to_guest, pair.to_guest_call)
            .and_then(|q| GuestRx::new(q, &mem, pair.to_guest.size))
            .map_err(|e| io::Error::other(format!("the guest's receive queue: {e}")))?;
        let rx = Arc::new(Mutex::new(rx));
        let from_guest = Virtq::new(&mem, &pair.from_guest, pair.from_guest_call)
            .map_err(|e| io::Error::other(format!("the guest's transmit queue: {e}")))?;
        set_nonblocking(&pair.kick)?;
        set_nonblocking(&pair.to_guest_kick)?;
        let (pairs, tx_kicks, rx_kicks) = &mut read[pair.index % n];
        pairs.push(ReadPair {
            index: pair.index,
            from_guest,
            to_guest: Arc::clone(&rx),
        });
        tx_kicks.push(pair.kick);
        rx_kicks.push(pair.to_guest_kick);
        to_guest.push(rx);
    }
    Ok(read
        .into_iter()
        .enumerate()
        .map(|(w, (pairs, mut kicks, rx_kicks))| {
            kicks.extend(rx_kicks);
            Link::Vhost(Box::new(VhostLink::new(
                mem.clone(),
                Arc::clone(&container_id),
                device.features,
                pairs,
                kicks,
                Arc::clone(&to_guest[w % p]),
            )))
        })
        .collect())
}
