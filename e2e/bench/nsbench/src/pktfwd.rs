//! `pkt-fwd`: a minimal AF_PACKET forwarder between two devices, to compare two ways of
//! moving frames through packet sockets on this machine with everything else equal — the
//! socket options netstackd's veth mode uses (`PACKET_VNET_HDR`, `PACKET_QDISC_BYPASS`,
//! `PACKET_IGNORE_OUTGOING`, 4 MiB buffers), one thread, batches of up to 32 frames sent with
//! one `sendmmsg`:
//!
//! - `mmsg`: frames received with `recvmmsg` into user buffers (netstackd's default);
//! - `ring`: frames received through a `TPACKET_V2` receive ring (`PACKET_RX_RING`) and sent
//!   straight from the ring (netstackd's `--veth-rx ring` copies each into its own buffer
//!   first, about 0.3 µs per 32 KB frame, which this forwarder leaves out). Every ring frame
//!   must hold a 64 KiB GSO frame, or the kernel cuts it short; the ring's kernel memory is
//!   reported.
//!
//! Every frame from one device goes out of the other, unchanged (a wire, no routing).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::packet::{self, RxRing, BATCH, VNET_LEN};

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

#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    rx_calls: u64,
    tx_calls: u64,
    tx_errors: u64,
}

/// One side of the wire: its socket, and its ring or its receive buffers.
struct Side {
    fd: OwnedFd,
    ring: Option<RxRing>,
    vnets: Vec<[u8; VNET_LEN]>,
    bufs: Vec<Vec<u8>>,
}

impl Side {
    fn open(ifname: &str, mode: RxMode, ring_blocks: usize) -> Result<Side> {
        let fd = packet::open(ifname).with_context(|| format!("packet socket on {ifname}"))?;
        let (ring, vnets, bufs) = match mode {
            RxMode::Ring => {
                let ring = RxRing::new(fd.as_fd(), ring_blocks)
                    .with_context(|| format!("TPACKET_V2 ring on {ifname}"))?;
                (Some(ring), Vec::new(), Vec::new())
            }
            RxMode::Mmsg => (
                None,
                vec![[0u8; VNET_LEN]; BATCH],
                vec![vec![0u8; FRAME_BUF]; BATCH],
            ),
        };
        Ok(Side {
            fd,
            ring,
            vnets,
            bufs,
        })
    }

    /// Moves what is waiting on this side out of `out`, a batch at a time; frames moved.
    fn forward(&mut self, out: BorrowedFd<'_>, t: &mut Tally) -> io::Result<u64> {
        let mut moved = 0;
        loop {
            let n = match &mut self.ring {
                Some(ring) => {
                    let (frames, taken) = ring.ready(BATCH);
                    if taken == 0 {
                        return Ok(moved);
                    }
                    t.rx_calls += 1; // one pass over the ring, no system call
                    let n = frames.len();
                    t.bytes += frames.iter().map(|f| f.1.len() as u64).sum::<u64>();
                    send_all(out, &frames, t);
                    drop(frames);
                    ring.release(taken);
                    n
                }
                None => {
                    let lens = match packet::recv_batch(
                        self.fd.as_fd(),
                        &mut self.vnets,
                        &mut self.bufs,
                    ) {
                        Ok(lens) => lens,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(moved),
                        Err(e) => return Err(e),
                    };
                    t.rx_calls += 1;
                    let frames: Vec<(&[u8; VNET_LEN], &[u8])> = self
                        .vnets
                        .iter()
                        .zip(&self.bufs)
                        .zip(&lens)
                        .map(|((v, b), &len)| (v, &b[..len]))
                        .collect();
                    t.bytes += lens.iter().map(|&l| l as u64).sum::<u64>();
                    send_all(out, &frames, t);
                    lens.len()
                }
            };
            t.frames += n as u64;
            moved += n as u64;
        }
    }
}

/// Sends `frames` with as few `sendmmsg` calls as it takes; a refused frame is skipped.
fn send_all(out: BorrowedFd<'_>, frames: &[(&[u8; VNET_LEN], &[u8])], t: &mut Tally) {
    let mut done = 0;
    while done < frames.len() {
        match packet::send_batch(out, &frames[done..]) {
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

/// Forwards frames between devices `a` and `b` of the current network namespace for
/// `duration` (or until `idle` passes with no frame after the first), then reports.
pub fn run(
    a: &str,
    b: &str,
    mode: RxMode,
    ring_blocks: usize,
    duration: Duration,
    idle: Duration,
) -> Result<serde_json::Value> {
    let mut sa = Side::open(a, mode, ring_blocks)?;
    let mut sb = Side::open(b, mode, ring_blocks)?;
    let ring_bytes = sa.ring.as_ref().map_or(0, |r| r.kernel_bytes());
    let ring_frames = sa.ring.as_ref().map_or(0, |r| r.frames());
    let start = Instant::now();
    let deadline = start + duration;
    let mut last = None::<Instant>;
    let mut t = Tally::default();
    let cpu0 = packet::cpu_seconds();
    while Instant::now() < deadline {
        if last.is_some_and(|l| l.elapsed() > idle) {
            break;
        }
        packet::wait_readable(&[sa.fd.as_fd(), sb.fd.as_fd()], Duration::from_millis(50))?;
        let mut moved = sa.forward(sb.fd.as_fd(), &mut t)?;
        moved += sb.forward(sa.fd.as_fd(), &mut t)?;
        if moved > 0 {
            last = Some(Instant::now());
        }
    }
    let cpu = packet::cpu_seconds() - cpu0;
    Ok(json!({
        "mode": format!("{mode:?}").to_lowercase(),
        "frames": t.frames,
        "bytes": t.bytes,
        "rx_calls": t.rx_calls,
        "tx_calls": t.tx_calls,
        "tx_errors": t.tx_errors,
        "frames_per_rx_call": if t.rx_calls > 0 { t.frames as f64 / t.rx_calls as f64 } else { 0.0 },
        "cpu_seconds": cpu,
        "seconds": start.elapsed().as_secs_f64(),
        "ring_frames_per_socket": ring_frames,
        "ring_kernel_bytes_per_socket": ring_bytes,
    }))
}
