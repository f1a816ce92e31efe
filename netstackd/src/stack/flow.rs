//! The service flow table: which pod-to-pod replies must go back through the node's kernel.
//!
//! kube-proxy implements a Service in the node's netfilter: a pod's packet to a ClusterIP
//! leaves through the uplink, the kernel DNATs it to an endpoint and conntrack remembers the
//! rewrite. When the endpoint is a pod on this node, the packet comes back from the uplink
//! with a local pod as its *source* — something plain pod-to-pod traffic never does, since
//! netstackd switches that itself. The endpoint's reply is addressed to the client pod; if
//! netstackd switched it directly, conntrack would never turn its source back into the
//! ClusterIP and the client's socket would drop it. So when a packet from the uplink has a
//! local pod as source, the router records the reply's 5-tuple here, and a pod-to-pod packet
//! whose tuple is recorded goes to the uplink instead of the other pod: replies take the path
//! their requests took.
//!
//! The table is shared by every worker (a request and its reply may be read by different
//! workers), allocated once and never grows: `2^n` buckets of [`WAYS`] slots, each slot one
//! `AtomicU64` holding a 39-bit fingerprint of the tuple's keyed hash, a TCP closing mark and
//! a 24-bit expiry second. A lookup is one keyed hash and one cache line (about 27 ns for a
//! miss, measured; the clock is read only on a fingerprint match). No locks: a slot is
//! replaced with a compare-and-swap, and a race only loses an insert, which the flow's next
//! request packet makes again. A wrong answer is harmless by construction: a false hit (two tuples sharing a
//! bucket and a fingerprint, or an entry that outlived its flow) sends a pod-to-pod packet
//! through the kernel, which routes it straight back to the pod. What is not harmless is an
//! entry lost while its conntrack flow lives (evicted by a full bucket, or expired too
//! early): evictions are counted, and every timeout is at least conntrack's default for the
//! same state, refreshed by packets in both directions as conntrack's are.

use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::wire::{icmpv4, icmpv6, ipv4, ipv6, Ipv4Packet, Ipv6Packet};

/// Slots per bucket: 8 × 8 bytes, one cache line.
pub const WAYS: usize = 8;

/// The default number of entries: 65536 flows in 512 KiB (zeroed pages: the kernel backs
/// them only as buckets are used).
pub const DEFAULT_CAPACITY: usize = 1 << 16;

/// TCP after the handshake: conntrack's `nf_conntrack_tcp_timeout_established` (5 days).
pub const TCP_ESTABLISHED_SECS: u32 = 432_000;
/// TCP before the handshake completes, or after a FIN or RST: conntrack keeps such a flow
/// 120 s at most (`syn_sent`, `time_wait`).
pub const TCP_CLOSING_SECS: u32 = 120;
/// UDP: conntrack's stream timeout (`nf_conntrack_udp_timeout_stream`); a flow that has seen
/// only one direction lives 30 s there, and outliving it here is harmless.
pub const UDP_SECS: u32 = 120;
/// ICMP echo: `nf_conntrack_icmp_timeout` (30 s).
pub const ICMP_SECS: u32 = 30;
/// Any other protocol: `nf_conntrack_generic_timeout` (600 s).
pub const OTHER_SECS: u32 = 600;

/// Expiry seconds are kept modulo 2^24 (194 days); a remaining time above the longest
/// timeout means the entry has expired.
const EXPIRY_BITS: u32 = 24;
const EXPIRY_MASK: u64 = (1 << EXPIRY_BITS) - 1;
/// Above the expiry: a TCP flow that has seen a FIN or RST.
const CLOSING_BIT: u64 = 1 << EXPIRY_BITS;
/// The rest of the slot is the fingerprint: 39 bits of the tuple's hash (a lookup in a full
/// bucket matches a foreign tuple with odds 8 in 2^39).
const FINGERPRINT_SHIFT: u32 = EXPIRY_BITS + 1;
const FINGERPRINT_BITS: u32 = 64 - FINGERPRINT_SHIFT;

