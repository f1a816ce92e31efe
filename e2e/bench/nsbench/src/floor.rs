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
//! With `--node-tun NAME` in place of the second pod, the other end is a TUN named NAME in
//! the node's namespace, made as netstackd makes its uplink (one queue): the floor of the
//! pod-to-node hop. A frame from the pod goes to the TUN without its Ethernet header (IPv4
//! and IPv6 only; the harness gives the pod a permanent neighbour entry for its gateway, at
//! [`GW_MAC`], so no ARP crosses), the checksum start of its virtio-net header moved with it,
//! and a packet from the node goes to the pod behind an Ethernet header to the pod's MAC
//! (learnt from its frames). That is all netstackd's uplink path must do besides routing.
//!
//! The TAPs disappear with the process (they are not persistent). It stops when `duration`
//! has passed and prints what it moved; the harness usually ends it earlier (SIGTERM), so it
//! also writes its tally to `--report FILE` twice a second.
//!
//! Two variants, for the design evaluations (`e2e/bench/evals.sh`):
//! - `--io uring`: each batch's reads go to an io_uring in one `io_uring_enter`, and then its
//!   writes in another, instead of one `readv`/`writev` per frame. The reads of a batch are a
//!   window that doubles while every read finds a frame and shrinks to one more than found
//!   otherwise (each read that finds none is work the kernel does for nothing).
//! - `--spin-us N`: after a wakeup that moved frames, poll without sleeping for up to N µs
//!   before blocking again: fewer sleeps and wakeups per frame, bought with CPU.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use netstack_core::netns::run_in_netns;
use netstack_core::sys::tap::{
    open_queues, read_frame, tap_rx_len, write_frame, RxFrame, TunKind, VNET_HDR_LEN,
};
use netstack_core::wire::VnetHdr;

use crate::sys::TapUring;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::json;

/// Frames read from one queue per wakeup: netstackd's worker `BATCH`.
pub const BATCH: usize = 64;
/// Room for the largest frame a TAP with TSO emits (a 64 KiB GSO frame and its headers).
const FRAME_BUF: usize = 65536 + 256;

/// How the frames of a batch are read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Io {
    /// One `readv` per frame read, one `writev` per frame written (netstackd's way).
    Readv,
    /// A batch's reads in one `io_uring_enter`, then its writes in another.
    Uring,
}

#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    reads_per_wakeup_max: usize,
    /// Blocking polls that returned ready: the times the thread slept and was woken.
    wakeups: u64,
    /// Every poll, blocking or not.
    polls: u64,
    /// readv/writev calls (readv mode), reads that found nothing included.
    rw_calls: u64,
    /// Reads that found no frame (EAGAIN), in either mode.
    empty_reads: u64,
    dropped_rx: u64,
    dropped_tx: u64,
}

/// The far end of the floor's wire.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// A second pod's TAP (in the namespace at this path).
    Pod(&'a Path),
    /// A TUN of this name in the node's namespace (the pod-to-node floor).
    NodeTun(&'a str),
}

/// The MAC of the node-side floor's end of the pod's wire.
pub const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const ETH_LEN: usize = 14;

/// Opens the TUN `name` in this namespace, as netstackd opens its uplink (one queue).
fn open_node_tun(name: &str) -> Result<OwnedFd> {
    let tun = open_queues(name, TunKind::Tun, 1, false).with_context(|| format!("TUN {name}"))?;
    tun.fds
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("TUN {name}: no queue"))
}

/// Moves the checksum start of a virtio-net header by `delta` bytes.
fn shift(vnet: &[u8; VNET_HDR_LEN], delta: i16) -> [u8; VNET_HDR_LEN] {
    let mut h = VnetHdr::parse(vnet);
    h.shift_csum_start(delta);
    let mut out = [0u8; VNET_HDR_LEN];
    h.emit(&mut out);
    out
}

