//! `pkt-fwd`: a minimal AF_PACKET forwarder between two devices, to compare two ways of
//! moving frames through packet sockets on this machine with everything else equal — the
//! socket options netstackd's veth mode uses (`PACKET_VNET_HDR`, `PACKET_QDISC_BYPASS`,
//! `PACKET_IGNORE_OUTGOING`, 4 MiB buffers), one thread, batches of up to 32 frames sent with
//! one `sendmmsg`:
//!
//! - `mmsg`: frames received with `recvmmsg` into user buffers (netstackd's default);
//! - `ring`: frames received through a `TPACKET_V2` receive ring (`PACKET_RX_RING`), each
//!   copied out of the ring into a buffer before it is sent, as netstackd's `--veth-rx ring`
//!   does. Every ring frame must hold a 64 KiB GSO frame, or the kernel cuts it short; the
//!   ring's kernel memory is reported.
//!
//! The sockets, batches and ring are netstackd's own (`netstack_core::sys::packet`).
//!
//! The send side is `sendmmsg` (netstackd's) or, with `--tx ring` (an evaluation, receiving
//! with `recvmmsg`), a `TPACKET_V2` transmit ring (`PACKET_TX_RING`, `crate::sys::TxRing`):
//! each frame copied into the ring once, the batch sent with one `send`, the kernel mapping the
//! ring's pages into the skbs instead of copying the frames out of user buffers. When the next
//! ring frame is still the kernel's, the rest of the batch goes out with `sendmmsg` (counted).
//!
//! Every frame from one device goes out of the other, unchanged (a wire, no routing).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netstack_core::sys::packet::{
    open_fanout_sockets, recv_frames, send_frames, set_rx_ring, RxRing, MMSG_BATCH, RING_BYTES,
    RING_FRAME,
};
use netstack_core::sys::tap::{RxFrame, VNET_HDR_LEN};

use crate::sys::{TxRing, TX_RING_BLOCKS, TX_RING_FRAMES};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::json;

/// Room for the largest frame: a 64 KiB IP packet and its Ethernet header.
const FRAME_BUF: usize = 65536 + 64;

/// How frames are received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RxMode {
    /// `recvmmsg` into user buffers.
    Mmsg,
    /// A `TPACKET_V2` receive ring.
    Ring,
}

/// How frames are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TxMode {
    /// `sendmmsg` from user buffers.
    Mmsg,
    /// A `TPACKET_V2` transmit ring, one `send` per batch.
    Ring,
}

#[derive(Default)]
struct Tally {
    /// Frames that found the next transmit-ring frame still the kernel's (sent by sendmmsg).
    tx_ring_busy: u64,
    frames: u64,
    bytes: u64,
    rx_calls: u64,
    tx_calls: u64,
    tx_errors: u64,
    rx_dropped: u64,
}

/// One side of the wire: its socket, its ring if it has one, and its receive buffers.
struct Side {
    fd: OwnedFd,
    ring: Option<RxRing>,
    vnets: Vec<[u8; VNET_HDR_LEN]>,
    bufs: Vec<Vec<u8>>,
    lens: [RxFrame; MMSG_BATCH],
}

impl Side {
    fn open(ifname: &str, mode: RxMode) -> Result<Side> {
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no device {ifname}"))?;
        let fd = open_fanout_sockets(ifindex, 1)
            .with_context(|| format!("packet socket on {ifname}"))?
            .pop()
            .with_context(|| format!("packet socket on {ifname}: none opened"))?;
        let ring = match mode {
            RxMode::Ring => {
                set_rx_ring(fd.as_fd()).with_context(|| format!("TPACKET_V2 ring on {ifname}"))?;
                Some(RxRing::map(fd.as_fd()).with_context(|| format!("map the ring of {ifname}"))?)
            }
            RxMode::Mmsg => None,
        };
        Ok(Side {
            fd,
            ring,
            vnets: vec![[0u8; VNET_HDR_LEN]; MMSG_BATCH],
            bufs: vec![vec![0u8; FRAME_BUF]; MMSG_BATCH],
            lens: [RxFrame::Malformed; MMSG_BATCH],
        })
    }

