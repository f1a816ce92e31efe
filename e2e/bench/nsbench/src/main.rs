//! nsbench: the two measurements of `e2e/bench/run.sh` that iperf3 does not make.
//!
//! - `rr-server` / `rr-client`: 1-byte TCP ping-pong (TCP_NODELAY); the client reports the
//!   round-trip time's min, p50 and p99 in µs over N iterations or T seconds.
//! - `udp-sink` / `udp-blast`: 64-byte UDP datagrams sent with `sendmmsg` (at full speed or at
//!   a fixed rate) and received with `recvmmsg`; each reports what it counted, the harness
//!   divides one by the other for the loss.
//!
//! - `flow-lookup`: the cost of netstackd's service flow table per pod-to-pod packet, for
//!   `e2e/bench/service_flows.sh` (see `flowcost`).
//!
//! - `pkt-fwd`: a minimal AF_PACKET wire between two devices, receiving with `recvmmsg` or a
//!   `TPACKET_V2` ring and sending with `sendmmsg` or a transmit ring, for
//!   `e2e/bench/packet_io.sh` (see `pktfwd`).
//!
//! - `floor`: the simplest TAP↔TAP forwarder between two pods, the floor netstackd's CPU per
//!   Gbit is read against (see `floor`); `--io uring` and `--spin-us` are evaluations.
//! - `crr-server` / `crr-client`: TCP connect/request/close per second, as netperf's
//!   `TCP_CRR` (see `crr`).
//!
//! Every subcommand is bounded in time and prints one line of JSON on stdout.

mod crr;
mod floor;
mod flowcost;
mod pktfwd;
mod sys;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "nsbench",
    about = "benchmark helper: RTT, connection rate, small packets, the forwarding floor (bounded in time)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every byte back on each accepted TCP connection until DURATION has passed.
    RrServer {
        #[arg(long)]
        bind: SocketAddr,
        /// Seconds the server lives, at most.
        #[arg(long, default_value = "30", value_parser = secs)]
        duration: Duration,
    },
    /// 1-byte ping-pong against an rr-server; prints min/p50/p99 RTT in µs.
    RrClient {
        #[arg(long)]
        connect: SocketAddr,
        /// Seconds of measurement (after the warm-up), at most.
        #[arg(long, default_value = "5", value_parser = secs)]
        duration: Duration,
        /// Stop after this many measured round trips, if earlier.
        #[arg(long)]
        iterations: Option<u64>,
        /// Round trips done and not counted first.
        #[arg(long, default_value_t = 200)]
        warmup: u64,
        /// Seconds to keep retrying the connection (the server may still be starting).
        #[arg(long, default_value = "5", value_parser = secs)]
        connect_timeout: Duration,
    },
    /// Count UDP datagrams until DURATION has passed, or IDLE seconds after the last one.
    UdpSink {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value = "30", value_parser = secs)]
        duration: Duration,
        #[arg(long, default_value = "1", value_parser = secs)]
        idle: Duration,
    },
    /// Send SIZE-byte UDP datagrams in batches for DURATION, at full speed or at PPS.
    UdpBlast {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value = "5", value_parser = secs)]
        duration: Duration,
        /// Datagrams per second to aim for; full speed without it.
        #[arg(long)]
        pps: Option<f64>,
        /// UDP payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Datagrams per sendmmsg call (1..=64).
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Flows (sockets, each from its own source port) the batches take turns on (1..=1024).
        #[arg(long, default_value_t = 1)]
        flows: usize,
    },
    /// Time the service flow table's lookup per packet: unused, holding ENTRIES flows, a hit.
    FlowLookup {
        #[arg(long, default_value_t = 40_000)]
        entries: u32,
        /// Lookups timed per case (bounds the run: about a second each).
        #[arg(long, default_value_t = 20_000_000)]
        lookups: u32,
    },
    /// Forward every frame between devices A and B of this netns through packet sockets.
    PktFwd {
        #[arg(long)]
        a: String,
        #[arg(long)]
        b: String,
        #[arg(long, value_enum)]
        rx: pktfwd::RxMode,
        /// How frames are sent: sendmmsg, or a TPACKET_V2 transmit ring (an evaluation).
        #[arg(long, value_enum, default_value = "mmsg")]
        tx: pktfwd::TxMode,
        #[arg(long, default_value = "30", value_parser = secs)]
        duration: Duration,
        /// Stop this long after the last frame, once frames have come.
        #[arg(long, default_value = "3", value_parser = secs)]
        idle: Duration,
    },
    /// Create TAP IFNAME in the pods A and B (netns paths) and forward between them, a wire
    /// (or between pod A and a TUN in the node's namespace: --node-tun).
    Floor {
        /// The first pod's network namespace (a path such as /run/netns/NAME).
        #[arg(long)]
        a: PathBuf,
        /// The second pod's network namespace.
        #[arg(
            long,
            required_unless_present = "node_tun",
            conflicts_with = "node_tun"
        )]
        b: Option<PathBuf>,
        /// Instead of a second pod: a TUN of this name in the node's namespace (the floor of
        /// the pod-to-node hop; see `floor`).
        #[arg(long)]
        node_tun: Option<String>,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Seconds the forwarder (and so the TAPs) lives, at most.
        #[arg(long, default_value = "60", value_parser = secs)]
        duration: Duration,
        /// How a batch's frames are read and written (an evaluation: see `floor`).
        #[arg(long, value_enum, default_value = "readv")]
        io: floor::Io,
        /// Microseconds to poll without sleeping after a wakeup that moved frames (0..=1000).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
        spin_us: u64,
        /// Also write the tally to this file twice a second (the harness ends it with SIGTERM).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Answer 1-byte requests, one connection each, until DURATION has passed.
    CrrServer {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long, default_value = "30", value_parser = secs)]
        duration: Duration,
    },
    /// Connect, request 1 byte, read 1 byte, close, for DURATION; prints transactions per second.
    CrrClient {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value = "5", value_parser = secs)]
        duration: Duration,
    },
}

