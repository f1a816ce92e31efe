//! The fifo qdisc of every egress link, and the buffers frames live in.
//!
//! Each worker is a dispatcher: the kernel spreads a pod's flows over its TAP queues by flow
//! hash and worker *w* reads queue *w*, so every packet of a flow is handled by one worker and
//! leaves through that worker's queue for the egress link — a flow never reorders. Frames are
//! read straight into pooled slots and queued by slot index (no copy); a worker drains its
//! queues after each batch it reads. A full queue drops the newest frame (tail drop, counted).
//! An optional token bucket per direction shapes a pod: frames to the pod wait in its queue
//! until the bucket allows them; frames from the pod are left in the pod's own TAP ring (the
//! worker stops reading it), which pushes back on the sender instead of dropping.
//! Only a shaped queue keeps frames between batches, and the worker bounds it to the pod's own
//! share of slots, which it adds to the pool while the pod is attached: a flooded shaped pod
//! drops its own traffic and never holds the buffers the other links are read into.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::wire::vnet::VNET_HDR_LEN;

/// Room for the largest frame a TAP or TUN hands over (64 KiB IP packet + Ethernet header):
/// every slot's size unless BIG TCP is on ([`big_tcp_slot_len`]).
pub const SLOT_LEN: usize = 14 + 65535 + 3;

/// The slot size with BIG TCP frames of up to `gso_max_bytes` (`--big-tcp-size`): the
/// frame, its Ethernet header and the IPv6 jumbo header, with room to spare (a frame that
/// does not fit is cut and dropped as `oversize`). Never below [`SLOT_LEN`].
pub fn big_tcp_slot_len(gso_max_bytes: usize) -> usize {
    (gso_max_bytes + 14 + 8 + 256).max(SLOT_LEN)
}

/// One frame buffer with its virtio-net header beside it.
pub struct Slot {
    /// The virtio-net header to send with the frame.
    pub vnet: [u8; VNET_HDR_LEN],
    /// The frame.
    pub buf: Box<[u8]>,
    /// Where the bytes to send start (14 for the uplink TUN: no Ethernet header).
    pub start: usize,
    /// Where they end.
    pub end: usize,
}

/// A worker's frame buffers. Free slots are reused last-in first-out, so a light load keeps
/// touching the same few buffers and the resident memory stays small. The pool starts with the
/// slots it is created with and may grow to a limit the worker raises and lowers as shaped pods
/// come and go ([`SlotPool::set_limit`]): a slot past the first ones is allocated the first time
/// it is needed, once, and freed when the limit drops below it and it is free.
pub struct SlotPool {
    slots: Vec<Slot>,
    free: Vec<u32>,
    limit: usize,
    /// Bytes per slot.
    slot_len: usize,
}

