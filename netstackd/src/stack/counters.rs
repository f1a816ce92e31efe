//! Per-link counters: one cache-line slot per worker, written only by that worker, summed
//! when read. No lock and no atomic read-modify-write on the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::control::Counters;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Failed Ethernet/ARP/IPv4 validation (`ip_rcv` checks).
    Malformed,
    /// Source MAC or IP is not the pod's own.
    Spoofed,
    /// No pod and no uplink route for the destination (or broadcast/multicast).
    NoRoute,
    /// TTL reached zero; an ICMP time exceeded went back.
    TtlExceeded,
    /// Larger than the egress MTU with DF set; an ICMP fragmentation-needed went back.
    FragNeeded,
    /// Larger than the egress MTU without DF: Linux would fragment, netstackd does not.
    TooBig,
    /// A protocol netstackd does not forward yet (IPv6, other ethertypes).
    Unsupported,
    /// The egress device refused the write.
    TxError,
    /// The egress link's fifo queue was full (tail drop).
    QdiscFull,
    /// Longer than the buffer it was read into: the kernel cut it short (a read reported
    /// more bytes than the buffer holds, or flagged the frame truncated).
    Oversize,
    /// To an address no router forwards: IPv4 0/8, 127/8 (the node's loopback), 240/4 but
    /// the broadcast address, IPv6 `::1`.
    Martian,
    /// To a VM whose receive ring had no buffer while the frames already waiting for one
    /// filled its backlog.
    GuestRxFull,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 12] = [
        DropReason::Malformed,
        DropReason::Spoofed,
        DropReason::NoRoute,
        DropReason::TtlExceeded,
        DropReason::FragNeeded,
        DropReason::TooBig,
        DropReason::Unsupported,
        DropReason::TxError,
        DropReason::QdiscFull,
        DropReason::Oversize,
        DropReason::Martian,
        DropReason::GuestRxFull,
    ];

    /// The reason's name in stats and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Spoofed => "spoofed",
            DropReason::NoRoute => "no_route",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::FragNeeded => "frag_needed",
            DropReason::TooBig => "too_big",
            DropReason::Unsupported => "unsupported",
            DropReason::TxError => "tx_error",
            DropReason::QdiscFull => "qdisc_full",
            DropReason::Oversize => "oversize",
            DropReason::Martian => "martian",
            DropReason::GuestRxFull => "guest_rx_full",
        }
    }
}

#[derive(Default)]
#[repr(align(64))]
struct Slot {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_gso: AtomicU64,
    rx_big: AtomicU64,
    segmented: AtomicU64,
    chunked: AtomicU64,
    queued: AtomicU64,
    rx_calls: AtomicU64,
    tx_calls: AtomicU64,
    queue_stops: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

/// Adds to a counter that only one thread writes: a plain load and store, no locked op.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The counters of one link (a pod interface or the uplink).
pub struct LinkCounters {
    slots: Box<[Slot]>,
}

impl LinkCounters {
    /// Counters for a link served by `workers` workers.
    pub fn new(workers: usize) -> Self {
        LinkCounters {
            slots: (0..workers.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// A frame of `bytes` came in from the link; called only by worker `worker`.
    pub fn rx(&self, worker: usize, bytes: usize) {
        let s = &self.slots[worker];
        bump(&s.rx_packets, 1);
        bump(&s.rx_bytes, bytes as u64);
    }

    /// One read system call brought frames in; called only by worker `worker`.
    pub fn rx_call(&self, worker: usize) {
        bump(&self.slots[worker].rx_calls, 1);
    }

    /// One write system call sent frames out; called only by worker `worker`.
    pub fn tx_call(&self, worker: usize) {
        bump(&self.slots[worker].tx_calls, 1);
    }

    /// Frames now waiting in worker `worker`'s queue for this link; called only by it.
    pub fn set_queued(&self, worker: usize, frames: usize) {
        self.slots[worker].queued.store(frames as u64, Relaxed);
    }

    /// The frame just received was a GSO super-frame; called only by worker `worker`.
    pub fn rx_gso(&self, worker: usize) {
        bump(&self.slots[worker].rx_gso, 1);
    }

    /// The frame just received was a BIG TCP frame (a GSO frame over 64 KiB); called only by
    /// worker `worker`.
    pub fn rx_big(&self, worker: usize) {
        bump(&self.slots[worker].rx_big, 1);
    }

    /// A BIG TCP frame for this link was cut into GSO frames of at most 64 KiB (a TAP, the
    /// TUN or a guest takes no larger); called only by worker `worker`.
    pub fn chunked(&self, worker: usize) {
        bump(&self.slots[worker].chunked, 1);
    }

    /// A GSO super-frame for this link was segmented in software (the link refused it
    /// whole); called only by worker `worker`.
    pub fn segmented(&self, worker: usize) {
        bump(&self.slots[worker].segmented, 1);
    }

    /// A frame of `bytes` went out to the link; called only by worker `worker`.
    pub fn tx(&self, worker: usize, bytes: usize) {
        let s = &self.slots[worker];
        bump(&s.tx_packets, 1);
        bump(&s.tx_bytes, bytes as u64);
    }

    /// A VM's virtqueue stopped on garbage in its ring; called only by worker `worker`.
    pub fn queue_stopped(&self, worker: usize) {
        bump(&self.slots[worker].queue_stops, 1);
    }

    /// A frame was dropped; called only by worker `worker`.
    pub fn dropped(&self, worker: usize, reason: DropReason) {
        bump(&self.slots[worker].drops[reason as usize], 1);
    }

    /// The sum over all workers.
    pub fn snapshot(&self) -> Counters {
        let mut c = Counters::default();
        for s in self.slots.iter() {
            c.rx_packets += s.rx_packets.load(Relaxed);
            c.rx_bytes += s.rx_bytes.load(Relaxed);
            c.tx_packets += s.tx_packets.load(Relaxed);
            c.tx_bytes += s.tx_bytes.load(Relaxed);
            c.rx_gso_packets += s.rx_gso.load(Relaxed);
            c.tx_gso_segmented += s.segmented.load(Relaxed);
            c.rx_big_tcp_packets += s.rx_big.load(Relaxed);
            c.tx_big_tcp_chunked += s.chunked.load(Relaxed);
            c.qdisc_depth += s.queued.load(Relaxed);
            c.rx_calls += s.rx_calls.load(Relaxed);
            c.tx_calls += s.tx_calls.load(Relaxed);
            c.vhost_queue_stops += s.queue_stops.load(Relaxed);
        }
        for reason in DropReason::ALL {
            let n: u64 = self
                .slots
                .iter()
                .map(|s| s.drops[reason as usize].load(Relaxed))
                .sum();
            c.drops.insert(reason.name().to_owned(), n);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_every_worker() {
        let c = LinkCounters::new(2);
        c.rx(0, 100);
        c.rx(1, 50);
        c.tx(1, 10);
        c.dropped(0, DropReason::Spoofed);
        c.dropped(1, DropReason::Spoofed);
        let s = c.snapshot();
        assert_eq!(
            (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes),
            (2, 150, 1, 10)
        );
        assert_eq!(s.drops["spoofed"], 2);
        assert_eq!(s.drops["malformed"], 0);
        assert_eq!(s.drops.len(), DropReason::ALL.len());
    }
}
