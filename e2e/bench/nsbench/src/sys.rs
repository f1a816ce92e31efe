//! The two batched UDP socket calls nsbench needs, the process's CPU time, an io_uring for
//! batches of TAP reads and writes and a packet socket's transmit ring, as safe
//! wrappers: the only `unsafe` in the crate (packet sockets and TAPs come from
//! `netstack_core::sys`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use netstack_core::sys::tap::VNET_HDR_LEN;

/// The most datagrams one call moves.
pub const MAX_BATCH: usize = 64;

fn empty_batch() -> ([libc::iovec; MAX_BATCH], [libc::mmsghdr; MAX_BATCH]) {
    let iov = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers; all zeroes (null
    // pointers, zero lengths) is a valid value of it.
    let hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
    ([iov; MAX_BATCH], [hdr; MAX_BATCH])
}

/// Sends each of `msgs` (at most [`MAX_BATCH`]) as one datagram on the connected socket `fd`
/// with one `sendmmsg`; returns how many were sent.
pub fn send_batch(fd: BorrowedFd<'_>, msgs: &[&[u8]]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    let (mut iovs, mut hdrs) = empty_batch();
    for (i, msg) in msgs[..n].iter().enumerate() {
        iovs[i].iov_base = msg.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = msg.len();
    }
    for (hdr, iov) in hdrs[..n].iter_mut().zip(iovs[..n].iter_mut()) {
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers point at `iovs`, which point at the caller's buffers with
    // their lengths; all of them outlive the call, and the kernel only reads through them.
    // No address is given (msg_name null): the socket is connected.
    let sent = unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Receives up to `bufs.len()` (at most [`MAX_BATCH`]) datagrams from `fd` with one
/// `recvmmsg(MSG_WAITFORONE)`: blocks (up to the socket's receive timeout) for the first, then
/// takes what is queued. Returns (datagrams, payload bytes).
pub fn recv_batch(fd: BorrowedFd<'_>, bufs: &mut [Vec<u8>]) -> io::Result<(usize, usize)> {
    let n = bufs.len().min(MAX_BATCH);
    let (mut iovs, mut hdrs) = empty_batch();
    for (i, buf) in bufs[..n].iter_mut().enumerate() {
        iovs[i].iov_base = buf.as_mut_ptr() as *mut libc::c_void;
        iovs[i].iov_len = buf.len();
    }
    for (hdr, iov) in hdrs[..n].iter_mut().zip(iovs[..n].iter_mut()) {
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers point at `iovs`, which point at the caller's buffers with
    // their lengths, borrowed mutably for the call; the kernel writes at most iov_len bytes
    // into each and the message lengths into `hdrs`. No source address is asked for.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    let bytes = hdrs[..got].iter().map(|h| h.msg_len as usize).sum();
    Ok((got, bytes))
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

/// Reads or writes of a batch of TAP frames (each a virtio-net header and a frame buffer, two
/// iovecs) submitted to an io_uring with one `io_uring_enter`, for `floor --io uring`.
///
/// Every batch waits for all its completions before it returns, so no buffer outlives its
/// operation. On a non-blocking TAP each read runs inline during the submission and one with
/// no frame waiting completes with `-EAGAIN`.
pub struct TapUring {
    ring: io_uring::IoUring,
    iovs: Vec<[libc::iovec; 2]>,
    /// `io_uring_enter` calls made.
    pub enters: u64,
}

impl TapUring {
    /// A ring of `entries` submission slots (the largest batch).
    pub fn new(entries: u32) -> io::Result<TapUring> {
        let ring = io_uring::IoUring::new(entries)?;
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Ok(TapUring {
            ring,
            iovs: vec![[iov; 2]; entries as usize],
            enters: 0,
        })
    }

    /// Submits one read (`write == false`) or write per slot of `slots` — (header, frame
    /// buffer, length to write) — waits for them all and puts each result (bytes, or a
    /// negative errno) in `results`, in slot order.
    fn batch(
        &mut self,
        fd: BorrowedFd<'_>,
        write: bool,
        slots: &mut [(&mut [u8; VNET_HDR_LEN], &mut [u8])],
        results: &mut [i32],
    ) -> io::Result<()> {
        let n = slots.len().min(self.iovs.len()).min(results.len());
        for (i, (vnet, buf)) in slots[..n].iter_mut().enumerate() {
            self.iovs[i] = [
                libc::iovec {
                    iov_base: vnet.as_mut_ptr().cast(),
                    iov_len: vnet.len(),
                },
                libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                },
            ];
            let fdt = io_uring::types::Fd(fd.as_raw_fd());
            let sqe = if write {
                io_uring::opcode::Writev::new(fdt, self.iovs[i].as_ptr(), 2)
                    .offset(u64::MAX)
                    .build()
            } else {
                // RWF_NOWAIT: a read with no frame waiting fails with EAGAIN at once, instead
                // of waiting in the ring for one (io_uring arms a poll for it otherwise).
                io_uring::opcode::Readv::new(fdt, self.iovs[i].as_ptr(), 2)
                    .offset(u64::MAX)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
            }
            .user_data(i as u64);
            // SAFETY: the entry points at `self.iovs[i]` and, through it, at the caller's
            // header and buffer; `self.iovs` is never resized, and both borrows outlive this
            // call, which waits below for every completion before it returns (a failed wait
            // aborts the process rather than return with operations in flight). `fd` stays
            // open for the call.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                // Cannot happen (the queue holds `iovs.len()` entries, all completed by the
                // last batch); the entries pushed so far must not outlive this call.
                eprintln!("io_uring submission queue full");
                std::process::abort();
            }
        }
        let mut done = 0;
        while done < n {
            match self.ring.submit_and_wait(n - done) {
                Ok(_) => self.enters += 1,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    continue
                }
                // Operations may still point at the caller's buffers: returning would let
                // them be freed under the kernel's feet.
                Err(e) => {
                    eprintln!("io_uring_enter failed with operations in flight: {e}");
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                if let Some(r) = results.get_mut(cqe.user_data() as usize) {
                    *r = cqe.result();
                }
                done += 1;
            }
        }
        Ok(())
    }

    /// Reads one frame into each slot (header, buffer); `results[i]`: bytes read (header
    /// included) or a negative errno (`-EAGAIN`: no frame was waiting).
    pub fn read_batch(
        &mut self,
        fd: BorrowedFd<'_>,
        slots: &mut [(&mut [u8; VNET_HDR_LEN], &mut [u8])],
        results: &mut [i32],
    ) -> io::Result<()> {
        self.batch(fd, false, slots, results)
    }

    /// Writes each slot's header and frame as one frame; `results[i]`: bytes written or a
    /// negative errno. The buffers are only read.
    pub fn write_batch(
        &mut self,
        fd: BorrowedFd<'_>,
        slots: &mut [(&mut [u8; VNET_HDR_LEN], &mut [u8])],
        results: &mut [i32],
    ) -> io::Result<()> {
        self.batch(fd, true, slots, results)
    }
}

/// Bytes of one transmit-ring frame: its `tpacket2_hdr` (32 bytes, aligned), the virtio-net
/// header, a 64 KiB IP packet and its Ethernet header, page-rounded (17 pages).
pub const TX_RING_FRAME: usize = 17 * 4096;
/// Bytes of one ring block (30 frames); the kernel allocates a block as one run of pages.
const TX_RING_BLOCK: usize = 2 << 20;
/// Blocks of a transmit ring: 120 frames, 8 MiB of kernel memory per socket.
pub const TX_RING_BLOCKS: usize = 4;
/// Where a frame's data starts in a transmit-ring frame: after the aligned `tpacket2_hdr`
/// (`TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)`, as the kernel's `tpacket_snd` reads it).
const TX_DATA_OFFSET: usize = 32;
const TX_FRAMES_PER_BLOCK: usize = TX_RING_BLOCK / TX_RING_FRAME;
/// Frames in a transmit ring.
pub const TX_RING_FRAMES: usize = TX_FRAMES_PER_BLOCK * TX_RING_BLOCKS;

/// A packet socket's `TPACKET_V2` transmit ring (`PACKET_TX_RING`), mapped: frames are copied
/// in, marked for sending, and sent together with one `send`. With `PACKET_VNET_HDR` each
/// frame's data starts with its virtio-net header. The kernel maps the ring's pages into the
/// skbs it sends (no copy out of the ring) and hands a frame back (`TP_STATUS_AVAILABLE`)
/// when its skb is let go of.
pub struct TxRing {
    map: std::ptr::NonNull<u8>,
    next: usize,
}

impl TxRing {
    /// Sets `PACKET_VERSION` 2 and a transmit ring on `fd` (a packet socket with no ring yet,
    /// its virtio-net header option already set) and maps it.
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<TxRing> {
        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        // SAFETY: the option value is one c_int on our stack for the call, with its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VERSION,
                (&version as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let req = libc::tpacket_req {
            tp_block_size: TX_RING_BLOCK as libc::c_uint,
            tp_block_nr: TX_RING_BLOCKS as libc::c_uint,
            tp_frame_size: TX_RING_FRAME as libc::c_uint,
            tp_frame_nr: TX_RING_FRAMES as libc::c_uint,
        };
        // SAFETY: the option value is one tpacket_req on our stack for the call, with its
        // size; the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_TX_RING,
                (&req as *const libc::tpacket_req).cast(),
                std::mem::size_of::<libc::tpacket_req>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new shared mapping of the socket's ring (its only ring, so at offset 0) at
        // an address the kernel picks, of the ring's true size; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TX_RING_BLOCK * TX_RING_BLOCKS,
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
        Ok(TxRing { map, next: 0 })
    }

    fn frame(&self, i: usize) -> *mut u8 {
        let i = i % TX_RING_FRAMES;
        // SAFETY: frame i of block i / TX_FRAMES_PER_BLOCK lies inside the mapping of
        // TX_RING_BLOCKS blocks (frames never cross a block).
        unsafe {
            self.map.as_ptr().add(
                i / TX_FRAMES_PER_BLOCK * TX_RING_BLOCK + i % TX_FRAMES_PER_BLOCK * TX_RING_FRAME,
            )
        }
    }

    fn status(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: every frame starts with `tp_status`, a u32 the kernel and we hand back and
        // forth; frames start at multiples of TX_RING_FRAME (page-aligned) in the mapping,
        // which lives as long as `self`.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(self.frame(i).cast()) }
    }

    /// Copies one frame and its virtio-net header into the next ring frame and marks it for
    /// sending; false when that ring frame is still the kernel's (sent, not yet let go of) or
    /// the frame does not fit one.
    pub fn put(&mut self, vnet: &[u8; VNET_HDR_LEN], frame: &[u8]) -> bool {
        use std::sync::atomic::Ordering;
        let len = VNET_HDR_LEN + frame.len();
        if TX_DATA_OFFSET + len > TX_RING_FRAME {
            return false;
        }
        let status = self.status(self.next);
        let s = status.load(Ordering::Acquire);
        if s != libc::TP_STATUS_AVAILABLE && s != libc::TP_STATUS_WRONG_FORMAT {
            return false;
        }
        let base = self.frame(self.next);
        // SAFETY: the ring frame is ours (TP_STATUS_AVAILABLE or WRONG_FORMAT, read with
        // acquire) until we store SEND_REQUEST below; the header and the data (checked to fit
        // above) lie inside it, and the sources are the caller's slices.
        unsafe {
            let h = base.cast::<libc::tpacket2_hdr>();
            (*h).tp_len = len as u32;
            (*h).tp_snaplen = len as u32;
            let data = base.add(TX_DATA_OFFSET);
            std::ptr::copy_nonoverlapping(vnet.as_ptr(), data, VNET_HDR_LEN);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), data.add(VNET_HDR_LEN), frame.len());
        }
        status.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.next = (self.next + 1) % TX_RING_FRAMES;
        true
    }

    /// Sends every frame marked for sending, with one `send` (not waiting); bytes sent.
    pub fn flush(&self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        // SAFETY: a send with no buffer: the kernel takes the frames from the ring mapped
        // above, which `self` keeps alive; `fd` stays open for the call.
        let n = unsafe { libc::send(fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Drop for TxRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that size, unmapped once; nothing refers to
        // it after `self` goes.
        unsafe { libc::munmap(self.map.as_ptr().cast(), TX_RING_BLOCK * TX_RING_BLOCKS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    /// A batch of writes then a larger batch of reads over a SOCK_SEQPACKET pair (one
    /// "frame" per record, as a TAP gives one frame per read): the frames arrive whole and
    /// in order, and each read with nothing waiting reports -EAGAIN instead of waiting.
    #[test]
    fn uring_batches_move_whole_frames_and_report_empty_reads() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let mut ring = match TapUring::new(4) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}): nothing to test");
                return;
            }
        };
        let mut out: Vec<([u8; VNET_HDR_LEN], Vec<u8>)> = (0..2u8)
            .map(|i| ([i; VNET_HDR_LEN], vec![0xa0 + i; 100 + usize::from(i)]))
            .collect();
        let mut slots: Vec<_> = out.iter_mut().map(|(v, f)| (v, &mut f[..])).collect();
        let mut res = [0i32; 4];
        ring.write_batch(a.as_fd(), &mut slots, &mut res[..2])
            .unwrap();
        assert_eq!(res[..2], [110, 111]);

        let mut bufs: Vec<([u8; VNET_HDR_LEN], Vec<u8>)> = (0..3)
            .map(|_| ([0xa5; VNET_HDR_LEN], vec![0xa5; 200]))
            .collect();
        let mut slots: Vec<_> = bufs.iter_mut().map(|(v, f)| (v, &mut f[..])).collect();
        ring.read_batch(b.as_fd(), &mut slots, &mut res[..3])
            .unwrap();
        assert_eq!(res[..3], [110, 111, -libc::EAGAIN]);
        assert_eq!(bufs[0].0, [0; VNET_HDR_LEN]);
        assert_eq!(bufs[1].0, [1; VNET_HDR_LEN]);
        assert!(bufs[0].1[..100].iter().all(|&x| x == 0xa0));
        assert!(bufs[1].1[..101].iter().all(|&x| x == 0xa1));
        assert_eq!(bufs[1].1[101], 0xa5, "nothing written past the frame");
        assert_eq!(ring.enters, 2, "one io_uring_enter per batch");
    }
}
