//! The two batched UDP socket calls nsbench needs and the process's CPU time, as safe
//! wrappers: the only `unsafe` in the crate (packet sockets and TAPs come from
//! `netstack_core::sys`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

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
