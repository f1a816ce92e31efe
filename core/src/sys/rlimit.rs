//! `RLIMIT_NOFILE`: how many descriptors this process may hold (every pod holds one TAP queue
//! per worker in the supervisor and again in the dataplane child), and raising its soft limit.

use std::io;

/// A resource limit: the soft value the kernel enforces and the hard ceiling for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The enforced limit.
    pub soft: u64,
    /// The most the soft limit may be raised to without `CAP_SYS_RESOURCE`.
    pub hard: u64,
}

/// The calling process's `RLIMIT_NOFILE`.
pub fn nofile() -> io::Result<Limit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` through the pointer, which points at a live,
    // properly aligned local for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Limit {
        soft: rl.rlim_cur,
        hard: rl.rlim_max,
    })
}

/// Sets the calling process's `RLIMIT_NOFILE` (children inherit it).
pub fn set_nofile(limit: Limit) -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: limit.soft,
        rlim_max: limit.hard,
    };
    // SAFETY: setrlimit only reads one `struct rlimit` through the pointer, a live local.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_reads_back_what_was_set() {
        let before = nofile().unwrap();
        assert!(before.soft <= before.hard);
        // Lowering the soft limit by one and restoring it needs no privilege (and leaves
        // other tests running beside this one their descriptors).
        let lower = Limit {
            soft: before.soft - 1,
            hard: before.hard,
        };
        set_nofile(lower).unwrap();
        assert_eq!(nofile().unwrap(), lower);
        set_nofile(before).unwrap();
        assert_eq!(nofile().unwrap(), before);
    }
}
