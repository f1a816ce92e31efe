//! A VM pod's link: one queue pair of its vhost-user-net device, served by one worker. The
//! worker waits on the kick eventfd of the guest's transmit queue; a receive takes frames
//! from that queue ([`Virtq::take_frame`]) and gives the guest its buffers back at once; a
//! send writes frames into the guest's receive queue and interrupts it once per batch.
//!
//! What the guest negotiated decides what it is given: a GSO frame goes whole only when the
//! guest takes that GSO type (`GUEST_TSO4`/`GUEST_TSO6`; never ECN or UDP), else as segments;
//! without `GUEST_CSUM` a partial checksum is completed first and no offload flag reaches it.
//! A frame the guest has no buffer for is dropped (`tx_error`); a ring fault stops the queue
//! and the worker stops reading it, as it does for a TAP that is gone.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use vm_memory::GuestMemoryMmap;

use crate::dataplane::virtq::{Put, Virtq, VirtqError};
use crate::gso::complete_checksum;
use crate::stack::DropReason;
use crate::sys::packet::MMSG_BATCH;
use crate::sys::tap::{RxFrame, VNET_HDR_LEN};
use crate::wire::vnet::{GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6};
use crate::wire::{ethernet, VnetHdr};

use super::super::qdisc::SlotPool;
use super::{send_frame, RxOutcome, TxCtx};

/// One queue pair of a VM pod on one worker.
pub(in crate::dataplane) struct VhostLink {
    mem: GuestMemoryMmap,
    hdr_len: usize,
    mergeable: bool,
    guest_csum: bool,
    guest_tso4: bool,
    guest_tso6: bool,
    /// The guest's receive queue: frames to it.
    to_guest: Virtq,
    /// The guest's transmit queue: frames from it.
    from_guest: Virtq,
    /// The transmit queue's kick eventfd (the worker's epoll waits on it).
    kick: [OwnedFd; 1],
}

impl VhostLink {
    /// A queue pair over `mem` with the acked virtio `features`: frames go to the guest on
    /// `to_guest` and come from it on `from_guest`, whose kick eventfd is `kick`.
    pub fn new(
        mem: GuestMemoryMmap,
        features: u64,
        to_guest: Virtq,
        from_guest: Virtq,
        kick: OwnedFd,
    ) -> Self {
        let has = |bit: u32| features & (1 << bit) != 0;
        VhostLink {
            mem,
            hdr_len: crate::vhost::net_hdr_len(features),
            mergeable: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso4: has(VIRTIO_NET_F_GUEST_TSO4) && has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso6: has(VIRTIO_NET_F_GUEST_TSO6) && has(VIRTIO_NET_F_GUEST_CSUM),
            to_guest,
            from_guest,
            kick: [kick],
        }
    }

    /// The fd the worker waits on.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.kick
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

    /// Takes up to `batch.len()` frames the guest sent into the slots `batch` names. Once the
    /// queue is drained it clears the kick and asks the guest for the next one (with event
    /// index: at the next entry), so that level-triggered epoll sleeps until the guest kicks;
    /// frames that arrived meanwhile are looked for once more, or the kick set again for them.
    pub fn recv(
        &mut self,
        pool: &mut SlotPool,
        batch: &[u32],
        lens: &mut [RxFrame; MMSG_BATCH],
    ) -> RxOutcome {
        let mut looked_again = false;
        loop {
            let mut n = 0;
            for s in pool.many_mut(batch) {
                let taken =
                    self.from_guest
                        .take_frame(&self.mem, self.hdr_len, &mut s.vnet, &mut s.buf);
                match taken {
                    Ok(Some(frame)) => {
                        lens[n] = frame;
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return stopped(e),
                }
            }
            if n == batch.len() {
                // A full batch: the kick stays set, so epoll brings the worker back.
                let _ = self.from_guest.flush(&self.mem);
                return RxOutcome::Frames(n);
            }
            // Drained: clear the kick and ask for the next one.
            let mut counter = [0u8; 8];
            // EAGAIN: no kick pending, nothing to clear.
            let _ = nix::unistd::read(self.kick[0].as_fd(), &mut counter);
            let more = match self.from_guest.enable_notification(&self.mem) {
                Ok(more) => more,
                Err(e) => return stopped(e),
            };
            if n > 0 || looked_again {
                // The guest gets its buffers back now; a failure stops the queue, which the
                // next receive reports.
                let _ = self.from_guest.flush(&self.mem);
                if more {
                    // Frames arrived meanwhile and their kick may be the one just cleared.
                    let _ = nix::unistd::write(self.kick[0].as_fd(), &1u64.to_ne_bytes());
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
    /// where the guest does not take the frame's GSO type, or `segment` is on), counts them on
    /// `tx.counters`, gives every slot back to `pool`, and interrupts the guest once.
    pub fn send(
        &mut self,
        pool: &mut SlotPool,
        batch: &mut Vec<u32>,
        segment: bool,
        tx: &mut TxCtx<'_>,
    ) {
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
            let VhostLink {
                mem,
                hdr_len,
                mergeable,
                to_guest,
                ..
            } = self;
            let write = |v: &[u8; VNET_HDR_LEN], f: &[u8]| match to_guest
                .put_frame(mem, *hdr_len, *mergeable, v, f)
            {
                Ok(Put::Delivered(_)) => Ok(()),
                Ok(Put::NoRoom) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                // A GSO frame that does not fit a guest buffer goes as segments.
                Ok(Put::TooBig) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
                Err(e) => Err(io::Error::other(e)),
            };
            if let Err(reason) = send_frame(write, pool.get(i), ethernet::HEADER_LEN, !whole, tx) {
                tx.counters.dropped(tx.worker, reason);
            }
            pool.put(i);
        }
        batch.clear();
        // A failure stops the queue: later frames to the guest are dropped as tx_error.
        let _ = self.to_guest.flush(&self.mem);
    }
}

/// A queue that stopped on a ring fault: the worker stops reading it.
fn stopped(e: VirtqError) -> RxOutcome {
    RxOutcome::Dead(io::Error::other(format!("its virtqueue stopped: {e}")))
}
