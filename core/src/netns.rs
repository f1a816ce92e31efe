//! Running work inside another network namespace.
//!
//! `setns(2)` moves only the calling thread, and a thread from a pool (tokio's workers
//! included) would go back to the pool in the wrong namespace. So [`run_in_netns`] runs the
//! work on a fresh, dedicated OS thread that enters the namespace, runs it and exits; the
//! caller's thread never changes namespace. Sockets opened there (an rtnetlink socket, a TAP
//! queue) stay bound to that namespace and may be used from any thread afterwards.
#![forbid(unsafe_code)]

use std::any::Any;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::sys::ns::ns_type;

/// Errors of [`run_in_netns`]; each names the namespace path.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file does not exist (the sandbox is gone).
    #[error("network namespace {} does not exist", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but is not a network namespace file.
    #[error("{} is not a network namespace", path.display())]
    NotANetns {
        /// The path given.
        path: PathBuf,
    },
    /// Opening the namespace file failed for another reason (e.g. permissions).
    #[error("opening network namespace {}: {source}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The thread for the work could not be started.
    #[error("starting a thread for network namespace {}: {source}", path.display())]
    Spawn {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `setns(CLONE_NEWNET)` failed.
    #[error("entering network namespace {}: {source}", path.display())]
    Setns {
        /// The path given.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The path names a different namespace than the one recorded (`/proc/PID/ns/net` of a
    /// process that exited, its pid now someone else's).
    #[error("{} is no longer the network namespace recorded: {reason}", path.display())]
    Changed {
        /// The path given.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Creating or removing a named namespace failed at step `op`.
    #[error("{op} for network namespace {}: {source}", path.display())]
    Named {
        /// The namespace path.
        path: PathBuf,
        /// The step, e.g. `bind-mounting the namespace`.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The work panicked; the panic was caught on its thread.
    #[error("work in network namespace {} panicked: {message}", path.display())]
    Panicked {
        /// The path given.
        path: PathBuf,
        /// The panic message, when it was a string.
        message: String,
    },
}

/// Runs `f` on a dedicated thread (named `netns`) inside the network namespace at `netns`,
/// waits for it and returns its result.
///
/// The namespace file is opened and checked (`NS_GET_NSTYPE`) before the thread starts: a
/// missing file is [`NetnsError::NotFound`], any other file [`NetnsError::NotANetns`]. The
/// thread exits after `f`, so no thread outlives its stay in the namespace; a panic in `f` is
/// returned as [`NetnsError::Panicked`].
///
/// Inside `f`, read per-namespace proc files through `/proc/thread-self/net/...`:
/// `/proc/self/net` follows the main thread's namespace, not the current thread's.
pub fn run_in_netns<F, T>(netns: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = open_netns(netns)?;
    run_in_open_netns(netns, file, f)
}

/// [`run_in_netns`], but only if the namespace at `netns` is still the one `recorded`
/// describes ([`NetnsId::verify`] on the opened file, so nothing can change in between);
/// otherwise [`NetnsError::Changed`].
pub fn run_in_recorded_netns<F, T>(netns: &Path, recorded: &NetnsId, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    recorded.check_process(netns)?;
    let file = open_netns(netns)?;
    recorded.verify(netns, &file)?;
    run_in_open_netns(netns, file, f)
}

/// Opens a namespace file and checks it is a network namespace.
fn open_netns(netns: &Path) -> Result<File, NetnsError> {
    let path = || netns.to_path_buf();
    let file = File::open(netns).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetnsError::NotFound { path: path() },
        _ => NetnsError::Open {
            path: path(),
            source,
        },
    })?;
    match ns_type(file.as_fd()) {
        Ok(kind) if kind == CloneFlags::CLONE_NEWNET => Ok(file),
        _ => Err(NetnsError::NotANetns { path: path() }),
    }
}

fn run_in_open_netns<F, T>(netns: &Path, file: File, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = || netns.to_path_buf();
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, move || {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
                drop(file);
                Ok(f())
            })
            .map_err(|source| NetnsError::Spawn {
                path: path(),
                source,
            })?;
        match worker.join() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(NetnsError::Setns {
                path: path(),
                source,
            }),
            Err(payload) => Err(NetnsError::Panicked {
                path: path(),
                message: panic_message(payload.as_ref()),
            }),
        }
    })
}

/// Is `path` a network namespace file (a bind mount of one)?
pub fn is_netns(path: &Path) -> bool {
    File::open(path).is_ok_and(|f| ns_type(f.as_fd()).is_ok_and(|k| k == CloneFlags::CLONE_NEWNET))
}

