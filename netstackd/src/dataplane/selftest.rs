//! `netstackd dataplane-selftest`: proves each refusal of the dataplane's lock-down. It drops
//! capabilities as the supervisor does, then for every probe starts itself again (as the
//! supervisor starts the dataplane) with `--probe NAME`; that process locks down exactly as
//! the dataplane child does ([`super::child::lock_down`]) and tries one thing: a forbidden call
//! must kill it with SIGSYS, `clone3` must fail with ENOSYS, the calls the dataplane needs
//! (threads, naming them, plain memory, signalling itself) must still work, and even without
//! the filter the new uid can neither become root again nor signal a root process.
//! One row per probe on stdout; the exit status is non-zero if any row failed.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use anyhow::Context;
use nix::errno::Errno;
use nix::unistd::Pid;

use std::os::fd::{AsFd, OwnedFd};

use super::child::{lock_down, DataplaneUser};
use crate::sys::process;
use crate::sys::uring::TapRing;
use crate::sys::VNET_HDR_LEN;

/// What the probe process knew before it locked down.
pub struct Before {
    /// Its parent: a root process (the supervisor, or the self-test).
    pub parent: i32,
    /// The user it switches to.
    pub user: DataplaneUser,
    /// A memfd standing for a VM's guest memory (only the `guest-memory` probe makes one:
    /// the locked-down process cannot).
    pub guest_memory: Option<std::fs::File>,
    /// A restricted io_uring and a pipe (read end, write end), made as the dataplane makes its
    /// rings before the lock-down (only the `io-uring-*` probes that use a ring make one).
    pub uring: Option<std::sync::Mutex<(TapRing, OwnedFd, OwnedFd)>>,
}

impl Before {
    /// Notes the facts now, while the process may still ask.
    pub fn now(user: DataplaneUser) -> Before {
        Before {
            parent: std::os::unix::process::parent_id() as i32,
            user,
            guest_memory: None,
            uring: None,
        }
    }
}

/// What a probe's call did, when the process survived it.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded (and whatever it checked held).
    Allowed,
    /// It failed with this errno.
    Failed(Errno),
    /// It succeeded but the state it checked was wrong.
    Wrong(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Allowed => write!(f, "allowed"),
            Outcome::Failed(e) => write!(f, "errno {}", *e as i32),
            Outcome::Wrong(why) => write!(f, "wrong: {why}"),
        }
    }
}

fn outcome<T>(r: nix::Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Allowed,
        Err(e) => Outcome::Failed(e),
    }
}

fn io_outcome<T>(r: std::io::Result<T>) -> Outcome {
    match r {
        Ok(_) => Outcome::Allowed,
        Err(e) => Outcome::Failed(Errno::from_raw(e.raw_os_error().unwrap_or(0))),
    }
}

/// How far the probe process locks down before it tries its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Only the uid/gid switch and the capability sets: what the kernel itself refuses.
    Privileges,
    /// Everything the dataplane does, seccomp included.
    Full,
}

/// What must happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The process is killed by SIGSYS.
    Killed,
    /// The call fails with this errno and the process lives on.
    Errno(Errno),
    /// The call works.
    Allowed,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Killed => write!(f, "killed by SIGSYS"),
            Expect::Errno(e) => write!(f, "errno {} ({e:?})", *e as i32),
            Expect::Allowed => write!(f, "allowed"),
        }
    }
}

/// One thing to try after locking down.
pub struct Probe {
    /// Its name (`--probe NAME`, `NETSTACK_DATAPLANE_SELFTEST=NAME`).
    pub name: &'static str,
    /// What it tries.
    pub what: &'static str,
    /// How far to lock down first.
    pub stage: Stage,
    /// What must happen.
    pub expect: Expect,
    /// The attempt.
    pub run: fn(&Before) -> Outcome,
}

