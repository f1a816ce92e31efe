//! Process plumbing for the privilege split: starting the dataplane child with its socket on a
//! known fd, taking that fd in the child, and capability sets.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use caps::{CapSet, Capability, CapsHashSet};

/// Starts `cmd` with `sock` as its fd `target` (close-on-exec cleared there) and SIGKILL as its
/// parent-death signal, so a dataplane never outlives its supervisor.
pub fn spawn_with_fd(mut cmd: Command, sock: &OwnedFd, target: RawFd) -> io::Result<Child> {
    let src = sock.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, dup2, fcntl) on fd numbers that are valid in the child (inherited).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if src == target {
                let flags = libc::fcntl(src, libc::F_GETFD);
                if flags < 0 || libc::fcntl(src, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(src, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Takes ownership of the socket a parent left on fd `fd` (see [`spawn_with_fd`]).
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<UnixStream> {
    // Check it is an open socket before claiming it.
    let st = nix::sys::stat::fstat(
        // SAFETY: borrowing for the duration of this call only; fstat on a bad fd just fails.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
    )?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a socket"),
        ));
    }
    // SAFETY: fd `fd` was put there for this process by its parent and nothing else in this
    // process owns it; from here on the UnixStream is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Ok(UnixStream::from(owned))
}

/// Keeps only `keep` in the effective and permitted sets, empties the inheritable and ambient
/// sets and removes everything else from the bounding set.
pub fn restrict_capabilities(keep: &[Capability]) -> Result<(), caps::errors::CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set can only shrink while CAP_SETPCAP is still effective: do it first.
    // Without CAP_SETPCAP (an unprivileged container, say) the bounding set stays as it is.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(())
}

/// Empties the effective, permitted, inheritable and ambient sets (the bounding set needs
/// CAP_SETPCAP to shrink, which the dataplane is never given; with nothing permitted and
/// no-new-privileges set it cannot regain anything).
pub fn drop_all_capabilities() -> Result<(), caps::errors::CapsError> {
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)?;
    Ok(())
}

/// Makes a system call that the dataplane's seccomp filter does not allow (for its test).
pub fn forbidden_syscall() {
    // SAFETY: getpgrp takes no arguments and has no side effects; under the dataplane's
    // filter the kernel kills the process instead of running it.
    unsafe {
        libc::syscall(libc::SYS_getpgrp);
    }
}