/// Pod TAP `tap` to node TUN `tun`: reads up to [`BATCH`] frames, then writes each IP one
/// without its Ethernet header; learns the pod's MAC. Frames moved.
fn forward_to_node(
    tap: BorrowedFd<'_>,
    tun: BorrowedFd<'_>,
    bufs: &mut [([u8; VNET_HDR_LEN], Vec<u8>)],
    pod_mac: &mut Option<[u8; 6]>,
    t: &mut Tally,
) -> Result<usize> {
    let batch = read_batch(tap, bufs, 0, t)?;
    for (i, len) in batch.iter() {
        let (vnet, buf) = &bufs[i];
        let ip = len > ETH_LEN && matches!(buf[12..14], [0x08, 0x00] | [0x86, 0xdd]);
        if !ip {
            t.dropped_rx += 1;
            continue;
        }
        *pod_mac = Some(buf[6..12].try_into().unwrap_or_default());
        t.rw_calls += 1;
        match write_frame(tun, &shift(vnet, -(ETH_LEN as i16)), &buf[ETH_LEN..len]) {
            Ok(()) => {
                t.frames += 1;
                t.bytes += (len - ETH_LEN) as u64;
            }
            Err(_) => t.dropped_tx += 1,
        }
    }
    Ok(batch.n)
}

/// Node TUN `tun` to pod TAP `tap`: reads up to [`BATCH`] packets behind room for an Ethernet
/// header, then writes each to the pod (dropped until its MAC is known). Frames moved.
fn forward_to_pod(
    tun: BorrowedFd<'_>,
    tap: BorrowedFd<'_>,
    bufs: &mut [([u8; VNET_HDR_LEN], Vec<u8>)],
    pod_mac: Option<[u8; 6]>,
    t: &mut Tally,
) -> Result<usize> {
    let batch = read_batch(tun, bufs, ETH_LEN, t)?;
    for (i, len) in batch.iter() {
        let (vnet, buf) = &mut bufs[i];
        let len = ETH_LEN + len;
        let ethertype = match buf[ETH_LEN] >> 4 {
            4 => [0x08, 0x00],
            6 => [0x86, 0xdd],
            _ => {
                t.dropped_rx += 1;
                continue;
            }
        };
        let Some(mac) = pod_mac else {
            t.dropped_tx += 1;
            continue;
        };
        buf[0..6].copy_from_slice(&mac);
        buf[6..12].copy_from_slice(&GW_MAC);
        buf[12..14].copy_from_slice(&ethertype);
        t.rw_calls += 1;
        match write_frame(tap, &shift(vnet, ETH_LEN as i16), &buf[..len]) {
            Ok(()) => {
                t.frames += 1;
                t.bytes += len as u64;
            }
            Err(_) => t.dropped_tx += 1,
        }
    }
    Ok(batch.n)
}

/// What one [`read_batch`] brought: (buffer index, frame length) of each frame, in order.
struct Batch {
    frames: [(usize, usize); BATCH],
    n: usize,
}

impl Batch {
    fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.frames[..self.n].iter().copied()
    }
}

