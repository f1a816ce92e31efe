//! The scheduler's time slice of a thread (`sched_setattr`, `SCHED_OTHER` with a
//! `sched_runtime`): under EEVDF (Linux 6.6+; the request is honoured since 6.12) a task that
//! asks for a shorter slice gets an earlier virtual deadline, so when it wakes it preempts the
//! task running on its CPU sooner — lower wakeup latency without a larger share of the CPU
//! (its weight, the nice value, is unchanged). Needs no privilege; threads created afterwards
//! inherit it. Older kernels accept and ignore the runtime of a `SCHED_OTHER` task.

use std::io;
use std::time::Duration;

/// The kernel's bounds on a requested slice (`sched_setattr` refuses others with EINVAL).
pub const SLICE_MIN: Duration = Duration::from_micros(100);
/// See [`SLICE_MIN`].
pub const SLICE_MAX: Duration = Duration::from_millis(100);

/// `struct sched_attr` as of Linux 5.3 (`SCHED_ATTR_SIZE_VER1`, 56 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

impl Default for SchedAttr {
    fn default() -> Self {
        SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: 0,
            flags: 0,
            nice: 0,
            priority: 0,
            runtime: 0,
            deadline: 0,
            period: 0,
            util_min: 0,
            util_max: 0,
        }
    }
}

/// Asks for a time slice of `slice` for the calling thread, keeping its policy `SCHED_OTHER`
/// and its nice value. `None` gives the thread the kernel's default slice back.
pub fn set_slice(slice: Option<Duration>) -> io::Result<()> {
    let runtime = match slice {
        Some(s) if !(SLICE_MIN..=SLICE_MAX).contains(&s) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a slice of {} µs is outside {}..={} µs",
                    s.as_micros(),
                    SLICE_MIN.as_micros(),
                    SLICE_MAX.as_micros()
                ),
            ));
        }
        Some(s) => s.as_nanos() as u64,
        None => 0,
    };
    // The nice value is set by the same call: the thread's own, read first (lowering it would
    // need CAP_SYS_NICE; `SCHED_FLAG_KEEP_PARAMS` would keep the old slice too).
    let attr = SchedAttr {
        policy: libc::SCHED_OTHER as u32,
        nice: attr_of(0)?.nice,
        runtime,
        ..SchedAttr::default()
    };
    // SAFETY: sched_setattr(2) only reads `size` bytes of the struct through the pointer, a live
    // local of exactly that size; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The slice the thread `tid` (0: the calling thread) runs with: the one it asked for, else the
/// kernel's default (0 on kernels before 6.12, which report none).
pub fn slice_of(tid: i32) -> io::Result<Duration> {
    Ok(Duration::from_nanos(attr_of(tid)?.runtime))
}

fn attr_of(tid: i32) -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = attr.size;
    // SAFETY: sched_getattr(2) writes at most `size` bytes into the struct through the pointer,
    // a live, aligned local of exactly that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_sets_its_slice_and_new_threads_inherit_it() {
        // In a thread of its own: the test harness's threads keep their slice.
        std::thread::spawn(|| {
            set_slice(Some(Duration::from_micros(150))).unwrap();
            assert_eq!(slice_of(0).unwrap(), Duration::from_micros(150));
            let child = std::thread::spawn(|| slice_of(0).unwrap()).join().unwrap();
            assert_eq!(child, Duration::from_micros(150));
            set_slice(None).unwrap();
            // The kernel reports its default slice then, not the one asked for before.
            assert_ne!(slice_of(0).unwrap(), Duration::from_micros(150));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn slices_outside_the_kernels_bounds_are_refused_before_the_call() {
        for bad in [Duration::from_micros(99), Duration::from_millis(101)] {
            let e = set_slice(Some(bad)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
