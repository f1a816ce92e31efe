//! The dataplane's io_uring for TAP/TUN queues (`netstackd --tap-io uring`): a batch of frame
//! reads, or of frame writes, in one `io_uring_enter`, each frame with its virtio-net header
//! beside it in its own iovec as `read_frame`/`write_frame` do (`super::tap`).
//!
//! io_uring's operations are not system calls, so a seccomp filter never sees them: a ring
//! that could open files or sockets would undo the dataplane's lock-down. [`TapRing::new`]
//! therefore creates the ring disabled (`IORING_SETUP_R_DISABLED`), registers restrictions
//! that allow the opcodes READV and WRITEV only, no SQE flag and no register operation, and
//! only then enables it (`IORING_REGISTER_ENABLE_RINGS`). Any other opcode then completes
//! with `-EACCES`, and `io_uring_register` on it fails with `EACCES` too, so the filter only
//! needs to allow `io_uring_enter`.
//!
//! Every batch waits for all its completions before it returns, so no buffer outlives its
//! operation: the kernel never writes into memory the caller got back.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::opcode;
use io_uring::register::Restriction;
use io_uring::types::Fd;
use io_uring::IoUring;

use super::tap::VNET_HDR_LEN;

/// The most operations one batch submits: the submission queue's size.
pub const RING_ENTRIES: usize = 32;

/// Where `/proc/sys/kernel/io_uring_disabled` is: 0 allows io_uring, 1 allows it to
/// `CAP_SYS_ADMIN` and the group of `io_uring_group` only, 2 to nobody.
const DISABLED_SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// The value of `kernel.io_uring_disabled`, or `None` on a kernel without the knob (before
/// 6.6: io_uring is then allowed if the kernel has it at all).
pub fn disabled_sysctl() -> Option<u32> {
    std::fs::read_to_string(DISABLED_SYSCTL)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// An io_uring that can only read and write: READV and WRITEV, no SQE flags, no register
/// operations (see the module comment). One per dataplane worker.
pub struct TapRing {
    ring: IoUring,
    enters: u64,
}

impl std::fmt::Debug for TapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapRing")
            .field("fd", &self.ring.as_raw_fd())
            .field("enters", &self.enters)
            .finish()
    }
}

