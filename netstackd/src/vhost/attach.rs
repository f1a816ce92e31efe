//! A VM pod's device as the supervisor hands it to the dataplane child: what the frontend
//! negotiated ([`VhostAttach`], sent as JSON in `DpRequest::AttachVhost`) and the fds that go
//! with it as SCM_RIGHTS, in a fixed order: every region's fd, then for each queue pair the
//! kick eventfds of the guest's transmit queue and of its receive queue, and the call
//! eventfds the message says are there.
//!
//! The supervisor keeps its own fds and the description, and sends them again to a new child
//! after a dataplane restart ([`VhostAttach::resumed`]: each ring starts at the used index in
//! guest memory rather than at the base the frontend set when it started the ring).

use std::fs::File;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::dataplane::virtq::{RingConfig, VhostDevice, VhostPair};

use super::{map_regions, MemRegion, VhostError};

/// One region of guest memory without its fd (which travels beside the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionDesc {
    /// Guest physical address of its first byte.
    pub guest_addr: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Where the frontend mapped it (ring addresses use these).
    pub user_addr: u64,
    /// Offset of the region in its fd.
    pub mmap_offset: u64,
}

/// One queue pair: the guest's receive queue (vring 2p) and transmit queue (vring 2p + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairDesc {
    /// Its number p in the device (worker p % workers reads it).
    #[serde(default)]
    pub index: usize,
    /// The guest's receive queue.
    pub to_guest: RingConfig,
    /// Whether its call eventfd is among the fds.
    pub to_guest_call: bool,
    /// The guest's transmit queue (its kick eventfd, and the receive queue's, are always
    /// among the fds).
    pub from_guest: RingConfig,
    /// Whether its call eventfd is among the fds.
    pub from_guest_call: bool,
}

/// A negotiated device: acked features, the memory table, the queue pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostAttach {
    /// The virtio features the guest acked.
    pub features: u64,
    /// The memory table, in the order of the fds.
    pub regions: Vec<RegionDesc>,
    /// The queue pairs the guest enabled, by ascending index (pair 0 always among them).
    pub pairs: Vec<PairDesc>,
}

impl VhostAttach {
    /// How many fds go with this message.
    pub fn fd_count(&self) -> usize {
        self.regions.len()
            + self
                .pairs
                .iter()
                .map(|p| 2 + usize::from(p.to_guest_call) + usize::from(p.from_guest_call))
                .sum::<usize>()
    }

    /// The same device for a new dataplane after a restart: every ring resumes at the used
    /// index in guest memory.
    pub fn resumed(&self) -> Self {
        let mut d = self.clone();
        for p in &mut d.pairs {
            p.to_guest.base = None;
            p.from_guest.base = None;
        }
        d
    }

    /// Vring `vring` has the call eventfd `call` now (the frontend's SET_VRING_CALL): the
    /// description and `fds`, the fds that go with it, are changed alike. An error, changing
    /// nothing, when the device does not serve that vring or `fds` do not match it.
    pub fn set_call(
        &mut self,
        fds: &mut Vec<OwnedFd>,
        vring: usize,
        call: Option<OwnedFd>,
    ) -> Result<(), VhostError> {
        if fds.len() != self.fd_count() {
            return Err(VhostError::Memory(format!(
                "{} fds for a device that needs {}",
                fds.len(),
                self.fd_count()
            )));
        }
        let mut at = self.regions.len();
        for p in &mut self.pairs {
            if p.index != vring / 2 {
                at += 2 + usize::from(p.to_guest_call) + usize::from(p.from_guest_call);
                continue;
            }
            // After both kicks: the receive queue's call, then the transmit queue's.
            at += 2;
            let has = if vring.is_multiple_of(2) {
                &mut p.to_guest_call
            } else {
                at += usize::from(p.to_guest_call);
                &mut p.from_guest_call
            };
            let now = call.is_some();
            match (*has, call) {
                (true, Some(fd)) => fds[at] = fd,
                (true, None) => {
                    fds.remove(at);
                }
                (false, Some(fd)) => fds.insert(at, fd),
                (false, None) => {}
            }
            *has = now;
            return Ok(());
        }
        Err(VhostError::Memory(format!("vring {vring} is not served")))
    }

    /// Maps the memory and builds the queue pairs from `fds` (in the order this module
    /// describes). The dataplane child does this.
    pub fn into_device(self, fds: Vec<OwnedFd>) -> Result<VhostDevice, VhostError> {
        if fds.len() != self.fd_count() {
            return Err(VhostError::Memory(format!(
                "a device of {} regions and {} queue pairs needs {} fds, got {}",
                self.regions.len(),
                self.pairs.len(),
                self.fd_count(),
                fds.len()
            )));
        }
        let mut fds = fds.into_iter();
        let mut next = || {
            fds.next()
                .ok_or_else(|| VhostError::Memory("fds ran out".into()))
        };
        let mut regions = Vec::with_capacity(self.regions.len());
        for r in &self.regions {
            regions.push(MemRegion {
                guest_addr: r.guest_addr,
                size: r.size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
                file: File::from(next()?),
            });
        }
        let mem = map_regions(&regions)?;
        let mut pairs = Vec::with_capacity(self.pairs.len());
        for p in &self.pairs {
            let kick = next()?;
            let to_guest_kick = next()?;
            let to_guest_call = if p.to_guest_call { Some(next()?) } else { None };
            let from_guest_call = if p.from_guest_call {
                Some(next()?)
            } else {
                None
            };
            pairs.push(VhostPair {
                index: p.index,
                to_guest: p.to_guest,
                to_guest_call,
                to_guest_kick,
                from_guest: p.from_guest,
                from_guest_call,
                kick,
            });
        }
        Ok(VhostDevice {
            mem,
            features: self.features,
            pairs,
        })
    }
}
