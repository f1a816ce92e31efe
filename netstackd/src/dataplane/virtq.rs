//! A VM pod's virtqueues, served from the dataplane: frames taken from the guest's transmit
//! queue and given to its receive queue, in guest memory mapped from the regions the
//! supervisor recorded (`crate::vhost::map_regions`).
//!
//! `virtio_queue::Queue` reads the available ring (refusing an index that moved more than
//! the queue holds) and walks descriptor chains; `vm-memory` bounds every copy to the guest's
//! regions. On top, [`Virtq`] checks each descriptor's whole range before touching it, tells a
//! chain that loops or points past its table (the walk ends while a descriptor still says
//! NEXT), and stops the queue at the first such fault: every later call returns
//! [`VirtqError::Stopped`] and the caller counts it. A guest can only hurt its own queue.
//!
//! The used entries of a batch are published together (their elements first, then the used
//! index once), so a guest never sees part of a frame spread over mergeable buffers, and the
//! guest is interrupted through the call eventfd only when its event index (or, without
//! `VIRTIO_RING_F_EVENT_IDX`, its `NO_INTERRUPT` flag) asks for it.
//!
//! Headers: a frame from the guest starts with the virtio-net header (12 bytes with
//! `VIRTIO_F_VERSION_1` or mergeable buffers, 10 for a legacy device); its first 10 bytes are
//! `struct virtio_net_hdr` exactly as a TAP gives it (`crate::wire::VnetHdr` parses them), so
//! the worker's slot holds it unchanged; `num_buffers` is written on receive.
//!
//! Resume: a [`Virtq`] starts at the used index it reads from guest memory, so the queue a new
//! dataplane builds after a restart takes again any buffer the old one took but never used.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::sys::tap::{RxFrame, VNET_HDR_LEN};

/// The virtio-net header with `num_buffers` (VERSION_1 or mergeable receive buffers).
pub const VIRTIO_NET_HDR_LEN: usize = 12;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver wants no interrupt (without event index).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Why a queue stopped (or could not start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VirtqError {
    /// The ring's size, alignment or addresses are not a usable ring in guest memory.
    #[error("the ring (size {size}) does not lie in guest memory or is misaligned")]
    BadRing {
        /// The ring's size.
        size: u16,
    },
    /// The available index moved further than the queue holds.
    #[error("the available index moved more entries ahead than the queue holds")]
    AvailIndex,
    /// A descriptor's buffer is not (whole) inside guest memory.
    #[error("a descriptor's buffer ({len} bytes at {addr:#x}) is outside guest memory")]
    OutsideMemory {
        /// The buffer's guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A chain that loops, points past its table, or has no buffer to use.
    #[error("a descriptor chain loops, points past its table, or has no usable buffer")]
    Chain,
    /// A ring structure could not be read or written.
    #[error("the ring's memory could not be accessed")]
    RingMemory,
    /// The queue stopped on an earlier fault.
    #[error("the queue was stopped by an earlier fault")]
    Stopped,
}

/// Where a ring lies and how it was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingConfig {
    /// Its size in descriptors (a power of two).
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    /// `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// The next available entry to read, when the frontend set one (`SET_VRING_BASE`);
    /// otherwise the used index in guest memory (a resume).
    pub base: Option<u16>,
}

/// What [`Virtq::put_frame`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Written into this many guest buffers (published at the next [`Virtq::flush`]).
    Delivered(u16),
    /// The guest has not posted enough buffers: nothing was taken.
    NoRoom,
    /// Without mergeable buffers, the frame does not fit the guest's buffer: nothing was
    /// taken.
    TooBig,
}

/// One virtqueue of a VM pod.
pub struct Virtq {
    queue: Queue,
    avail: u64,
    used: u64,
    event_idx: bool,
    /// Chains taken and not yet published: (head, bytes written to it).
    pending: Vec<(u16, u32)>,
    call: Option<OwnedFd>,
    stopped: Option<VirtqError>,
}

