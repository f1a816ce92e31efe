//! The CNI execution protocol, modelled on the Go `pkg/skel`: read `CNI_*` from the
//! environment and the config from stdin, run one command, print exactly one JSON object on
//! stdout, exit 0 on success and 1 on error.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::NetConf;
use crate::{CniError, SUPPORTED_VERSIONS};

/// The newest version we speak, used for errors when the request's version is unknown.
const LATEST: &str = "1.1.0";

/// The CNI commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment against `prevResult`.
    Check,
    /// Is the plugin ready to serve ADD (1.1.0)?
    Status,
    /// Release whatever is not in the valid attachments (1.1.0).
    Gc,
    /// Report supported versions.
    Version,
}

/// The `CNI_*` environment, validated for the command.
#[derive(Debug, Clone)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    pub container_id: String,
    /// `CNI_NETNS`; `None` when empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for STATUS and GC).
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

/// Keys of `CNI_ARGS` this plugin knows; others are an error unless `IgnoreUnknown=1`.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    // The interface's MAC (podman's CNI backend, `--mac-address`), as the bridge plugin.
    "MAC",
    // A static address (podman `--ip`) and gateway: host-local and static read them from the
    // same environment.
    "IP",
    "GATEWAY",
    // The pod's link mode (`crate::config::MODE_ARG`).
    "NETSTACK_MODE",
];

/// Parses `CNI_ARGS` (`K=V;K2=V2`).
pub fn parse_cni_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| CniError::InvalidEnv {
            var: "CNI_ARGS",
            reason: format!("{pair:?} is not KEY=VALUE"),
        })?;
        args.insert(k.to_owned(), v.to_owned());
    }
    let ignore_unknown = args
        .get("IgnoreUnknown")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
    if !ignore_unknown {
        if let Some(k) = args.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str())) {
            return Err(CniError::InvalidEnv {
                var: "CNI_ARGS",
                reason: format!("unknown key {k:?} (and no IgnoreUnknown=1)"),
            });
        }
    }
    Ok(args)
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &'static str) -> Result<String, CniError> {
    var(name).ok_or(CniError::InvalidEnv {
        var: name,
        reason: "not set".into(),
    })
}

