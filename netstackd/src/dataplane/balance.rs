//! Flow balancing between workers.
//!
//! The kernel puts each flow a pod sends on one of its TAP queues by the flow's hash, so with
//! a few busy flows and several workers one worker may carry more of them than another, and
//! each of its flows gets a smaller share of a CPU: with 10 flows on 2 workers, a split of
//! 7 to 3 gives a flow on the busy worker less than half of what one on the other gets. Which
//! queue a flow lands on is netstackd's to choose, though: tun keeps a table of flows (by
//! their symmetric hash) and sends a flow's frames to the queue its last frame the other way
//! was *written* to (`tun_flow_update` on a write, `tun_automq_select_queue` on the pod's
//! transmit). So a worker moves a flow to another worker by writing that flow's next frames,
//! both ways, to the other worker's queue of the destination: after one round trip the pod
//! and the peer send it there.
//!
//! Each worker counts the frames of every flow it forwards in windows of [`WINDOW`] (a fixed
//! table, no allocation, bounded probing: a pod that opens many flows fills it and is simply
//! not counted beyond). At the end of a window it publishes how many flows were active (at
//! least [`ACTIVE_FRAMES`] frames in it) and, when it has two or more active flows more than
//! the least busy worker, moves its busiest movable flow there for the next window (one per
//! window: a pod cannot make flows hop faster than that). A flow is movable when both its
//! ends are TAP pods or the uplink (a veth pod's flows stay where the packet socket fanout's
//! hash puts them). A worker that published nothing for a while is idle: no active flows.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a window of flow counts lasts, and how long a move's redirection lasts.
pub const WINDOW: Duration = Duration::from_millis(50);
/// Frames (both ways) in a window that make a flow active: about one frame per 1.5 ms, far
/// below what a bulk flow moves and above a keep-alive or a connection that only waits.
pub const ACTIVE_FRAMES: u32 = 32;
/// Flows one worker counts per window.
const TABLE: usize = 256;
/// Slots tried for a flow before it goes uncounted.
const PROBE: usize = 8;
/// A worker whose last count is older than this many windows counts as idle.
const STALE_WINDOWS: u64 = 3;

/// Flow balancing as the stats report it, per worker (empty: no balancing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceStats {
    /// Flows active in its last window (0 when it has been idle).
    pub active: Vec<u64>,
    /// Flows it moved to another worker.
    pub moves: Vec<u64>,
}

/// What every worker publishes, one cache line each.
#[repr(align(64))]
#[derive(Default)]
struct Published {
    /// Active flows in its last window.
    active: AtomicU32,
    /// When that window ended: ms since the shared start, plus one (0: never).
    at_ms: AtomicU64,
    /// Flows it moved to another worker.
    moves: AtomicU64,
}

/// The workers' published counts, shared by all of them and read by the stats.
pub struct Loads {
    start: Instant,
    workers: Box<[Published]>,
}

impl Loads {
    /// Counts for `n` workers.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Loads {
            start: Instant::now(),
            workers: (0..n).map(|_| Published::default()).collect(),
        })
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64 + 1
    }

    /// Worker `w`'s active flows as of `now`: 0 when its count is stale.
    fn active_at(&self, w: usize, now: Instant) -> u32 {
        let p = &self.workers[w];
        let at = p.at_ms.load(Relaxed);
        let stale = WINDOW.as_millis() as u64 * STALE_WINDOWS;
        if at == 0 || self.ms(now).saturating_sub(at) > stale {
            0
        } else {
            p.active.load(Relaxed)
        }
    }

    /// Active flows per worker, as of now.
    pub fn active(&self) -> Vec<u64> {
        let now = Instant::now();
        (0..self.workers.len())
            .map(|w| u64::from(self.active_at(w, now)))
            .collect()
    }

    /// Flows each worker moved to another.
    pub fn moves(&self) -> Vec<u64> {
        self.workers.iter().map(|p| p.moves.load(Relaxed)).collect()
    }
}

#[derive(Clone, Copy, Default)]
struct Entry {
    key: u64,
    epoch: u32,
    frames: u32,
    movable: bool,
}

/// A flow being moved: its frames go to `target`'s queues until `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Move {
    key: u64,
    target: usize,
    until: Instant,
}

/// One worker's flow counts and its current move.
pub struct Balancer {
    me: usize,
    loads: Arc<Loads>,
    window_start: Instant,
    epoch: u32,
    table: Box<[Entry; TABLE]>,
    moving: Option<Move>,
    now: Instant,
}

impl Balancer {
    /// Worker `me`'s balancer over `loads`.
    pub fn new(me: usize, loads: Arc<Loads>) -> Self {
        let now = Instant::now();
        Balancer {
            me,
            loads,
            window_start: now,
            epoch: 1,
            table: Box::new([Entry::default(); TABLE]),
            moving: None,
            now,
        }
    }