/// Makes `path` a named network namespace, as `ip netns add` does, unless it already is one.
/// Returns whether it created a new one.
///
/// Like iproute2, it makes the directory a shared mount point first (so the namespace's
/// bind mount is seen from other mount namespaces), but unlike iproute2 only when that covers
/// nothing ([`crate::mounts::share_dir`]); then it creates an empty file and bind-mounts a new
/// namespace, made on a throwaway thread by `unshare(CLONE_NEWNET)`, over it. The
/// namespace lives as long as the mount does (see [`remove_named_netns`]).
pub fn ensure_named_netns(path: &Path) -> Result<bool, NetnsError> {
    use nix::mount::{mount, MsFlags};
    if is_netns(path) {
        return Ok(false);
    }
    let err = |op: &'static str| {
        move |source: io::Error| NetnsError::Named {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| err("finding its directory")(io::ErrorKind::InvalidInput.into()))?;
    // Plugins run in parallel: one at a time makes the directory and the namespace, and the
    // ones that waited find it made. The lock file sits beside the directory, not in it (an
    // empty directory is the one kind made a mount point).
    let _lock = crate::mounts::lock_beside(dir).map_err(err("locking"))?;
    if is_netns(path) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(err("creating its directory"))?;
    // Never bind a directory that holds anything onto itself: that would hide the namespace
    // mounts a runtime made there (see `mounts`).
    crate::mounts::share_dir(dir).map_err(err("making its directory a shared mount"))?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err("creating the mount point file"))?;
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| -> nix::Result<()> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
            })
            .join()
            .unwrap_or(Err(nix::Error::EIO))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(err("bind-mounting a new namespace")(e.into()));
    }
    Ok(true)
}

/// Removes the named network namespace at `path` (unmount and delete the file), as
/// `ip netns del` does; the namespace goes once nothing else holds it, and its virtual
/// devices (veth peers) with it. Returns whether there was one.
pub fn remove_named_netns(path: &Path) -> Result<bool, NetnsError> {
    use nix::mount::{umount2, MntFlags};
    if !is_netns(path) {
        return Ok(false);
    }
    umount2(path, MntFlags::MNT_DETACH).map_err(|e| NetnsError::Named {
        path: path.to_path_buf(),
        op: "unmounting",
        source: e.into(),
    })?;
    let _ = std::fs::remove_file(path);
    Ok(true)
}

/// The pid of a `/proc/PID/ns/net` path (what the OCI hook attaches), `None` for any other
/// form (a pinned `/run/netns/NAME`). Such a path names whatever process has that pid now.
pub fn proc_pid(path: &Path) -> Option<u32> {
    let rest = path.to_str()?.strip_prefix("/proc/")?;
    let pid = rest.strip_suffix("/ns/net")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// When process `pid` started, in clock ticks after boot (field 22 of `/proc/PID/stat`):
/// with the pid, it tells one process from a later one that reuses the pid.
pub fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in stat"))?;
    // Fields from 3 on; starttime is field 22.
    after
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no start time in stat"))
}

/// What identifies a network namespace across a netstackd restart: the (device, inode) of its
/// nsfs file and, for a `/proc/PID/ns/net` path, the start time of that process (an inode
/// number can be reused once a namespace is freed; a pid with the same start time cannot).
///
/// The (device, inode) is missing when netstackd could not open the namespace file: opening
/// `/proc/PID/ns/net` needs ptrace access, which a supervisor with fewer capabilities than
/// the process lacks. The start time can always be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetnsId {
    /// `st_dev` of the namespace file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    /// `st_ino` of the namespace file: the namespace's inode number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// For `/proc/PID/ns/net`: the process's start time ([`process_start_time`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
}

impl NetnsId {
    /// The identity of the namespace at `path` now. For `/proc/PID/ns/net`, a namespace file
    /// that cannot be opened (no ptrace access) leaves only the process start time.
    pub fn of(path: &Path) -> Result<Self, NetnsError> {
        let pid_start = Self::pid_start(path)?;
        let file = match open_netns(path) {
            Ok(f) => f,
            Err(NetnsError::Open { .. }) if pid_start.is_some() => {
                return Ok(NetnsId {
                    dev: None,
                    ino: None,
                    pid_start,
                })
            }
            Err(e) => return Err(e),
        };
        let id = Self::of_open(path, &file)?;
        if id.pid_start != pid_start {
            return Err(NetnsError::Changed {
                path: path.to_path_buf(),
                reason: "the process exited while it was looked at".into(),
            });
        }
        Ok(id)
    }

