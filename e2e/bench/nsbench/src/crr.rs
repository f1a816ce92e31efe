//! `crr-server` / `crr-client`: the connection rate, as netperf's `TCP_CRR` measures it.
//!
//! The client, one connection at a time: connect, send a 1-byte request, read the 1-byte
//! response, close (so the client's side keeps the `TIME_WAIT`, as netperf's does); the server
//! answers each connection and waits for the client's close. The client reports completed
//! transactions per second and the latency of one (connect to response) at p50 and p99.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use serde_json::json;

use crate::{is_timeout, percentile, us};

/// Accepts connections until `duration` has passed; answers each 1-byte request with 1 byte
/// and waits for the peer to close.
pub fn server(bind: SocketAddr, duration: Duration) -> Result<serde_json::Value> {
    let deadline = Instant::now() + duration;
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    // A blocking accept that gives up every 200 ms, so the deadline is seen.
    setsockopt(
        &listener,
        sockopt::ReceiveTimeout,
        &TimeVal::new(0, 200_000),
    )
    .context("SO_RCVTIMEO on the listener")?;
    let (mut answered, mut failed) = (0u64, 0u64);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => match answer(stream) {
                Ok(()) => answered += 1,
                Err(_) => failed += 1,
            },
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(json!({ "role": "crr-server", "answered": answered, "failed": failed }))
}

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    stream.write_all(&byte)?;
    // Until the client closes (read gives 0), so that it is the one left in TIME_WAIT.
    let _ = stream.read(&mut byte)?;
    Ok(())
}

/// Runs transactions against a crr-server for `duration`; reports the rate and latencies.
pub fn client(addr: SocketAddr, duration: Duration) -> Result<serde_json::Value> {
    let start = Instant::now();
    let end = start + duration;
    let mut samples: Vec<u64> = Vec::with_capacity(1 << 15);
    let mut errors = 0u64;
    while Instant::now() < end {
        let t0 = Instant::now();
        match transaction(addr) {
            Ok(()) => samples.push(t0.elapsed().as_nanos() as u64),
            Err(_) => {
                errors += 1;
                if errors > 100 && samples.is_empty() {
                    bail!("connect/request/close to {addr}: every attempt failed");
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if samples.is_empty() {
        bail!("no transaction completed with {addr}");
    }
    let done = samples.len();
    samples.sort_unstable();
    Ok(json!({
        "role": "crr-client",
        "transactions": done,
        "errors": errors,
        "elapsed_s": elapsed,
        "per_s": done as f64 / elapsed,
        "p50_us": us(percentile(&samples, 0.50)),
        "p99_us": us(percentile(&samples, 0.99)),
    }))
}

fn transaction(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).context("connect")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut byte = [1u8; 1];
    s.write_all(&byte).context("request")?;
    s.read_exact(&mut byte).context("response")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_on_loopback_are_counted_by_both_ends() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let srv = std::thread::spawn(move || server(addr, Duration::from_secs(2)).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        let c = client(addr, Duration::from_millis(300)).unwrap();
        let s = srv.join().unwrap();
        let done = c["transactions"].as_u64().unwrap();
        assert!(done > 0);
        assert_eq!(c["errors"], 0);
        assert_eq!(s["answered"].as_u64().unwrap(), done, "{s}");
        assert!(c["p50_us"].as_f64().unwrap() <= c["p99_us"].as_f64().unwrap());
    }
}