fn uid_gid(before: &Before) -> Outcome {
    let (u, g) = match (nix::unistd::getresuid(), nix::unistd::getresgid()) {
        (Ok(u), Ok(g)) => (u, g),
        (Err(e), _) | (_, Err(e)) => return Outcome::Failed(e),
    };
    let uids = [u.real, u.effective, u.saved].map(|x| x.as_raw());
    let gids = [g.real, g.effective, g.saved].map(|x| x.as_raw());
    if uids.iter().any(|&x| x != before.user.uid) || gids.iter().any(|&x| x != before.user.gid) {
        return Outcome::Wrong(format!("uids {uids:?} gids {gids:?}"));
    }
    match nix::unistd::getgroups() {
        Ok(groups) if groups.is_empty() => Outcome::Allowed,
        Ok(groups) => Outcome::Wrong(format!("supplementary groups {groups:?}")),
        Err(e) => Outcome::Failed(e),
    }
}

fn no_capabilities(_: &Before) -> Outcome {
    match crate::sys::process::capabilities_left() {
        Ok(None) => Outcome::Allowed,
        Ok(Some((set, left))) => Outcome::Wrong(format!("{set:?}: {left:?}")),
        Err(e) => Outcome::Wrong(format!("reading capabilities: {e}")),
    }
}

fn setuid_root(_: &Before) -> Outcome {
    let root = nix::unistd::Uid::from_raw(0);
    outcome(nix::unistd::setresuid(root, root, root))
}

fn kill_parent(before: &Before) -> Outcome {
    outcome(nix::sys::signal::kill(Pid::from_raw(before.parent), None))
}

fn clone3(_: &Before) -> Outcome {
    outcome(process::try_clone3())
}

fn thread(_: &Before) -> Outcome {
    let spawned = std::thread::Builder::new()
        .name("dp-probe".into())
        .spawn(|| 7);
    match spawned.map(|t| t.join()) {
        Ok(Ok(7)) => Outcome::Allowed,
        Ok(_) => Outcome::Wrong("the thread did not finish".into()),
        Err(e) => io_outcome::<()>(Err(e)),
    }
}

/// A thread fills its malloc arena's heap with blocks under the mmap threshold and frees
/// them, newest first, each merging into the heap's top: unless told otherwise (see
/// `keep_malloc_heaps`), glibc shrinks the heap and reads a /proc file to decide how.
fn heap_trim(_: &Before) -> Outcome {
    let spawned = std::thread::Builder::new()
        .name("dp-probe".into())
        .spawn(|| {
            let mut blocks: Vec<Vec<u8>> = (0..32).map(|_| vec![1u8; 100 * 1024]).collect();
            let sum: usize = blocks.iter().map(|b| usize::from(b[b.len() - 1])).sum();
            while blocks.pop().is_some() {}
            sum
        });
    match spawned.map(|t| t.join()) {
        Ok(Ok(32)) => Outcome::Allowed,
        Ok(_) => Outcome::Wrong("the thread did not finish".into()),
        Err(e) => io_outcome::<()>(Err(e)),
    }
}

fn clone_process(_: &Before) -> Outcome {
    outcome(process::try_clone_process())
}

fn prctl_name(_: &Before) -> Outcome {
    outcome(nix::sys::prctl::set_name(c"dp-probe"))
}

fn prctl_other(_: &Before) -> Outcome {
    outcome(nix::sys::prctl::get_dumpable())
}

fn mmap_rw(_: &Before) -> Outcome {
    io_outcome(process::try_map(libc::PROT_READ | libc::PROT_WRITE, None))
}

/// Maps a VM's guest memory as the dataplane does for a vhost-user pod (a shared mapping of
/// the memfd the supervisor passes) and writes and reads it back through `vm-memory`.
fn guest_memory(before: &Before) -> Outcome {
    use vm_memory::{Bytes, GuestAddress};
    let Some(file) = &before.guest_memory else {
        return Outcome::Wrong("no memfd".into());
    };
    let file = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return io_outcome::<()>(Err(e)),
    };
    let region = crate::vhost::MemRegion {
        guest_addr: 0,
        size: GUEST_MEMORY_BYTES,
        user_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
        file,
    };
    let mem = match crate::vhost::map_regions(&[region]) {
        Ok(m) => m,
        Err(e) => return Outcome::Wrong(e.to_string()),
    };
    let mut back = [0u8; 4];
    let rw = mem
        .write_slice(b"vhst", GuestAddress(0x1000))
        .and_then(|()| mem.read_slice(&mut back, GuestAddress(0x1000)));
    match rw {
        Ok(()) if &back == b"vhst" => Outcome::Allowed,
        Ok(()) => Outcome::Wrong(format!("read back {back:?}")),
        Err(e) => Outcome::Wrong(e.to_string()),
    }
}