    /// The start time of the process of a `/proc/PID/ns/net` path (`None` for other paths);
    /// [`NetnsError::NotFound`] when there is no such process.
    fn pid_start(path: &Path) -> Result<Option<u64>, NetnsError> {
        let Some(pid) = proc_pid(path) else {
            return Ok(None);
        };
        process_start_time(pid)
            .map(Some)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => NetnsError::NotFound {
                    path: path.to_path_buf(),
                },
                _ => NetnsError::Open {
                    path: path.to_path_buf(),
                    source,
                },
            })
    }

    fn of_open(path: &Path, file: &File) -> Result<Self, NetnsError> {
        let meta = file.metadata().map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // Read after the open: if the process was replaced before the open, the start time
        // read here is the new one's and so differs from the recorded one.
        Ok(NetnsId {
            dev: Some(meta.dev()),
            ino: Some(meta.ino()),
            pid_start: Self::pid_start(path)?,
        })
    }

    /// Checks, before anything is opened, that the process of a `/proc/PID/ns/net` path is
    /// still the one recorded ([`NetnsError::Changed`] if its pid now belongs to another,
    /// [`NetnsError::NotFound`] if there is none).
    pub fn check_process(&self, path: &Path) -> Result<(), NetnsError> {
        let now = Self::pid_start(path)?;
        if now != self.pid_start {
            return Err(NetnsError::Changed {
                path: path.to_path_buf(),
                reason: format!(
                    "process started at tick {now:?}, not {:?} (the pid was reused)",
                    self.pid_start
                ),
            });
        }
        Ok(())
    }

    /// Checks that `file`, just opened from `path`, is the namespace this identity records.
    pub fn verify(&self, path: &Path, file: &File) -> Result<(), NetnsError> {
        let now = Self::of_open(path, file)?;
        if let (Some(dev), Some(ino)) = (self.dev, self.ino) {
            if (now.dev, now.ino) != (Some(dev), Some(ino)) {
                return Err(NetnsError::Changed {
                    path: path.to_path_buf(),
                    reason: format!(
                        "namespace inode {}:{} instead of {dev}:{ino}",
                        now.dev.unwrap_or_default(),
                        now.ino.unwrap_or_default()
                    ),
                });
            }
        }
        self.check_process(path)
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The namespace file of the calling thread's network namespace,
/// `/proc/self/task/<tid>/ns/net` (valid while the thread lives).
pub fn current_netns_path() -> PathBuf {
    PathBuf::from(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()))
}