impl Virtq {
    /// A queue over `cfg` in `mem`, interrupting the guest through `call`; it starts at the
    /// used index in guest memory (and reads from `cfg.base` when set).
    pub fn new(
        mem: &GuestMemoryMmap,
        cfg: &RingConfig,
        call: Option<OwnedFd>,
    ) -> Result<Self, VirtqError> {
        let bad = VirtqError::BadRing { size: cfg.size };
        let mut queue = Queue::new(cfg.size).map_err(|_| bad)?;
        queue
            .try_set_desc_table_address(GuestAddress(cfg.desc))
            .map_err(|_| bad)?;
        queue
            .try_set_avail_ring_address(GuestAddress(cfg.avail))
            .map_err(|_| bad)?;
        queue
            .try_set_used_ring_address(GuestAddress(cfg.used))
            .map_err(|_| bad)?;
        queue.set_ready(true);
        queue.set_event_idx(cfg.event_idx);
        if !queue.is_valid(mem) {
            return Err(bad);
        }
        let used = queue
            .used_idx(mem, Ordering::Acquire)
            .map_err(|_| VirtqError::RingMemory)?
            .0;
        queue.set_next_used(used);
        queue.set_next_avail(cfg.base.unwrap_or(used));
        Ok(Virtq {
            queue,
            avail: cfg.avail,
            used: cfg.used,
            event_idx: cfg.event_idx,
            pending: Vec::with_capacity(usize::from(cfg.size)),
            call,
            stopped: None,
        })
    }

    /// The next available entry this queue reads.
    pub fn next_avail(&self) -> u16 {
        self.queue.next_avail()
    }

    /// The used index published so far.
    pub fn next_used(&self) -> u16 {
        self.queue.next_used()
    }

    /// Interrupts the guest through `call` from now on (the frontend's SET_VRING_CALL: the
    /// guest changed its interrupt vectors), and once right away, as libvhost-user does: an
    /// interrupt the old eventfd took while it was being replaced is not lost (a spurious one
    /// costs the driver one look at the used ring).
    pub fn set_call(&mut self, call: Option<OwnedFd>) {
        self.call = call;
        if let Some(call) = &self.call {
            // A full counter (EAGAIN) already interrupts the guest.
            let _ = nix::unistd::write(call.as_fd(), &1u64.to_ne_bytes());
        }
    }

    /// Why the queue stopped, if it did.
    pub fn stopped(&self) -> Option<VirtqError> {
        self.stopped
    }

    fn fail(&mut self, e: VirtqError) -> VirtqError {
        self.stopped = Some(e);
        e
    }

    fn running(&self) -> Result<(), VirtqError> {
        match self.stopped {
            Some(_) => Err(VirtqError::Stopped),
            None => Ok(()),
        }
    }

