//! How long each step of a command took, for the log line (`steps=daemon:0.4,ipam:2.9,…`):
//! an operator with a slow ADD sees whether IPAM, the link's set-up or netstackd took the
//! time, without tracing the plugin.
//!
//! A plugin process runs one command on one thread (a netns step runs on a thread of its
//! own, but is timed from the caller), so the steps are kept in a process-wide list.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The steps timed so far, in order.
static STEPS: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// Runs `f`, recording how long it took as step `name`.
pub fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    record(name, started.elapsed());
    out
}

/// Records step `name` as having taken `took`.
pub fn record(name: &'static str, took: Duration) {
    STEPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((name, took));
}

/// The steps recorded so far, in order.
pub fn recorded() -> Vec<(&'static str, Duration)> {
    STEPS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `steps` as the log shows them: `name:ms` with a tenth of a millisecond, comma-separated.
pub fn format(steps: &[(&'static str, Duration)]) -> String {
    steps
        .iter()
        .map(|(name, took)| format!("{name}:{:.1}", took.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_format_as_name_and_milliseconds_in_order() {
        let steps = [
            ("daemon", Duration::from_micros(420)),
            ("ipam", Duration::from_micros(2_960)),
            ("link", Duration::from_millis(12)),
        ];
        assert_eq!(format(&steps), "daemon:0.4,ipam:3.0,link:12.0");
        assert_eq!(format(&[]), "");
    }

    #[test]
    fn timed_steps_are_recorded_in_order_with_their_value() {
        let v = timed("first", || 7);
        timed("second", || ());
        assert_eq!(v, 7);
        let names: Vec<_> = recorded().iter().map(|(n, _)| *n).collect();
        let first = names.iter().position(|n| *n == "first").unwrap();
        assert_eq!(names[first + 1], "second");
    }
}
