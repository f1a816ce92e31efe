//! `floor`: the simplest TAP↔TAP forwarder, the floor of a userspace hop on this machine.
//!
//! It creates one TAP named `ifname` in each of two pod namespaces, exactly as netstackd
//! creates a pod's TAP (`netstack_core::sys::tap::open_queues`: `IFF_VNET_HDR`, the 10-byte
//! virtio-net header, the same offloads), and forwards every frame from one to the other
//! unchanged: a wire, one thread, up to netstackd's 64 frames read from one queue per wakeup
//! (one `readv` each) and then written to the other queue (one `writev` each), no routing,
//! no checks, no counters but its own. `e2e/bench/run.sh` runs it in place of netstackd for
//! the same pod-to-pod figures, so that netstackd's CPU per Gbit can be read against what
//! moving the same frames through user space costs at the least.
//!
//! The TAPs disappear with the process (they are not persistent). It stops when `duration`
//! has passed and prints what it moved; the harness usually ends it earlier (SIGTERM).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use netstack_core::netns::run_in_netns;
use netstack_core::sys::tap::{
    open_queues, read_frame, write_frame, RxFrame, TunKind, VNET_HDR_LEN,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::json;

/// Frames read from one queue per wakeup: netstackd's worker `BATCH`.
pub const BATCH: usize = 64;
/// Room for the largest frame a TAP with TSO emits (a 64 KiB GSO frame and its headers).
const FRAME_BUF: usize = 65536 + 256;

#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    reads_per_wakeup_max: usize,
    wakeups: u64,
    dropped_rx: u64,
    dropped_tx: u64,
}

/// Opens the TAP `ifname` (one queue, netstackd's options) in the namespace at `netns`.
fn open_tap(netns: &Path, ifname: &str) -> Result<OwnedFd> {
    let tap = run_in_netns(netns, || open_queues(ifname, TunKind::Tap, 1, false))
        .with_context(|| format!("enter {}", netns.display()))?
        .with_context(|| format!("TAP {ifname} in {}", netns.display()))?;
    tap.fds
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("TAP {ifname}: no queue"))
}

/// Reads up to [`BATCH`] frames from `from` and writes each to `to`; frames moved.
fn forward(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    bufs: &mut [([u8; VNET_HDR_LEN], Vec<u8>)],
    t: &mut Tally,
) -> Result<usize> {
    let mut lens = [0usize; BATCH];
    let mut n = 0;
    for (vnet, buf) in bufs.iter_mut() {
        match read_frame(from, vnet, buf) {
            Ok(RxFrame::Whole(len)) => {
                lens[n] = len;
                n += 1;
            }
            Ok(RxFrame::Malformed | RxFrame::Oversize) => t.dropped_rx += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e).context("read a frame from the TAP"),
        }
    }
    for ((vnet, buf), &len) in bufs.iter().zip(&lens[..n]) {
        match write_frame(to, vnet, &buf[..len]) {
            Ok(()) => {
                t.frames += 1;
                t.bytes += len as u64;
            }
            // A full queue drops the frame, as netstackd's queue would; so does a TAP that is
            // not up yet (EIO: the pod's kernel talks on one side before the other is up).
            Err(_) => t.dropped_tx += 1,
        }
    }
    t.reads_per_wakeup_max = t.reads_per_wakeup_max.max(n);
    Ok(n)
}

/// Forwards between TAP `ifname` in `a` and TAP `ifname` in `b` until `duration` has passed,
/// then reports.
pub fn run(a: &Path, b: &Path, ifname: &str, duration: Duration) -> Result<serde_json::Value> {
    let fa = open_tap(a, ifname)?;
    let fb = open_tap(b, ifname)?;
    let mut bufs: Vec<([u8; VNET_HDR_LEN], Vec<u8>)> = (0..BATCH)
        .map(|_| ([0u8; VNET_HDR_LEN], vec![0u8; FRAME_BUF]))
        .collect();
    let start = Instant::now();
    let deadline = start + duration;
    let mut t = Tally::default();
    eprintln!("floor: forwarding {ifname} <-> {ifname}");
    while Instant::now() < deadline {
        let mut fds = [
            PollFd::new(fa.as_fd(), PollFlags::POLLIN),
            PollFd::new(fb.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll"),
        }
        t.wakeups += 1;
        // Each side once per wakeup, as netstackd takes each ready fd once per wakeup.
        forward(fa.as_fd(), fb.as_fd(), &mut bufs, &mut t)?;
        forward(fb.as_fd(), fa.as_fd(), &mut bufs, &mut t)?;
    }
    Ok(json!({
        "role": "floor",
        "frames": t.frames,
        "bytes": t.bytes,
        "wakeups": t.wakeups,
        "most_frames_per_read_batch": t.reads_per_wakeup_max,
        "dropped_rx": t.dropped_rx,
        "dropped_tx": t.dropped_tx,
        "seconds": start.elapsed().as_secs_f64(),
    }))
}
