//! Packet sockets for `pkt-fwd`, as safe wrappers: sockets with netstackd's veth-mode options,
//! `recvmmsg`/`sendmmsg` batches with a virtio-net header in front of each frame, and a
//! `TPACKET_V2` receive ring. Every `unsafe` block of `pkt-fwd` is here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Bytes of `struct virtio_net_hdr` (`PACKET_VNET_HDR`).
pub const VNET_LEN: usize = 10;
/// Most frames one receive or send moves.
pub const BATCH: usize = 32;
/// Bytes of one ring frame: its `tpacket2_hdr`, the virtio-net header, a 64 KiB IP packet and
/// its Ethernet header, page-rounded.
const RING_FRAME: usize = 17 * 4096;
/// Bytes of one ring block: the kernel allocates blocks as power-of-two runs of pages.
const RING_BLOCK: usize = 2 << 20;

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of the given size for the call; the kernel only
    // reads it. `fd` is borrowed, so it stays open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A non-blocking packet socket bound to `ifname`, with a virtio-net header on every frame,
/// no qdisc on transmit, blind to its own transmissions, 4 MiB buffers.
pub fn open(ifname: &str) -> io::Result<OwnedFd> {
    let name = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a NUL-terminated string that lives for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) takes no pointers.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor socket(2) just returned, owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let b = fd_borrow(&fd);
    let one: libc::c_int = 1;
    setsockopt(b, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one)?;
    setsockopt(b, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)?;
    setsockopt(b, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)?;
    let size: libc::c_int = 4 << 20;
    setsockopt(b, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size)?;
    setsockopt(b, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &size)?;
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = index as libc::c_int;
    // SAFETY: the address is `addr` on our stack with its true size; bind only reads it.
    let rc = unsafe {
        libc::bind(
            b.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn fd_borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(fd)
}

/// One non-blocking `recvmmsg` (or `sendmmsg` when `send`) of the messages whose two parts
/// (header, frame) are `iov`; returns each message's length.
fn mmsg(fd: BorrowedFd<'_>, iov: &mut [[libc::iovec; 2]], send: bool) -> io::Result<Vec<usize>> {
    let n = iov.len().min(BATCH);
    // SAFETY: mmsghdr is plain old data; all zeroes (null pointers) is a valid value.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
        m.msg_hdr.msg_iov = v.as_mut_ptr();
        m.msg_hdr.msg_iovlen = 2;
    }
    let (fd, ptr, len) = (fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint);
    let got = if send {
        // SAFETY: the first `n` messages point at `iov`, which point at the callers' frames,
        // alive for the call; sendmmsg only reads them. The socket is bound.
        unsafe { libc::sendmmsg(fd, ptr, len, libc::MSG_DONTWAIT) }
    } else {
        // SAFETY: the first `n` messages point at `iov`, which point at the caller's buffers,
        // borrowed mutably for the call, with their true lengths; the kernel writes within.
        unsafe { libc::recvmmsg(fd, ptr, len, libc::MSG_DONTWAIT, std::ptr::null_mut()) }
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(msgs[..got as usize]
        .iter()
        .map(|m| m.msg_len as usize)
        .collect())
}

fn iovec(ptr: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: ptr.cast_mut().cast(),
        iov_len: len,
    }
}

/// Receives up to [`BATCH`] frames with one non-blocking `recvmmsg`, frame *i* into
/// `vnets[i]` and `bufs[i]`; returns each frame's length (without the header).
pub fn recv_batch(
    fd: BorrowedFd<'_>,
    vnets: &mut [[u8; VNET_LEN]],
    bufs: &mut [Vec<u8>],
) -> io::Result<Vec<usize>> {
    let mut iov: Vec<[libc::iovec; 2]> = vnets
        .iter_mut()
        .zip(bufs.iter_mut())
        .map(|(v, b)| {
            [
                iovec(v.as_mut_ptr(), VNET_LEN),
                iovec(b.as_mut_ptr(), b.len()),
            ]
        })
        .collect();
    let lens = mmsg(fd, &mut iov, false)?;
    Ok(lens.iter().map(|l| l.saturating_sub(VNET_LEN)).collect())
}

