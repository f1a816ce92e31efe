//! Bounding the hook's run time: the work runs on its own thread and the caller stops
//! waiting at the deadline. The process exits right after, which ends the abandoned thread.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why [`run_with_deadline`] has no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfinished {
    /// The limit passed first.
    TimedOut,
    /// The thread could not start, or panicked.
    Died(String),
}

/// Runs `work` on a new thread and returns its result, unless it has not finished within
/// `limit`.
pub fn run_with_deadline<T, F>(limit: Duration, work: F) -> Result<T, Unfinished>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("hook-work".into())
        .spawn(move || {
            // The receiver may have given up already; nothing to tell then.
            let _ = tx.send(work());
        })
        .map_err(|e| Unfinished::Died(format!("starting the work thread: {e}")))?;
    rx.recv_timeout(limit).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => Unfinished::TimedOut,
        mpsc::RecvTimeoutError::Disconnected => Unfinished::Died("the work thread panicked".into()),
    })
}

/// What is left of a time budget.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline `limit` from now.
    pub fn after(limit: Duration) -> Self {
        Deadline(Instant::now() + limit)
    }

    /// The time left, at least 1 ms (a zero socket timeout would mean "wait forever").
    pub fn remaining(&self) -> Duration {
        self.0
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_work_returns_its_result() {
        assert_eq!(run_with_deadline(Duration::from_secs(5), || 7), Ok(7));
    }

    #[test]
    fn slow_work_is_abandoned_at_the_deadline() {
        let start = Instant::now();
        let got = run_with_deadline(Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(5));
            7
        });
        assert_eq!(got, Err(Unfinished::TimedOut));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn panicking_work_is_reported_at_once() {
        let start = Instant::now();
        let got: Result<u8, _> = run_with_deadline(Duration::from_secs(5), || panic!("boom"));
        assert!(matches!(got, Err(Unfinished::Died(_))));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn remaining_never_reaches_zero() {
        let d = Deadline::after(Duration::ZERO);
        assert_eq!(d.remaining(), Duration::from_millis(1));
        assert!(Deadline::after(Duration::from_secs(60)).remaining() > Duration::from_secs(59));
    }
}
