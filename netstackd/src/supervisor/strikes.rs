//! Strikes against pods: each death of the dataplane while a pod's frames were in flight is
//! one; a pod reaching the limit within the window is to be quarantined.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Recent strikes per attachment id.
#[derive(Debug)]
pub struct Strikes {
    limit: usize,
    window: Duration,
    recent: HashMap<u64, VecDeque<Instant>>,
}

impl Strikes {
    /// `limit` strikes within `window` quarantine a pod.
    pub fn new(limit: usize, window: Duration) -> Self {
        Strikes {
            limit,
            window,
            recent: HashMap::new(),
        }
    }

    /// Counts a strike against `id` at `now`; returns its strikes within the window ending
    /// at `now` (at least 1). Strikes older than the window are forgotten.
    pub fn strike(&mut self, id: u64, now: Instant) -> usize {
        let list = self.recent.entry(id).or_default();
        while list
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            list.pop_front();
        }
        list.push_back(now);
        // Never more than the limit kept: a pod's memory stays bounded.
        while list.len() > self.limit.max(1) {
            list.pop_front();
        }
        list.len()
    }

    /// Is `count` strikes enough to quarantine?
    pub fn reached(&self, count: usize) -> bool {
        count >= self.limit
    }

    /// Forgets `id`'s strikes (it was quarantined, released or detached).
    pub fn forget(&mut self, id: u64) {
        self.recent.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn three_strikes_within_the_window_reach_the_limit() {
        let mut s = Strikes::new(3, W);
        let t = Instant::now();
        assert_eq!(s.strike(7, t), 1);
        assert_eq!(s.strike(7, t + Duration::from_secs(10)), 2);
        assert!(!s.reached(2));
        let n = s.strike(7, t + Duration::from_secs(59));
        assert_eq!(n, 3);
        assert!(s.reached(n));
    }

    #[test]
    fn strikes_older_than_the_window_do_not_count() {
        let mut s = Strikes::new(3, W);
        let t = Instant::now();
        s.strike(7, t);
        s.strike(7, t + Duration::from_secs(30));
        // The first one is 60 s old: out of the window.
        assert_eq!(s.strike(7, t + W), 2);
        assert_eq!(s.strike(7, t + Duration::from_secs(89)), 3);
    }

    #[test]
    fn pods_are_counted_apart_and_forgotten() {
        let mut s = Strikes::new(3, W);
        let t = Instant::now();
        s.strike(1, t);
        s.strike(1, t);
        assert_eq!(s.strike(2, t), 1);
        s.forget(1);
        assert_eq!(s.strike(1, t), 1);
    }

    #[test]
    fn memory_per_pod_is_bounded_by_the_limit() {
        let mut s = Strikes::new(3, W);
        let t = Instant::now();
        for _ in 0..100 {
            s.strike(1, t);
        }
        assert_eq!(s.strike(1, t), 3);
        assert_eq!(s.recent[&1].len(), 3);
    }
}
