//! The dataplane child's seccomp allow-list: the system calls its workers and its supervisor
//! link make, nothing else, some only with the arguments it uses (`clone` for threads only,
//! `prctl` only to name a thread, `mmap`/`mprotect` never executable, `tgkill` only within its
//! own process). Anything outside it kills the dataplane process (and only it: the supervisor
//! sees the death and starts a new one with the same fds). `clone3` fails with ENOSYS instead,
//! so the C library falls back to `clone`, whose flags a filter can see.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The `clone` flags of a new thread, exactly as glibc's pthread_create passes them (strace:
/// its `clone3` call, and the `clone` it falls back to on ENOSYS), exit signal 0.
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// The calls the dataplane needs, found by tracing it under load (strace -f -c).
const ALLOWED: &[libc::c_long] = &[
    // frames and the supervisor socket
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmmsg,
    libc::SYS_sendmmsg,
    // TAP batches on the workers' rings (`--tap-io uring`), made and restricted to READV and
    // WRITEV before the lock-down: never io_uring_setup or io_uring_register.
    libc::SYS_io_uring_enter,
    libc::SYS_close,
    libc::SYS_fcntl,
    // waiting
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    // memory (`mmap` and `mprotect`: see `argument_rules`)
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    // threads (`clone`, `prctl` and `tgkill`: see `argument_rules`); `clone3` is allowed here
    // so that the second filter decides: ENOSYS
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, seccompiler::Error> {
    // Dword: the kernel reads these arguments as 32-bit ints (clone's flags: their low 32 bits).
    let condition = SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .map_err(seccompiler::Error::Backend)?;
    SeccompRule::new(vec![condition]).map_err(seccompiler::Error::Backend)
}

/// The calls allowed only with certain arguments. `own_pid` is the process the filter is for
/// (the kernel compares `tgkill`'s first argument with it).
fn argument_rules(own_pid: u32) -> Result<Vec<(i64, SeccompRule)>, seccompiler::Error> {
    let not_exec = || arg(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    Ok(vec![
        // pthread_create's clone after clone3 failed: a thread of this process, nothing else.
        (
            libc::SYS_clone,
            arg(0, SeccompCmpOp::Eq, THREAD_CLONE_FLAGS)?,
        ),
        // Rust names every thread it starts (the only prctl after lock-down, per strace).
        (
            libc::SYS_prctl,
            arg(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?,
        ),
        (libc::SYS_mmap, not_exec()?),
        (libc::SYS_mprotect, not_exec()?),
        // abort() signals its own thread; no other process can be reached.
        (
            libc::SYS_tgkill,
            arg(0, SeccompCmpOp::Eq, u64::from(own_pid))?,
        ),
    ])
}

/// Builds the allow-list filter for process `own_pid` on this architecture: anything else
/// kills the process.
pub fn filter(own_pid: u32) -> Result<BpfProgram, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|nr| (*nr, Vec::new())).collect();
    for (nr, rule) in argument_rules(own_pid)? {
        rules.entry(nr).or_default().push(rule);
    }
    SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch(),
    )?
    .try_into()
    .map_err(seccompiler::Error::Backend)
}

/// The second filter: `clone3` fails with ENOSYS (a filter cannot read its flags, which are
/// behind a pointer), everything else goes on to the allow-list. The kernel runs both filters
/// and takes the stricter answer.
pub fn clone3_filter() -> Result<BpfProgram, seccompiler::Error> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )?
    .try_into()
    .map_err(seccompiler::Error::Backend)
}

/// Sets no-new-privileges and installs both filters on every thread of this process (TSYNC),
/// and so on every thread it starts later.
pub fn install() -> Result<(), seccompiler::Error> {
    let allow = filter(std::process::id())?;
    let clone3 = clone3_filter()?;
    // The clone3 filter first: once the allow-list is in, `seccomp` itself is forbidden.
    seccompiler::apply_filter_all_threads(&clone3)?;
    seccompiler::apply_filter_all_threads(&allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_and_tgkill_is_tied_to_the_pid() {
        let a = filter(100).unwrap();
        let b = filter(200).unwrap();
        assert!(!a.is_empty() && !clone3_filter().unwrap().is_empty());
        // The same program but for the pid tgkill's first argument is compared with.
        assert_eq!(a.len(), b.len());
        let differing: Vec<_> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.k != y.k || x.code != y.code)
            .collect();
        assert_eq!(differing.len(), 1, "only the pid constant differs");
        assert_eq!((differing[0].0.k, differing[0].1.k), (100, 200));
    }
}
