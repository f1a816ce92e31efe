//! The receive queues a worker leaves alone for a while, and the timer that brings them
//! back: a pod whose egress bucket is empty, or any queue while every buffer waits in a shaped
//! queue. Epoll is level-triggered, so a readable fd the worker cannot serve must be taken out
//! of its interest set, or the worker would spin on it. The same timer wakes the worker when a
//! shaped queue has tokens again.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// A one-shot timer and the queues waiting for it.
pub(super) struct Throttle {
    timer: TimerFd,
    /// When the timer fires, if it is armed.
    at: Option<Instant>,
    /// Receive queues (link id, queue index) not read until the timer fires.
    waiting: Vec<(u64, usize)>,
}

impl Throttle {
    /// A disarmed timer with no queue waiting.
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
        )?;
        Ok(Throttle {
            timer,
            at: None,
            waiting: Vec::new(),
        })
    }

    /// The timer's fd, readable once it fires.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.timer.as_fd()
    }

    /// Wakes the worker at `at` at the latest (never sooner than 50 µs from now).
    pub fn arm(&mut self, at: Instant) {
        if self.at.is_some_and(|t| t <= at) {
            return;
        }
        let wait = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(50));
        if self
            .timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            )
            .is_ok()
        {
            self.at = Some(at);
        }
    }

    /// Queue `q` of link `id` waits `wait`; false when it already waits (nothing changes).
    pub fn hold(&mut self, id: u64, q: usize, wait: Duration) -> bool {
        if self.waiting.contains(&(id, q)) {
            return false;
        }
        self.waiting.push((id, q));
        self.arm(Instant::now() + wait);
        true
    }

    /// The timer fired: the queues that waited, to read again.
    pub fn fired(&mut self) -> Vec<(u64, usize)> {
        let _ = self.timer.wait();
        self.at = None;
        std::mem::take(&mut self.waiting)
    }

    /// Forgets queue `q` of link `id`.
    pub fn forget_queue(&mut self, id: u64, q: usize) {
        self.waiting.retain(|t| *t != (id, q));
    }

    /// Forgets every queue of link `id`.
    pub fn forget(&mut self, id: u64) {
        self.waiting.retain(|(t, _)| *t != id);
    }

    /// No queue waits.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Queue `q` of link `id` waits.
    #[cfg(test)]
    pub fn holds(&self, id: u64, q: usize) -> bool {
        self.waiting.contains(&(id, q))
    }
}