/// A duration in seconds, fractional allowed, more than 0 and at most an hour.
fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if !(v > 0.0 && v <= 3600.0) {
        return Err(format!("{s}: must be in (0, 3600] seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() -> Result<()> {
    let out = match Cli::parse().cmd {
        Cmd::RrServer { bind, duration } => rr_server(bind, duration)?,
        Cmd::RrClient {
            connect,
            duration,
            iterations,
            warmup,
            connect_timeout,
        } => rr_client(connect, duration, iterations, warmup, connect_timeout)?,
        Cmd::UdpSink {
            bind,
            duration,
            idle,
        } => udp_sink(bind, duration, idle)?,
        Cmd::UdpBlast {
            connect,
            duration,
            pps,
            size,
            batch,
            flows,
        } => udp_blast(connect, duration, pps, size, batch, flows)?,
        Cmd::FlowLookup { entries, lookups } => flowcost::run(entries, lookups.max(1))?,
        Cmd::PktFwd {
            a,
            b,
            rx,
            tx,
            duration,
            idle,
        } => pktfwd::run(&a, &b, rx, tx, duration, idle)?,
        Cmd::Floor {
            a,
            b,
            node_tun,
            ifname,
            duration,
            io,
            spin_us,
            report,
        } => {
            let opts = floor::Options {
                io,
                spin: Duration::from_micros(spin_us),
            };
            let peer = match (&b, &node_tun) {
                (_, Some(tun)) => floor::Peer::NodeTun(tun),
                (Some(b), None) => floor::Peer::Pod(b),
                (None, None) => bail!("--b or --node-tun"),
            };
            floor::run(&a, peer, &ifname, duration, opts, report.as_deref())?
        }
        Cmd::CrrServer { bind, duration } => crr::server(bind, duration)?,
        Cmd::CrrClient { connect, duration } => crr::client(connect, duration)?,
    };
    println!("{out}");
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn rr_server(bind: SocketAddr, duration: Duration) -> Result<serde_json::Value> {
    let deadline = Instant::now() + duration;
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    listener.set_nonblocking(true)?;
    let (mut connections, mut echoed) = (0u64, 0u64);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                connections += 1;
                echoed += echo(stream, deadline)?;
            }
            Err(e) if is_timeout(&e) => sleep(Duration::from_millis(5)),
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(json!({ "role": "rr-server", "connections": connections, "echoed": echoed }))
}

/// Echoes one connection until EOF or the deadline; returns the bytes echoed.
fn echo(mut stream: TcpStream, deadline: Instant) -> Result<u64> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut byte = [0u8; 1];
    let mut echoed = 0;
    while Instant::now() < deadline {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => match stream.write_all(&byte) {
                Ok(()) => echoed += 1,
                Err(_) => break,
            },
            Err(e) if is_timeout(&e) => continue,
            Err(_) => break, // reset by the client: the next connection may follow
        }
    }
    Ok(echoed)
}

fn connect_retry(addr: SocketAddr, within: Duration) -> Result<TcpStream> {
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connect {addr}"))
            }
            Err(_) => sleep(Duration::from_millis(50)),
        }
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1000.0 * 100.0).round() / 100.0
}

