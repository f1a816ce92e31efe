//! Messages between the supervisor and its dataplane child, over a socketpair with the
//! control socket's framing (length-prefixed JSON, fds as SCM_RIGHTS).

use std::net::Ipv4Addr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

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
    },
    /// Serve a pod; its TAP queue fds are attached.
    Attach(PodSpec),
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
