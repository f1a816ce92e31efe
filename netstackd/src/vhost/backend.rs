//! The vhost-user-net request handler of one pod: what the frontend negotiates, recorded for
//! the dataplane, and every message checked before it is recorded (a vring index beyond the
//! queues, a ring size that is not a power of two, a memory table whose regions overlap or
//! run past their file, ring addresses outside it). A refused message gets a NACK (with
//! REPLY_ACK) and a WARN line and changes nothing; the connection stays, except for a
//! refused GET_VRING_BASE, which has no NACK: the connection ends rather than leave the
//! frontend waiting for a reply.
//!
//! The supervisor never maps guest memory: it checks the table from each fd's size, and reads
//! the one value it needs from guest memory (a used index) with `pread`, so a frontend that
//! shrinks its memory file can make a read fail here but never raise SIGBUS in the process
//! that keeps every pod's fds.
//!
//! The `vhost` crate's `BackendReqHandler` parses the messages and calls this through its
//! `VhostUserBackendReqHandlerMut` trait.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;

use crate::dataplane::virtq::RingConfig;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::{
    check_region_files, check_regions, offered_protocol_features, MemRegion, MAX_RING_SIZE,
    OFFERED_FEATURES,
};

/// A vring's addresses as the frontend gave them: in the frontend's own address space (the
/// `user_addr` side of the memory table), translated to guest addresses by
/// [`NetBackend::ring_guest_addrs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringAddrs {
    /// The descriptor table.
    pub desc: u64,
    /// The available ring (driver area).
    pub avail: u64,
    /// The used ring (device area).
    pub used: u64,
}

/// A vring's addresses in guest physical memory, ready for a `virtio_queue::Queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringGuestAddrs {
    /// The descriptor table.
    pub desc: u64,
    /// The available ring.
    pub avail: u64,
    /// The used ring.
    pub used: u64,
}

/// What the frontend set for one vring.
#[derive(Debug, Default)]
pub struct VringState {
    /// Its size in descriptors (0: not set yet).
    pub num: u16,
    /// The index to start at (`SET_VRING_BASE`): the next available entry to read.
    pub base: u16,
    /// Its addresses, once set.
    pub addrs: Option<VringAddrs>,
    /// The eventfd the guest kicks when it adds buffers.
    pub kick: Option<File>,
    /// The eventfd that interrupts the guest.
    pub call: Option<File>,
    /// The eventfd to signal when the ring fails.
    pub err: Option<File>,
    /// Enabled (`SET_VRING_ENABLE`; enabled from the start without protocol features).
    pub enabled: bool,
    /// Started by its kick fd and not stopped since by `GET_VRING_BASE`.
    pub started: bool,
    /// `base` was set and no dataplane has been given the ring since: the next one starts
    /// there; otherwise it resumes at the used index in guest memory.
    pub base_pending: bool,
}

/// The backend state of one pod's vhost-user-net device.
#[derive(Debug)]
pub struct NetBackend {
    pod: String,
    owner: bool,
    features: u64,
    protocol_features: u64,
    regions: Vec<MemRegion>,
    vrings: Vec<VringState>,
    refused: u64,
    /// Refusals that end the connection (the request has no NACK).
    fatal: u64,
    /// Called before a request that stops or changes what a running dataplane serves.
    on_stop: Option<StopHook>,
}

/// What the supervisor runs before a request stops or changes a ring the dataplane may be
/// serving (`GET_VRING_BASE`, a new memory table, a reset, a ring's new size, base,
/// addresses or eventfds, a disable): take the pod away from the dataplane first.
pub struct StopHook(pub Box<dyn FnMut() + Send>);

impl std::fmt::Debug for StopHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopHook")
    }
}

impl NetBackend {
    /// A device for pod `pod` (its container id, for log lines) with `queue_pairs` queue pairs
    /// (one per worker): 2 × `queue_pairs` vrings, receive queues even, transmit odd.
    pub fn new(pod: &str, queue_pairs: usize) -> Self {
        NetBackend {
            pod: pod.to_string(),
            owner: false,
            features: 0,
            protocol_features: 0,
            regions: Vec::new(),
            vrings: (0..2 * queue_pairs.max(1))
                .map(|_| VringState::default())
                .collect(),
            refused: 0,
            fatal: 0,
            on_stop: None,
        }
    }