impl TapRing {
    /// Creates a restricted ring of [`RING_ENTRIES`] entries. Fails where the kernel has no
    /// io_uring (`ENOSYS`), refuses it to this process (`EPERM`: `io_uring_disabled`, or a
    /// seccomp filter), or lacks restrictions (`EINVAL`: before 5.10).
    pub fn new() -> io::Result<TapRing> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(RING_ENTRIES as u32)?;
        let submitter = ring.submitter();
        // No `sqe_flags_allowed` entry: no SQE flag is allowed. No `register_op` entry: no
        // register operation once the ring is enabled.
        submitter.register_restrictions(&mut [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
        ])?;
        submitter.register_enable_rings()?;
        Ok(TapRing { ring, enters: 0 })
    }

    /// `io_uring_enter` calls made so far.
    pub fn enters(&self) -> u64 {
        self.enters
    }

    /// Reads one frame into each (header, buffer) of `bufs` from `fd` — at most
    /// [`RING_ENTRIES`] and `results.len()` of them — with `RWF_NOWAIT` (a read with no frame
    /// waiting completes with `-EAGAIN` rather than waiting in the ring), in one
    /// `io_uring_enter`. `results[i]` gets what `readv` would return for buffer i: the bytes
    /// read, header included, or a negative errno. Returns how many reads were made.
    pub fn read_batch<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: impl Iterator<Item = (&'a mut [u8; VNET_HDR_LEN], &'a mut [u8])>,
        results: &mut [i32],
    ) -> usize {
        let iovs = bufs.map(|(vnet, buf)| {
            [
                iovec(vnet.as_mut_ptr(), vnet.len()),
                iovec(buf.as_mut_ptr(), buf.len()),
            ]
        });
        self.batch(fd, false, iovs, results)
    }

    /// Writes each (header, frame) of `frames` to `fd` as one frame — at most
    /// [`RING_ENTRIES`] and `results.len()` of them — in one `io_uring_enter`. `results[i]`
    /// gets what `writev` would return for frame i: the bytes written, header included, or a
    /// negative errno (`-EAGAIN`: the queue is full). Returns how many writes were made.
    pub fn write_batch<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        frames: impl Iterator<Item = (&'a [u8; VNET_HDR_LEN], &'a [u8])>,
        results: &mut [i32],
    ) -> usize {
        // WRITEV only reads through these pointers; iovec has no const variant.
        let iovs = frames.map(|(vnet, frame)| {
            [
                iovec(vnet.as_ptr().cast_mut(), vnet.len()),
                iovec(frame.as_ptr().cast_mut(), frame.len()),
            ]
        });
        self.batch(fd, true, iovs, results)
    }

    /// Submits a NOP and returns its completion's result: `-EACCES`, as the restriction
    /// refuses every opcode but READV and WRITEV (for the dataplane's self-test).
    pub fn submit_nop(&mut self) -> i32 {
        self.submit_one(opcode::Nop::new().build())
    }

    /// Tries a register operation (`IORING_REGISTER_PROBE`), which the restriction refuses
    /// with `EACCES` (for the dataplane's self-test: under its seccomp filter the
    /// `io_uring_register` call itself kills the process).
    pub fn try_register(&self) -> io::Result<()> {
        self.ring
            .submitter()
            .register_probe(&mut io_uring::Probe::new())
    }

    /// Submits `entry`, which must point at nothing (a NOP) or at memory that lives until
    /// this returns, and returns its completion's result.
    fn submit_one(&mut self, entry: io_uring::squeue::Entry) -> i32 {
        // SAFETY: the queue is empty between batches; the callers' entries point at nothing
        // or at data that outlives this call, which waits for the completion (or aborts).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            abort("io_uring submission queue full");
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.enters += 1,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => abort("io_uring_enter failed with an operation in flight"),
            }
            if let Some(cqe) = self.ring.completion().next() {
                return cqe.result();
            }
        }
    }

    /// Submits one READV (`write` false) or WRITEV per pair of iovecs, waits for every
    /// completion and puts each result in `results`, in order; how many were submitted. The
    /// iovecs must point into memory borrowed for at least the call (the public callers take
    /// the buffers by reference).
    fn batch(
        &mut self,
        fd: BorrowedFd<'_>,
        write: bool,
        iovs: impl Iterator<Item = [libc::iovec; 2]>,
        results: &mut [i32],
    ) -> usize {
        let mut table = [[iovec(std::ptr::null_mut(), 0); 2]; RING_ENTRIES];
        let mut n = 0;
        for (slot, pair) in table.iter_mut().zip(iovs).take(results.len()) {
            *slot = pair;
            n += 1;
        }
        let fdt = Fd(fd.as_raw_fd());
        for (i, pair) in table[..n].iter().enumerate() {
            let entry = if write {
                opcode::Writev::new(fdt, pair.as_ptr(), 2)
                    .offset(u64::MAX)
                    .build()
            } else {
                opcode::Readv::new(fdt, pair.as_ptr(), 2)
                    .offset(u64::MAX)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
            }
            .user_data(i as u64);
            // SAFETY: the entry points at `table[i]`, which lives on this stack frame, and
            // through it at the caller's buffers, borrowed for at least this call; the call
            // waits below for every completion before it returns (a failed wait aborts rather
            // than return with operations in flight). `fd` is borrowed, so it stays open.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                // Cannot happen: the queue holds RING_ENTRIES entries and every batch
                // completes all of its own. Entries already pushed must not outlive the call.
                abort("io_uring submission queue full");
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
                    ) => {}
                // Operations may still point at the caller's buffers: returning would let
                // them be reused under the kernel's feet.
                Err(_) => abort("io_uring_enter failed with operations in flight"),
            }
            for cqe in self.ring.completion() {
                if let Some(r) = usize::try_from(cqe.user_data())
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *r = cqe.result();
                }
                done += 1;
            }
        }
        n
    }
}

/// One iovec.
fn iovec(base: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: base.cast(),
        iov_len: len,
    }
}