    /// Receives one batch into `bufs`; how many entries of `lens` it filled (0: none waiting).
    fn receive(&mut self, t: &mut Tally) -> io::Result<usize> {
        match &mut self.ring {
            Some(ring) => {
                let mut n = 0;
                while n < MMSG_BATCH {
                    match ring.take(&mut self.vnets[n], &mut self.bufs[n]) {
                        Some(f) => {
                            self.lens[n] = f;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n > 0 {
                    t.rx_calls += 1; // one pass over the ring, no system call
                }
                Ok(n)
            }
            None => {
                let bufs = self
                    .vnets
                    .iter_mut()
                    .zip(self.bufs.iter_mut().map(|b| &mut b[..]));
                match recv_frames(self.fd.as_fd(), bufs, &mut self.lens) {
                    Ok(n) => {
                        t.rx_calls += 1;
                        Ok(n)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Moves what is waiting on this side out of `out` (through its transmit ring `tx`, if
    /// given), a batch at a time; frames moved.
    fn forward(
        &mut self,
        out: BorrowedFd<'_>,
        mut tx: Option<&mut TxRing>,
        t: &mut Tally,
    ) -> io::Result<u64> {
        let mut moved = 0;
        loop {
            let n = self.receive(t)?;
            if n == 0 {
                return Ok(moved);
            }
            let mut frames: Vec<(&[u8; VNET_HDR_LEN], &[u8])> = Vec::with_capacity(n);
            for ((v, b), len) in self.vnets.iter().zip(&self.bufs).zip(&self.lens[..n]) {
                match *len {
                    RxFrame::Whole(len) => frames.push((v, &b[..len])),
                    RxFrame::Malformed | RxFrame::Oversize => t.rx_dropped += 1,
                }
            }
            t.bytes += frames.iter().map(|f| f.1.len() as u64).sum::<u64>();
            t.frames += frames.len() as u64;
            moved += frames.len() as u64;
            match tx.as_deref_mut() {
                Some(ring) => send_ring(out, ring, &frames, t),
                None => send_all(out, &frames, t),
            }
        }
    }
}

/// Sends `frames` with as few `sendmmsg` calls as it takes; a refused frame is skipped.
fn send_all(out: BorrowedFd<'_>, frames: &[(&[u8; VNET_HDR_LEN], &[u8])], t: &mut Tally) {
    let mut done = 0;
    while done < frames.len() {
        match send_frames(out, frames[done..].iter().map(|&(v, f)| (v, f))) {
            Ok(n) if n > 0 => {
                t.tx_calls += 1;
                done += n;
            }
            _ => {
                t.tx_errors += 1;
                done += 1;
            }
        }
    }
}

/// Sends `frames` through the transmit ring `ring` of `out` with one `send`; from the first
/// frame the ring has no room for on, with `sendmmsg`.
fn send_ring(
    out: BorrowedFd<'_>,
    ring: &mut TxRing,
    frames: &[(&[u8; VNET_HDR_LEN], &[u8])],
    t: &mut Tally,
) {
    let put = frames.iter().take_while(|(v, f)| ring.put(v, f)).count();
    if put > 0 {
        t.tx_calls += 1;
        if ring.flush(out).is_err() {
            t.tx_errors += 1;
        }
    }
    if put < frames.len() {
        t.tx_ring_busy += (frames.len() - put) as u64;
        send_all(out, &frames[put..], t);
    }
}

/// Forwards frames between devices `a` and `b` of the current network namespace for
/// `duration` (or until `idle` passes with no frame after the first), then reports.
pub fn run(
    a: &str,
    b: &str,
    mode: RxMode,
    tx: TxMode,
    duration: Duration,
    idle: Duration,
) -> Result<serde_json::Value> {
    if tx == TxMode::Ring && mode == RxMode::Ring {
        anyhow::bail!("--tx ring goes with --rx mmsg (one ring per socket here)");
    }
    let mut sa = Side::open(a, mode)?;
    let mut sb = Side::open(b, mode)?;
    let (mut ta, mut tb) = match tx {
        TxMode::Ring => (
            Some(TxRing::new(sa.fd.as_fd()).with_context(|| format!("TX ring on {a}"))?),
            Some(TxRing::new(sb.fd.as_fd()).with_context(|| format!("TX ring on {b}"))?),
        ),
        TxMode::Mmsg => (None, None),
    };
    let ring = mode == RxMode::Ring;
    let start = Instant::now();
    let deadline = start + duration;
    let mut last = None::<Instant>;
    let mut t = Tally::default();
    let cpu0 = crate::sys::cpu_seconds();
    while Instant::now() < deadline {
        if last.is_some_and(|l| l.elapsed() > idle) {
            break;
        }
        let mut fds = [
            PollFd::new(sa.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sb.fd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(50u8)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll"),
        }
        let mut moved = sa.forward(sb.fd.as_fd(), tb.as_mut(), &mut t)?;
        moved += sb.forward(sa.fd.as_fd(), ta.as_mut(), &mut t)?;
        if moved > 0 {
            last = Some(Instant::now());
        }
    }
    let cpu = crate::sys::cpu_seconds() - cpu0;
    Ok(json!({
        "mode": format!("{mode:?}").to_lowercase(),
        "tx": format!("{tx:?}").to_lowercase(),
        "tx_ring_busy": t.tx_ring_busy,
        "tx_ring_kernel_bytes_per_socket": if tx == TxMode::Ring { TX_RING_BLOCKS * (2 << 20) } else { 0 },
        "tx_ring_frames_per_socket": if tx == TxMode::Ring { TX_RING_FRAMES } else { 0 },
        "frames": t.frames,
        "bytes": t.bytes,
        "rx_calls": t.rx_calls,
        "tx_calls": t.tx_calls,
        "tx_errors": t.tx_errors,
        "rx_dropped": t.rx_dropped,
        "frames_per_rx_call": if t.rx_calls > 0 { t.frames as f64 / t.rx_calls as f64 } else { 0.0 },
        "cpu_seconds": cpu,
        "seconds": start.elapsed().as_secs_f64(),
        "ring_frames_per_socket": if ring { RING_BYTES / RING_FRAME } else { 0 },
        "ring_kernel_bytes_per_socket": if ring { RING_BYTES } else { 0 },
    }))
}