    /// Runs `hook` before every request that stops or changes a ring ([`StopHook`]).
    pub fn set_stop_hook(&mut self, hook: Box<dyn FnMut() + Send>) {
        self.on_stop = Some(StopHook(hook));
    }

    fn stop(&mut self) {
        if let Some(StopHook(hook)) = &mut self.on_stop {
            hook();
        }
    }

    /// A dataplane was given the rings: a later one resumes them at the used index.
    pub fn mark_attached(&mut self) {
        for v in &mut self.vrings {
            v.base_pending = false;
        }
    }

    /// The device as the dataplane serves it, once its first `pairs` queue pairs are complete
    /// (size, addresses inside the memory table, kick eventfd, enabled): the description and
    /// duplicates of the fds it names (`super::attach`). `None` while something is missing.
    pub fn attach_state(
        &self,
        pairs: usize,
    ) -> Option<std::io::Result<(super::attach::VhostAttach, Vec<std::os::fd::OwnedFd>)>> {
        use super::attach::{PairDesc, RegionDesc, VhostAttach};
        if self.regions.is_empty() || pairs == 0 || 2 * pairs > self.vrings.len() {
            return None;
        }
        let ready = |i: usize| {
            let v = &self.vrings[i];
            v.enabled && v.started && v.kick.is_some()
        };
        let mut descs = Vec::with_capacity(pairs);
        for p in 0..pairs {
            let (rx, tx) = (2 * p, 2 * p + 1);
            if !ready(rx) || !ready(tx) {
                return None;
            }
            let config = |i: usize| {
                let mut c = self.ring_config(i)?;
                if !self.vrings[i].base_pending {
                    c.base = None;
                }
                Some(c)
            };
            descs.push(PairDesc {
                to_guest: config(rx)?,
                to_guest_call: self.vrings[rx].call.is_some(),
                from_guest: config(tx)?,
                from_guest_call: self.vrings[tx].call.is_some(),
            });
        }
        let fds = (|| {
            let mut fds = Vec::new();
            for r in &self.regions {
                fds.push(std::os::fd::OwnedFd::from(r.file.try_clone()?));
            }
            for p in 0..pairs {
                let (rx, tx) = (&self.vrings[2 * p], &self.vrings[2 * p + 1]);
                let files = [tx.kick.as_ref(), rx.call.as_ref(), tx.call.as_ref()];
                for f in files.into_iter().flatten() {
                    fds.push(std::os::fd::OwnedFd::from(f.try_clone()?));
                }
            }
            Ok(fds)
        })();
        let device = VhostAttach {
            features: self.features,
            regions: self
                .regions
                .iter()
                .map(|r| RegionDesc {
                    guest_addr: r.guest_addr,
                    size: r.size,
                    user_addr: r.user_addr,
                    mmap_offset: r.mmap_offset,
                })
                .collect(),
            pairs: descs,
        };
        Some(fds.map(|fds| (device, fds)))
    }

