//! The dataplane child process (`netstackd dataplane`, started by the supervisor): it gets its
//! end of a socketpair on fd 3, switches to an unprivileged uid and gid with no capability in
//! any set, locks itself under seccomp, then runs the workers and obeys the supervisor's
//! messages. When the supervisor goes away, it exits.

use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{bail, Context};

use super::capture::CaptureSink;
use super::ipc::{self, DpReply, DpRequest, IpcError};
use super::Dataplane;
use crate::control::FramingError;
use crate::sys::process::{adopt_inherited_fd, become_user};

/// Fault injection for the e2e tests, compiled only with the `fault-injection` feature (the
/// test command builds it; a shipped binary does not have it):
/// `NETSTACK_DATAPLANE_SELFTEST=PROBE` makes the child try one of the self-test's probes
/// ([`super::selftest`], e.g. `forbidden-syscall`) right after locking down, to prove what the
/// filter does to the real dataplane (and that the supervisor restarts it); `thread-panic` makes
/// a thread of the running dataplane panic, to prove a panic ends the child.
#[cfg(feature = "fault-injection")]
fn injected_fault() -> String {
    std::env::var("NETSTACK_DATAPLANE_SELFTEST").unwrap_or_default()
}

/// Without the `fault-injection` feature the dataplane never injects a fault, whatever its
/// environment says.
#[cfg(not(feature = "fault-injection"))]
fn injected_fault() -> String {
    String::new()
}

/// The uid and gid the dataplane runs as once it has its socket (`--dataplane-user`): never
/// root. The default is `nobody`/`nogroup` (65534); a uid no other process uses is better,
/// since processes of the same uid may signal each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataplaneUser {
    /// The uid (real, effective, saved and filesystem).
    pub uid: u32,
    /// The gid (all four too); there are no supplementary groups.
    pub gid: u32,
}

impl Default for DataplaneUser {
    fn default() -> Self {
        DataplaneUser {
            uid: 65534,
            gid: 65534,
        }
    }
}

impl std::fmt::Display for DataplaneUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl FromStr for DataplaneUser {
    type Err = String;

    /// `UID:GID` (numbers), or a user name from the passwd database (its primary group).
    fn from_str(s: &str) -> Result<Self, String> {
        let user = match s.split_once(':') {
            Some((uid, gid)) => DataplaneUser {
                uid: uid.parse().map_err(|e| format!("uid {uid:?}: {e}"))?,
                gid: gid.parse().map_err(|e| format!("gid {gid:?}: {e}"))?,
            },
            None => match nix::unistd::User::from_name(s) {
                Ok(Some(u)) => DataplaneUser {
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                },
                Ok(None) => return Err(format!("no user {s:?} (give UID:GID or a user name)")),
                Err(e) => return Err(format!("looking up user {s:?}: {e}")),
            },
        };
        if user.uid == 0 || user.gid == 0 {
            return Err(format!(
                "{s:?} is root (uid or gid 0): the dataplane must not run as root"
            ));
        }
        Ok(user)
    }
}

/// A panic in any dataplane thread ends the whole child (after the panic message is
/// printed), so the supervisor sees it die and starts a fresh one with the same fds — rather
/// than a worker thread vanishing alone and leaving its queues unserved.
/// The panic is reported through the log (the default hook's path trimming would make a
/// system call the seccomp filter does not allow).
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            "dataplane panicked: {info}; aborting"
        );
        std::process::abort();
    }));
}

/// glibc malloc arenas in the dataplane: its workers allocate nothing on the hot path, so a
/// few arenas are plenty (and more would need the CPU count: see `cap_malloc_arenas`).
const MALLOC_ARENAS: i32 = 8;