/// Reads up to [`BATCH`] frames from `from` into `bufs` at offset `at`, one `readv` each.
fn read_batch(
    from: BorrowedFd<'_>,
    bufs: &mut [([u8; VNET_HDR_LEN], Vec<u8>)],
    at: usize,
    t: &mut Tally,
) -> Result<Batch> {
    let mut b = Batch {
        frames: [(0, 0); BATCH],
        n: 0,
    };
    for (i, (vnet, buf)) in bufs.iter_mut().enumerate() {
        t.rw_calls += 1;
        match read_frame(from, vnet, &mut buf[at..]) {
            Ok(RxFrame::Whole(len)) => {
                b.frames[b.n] = (i, len);
                b.n += 1;
            }
            Ok(RxFrame::Malformed | RxFrame::Oversize) => t.dropped_rx += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                t.empty_reads += 1;
                break;
            }
            Err(e) => return Err(e).context("read a frame"),
        }
    }
    t.reads_per_wakeup_max = t.reads_per_wakeup_max.max(b.n);
    Ok(b)
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
        t.rw_calls += 1;
        match read_frame(from, vnet, buf) {
            Ok(RxFrame::Whole(len)) => {
                lens[n] = len;
                n += 1;
            }
            Ok(RxFrame::Malformed | RxFrame::Oversize) => t.dropped_rx += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                t.empty_reads += 1;
                break;
            }
            Err(e) => return Err(e).context("read a frame from the TAP"),
        }
    }
    for ((vnet, buf), &len) in bufs.iter().zip(&lens[..n]) {
        t.rw_calls += 1;
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

/// The io_uring side of [`forward`]: reads a window of frames from `from` with one
/// `io_uring_enter`, then writes those that came to `to` with another; frames moved.
fn forward_uring(
    ring: &mut TapUring,
    window: &mut usize,
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    bufs: &mut [([u8; VNET_HDR_LEN], Vec<u8>)],
    t: &mut Tally,
) -> Result<usize> {
    let w = (*window).clamp(1, BATCH);
    let mut res = [0i32; BATCH];
    let mut slots: Vec<(&mut [u8; VNET_HDR_LEN], &mut [u8])> =
        bufs[..w].iter_mut().map(|(v, b)| (v, &mut b[..])).collect();
    ring.read_batch(from, &mut slots, &mut res[..w])
        .context("io_uring reads from the TAP")?;
    let mut lens = [None::<usize>; BATCH];
    let mut n = 0;
    for (i, &r) in res[..w].iter().enumerate() {
        match usize::try_from(r) {
            Ok(read) => match tap_rx_len(read, FRAME_BUF) {
                RxFrame::Whole(len) => {
                    lens[i] = Some(len);
                    n += 1;
                }
                RxFrame::Malformed | RxFrame::Oversize => t.dropped_rx += 1,
            },
            Err(_) if r == -libc::EAGAIN => t.empty_reads += 1,
            Err(_) => return Err(io::Error::from_raw_os_error(-r)).context("read a frame"),
        }
    }
    // Every read found a frame: more may be waiting. Else one more than came, next time.
    *window = if n == w { (w * 2).min(BATCH) } else { n + 1 };
    if n > 0 {
        let mut out: Vec<(&mut [u8; VNET_HDR_LEN], &mut [u8])> = bufs[..w]
            .iter_mut()
            .zip(&lens[..w])
            .filter_map(|((v, b), len)| len.map(|len| (v, &mut b[..len])))
            .collect();
        ring.write_batch(to, &mut out, &mut res[..n])
            .context("io_uring writes to the TAP")?;
        for (r, (_, b)) in res[..n].iter().zip(&out) {
            if usize::try_from(*r).ok() == Some(VNET_HDR_LEN + b.len()) {
                t.frames += 1;
                t.bytes += b.len() as u64;
            } else {
                t.dropped_tx += 1;
            }
        }
    }
    t.reads_per_wakeup_max = t.reads_per_wakeup_max.max(n);
    Ok(n)
}

/// What the forwarder has done so far, as JSON.
fn report(t: &Tally, io: Io, spin: Duration, enters: u64, start: Instant) -> serde_json::Value {
    let syscalls = t.polls + t.rw_calls + enters;
    let per = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    json!({
        "role": "floor",
        "io": format!("{io:?}").to_lowercase(),
        "spin_us": spin.as_micros() as u64,
        "frames": t.frames,
        "bytes": t.bytes,
        "wakeups": t.wakeups,
        "polls": t.polls,
        "rw_calls": t.rw_calls,
        "uring_enters": enters,
        "empty_reads": t.empty_reads,
        "syscalls": syscalls,
        "frames_per_wakeup": per(t.frames, t.wakeups),
        "frames_per_syscall": per(t.frames, syscalls),
        "most_frames_per_read_batch": t.reads_per_wakeup_max,
        "dropped_rx": t.dropped_rx,
        "dropped_tx": t.dropped_tx,
        "cpu_seconds": crate::sys::cpu_seconds(),
        "seconds": start.elapsed().as_secs_f64(),
    })
}

/// How the floor moves frames: `io`, and `spin` of polling without sleeping after a batch.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Reads and writes: one call per frame, or io_uring batches.
    pub io: Io,
    /// How long to poll without sleeping after a wakeup that moved frames (zero: never).
    pub spin: Duration,
}