/// The size of the `guest-memory` probe's memfd.
const GUEST_MEMORY_BYTES: u64 = 1 << 16;

fn mmap_exec(_: &Before) -> Outcome {
    io_outcome(process::try_map(libc::PROT_READ | libc::PROT_EXEC, None))
}

fn mprotect_exec(_: &Before) -> Outcome {
    io_outcome(process::try_map(
        libc::PROT_READ | libc::PROT_WRITE,
        Some(libc::PROT_READ | libc::PROT_EXEC),
    ))
}

fn tgkill_own(_: &Before) -> Outcome {
    let pid = std::process::id() as i32;
    outcome(process::tgkill_check(pid, nix::unistd::gettid().as_raw()))
}

fn tgkill_parent(before: &Before) -> Outcome {
    outcome(process::tgkill_check(before.parent, before.parent))
}

fn execve(_: &Before) -> Outcome {
    outcome(nix::unistd::execv(c"/bin/true", &[c"/bin/true"]))
}

fn open(_: &Before) -> Outcome {
    io_outcome(std::fs::File::open("/etc/hostname"))
}

fn socket(_: &Before) -> Outcome {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    outcome(socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::empty(),
        None,
    ))
}

fn uring_setup(_: &Before) -> Outcome {
    io_outcome(TapRing::new())
}

/// The ring made before the lock-down, or why there is none.
fn with_ring(
    before: &Before,
    f: impl FnOnce(&mut (TapRing, OwnedFd, OwnedFd)) -> Outcome,
) -> Outcome {
    match &before.uring {
        Some(m) => f(&mut m.lock().unwrap_or_else(|p| p.into_inner())),
        None => Outcome::Wrong("no ring".into()),
    }
}

/// A frame written through the ring into the pipe and read back through it, as a worker's
/// TAP batches go.
fn uring_enter(before: &Before) -> Outcome {
    with_ring(before, |(ring, rd, wr)| {
        let (hdr, frame) = ([7u8; VNET_HDR_LEN], *b"frame");
        let whole = i32::try_from(VNET_HDR_LEN + frame.len()).unwrap_or(i32::MAX);
        let mut res = [0i32; 1];
        ring.write_batch(wr.as_fd(), std::iter::once((&hdr, &frame[..])), &mut res);
        if res[0] != whole {
            return Outcome::Wrong(format!("write: {}", res[0]));
        }
        let (mut h, mut f) = ([0u8; VNET_HDR_LEN], [0u8; 16]);
        ring.read_batch(rd.as_fd(), std::iter::once((&mut h, &mut f[..])), &mut res);
        match res[0] {
            r if r == whole && h == hdr && f[..frame.len()] == frame => Outcome::Allowed,
            r => Outcome::Wrong(format!("read: {r}")),
        }
    })
}

fn uring_nop(before: &Before) -> Outcome {
    with_ring(before, |(ring, _, _)| match ring.submit_nop() {
        r if r < 0 => Outcome::Failed(Errno::from_raw(-r)),
        r => Outcome::Wrong(format!("NOP completed with {r}")),
    })
}

fn uring_register(before: &Before) -> Outcome {
    with_ring(before, |(ring, _, _)| io_outcome(ring.try_register()))
}

fn getpgrp(_: &Before) -> Outcome {
    nix::unistd::getpgrp();
    Outcome::Allowed
}