    /// Counts one frame of flow `key`; `movable`: both its ends can be steered.
    pub fn note(&mut self, key: u64, movable: bool) {
        let start = (key as usize) % TABLE;
        for i in 0..PROBE {
            let e = &mut self.table[(start + i) % TABLE];
            if e.epoch != self.epoch {
                *e = Entry {
                    key,
                    epoch: self.epoch,
                    frames: 1,
                    movable,
                };
                return;
            }
            if e.key == key {
                e.frames = e.frames.saturating_add(1);
                e.movable &= movable;
                return;
            }
        }
    }

    /// The worker whose queues frames of flow `key` go to instead of this one's, while it
    /// is being moved.
    pub fn target(&self, key: u64) -> Option<usize> {
        self.moving
            .filter(|m| m.key == key && self.now < m.until)
            .map(|m| m.target)
    }

    /// Called once per wakeup with the time: ends the window when it is over (publishes the
    /// count, may start a move). True when a move started.
    pub fn tick(&mut self, now: Instant) -> bool {
        self.now = now;
        if now.saturating_duration_since(self.window_start) < WINDOW {
            return false;
        }
        let mut active = 0u32;
        let mut busiest: Option<&Entry> = None;
        for e in self.table.iter().filter(|e| e.epoch == self.epoch) {
            if e.frames >= ACTIVE_FRAMES {
                active += 1;
                if e.movable && busiest.is_none_or(|b| e.frames > b.frames) {
                    busiest = Some(e);
                }
            }
        }
        let candidate = busiest.map(|e| e.key);
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.window_start = now;
        let loads = &self.loads;
        let least = (0..loads.workers.len())
            .filter(|&w| w != self.me)
            .map(|w| (loads.active_at(w, now), w))
            .min();
        let mine = &loads.workers[self.me];
        mine.at_ms.store(loads.ms(now), Relaxed);
        self.moving = None;
        match (least, candidate) {
            (Some((theirs, target)), Some(key)) if active >= theirs + 2 => {
                mine.active.store(active - 1, Relaxed);
                // Seen by the others before its next window: no two workers pick it for the
                // same free place (an idle one's count starts anew).
                let there = &loads.workers[target];
                there.active.store(theirs + 1, Relaxed);
                there.at_ms.store(loads.ms(now), Relaxed);
                mine.moves.fetch_add(1, Relaxed);
                self.moving = Some(Move {
                    key,
                    target,
                    until: now + WINDOW,
                });
                true
            }
            _ => {
                mine.active.store(active, Relaxed);
                false
            }
        }
    }
}