    /// The virtio features the frontend acked.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The vhost-user protocol features the frontend acked.
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
    }

    /// Whether a frontend took ownership (`SET_OWNER`).
    pub fn owned(&self) -> bool {
        self.owner
    }

    /// The memory table.
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions
    }

    /// The vrings, by index.
    pub fn vrings(&self) -> &[VringState] {
        &self.vrings
    }

    /// How many messages were refused on this device.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// How many refusals ended the connection.
    pub fn fatal(&self) -> u64 {
        self.fatal
    }

    /// The guest addresses of vring `index`'s three parts, when its size and addresses are set
    /// and each part lies whole inside one region of the memory table.
    pub fn ring_guest_addrs(&self, index: usize) -> Option<VringGuestAddrs> {
        let v = self.vrings.get(index)?;
        let a = v.addrs?;
        if v.num == 0 {
            return None;
        }
        let (desc_len, avail_len, used_len) = ring_part_lens(v.num);
        Some(VringGuestAddrs {
            desc: self.translate(a.desc, desc_len)?,
            avail: self.translate(a.avail, avail_len)?,
            used: self.translate(a.used, used_len)?,
        })
    }

    /// Vring `index` as the dataplane builds its queue (`crate::dataplane::virtq::Virtq`):
    /// size, guest addresses, event index as acked, and the base the frontend set.
    pub fn ring_config(&self, index: usize) -> Option<RingConfig> {
        let g = self.ring_guest_addrs(index)?;
        let v = &self.vrings[index];
        Some(RingConfig {
            size: v.num,
            desc: g.desc,
            avail: g.avail,
            used: g.used,
            event_idx: self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
            base: Some(v.base),
        })
    }

    /// Duplicates of the memory table's regions and fds, for a dataplane to map
    /// (`super::map_regions`): the supervisor keeps its own for the next one.
    pub fn dup_regions(&self) -> std::io::Result<Vec<MemRegion>> {
        self.regions
            .iter()
            .map(|r| {
                Ok(MemRegion {
                    guest_addr: r.guest_addr,
                    size: r.size,
                    user_addr: r.user_addr,
                    mmap_offset: r.mmap_offset,
                    file: r.file.try_clone()?,
                })
            })
            .collect()
    }

    fn translate(&self, user: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| r.translate(user, len))
    }

    /// Reads the little-endian u16 at guest address `gpa` from its region's file.
    fn read_guest_u16(&self, gpa: u64) -> Option<u16> {
        let r = self
            .regions
            .iter()
            .find(|r| gpa >= r.guest_addr && gpa - r.guest_addr + 2 <= r.size)?;
        let mut b = [0u8; 2];
        let at = r.mmap_offset.checked_add(gpa - r.guest_addr)?;
        r.file.read_exact_at(&mut b, at).ok()?;
        Some(u16::from_le_bytes(b))
    }

    /// Logs and counts a refused message; the error the `vhost` crate NACKs it with.
    fn refuse(&mut self, what: std::fmt::Arguments<'_>) -> Error {
        self.refused += 1;
        tracing::warn!(container_id = %self.pod, "vhost-user message refused: {what}");
        Error::InvalidParam
    }

    fn vring_mut(&mut self, index: u32, what: &str) -> Result<&mut VringState> {
        let count = self.vrings.len();
        if usize::try_from(index).is_ok_and(|i| i < count) {
            Ok(&mut self.vrings[index as usize])
        } else {
            Err(self.refuse(format_args!(
                "{what}: vring {index} beyond the {count} queues"
            )))
        }
    }

    fn unsupported(&mut self, what: &'static str) -> Error {
        self.refused += 1;
        tracing::warn!(container_id = %self.pod, "vhost-user request not supported: {what}");
        Error::InvalidOperation("not supported by netstackd")
    }
}