/// Forwards between TAP `ifname` in `a` and TAP `ifname` in `b` until `duration` has passed,
/// then reports; with `report_to`, also writes the report there twice a second.
pub fn run(
    a: &Path,
    b: Peer<'_>,
    ifname: &str,
    duration: Duration,
    opts: Options,
    report_to: Option<&Path>,
) -> Result<serde_json::Value> {
    let fa = open_tap(a, ifname)?;
    let fb = match b {
        Peer::Pod(b) => open_tap(b, ifname)?,
        Peer::NodeTun(name) => {
            if opts.io != Io::Readv {
                return Err(anyhow!("--node-tun forwards with readv/writev only"));
            }
            open_node_tun(name)?
        }
    };
    let to_node = matches!(b, Peer::NodeTun(_));
    let mut pod_mac = None;
    let mut bufs: Vec<([u8; VNET_HDR_LEN], Vec<u8>)> = (0..BATCH)
        .map(|_| ([0u8; VNET_HDR_LEN], vec![0u8; FRAME_BUF]))
        .collect();
    let mut ring = match opts.io {
        Io::Uring => Some(TapUring::new(BATCH as u32).context("io_uring_setup")?),
        Io::Readv => None,
    };
    let mut windows = [1usize; 2];
    let start = Instant::now();
    let deadline = start + duration;
    let mut t = Tally::default();
    let mut spin_until = start;
    let mut reported = start;
    eprintln!("floor: forwarding {ifname} <-> {b:?} ({opts:?})");
    while Instant::now() < deadline {
        if let Some(p) = report_to.filter(|_| reported.elapsed() > Duration::from_millis(500)) {
            reported = Instant::now();
            let enters = ring.as_ref().map_or(0, |r| r.enters);
            // Whole or not at all: the harness may read it at any moment.
            let tmp = p.with_extension("tmp");
            let text = report(&t, opts.io, opts.spin, enters, start).to_string();
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
        let mut fds = [
            PollFd::new(fa.as_fd(), PollFlags::POLLIN),
            PollFd::new(fb.as_fd(), PollFlags::POLLIN),
        ];
        let spinning = Instant::now() < spin_until;
        let timeout = if spinning { 0u16 } else { 200u16 };
        t.polls += 1;
        match poll(&mut fds, PollTimeout::from(timeout)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("poll"),
        }
        if !spinning {
            t.wakeups += 1;
        }
        // Each side once per wakeup, as netstackd takes each ready fd once per wakeup.
        let moved = match ring.as_mut() {
            Some(r) => {
                let [wa, wb] = &mut windows;
                forward_uring(r, wa, fa.as_fd(), fb.as_fd(), &mut bufs, &mut t)?
                    + forward_uring(r, wb, fb.as_fd(), fa.as_fd(), &mut bufs, &mut t)?
            }
            None if to_node => {
                forward_to_node(fa.as_fd(), fb.as_fd(), &mut bufs, &mut pod_mac, &mut t)?
                    + forward_to_pod(fb.as_fd(), fa.as_fd(), &mut bufs, pod_mac, &mut t)?
            }
            None => {
                forward(fa.as_fd(), fb.as_fd(), &mut bufs, &mut t)?
                    + forward(fb.as_fd(), fa.as_fd(), &mut bufs, &mut t)?
            }
        };
        if moved > 0 && !opts.spin.is_zero() {
            spin_until = Instant::now() + opts.spin;
        }
    }
    let enters = ring.as_ref().map_or(0, |r| r.enters);
    Ok(report(&t, opts.io, opts.spin, enters, start))
}
