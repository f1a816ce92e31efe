//! Process plumbing for the privilege split: starting the dataplane child with its socket on a
//! known fd, taking that fd in the child, capability sets and the switch to an unprivileged
//! uid, and the raw system calls the dataplane self-test tries under the seccomp filter.

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

/// The first capability set of this thread that is not empty, with what it holds (`None`
/// when every set, the bounding and ambient ones included, is empty).
pub fn capabilities_left() -> io::Result<Option<(CapSet, CapsHashSet)>> {
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Bounding,
    ] {
        let left = caps::read(None, set).map_err(|e| caps_err("capget", e))?;
        if !left.is_empty() {
            return Ok(Some((set, left)));
        }
    }
    Ok(None)
}

/// Caps glibc's malloc arenas at `max`, so that no thread ever needs glibc to count the
/// CPUs: past 8 arenas (the default test) glibc reads `/sys/devices/system/cpu/online` to
/// size its limit, an `openat` the dataplane's seccomp filter forbids (a ninth worker thread
/// was killed by SIGSYS). Call before the lock-down.
pub fn cap_malloc_arenas(max: i32) {
    /// glibc's `M_ARENA_MAX` (malloc.h).
    const M_ARENA_MAX: libc::c_int = -8;
    // SAFETY: mallopt only sets a malloc tunable; it takes plain integers and touches no
    // memory of ours.
    unsafe {
        libc::mallopt(M_ARENA_MAX, max);
    }
}

/// Keeps glibc's malloc from shrinking the heaps of its thread arenas. When a free leaves
/// more than the trim threshold at the top of a thread's heap, glibc gives the excess back,
/// and the first time it does so it reads `/proc/sys/vm/overcommit_memory` to decide how: an
/// `openat` the dataplane's seccomp filter forbids (a worker freeing a VM pod's receive
/// buffers was killed by SIGSYS, and every dataplane started after it, as soon as the VM
/// sent again). The freed memory stays in the arena for the next allocation; a heap that
/// empties entirely still goes back (munmap), and blocks of 128 KiB and more are mapped on
/// their own. Call before the lock-down.
pub fn keep_malloc_heaps() {
    /// glibc's `M_TRIM_THRESHOLD` (malloc.h).
    const M_TRIM_THRESHOLD: libc::c_int = -1;
    // SAFETY: mallopt only sets a malloc tunable; it takes plain integers and touches no
    // memory of ours.
    unsafe {
        libc::mallopt(M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
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
/// sets and removes everything else from the bounding set except `children_need`: those stay
/// in the bounding set only, so a child this process executes as root starts with them (the
/// dataplane needs them to switch to its own uid and empty its bounding set, see
/// [`become_user`]).
pub fn restrict_capabilities(
    keep: &[Capability],
    children_need: &[Capability],
) -> Result<(), caps::errors::CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let bounding: CapsHashSet = keep.iter().chain(children_need).copied().collect();
    // The bounding set can only shrink while CAP_SETPCAP is still effective: do it first.
    // Without CAP_SETPCAP (an unprivileged container, say) the bounding set stays as it is.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::all() {
            if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
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

/// The capabilities [`become_user`] uses (and then gives up with the rest): setgroups and
/// setresgid, setresuid, and emptying the bounding set.
pub const BECOME_USER_CAPS: [Capability; 3] = [
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
];

fn caps_err(what: &str, e: caps::errors::CapsError) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

fn errno_err(what: &str, e: nix::Error) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// Drops this process to `uid`/`gid` for good: empties the bounding set (while CAP_SETPCAP is
/// still there), the ambient and inheritable sets and the supplementary groups, sets every gid
/// and then every uid (real, effective, saved; the kernel then clears the permitted and
/// effective sets), checks that no capability is left anywhere, and sets SIGKILL as the
/// parent-death signal again (a credential change clears it), exiting if the parent already
/// went. Needs [`BECOME_USER_CAPS`]; fails, changing nothing it could not undo, without them.
pub fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    if uid == 0 || gid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing uid {uid} gid {gid}: the dataplane must not run as root"),
        ));
    }
    for cap in BECOME_USER_CAPS {
        if !caps::has_cap(None, CapSet::Effective, cap).map_err(|e| caps_err("capget", e))? {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("switching to uid {uid} gid {gid} needs {cap}, which this process lacks (netstackd keeps it in its bounding set for the dataplane)"),
            ));
        }
    }
    let parent = std::os::unix::process::parent_id();
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap).map_err(|e| caps_err("capbset", e))? {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| caps_err("emptying the bounding set", e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("clearing ambient caps", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| caps_err("clearing inheritable caps", e))?;
    setgroups(&[]).map_err(|e| errno_err("setgroups([])", e))?;
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(|e| errno_err(&format!("setresgid({gid})"), e))?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(|e| errno_err(&format!("setresuid({uid})"), e))?;
    caps::clear(None, CapSet::Effective).map_err(|e| caps_err("clearing effective caps", e))?;
    caps::clear(None, CapSet::Permitted).map_err(|e| caps_err("clearing permitted caps", e))?;
    if let Some((set, left)) = capabilities_left()? {
        return Err(io::Error::other(format!(
            "{set:?} capabilities left after the switch to uid {uid}: {left:?}"
        )));
    }
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| errno_err("PR_SET_PDEATHSIG", e))?;
    if std::os::unix::process::parent_id() != parent {
        return Err(io::Error::other(
            "the parent exited while this process switched uid",
        ));
    }
    Ok(())
}

/// `clone3` with no arguments: the kernel refuses it (EINVAL) without creating anything; under
/// the dataplane's filter it fails with ENOSYS before reaching the kernel.
pub fn try_clone3() -> nix::Result<()> {
    // SAFETY: a null clone_args of size 0 is rejected by the kernel before any process is
    // created, so no second thread of execution can return here.
    let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Raw `clone` with the flags of fork (a new process, not a thread). The new process, if the
/// kernel makes one, exits at once; the caller gets its pid.
pub fn try_clone_process() -> nix::Result<i64> {
    // SAFETY: with only SIGCHLD as flags and no new stack, the child is a copy-on-write copy of
    // this process that returns 0 here and immediately calls `_exit`, touching no shared state;
    // the parent gets its pid.
    let rc = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    let pid = nix::errno::Errno::result(rc)?;
    if pid == 0 {
        // SAFETY: `_exit` ends the new process without running anything of the parent's.
        unsafe { libc::_exit(0) }
    }
    Ok(pid)
}

/// Maps one anonymous page with `prot`, then (with `then_prot`) changes it with mprotect, and
/// unmaps it.
pub fn try_map(prot: libc::c_int, then_prot: Option<libc::c_int>) -> io::Result<()> {
    const LEN: usize = 4096;
    // SAFETY: a new private anonymous mapping at an address the kernel picks; nothing refers
    // to it but this function, which unmaps it before returning.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let result = match then_prot {
        // SAFETY: `map` is the LEN-byte mapping made above; nothing reads or writes it.
        Some(p) => match unsafe { libc::mprotect(map, LEN, p) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        },
        None => Ok(()),
    };
    // SAFETY: unmapping the mapping made above, which nothing refers to.
    unsafe { libc::munmap(map, LEN) };
    result
}

/// `tgkill(tgid, tid, 0)`: only the permission check, no signal is sent.
pub fn tgkill_check(tgid: i32, tid: i32) -> nix::Result<()> {
    // SAFETY: signal 0 delivers nothing; the call only checks that the thread exists and may
    // be signalled.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, 0) };
    nix::errno::Errno::result(rc).map(drop)
}