/// Runs the dataplane child, as `user` once set up, until the supervisor hangs up or says shut
/// down.
pub fn run(user: DataplaneUser) -> anyhow::Result<()> {
    let sock = adopt_inherited_fd(super::ipc::CHILD_FD).context("taking the supervisor socket")?;
    let (init, mut uplink): (DpRequest, _) =
        ipc::recv(&sock).context("reading the init message")?;
    let DpRequest::Init {
        gateway,
        uplink_mtu,
        segment_gso,
        big_tcp_bytes,
        service_flows_off,
        flow_balance_off,
        in_flight,
        tap_uring,
    } = init
    else {
        bail!("first message from the supervisor is not init");
    };
    // Mapped before the lock-down (fstat is not on the allow-list); the memfd itself can go.
    let in_flight = if in_flight {
        let fd = uplink
            .pop()
            .context("init announces a memfd but carries no fds")?;
        let slots =
            crate::sys::shm::SharedU64s::open(std::os::fd::AsFd::as_fd(&fd), uplink.len().max(1))
                .context("mapping the in-flight slots")?;
        Some(std::sync::Arc::new(slots))
    } else {
        None
    };
    abort_on_panic();
    let selftest = injected_fault();
    if cfg!(feature = "fault-injection") {
        tracing::info!("fault-injection build: NETSTACK_DATAPLANE_SELFTEST is honoured");
    }
    // The rings too: the filter forbids io_uring_setup and io_uring_register.
    let rings = if tap_uring {
        let rings = super::tap_rings(uplink.len()).context("setting up the io_uring rings")?;
        tracing::info!(
            rings = rings.len(),
            "TAP queues through io_uring (READV/WRITEV only)"
        );
        rings
    } else {
        Vec::new()
    };
    let before = super::selftest::Before::now(user);
    lock_down(user)?;
    if let Some(probe) = super::selftest::probe(&selftest) {
        tracing::warn!(probe = probe.name, "selftest: {}", probe.what);
        let outcome = (probe.run)(&before);
        tracing::warn!(
            probe = probe.name,
            "selftest: the dataplane survived: {outcome}"
        );
    }
    let options = super::WorkerOptions {
        segment_gso,
        big_tcp_bytes,
        service_flows: !service_flows_off,
        flow_balance: !flow_balance_off,
    };
    let mut dataplane = start(uplink, gateway, uplink_mtu, options, in_flight, rings)?;
    if selftest == "thread-panic" {
        tracing::warn!("selftest: a dataplane thread panics");
        let _ = std::thread::Builder::new()
            .name("dp-selftest".into())
            .spawn(|| panic!("selftest"));
    }
    ipc::send(&sock, &DpReply::Done, &[])?;
    tracing::info!(workers = dataplane.workers(), "dataplane child running");
    loop {
        let (request, fds): (DpRequest, _) = match ipc::recv(&sock) {
            Ok(m) => m,
            Err(IpcError::Framing(FramingError::Closed)) => {
                tracing::info!("supervisor hung up: exiting");
                return Ok(());
            }
            Err(e) => return Err(e).context("reading from the supervisor"),
        };
        let reply = match request {
            DpRequest::Attach(spec) => match dataplane.attach(&spec, fds) {
                Ok(()) => DpReply::Done,
                Err(e) => DpReply::Error {
                    message: format!("attachment {} ({}): {e}", spec.id, spec.container_id),
                },
            },
            DpRequest::AttachVhost { spec, device } => {
                let served = device
                    .into_device(fds)
                    .map_err(|e| e.to_string())
                    .and_then(|d| dataplane.attach_vhost(&spec, d).map_err(|e| e.to_string()));
                match served {
                    Ok(()) => DpReply::Done,
                    Err(e) => DpReply::Error {
                        message: format!("VM pod {} ({}): {e}", spec.id, spec.container_id),
                    },
                }
            }
            DpRequest::Detach { id } => {
                dataplane.detach(id);
                DpReply::Done
            }
            DpRequest::SetVringCall { id, vring, call } => {
                let fd = fds.into_iter().next();
                if call != fd.is_some() {
                    DpReply::Error {
                        message: format!("a new call eventfd for VM pod {id} without its fd"),
                    }
                } else {
                    match dataplane.set_vring_call(id, vring, fd) {
                        Ok(()) => DpReply::Done,
                        Err(e) => DpReply::Error {
                            message: e.to_string(),
                        },
                    }
                }
            }
            DpRequest::Stats => {
                let (pods, uplink) = dataplane.stats();
                DpReply::Stats {
                    pods,
                    uplink,
                    wakeups: dataplane.wakeups(),
                    balance: Box::new(dataplane.balance()),
                    flows: dataplane.flow_stats(),
                }
            }
            DpRequest::Capture {
                id,
                snaplen,
                max_packets,
                max_seconds,
                filter,
            } => match (
                fds.into_iter().next(),
                super::capture_filter::CaptureFilter::parse(&filter),
            ) {
                (_, Err(e)) => DpReply::Error {
                    message: format!("capture filter {filter:?}: {e}"),
                },
                (Some(pipe), Ok(filter)) => {
                    let sink = CaptureSink::new(pipe, snaplen, max_packets, max_seconds)
                        .with_filter(filter);
                    match dataplane.capture(id, sink) {
                        Ok(true) => DpReply::Done,
                        Ok(false) => DpReply::Error {
                            message: format!("no attachment {id}"),
                        },
                        Err(e) => DpReply::Error {
                            message: e.to_string(),
                        },
                    }
                }
                (None, Ok(_)) => DpReply::Error {
                    message: "capture without a pipe".into(),
                },
            },
            DpRequest::Shutdown => {
                drop(dataplane);
                let _ = ipc::send(&sock, &DpReply::Done, &[]);
                return Ok(());
            }
            DpRequest::Init { .. } => DpReply::Error {
                message: "already initialised".into(),
            },
        };
        ipc::send(&sock, &reply, &[])?;
    }
}

fn start(
    uplink: Vec<std::os::fd::OwnedFd>,
    gateway: Ipv4Addr,
    uplink_mtu: u32,
    options: super::WorkerOptions,
    in_flight: Option<std::sync::Arc<crate::sys::shm::SharedU64s>>,
    rings: Vec<crate::sys::uring::TapRing>,
) -> anyhow::Result<Dataplane> {
    if uplink.is_empty() {
        bail!("no uplink queue fds in the init message");
    }
    Dataplane::start_with(uplink, gateway, uplink_mtu, options, in_flight, rings)
        .context("starting the workers")
}

/// Becomes `user` with no capability in any set, then no new privileges and the seccomp
/// filters on every thread (before any worker exists).
pub fn lock_down(user: DataplaneUser) -> anyhow::Result<()> {
    // What glibc's malloc would otherwise open a file for, later, on some thread.
    crate::sys::process::cap_malloc_arenas(MALLOC_ARENAS);
    crate::sys::process::keep_malloc_heaps();
    become_user(user.uid, user.gid).with_context(|| format!("switching to uid:gid {user}"))?;
    super::seccomp::install().context("installing the seccomp filter")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_user_parses_and_refuses_root() {
        assert_eq!(
            "1000:1001".parse::<DataplaneUser>(),
            Ok(DataplaneUser {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            DataplaneUser::default().to_string().parse(),
            Ok(DataplaneUser::default())
        );
        for bad in [
            "0:0",
            "0:65534",
            "65534:0",
            "root",
            "x:1",
            "1:",
            "no-such-user-here",
        ] {
            assert!(bad.parse::<DataplaneUser>().is_err(), "{bad}");
        }
    }
}
