//! The send side of a worker: frames routed to a pod or the uplink wait in that link's fifo
//! queue until the worker flushes, then leave in batches, as far as the pod's ingress bucket
//! lets them; a pod's capture sees each frame as it leaves its queue.

use std::time::{Duration, Instant};

use crate::gso;
use crate::stack::{DropReason, PodPort};
use crate::sys::packet::MMSG_BATCH;
use crate::wire::{ethernet, VnetHdr};

use super::super::link::TxCtx;
use super::{Worker, UPLINK};

impl Worker {
    /// Queues slot `slot` on egress `dst` (a pod id or `UPLINK`); tail-drops when full.
    pub(super) fn enqueue(&mut self, dst: u64, slot: u32) {
        let w = self.index;
        let (queue, counters) = if dst == UPLINK {
            (&mut self.uplink_queue, &self.uplink_counters)
        } else {
            match self.router.pod_mut(dst) {
                Some(p) => (&mut p.io.queue, &p.counters),
                None => {
                    self.pool.put(slot);
                    return;
                }
            }
        };
        let s = self.pool.get(slot);
        match queue.push(slot, s.end - s.start) {
            Ok(()) => {
                if !queue.dirty {
                    queue.dirty = true;
                    self.dirty.push(dst);
                }
            }
            Err(slot) => {
                counters.dropped(w, DropReason::QdiscFull);
                self.pool.put(slot);
            }
        }
    }

    /// Writes the frame in `slot` to worker `t`'s queue of egress `dst` at once, after
    /// everything queued here (the flow's earlier frames leave first), to move its flow to
    /// that worker (`balance`); queues it here as usual if `dst` has no such queue.
    pub(super) fn steer(&mut self, dst: u64, slot: u32, t: usize) {
        self.flush();
        let w = self.index;
        let Worker {
            router,
            pool,
            uplink,
            uplink_counters,
            segment_gso,
            scratch,
            ..
        } = self;
        let mut tx = TxCtx::uplink(*segment_gso, scratch, uplink_counters, w);
        let sent = if dst == UPLINK {
            uplink.send_to_worker(t, pool, slot, &mut tx)
        } else if let Some(PodPort { io, counters, .. }) = router.pod_mut(dst) {
            tx.counters = counters;
            if let (Some(sink), true) = (&io.capture, io.link.has_worker_queue(t)) {
                let s = pool.get(slot);
                sink.record(&s.buf[s.start..s.end]);
            }
            io.link.send_to_worker(t, pool, slot, &mut tx)
        } else {
            pool.put(slot);
            Ok(())
        };
        if let Err(slot) = sent {
            self.enqueue(dst, slot);
        }
    }

    /// Writes out every queue with frames, as far as shaping allows.
    pub(super) fn flush(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut next_at: Option<Instant> = None;
        // Work on the list in place (draining never queues more), keeping what shaping
        // holds back at its front: the list keeps its capacity, so no allocation per batch.
        let mut pending = std::mem::take(&mut self.dirty);
        let mut kept = 0;
        for k in 0..pending.len() {
            let dst = pending[k];
            if let Some(wait) = self.drain_queue(dst, now) {
                pending[kept] = dst;
                kept += 1;
                let at = now + wait;
                next_at = Some(next_at.map_or(at, |n| n.min(at)));
            }
        }
        pending.truncate(kept);
        self.dirty = pending;
        if let Some(at) = next_at {
            self.throttle.arm(at);
        }
    }

    /// Hands queue `dst` to its link in batches; `Some(wait)` when shaping stopped it with
    /// frames left. Frames to a pod are copied to its capture as they leave the queue.
    pub(super) fn drain_queue(&mut self, dst: u64, now: Instant) -> Option<Duration> {
        let w = self.index;
        let Worker {
            router,
            pool,
            uplink,
            uplink_queue,
            uplink_counters,
            segment_gso,
            scratch,
            tx_batch,
            ..
        } = self;
        let mut tx = TxCtx::uplink(*segment_gso, scratch, uplink_counters, w);
        if dst == UPLINK {
            while let Some(slot) = uplink_queue.pop() {
                tx_batch.push(slot);
                if tx_batch.len() == MMSG_BATCH {
                    uplink.send(pool, tx_batch, &mut tx);
                }
            }
            uplink.send(pool, tx_batch, &mut tx);
            uplink_queue.dirty = false;
            return None;
        }
        let PodPort { io, counters, .. } = router.pod_mut(dst)?;
        tx.counters = counters;
        let mut held = None;
        while let Some(slot) = io.queue.front() {
            if let Some(bucket) = &io.ingress {
                if let Err(wait) = bucket.ready(now) {
                    held = Some(wait);
                    break;
                }
                // Charged as the segments it stands for, headers and all.
                let s = pool.get(slot);
                let vnet = VnetHdr::parse(&s.vnet);
                bucket.charge(gso::wire_len(
                    &vnet,
                    &s.buf[s.start..s.end],
                    ethernet::HEADER_LEN,
                ));
            }
            io.queue.pop();
            if let Some(sink) = &io.capture {
                let s = pool.get(slot);
                sink.record(&s.buf[s.start..s.end]);
            }
            tx_batch.push(slot);
            if tx_batch.len() == MMSG_BATCH {
                io.link.send(pool, tx_batch, &mut tx);
            }
        }
        io.link.send(pool, tx_batch, &mut tx);
        if let Some(wait) = held {
            counters.set_queued(w, io.queue.len());
            return Some(wait);
        }
        io.queue.dirty = false;
        counters.set_queued(w, 0);
        None
    }
}
