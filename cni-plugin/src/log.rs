//! The plugin's own log file (conflist keys `logFile` and `logLevel`, as Multus has): one line
//! per ADD, DEL, CHECK, STATUS and GC with the time, the container, the pod, the outcome and
//! how long it took (and each of its steps), so that an operator looking at a pod stuck in ContainerCreating finds what
//! the plugin did without the runtime's logs.
//!
//! Many plugin processes append at once (the runtime runs sandboxes in parallel): each line is
//! one `write` on an `O_APPEND` descriptor, under an exclusive `flock` that also guards the
//! rotation. The file never grows past [`MAX_BYTES`]: the line that would cross it first moves
//! the file to `<logFile>.1` (replacing the previous one), so the log holds at most twice that.
//! Logging never changes the command's outcome: a log that cannot be written is reported on
//! stderr and forgotten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Size at which the log is rotated.
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;

/// What is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Failed commands only.
    Error,
    /// Every command (the default).
    Info,
    /// Every command, with the netns, `CNI_ARGS` and the whole result or error.
    Debug,
}

impl Level {
    /// Parses `logLevel`.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }
}

/// The conflist's log settings, read leniently from stdin (a config the plugin refuses is
/// still logged, if these two keys can be read).
#[derive(Debug, Default, Deserialize)]
struct Keys {
    #[serde(default, rename = "logFile")]
    log_file: Option<PathBuf>,
    #[serde(default, rename = "logLevel")]
    log_level: Option<String>,
}

/// Where and how much to log, if at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The log file (absolute).
    pub file: PathBuf,
    /// How much.
    pub level: Level,
}

impl Settings {
    /// The settings in a config, `None` when `logFile` is absent, empty, relative, or the level
    /// unknown (the config parser reports those to the runtime as errors).
    pub fn from_stdin(stdin: &[u8]) -> Option<Settings> {
        let keys: Keys = serde_json::from_slice(stdin).ok()?;
        let file = keys.log_file.filter(|f| f.is_absolute())?;
        let level = match keys.log_level.as_deref() {
            None | Some("") => Level::Info,
            Some(l) => Level::parse(l)?,
        };
        Some(Settings { file, level })
    }
}

/// One command's record.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_NETNS` (debug only).
    pub netns: &'a str,
    /// `CNI_ARGS` (the pod's namespace and name come from it; the whole only at debug).
    pub cni_args: &'a str,
    /// `None` on success, else the CNI error code and message.
    pub error: Option<(u32, String)>,
    /// The addresses an ADD returned.
    pub ips: Vec<String>,
    /// The whole printed object (debug only).
    pub output: Option<String>,
    /// How long the command took.
    pub took: Duration,
    /// How long its steps took, in order (see [`crate::steps`]).
    pub steps: Vec<(&'static str, Duration)>,
}

/// `value` quoted when it holds a space, a quote or a control character, so that a line
/// stays one `key=value` per field for grep and awk.
fn field(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
    if plain {
        value.to_owned()
    } else {
        // JSON string quoting escapes exactly what would break the line.
        serde_json::Value::String(value.to_owned()).to_string()
    }
}