/// A symmetric key for the TCP or UDP flow of IP packet `l3` (the same both ways), or `None`
/// for anything else (other protocols, IPv4 fragments, IPv6 with extension headers, a packet
/// too short to hold its ports). Never 0.
pub fn flow_key(l3: &[u8]) -> Option<u64> {
    let (proto, a, b, ports) = match l3.first()? >> 4 {
        4 => {
            let ihl = usize::from(l3[0] & 0x0f) * 4;
            // More fragments, or an offset: only the first fragment has ports.
            let frag = u16::from_be_bytes([*l3.get(6)?, *l3.get(7)?]) & 0x3fff;
            if ihl < 20 || frag != 0 {
                return None;
            }
            let proto = *l3.get(9)?;
            let a = u64::from(u32::from_be_bytes(l3.get(12..16)?.try_into().ok()?));
            let b = u64::from(u32::from_be_bytes(l3.get(16..20)?.try_into().ok()?));
            (proto, a, b, l3.get(ihl..ihl + 4)?)
        }
        6 => {
            let proto = *l3.get(6)?;
            let fold = |r: &[u8]| {
                let x = u128::from_be_bytes(r.try_into().unwrap_or([0; 16]));
                (x as u64) ^ ((x >> 64) as u64).rotate_left(17)
            };
            (
                proto,
                fold(l3.get(8..24)?),
                fold(l3.get(24..40)?),
                l3.get(40..44)?,
            )
        }
        _ => return None,
    };
    if proto != 6 && proto != 17 {
        return None;
    }
    let pa = u64::from(u16::from_be_bytes([ports[0], ports[1]]));
    let pb = u64::from(u16::from_be_bytes([ports[2], ports[3]]));
    let (x, y) = ((a << 16) ^ pa, (b << 16) ^ pb);
    let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
    let mut h = u64::from(proto).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for v in [lo, hi] {
        h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    Some(h.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn a_flow_has_one_key_both_ways_and_others_have_none() {
        let there = ipv4(6, [10, 0, 0, 2], 40000, [10, 0, 0, 3], 5201);
        let back = ipv4(6, [10, 0, 0, 3], 5201, [10, 0, 0, 2], 40000);
        let other = ipv4(6, [10, 0, 0, 2], 40001, [10, 0, 0, 3], 5201);
        let udp = ipv4(17, [10, 0, 0, 2], 40000, [10, 0, 0, 3], 5201);
        assert_eq!(flow_key(&there), flow_key(&back));
        assert!(flow_key(&there).is_some());
        assert_ne!(flow_key(&there), flow_key(&other));
        assert_ne!(flow_key(&there), flow_key(&udp));
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[23] = 2;
        v6[39] = 3;
        v6[40..44].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        let mut v6_back = v6.clone();
        v6_back[23] = 3;
        v6_back[39] = 2;
        v6_back[40..44].copy_from_slice(&[0x14, 0x51, 0x9c, 0x40]);
        assert_eq!(flow_key(&v6), flow_key(&v6_back));
        // ICMP, a later fragment, a cut packet, garbage: no key.
        assert_eq!(flow_key(&ipv4(1, [1; 4], 0, [2; 4], 0)), None);
        let mut frag = there.clone();
        frag[7] = 8;
        assert_eq!(flow_key(&frag), None);
        assert_eq!(flow_key(&there[..22]), None);
        assert_eq!(flow_key(&[]), None);
        assert_eq!(flow_key(&[0x4f; 3]), None);
        let mut short_ihl = there.clone();
        short_ihl[0] = 0x41;
        assert_eq!(flow_key(&short_ihl), None);
    }

    /// Worker 0 of 2 sees `flows` flows of `frames` frames each in a window, then ends it.
    fn window(b: &mut Balancer, flows: u64, frames: u32, movable: bool, now: Instant) -> bool {
        for f in 1..=flows {
            for _ in 0..frames {
                b.note(f * 7919, movable);
            }
        }
        b.tick(now)
    }

    #[test]
    fn a_busy_worker_moves_one_flow_a_window_to_an_idle_one() {
        let loads = Loads::new(2);
        let mut b = Balancer::new(0, Arc::clone(&loads));
        let t0 = Instant::now();
        // Within the first window: nothing ends, nothing moves.
        assert!(!window(&mut b, 4, 100, true, t0));
        let t1 = t0 + WINDOW;
        assert!(window(&mut b, 4, 100, true, t1));
        let key = b.moving.unwrap().key;
        assert_eq!(b.target(key), Some(1));
        assert_eq!(b.target(key ^ 1), None);
        assert_eq!(loads.moves(), vec![1, 0]);
        // Published: 3 here, 1 there (the moved one, until worker 1 counts it).
        assert_eq!(loads.active_at(0, t1), 3);
        assert_eq!(loads.active_at(1, t1), 1);
        // The move lasts one window.
        b.now = t1 + WINDOW;
        assert_eq!(b.target(key), None);
        // Worker 1 now counts 2 of them: 2 against 2, no more moves.
        let mut other = Balancer::new(1, Arc::clone(&loads));
        other.window_start = t1;
        window(&mut other, 2, 100, true, t1 + WINDOW);
        assert!(!window(&mut b, 2, 100, true, t1 + WINDOW * 2));
        assert_eq!(loads.active(), vec![2, 2]);
    }

    #[test]
    fn nothing_moves_within_one_flow_of_balance_nor_when_nothing_is_movable_or_active() {
        let loads = Loads::new(2);
        let mut b = Balancer::new(0, Arc::clone(&loads));
        let t = Instant::now() + WINDOW;
        // One active flow against none: a difference of one.
        assert!(!window(&mut b, 1, 100, true, t));
        // Five flows of veth pods: not movable.
        assert!(!window(&mut b, 5, 100, false, t + WINDOW));
        assert_eq!(loads.active_at(0, t + WINDOW), 5);
        // Five flows that only trickle: not active.
        assert!(!window(&mut b, 5, ACTIVE_FRAMES - 1, true, t + WINDOW * 2));
        assert_eq!(loads.active_at(0, t + WINDOW * 2), 0);
        assert_eq!(loads.moves(), vec![0, 0]);
    }

    #[test]
    fn a_stale_count_is_an_idle_worker() {
        let loads = Loads::new(2);
        let t = Instant::now();
        loads.workers[1].active.store(9, Relaxed);
        loads.workers[1].at_ms.store(loads.ms(t), Relaxed);
        assert_eq!(loads.active_at(1, t), 9);
        assert_eq!(loads.active_at(1, t + WINDOW * 4), 0);
        let mut b = Balancer::new(0, Arc::clone(&loads));
        b.window_start = t;
        // Against 9 busy flows there, 4 here stay; once that count is stale, one moves.
        assert!(!window(&mut b, 4, 100, true, t + WINDOW));
        assert!(window(&mut b, 4, 100, true, t + WINDOW * 5));
    }

    #[test]
    fn a_flood_of_flows_fills_the_table_and_no_more() {
        let loads = Loads::new(2);
        let mut b = Balancer::new(0, loads);
        for k in 1..=100_000u64 {
            b.note(k, true);
        }
        let used = b.table.iter().filter(|e| e.epoch == b.epoch).count();
        assert_eq!(used, TABLE);
        // The next window starts empty.
        b.tick(Instant::now() + WINDOW);
        assert_eq!(b.table.iter().filter(|e| e.epoch == b.epoch).count(), 0);
    }
}
