//! Passing file descriptors over a unix stream socket (SCM_RIGHTS) and reading the peer's
//! credentials (SO_PEERCRED).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
};

/// Sends `data` (at least its first bytes) with `fds` attached; returns the bytes sent.
pub fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let iov = [IoSlice::new(data)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsgs };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The most descriptors Linux passes in one message.
const SCM_MAX_FD: usize = 253;

/// Takes ownership of a descriptor the kernel just installed in this process.
fn adopt_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was installed in our fd table by this recvmsg's SCM_RIGHTS message; nothing
    // else in the process knows the number, so this is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Receives up to `buf.len()` bytes and any descriptors sent with them (at most `max_fds`).
///
/// Returns the byte count and the descriptors, owned (and close-on-exec). A message whose
/// descriptors did not fit is an error; the descriptors that did arrive are closed.
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    // Room for the kernel's per-message maximum (SCM_MAX_FD), not just `max_fds`: with less,
    // the kernel truncates the control data and nix then refuses to parse it at all, so the
    // descriptors that did arrive could not be found and closed.
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    let cmsgs = msg.cmsgs().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control data truncated: {e}"),
        )
    })?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            fds.extend(raw.into_iter().map(adopt_received_fd));
        }
    }
    let n = msg.bytes;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("too many file descriptors (at most {max_fds})"),
        ));
    }
    Ok((n, fds))
}

/// The peer's (pid, uid, gid) as the kernel recorded them at connect time.
pub fn peer_credentials(sock: &UnixStream) -> io::Result<(i32, u32, u32)> {
    let cred = getsockopt(&sock.as_fd(), sockopt::PeerCredentials)?;
    Ok((cred.pid(), cred.uid(), cred.gid()))
}
