//! A small array of `AtomicU64` in memory two processes share: a memfd the supervisor creates
//! and maps, and passes to the dataplane child, which maps it too. The dataplane's workers
//! publish there the attachment id whose frames they are handling, and the supervisor reads it
//! after the child died (the pages outlive the child: the supervisor's mapping holds them).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// `len` shared `AtomicU64`s, mapped from a memfd.
pub struct SharedU64s {
    map: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only ever accessed through `&AtomicU64`, which is Sync; the pointer
// stays valid until drop, which needs ownership.
unsafe impl Send for SharedU64s {}
// SAFETY: as above: shared access is atomic loads and stores only.
unsafe impl Sync for SharedU64s {}

impl SharedU64s {
    /// Creates a memfd of `len` zeroed u64s and maps it; returns the mapping and the fd to
    /// hand to the other process (close-on-exec: it travels by SCM_RIGHTS).
    pub fn create(len: usize) -> io::Result<(SharedU64s, OwnedFd)> {
        let bytes = Self::bytes(len)?;
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
        let raw = unsafe { libc::memfd_create(c"netstack-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        nix::unistd::ftruncate(&fd, bytes as libc::off_t).map_err(io::Error::from)?;
        let map = Self::map(fd.as_raw_fd(), len)?;
        Ok((map, fd))
    }

    /// Maps a memfd [`create`](Self::create) made, of `len` u64s; fails if it is smaller.
    pub fn open(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedU64s> {
        let st = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
        if (st.st_size as u64) < Self::bytes(len)? as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("shared memory of {} bytes, {len} slots wanted", st.st_size),
            ));
        }
        Self::map(fd.as_raw_fd(), len)
    }

    fn bytes(len: usize) -> io::Result<usize> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no slots"));
        }
        len.checked_mul(8)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many slots"))
    }

    fn map(fd: i32, len: usize) -> io::Result<SharedU64s> {
        let bytes = Self::bytes(len)?;
        // SAFETY: a new shared mapping of `bytes` bytes of an fd at least that large; the
        // kernel picks the (page-aligned, so u64-aligned) address; nothing aliases it yet.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedU64s { map, len })
    }

    /// Slot `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.len {
            return None;
        }
        // SAFETY: `i` is in bounds of the live mapping, which is aligned for AtomicU64 and
        // only ever accessed atomically (here and in the other process).
        Some(unsafe { &*self.map.as_ptr().add(i) })
    }

    /// How many slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never: a mapping has at least one slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedU64s {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, of its size; `get`'s borrows end before drop.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.len * 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn two_mappings_of_one_memfd_share_their_slots() {
        let (a, fd) = SharedU64s::create(3).unwrap();
        let b = SharedU64s::open(fd.as_fd(), 3).unwrap();
        assert_eq!(b.get(2).unwrap().load(Relaxed), 0);
        a.get(2).unwrap().store(42, Relaxed);
        assert_eq!(b.get(2).unwrap().load(Relaxed), 42);
        assert!(a.get(3).is_none());
        drop(a);
        // The other mapping keeps the pages.
        assert_eq!(b.get(2).unwrap().load(Relaxed), 42);
        assert!(SharedU64s::open(fd.as_fd(), 4).is_err());
        assert!(SharedU64s::create(0).is_err());
    }
}
