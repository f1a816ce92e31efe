//! The dataplane child process (`netstackd dataplane`, started by the supervisor): it gets its
//! end of a socketpair on fd 3, drops every capability, locks itself under seccomp, then runs
//! the workers and obeys the supervisor's messages. When the supervisor goes away, it exits.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};

use super::capture::CaptureSink;
use super::ipc::{self, DpReply, DpRequest, IpcError};
use super::Dataplane;
use crate::control::FramingError;
use crate::sys::process::{adopt_inherited_fd, drop_all_capabilities};

/// Test hook: `NETSTACK_DATAPLANE_SELFTEST=forbidden-syscall` makes the child make a system
/// call outside its seccomp allow-list right after locking down, to prove the filter kills it;
/// `thread-panic` makes a thread of the running dataplane panic, to prove a panic ends the
/// child.
const SELFTEST_ENV: &str = "NETSTACK_DATAPLANE_SELFTEST";

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

/// Runs the dataplane child until the supervisor hangs up or says shut down.
pub fn run() -> anyhow::Result<()> {
    let sock = adopt_inherited_fd(super::ipc::CHILD_FD).context("taking the supervisor socket")?;
    let (init, mut uplink): (DpRequest, _) =
        ipc::recv(&sock).context("reading the init message")?;
    let DpRequest::Init {
        gateway,
        uplink_mtu,
        segment_gso,
        in_flight,
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
    lock_down()?;
    let selftest = std::env::var(SELFTEST_ENV).unwrap_or_default();
    if selftest == "forbidden-syscall" {
        tracing::warn!("selftest: making a forbidden system call");
        crate::sys::process::forbidden_syscall();
    }
    let mut dataplane = start(uplink, gateway, uplink_mtu, segment_gso, in_flight)?;
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
            DpRequest::Detach { id } => {
                dataplane.detach(id);
                DpReply::Done
            }
            DpRequest::Stats => {
                let (pods, uplink) = dataplane.stats();
                DpReply::Stats {
                    pods,
                    uplink,
                    wakeups: dataplane.wakeups(),
                }
            }
            DpRequest::Capture {
                id,
                snaplen,
                max_packets,
                max_seconds,
            } => match fds.into_iter().next() {
                Some(pipe) => {
                    let sink = CaptureSink::new(pipe, snaplen, max_packets, max_seconds);
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
                None => DpReply::Error {
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
    segment_gso: bool,
    in_flight: Option<std::sync::Arc<crate::sys::shm::SharedU64s>>,
) -> anyhow::Result<Dataplane> {
    if uplink.is_empty() {
        bail!("no uplink queue fds in the init message");
    }
    Dataplane::start_with(uplink, gateway, uplink_mtu, segment_gso, in_flight)
        .context("starting the workers")
}

/// No capabilities in any set, no new privileges, and the seccomp allow-list.
fn lock_down() -> anyhow::Result<()> {
    drop_all_capabilities().context("dropping capabilities")?;
    super::seccomp::install().context("installing the seccomp filter")?;
    Ok(())
}