impl Slot {
    fn new(len: usize) -> Self {
        Slot {
            vnet: [0; VNET_HDR_LEN],
            buf: vec![0u8; len].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
}

impl SlotPool {
    /// `n` slots, allocated up front (pages are only touched as frames use them); the limit is
    /// `n` too.
    pub fn new(n: usize) -> Self {
        Self::with_slot_len(n, SLOT_LEN)
    }

    /// [`SlotPool::new`] with slots of `slot_len` bytes (BIG TCP frames need more than
    /// [`SLOT_LEN`]).
    pub fn with_slot_len(n: usize, slot_len: usize) -> Self {
        SlotPool {
            slots: (0..n).map(|_| Slot::new(slot_len)).collect(),
            free: (0..n as u32).rev().collect(),
            limit: n,
            slot_len,
        }
    }

    /// Bytes per slot.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Lets the pool hold up to `n` slots. Lowering it frees the free slots past `n` now and
    /// the others as they come back.
    pub fn set_limit(&mut self, n: usize) {
        self.limit = n;
        self.trim();
    }

    /// Slots allocated now.
    pub fn allocated(&self) -> usize {
        self.slots.len()
    }

    /// Slots free now (allocated or not yet).
    pub fn available(&self) -> usize {
        self.free.len() + self.limit.saturating_sub(self.slots.len())
    }

    /// A free slot, if any: a reused one, else a new one while under the limit.
    pub fn take(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.slots.len() < self.limit {
            self.slots.push(Slot::new(self.slot_len));
            return Some(self.slots.len() as u32 - 1);
        }
        None
    }

    /// Returns a slot.
    pub fn put(&mut self, i: u32) {
        debug_assert!(!self.free.contains(&i));
        self.free.push(i);
        if self.slots.len() > self.limit {
            self.trim();
        }
    }

    /// Frees the free slots at the end of the pool while it is over its limit.
    fn trim(&mut self) {
        while self.slots.len() > self.limit {
            let last = self.slots.len() as u32 - 1;
            let Some(at) = self.free.iter().rposition(|&i| i == last) else {
                return;
            };
            self.free.remove(at);
            self.slots.pop();
        }
    }

    /// A slot by index.
    pub fn get(&self, i: u32) -> &Slot {
        &self.slots[i as usize]
    }

    /// A slot by index, to fill.
    pub fn get_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.slots[i as usize]
    }

    /// The slots `idx` names, to fill together (one `recvmmsg` into several). `idx` must be
    /// strictly ascending; the walk stops at the first index that is not.
    pub fn many_mut<'a>(&'a mut self, idx: &'a [u32]) -> impl Iterator<Item = &'a mut Slot> {
        let mut rest: &'a mut [Slot] = &mut self.slots;
        let mut base = 0usize;
        idx.iter().map_while(move |&i| {
            let skip = (i as usize).checked_sub(base)?;
            let tail = std::mem::take(&mut rest).get_mut(skip..)?;
            let (slot, after) = tail.split_first_mut()?;
            rest = after;
            base = i as usize + 1;
            Some(slot)
        })
    }
}

/// A bounded first-in first-out queue of slots for one egress link: at most `limit` frames
/// and, for a shaped link, at most `byte_limit` bytes (as tbf bounds its queue by latency).
pub struct FifoQueue {
    frames: VecDeque<(u32, u32)>,
    bytes: usize,
    limit: usize,
    byte_limit: usize,
    /// Already on the worker's list of queues to drain.
    pub dirty: bool,
}

impl FifoQueue {
    /// An empty queue holding at most `limit` frames.
    pub fn new(limit: usize) -> Self {
        FifoQueue {
            frames: VecDeque::with_capacity(limit),
            bytes: 0,
            limit,
            byte_limit: usize::MAX,
            dirty: false,
        }
    }

    /// Bounds the queue to `frames` frames (those already in it stay).
    pub fn set_limit(&mut self, frames: usize) {
        self.limit = frames;
    }

    /// Also bounds the queue to `bytes` (a frame is always accepted into an empty queue).
    pub fn set_byte_limit(&mut self, bytes: usize) {
        self.byte_limit = bytes;
    }

    /// Appends a slot holding a frame of `len` bytes; a full queue hands it back (tail drop).
    pub fn push(&mut self, slot: u32, len: usize) -> Result<(), u32> {
        let over_bytes = !self.frames.is_empty() && self.bytes + len > self.byte_limit;
        if self.frames.len() >= self.limit || over_bytes {
            return Err(slot);
        }
        self.frames.push_back((slot, len as u32));
        self.bytes += len;
        Ok(())
    }

    /// The oldest slot.
    pub fn front(&self) -> Option<u32> {
        self.frames.front().map(|&(slot, _)| slot)
    }