/// The `K8S_POD_NAMESPACE/K8S_POD_NAME` in `CNI_ARGS`, if both are there.
fn pod_of(cni_args: &str) -> Option<String> {
    let get = |key: &str| {
        cni_args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    Some(format!(
        "{}/{}",
        get("K8S_POD_NAMESPACE")?,
        get("K8S_POD_NAME")?
    ))
}

/// RFC 3339 UTC with milliseconds, from the civil-from-days computation (no time crate).
pub fn timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to year/month/day (proleptic Gregorian), era-based.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The line for `record` at `level`, or `None` when the level leaves it out.
pub fn line(record: &Record, level: Level, at: SystemTime) -> Option<String> {
    if record.error.is_none() && level < Level::Info {
        return None;
    }
    let mut out = format!("{} {}", timestamp(at), field(record.command));
    if !record.container_id.is_empty() {
        out += &format!(" container={}", field(record.container_id));
    }
    if !record.ifname.is_empty() {
        out += &format!(" ifname={}", field(record.ifname));
    }
    if let Some(pod) = pod_of(record.cni_args) {
        out += &format!(" pod={}", field(&pod));
    }
    match &record.error {
        None => out += " result=ok",
        Some((code, msg)) => out += &format!(" result=error code={code} msg={}", field(msg)),
    }
    if !record.ips.is_empty() {
        out += &format!(" ips={}", record.ips.join(","));
    }
    out += &format!(" took_ms={}", record.took.as_millis());
    if !record.steps.is_empty() {
        out += &format!(" steps={}", crate::steps::format(&record.steps));
    }
    if level >= Level::Debug {
        out += &format!(
            " netns={} args={}",
            field(record.netns),
            field(record.cni_args)
        );
        if let Some(output) = &record.output {
            out += &format!(" output={}", field(output));
        }
    }
    out.push('\n');
    Some(out)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Appends `text` to `path` under the log's lock, rotating first when it would pass
/// `max_bytes`.
pub fn append(path: &Path, text: &str, max_bytes: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = open_append(path)?;
    let mut locked = loop {
        let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        // Another process may have rotated the file while this one waited: the lock then
        // guards a file no longer at `path`, so take the one that is.
        let current = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let held = locked.metadata()?;
        if current == Some((held.dev(), held.ino())) {
            break locked;
        }
        file = open_append(path)?;
    };
    let size = locked.metadata()?.len();
    if size > 0 && size + text.len() as u64 > max_bytes {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        std::fs::rename(path, &rotated)?;
        let fresh = open_append(path)?;
        // The old lock goes with the rotated file; waiters see the inode change above.
        drop(locked);
        locked = nix::fcntl::Flock::lock(fresh, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))?;
    }
    locked.write_all(text.as_bytes())
}

/// Writes `record` to the configured log, if any; failures go to stderr only.
pub fn write(settings: &Settings, record: &Record) {
    let Some(text) = line(record, settings.level, SystemTime::now()) else {
        return;
    };
    if let Err(e) = append(&settings.file, &text, MAX_BYTES) {
        eprintln!("netstack: writing the log {}: {e}", settings.file.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            timestamp(at(1_796_471_999, 999)),
            "2026-12-05T11:59:59.999Z"
        );
    }

    #[test]
    fn settings_need_an_absolute_file_and_a_known_level() {
        let s = Settings::from_stdin(br#"{"logFile":"/var/log/netstack/cni.log"}"#).unwrap();
        assert_eq!(s.level, Level::Info);
        assert!(Settings::from_stdin(br#"{"logFile":"cni.log"}"#).is_none());
        assert!(Settings::from_stdin(br#"{"logFile":"/x","logLevel":"loud"}"#).is_none());
        assert!(Settings::from_stdin(br#"{"name":"n"}"#).is_none());
        assert!(Settings::from_stdin(b"not json").is_none());
        let d = Settings::from_stdin(br#"{"logFile":"/x","logLevel":"debug"}"#).unwrap();
        assert_eq!(d.level, Level::Debug);
    }

    #[test]
    fn a_line_names_the_pod_the_outcome_and_the_time_taken() {
        let rec = Record {
            command: "ADD",
            container_id: "abc",
            ifname: "eth0",
            netns: "/run/netns/x",
            cni_args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ips: vec!["10.244.1.2/24".into()],
            took: Duration::from_millis(35),
            ..Record::default()
        };
        assert_eq!(
            line(&rec, Level::Info, at(0, 0)).unwrap(),
            "1970-01-01T00:00:00.000Z ADD container=abc ifname=eth0 pod=default/web-0 result=ok ips=10.244.1.2/24 took_ms=35\n"
        );
        assert!(line(&rec, Level::Error, at(0, 0)).is_none());
        let stepped = Record {
            steps: vec![
                ("ipam", Duration::from_micros(3_210)),
                ("link", Duration::from_micros(25_080)),
            ],
            ..rec.clone()
        };
        assert!(line(&stepped, Level::Info, at(0, 0))
            .unwrap()
            .ends_with(" took_ms=35 steps=ipam:3.2,link:25.1\n"));
        let failed = Record {
            error: Some((11, "try again later: \"x\"\nnext".into())),
            ips: vec![],
            ..rec
        };
        let l = line(&failed, Level::Error, at(0, 0)).unwrap();
        assert!(
            l.contains(r#"result=error code=11 msg="try again later: \"x\"\nnext""#),
            "{l}"
        );
        assert_eq!(l.matches('\n').count(), 1, "one line: {l}");
        assert!(line(&failed, Level::Debug, at(0, 0))
            .unwrap()
            .contains(" netns=/run/netns/x args="));
    }

    #[test]
    fn the_log_rotates_at_its_size_and_keeps_one_old_file() {
        let dir = std::env::temp_dir().join(format!("netstack-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/cni.log");
        let text = "x".repeat(99) + "\n";
        for _ in 0..25 {
            append(&path, &text, 1000).unwrap();
        }
        let size = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("sub/cni.log.1")).unwrap().len();
        assert!(size <= 1000 && old <= 1000, "{size} {old}");
        assert_eq!((size + old) % 100, 0);
        assert_eq!(size, 500, "25 lines: 10 + 10 rotated away, 5 kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
