//! Process metrics read from `/proc`: CPU time, resident memory, open and allowed descriptors
//! and start time, for the supervisor (`/proc/self`, the standard `process_*` series) and the
//! dataplane child (`/proc/<pid>`, read by the supervisor). The parsers take the files' text so
//! unit tests feed them captured bytes.

use std::path::Path;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`: 100 in Linux's user ABI on the
/// architectures netstack runs on).
const USER_HZ: f64 = 100.0;

/// What `/proc/<pid>/stat` tells: CPU time and start time, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatTicks {
    /// User plus system CPU time.
    pub cpu_ticks: u64,
    /// When the process started, after boot.
    pub start_ticks: u64,
}

/// One process's figures, in the units the exposition uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Start time since the Unix epoch, in seconds (0 if `/proc/stat` had no `btime`).
    pub start_time_seconds: f64,
    /// Open descriptors (`None` where `/proc/<pid>/fd` could not be listed).
    pub open_fds: Option<u64>,
    /// The soft limit on descriptors (`None` for unlimited or unreadable).
    pub max_fds: Option<u64>,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) sits in parentheses and may hold
/// spaces or parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<StatTicks> {
    let rest = &text[text.rfind(')')? + 1..];
    // Fields from 3 (state) on: utime is field 14, stime 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatTicks {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        start_ticks: field(22)?,
    })
}

/// The `VmRSS:` line of `/proc/<pid>/status`, in bytes (a kernel thread has none).
pub fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft `Max open files` limit in `/proc/<pid>/limits` (`None` when unlimited).
pub fn parse_limits_nofile(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The `btime` line of `/proc/stat`: the boot time since the Unix epoch, in seconds.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads the figures of the process whose `/proc` directory is `dir` (`/proc/self`,
/// `/proc/<pid>`); `None` when it is gone.
pub fn read(dir: &Path) -> Option<ProcessStats> {
    let stat = parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
    let resident_bytes = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_status_rss(&s))
        .unwrap_or(0);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s));
    let open_fds = std::fs::read_dir(dir.join("fd"))
        .ok()
        .map(|d| d.filter(Result::is_ok).count() as u64);
    let max_fds = std::fs::read_to_string(dir.join("limits"))
        .ok()
        .and_then(|s| parse_limits_nofile(&s));
    Some(ProcessStats {
        cpu_seconds: stat.cpu_ticks as f64 / USER_HZ,
        resident_bytes,
        start_time_seconds: boot.map_or(0.0, |b| b as f64 + stat.start_ticks as f64 / USER_HZ),
        open_fds,
        max_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/stat` of a netstackd on a test machine, its name made awkward.
    const STAT: &str = "4242 (net stack) d) S 1 4242 4242 0 -1 4194560 1529 0 0 0 \
        250 75 0 0 20 0 3 0 123456 25165824 2048 18446744073709551615 1 1 0 0 0 0 0 4096 \
        16386 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_counts_fields_from_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Some(StatTicks {
                cpu_ticks: 325,
                start_ticks: 123456
            })
        );
    }

    #[test]
    fn truncated_or_garbled_stat_is_none() {
        // Table: (input, why it is refused).
        for (text, why) in [
            ("", "empty"),
            ("4242 net stack S 1", "no parenthesis"),
            ("4242 (x) S 1 2 3", "too few fields"),
            (
                "1 (x) S 1 1 1 0 -1 0 0 0 0 0 ten 5 0 0 20 0 1 0 9 0 0",
                "utime not a number",
            ),
        ] {
            assert_eq!(parse_stat(text), None, "{why}");
        }
    }

    #[test]
    fn status_rss_is_in_bytes() {
        let status = "Name:\tnetstackd\nVmPeak:\t   30000 kB\nVmRSS:\t    8192 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(8192 * 1024));
        // A kernel thread has no VmRSS line.
        assert_eq!(parse_status_rss("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn limits_give_the_soft_nofile_limit() {
        let limits =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max cpu time              unlimited            unlimited            seconds   \n\
            Max open files            65536                524288               files     \n";
        assert_eq!(parse_limits_nofile(limits), Some(65536));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_limits_nofile(unlimited), None);
    }

    #[test]
    fn boot_time_comes_from_btime() {
        let stat = "cpu  1 2 3 4\nintr 5\nbtime 1764950400\nprocesses 99\n";
        assert_eq!(parse_boot_time(stat), Some(1_764_950_400));
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }

    #[test]
    fn this_process_reads_plausibly() {
        let me = read(Path::new("/proc/self")).expect("/proc/self");
        assert!(me.resident_bytes > 0);
        assert!(me.open_fds.is_some_and(|n| n > 0));
        assert!(me.start_time_seconds > 1_000_000_000.0);
    }
}