/// Whether two namespace files (or bind mounts of them) are the same namespace, comparing
/// their (device, inode).
pub fn same_netns(a: &Path, b: &Path) -> io::Result<bool> {
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// Helpers for tests that need a namespace of their own.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix::sched::{unshare, CloneFlags};

    /// Runs `f` on a thread moved into a new, anonymous network namespace, which disappears
    /// with the thread and whatever `f` left open. Panics in `f` propagate.
    pub fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                f()
            });
            worker
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A named namespace (`ip netns add`), deleted on drop.
    pub struct NamedNetns {
        /// Its name under /run/netns.
        pub name: String,
        /// `/run/netns/<name>`.
        pub path: PathBuf,
    }

    // No `Default`: making a namespace is a side effect, not a default value.
    #[allow(clippy::new_without_default)]
    impl NamedNetns {
        /// Creates `nst-<pid>-<n>` so concurrent test runs do not collide.
        pub fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "nst-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let status = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("running ip netns add");
            assert!(status.success(), "ip netns add {name} failed");
            let path = PathBuf::from(format!("/run/netns/{name}"));
            NamedNetns { name, path }
        }

        /// Runs `ip -n <name> ARGS...` and asserts it succeeded.
        pub fn ip(&self, args: &[&str]) {
            let status = Command::new("ip")
                .args(["-n", &self.name])
                .args(args)
                .status()
                .expect("running ip");
            assert!(status.success(), "ip -n {} {args:?} failed", self.name);
        }
    }

    impl Drop for NamedNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::testing::NamedNetns;
    use super::*;
    use crate::netlink::Netlink;

    #[test]
    fn missing_path_is_not_found() {
        let err = run_in_netns(Path::new("/run/netns/nst-does-not-exist"), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("/run/netns/nst-does-not-exist"));
    }

    #[test]
    fn plain_file_is_not_a_netns() {
        let err = run_in_netns(Path::new("/etc/hostname"), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::NotANetns { .. }), "{err}");
        assert!(err.to_string().contains("/etc/hostname"));
    }

    #[test]
    fn other_namespace_kind_is_not_a_netns() {
        let err = run_in_netns(Path::new("/proc/self/ns/uts"), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::NotANetns { .. }), "{err}");
    }

    #[test]
    fn current_netns_path_is_the_threads_namespace() {
        let path = current_netns_path();
        assert!(path.starts_with("/proc/self/task"));
        assert!(same_netns(&path, Path::new("/proc/thread-self/ns/net")).unwrap());
        assert!(same_netns(&path, Path::new("/proc/self/ns/net")).unwrap());
    }

    #[test]
    fn proc_pid_paths_are_recognised() {
        assert_eq!(proc_pid(Path::new("/proc/123/ns/net")), Some(123));
        for other in [
            "/run/netns/x",
            "/proc/self/ns/net",
            "/proc/12/ns/mnt",
            "/proc//ns/net",
            "/proc/1/task/1/ns/net",
        ] {
            assert_eq!(proc_pid(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn a_recorded_process_netns_is_told_from_its_successor() {
        let me = std::process::id();
        let path = PathBuf::from(format!("/proc/{me}/ns/net"));
        let id = NetnsId::of(&path).unwrap();
        assert!(id.pid_start.is_some());
        assert_eq!(run_in_recorded_netns(&path, &id, || 7).unwrap(), 7);
        // The same namespace, but another process holds the pid now.
        let reused = NetnsId {
            pid_start: id.pid_start.map(|t| t + 1),
            ..id
        };
        let err = run_in_recorded_netns(&path, &reused, || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Changed { .. }), "{err}");
        // Another namespace behind the path.
        let other = NetnsId {
            ino: id.ino.map(|i| i + 1),
            ..id
        };
        let err = run_in_recorded_netns(&path, &other, || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Changed { .. }), "{err}");
        assert!(err.to_string().contains("inode"), "{err}");
    }

    #[test]
    fn an_exited_process_netns_is_not_found() {
        let mut child = Command::new("true").spawn().unwrap();
        let path = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
        child.wait().unwrap();
        let err = NetnsId::of(&path).unwrap_err();
        assert!(matches!(err, NetnsError::NotFound { .. }), "{err}");
    }

    #[test]
    #[ignore = "needs root"]
    fn work_runs_inside_the_namespace_and_not_in_the_host() {
        let ns = NamedNetns::new();
        let host = current_netns_path();
        let (inside, thread_name, devices) = run_in_netns(&ns.path, || {
            // A child process inherits this thread's namespace.
            let status = Command::new("ip")
                .args([
                    "link", "add", "nst-v0", "type", "veth", "peer", "name", "nst-v1",
                ])
                .status()
                .unwrap();
            assert!(status.success());
            let inside = same_netns(&current_netns_path(), &ns.path).unwrap();
            let name = std::thread::current().name().map(str::to_owned);
            let devices = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
            (inside, name, devices)
        })
        .unwrap();
        assert!(inside);
        assert_eq!(thread_name.as_deref(), Some("netns"));
        assert!(devices.contains("nst-v0:"), "{devices}");
        // The calling thread never moved.
        assert!(same_netns(&current_netns_path(), &host).unwrap());
        assert!(!same_netns(&host, &ns.path).unwrap());
        let host_nl = Netlink::new().unwrap();
        assert_eq!(host_nl.link_index("nst-v0").unwrap(), None);

        // A netlink socket opened inside keeps working on that namespace from out here.
        let ns_nl = run_in_netns(&ns.path, || Netlink::new().unwrap()).unwrap();
        assert!(ns_nl.link_index("nst-v0").unwrap().is_some());
    }

    #[test]
    #[ignore = "needs root"]
    fn named_netns_is_created_once_and_removed() {
        let path = PathBuf::from(format!("/run/netns/nst-named-{}", std::process::id()));
        let _ = remove_named_netns(&path);
        assert!(!is_netns(&path));
        assert!(ensure_named_netns(&path).unwrap(), "created");
        assert!(is_netns(&path));
        assert!(!same_netns(&path, &current_netns_path()).unwrap());
        // Idempotent: the same namespace is kept, with what is in it.
        run_in_netns(&path, || {
            let status = Command::new("ip")
                .args([
                    "link", "add", "nst-k0", "type", "veth", "peer", "name", "nst-k1",
                ])
                .status()
                .unwrap();
            assert!(status.success());
        })
        .unwrap();
        assert!(!ensure_named_netns(&path).unwrap(), "kept");
        let kept = run_in_netns(&path, || {
            Netlink::new().unwrap().link_index("nst-k0").unwrap()
        });
        assert!(kept.unwrap().is_some());
        assert!(remove_named_netns(&path).unwrap());
        assert!(!path.exists());
        assert!(
            !remove_named_netns(&path).unwrap(),
            "second removal is a no-op"
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn panic_in_the_work_is_an_error() {
        let ns = NamedNetns::new();
        let err = run_in_netns::<_, u8>(&ns.path, || panic!("boom in netns")).unwrap_err();
        match err {
            NetnsError::Panicked { path, message } => {
                assert_eq!(path, ns.path);
                assert_eq!(message, "boom in netns");
            }
            other => panic!("unexpected {other}"),
        }
    }
}
