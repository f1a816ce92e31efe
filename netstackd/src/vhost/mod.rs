//! vhost-user-net, the protocol side: netstackd as the backend a VMM (QEMU, Cloud Hypervisor)
//! connects to for a VM pod's virtio-net device.
//!
//! The supervisor owns each pod's server socket ([`socket::VhostSocket`]) and speaks the
//! protocol on it through the `vhost` crate's backend request handler; [`backend::NetBackend`]
//! records what the frontend negotiates — features, the memory table with its region fds, each
//! vring's size, base, addresses, kick and call eventfds, enable — so that the supervisor can
//! hand it to the dataplane child (which maps the regions and serves the virtqueues) and hand
//! it again to the next child after a restart.
//!
//! `vhost-user-backend`'s daemon (`VhostUserDaemon`) is not used: it owns the listener, the
//! guest memory and one epoll thread per queue set inside the process that speaks the
//! protocol, while here the protocol lives in the supervisor and the rings in the seccomp'd
//! child, whose existing workers poll them.

pub mod attach;
pub mod backend;
pub mod server;
#[cfg(test)]
mod server_tests;
pub mod socket;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::PathBuf;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// The virtio features netstackd offers: a modern device (`VERSION_1`, so the 12-byte header),
/// mergeable receive buffers, checksum and TSO offload both ways, event index, multiqueue (one
/// queue pair per worker), and the vhost-user protocol features.
pub const OFFERED_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_NET_F_MQ
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The vhost-user protocol features offered: multiqueue and REPLY_ACK (which the `vhost`
/// crate implements itself). INFLIGHT_SHMFD is not: QEMU's vhost-user-net never asks for an
/// inflight region (only its block and SCSI devices do), and a dataplane restart resumes each
/// ring at the used index in guest memory instead (virtio-net uses buffers in order).
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

/// The virtio-net header length with the acked `features`: 12 bytes (with `num_buffers`)
/// under `VIRTIO_F_VERSION_1` or mergeable receive buffers, else the legacy 10.
pub fn net_hdr_len(features: u64) -> usize {
    if features & (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

/// Largest ring a frontend may set (the split ring's limit).
pub const MAX_RING_SIZE: u16 = 32768;

/// Errors of the vhost-user side, each naming the socket or pod it concerns.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// Creating, binding or accepting on a pod's socket failed.
    #[error("vhost-user socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Something that is not a socket sits at the socket's path: it is left alone.
    #[error("vhost-user socket {path}: a file that is not a socket is in the way")]
    NotASocket {
        /// The socket's path.
        path: PathBuf,
    },
    /// The connection failed (the frontend left, or sent what the protocol cannot parse).
    #[error("vhost-user connection of pod {pod}: {source}")]
    Connection {
        /// The pod (container id) the socket belongs to.
        pod: String,
        /// What the `vhost` crate reported.
        source: vhost::vhost_user::Error,
    },
    /// A memory table the frontend sent cannot be mapped.
    #[error("guest memory: {0}")]
    Memory(String),
}

/// One guest memory region as the frontend described it, with the fd that backs it.
#[derive(Debug)]
pub struct MemRegion {
    /// Guest physical address of its first byte.
    pub guest_addr: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Where the frontend mapped it in its own address space (ring addresses use these).
    pub user_addr: u64,
    /// Offset of the region in `file`.
    pub mmap_offset: u64,
    /// The memory (a memfd, hugetlbfs or shm file).
    pub file: File,
}

impl MemRegion {
    /// The guest physical address of frontend address `user`, when `len` bytes from it lie
    /// inside this region.
    pub fn translate(&self, user: u64, len: u64) -> Option<u64> {
        let off = user.checked_sub(self.user_addr)?;
        (off.checked_add(len)? <= self.size).then(|| self.guest_addr + off)
    }
}

/// Checks that every region of a memory table lies inside its file (`fstat`): an access past
/// the end of the file would be SIGBUS. The supervisor checks this when the table arrives;
/// the dataplane, whose seccomp filter has no `fstat`, relies on that.
pub fn check_region_files(regions: &[MemRegion]) -> Result<(), VhostError> {
    for r in regions {
        let file_len = r
            .file
            .metadata()
            .map_err(|e| VhostError::Memory(format!("fstat of a region's fd: {e}")))?
            .len();
        if r.mmap_offset
            .checked_add(r.size)
            .is_none_or(|end| end > file_len)
        {
            return Err(VhostError::Memory(format!(
                "region at guest {:#x} ({} bytes at offset {}) is past the end of its file ({} bytes)",
                r.guest_addr, r.size, r.mmap_offset, file_len
            )));
        }
    }
    Ok(())
}

/// Checks the shape of a memory table: not empty, every region non-empty with no address
/// overflowing, no two overlapping in guest addresses or in the frontend's addresses.
pub fn check_regions(regions: &[MemRegion]) -> Result<(), VhostError> {
    if regions.is_empty() {
        return Err(VhostError::Memory("an empty memory table".into()));
    }
    for r in regions {
        let fits = r.size > 0
            && r.guest_addr.checked_add(r.size).is_some()
            && r.user_addr.checked_add(r.size).is_some()
            && r.mmap_offset.checked_add(r.size).is_some();
        if !fits {
            return Err(VhostError::Memory(format!(
                "region at guest {:#x} of {} bytes overflows",
                r.guest_addr, r.size
            )));
        }
    }
    for (i, a) in regions.iter().enumerate() {
        for b in &regions[i + 1..] {
            let overlap = |x: u64, y: u64| x < y + b.size && y < x + a.size;
            if overlap(a.guest_addr, b.guest_addr) {
                return Err(VhostError::Memory(format!(
                    "regions at guest {:#x} and {:#x} overlap",
                    a.guest_addr, b.guest_addr
                )));
            }
            if overlap(a.user_addr, b.user_addr) {
                return Err(VhostError::Memory(format!(
                    "regions at frontend address {:#x} and {:#x} overlap",
                    a.user_addr, b.user_addr
                )));
            }
        }
    }
    Ok(())
}

/// Maps `regions` (shared, read-write) as the guest memory `vm-memory` bounds every access
/// to, once [`check_regions`] accepts them (the supervisor has run [`check_region_files`]).
/// The dataplane does this; the supervisor never maps guest memory. Its only syscalls are
/// `fcntl` (a dup of each fd) and `mmap` (shared, never executable): both pass the
/// dataplane's seccomp filter.
pub fn map_regions(regions: &[MemRegion]) -> Result<GuestMemoryMmap, VhostError> {
    check_regions(regions)?;
    let mut ranges = Vec::with_capacity(regions.len());
    for r in regions {
        let size = usize::try_from(r.size)
            .map_err(|_| VhostError::Memory(format!("region of {} bytes", r.size)))?;
        let file = r
            .file
            .try_clone()
            .map_err(|e| VhostError::Memory(format!("dup of a region's fd: {e}")))?;
        ranges.push((
            GuestAddress(r.guest_addr),
            size,
            Some(FileOffset::new(file, r.mmap_offset)),
        ));
    }
    ranges.sort_by_key(|r| r.0);
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| VhostError::Memory(e.to_string()))
}