/// Ends the process: the only sound way out while the kernel may still use borrowed buffers.
fn abort(why: &str) -> ! {
    eprintln!("{why}: aborting");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::netlink::Netlink;
    use crate::netns::testing::in_fresh_netns;
    use crate::sys::tap::{open_queues, tap_rx_len, RxFrame, TunKind};

    /// Submits one entry (pointing at nothing that dies before the test does) and returns
    /// its completion's result.
    fn submit_one(ring: &mut TapRing, entry: io_uring::squeue::Entry) -> i32 {
        ring.submit_one(entry)
    }

    /// The restriction is what makes the ring safe under seccomp: any opcode other than
    /// READV and WRITEV, any SQE flag and any register operation are refused.
    #[test]
    fn the_ring_refuses_all_but_readv_and_writev() {
        let mut ring = match TapRing::new() {
            Ok(r) => r,
            Err(e) if disabled_sysctl().unwrap_or(0) != 0 => {
                eprintln!("io_uring disabled here ({e}): nothing to test");
                return;
            }
            Err(e) => panic!("TapRing::new: {e}"),
        };
        assert_eq!(ring.submit_nop(), -libc::EACCES, "NOP");
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(Fd(libc::AT_FDCWD), path.as_ptr()).build();
        assert_eq!(submit_one(&mut ring, open), -libc::EACCES, "OPENAT");
        // A READV with an SQE flag (IO_DRAIN) is refused too, before it touches the fd.
        let mut byte = [0u8; 1];
        let iov = [iovec(byte.as_mut_ptr(), 1)];
        let drained = opcode::Readv::new(Fd(-1), iov.as_ptr(), 1)
            .build()
            .flags(io_uring::squeue::Flags::IO_DRAIN);
        assert_eq!(submit_one(&mut ring, drained), -libc::EACCES, "IO_DRAIN");
        // A plain READV gets as far as the fd (-1: EBADF).
        let plain = opcode::Readv::new(Fd(-1), iov.as_ptr(), 1).build();
        assert_eq!(submit_one(&mut ring, plain), -libc::EBADF, "READV");
        assert_eq!(
            ring.try_register().map_err(|e| e.raw_os_error()),
            Err(Some(libc::EACCES)),
            "register after enable"
        );
    }

    /// READV and WRITEV on a TAP through the ring: one enter per batch of writes, an empty
    /// queue's reads complete with -EAGAIN, and two ARP requests written in one batch reach
    /// the kernel, whose two replies are read back whole.
    #[test]
    #[ignore = "needs root"]
    fn the_ring_reads_and_writes_tap_frames() {
        in_fresh_netns(|| {
            let name = "nst-uring0";
            let tap = open_queues(name, TunKind::Tap, 1, false).unwrap();
            let nl = Netlink::new().unwrap();
            nl.set_link(name, None, Some(1500), true).unwrap();
            nl.add_address(tap.ifindex, "10.99.0.1/24".parse().unwrap())
                .unwrap();
            let fd = tap.fds[0].as_fd();
            let mut ring = TapRing::new().unwrap();
            let mut res = [0i32; RING_ENTRIES];
            // Drain what the kernel sent on link up (IPv6 router solicitations and such).
            let mut bufs = vec![([0u8; VNET_HDR_LEN], vec![0u8; 2048]); 4];
            loop {
                let it = bufs.iter_mut().map(|(v, b)| (v, &mut b[..]));
                let n = ring.read_batch(fd, it, &mut res);
                assert_eq!(n, 4);
                if res[..n].iter().all(|&r| r == -libc::EAGAIN) {
                    break;
                }
            }
            // "Who has 10.99.0.1, tell 10.99.0.2", twice, in one batch of writes.
            let mut arp = vec![0xffu8; 6];
            arp.extend([2, 0, 0, 0, 0, 2, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
            arp.extend([
                2, 0, 0, 0, 0, 2, 10, 99, 0, 2, 0, 0, 0, 0, 0, 0, 10, 99, 0, 1,
            ]);
            let hdr = [0u8; VNET_HDR_LEN];
            let enters = ring.enters();
            let frames = [(&hdr, &arp[..]), (&hdr, &arp[..])].into_iter();
            assert_eq!(ring.write_batch(fd, frames, &mut res), 2);
            assert_eq!(ring.enters(), enters + 1, "one enter for the batch");
            let whole = i32::try_from(VNET_HDR_LEN + arp.len()).unwrap();
            assert_eq!(res[..2], [whole, whole]);
            // The replies come back through reads in batches; none is cut.
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut replies = 0;
            while replies < 2 && Instant::now() < deadline {
                let it = bufs.iter_mut().map(|(v, b)| (v, &mut b[..]));
                let n = ring.read_batch(fd, it, &mut res);
                for (i, &r) in res[..n].iter().enumerate() {
                    if r == -libc::EAGAIN {
                        continue;
                    }
                    let read = usize::try_from(r).expect("a read, not an error");
                    let RxFrame::Whole(len) = tap_rx_len(read, 2048) else {
                        panic!("cut frame: {r}");
                    };
                    let f = &bufs[i].1[..len];
                    if len >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] {
                        assert_eq!(f[..6], [2, 0, 0, 0, 0, 2]);
                        assert_eq!(f[28..32], [10, 99, 0, 1]);
                        replies += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(replies, 2, "both ARP requests answered");
        });
    }
}