/// One flow direction as the router sees it: protocol, addresses (IPv4 mapped into IPv6)
/// and ports (for ICMP echo, the identifier in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol (IPv6: the upper-layer next header).
    pub proto: u8,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (ICMP echo identifier; 0 for a fragment's address-pair key).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The key without ports: what a fragment without its transport header is looked up by.
    pub fn address_pair(self) -> FlowKey {
        FlowKey {
            sport: 0,
            dport: 0,
            ..self
        }
    }
}

/// What the router takes from a packet to look it up or record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPacket {
    /// The packet's own tuple (for an ICMP error: the reverse of the packet it quotes, so
    /// that the error follows its flow as conntrack's RELATED does).
    pub key: FlowKey,
    /// A fragment: looked up by [`FlowKey::address_pair`].
    pub fragment: bool,
    /// How long a flow that carries this packet lives.
    pub lifetime: Lifetime,
}

/// How a packet sets its flow's expiry, as conntrack's state machine would: TCP by its
/// flags, everything else by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// A fixed timeout in seconds (UDP, ICMP, other protocols).
    Fixed(u32),
    /// A TCP SYN without ACK: a new connection (`syn_sent`).
    TcpOpening,
    /// Any other TCP segment: established, unless the flow has seen a FIN or RST.
    TcpOpen,
    /// A TCP FIN or RST: the flow is closing and keeps a short timeout from now on.
    TcpClosing,
}

impl Lifetime {
    /// The timeout and closing mark of a flow that had `closing` set and now carries a
    /// packet with this lifetime.
    fn apply(self, closing: bool) -> (u32, bool) {
        match self {
            Lifetime::Fixed(t) => (t.min(TCP_ESTABLISHED_SECS), false),
            Lifetime::TcpOpening => (TCP_CLOSING_SECS, false),
            Lifetime::TcpOpen if closing => (TCP_CLOSING_SECS, true),
            Lifetime::TcpOpen => (TCP_ESTABLISHED_SECS, false),
            Lifetime::TcpClosing => (TCP_CLOSING_SECS, true),
        }
    }
}

impl FlowPacket {
    /// The tuple of an IPv4 packet (already validated by the router).
    pub fn ipv4<T: AsRef<[u8]>>(ip: &Ipv4Packet<T>) -> FlowPacket {
        let fragment = ip.more_frags() || ip.frag_offset() != 0;
        let l4 = if ip.frag_offset() == 0 {
            ip.payload()
        } else {
            &[]
        };
        let key = FlowKey {
            proto: ip.protocol(),
            src: ip.src_addr().to_ipv6_mapped().octets(),
            dst: ip.dst_addr().to_ipv6_mapped().octets(),
            sport: 0,
            dport: 0,
        };
        if key.proto == ipv4::PROTO_ICMP && l4.first().is_some_and(|t| icmpv4::is_error(*t)) {
            if let Some(quoted) = l4.get(icmpv4::HEADER_LEN..).and_then(quoted_v4) {
                return quoted;
            }
        }
        transport(
            key,
            l4,
            fragment,
            icmpv4::TYPE_ECHO_REQUEST,
            icmpv4::TYPE_ECHO_REPLY,
        )
    }

    /// The tuple of an IPv6 packet: the transport header directly after the fixed header,
    /// or after a fragment header (then an address-pair key). Other extension headers are
    /// not walked: such packets are keyed by their first next header, the same way on both
    /// sides (but a BIG TCP frame's jumbo header is skipped: its TCP is keyed as TCP).
    pub fn ipv6<T: AsRef<[u8]>>(ip: &Ipv6Packet<T>) -> FlowPacket {
        let (proto, l4) = ip.transport();
        let key = FlowKey {
            proto,
            src: ip.src_addr().octets(),
            dst: ip.dst_addr().octets(),
            sport: 0,
            dport: 0,
        };
        let payload = ip.payload().get(l4..).unwrap_or_default();
        if key.proto == ipv6::NEXT_ICMPV6 && payload.first().is_some_and(|t| icmpv6::is_error(*t)) {
            if let Some(quoted) = payload.get(icmpv6::HEADER_LEN..).and_then(quoted_v6) {
                return quoted;
            }
        }
        v6_transport(key, payload)
    }
}

