//! Messages between the supervisor and its dataplane child, over a socketpair with the
//! control socket's framing (length-prefixed JSON, fds as SCM_RIGHTS).

use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::PodSpec;
use crate::control::{recv_message, send_message, Counters, FramingError};

/// The fd number the dataplane child finds its end of the socketpair on.
pub const CHILD_FD: i32 = 3;

/// Supervisor → dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DpRequest {
    /// First message: start the workers, one per uplink queue fd attached.
    Init {
        /// Source of ICMP errors.
        gateway: Ipv4Addr,
        /// Uplink MTU.
        uplink_mtu: u32,
        /// Segment every GSO super-frame in software before it leaves (`--gso segment`).
        #[serde(default)]
        segment_gso: bool,
        /// Take BIG TCP frames of up to this many bytes from pods (`--big-tcp`); 0: off.
        #[serde(default)]
        big_tcp_bytes: u32,
        /// No service flow table (`--service-flows off`): every pod-to-pod packet is switched.
        #[serde(default)]
        service_flows_off: bool,
        /// Every flow stays on the worker the kernel's hash picks (`--flow-balance off`).
        #[serde(default)]
        flow_balance_off: bool,
        /// The last attached fd is a memfd of one u64 per worker, where each worker publishes
        /// the attachment id whose frames it is handling (0: none), for the supervisor to read
        /// if the child dies.
        #[serde(default)]
        in_flight: bool,
        /// Read and write TAP queues through a restricted io_uring per worker (`--tap-io`,
        /// as the supervisor resolved it); absent (earlier builds): `readv`/`writev`.
        #[serde(default)]
        tap_uring: bool,
    },
    /// Serve a pod; its TAP queue fds are attached.
    Attach(PodSpec),
    /// Serve a VM pod over its vhost-user device; the fds are the device's, in the order
    /// `crate::vhost::attach` describes.
    AttachVhost {
        /// The pod.
        spec: PodSpec,
        /// What its frontend negotiated.
        device: crate::vhost::attach::VhostAttach,
    },
    /// A VM pod's vring has a new call eventfd (attached when `call`), or none.
    SetVringCall {
        /// Attachment id.
        id: u64,
        /// The vring (receive queues even, transmit odd).
        vring: usize,
        /// An eventfd is attached.
        call: bool,
    },
    /// Stop serving a pod.
    Detach {
        /// Attachment id.
        id: u64,
    },
    /// Counters of every pod and the uplink.
    Stats,
    /// Copy a pod's frames as pcap records into the attached pipe.
    Capture {
        /// Attachment id.
        id: u64,
        /// Bytes kept per frame.
        snaplen: u32,
        /// Stop after this many frames.
        max_packets: u64,
        /// Stop after this many seconds.
        max_seconds: u64,
        /// Keep only the frames this filter matches (empty: all).
        #[serde(default)]
        filter: String,
    },
    /// Finish the current batches and exit.
    Shutdown,
}

/// Dataplane → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum DpReply {
    /// Done.
    Done,
    /// Counters.
    Stats {
        /// Per attachment id.
        pods: Vec<(u64, Counters)>,
        /// The uplink.
        uplink: Counters,
        /// Epoll wakeups per worker.
        #[serde(default)]
        wakeups: Vec<u64>,
        /// Flow balancing between the workers.
        #[serde(default)]
        balance: Box<super::BalanceStats>,
        /// The service flow table (all zero when it is off).
        #[serde(default)]
        flows: crate::stack::FlowStats,
    },
    /// Failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Why an IPC exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The socket broke (the peer died).
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// A message was not valid JSON of the expected type.
    #[error("undecodable dataplane message: {0}")]
    Decode(#[from] serde_json::Error),
    /// The peer did not take the request or answer it within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Sends `req` with `fds` and waits for the reply, each socket operation bounded by what is
/// left of `deadline`; a peer that does not keep up gives [`IpcError::Timeout`].
pub fn exchange<Q: Serialize, A: for<'de> Deserialize<'de>>(
    sock: &UnixStream,
    req: &Q,
    fds: &[BorrowedFd<'_>],
    deadline: Duration,
) -> Result<(A, Vec<OwnedFd>), IpcError> {
    let start = Instant::now();
    let left = || {
        deadline
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or(IpcError::Timeout(deadline))
    };
    let timed_out = |e: IpcError| match e {
        IpcError::Framing(FramingError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            IpcError::Timeout(deadline)
        }
        other => other,
    };
    sock.set_write_timeout(Some(left()?))
        .map_err(FramingError::Io)?;
    send(sock, req, fds).map_err(timed_out)?;
    sock.set_read_timeout(Some(left()?))
        .map_err(FramingError::Io)?;
    recv(sock).map_err(timed_out)
}

/// Sends one message with fds.
pub fn send<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), IpcError> {
    let body = serde_json::to_vec(msg)?;
    send_message(sock, &body, fds)?;
    Ok(())
}

/// Receives one message and its fds.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: &UnixStream,
) -> Result<(T, Vec<OwnedFd>), IpcError> {
    let (body, fds) = recv_message(sock)?;
    Ok((serde_json::from_slice(&body)?, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An init from an earlier supervisor (no `tap_uring`) means readv; this build's says it.
    #[test]
    fn init_without_tap_uring_means_readv() {
        let old = r#"{"op":"init","gateway":"10.0.0.1","uplink_mtu":1500}"#;
        let DpRequest::Init { tap_uring, .. } = serde_json::from_str(old).unwrap() else {
            panic!("not an init");
        };
        assert!(!tap_uring);
        let new = DpRequest::Init {
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            uplink_mtu: 1500,
            segment_gso: false,
            big_tcp_bytes: 0,
            service_flows_off: false,
            flow_balance_off: false,
            in_flight: false,
            tap_uring: true,
        };
        let wire = serde_json::to_string(&new).unwrap();
        assert!(wire.contains(r#""tap_uring":true"#), "{wire}");
        assert_eq!(serde_json::from_str::<DpRequest>(&wire).unwrap(), new);
    }

    #[test]
    fn a_peer_that_does_not_answer_times_out() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let deadline = Duration::from_millis(200);
        let started = Instant::now();
        let r = exchange::<_, DpReply>(&ours, &DpRequest::Stats, &[], deadline);
        assert!(
            matches!(r, Err(IpcError::Timeout(d)) if d == deadline),
            "{r:?}"
        );
        assert!(started.elapsed() >= deadline);
        // The request went out; a peer that answers in time is heard.
        let (req, _) = recv::<DpRequest>(&theirs).unwrap();
        assert_eq!(req, DpRequest::Stats);
        send(&theirs, &DpReply::Done, &[]).unwrap();
        let (reply, _) = recv::<DpReply>(&ours).unwrap();
        assert_eq!(reply, DpReply::Done);
    }

    #[test]
    fn a_closed_peer_is_not_a_timeout() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let r = exchange::<_, DpReply>(&ours, &DpRequest::Stats, &[], Duration::from_secs(5));
        assert!(!matches!(r, Err(IpcError::Timeout(_))), "{r:?}");
    }
}