    /// Removes the oldest slot.
    pub fn pop(&mut self) -> Option<u32> {
        let (slot, len) = self.frames.pop_front()?;
        self.bytes -= len as usize;
        Some(slot)
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Nothing waiting?
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// The most a shaped queue delays a frame (the CNI bandwidth plugin gives tbf 25 ms too).
pub const SHAPED_LATENCY: Duration = Duration::from_millis(25);

struct BucketState {
    tokens: f64,
    last: Instant,
}

/// The smallest burst a bucket keeps, whatever it is given: a 64 KiB GSO frame is never stuck
/// behind a smaller one.
pub const MIN_BURST_BYTES: u64 = 64 << 10;
/// The largest burst a bucket keeps, however fast it is.
pub const MAX_BURST_BYTES: u64 = 4 << 20;
/// The longest a burst lasts at the bucket's rate: a larger burst is clamped to this much of
/// the rate (but never below [`MIN_BURST_BYTES`] nor above [`MAX_BURST_BYTES`]).
pub const MAX_BURST_TIME: Duration = Duration::from_millis(100);

/// The burst in bytes a bucket of `rate_bps` keeps for a requested `burst_bits`: the request,
/// bounded as tbf users bound it by hand — at least [`MIN_BURST_BYTES`], at most
/// [`MAX_BURST_TIME`] of the rate, capped at [`MAX_BURST_BYTES`]. containerd asks 2^32-1 bits
/// (512 MiB) for every `kubernetes.io/ingress-bandwidth` pod; kept as is, a 1 kbit/s pod could
/// take 512 MiB at full speed before its shaping began, and its queue could hold as much.
pub fn clamp_burst(rate_bps: u64, burst_bits: u64) -> u64 {
    let rate_bytes = u128::from(rate_bps / 8);
    let per_time = rate_bytes * MAX_BURST_TIME.as_millis() / 1000;
    let ceiling = u64::try_from(per_time)
        .unwrap_or(u64::MAX)
        .clamp(MIN_BURST_BYTES, MAX_BURST_BYTES);
    (burst_bits / 8).clamp(MIN_BURST_BYTES, ceiling)
}

/// A token bucket in bytes, shared by the workers serving one pod direction. Tokens may go
/// negative by one frame (a 64 KB GSO frame is never stuck behind a small burst); the next
/// frame then waits until the debt is paid back.
pub struct TokenBucket {
    rate_bytes_per_s: f64,
    burst_bytes: f64,
    state: Mutex<BucketState>,
}

impl TokenBucket {
    /// A bucket for `rate_bps` bits per second with `burst_bits` of burst, bounded by
    /// [`clamp_burst`]; `None` when the rate is 0 (unlimited).
    pub fn new(rate_bps: u64, burst_bits: u64) -> Option<Self> {
        if rate_bps == 0 {
            return None;
        }
        let burst = clamp_burst(rate_bps, burst_bits) as f64;
        Some(TokenBucket {
            rate_bytes_per_s: rate_bps as f64 / 8.0,
            burst_bytes: burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                last: Instant::now(),
            }),
        })
    }

    /// The burst in bytes, after [`clamp_burst`].
    pub fn burst_bytes(&self) -> usize {
        self.burst_bytes as usize
    }

    /// How many bytes a queue in front of this bucket may hold: the burst plus what the rate
    /// drains in [`SHAPED_LATENCY`] — frames that would wait longer are dropped instead of
    /// bloating the pod's round-trip time.
    pub fn queue_bytes(&self) -> usize {
        (self.burst_bytes + self.rate_bytes_per_s * SHAPED_LATENCY.as_secs_f64()) as usize
    }

    fn refill(&self, s: &mut BucketState, now: Instant) {
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.rate_bytes_per_s).min(self.burst_bytes);
        s.last = now;
    }