/// Sends up to [`BATCH`] of `frames` (header, frame) with one `sendmmsg`; returns how many
/// went out.
pub fn send_batch(fd: BorrowedFd<'_>, frames: &[Frame<'_>]) -> io::Result<usize> {
    let mut iov: Vec<[libc::iovec; 2]> = frames
        .iter()
        .map(|(v, f)| [iovec(v.as_ptr(), VNET_LEN), iovec(f.as_ptr(), f.len())])
        .collect();
    Ok(mmsg(fd, &mut iov, true)?.len())
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<()> {
    let mut pfds: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let ms =
        PollTimeout::try_from(timeout.as_millis().min(10_000) as i32).unwrap_or(PollTimeout::NONE);
    match poll(&mut pfds, ms) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// User plus system CPU time this process has used, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into `ru`, which lives on our stack for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A frame in a ring: its virtio-net header and its bytes.
pub type Frame<'a> = (&'a [u8; VNET_LEN], &'a [u8]);

/// A `TPACKET_V2` receive ring mapped from a packet socket: frames the kernel filled are
/// read in place, in ring order, and handed back with [`RxRing::release`].
pub struct RxRing {
    map: *mut u8,
    len: usize,
    frame_nr: usize,
    next: usize,
}

impl RxRing {
    /// Sets up a ring of `blocks` blocks of [`RING_BLOCK`] bytes on `fd` (which must have its
    /// virtio-net header option set already) and maps it.
    pub fn new(fd: BorrowedFd<'_>, blocks: usize) -> io::Result<RxRing> {
        let version: libc::c_int = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let per_block = RING_BLOCK / RING_FRAME;
        let req = libc::tpacket_req {
            tp_block_size: RING_BLOCK as libc::c_uint,
            tp_block_nr: blocks as libc::c_uint,
            tp_frame_size: RING_FRAME as libc::c_uint,
            tp_frame_nr: (blocks * per_block) as libc::c_uint,
        };
        setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let len = RING_BLOCK * blocks;
        // SAFETY: a fresh shared mapping of the socket's ring, of the size the kernel set up
        // for it; nothing else in this process refers to that address range.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            map: map.cast(),
            len,
            frame_nr: blocks * per_block,
            next: 0,
        })
    }

    /// Frames in the ring.
    pub fn frames(&self) -> usize {
        self.frame_nr
    }

    /// Kernel memory the ring pins.
    pub fn kernel_bytes(&self) -> usize {
        self.len
    }

    /// Address of ring frame `i` (frames never straddle blocks: a block holds a whole number).
    fn frame_ptr(&self, i: usize) -> *mut u8 {
        let per_block = RING_BLOCK / RING_FRAME;
        let offset = (i / per_block) * RING_BLOCK + (i % per_block) * RING_FRAME;
        // SAFETY: `offset` is inside the mapping: i < frame_nr = blocks * per_block.
        unsafe { self.map.add(offset) }
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the frame starts with `tp_status`, a u32 the kernel and we both update; the
        // frame is 4-byte aligned (page-aligned blocks, page-multiple frames), and the mapping
        // lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.frame_ptr(i).cast()) }
    }

    /// Up to `max` filled frames from the next one on, in ring order: (header, frame), and how
    /// many ring frames that took (a frame cut short is skipped, not forwarded).
    pub fn ready(&self, max: usize) -> (Vec<Frame<'_>>, usize) {
        let mut out = Vec::with_capacity(max);
        let mut taken = 0;
        for k in 0..max.min(self.frame_nr) {
            let i = (self.next + k) % self.frame_nr;
            if self.status(i).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                break;
            }
            let base = self.frame_ptr(i);
            taken += 1;
            // SAFETY: the kernel filled this frame (TP_STATUS_USER, read with acquire above)
            // and leaves it alone until `release`; it starts with a tpacket2_hdr, and the
            // frame data lies at tp_mac with the virtio-net header just before it; the bounds
            // are checked against the ring frame before any slice is made. The borrow of `self` keeps
            // the mapping alive and `release` (which takes `&mut self`) away.
            let frame = unsafe {
                let h = &*(base as *const libc::tpacket2_hdr);
                let (mac, len) = (h.tp_mac as usize, h.tp_snaplen as usize);
                let whole = mac >= VNET_LEN + size_of::<libc::tpacket2_hdr>()
                    && mac + len <= RING_FRAME
                    && len == h.tp_len as usize;
                whole.then(|| {
                    let vnet = &*(base.add(mac - VNET_LEN) as *const [u8; VNET_LEN]);
                    (vnet, std::slice::from_raw_parts(base.add(mac), len))
                })
            };
            out.extend(frame);
        }
        (out, taken)
    }

    /// Hands the next `n` frames back to the kernel.
    pub fn release(&mut self, n: usize) {
        for _ in 0..n {
            self.status(self.next)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.next = (self.next + 1) % self.frame_nr;
        }
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: `map`/`len` are the mapping `new` made; nothing borrows it any more.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}
