//! AF_PACKET sockets on a veth peer, for veth mode.
//!
//! [`open_fanout_sockets`] opens one `SOCK_RAW` packet socket per worker on one device, each
//! with a virtio-net header in front of every frame (`PACKET_VNET_HDR`, the 10-byte
//! `struct virtio_net_hdr`: the same [`VNET_HDR_LEN`] the TAPs are set to, so
//! `sys::tap::read_frame`/`write_frame` work on these sockets unchanged), joined in one
//! `PACKET_FANOUT_HASH` group so a flow always reaches the same worker, transmitting straight
//! to the driver (`PACKET_QDISC_BYPASS`: netstackd's own fifo queues replace the qdisc) and
//! blind to their own transmissions (`PACKET_IGNORE_OUTGOING`). [`recv_frames`] and
//! [`send_frames`] move up to [`MMSG_BATCH`] frames per system call (`recvmmsg`/`sendmmsg`).
//!
//! With `--veth-rx ring`, each socket receives through a `TPACKET_V2` ring instead
//! ([`set_rx_ring`] in the supervisor, [`RxRing`] in the dataplane): the kernel copies each
//! frame into the ring in the sender's context, and the worker takes it from there without a
//! system call. Every ring frame holds a whole 64 KiB GSO frame, so a ring pins
//! [`RING_BYTES`] of kernel memory per socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;

use super::tap::{read_frame, RxFrame, VNET_HDR_LEN};
use super::SysError;

/// `ETH_P_ALL`: every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// Receive and send buffer size of each socket, in bytes: a few dozen 64 KB GSO frames, so
/// a burst from the pod is not lost while the worker is busy.
pub const SOCKET_BUFFER_BYTES: libc::c_int = 4 << 20;

/// Most frames one [`recv_frames`] or [`send_frames`] call moves.
pub const MMSG_BATCH: usize = 32;

/// The largest MTU a veth takes (`ETH_MAX_MTU`); a larger one fails with `EINVAL`.
pub const VETH_MAX_MTU: u32 = 65535;

fn packet_err(ifindex: u32, op: &'static str, source: Errno) -> SysError {
    SysError::Packet {
        ifindex,
        op,
        source,
    }
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> nix::Result<()> {
    // SAFETY: the option value is one int that lives on our stack for the call, and its size
    // is passed alongside; `fd` is borrowed, so it stays open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> nix::Result<u32> {
    let mut value: libc::c_uint = 0;
    let mut len = size_of::<libc::c_uint>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes (one uint) into `value`, which lives on
    // our stack for the call, and updates `len`; `fd` stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_uint).cast(),
            &mut len,
        )
    };
    Errno::result(rc).map(|_| value)
}