/// The IPv6 key and lifetime once the addresses are known: `payload` follows the fixed
/// header whose next header is `key.proto`.
fn v6_transport(mut key: FlowKey, payload: &[u8]) -> FlowPacket {
    if key.proto == ipv6::NEXT_FRAGMENT {
        key.proto = payload.first().copied().unwrap_or(ipv6::NEXT_FRAGMENT);
        return FlowPacket {
            key,
            fragment: true,
            lifetime: lifetime_of(key.proto, &[]),
        };
    }
    transport(
        key,
        payload,
        false,
        icmpv6::TYPE_ECHO_REQUEST,
        icmpv6::TYPE_ECHO_REPLY,
    )
}

/// The flow an ICMP error belongs to, from the (usually cut short) IPv4 packet it quotes:
/// that packet went from the error's destination to its source, so its tuple reversed is the
/// error's own direction, as conntrack relates errors to flows.
fn quoted_v4(q: &[u8]) -> Option<FlowPacket> {
    let hlen = usize::from(*q.first()? & 0x0f) * 4;
    if q[0] >> 4 != 4 || hlen < ipv4::MIN_HEADER_LEN || q.len() < hlen {
        return None;
    }
    let frag = u16::from_be_bytes([q[6], q[7]]);
    let first = frag & 0x1fff == 0;
    let key = FlowKey {
        proto: q[9],
        src: Ipv4Addr::new(q[12], q[13], q[14], q[15])
            .to_ipv6_mapped()
            .octets(),
        dst: Ipv4Addr::new(q[16], q[17], q[18], q[19])
            .to_ipv6_mapped()
            .octets(),
        sport: 0,
        dport: 0,
    };
    let l4 = if first { &q[hlen..] } else { &[] };
    let quoted = transport(
        key,
        l4,
        !first || frag & 0x2000 != 0,
        icmpv4::TYPE_ECHO_REQUEST,
        icmpv4::TYPE_ECHO_REPLY,
    );
    Some(FlowPacket {
        key: quoted.key.reversed(),
        ..quoted
    })
}

/// [`quoted_v4`] for an IPv6 packet quoted in an ICMPv6 error.
fn quoted_v6(q: &[u8]) -> Option<FlowPacket> {
    if q.len() < ipv6::HEADER_LEN || q[0] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| -> [u8; 16] { q[at..at + 16].try_into().unwrap_or([0; 16]) };
    let key = FlowKey {
        proto: q[6],
        src: addr(8),
        dst: addr(24),
        sport: 0,
        dport: 0,
    };
    let quoted = v6_transport(key, &q[ipv6::HEADER_LEN..]);
    Some(FlowPacket {
        key: quoted.key.reversed(),
        ..quoted
    })
}

/// Fills in ports (TCP, UDP, SCTP, UDP-Lite, DCCP all start with them) or the ICMP echo
/// identifier, and the timeout.
fn transport(
    mut key: FlowKey,
    l4: &[u8],
    fragment: bool,
    echo_request: u8,
    echo_reply: u8,
) -> FlowPacket {
    let icmp = key.proto == ipv4::PROTO_ICMP || key.proto == ipv6::NEXT_ICMPV6;
    if icmp {
        if let (Some(&t), Some(id)) = (l4.first(), l4.get(4..6)) {
            if t == echo_request || t == echo_reply {
                let id = u16::from_be_bytes([id[0], id[1]]);
                (key.sport, key.dport) = (id, id);
            }
        }
    } else if has_ports(key.proto) {
        if let Some(p) = l4.get(..4) {
            key.sport = u16::from_be_bytes([p[0], p[1]]);
            key.dport = u16::from_be_bytes([p[2], p[3]]);
        }
    }
    FlowPacket {
        key,
        fragment,
        lifetime: lifetime_of(key.proto, l4),
    }
}

/// Transport protocols whose header starts with a source and a destination port.
fn has_ports(proto: u8) -> bool {
    // TCP, UDP, DCCP, SCTP, UDP-Lite.
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}