/// Every probe, in the order the self-test runs them.
pub static PROBES: &[Probe] = &[
    Probe {
        name: "uid-gid",
        what: "real, effective and saved uid and gid are the dataplane user's, no groups",
        stage: Stage::Privileges,
        expect: Expect::Allowed,
        run: uid_gid,
    },
    Probe {
        name: "capabilities",
        what: "every capability set is empty, the bounding set too",
        stage: Stage::Privileges,
        expect: Expect::Allowed,
        run: no_capabilities,
    },
    Probe {
        name: "setuid-root",
        what: "setresuid(0, 0, 0) without the filter",
        stage: Stage::Privileges,
        expect: Expect::Errno(Errno::EPERM),
        run: setuid_root,
    },
    Probe {
        name: "kill-root",
        what: "kill(root parent, 0) without the filter",
        stage: Stage::Privileges,
        expect: Expect::Errno(Errno::EPERM),
        run: kill_parent,
    },
    Probe {
        name: "clone3",
        what: "clone3 (its flags are out of a filter's sight)",
        stage: Stage::Full,
        expect: Expect::Errno(Errno::ENOSYS),
        run: clone3,
    },
    Probe {
        name: "thread",
        what: "start and join a thread (clone3, then clone with the thread flags)",
        stage: Stage::Full,
        expect: Expect::Allowed,
        run: thread,
    },
    Probe {
        name: "heap-trim",
        what: "a thread frees 3.2 MiB of 100 KiB blocks at the top of its malloc heap",
        stage: Stage::Full,
        expect: Expect::Allowed,
        run: heap_trim,
    },
    Probe {
        name: "clone-process",
        what: "clone with fork's flags",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: clone_process,
    },
    Probe {
        name: "prctl-set-name",
        what: "prctl(PR_SET_NAME)",
        stage: Stage::Full,
        expect: Expect::Allowed,
        run: prctl_name,
    },
    Probe {
        name: "prctl-other",
        what: "prctl(PR_GET_DUMPABLE)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: prctl_other,
    },
    Probe {
        name: "mmap-rw",
        what: "mmap(PROT_READ|PROT_WRITE)",
        stage: Stage::Full,
        expect: Expect::Allowed,
        run: mmap_rw,
    },
    Probe {
        name: "guest-memory",
        what: "map a VM's guest memory (a shared memfd mapping, vhost-user) and use it",
        stage: Stage::Full,
        expect: Expect::Allowed,
        run: guest_memory,
    },
    Probe {
        name: "mmap-exec",
        what: "mmap(PROT_READ|PROT_EXEC)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: mmap_exec,
    },
    Probe {
        name: "mprotect-exec",
        what: "mprotect(PROT_READ|PROT_EXEC) of a fresh page",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: mprotect_exec,
    },
    Probe {
        name: "tgkill-own",
        what: "tgkill(own pid, own tid, 0)",
        stage: Stage::Full,
        expect: Expect::Allowed,
        run: tgkill_own,
    },
    Probe {
        name: "tgkill-other",
        what: "tgkill(parent pid, parent pid, 0)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: tgkill_parent,
    },
    Probe {
        name: "kill",
        what: "kill(parent pid, 0)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: kill_parent,
    },
    Probe {
        name: "execve",
        what: "execve(/bin/true)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: execve,
    },
    Probe {
        name: "open",
        what: "open(/etc/hostname)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: open,
    },
    Probe {
        name: "socket",
        what: "socket(AF_INET, SOCK_DGRAM)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: socket,
    },
    Probe {
        name: "io-uring-setup",
        what: "io_uring_setup (the rings are made before the lock-down)",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: uring_setup,
    },
    Probe {
        name: "io-uring-enter",
        what: "a WRITEV and a READV through a restricted ring made before the lock-down",
        stage: Stage::Full,
        expect: Expect::Allowed,
        run: uring_enter,
    },
    Probe {
        name: "io-uring-nop",
        what: "a NOP through that ring (only READV and WRITEV are allowed on it)",
        stage: Stage::Full,
        expect: Expect::Errno(Errno::EACCES),
        run: uring_nop,
    },
    Probe {
        name: "io-uring-register",
        what: "io_uring_register on that ring",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: uring_register,
    },
    Probe {
        name: "forbidden-syscall",
        what: "getpgrp, a call outside the allow-list",
        stage: Stage::Full,
        expect: Expect::Killed,
        run: getpgrp,
    },
];

