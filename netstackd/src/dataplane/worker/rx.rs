//! The receive side of a worker: a batch from a pod's link or from the uplink into the
//! worker's slots, counted, copied to the pod's capture, charged to its egress bucket and
//! routed, then queued where each frame goes. A link that fails for good is forgotten.

use std::time::Instant;

use crate::gso;
use crate::stack::{DropReason, Verdict};
use crate::sys::tap::RxFrame;
use crate::wire::{ethernet, VnetHdr};

use super::super::balance;
use super::super::link::RxOutcome;
use super::{Worker, BATCH, POOL_WAIT, UPLINK};

impl Worker {
    /// Reads up to `BATCH` frames from pod queue `queue`, in batches as large as its link
    /// takes (one frame at a time for a shaped pod), and routes them.
    pub(super) fn drain_pod(&mut self, id: u64, queue: usize) {
        let w = self.index;
        let mut budget = BATCH;
        while budget > 0 {
            let Some(src) = self.router.pod(id) else {
                return;
            };
            // A shaped pod is read a frame at a time: its bucket is asked before each one.
            let want = match &src.io.egress {
                None => budget.min(src.io.link.rx_batch_max()),
                Some(bucket) => match bucket.ready(Instant::now()) {
                    Ok(()) => 1,
                    Err(wait) => {
                        self.throttle(id, queue, wait);
                        return;
                    }
                },
            };
            self.rx_batch.clear();
            while self.rx_batch.len() < want {
                match self.take_slot() {
                    Some(slot) => self.rx_batch.push(slot),
                    None => break,
                }
            }
            if self.rx_batch.is_empty() {
                self.throttle(id, queue, POOL_WAIT);
                return;
            }
            self.rx_batch.sort_unstable();
            let Worker {
                router,
                pool,
                rx_batch,
                rx_lens,
                ..
            } = self;
            let outcome = match router.pod_mut(id) {
                Some(pod) => pod.io.link.recv(queue, pool, rx_batch, rx_lens),
                None => RxOutcome::NoQueue,
            };
            let got = match outcome {
                RxOutcome::Frames(n) => n,
                RxOutcome::Refused => {
                    self.return_rx_slots(0);
                    if let Some(src) = self.router.pod(id) {
                        src.counters.dropped(w, DropReason::Malformed);
                    }
                    budget -= 1;
                    continue;
                }
                RxOutcome::Dead(e) => {
                    self.return_rx_slots(0);
                    self.forget_fd(id, queue, &e);
                    return;
                }
                RxOutcome::Stopped(e) => {
                    self.return_rx_slots(0);
                    self.stop_virtqueue(id, queue, e);
                    return;
                }
                RxOutcome::Empty | RxOutcome::NoQueue => {
                    self.return_rx_slots(0);
                    break;
                }
            };
            self.route_from_pod(id, got);
            if got < want {
                break;
            }
            budget -= got;
        }
        self.end_finished_capture(id);
    }

    /// Gives back the slots of `rx_batch` from position `from` on (those nothing was read into).
    pub(super) fn return_rx_slots(&mut self, from: usize) {
        for &slot in &self.rx_batch[from..] {
            self.pool.put(slot);
        }
        self.rx_batch.clear();
    }

    /// Counts, captures, shapes and routes the `got` frames just read from pod `id` into the
    /// first slots of `rx_batch`, with one look-up of the pod, then queues each where it goes.
    pub(super) fn route_from_pod(&mut self, id: u64, got: usize) {
        let w = self.index;
        let Worker {
            router,
            pool,
            rx_batch,
            rx_lens,
            routed,
            ..
        } = self;
        let Some(src) = router.pod(id) else {
            self.return_rx_slots(0);
            return;
        };
        src.counters.rx_call(w);
        for (&slot, &len) in rx_batch.iter().zip(rx_lens.iter()).take(got) {
            let n = match len {
                RxFrame::Whole(n) => n,
                RxFrame::Malformed | RxFrame::Oversize => {
                    let reason = match len {
                        RxFrame::Oversize => DropReason::Oversize,
                        _ => DropReason::Malformed,
                    };
                    src.counters.dropped(w, reason);
                    pool.put(slot);
                    continue;
                }
            };
            let s = pool.get_mut(slot);
            src.counters.rx(w, n);
            if let Some(sink) = &src.io.capture {
                sink.record(&s.buf[..n]);
            }
            let mut vnet = VnetHdr::parse(&s.vnet);
            if let Some(bucket) = &src.io.egress {
                bucket.charge(gso::wire_len(&vnet, &s.buf[..n], ethernet::HEADER_LEN));
            }
            if vnet.is_gso() {
                src.counters.rx_gso(w);
                if n > ethernet::HEADER_LEN + crate::wire::ipv4::MAX_LEN {
                    src.counters.rx_big(w);
                }
            }
            let verdict = router.from_pod(id, &mut vnet, &mut s.buf, n);
            vnet.emit(&mut s.vnet);
            match verdict {
                Verdict::ToPod { id: dst, len } => {
                    (s.start, s.end) = (0, len);
                    routed.push((slot, dst));
                }
                Verdict::ToUplink { len } => {
                    (s.start, s.end) = (ethernet::HEADER_LEN, len);
                    routed.push((slot, UPLINK));
                }
                Verdict::Reply { len, dropped } => {
                    if let Some(reason) = dropped {
                        src.counters.dropped(w, reason);
                    }
                    (s.start, s.end) = (0, len);
                    routed.push((slot, id));
                }
                Verdict::Consumed => pool.put(slot),
                Verdict::Drop(reason) => {
                    src.counters.dropped(w, reason);
                    pool.put(slot);
                }
            }
        }
        self.return_rx_slots(got);
        let mut routed = std::mem::take(&mut self.routed);
        let steerable =
            self.balance.is_some() && self.router.pod(id).is_some_and(|p| p.io.link.steerable());
        for &(slot, dst) in &routed {
            match self.balance_frame(slot, dst, steerable) {
                Some(t) => self.steer(dst, slot, t),
                None => self.enqueue(dst, slot),
            }
        }
        routed.clear();
        self.routed = routed;
    }