/// Bytes of a split ring's descriptor table, available ring and used ring for `num` entries
/// (with the event-index fields).
pub fn ring_part_lens(num: u16) -> (u64, u64, u64) {
    let n = u64::from(num);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

impl VhostUserBackendReqHandlerMut for NetBackend {
    fn set_owner(&mut self) -> Result<()> {
        self.owner = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.stop();
        let queues = self.vrings.len() / 2;
        let on_stop = self.on_stop.take();
        *self = NetBackend {
            refused: self.refused,
            on_stop,
            ..NetBackend::new(&self.pod, queues)
        };
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        self.stop();
        self.features = 0;
        for v in &mut self.vrings {
            *v = VringState::default();
        }
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(OFFERED_FEATURES)
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        self.stop();
        if features & !OFFERED_FEATURES != 0 {
            return Err(self.refuse(format_args!(
                "features {features:#x} include some never offered ({:#x})",
                features & !OFFERED_FEATURES
            )));
        }
        self.features = features;
        // Without protocol features every ring is enabled from now on; with them a ring keeps
        // what SET_VRING_ENABLE said (disabled until then). A SET_FEATURES never disables one
        // (the vhost-user spec): QEMU's vhost-user-net enables its rings when the guest driver
        // sets its features, which comes before it starts the device with SET_FEATURES.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for v in &mut self.vrings {
                v.enabled = true;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.stop();
        if ctx.len() != files.len() {
            return Err(self.refuse(format_args!(
                "memory table of {} regions with {} fds",
                ctx.len(),
                files.len()
            )));
        }
        let regions: Vec<MemRegion> = ctx
            .iter()
            .zip(files)
            .map(|(r, file)| MemRegion {
                guest_addr: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
                file,
            })
            .collect();
        if let Err(e) = check_regions(&regions).and_then(|()| check_region_files(&regions)) {
            return Err(self.refuse(format_args!("memory table: {e}")));
        }
        self.regions = regions;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        self.stop();
        let ok = u16::try_from(num)
            .ok()
            .filter(|n| n.is_power_of_two() && *n <= MAX_RING_SIZE);
        let Some(num) = ok else {
            return Err(self.refuse(format_args!("vring {index}: size {num}")));
        };
        self.vring_mut(index, "SET_VRING_NUM")?.num = num;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        self.stop();
        let v = self.vring_mut(index, "SET_VRING_ADDR")?;
        let previous = v.addrs.replace(VringAddrs {
            desc: descriptor,
            avail: available,
            used,
        });
        if v.num != 0 && !self.regions.is_empty() && self.ring_guest_addrs(index as usize).is_none()
        {
            self.vrings[index as usize].addrs = previous;
            return Err(self.refuse(format_args!(
                "vring {index}: addresses desc {descriptor:#x} avail {available:#x} used {used:#x} \
                 are not inside the memory table"
            )));
        }
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.stop();
        let Ok(base) = u16::try_from(base) else {
            return Err(self.refuse(format_args!("vring {index}: base {base}")));
        };
        let v = self.vring_mut(index, "SET_VRING_BASE")?;
        v.base = base;
        v.base_pending = true;
        Ok(())
    }

    /// Stops the ring and says where it stopped: the used index in guest memory, which is the
    /// next available entry to read when every buffer taken was used (virtio-net uses them
    /// in order, and the dataplane finishes a buffer before it takes the next).
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        // The dataplane lets go of the rings before the used index is read.
        self.stop();
        let used_idx = self
            .ring_guest_addrs(index as usize)
            .and_then(|g| self.read_guest_u16(g.used + 2));
        let v = match self.vring_mut(index, "GET_VRING_BASE") {
            Ok(v) => v,
            Err(e) => {
                // No NACK exists for a request with a reply: end the connection.
                self.fatal += 1;
                return Err(e);
            }
        };
        v.started = false;
        v.kick = None;
        let next = used_idx.unwrap_or(v.base);
        v.base = next;
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.stop();
        let v = self.vring_mut(u32::from(index), "SET_VRING_KICK")?;
        v.started = fd.is_some();
        v.kick = fd;
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.stop();
        self.vring_mut(u32::from(index), "SET_VRING_CALL")?.call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring_mut(u32::from(index), "SET_VRING_ERR")?.err = fd;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(offered_protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let offered = offered_protocol_features().bits();
        if features & !offered != 0 {
            return Err(self.refuse(format_args!(
                "protocol features {features:#x} include some never offered"
            )));
        }
        self.protocol_features = features;
        Ok(())
    }

    /// The number of virtqueues (two per queue pair), as libvhost-user and Cloud Hypervisor
    /// count them.
    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        if !enable {
            self.stop();
        }
        self.vring_mut(index, "SET_VRING_ENABLE")?.enabled = enable;
        Ok(())
    }

    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
        Err(self.unsupported("GET_CONFIG"))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> Result<()> {
        Err(self.unsupported("SET_CONFIG"))
    }

    fn set_gpu_socket(&mut self, _: GpuBackend) -> Result<()> {
        Err(self.unsupported("GPU_SET_SOCKET"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> Result<File> {
        Err(self.unsupported("GET_SHARED_OBJECT"))
    }

    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        Err(self.unsupported("GET_INFLIGHT_FD"))
    }

    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> Result<()> {
        Err(self.unsupported("SET_INFLIGHT_FD"))
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Err(self.unsupported("GET_MAX_MEM_SLOTS"))
    }

    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        Err(self.unsupported("ADD_MEM_REG"))
    }

    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(self.unsupported("REM_MEM_REG"))
    }

    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> Result<Option<File>> {
        Err(self.unsupported("SET_DEVICE_STATE_FD"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(self.unsupported("CHECK_DEVICE_STATE"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(self.unsupported("GET_SHMEM_CONFIG"))
    }

    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> Result<()> {
        Err(self.unsupported("SET_LOG_BASE"))
    }
}
