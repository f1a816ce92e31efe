//! Per-pod packet capture: workers append pcap records of a pod's frames to a pipe whose read
//! end the requester holds. Off, it costs one branch per frame; on, it is bounded by a frame
//! count and a deadline, never blocks (a full pipe drops the record, counted), and ends by
//! itself when the reader goes away.

use std::io::IoSlice;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::wire::pcap::RECORD_HEADER_LEN;

/// The most one capture writes (pcap records included), whatever it asked for.
pub const MAX_CAPTURE_BYTES: u64 = 256 << 20;

/// Where one capture's records go.
pub struct CaptureSink {
    pipe: OwnedFd,
    snaplen: usize,
    remaining: AtomicU64,
    bytes_left: AtomicU64,
    deadline: Instant,
    closed: AtomicBool,
    dropped: AtomicU64,
    filter: super::capture_filter::CaptureFilter,
}

impl CaptureSink {
    /// A sink writing to `pipe` (non-blocking), stopping after `max_packets`, `max_seconds`
    /// or [`MAX_CAPTURE_BYTES`].
    pub fn new(pipe: OwnedFd, snaplen: u32, max_packets: u64, max_seconds: u64) -> Self {
        Self::with_byte_limit(pipe, snaplen, max_packets, max_seconds, MAX_CAPTURE_BYTES)
    }

    /// The same with another byte limit.
    pub fn with_byte_limit(
        pipe: OwnedFd,
        snaplen: u32,
        max_packets: u64,
        max_seconds: u64,
        max_bytes: u64,
    ) -> Self {
        CaptureSink {
            pipe,
            snaplen: snaplen as usize,
            remaining: AtomicU64::new(max_packets),
            bytes_left: AtomicU64::new(max_bytes),
            deadline: Instant::now() + Duration::from_secs(max_seconds),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            filter: Default::default(),
        }
    }

    /// Keeps only the frames `filter` matches.
    pub fn with_filter(mut self, filter: super::capture_filter::CaptureFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Is the capture over (reader gone, count or time used up)?
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Records dropped because the reader was too slow.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Appends one frame. A record is at most PIPE_BUF bytes, so the records of several
    /// workers never interleave.
    pub fn record(&self, frame: &[u8]) {
        if self.is_closed() || !self.filter.matches(frame) {
            return;
        }
        let taken = self
            .remaining
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let incl = frame.len().min(self.snaplen);
        let size = (RECORD_HEADER_LEN + incl) as u64;
        let fits = self
            .bytes_left
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(size))
            .is_ok();
        if !taken || !fits || Instant::now() >= self.deadline {
            self.closed.store(true, Relaxed);
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let hdr = crate::wire::pcap::record_header(now, incl as u32, frame.len() as u32);
        let iov = [IoSlice::new(&hdr), IoSlice::new(&frame[..incl])];
        match nix::sys::uio::writev(&self.pipe, &iov) {
            Ok(_) => {}
            Err(nix::Error::EAGAIN) => {
                self.dropped.fetch_add(1, Relaxed);
            }
            Err(_) => self.closed.store(true, Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .unwrap();
        (std::fs::File::from(r), w)
    }

    #[test]
    fn records_are_pcap_with_snaplen_applied() {
        let (mut r, w) = pipe();
        let sink = CaptureSink::new(w, 10, 5, 60);
        sink.record(&[0xab; 14]);
        sink.record(&[0xcd; 4]);
        let mut buf = [0u8; 64];
        let n = r.read(&mut buf).unwrap();
        assert_eq!(n, 16 + 10 + 16 + 4);
        assert_eq!(
            u32::from_le_bytes(buf[8..12].try_into().unwrap()),
            10,
            "incl_len"
        );
        assert_eq!(
            u32::from_le_bytes(buf[12..16].try_into().unwrap()),
            14,
            "orig_len"
        );
        assert_eq!(&buf[16..26], &[0xab; 10]);
        assert_eq!(u32::from_le_bytes(buf[34..38].try_into().unwrap()), 4);
    }

    #[test]
    fn the_byte_limit_bounds_the_capture() {
        let (mut r, w) = pipe();
        let sink = CaptureSink::with_byte_limit(w, 100, 1000, 60, 3 * 36 + 10);
        for _ in 0..5 {
            sink.record(&[1; 20]);
        }
        assert!(sink.is_closed());
        let mut all = Vec::new();
        let _ = r.read_to_end(&mut all);
        assert_eq!(
            all.len(),
            3 * (16 + 20),
            "three whole records fit, never a partial one"
        );
    }

    #[test]
    fn the_count_bounds_the_capture() {
        let (mut r, w) = pipe();
        let sink = CaptureSink::new(w, 100, 2, 60);
        for _ in 0..5 {
            sink.record(&[1; 20]);
        }
        assert!(sink.is_closed());
        let mut all = Vec::new();
        let _ = r.read_to_end(&mut all);
        assert_eq!(all.len(), 2 * (16 + 20));
    }

    #[test]
    fn a_gone_reader_ends_the_capture() {
        let (r, w) = pipe();
        drop(r);
        let sink = CaptureSink::new(w, 100, 10, 60);
        sink.record(&[1; 20]);
        assert!(sink.is_closed());
    }

    #[test]
    fn a_full_pipe_drops_records_without_blocking() {
        let (_r, w) = pipe();
        let sink = CaptureSink::new(w, 4000, 1_000, 60);
        for _ in 0..100 {
            sink.record(&[7; 4000]);
        }
        assert!(sink.dropped() > 0);
        assert!(!sink.is_closed());
    }
}