/// A new packet socket: non-blocking, close-on-exec, protocol 0 (it receives nothing until
/// it is bound).
fn packet_socket() -> nix::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; on success it returns a fresh descriptor that
    // nothing else owns, which OwnedFd then owns.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    Errno::result(fd)?;
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds a packet socket to every protocol on device `ifindex`.
fn bind_to_device(fd: BorrowedFd<'_>, ifindex: u32) -> nix::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = libc::c_int::try_from(ifindex).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the address points at `addr` on our stack, with its true size; bind only
    // reads it during the call. `fd` stays open for the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

/// Opens `count` packet sockets on device `ifindex` of the calling thread's network
/// namespace (see the module comment for their options), in one fanout group of their own.
///
/// A socket receives frames from the moment it is bound until it joins the group, so each
/// is drained after joining: no frame is read twice, one that arrived during setup is lost
/// (as it would have been a moment earlier, with no socket at all).
pub fn open_fanout_sockets(ifindex: u32, count: usize) -> Result<Vec<OwnedFd>, SysError> {
    let err = |op, e| packet_err(ifindex, op, e);
    let mut fds = Vec::with_capacity(count);
    let mut group: Option<u32> = None;
    for _ in 0..count {
        let fd = packet_socket().map_err(|e| err("socket(AF_PACKET)", e))?;
        let b = fd.as_fd();
        setsockopt_int(b, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
            .map_err(|e| err("PACKET_VNET_HDR", e))?;
        setsockopt_int(b, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)
            .map_err(|e| err("PACKET_QDISC_BYPASS", e))?;
        setsockopt_int(b, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .map_err(|e| err("PACKET_IGNORE_OUTGOING", e))?;
        setsockopt_int(
            b,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            SOCKET_BUFFER_BYTES,
        )
        .map_err(|e| err("SO_RCVBUFFORCE", e))?;
        setsockopt_int(
            b,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SOCKET_BUFFER_BYTES,
        )
        .map_err(|e| err("SO_SNDBUFFORCE", e))?;
        bind_to_device(b, ifindex).map_err(|e| err("bind", e))?;
        let arg = match group {
            // The first socket asks the kernel for a group id no one else uses.
            None => (libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16,
            Some(id) => (libc::PACKET_FANOUT_HASH << 16) | id,
        };
        setsockopt_int(b, libc::SOL_PACKET, libc::PACKET_FANOUT, arg as libc::c_int)
            .map_err(|e| err("PACKET_FANOUT", e))?;
        if group.is_none() {
            let joined = getsockopt_int(b, libc::SOL_PACKET, libc::PACKET_FANOUT)
                .map_err(|e| err("getsockopt(PACKET_FANOUT)", e))?;
            group = Some(joined & 0xffff);
        }
        drain(b);
        fds.push(fd);
    }
    Ok(fds)
}

/// The fanout group id and mode (`PACKET_FANOUT_*`) of a packet socket. A socket in no group
/// reads as `(0, 0)`, like one in group 0 in hash mode (the kernel's first unique id is 0).
pub fn fanout_group(fd: BorrowedFd<'_>) -> Result<(u16, u8), SysError> {
    let v = getsockopt_int(fd, libc::SOL_PACKET, libc::PACKET_FANOUT)
        .map_err(|e| packet_err(0, "getsockopt(PACKET_FANOUT)", e))?;
    Ok(((v & 0xffff) as u16, ((v >> 16) & 0xff) as u8))
}

/// The iovecs and message headers of one `recvmmsg`/`sendmmsg` call: up to [`MMSG_BATCH`]
/// messages of two parts each, a virtio-net header and a frame. Lives on the caller's stack.
struct MmsgBatch {
    iov: [[libc::iovec; 2]; MMSG_BATCH],
    msgs: [libc::mmsghdr; MMSG_BATCH],
    count: usize,
}

impl MmsgBatch {
    fn new() -> Self {
        MmsgBatch {
            // SAFETY: iovec is plain old data (a pointer and a length); all zeroes is valid.
            iov: unsafe { std::mem::zeroed() },
            // SAFETY: mmsghdr is plain old data; all zeroes (null pointers) is valid.
            msgs: unsafe { std::mem::zeroed() },
            count: 0,
        }
    }

    /// Adds a message of `vnet_len` bytes at `vnet` and `frame_len` at `frame`; false when
    /// the batch is full.
    fn push(&mut self, vnet: *mut u8, vnet_len: usize, frame: *mut u8, frame_len: usize) -> bool {
        let Some(slot) = self.iov.get_mut(self.count) else {
            return false;
        };
        *slot = [
            libc::iovec {
                iov_base: vnet.cast(),
                iov_len: vnet_len,
            },
            libc::iovec {
                iov_base: frame.cast(),
                iov_len: frame_len,
            },
        ];
        self.count += 1;
        true
    }

    /// Points each message header at its iovecs, now that the batch stays where it is.
    fn link(&mut self) {
        for (m, v) in self
            .msgs
            .iter_mut()
            .zip(self.iov.iter_mut())
            .take(self.count)
        {
            m.msg_hdr.msg_iov = v.as_mut_ptr();
            m.msg_hdr.msg_iovlen = 2;
        }
    }
}

/// The length decision of [`recv_frames`] for one message, on its own: `msg_len` is the
/// bytes `recvmmsg` reported (header included), `msg_flags` the message's flags, `buf_len` the
/// size of its frame buffer.
///
/// A packet socket cuts a frame longer than the buffer, reports the bytes it copied and sets
/// `MSG_TRUNC` in the message's flags: that frame is [`RxFrame::Oversize`], as is a length
/// beyond the buffer (which no kernel reports today). Unlike a TAP read, a frame that fills
/// its buffer exactly is whole.
pub fn mmsg_rx_len(msg_len: usize, msg_flags: libc::c_int, buf_len: usize) -> RxFrame {
    match msg_len.checked_sub(VNET_HDR_LEN) {
        None => RxFrame::Malformed,
        Some(len) if len > buf_len || msg_flags & libc::MSG_TRUNC != 0 => RxFrame::Oversize,
        Some(len) => RxFrame::Whole(len),
    }
}

/// Receives up to [`MMSG_BATCH`] frames with one non-blocking `recvmmsg`: frame *i* goes to
/// the *i*-th `(header, buffer)` pair of `bufs` (virtio-net header, then the frame), and
/// `lens[i]` says what came ([`mmsg_rx_len`]): a whole frame of `n` bytes after the header, a
/// frame the kernel cut to fit its buffer ([`RxFrame::Oversize`]), or one shorter than the
/// header (which a packet socket with `PACKET_VNET_HDR` never delivers). Returns how many
/// frames came; an empty socket gives `ErrorKind::WouldBlock`. The buffers should hold the
/// largest frame the device emits. Allocates nothing.
pub fn recv_frames<'a>(
    fd: BorrowedFd<'_>,
    bufs: impl IntoIterator<Item = (&'a mut [u8; VNET_HDR_LEN], &'a mut [u8])>,
    lens: &mut [RxFrame; MMSG_BATCH],
) -> io::Result<usize> {
    let mut batch = MmsgBatch::new();
    for (vnet, frame) in bufs {
        if !batch.push(
            vnet.as_mut_ptr(),
            vnet.len(),
            frame.as_mut_ptr(),
            frame.len(),
        ) {
            break;
        }
    }
    if batch.count == 0 {
        return Ok(0);
    }
    batch.link();
    // SAFETY: the first `count` messages point at `batch.iov`, which point at buffers
    // borrowed mutably for 'a (past this call) with their true lengths; the kernel writes at
    // most those lengths, fills `msg_len` and `msg_flags` of at most `count` entries, and
    // reads no address (no `msg_name`, no control data). `fd` stays open for the call.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            batch.msgs.as_mut_ptr(),
            batch.count as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    for ((len, m), iov) in lens.iter_mut().zip(&batch.msgs[..n]).zip(&batch.iov) {
        *len = mmsg_rx_len(m.msg_len as usize, m.msg_hdr.msg_flags, iov[1].iov_len);
    }
    Ok(n)
}

/// Sends up to [`MMSG_BATCH`] frames, each a virtio-net header and a frame, with one
/// non-blocking `sendmmsg` on a bound packet socket (frames past the first [`MMSG_BATCH`] are
/// left for another call). Returns how many went out, in order: fewer than it took means the
/// next one failed (sending it alone tells why). An error means the first one failed.
/// Allocates nothing.
pub fn send_frames<'a>(
    fd: BorrowedFd<'_>,
    frames: impl IntoIterator<Item = (&'a [u8; VNET_HDR_LEN], &'a [u8])>,
) -> io::Result<usize> {
    let mut batch = MmsgBatch::new();
    for (vnet, frame) in frames {
        // The kernel only reads through these pointers (sendmmsg).
        let (v, f) = (vnet.as_ptr().cast_mut(), frame.as_ptr().cast_mut());
        if !batch.push(v, vnet.len(), f, frame.len()) {
            break;
        }
    }
    if batch.count == 0 {
        return Ok(0);
    }
    batch.link();
    // SAFETY: the first `count` messages point at `batch.iov`, which point at buffers
    // borrowed for 'a with their true lengths; sendmmsg only reads them (and writes
    // `msg_len`, in `batch.msgs`). No address: the socket is bound to its device. `fd` stays
    // open for the call.
    let n = unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            batch.msgs.as_mut_ptr(),
            batch.count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Frames the kernel dropped on a packet socket because its receive buffer or ring was full,
/// since the last call (the kernel zeroes its count on every read).
pub fn take_drops(fd: BorrowedFd<'_>) -> Result<u64, SysError> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes (one tpacket_stats, the TPACKET_V1/V2
    // form) into `stats` on our stack, and updates `len`; `fd` stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    Errno::result(rc).map_err(|e| packet_err(0, "getsockopt(PACKET_STATISTICS)", e))?;
    Ok(u64::from(stats.tp_drops))
}

/// Bytes of one receive-ring frame: its `tpacket2_hdr`, the virtio-net header, a 64 KiB IP
/// packet and its Ethernet header, page-rounded (17 pages).
pub const RING_FRAME: usize = 17 * 4096;
/// Bytes of a ring, one block: the kernel allocates a block as a power-of-two run of pages,
/// and 2 MiB holds 30 frames with little waste.
pub const RING_BYTES: usize = 2 << 20;
/// Frames in a ring.
const RING_FRAMES: usize = RING_BYTES / RING_FRAME;

fn setsockopt_ring(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let req = libc::tpacket_req {
        tp_block_size: RING_BYTES as libc::c_uint,
        tp_block_nr: 1,
        tp_frame_size: RING_FRAME as libc::c_uint,
        tp_frame_nr: RING_FRAMES as libc::c_uint,
    };
    // SAFETY: the option value is one tpacket_req on our stack for the call, with its size;
    // the kernel only reads it. `fd` stays open for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            (&req as *const libc::tpacket_req).cast(),
            size_of::<libc::tpacket_req>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

/// Gives a packet socket from [`open_fanout_sockets`] a `TPACKET_V2` receive ring of
/// [`RING_BYTES`]: from now on frames land there, for an [`RxRing`] to take.
pub fn set_rx_ring(fd: BorrowedFd<'_>) -> Result<(), SysError> {
    let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
    setsockopt_int(fd, libc::SOL_PACKET, libc::PACKET_VERSION, version)
        .map_err(|e| packet_err(0, "PACKET_VERSION", e))?;
    setsockopt_ring(fd).map_err(|e| packet_err(0, "PACKET_RX_RING", e))
}

/// The index of the earliest of `stamps` (the first of equals).
fn oldest(stamps: impl Iterator<Item = (u32, u32)>) -> usize {
    stamps
        .enumerate()
        .min_by_key(|&(i, stamp)| (stamp, i))
        .map_or(0, |(i, _)| i)
}

/// A socket's `TPACKET_V2` receive ring, mapped: frames are taken in ring order, copied out
/// and handed straight back to the kernel.
///
/// The kernel fills frames in ring order from where it left off, which a new mapping does not
/// know (a dataplane child that replaces a dead one maps rings the old one read halfway): the
/// first time it finds frames filled, it starts at the first of them (a filled frame after an
/// empty one), and from then on it reads in step with the kernel.
pub struct RxRing {
    map: std::ptr::NonNull<u8>,
    next: usize,
    in_step: bool,
}

// SAFETY: the mapping belongs to this value alone (nothing else in the process refers to it),
// so moving it to another thread moves the only access with it.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Maps the ring [`set_rx_ring`] gave `fd`, starting at its first frame.
    pub fn map(fd: BorrowedFd<'_>) -> io::Result<RxRing> {
        // SAFETY: a new shared mapping of the socket's ring at an address the kernel picks,
        // of the ring's true size; nothing else in this process refers to that range.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = std::ptr::NonNull::new(map.cast()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(RxRing {
            map,
            next: 0,
            in_step: false,
        })
    }

    fn frame(&self, i: usize) -> *mut u8 {
        // SAFETY: i < RING_FRAMES, so the frame lies inside the RING_BYTES mapping.
        unsafe { self.map.as_ptr().add(i % RING_FRAMES * RING_FRAME) }
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: every frame starts with `tp_status`, a u32 the kernel and we hand back and
        // forth; frames start at multiples of RING_FRAME (4-byte aligned) in a page-aligned
        // mapping, which lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.frame(i).cast()) }
    }

    fn filled(&self, i: usize) -> bool {
        self.status(i).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// When the kernel filled frame `i` (its `tp_sec`, `tp_nsec`).
    fn stamp(&self, i: usize) -> (u32, u32) {
        // SAFETY: frame `i` is filled (TP_STATUS_USER, read with acquire by the caller), so
        // the kernel wrote its tpacket2_hdr and leaves it alone until we give the frame back;
        // the header lies at the start of the frame, inside the mapping.
        let h = unsafe { std::ptr::read(self.frame(i) as *const libc::tpacket2_hdr) };
        (h.tp_sec, h.tp_nsec)
    }

    /// Finds the oldest filled frame once some are filled; false while none is. With every
    /// frame filled (the ring overflowed while no one read it, as across a dataplane restart)
    /// the kernel stopped at the oldest one, where it will write next: the one it filled
    /// first, by the time stamps. Starting anywhere else would leave this reader waiting on a
    /// frame it emptied while the kernel, stopped at a full one, wakes no one.
    fn step_in(&mut self) -> bool {
        let start = (0..RING_FRAMES)
            .find(|&i| self.filled(i) && !self.filled((i + RING_FRAMES - 1) % RING_FRAMES));
        match start {
            Some(i) => self.next = i,
            None if (0..RING_FRAMES).all(|i| self.filled(i)) => {
                self.next = oldest((0..RING_FRAMES).map(|i| self.stamp(i)));
            }
            None => return false,
        }
        self.in_step = true;
        true
    }

    /// Takes the next frame the kernel filled: its virtio-net header into `vnet`, the frame
    /// into `frame` ([`ring_rx_len`] decides), and gives the ring frame back. `None` when the
    /// kernel filled none; else what came, like `recv_frames`: [`RxFrame::Oversize`] for a
    /// frame the kernel cut to fit the ring frame or that does not fit `frame` (dropped).
    pub fn take(&mut self, vnet: &mut [u8; VNET_HDR_LEN], frame: &mut [u8]) -> Option<RxFrame> {
        if !self.in_step && !self.step_in() {
            return None;
        }
        if !self.filled(self.next) {
            return None;
        }
        let status = self.status(self.next);
        let base = self.frame(self.next);
        // SAFETY: the kernel filled this frame (TP_STATUS_USER, read with acquire) and leaves
        // it alone until we store TP_STATUS_KERNEL below. It starts with a tpacket2_hdr; the
        // kernel put the frame at tp_mac with the virtio-net header just before it, and
        // `ring_rx_len` confirms both lie inside the ring frame and the frame fits `frame`
        // before any copy.
        let taken = unsafe {
            let h = std::ptr::read(base as *const libc::tpacket2_hdr);
            let (mac, snaplen, len) = (
                usize::from(h.tp_mac),
                h.tp_snaplen as usize,
                h.tp_len as usize,
            );
            let taken = ring_rx_len(mac, snaplen, len, frame.len());
            if let RxFrame::Whole(len) = taken {
                std::ptr::copy_nonoverlapping(
                    base.add(mac - VNET_HDR_LEN),
                    vnet.as_mut_ptr(),
                    VNET_HDR_LEN,
                );
                std::ptr::copy_nonoverlapping(base.add(mac), frame.as_mut_ptr(), len);
            }
            taken
        };
        status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.next = (self.next + 1) % RING_FRAMES;
        Some(taken)
    }
}

/// The length decision of [`RxRing::take`] for one ring frame, on its own: `tp_mac` is where
/// the frame starts in its ring frame, `tp_snaplen` the bytes the kernel put there,
/// `tp_len` the frame's true length, `buf_len` the size of the buffer it is copied to.
///
/// The virtio-net header and the frame must lie inside the ring frame after the
/// `tpacket2_hdr`, else [`RxFrame::Malformed`]; a frame the kernel cut to fit
/// (`tp_len` > `tp_snaplen`) or one longer than the buffer is [`RxFrame::Oversize`]. Only
/// `Whole(n)` allows a copy of `n` bytes from `tp_mac` and the header just before it.
pub fn ring_rx_len(tp_mac: usize, tp_snaplen: usize, tp_len: usize, buf_len: usize) -> RxFrame {
    let inside = tp_mac >= VNET_HDR_LEN + size_of::<libc::tpacket2_hdr>()
        && tp_mac
            .checked_add(tp_snaplen)
            .is_some_and(|end| end <= RING_FRAME);
    if !inside || tp_snaplen > tp_len {
        RxFrame::Malformed
    } else if tp_len > tp_snaplen || tp_snaplen > buf_len {
        RxFrame::Oversize
    } else {
        RxFrame::Whole(tp_snaplen)
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, of its size; nothing borrows it any more.
        unsafe { libc::munmap(self.map.as_ptr().cast(), RING_BYTES) };
    }
}

/// Discards every frame queued on a non-blocking packet socket.
fn drain(fd: BorrowedFd<'_>) {
    let mut vnet = [0u8; VNET_HDR_LEN];
    let mut buf = vec![0u8; 65536 + 64];
    while read_frame(fd, &mut vnet, &mut buf).is_ok() {}
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::netlink::{LinkInfo, Netlink};
    use crate::netns::testing::in_fresh_netns;
    use crate::sys::tap::write_frame;

    #[test]
    fn fanout_constants_match_the_kernel_abi() {
        assert_eq!(libc::PACKET_FANOUT_HASH, 0);
        assert_eq!(libc::PACKET_FANOUT_FLAG_UNIQUEID, 0x2000);
        assert_eq!(VNET_HDR_LEN, 10, "PACKET_VNET_HDR is struct virtio_net_hdr");
    }

    #[test]
    fn mmsg_and_ring_lengths_drop_what_does_not_fit() {
        let t = libc::MSG_TRUNC;
        // (msg_len, msg_flags, frame buffer, decision)
        let rows = [
            (VNET_HDR_LEN + 60, 0, 100, RxFrame::Whole(60)),
            (VNET_HDR_LEN + 100, 0, 100, RxFrame::Whole(100)),
            (VNET_HDR_LEN + 100, t, 100, RxFrame::Oversize),
            (VNET_HDR_LEN + 101, 0, 100, RxFrame::Oversize),
            (VNET_HDR_LEN - 1, 0, 100, RxFrame::Malformed),
            (0, t, 100, RxFrame::Malformed),
        ];
        for (len, flags, buf, want) in rows {
            assert_eq!(mmsg_rx_len(len, flags, buf), want, "{len} {flags:#x} {buf}");
        }
        let mac = VNET_HDR_LEN + size_of::<libc::tpacket2_hdr>();
        // (tp_mac, tp_snaplen, tp_len, frame buffer, decision)
        let rows = [
            (mac, 60, 60, 100, RxFrame::Whole(60)),
            (mac + 16, 100, 100, 100, RxFrame::Whole(100)),
            (mac, 100, 101, 1000, RxFrame::Oversize),
            (mac, 101, 101, 100, RxFrame::Oversize),
            (mac, RING_FRAME - mac, 70000, 1 << 17, RxFrame::Oversize),
            (mac - 1, 60, 60, 100, RxFrame::Malformed),
            (
                mac,
                RING_FRAME - mac + 1,
                70000,
                1 << 17,
                RxFrame::Malformed,
            ),
            (mac, usize::MAX, usize::MAX, usize::MAX, RxFrame::Malformed),
            (mac, 61, 60, 100, RxFrame::Malformed),
        ];
        for (m, snap, len, buf, want) in rows {
            assert_eq!(
                ring_rx_len(m, snap, len, buf),
                want,
                "{m} {snap} {len} {buf}"
            );
        }
    }

    /// An Ethernet frame from `src` to `dst` with a private ethertype and a marker byte.
    fn frame(dst: [u8; 6], src: [u8; 6], marker: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
        f.extend(std::iter::repeat_n(marker, 46));
        f
    }

    /// Reads every frame with the private ethertype from `fds` until `want` of them have come
    /// or 2 s pass; returns their marker bytes.
    fn collect(fds: &[OwnedFd], want: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 70000];
        while Instant::now() < deadline && got.len() < want {
            for fd in fds {
                let mut vnet = [0xa5u8; VNET_HDR_LEN];
                match read_frame(fd.as_fd(), &mut vnet, &mut buf) {
                    Ok(RxFrame::Whole(n)) if n >= 15 && buf[12..14] == [0x88, 0xb5] => {
                        assert_eq!(vnet, [0; VNET_HDR_LEN], "plain frame, zeroed header");
                        got.push(buf[14]);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read_frame: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    /// A veth pair `ours`/`far` (MTU `mtu`), both up, in the current (test) netns.
    fn veth_pair(ours: &str, far: &str, mtu: &str) -> (LinkInfo, LinkInfo) {
        let status = Command::new("ip")
            .args([
                "link", "add", ours, "mtu", mtu, "type", "veth", "peer", "name", far, "mtu", mtu,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let nl = Netlink::new().unwrap();
        nl.set_link(ours, None, None, true).unwrap();
        nl.set_link(far, None, None, true).unwrap();
        (
            nl.link_info(ours).unwrap().unwrap(),
            nl.link_info(far).unwrap().unwrap(),
        )
    }

    #[test]
    #[ignore = "needs root"]
    fn fanout_sockets_carry_each_frame_once_and_not_their_own() {
        in_fresh_netns(|| {
            let (ours, far) = veth_pair("nst-pk0", "nst-pk1", "1500");

            let fds = open_fanout_sockets(ours.index, 3).unwrap();
            let groups: Vec<_> = fds
                .iter()
                .map(|fd| fanout_group(fd.as_fd()).unwrap())
                .collect();
            assert!(groups.iter().all(|g| *g == groups[0]), "{groups:?}");
            assert_eq!(groups[0].1, libc::PACKET_FANOUT_HASH as u8);
            // A second set gets a group of its own.
            let other = open_fanout_sockets(ours.index, 1).unwrap();
            assert_ne!(fanout_group(other[0].as_fd()).unwrap().0, groups[0].0);
            drop(other);

            // Frames sent into the far end come out of exactly one socket of the group.
            let far_sock = open_fanout_sockets(far.index, 1).unwrap();
            let (a, b) = (ours.mac.unwrap(), far.mac.unwrap());
            for m in 0..20u8 {
                write_frame(far_sock[0].as_fd(), &[0; VNET_HDR_LEN], &frame(a, b, m)).unwrap();
            }
            let mut got = collect(&fds, 20);
            std::thread::sleep(Duration::from_millis(50));
            got.extend(collect(&fds, 0));
            got.sort_unstable();
            assert_eq!(got, (0..20).collect::<Vec<u8>>(), "each frame exactly once");

            // What a socket of the group sends reaches the far end and is not read back.
            write_frame(fds[1].as_fd(), &[0; VNET_HDR_LEN], &frame(b, a, 99)).unwrap();
            assert_eq!(collect(&far_sock, 1), vec![99]);
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                collect(&fds, 1).is_empty(),
                "a socket read its group's own write"
            );
        });
    }

    #[test]
    #[ignore = "needs root"]
    fn batches_carry_every_frame_in_order_with_its_length() {
        in_fresh_netns(|| {
            let (ours, far) = veth_pair("nst-mm0", "nst-mm1", "1500");
            let rx = open_fanout_sockets(ours.index, 1).unwrap();
            let tx = open_fanout_sockets(far.index, 1).unwrap();
            let (a, b) = (ours.mac.unwrap(), far.mac.unwrap());

            // 40 frames of growing length: more than one batch, so one call sends 32.
            let frames: Vec<Vec<u8>> = (0..40u8)
                .map(|m| {
                    let mut f = frame(a, b, m);
                    f.extend(std::iter::repeat_n(m, usize::from(m)));
                    f
                })
                .collect();
            let plain = [0u8; VNET_HDR_LEN];
            let mut sent = 0;
            while sent < frames.len() {
                let n = send_frames(
                    tx[0].as_fd(),
                    frames[sent..].iter().map(|f| (&plain, &f[..])),
                )
                .unwrap();
                assert!(n > 0 && n <= MMSG_BATCH, "sent {n}");
                sent += n;
            }
            assert_eq!(send_frames(tx[0].as_fd(), std::iter::empty()).unwrap(), 0);

            let mut vnets = [[0xa5u8; VNET_HDR_LEN]; MMSG_BATCH];
            let mut bufs = vec![vec![0u8; 2048]; MMSG_BATCH];
            let mut lens = [RxFrame::Malformed; MMSG_BATCH];
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while got.len() < frames.len() && Instant::now() < deadline {
                match recv_frames(
                    rx[0].as_fd(),
                    vnets.iter_mut().zip(bufs.iter_mut().map(|b| &mut b[..])),
                    &mut lens,
                ) {
                    Ok(n) => {
                        assert!(n <= MMSG_BATCH);
                        for i in 0..n {
                            let RxFrame::Whole(len) = lens[i] else {
                                panic!("frame {i}: {:?}", lens[i]);
                            };
                            if bufs[i][12..14] == [0x88, 0xb5] {
                                assert_eq!(vnets[i], plain);
                                got.push(bufs[i][..len].to_vec());
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("recv_frames: {e}"),
                }
            }
            assert_eq!(got, frames, "every frame, in order, whole");
            let e = recv_frames(
                rx[0].as_fd(),
                vnets.iter_mut().zip(bufs.iter_mut().map(|b| &mut b[..])),
                &mut lens,
            )
            .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        });
    }

    /// A frame longer than the buffer it is read into is `Oversize`, from `recvmmsg`
    /// (`MSG_TRUNC`) and from a ring; the frames around it are whole.
    #[test]
    #[ignore = "needs root"]
    fn a_frame_longer_than_the_buffer_is_oversize_in_batches_and_rings() {
        in_fresh_netns(|| {
            let (ours, far) = veth_pair("nst-tr0", "nst-tr1", "1500");
            let rx = open_fanout_sockets(ours.index, 1).unwrap();
            let tx = open_fanout_sockets(far.index, 1).unwrap();
            let (a, b) = (ours.mac.unwrap(), far.mac.unwrap());
            let plain = [0u8; VNET_HDR_LEN];
            let send = |extra: usize, m: u8| {
                let mut f = frame(a, b, m);
                f.extend(std::iter::repeat_n(m, extra));
                write_frame(tx[0].as_fd(), &plain, &f).unwrap();
            };
            // Our frames (private ethertype) as they come, in 200-byte buffers.
            let ours_only = |buf: &[u8], got: RxFrame| -> bool {
                buf[12..14] == [0x88, 0xb5] || got == RxFrame::Oversize
            };

            send(0, 1);
            send(1000, 2);
            send(0, 3);
            let mut vnets = [[0u8; VNET_HDR_LEN]; MMSG_BATCH];
            let mut bufs = vec![vec![0u8; 200]; MMSG_BATCH];
            let mut lens = [RxFrame::Malformed; MMSG_BATCH];
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while got.len() < 3 && Instant::now() < deadline {
                match recv_frames(
                    rx[0].as_fd(),
                    vnets.iter_mut().zip(bufs.iter_mut().map(|b| &mut b[..])),
                    &mut lens,
                ) {
                    Ok(n) => {
                        for i in 0..n {
                            if ours_only(&bufs[i], lens[i]) {
                                got.push(lens[i]);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("recv_frames: {e}"),
                }
            }
            assert_eq!(
                got,
                [RxFrame::Whole(60), RxFrame::Oversize, RxFrame::Whole(60)]
            );

            set_rx_ring(rx[0].as_fd()).unwrap();
            let mut ring = RxRing::map(rx[0].as_fd()).unwrap();
            send(0, 4);
            send(1000, 5);
            send(0, 6);
            let mut vnet = [0u8; VNET_HDR_LEN];
            let mut buf = [0u8; 200];
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while got.len() < 3 && Instant::now() < deadline {
                match ring.take(&mut vnet, &mut buf) {
                    Some(f) if ours_only(&buf, f) => {
                        let marker = if f == RxFrame::Oversize { 0 } else { buf[14] };
                        got.push((f, marker));
                    }
                    Some(_) => {}
                    None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            assert_eq!(
                got,
                [
                    (RxFrame::Whole(60), 4),
                    (RxFrame::Oversize, 0),
                    (RxFrame::Whole(60), 6)
                ]
            );
        });
    }

    /// VETH_MAX_MTU is the kernel's: the plugin refuses larger MTUs on its strength.
    #[test]
    #[ignore = "needs root"]
    fn a_veth_takes_an_mtu_up_to_veth_max_mtu() {
        in_fresh_netns(|| {
            veth_pair("nst-mt0", "nst-mt1", "1500");
            let nl = Netlink::new().unwrap();
            nl.set_link("nst-mt0", None, Some(VETH_MAX_MTU), false)
                .unwrap();
            assert!(nl
                .set_link("nst-mt0", None, Some(VETH_MAX_MTU + 1), false)
                .is_err());
        });
    }

    #[test]
    #[ignore = "needs root"]
    fn a_ring_hands_over_every_frame_in_order_and_a_new_mapping_finds_its_place() {
        in_fresh_netns(|| {
            let (ours, far) = veth_pair("nst-rg0", "nst-rg1", "9000");
            let rx = open_fanout_sockets(ours.index, 1).unwrap();
            set_rx_ring(rx[0].as_fd()).unwrap();
            let tx = open_fanout_sockets(far.index, 1).unwrap();
            let (a, b) = (ours.mac.unwrap(), far.mac.unwrap());
            let plain = [0u8; VNET_HDR_LEN];
            let send = |markers: std::ops::Range<u8>, extra: usize| -> Vec<Vec<u8>> {
                markers
                    .map(|m| {
                        let mut f = frame(a, b, m);
                        f.extend(std::iter::repeat_n(m, extra + usize::from(m)));
                        write_frame(tx[0].as_fd(), &plain, &f).unwrap();
                        f
                    })
                    .collect()
            };
            let take_all = |ring: &mut RxRing, want: usize| -> Vec<Vec<u8>> {
                let mut vnet = [0xa5u8; VNET_HDR_LEN];
                let mut buf = vec![0u8; 70000];
                let mut got = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(2);
                while got.len() < want && Instant::now() < deadline {
                    match ring.take(&mut vnet, &mut buf) {
                        Some(RxFrame::Whole(n)) if n >= 14 && buf[12..14] == [0x88, 0xb5] => {
                            assert_eq!(vnet, plain);
                            got.push(buf[..n].to_vec());
                        }
                        Some(_) => {}
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                got
            };

            let mut ring = RxRing::map(rx[0].as_fd()).unwrap();
            // Small frames and jumbo ones, fewer than the ring holds.
            let mut sent = send(0..10, 0);
            sent.extend(send(10..20, 8000));
            assert_eq!(
                take_all(&mut ring, 20),
                sent,
                "every frame, in order, whole"
            );
            // More than the ring holds while nobody reads: the kernel keeps the first 30.
            let sent = send(20..60, 0);
            assert_eq!(take_all(&mut ring, 40), sent[..RING_FRAMES]);

            // A new mapping (a new dataplane child) starts at frame 0 while the kernel writes
            // further on (at frame 20 here, or later if the link sent frames of its own); it
            // finds its place.
            drop(ring);
            let mut ring = RxRing::map(rx[0].as_fd()).unwrap();
            let sent = send(60..70, 0);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(take_all(&mut ring, 10), sent, "in order, none lost");
            // Wherever the kernel was: ten more mappings, each after a few frames.
            for round in 0..10u8 {
                drop(ring);
                ring = RxRing::map(rx[0].as_fd()).unwrap();
                let base = 100 + round * 13;
                let sent = send(base..base + 7 + round % 5, 0);
                assert_eq!(take_all(&mut ring, sent.len()), sent, "round {round}");
            }
            // Across the end of the ring too.
            let sent = send(70..85, 0);
            assert_eq!(take_all(&mut ring, 15), sent);

            // A new mapping of a ring that filled up while nobody read it (the dataplane was
            // being replaced under load): every frame filled, the kernel stopped at the oldest.
            // The new reader starts there and stays in step (twice, from two kernel positions,
            // so that one of them is not frame 0).
            for round in 0..2u8 {
                drop(ring);
                let sent = send(150 + round * 50..190 + round * 50, 0);
                ring = RxRing::map(rx[0].as_fd()).unwrap();
                assert_eq!(
                    take_all(&mut ring, RING_FRAMES),
                    sent[..RING_FRAMES],
                    "full ring, round {round}: the oldest first"
                );
                let sent = send(240..241 + round, 0);
                assert_eq!(
                    take_all(&mut ring, sent.len()),
                    sent,
                    "full ring, round {round}: then in step with the kernel"
                );
            }
        });
    }

    #[test]
    fn the_oldest_stamp_wins_and_the_first_of_equals() {
        assert_eq!(oldest([(5, 0), (3, 9), (3, 2), (4, 0)].into_iter()), 2);
        assert_eq!(oldest([(1, 1), (1, 1)].into_iter()), 0);
        assert_eq!(oldest(std::iter::empty()), 0);
    }
}