    /// Counts the flow of the frame in `slot`, routed to egress `dst`, for flow balancing
    /// (`balance`; `src_steerable`: it came from a TAP or the uplink); `Some(worker)` when
    /// that flow is being moved to another worker that has a queue of `dst`, where the frame
    /// is then written.
    fn balance_frame(&mut self, slot: u32, dst: u64, src_steerable: bool) -> Option<usize> {
        let b = self.balance.as_mut()?;
        let s = self.pool.get(slot);
        let key = balance::flow_key(s.buf.get(ethernet::HEADER_LEN..s.end)?)?;
        let dst_link = if dst == UPLINK {
            Some(&self.uplink)
        } else {
            // A shaped pod's frames wait for tokens in its queue here: not moved.
            self.router
                .pod(dst)
                .filter(|p| p.io.ingress.is_none())
                .map(|p| &p.io.link)
        };
        let dst_link = dst_link.filter(|l| l.steerable());
        b.note(key, src_steerable && dst_link.is_some());
        let t = b.target(key).filter(|&t| t != self.index)?;
        dst_link?.has_worker_queue(t).then_some(t)
    }

    /// A free slot; drains the queues first when none is free. `None` means every slot waits
    /// in a shaped queue: the frame stays in the kernel's ring until the shaper lets go.
    pub(super) fn take_slot(&mut self) -> Option<u32> {
        if let Some(s) = self.pool.take() {
            return Some(s);
        }
        self.flush();
        self.pool.take()
    }

    /// Forgets a pod's capture once it is over, so the hot path is back to one branch.
    pub(super) fn end_finished_capture(&mut self, id: u64) {
        if let Some(pod) = self.router.pod_mut(id) {
            if pod.io.capture.as_ref().is_some_and(|c| c.is_closed()) {
                pod.io.capture = None;
            }
        }
    }

    /// Reads up to `BATCH` frames from the uplink and routes them to the pods.
    pub(super) fn drain_uplink(&mut self) {
        let w = self.index;
        for _ in 0..BATCH {
            let Some(slot) = self.take_slot() else {
                self.throttle(UPLINK, 0, POOL_WAIT);
                return;
            };
            let batch = std::slice::from_ref(&slot);
            let outcome = self
                .uplink
                .recv(0, &mut self.pool, batch, &mut self.rx_lens);
            let reason = match (outcome, self.rx_lens[0]) {
                (RxOutcome::Frames(_), RxFrame::Whole(n)) => {
                    self.route_from_uplink(slot, n);
                    continue;
                }
                (RxOutcome::Frames(_), RxFrame::Oversize) => DropReason::Oversize,
                (RxOutcome::Frames(_), RxFrame::Malformed) | (RxOutcome::Refused, _) => {
                    DropReason::Malformed
                }
                // The uplink is a TUN queue: no virtqueue to stop.
                (RxOutcome::Empty | RxOutcome::NoQueue | RxOutcome::Stopped(_), _) => {
                    self.pool.put(slot);
                    return;
                }
                (RxOutcome::Dead(e), _) => {
                    self.pool.put(slot);
                    self.forget_fd(UPLINK, 0, &e);
                    return;
                }
            };
            self.uplink_counters.dropped(w, reason);
            self.pool.put(slot);
        }
    }

    /// Counts and routes one packet of `n` bytes read from the uplink into `slot` (behind room
    /// for an Ethernet header).
    pub(super) fn route_from_uplink(&mut self, slot: u32, n: usize) {
        let w = self.index;
        let s = self.pool.get_mut(slot);
        self.uplink_counters.rx_call(w);
        self.uplink_counters.rx(w, n);
        let mut vnet = VnetHdr::parse(&s.vnet);
        if vnet.is_gso() {
            self.uplink_counters.rx_gso(w);
        }
        let verdict = self.router.from_uplink(&mut vnet, &mut s.buf, n);
        vnet.emit(&mut s.vnet);
        match verdict {
            Verdict::ToPod { id, len } => {
                (s.start, s.end) = (0, len);
                match self.balance_frame(slot, id, true) {
                    Some(t) => self.steer(id, slot, t),
                    None => self.enqueue(id, slot),
                }
            }
            Verdict::Drop(reason) => {
                self.uplink_counters.dropped(w, reason);
                self.pool.put(slot);
            }
            _ => {
                self.uplink_counters.dropped(w, DropReason::NoRoute);
                self.pool.put(slot);
            }
        }
    }
}