    /// Can a frame go now? If not, how long until it can.
    pub fn ready(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut s, now);
        if s.tokens >= 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(-s.tokens / self.rate_bytes_per_s))
        }
    }

    /// Charges a frame of `bytes` that went.
    pub fn charge(&self, bytes: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_mut_hands_out_exactly_the_named_slots() {
        let mut pool = SlotPool::new(8);
        for (i, s) in pool.many_mut(&[0, 3, 4, 7]).enumerate() {
            s.start = 100 + i;
        }
        let starts: Vec<usize> = (0..8).map(|i| pool.get(i).start).collect();
        assert_eq!(starts, [100, 0, 0, 101, 102, 0, 0, 103]);
        // Not ascending, or out of range: the walk stops there.
        assert_eq!(pool.many_mut(&[2, 2]).count(), 1);
        assert_eq!(pool.many_mut(&[5, 1]).count(), 1);
        assert_eq!(pool.many_mut(&[6, 8]).count(), 1);
        assert_eq!(pool.many_mut(&[]).count(), 0);
    }

    #[test]
    fn fifo_keeps_order_and_tail_drops() {
        let mut q = FifoQueue::new(2);
        assert_eq!(q.push(7, 100), Ok(()));
        assert_eq!(q.push(8, 100), Ok(()));
        assert_eq!(
            q.push(9, 100),
            Err(9),
            "the newest frame is the one dropped"
        );
        assert_eq!(q.bytes(), 200);
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(7), Some(8), None));
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn fifo_byte_limit_drops_but_never_starves_a_big_frame() {
        let mut q = FifoQueue::new(100);
        q.set_byte_limit(1000);
        assert_eq!(q.push(1, 65000), Ok(()), "an empty queue takes any frame");
        assert_eq!(q.push(2, 10), Err(2));
        q.pop();
        assert_eq!(q.push(3, 600), Ok(()));
        assert_eq!(q.push(4, 400), Ok(()));
        assert_eq!(q.push(5, 1), Err(5));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn pool_reuses_the_last_freed_slot() {
        let mut p = SlotPool::new(3);
        let a = p.take().unwrap();
        let b = p.take().unwrap();
        p.put(a);
        assert_eq!(p.take(), Some(a));
        p.put(b);
        p.put(a);
        assert_eq!(p.take(), Some(a));
        assert!(p.take().is_some());
        assert!(p.take().is_some());
        assert_eq!(p.take(), None);
    }

    #[test]
    fn bucket_allows_the_burst_then_paces_at_the_rate() {
        // 8 Mbit/s = 1 MB/s, burst 64 KiB.
        let b = TokenBucket::new(8_000_000, 0).unwrap();
        let t0 = Instant::now();
        assert!(b.ready(t0).is_ok());
        b.charge(65536 + 100_000);
        let wait = b.ready(t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 0.01,
            "{wait:?}: 100 kB at 1 MB/s"
        );
        assert!(b.ready(t0 + Duration::from_millis(101)).is_ok());
        assert!(TokenBucket::new(0, 100).is_none(), "rate 0 is unlimited");
        // 64 KiB burst + 25 ms at 1 MB/s.
        assert_eq!(b.queue_bytes(), 65536 + 25_000);
    }

    #[test]
    fn bursts_are_clamped_to_a_sane_byte_bound() {
        // containerd's burst for kubernetes.io/ingress-bandwidth: 2^32-1 bits.
        let huge = u64::from(u32::MAX);
        assert_eq!(clamp_burst(1000, huge), MIN_BURST_BYTES, "1 kbit/s: 64 KiB");
        assert_eq!(clamp_burst(1000, 8), MIN_BURST_BYTES, "never below 64 KiB");
        // 100 Mbit/s: at most 100 ms of the rate.
        assert_eq!(clamp_burst(100_000_000, huge), 1_250_000);
        assert_eq!(
            clamp_burst(100_000_000, 800_000),
            100_000,
            "a sane burst is kept"
        );
        assert_eq!(clamp_burst(100_000_000_000, huge), MAX_BURST_BYTES);
        assert_eq!(clamp_burst(u64::MAX, u64::MAX), MAX_BURST_BYTES);
        let b = TokenBucket::new(1000, huge).unwrap();
        assert_eq!(b.burst_bytes(), 65536);
        assert_eq!(
            b.queue_bytes(),
            65536 + 3,
            "the queue is bounded by the clamped burst"
        );
        let t0 = Instant::now();
        b.charge(65536 + 125);
        assert!(b.ready(t0).is_err(), "the burst is spent after 64 KiB");
    }

    #[test]
    fn pool_grows_to_its_limit_and_shrinks_back() {
        let mut p = SlotPool::new(2);
        assert_eq!(p.available(), 2);
        let a = p.take().unwrap();
        let b = p.take().unwrap();
        assert_eq!(p.take(), None, "the limit holds");
        p.set_limit(4);
        assert_eq!(p.allocated(), 2, "nothing is allocated before it is needed");
        assert_eq!(p.available(), 2);
        let c = p.take().unwrap();
        let d = p.take().unwrap();
        assert_eq!((c, d), (2, 3));
        assert_eq!(p.take(), None);
        p.get_mut(d).end = 7;
        // Lowering the limit frees the slots past it once they are back.
        p.set_limit(2);
        assert_eq!(p.allocated(), 4, "slots in use stay");
        p.put(c);
        assert_eq!(p.allocated(), 4, "slot 2 waits for slot 3");
        p.put(d);
        assert_eq!(p.allocated(), 2);
        assert_eq!(p.available(), 0);
        p.put(a);
        p.put(b);
        assert_eq!((p.allocated(), p.available()), (2, 2));
    }
}