/// The lifetime a packet of `proto` whose transport bytes are `l4` gives its flow.
fn lifetime_of(proto: u8, l4: &[u8]) -> Lifetime {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    match proto {
        ipv4::PROTO_TCP => match l4.get(13) {
            Some(f) if f & (FIN | RST) != 0 => Lifetime::TcpClosing,
            Some(f) if f & (SYN | ACK) == SYN => Lifetime::TcpOpening,
            _ => Lifetime::TcpOpen,
        },
        ipv4::PROTO_UDP => Lifetime::Fixed(UDP_SECS),
        ipv4::PROTO_ICMP | ipv6::NEXT_ICMPV6 => Lifetime::Fixed(ICMP_SECS),
        _ => Lifetime::Fixed(OTHER_SECS),
    }
}

/// The table's tallies, as the dataplane reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Slots (the most flows it holds).
    pub capacity: u64,
    /// Live entries.
    pub entries: u64,
    /// New entries recorded.
    pub inserts: u64,
    /// Live entries replaced because their bucket was full.
    pub evictions: u64,
}

/// One cache line of slots.
#[repr(align(64))]
#[derive(Default)]
struct Bucket([AtomicU64; WAYS]);

/// The shared, fixed-size table of flows whose replies go through the uplink.
pub struct FlowTable {
    buckets: Box<[Bucket]>,
    mask: u64,
    /// The hash key: random per table.
    seeds: [u64; 6],
    epoch: Instant,
    /// Set by the first insert: until then, a lookup costs one load of this flag.
    used: AtomicBool,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

impl FlowTable {
    /// A table of at least `capacity` entries (rounded up to a power of two buckets), with a
    /// random hash key so that nobody can aim flows at one bucket.
    pub fn new(capacity: usize) -> FlowTable {
        let buckets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        FlowTable {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            mask: buckets as u64 - 1,
            seeds: {
                let random = std::hash::RandomState::new();
                std::array::from_fn(|i| random.hash_one(i))
            },
            epoch: Instant::now(),
            used: AtomicBool::new(false),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// A keyed hash of the tuple: folded 64×64→128-bit multiplies (as wyhash mixes) of its
    /// five words with the table's random seeds. A few ns, against tens for SipHash through
    /// `Hash`; the seeds never leave the process, and a pod that made its Service flows
    /// collide would only evict flows from one bucket, as a flood does anyway.
    fn hash(&self, key: &FlowKey) -> u64 {
        let word = |b: &[u8; 16], half: usize| {
            u64::from_le_bytes(b[half * 8..half * 8 + 8].try_into().unwrap_or([0; 8]))
        };
        let rest = u64::from(key.proto) << 32 | u64::from(key.sport) << 16 | u64::from(key.dport);
        let s = &self.seeds;
        let a = fold_mul(word(&key.src, 0) ^ s[0], word(&key.src, 1) ^ s[1]);
        let b = fold_mul(word(&key.dst, 0) ^ s[2], word(&key.dst, 1) ^ s[3]);
        let c = fold_mul(rest ^ s[4], a ^ s[5]);
        fold_mul(c ^ b, s[0] ^ s[5])
    }

    /// Seconds since the table was made, plus one (the coarse clock of every entry).
    pub fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// Has anything ever been recorded? While not, a lookup can be skipped.
    pub fn is_used(&self) -> bool {
        self.used.load(Relaxed)
    }

    fn slot_of(&self, key: &FlowKey) -> (&Bucket, u64) {
        let h = self.hash(key);
        let fingerprint = (h >> (64 - FINGERPRINT_BITS)).max(1);
        (&self.buckets[(h & self.mask) as usize], fingerprint)
    }

    /// Records `key` as live from `now` for the time `lifetime` gives it, or refreshes it.
    /// A full bucket gives up the entry that expires first (counted as an eviction).
    pub fn record(&self, key: &FlowKey, lifetime: Lifetime, now: u32) {
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
        let (bucket, fingerprint) = self.slot_of(key);
        // Two passes: a lost race with another worker is retried once, then left to the
        // flow's next packet.
        for _ in 0..2 {
            let mut victim: Option<(usize, u64, u32)> = None;
            for (i, slot) in bucket.0.iter().enumerate() {
                let v = slot.load(Relaxed);
                let remaining = remaining_secs(v, now);
                if v >> FINGERPRINT_SHIFT == fingerprint && remaining > 0 {
                    refresh(slot, v, fingerprint, lifetime, now);
                    return;
                }
                if victim.is_none_or(|(_, _, r)| remaining < r) {
                    victim = Some((i, v, remaining));
                }
            }
            let Some((i, old, remaining)) = victim else {
                return;
            };
            let (timeout, closing) = lifetime.apply(false);
            let new = pack(fingerprint, closing, now, timeout);
            if bucket.0[i]
                .compare_exchange(old, new, Relaxed, Relaxed)
                .is_ok()
            {
                self.inserts.fetch_add(1, Relaxed);
                if remaining > 0 {
                    self.evictions.fetch_add(1, Relaxed);
                }
                return;
            }
        }
    }

    /// Is `key` live now? A hit refreshes the entry with the packet's `lifetime`, as a
    /// packet in either direction refreshes a conntrack entry. The clock is read only when a
    /// fingerprint matches: a miss is a hash and one cache line.
    pub fn lookup(&self, key: &FlowKey, lifetime: Lifetime) -> bool {
        self.probe(key, lifetime, || self.now())
    }

    /// [`lookup`](Self::lookup) at `now` (seconds on the table's clock).
    pub fn lookup_at(&self, key: &FlowKey, lifetime: Lifetime, now: u32) -> bool {
        self.probe(key, lifetime, || now)
    }

    fn probe(&self, key: &FlowKey, lifetime: Lifetime, now: impl Fn() -> u32) -> bool {
        let (bucket, fingerprint) = self.slot_of(key);
        for slot in &bucket.0 {
            let v = slot.load(Relaxed);
            if v >> FINGERPRINT_SHIFT != fingerprint {
                continue;
            }
            let now = now();
            if remaining_secs(v, now) == 0 {
                continue;
            }
            refresh(slot, v, fingerprint, lifetime, now);
            return true;
        }
        false
    }

    /// Capacity, live entries (counted now, one pass over the table) and tallies.
    pub fn stats(&self) -> FlowStats {
        let now = self.now();
        let entries = if self.is_used() {
            self.buckets
                .iter()
                .flat_map(|b| &b.0)
                .filter(|s| remaining_secs(s.load(Relaxed), now) > 0)
                .count() as u64
        } else {
            0
        };
        FlowStats {
            capacity: self.buckets.len() as u64 * WAYS as u64,
            entries,
            inserts: self.inserts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
        }
    }
}

/// The 128-bit product of `a` and `b`, its halves xored.
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// A slot's value: the fingerprint, the closing mark, the expiry second.
fn pack(fingerprint: u64, closing: bool, now: u32, timeout_secs: u32) -> u64 {
    let expiry = u64::from(now.wrapping_add(timeout_secs)) & EXPIRY_MASK;
    (fingerprint << FINGERPRINT_SHIFT) | (u64::from(closing) << EXPIRY_BITS) | expiry
}

/// Rewrites a live slot for a packet of `lifetime` at `now`; no store when nothing changes
/// (expiries are in whole seconds, so a busy flow writes its slot once a second at most).
fn refresh(slot: &AtomicU64, v: u64, fingerprint: u64, lifetime: Lifetime, now: u32) {
    let closing = v & CLOSING_BIT != 0;
    let (timeout, closing) = lifetime.apply(closing);
    let new = pack(fingerprint, closing, now, timeout);
    if new != v {
        // A lost race means another worker refreshed it: as good.
        let _ = slot.compare_exchange(v, new, Relaxed, Relaxed);
    }
}

/// Seconds a slot has left at `now`; 0 for an empty or expired slot. Expiries are kept
/// modulo 2^24, so "left" above the longest timeout means the expiry is in the past (an entry
/// untouched for 194 days could come back to life: a false hit, which is harmless).
fn remaining_secs(slot: u64, now: u32) -> u32 {
    if slot == 0 {
        return 0;
    }
    let left = (slot & EXPIRY_MASK).wrapping_sub(u64::from(now)) & EXPIRY_MASK;
    if left > u64::from(TCP_ESTABLISHED_SECS) {
        0
    } else {
        left as u32
    }
}

#[cfg(test)]
mod tests;
