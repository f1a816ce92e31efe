//! Which network namespace a container has: `/proc/PID/ns/net` of its process, or the path
//! its bundle's `config.json` gives (`linux.namespaces[type=network].path`), preferring the
//! latter when both are the same namespace because a pinned path outlives the process.
//! A container that shares the host's network namespace is never attached.

use std::path::{Path, PathBuf};

use netstack_core::netns::same_netns;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::error::HookError;
use crate::state::OciState;

/// What the bundle's `config.json` says about the network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecNetns {
    /// No readable `config.json` (no bundle, or it is gone: podman's poststop).
    Unknown,
    /// The spec lists no network namespace: the container shares its runtime's.
    Shared,
    /// A new namespace made by the runtime; only the process knows it.
    New,
    /// An existing namespace at this path (Kubernetes runtimes pin one per pod).
    Path(PathBuf),
}

/// The parts of `config.json` the hook reads; everything else is ignored, and namespace
/// entries oci-spec cannot type are skipped rather than failing the whole spec.
#[derive(serde::Deserialize)]
struct SpecLinux {
    #[serde(default)]
    linux: Option<LinuxSection>,
}

#[derive(serde::Deserialize)]
struct LinuxSection {
    #[serde(default)]
    namespaces: Vec<serde_json::Value>,
}

impl SpecNetns {
    /// Reads `<bundle>/config.json`.
    pub fn read(bundle: Option<&Path>) -> Self {
        let Some(bytes) = bundle.and_then(|b| std::fs::read(b.join("config.json")).ok()) else {
            return SpecNetns::Unknown;
        };
        Self::parse(&bytes)
    }

    /// Parses the bytes of a `config.json`.
    pub fn parse(bytes: &[u8]) -> Self {
        let Ok(spec) = serde_json::from_slice::<SpecLinux>(bytes) else {
            return SpecNetns::Unknown;
        };
        let Some(linux) = spec.linux else {
            return SpecNetns::Shared;
        };
        let network = linux
            .namespaces
            .into_iter()
            .filter_map(|ns| serde_json::from_value::<LinuxNamespace>(ns).ok())
            .find(|ns| ns.typ() == LinuxNamespaceType::Network);
        match network {
            None => SpecNetns::Shared,
            Some(ns) => match ns.path() {
                Some(path) if !path.as_os_str().is_empty() => SpecNetns::Path(path.clone()),
                _ => SpecNetns::New,
            },
        }
    }
}

/// The network namespace to attach for the container of `state`, checked to exist and not
/// to be the host's.
pub fn container_netns(state: &OciState) -> Result<PathBuf, HookError> {
    let spec = SpecNetns::read(state.bundle.as_deref());
    if spec == SpecNetns::Shared {
        return Err(HookError::Netns(
            "the container shares the host network namespace (config.json has no network namespace): not attached".into(),
        ));
    }
    let path = match (state.pid, &spec) {
        (Some(pid), _) => {
            let proc_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if !proc_path.exists() {
                return Err(HookError::Netns(format!(
                    "container process {pid} is gone ({} does not exist)",
                    proc_path.display()
                )));
            }
            match &spec {
                SpecNetns::Path(pinned) if same_netns(pinned, &proc_path).unwrap_or(false) => {
                    pinned.clone()
                }
                _ => proc_path,
            }
        }
        (None, SpecNetns::Path(pinned)) => pinned.clone(),
        (None, _) => {
            return Err(HookError::Netns(
                "the state has no pid and config.json names no network namespace path".into(),
            ))
        }
    };
    if let Err(e) = std::fs::metadata(&path) {
        return Err(HookError::Netns(format!(
            "network namespace {}: {e}",
            path.display()
        )));
    }
    // The hook runs in the runtime's network namespace; PID 1's may be unreadable (a
    // sandboxed init), and then only the first comparison counts.
    let host = ["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .any(|h| same_netns(&path, Path::new(h)).unwrap_or(false));
    if host {
        return Err(HookError::Netns(format!(
            "{} is the host network namespace: not attached",
            path.display()
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_netns_kinds() {
        // (config.json, expected, what it covers)
        let table = [
            (
                r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"network"}]}}"#,
                SpecNetns::New,
                "runc spec default: a new netns",
            ),
            (
                r#"{"linux":{"namespaces":[{"type":"network","path":"/run/netns/cni-1"}]}}"#,
                SpecNetns::Path("/run/netns/cni-1".into()),
                "a pinned netns (CRI runtimes)",
            ),
            (
                r#"{"linux":{"namespaces":[{"type":"network","path":""}]}}"#,
                SpecNetns::New,
                "an empty path is a new netns",
            ),
            (
                r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#,
                SpecNetns::Shared,
                "no network entry: host network",
            ),
            (
                r#"{"linux":{"namespaces":[{"type":"someday"},{"type":"network","path":"/p"}]}}"#,
                SpecNetns::Path("/p".into()),
                "an unknown namespace type is skipped",
            ),
            (r#"{"process":{}}"#, SpecNetns::Shared, "no linux section"),
            ("{", SpecNetns::Unknown, "unreadable config"),
        ];
        for (json, want, what) in table {
            assert_eq!(SpecNetns::parse(json.as_bytes()), want, "{what}");
        }
    }

    #[test]
    fn missing_bundle_is_unknown() {
        assert_eq!(SpecNetns::read(None), SpecNetns::Unknown);
        assert_eq!(
            SpecNetns::read(Some(Path::new("/nonexistent/bundle"))),
            SpecNetns::Unknown
        );
    }

    fn state(json: &str) -> OciState {
        OciState::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_hooks_own_netns_is_refused() {
        // Our own process stands in for a container that shares the host netns.
        let s = state(&format!(r#"{{"id":"c1","pid":{}}}"#, std::process::id()));
        let err = container_netns(&s).unwrap_err();
        assert!(err.to_string().contains("host network namespace"), "{err}");
    }

    #[test]
    fn a_gone_process_is_an_error() {
        let s = state(r#"{"id":"c1","pid":2147483646}"#);
        let err = container_netns(&s).unwrap_err();
        assert!(err.to_string().contains("2147483646 is gone"), "{err}");
    }

    #[test]
    fn no_pid_and_no_pinned_path_is_an_error() {
        let err = container_netns(&state(r#"{"id":"c1"}"#)).unwrap_err();
        assert!(err.to_string().contains("no pid"), "{err}");
    }
}