fn rr_client(
    addr: SocketAddr,
    duration: Duration,
    iterations: Option<u64>,
    warmup: u64,
    connect_timeout: Duration,
) -> Result<serde_json::Value> {
    let mut stream = connect_retry(addr, connect_timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut byte = [7u8; 1];
    let mut round_trip = |stream: &mut TcpStream| -> Result<()> {
        stream.write_all(&byte).context("send")?;
        stream.read_exact(&mut byte).context("receive the echo")
    };
    let warm_until = Instant::now() + duration.min(Duration::from_secs(1));
    for _ in 0..warmup {
        if Instant::now() >= warm_until {
            break;
        }
        round_trip(&mut stream)?;
    }
    let limit = iterations.unwrap_or(u64::MAX);
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    let end = start + duration;
    let mut t0 = start;
    while (samples.len() as u64) < limit {
        round_trip(&mut stream)?;
        let t1 = Instant::now();
        samples.push((t1 - t0).as_nanos() as u64);
        if t1 >= end {
            break;
        }
        t0 = t1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(stream);
    if samples.is_empty() {
        bail!("no round trip measured");
    }
    let mean = samples.iter().sum::<u64>() / samples.len() as u64;
    samples.sort_unstable();
    Ok(json!({
        "role": "rr-client",
        "samples": samples.len(),
        "elapsed_s": elapsed,
        "min_us": us(samples[0]),
        "p50_us": us(percentile(&samples, 0.50)),
        "p99_us": us(percentile(&samples, 0.99)),
        "max_us": us(samples[samples.len() - 1]),
        "mean_us": us(mean),
    }))
}

fn udp_sink(bind: SocketAddr, duration: Duration, idle: Duration) -> Result<serde_json::Value> {
    let deadline = Instant::now() + duration;
    let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    // A deep receive queue, so that what is lost is lost on the path, not in the sink.
    let depth = 16usize << 20;
    if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &depth).is_err()
    {
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &depth);
    }
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut bufs = vec![vec![0u8; 2048]; sys::MAX_BATCH];
    let (mut received, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline || (first.is_some() && now - last >= idle) {
            break;
        }
        match sys::recv_batch(sock.as_fd(), &mut bufs) {
            Ok((n, b)) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                received += n as u64;
                bytes += b as u64;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("recvmmsg"),
        }
    }
    let active = first.map_or(0.0, |f| (last - f).as_secs_f64());
    Ok(json!({
        "role": "udp-sink",
        "received": received,
        "bytes": bytes,
        "active_s": active,
        "pps": if active > 0.0 { received as f64 / active } else { 0.0 },
    }))
}

fn udp_blast(
    addr: SocketAddr,
    duration: Duration,
    pps: Option<f64>,
    size: usize,
    batch: usize,
    flows: usize,
) -> Result<serde_json::Value> {
    if !(1..=sys::MAX_BATCH).contains(&batch) {
        bail!("--batch must be 1..={}", sys::MAX_BATCH);
    }
    if !(1..=1024).contains(&flows) {
        bail!("--flows must be 1..=1024");
    }
    if !(1..=65507).contains(&size) {
        bail!("--size must be 1..=65507");
    }
    if let Some(r) = pps {
        if !(r >= 1.0 && r.is_finite()) {
            bail!("--pps must be at least 1");
        }
    }
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socks = (0..flows)
        .map(|_| {
            let sock = UdpSocket::bind(local)?;
            sock.connect(addr)
                .with_context(|| format!("connect {addr}"))?;
            Ok(sock)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut turn = 0;
    let payload = vec![0x5au8; size];
    let msgs: Vec<&[u8]> = vec![&payload[..]; batch];
    let (mut sent, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(rate) = pps {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due > now {
                sleep((due - now).min(end - now));
                continue;
            }
        }
        let sock = &socks[turn];
        turn = (turn + 1) % socks.len();
        match sys::send_batch(sock.as_fd(), &msgs) {
            Ok(n) => sent += n as u64,
            // ECONNREFUSED from an ICMP error of an earlier datagram, ENOBUFS, EAGAIN: count
            // the failed call and go on; the sink counts what arrived.
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(json!({
        "role": "udp-blast",
        "sent": sent,
        "send_errors": errors,
        "elapsed_s": elapsed,
        "pps": sent as f64 / elapsed,
        "size": size,
        "flows": flows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[42], 0.99), 42);
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(secs("1.5").unwrap(), Duration::from_millis(1500));
        assert!(secs("0").is_err());
        assert!(secs("-1").is_err());
        assert!(secs("7200").is_err());
        assert!(secs("nan").is_err());
    }

    #[test]
    fn loopback_ping_pong_and_udp() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = std::thread::spawn(move || rr_server(addr, Duration::from_secs(3)).unwrap());
        let r = rr_client(
            addr,
            Duration::from_secs(1),
            Some(500),
            10,
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(r["samples"], 500);
        assert!(r["min_us"].as_f64().unwrap() <= r["p50_us"].as_f64().unwrap());
        assert!(r["p50_us"].as_f64().unwrap() <= r["p99_us"].as_f64().unwrap());
        assert_eq!(server.join().unwrap()["echoed"], 510);

        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let sink = std::thread::spawn(move || {
            udp_sink(addr, Duration::from_secs(3), Duration::from_millis(500)).unwrap()
        });
        sleep(Duration::from_millis(100));
        let b = udp_blast(addr, Duration::from_millis(200), Some(5000.0), 64, 16, 1).unwrap();
        let s = sink.join().unwrap();
        let sent = b["sent"].as_u64().unwrap();
        assert!(sent > 0 && sent <= 1100, "paced send: {sent}");
        assert_eq!(s["received"].as_u64().unwrap(), sent);
        assert_eq!(s["bytes"].as_u64().unwrap(), sent * 64);
    }
}