    /// Takes the next available chain, if any.
    fn pop<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
    ) -> Result<Option<virtio_queue::DescriptorChain<&'m GuestMemoryMmap>>, VirtqError> {
        let mut chains = self.queue.iter(mem).map_err(|e| match e {
            virtio_queue::Error::InvalidAvailRingIndex => VirtqError::AvailIndex,
            _ => VirtqError::RingMemory,
        })?;
        Ok(chains.next())
    }

    /// Takes one frame the guest transmits: its virtio-net header (`hdr_len` bytes, of which
    /// the first 10 go to `vnet`) and the frame after it into `buf`. `None` when the queue is
    /// empty. A frame longer than `buf` is `Oversize`, one shorter than its header
    /// `Malformed`: both are consumed (the guest gets its buffer back) and dropped.
    pub fn take_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        hdr_len: usize,
        vnet: &mut [u8; VNET_HDR_LEN],
        buf: &mut [u8],
    ) -> Result<Option<RxFrame>, VirtqError> {
        self.running()?;
        let chain = match self.pop(mem) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        let head = chain.head_index();
        let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
        let hdr_len = hdr_len.min(VIRTIO_NET_HDR_LEN);
        let (mut pos, mut descs, mut more, mut oversize) = (0usize, 0usize, false, false);
        for d in chain {
            descs += 1;
            more = d.has_next();
            if d.is_write_only() {
                continue;
            }
            let (addr, len) = (d.addr(), d.len() as usize);
            if !mem.check_range(addr, len) {
                return Err(self.fail(VirtqError::OutsideMemory {
                    addr: addr.raw_value(),
                    len: d.len(),
                }));
            }
            let mut off = 0;
            if pos < hdr_len {
                off = (hdr_len - pos).min(len);
                if mem.read_slice(&mut hdr[pos..pos + off], addr).is_err() {
                    return Err(self.fail(VirtqError::RingMemory));
                }
            }
            let rest = len - off;
            if rest > 0 && !oversize {
                let start = pos + off - hdr_len;
                match buf.get_mut(start..start + rest) {
                    Some(dst) => {
                        if mem.read_slice(dst, addr.unchecked_add(off as u64)).is_err() {
                            return Err(self.fail(VirtqError::RingMemory));
                        }
                    }
                    None => oversize = true,
                }
            }
            pos += len;
        }
        if descs == 0 || more {
            return Err(self.fail(VirtqError::Chain));
        }
        self.pending.push((head, 0));
        Ok(Some(if pos < hdr_len {
            RxFrame::Malformed
        } else if oversize {
            RxFrame::Oversize
        } else {
            vnet.copy_from_slice(&hdr[..VNET_HDR_LEN]);
            RxFrame::Whole(pos - hdr_len)
        }))
    }

    /// Gives one frame to the guest: its virtio-net header (`vnet`, then `num_buffers` when
    /// `hdr_len` is 12) and `frame`, into as many of the guest's receive buffers as it takes
    /// when `mergeable`, else into one. The buffers are published at the next
    /// [`Virtq::flush`].
    pub fn put_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        hdr_len: usize,
        mergeable: bool,
        vnet: &[u8; VNET_HDR_LEN],
        frame: &[u8],
    ) -> Result<Put, VirtqError> {
        self.running()?;
        let hdr_len = hdr_len.min(VIRTIO_NET_HDR_LEN);
        let mut hdr = [0u8; VIRTIO_NET_HDR_LEN];
        hdr[..VNET_HDR_LEN].copy_from_slice(vnet);
        let total = hdr_len + frame.len();
        let (saved_avail, saved_pending) = (self.queue.next_avail(), self.pending.len());
        // Where the two bytes of num_buffers landed (a header may span descriptors).
        let mut num_buffers_at = [None::<GuestAddress>; 2];
        let (mut written, mut bufs) = (0usize, 0u16);
        while written < total {
            if bufs == 1 && !mergeable {
                self.queue.set_next_avail(saved_avail);
                self.pending.truncate(saved_pending);
                return Ok(Put::TooBig);
            }
            let chain = match self.pop(mem) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    self.queue.set_next_avail(saved_avail);
                    self.pending.truncate(saved_pending);
                    return Ok(Put::NoRoom);
                }
                Err(e) => return Err(self.fail(e)),
            };
            let head = chain.head_index();
            let (mut descs, mut more, mut room, start) = (0usize, false, 0usize, written);
            for d in chain {
                descs += 1;
                more = d.has_next();
                if !d.is_write_only() {
                    continue;
                }
                let (addr, len) = (d.addr(), d.len() as usize);
                if !mem.check_range(addr, len) {
                    return Err(self.fail(VirtqError::OutsideMemory {
                        addr: addr.raw_value(),
                        len: d.len(),
                    }));
                }
                room += len;
                let mut off = 0;
                while off < len && written < total {
                    let at = addr.unchecked_add(off as u64);
                    let src = if written < hdr_len {
                        &hdr[written..hdr_len]
                    } else {
                        &frame[written - hdr_len..]
                    };
                    let n = src.len().min(len - off);
                    if written < hdr_len {
                        for (k, slot) in num_buffers_at.iter_mut().enumerate() {
                            let byte = VNET_HDR_LEN + k;
                            if (written..written + n).contains(&byte) {
                                *slot = Some(at.unchecked_add((byte - written) as u64));
                            }
                        }
                    }
                    if mem.write_slice(&src[..n], at).is_err() {
                        return Err(self.fail(VirtqError::RingMemory));
                    }
                    off += n;
                    written += n;
                }
            }
            if descs == 0 || more || room == 0 {
                return Err(self.fail(VirtqError::Chain));
            }
            let used_len = u32::try_from(written - start).map_err(|_| VirtqError::Chain)?;
            self.pending.push((head, used_len));
            bufs += 1;
        }
        if hdr_len == VIRTIO_NET_HDR_LEN {
            let count = bufs.to_le_bytes();
            for (byte, at) in count.iter().zip(num_buffers_at) {
                let ok = at.is_some_and(|a| mem.write_slice(std::slice::from_ref(byte), a).is_ok());
                if !ok {
                    return Err(self.fail(VirtqError::RingMemory));
                }
            }
        }
        Ok(Put::Delivered(bufs))
    }

    /// Publishes the chains taken since the last flush (their used elements, then the used
    /// index once) and interrupts the guest through the call eventfd when it asked to be.
    /// Returns whether it was interrupted.
    pub fn flush(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtqError> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let size = self.queue.size();
        let old = self.queue.next_used();
        let mut idx = old;
        for &(head, len) in &self.pending {
            let slot = u64::from(idx % size);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            let at = GuestAddress(self.used + 4 + 8 * slot);
            if mem.write_slice(&elem, at).is_err() {
                return Err(self.fail(VirtqError::RingMemory));
            }
            idx = idx.wrapping_add(1);
        }
        self.pending.clear();
        if mem
            .store(idx.to_le(), GuestAddress(self.used + 2), Ordering::Release)
            .is_err()
        {
            return Err(self.fail(VirtqError::RingMemory));
        }
        self.queue.set_next_used(idx);
        // The used index is visible before the driver's wish is read.
        fence(Ordering::SeqCst);
        let notify = if self.event_idx {
            // used_event sits after the available ring's entries.
            let at = GuestAddress(self.avail + 4 + 2 * u64::from(size));
            let event = match mem.load::<u16>(at, Ordering::Relaxed) {
                Ok(v) => u16::from_le(v),
                Err(_) => return Err(self.fail(VirtqError::RingMemory)),
            };
            // vring_need_event: did the index pass `event` in this batch?
            idx.wrapping_sub(event).wrapping_sub(1) < idx.wrapping_sub(old)
        } else {
            match mem.load::<u16>(GuestAddress(self.avail), Ordering::Relaxed) {
                Ok(flags) => u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0,
                Err(_) => return Err(self.fail(VirtqError::RingMemory)),
            }
        };
        if notify {
            if let Some(call) = &self.call {
                // A full counter (EAGAIN) already interrupts the guest.
                let _ = nix::unistd::write(call.as_fd(), &1u64.to_ne_bytes());
            }
        }
        Ok(notify)
    }

    /// Asks the guest not to kick when it adds buffers (without event index: the used ring's
    /// `NO_NOTIFY` flag; with it the event index is simply left behind).
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtqError> {
        self.running()?;
        self.queue
            .disable_notification(mem)
            .map_err(|_| self.fail(VirtqError::RingMemory))
    }

    /// Asks the guest to kick when it adds a buffer after those available now (with event
    /// index: `avail_event` set to the available index it reads now, so a guest whose buffers
    /// were too few for a frame kicks at its next one). Returns true when the guest added
    /// buffers meanwhile: look again before sleeping.
    pub fn notify_on_new_buffers(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtqError> {
        self.running()?;
        let avail_idx = GuestAddress(self.avail + 2);
        let seen = match mem.load::<u16>(avail_idx, Ordering::Acquire) {
            Ok(v) => u16::from_le(v),
            Err(_) => return Err(self.fail(VirtqError::RingMemory)),
        };
        if self.event_idx {
            // avail_event sits after the used ring's entries.
            let at = GuestAddress(self.used + 4 + 8 * u64::from(self.queue.size()));
            if mem.store(seen.to_le(), at, Ordering::Relaxed).is_err() {
                return Err(self.fail(VirtqError::RingMemory));
            }
        } else if self.queue.enable_notification(mem).is_err() {
            return Err(self.fail(VirtqError::RingMemory));
        }
        // The request is visible before the index is read again.
        fence(Ordering::SeqCst);
        match mem.load::<u16>(avail_idx, Ordering::Acquire) {
            Ok(now) => Ok(u16::from_le(now) != seen),
            Err(_) => Err(self.fail(VirtqError::RingMemory)),
        }
    }

    /// Asks the guest to kick when it adds buffers (with event index: once it passes the next
    /// entry this queue reads). Returns true when buffers arrived meanwhile: read again
    /// before sleeping.
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, VirtqError> {
        self.running()?;
        match self.queue.enable_notification(mem) {
            Ok(more) => Ok(more),
            Err(_) => Err(self.fail(VirtqError::RingMemory)),
        }
    }
}

/// One queue pair of a VM pod's device, as the supervisor handed it over.
pub struct VhostPair {
    /// Its number in the device: vrings 2 × `index` (receive) and 2 × `index` + 1
    /// (transmit). Worker `index % workers` reads it.
    pub index: usize,
    /// The guest's receive queue.
    pub to_guest: RingConfig,
    /// Its call eventfd.
    pub to_guest_call: Option<OwnedFd>,
    /// Its kick eventfd: the guest added receive buffers (waited on while frames to it wait
    /// for room).
    pub to_guest_kick: OwnedFd,
    /// The guest's transmit queue.
    pub from_guest: RingConfig,
    /// Its call eventfd.
    pub from_guest_call: Option<OwnedFd>,
    /// Its kick eventfd, which the worker waits on.
    pub kick: OwnedFd,
}

/// A VM pod's device as the dataplane serves it: its memory (`crate::vhost::map_regions`),
/// the virtio features the guest acked, the queue pairs the guest enabled (pair 0 at least).
pub struct VhostDevice {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Acked virtio features.
    pub features: u64,
    /// The queue pairs served, by ascending index.
    pub pairs: Vec<VhostPair>,
}

/// Makes an eventfd the worker reads to clear non-blocking.
pub(super) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests;