impl CniEnv {
    /// Reads and validates the environment of a plugin invocation.
    pub fn from_env() -> Result<Self, CniError> {
        let command = match required("CNI_COMMAND")?.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::InvalidEnv {
                    var: "CNI_COMMAND",
                    reason: format!("unknown command {other:?}"),
                })
            }
        };
        if command == Command::Version {
            // Runtimes (podman) call VERSION with dummy values everywhere: ignore them all.
            return Ok(CniEnv {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: BTreeMap::new(),
                path: Vec::new(),
            });
        }
        let path: Vec<PathBuf> = required("CNI_PATH")?
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        if matches!(command, Command::Status | Command::Gc) {
            // No attachment parameters: these concern the whole network (SPEC.md §2).
            return Ok(CniEnv {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: BTreeMap::new(),
                path,
            });
        }
        let container_id = required("CNI_CONTAINERID")?;
        if !netstack_core::control::valid_container_id(&container_id) {
            return Err(CniError::InvalidEnv {
                var: "CNI_CONTAINERID",
                reason: format!("{container_id:?} does not match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            });
        }
        let netns = var("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && command != Command::Del {
            return Err(CniError::InvalidEnv {
                var: "CNI_NETNS",
                reason: "not set".into(),
            });
        }
        let ifname = required("CNI_IFNAME")?;
        if !netstack_core::control::valid_ifname(&ifname) {
            return Err(CniError::InvalidEnv {
                var: "CNI_IFNAME",
                reason: format!(
                    "{ifname:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)"
                ),
            });
        }
        let args = parse_cni_args(&var("CNI_ARGS").unwrap_or_default())?;
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// Reads `{"cniVersion": ...}` leniently, to answer errors in the caller's version.
fn requested_version(stdin: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<V>(stdin).ok()?.cni_version
}

fn version_reply(stdin: &[u8]) -> serde_json::Value {
    let version = requested_version(stdin).unwrap_or_else(|| LATEST.to_owned());
    serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

/// What carries out ADD, DEL, CHECK, STATUS and GC (the binary's dispatch): given the
/// environment, the config and stdin, it returns what to print on success.
pub type Commands = fn(&CniEnv, &NetConf, &[u8]) -> Result<Option<serde_json::Value>, CniError>;

/// Reads the environment and the config and runs one command (VERSION here, the others with
/// `commands`); returns what to print on success.
fn dispatch(stdin: &[u8], commands: Commands) -> Result<Option<serde_json::Value>, CniError> {
    let env = CniEnv::from_env()?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    if matches!(env.command, Command::Status | Command::Gc) && !conf.version_at_least((1, 1, 0)) {
        // As the Go skel: these commands exist from 1.1.0 on.
        return Err(CniError::IncompatibleVersion(format!(
            "{}: {:?} needs a config of version 1.1.0 or later",
            conf.cni_version, env.command
        )));
    }
    commands(&env, &conf, stdin)
}

/// What the plugin says of itself when a person runs it (no `CNI_COMMAND`), as the reference
/// plugins' skel does: its name, build, and the CNI versions it speaks.
pub fn about() -> String {
    format!(
        "CNI netstack plugin {}\nCNI protocol versions supported: {}",
        netstack_core::version::LONG,
        SUPPORTED_VERSIONS.join(", ")
    )
}

/// The plugin's entry point: the CNI protocol around `commands`.
pub fn run(commands: Commands) -> ExitCode {
    // Run by hand: say what this is at once instead of waiting on stdin.
    if std::env::var_os("CNI_COMMAND").is_none() {
        let arg = std::env::args().nth(1);
        if matches!(arg.as_deref(), Some("-V" | "--version")) {
            println!("netstack {}", netstack_core::version::LONG);
        } else {
            eprintln!("{}", about());
        }
        return ExitCode::SUCCESS;
    }
    let started = std::time::Instant::now();
    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::Io(format!("reading stdin: {e}")))
        .and_then(|_| dispatch(&stdin, commands));
    let (printed, code) = match &outcome {
        Ok(Some(value)) => (Some(value.clone()), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            let version = requested_version(&stdin)
                .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
                .unwrap_or_else(|| LATEST.to_owned());
            eprintln!("netstack: {e}");
            let object = serde_json::to_value(e.to_object(&version)).unwrap_or_default();
            (Some(object), ExitCode::FAILURE)
        }
    };
    if let Some(value) = &printed {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, value);
        let _ = writeln!(out);
    }
    log_outcome(&stdin, &outcome, printed.as_ref(), started.elapsed());
    code
}

/// One line in the conflist's `logFile`, if it names one (VERSION queries are not logged).
fn log_outcome(
    stdin: &[u8],
    outcome: &Result<Option<serde_json::Value>, CniError>,
    printed: Option<&serde_json::Value>,
    took: std::time::Duration,
) {
    let Some(settings) = crate::log::Settings::from_stdin(stdin) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let (command, container_id, ifname, netns, cni_args) = (
        var("CNI_COMMAND"),
        var("CNI_CONTAINERID"),
        var("CNI_IFNAME"),
        var("CNI_NETNS"),
        var("CNI_ARGS"),
    );
    if command == "VERSION" {
        return;
    }
    let ips = match outcome {
        Ok(Some(result)) => result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let record = crate::log::Record {
        command: &command,
        container_id: &container_id,
        ifname: &ifname,
        netns: &netns,
        cni_args: &cni_args,
        error: outcome.as_ref().err().map(|e| (e.code(), e.to_string())),
        ips,
        output: printed.map(|v| v.to_string()),
        took,
        steps: crate::steps::recorded(),
    };
    crate::log::write(&settings, &record);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_known_keys_parse() {
        let a = parse_cni_args("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0").unwrap();
        assert_eq!(a["K8S_POD_NAME"], "web-0");
    }

    #[test]
    fn cni_args_unknown_key_needs_ignore_unknown() {
        assert_eq!(parse_cni_args("FOO=bar").unwrap_err().code(), 4);
        let a = parse_cni_args("IgnoreUnknown=1;FOO=bar").unwrap();
        assert_eq!(a["FOO"], "bar");
    }

    #[test]
    fn cni_args_without_equals_is_invalid() {
        assert_eq!(parse_cni_args("K8S_POD_NAME").unwrap_err().code(), 4);
    }

    #[test]
    fn version_reply_echoes_the_requested_version() {
        let v = version_reply(br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_reply(b"")["cniVersion"], LATEST);
    }
}