/// The probe called `name`, if there is one.
pub fn probe(name: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|p| p.name == name)
}

/// The probe process: locks down as far as the probe says, tries it and prints the outcome
/// (if it survives).
pub fn run_probe(name: &str, user: DataplaneUser) -> anyhow::Result<()> {
    let probe = probe(name).with_context(|| format!("no probe {name:?}"))?;
    let mut before = Before::now(user);
    if probe.name == "guest-memory" {
        let fd = nix::sys::memfd::memfd_create("guest-ram", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .context("memfd for the guest-memory probe")?;
        let file = std::fs::File::from(fd);
        file.set_len(GUEST_MEMORY_BYTES)
            .context("sizing the guest-memory probe's memfd")?;
        before.guest_memory = Some(file);
    }
    if probe.name.starts_with("io-uring-") && probe.name != "io-uring-setup" {
        let ring = TapRing::new().context("a restricted io_uring for the probe")?;
        let (rd, wr) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("a pipe for the probe")?;
        before.uring = Some(std::sync::Mutex::new((ring, rd, wr)));
    }
    match probe.stage {
        Stage::Privileges => process::become_user(user.uid, user.gid)
            .with_context(|| format!("switching to uid:gid {user}"))?,
        Stage::Full => lock_down(user)?,
    }
    let outcome = (probe.run)(&before);
    println!("{outcome}");
    Ok(())
}

/// What the probe process did, as the self-test saw it.
fn observed(out: &std::process::Output) -> String {
    if out.status.signal() == Some(libc::SIGSYS) {
        return "killed by SIGSYS".into();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.trim();
    match (out.status.code(), line.strip_prefix("errno ")) {
        (Some(0), Some(n)) => match n.parse::<i32>() {
            Ok(n) => format!("errno {n} ({:?})", Errno::from_raw(n)),
            Err(_) => format!("unreadable report {line:?}"),
        },
        (Some(0), None) if line == "allowed" => "allowed".into(),
        _ => format!(
            "{} with report {line:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// The self-test: every probe in its own process, one row each. Returns whether all passed.
pub fn run_all(user: DataplaneUser) -> anyhow::Result<bool> {
    process::restrict_capabilities(&crate::daemon::SUPERVISOR_CAPS, &process::BECOME_USER_CAPS)
        .context("dropping capabilities as the supervisor does")?;
    let exe = std::env::current_exe().context("finding netstackd's own binary")?;
    let mut all = true;
    for p in PROBES {
        let out = Command::new(&exe)
            .args([
                "dataplane-selftest",
                "--user",
                &user.to_string(),
                "--probe",
                p.name,
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting probe {}", p.name))?;
        let got = observed(&out);
        let pass = got == p.expect.to_string();
        all &= pass;
        println!(
            "{} {}: {} ({}): expected {}, got {got}",
            if pass { "PASS" } else { "FAIL" },
            p.name,
            p.what,
            match p.stage {
                Stage::Privileges => "uid switch only",
                Stage::Full => "full lock-down",
            },
            p.expect,
        );
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names_are_unique_and_found() {
        for p in PROBES {
            assert_eq!(PROBES.iter().filter(|q| q.name == p.name).count(), 1);
            assert!(std::ptr::eq(probe(p.name).unwrap(), p), "{}", p.name);
        }
        assert!(probe("thread-panic").is_none());
        assert!(probe("").is_none());
    }

    #[test]
    fn outcomes_read_back_as_expectations() {
        assert_eq!(
            Outcome::Failed(Errno::ENOSYS).to_string(),
            "errno 38",
            "the report the parent parses"
        );
        assert_eq!(Outcome::Allowed.to_string(), Expect::Allowed.to_string());
    }
}
