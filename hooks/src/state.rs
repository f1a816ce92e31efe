//! The OCI state a runtime writes on a hook's stdin (runtime-spec `runtime.md`, "State").
//!
//! Parsed leniently: `oci_spec::runtime::State` holds the status in a closed enum, and runtimes
//! send more than its four values (runc reports `paused`), so the status is kept as oci-spec's
//! `ContainerState` when it is one of those and as the raw string otherwise. Fields a runtime
//! adds (`rootfs`, `created`, `owner`) are ignored; a missing or zero `pid` (poststop) is `None`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::ContainerState;
use serde::Deserialize;

/// The container's status as the runtime reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// One of the runtime-spec's statuses.
    Known(ContainerState),
    /// A runtime-specific status (runc's `paused`), or an empty one.
    Other(String),
}

/// The state of one container, as given to a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciState {
    /// `ociVersion`.
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// `status`.
    pub status: Status,
    /// The container process as seen from the hook's pid namespace; `None` at poststop.
    pub pid: Option<u32>,
    /// The bundle directory (`config.json` lives there); `None` when empty.
    pub bundle: Option<PathBuf>,
    /// The container's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Why stdin is not a usable OCI state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Nothing (or only whitespace) on stdin.
    #[error("no OCI state on stdin")]
    Empty,
    /// Not the JSON of a state; `id` is the container id when it could still be read.
    #[error("malformed OCI state on stdin: {reason}")]
    Malformed {
        /// The `id` field, when the input was a JSON object that had one.
        id: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

impl StateError {
    /// The container id the input named, if any.
    pub fn container_id(&self) -> Option<&str> {
        match self {
            StateError::Empty => None,
            StateError::Malformed { id, .. } => id.as_deref(),
        }
    }
}

/// The wire form: every field but `id` optional, statuses as strings.
#[derive(Deserialize)]
struct RawState {
    #[serde(rename = "ociVersion", default)]
    oci_version: String,
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: Option<i64>,
    #[serde(default)]
    bundle: Option<PathBuf>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl OciState {
    /// Parses the bytes a runtime wrote on stdin.
    pub fn parse(input: &[u8]) -> Result<Self, StateError> {
        if input.iter().all(u8::is_ascii_whitespace) {
            return Err(StateError::Empty);
        }
        let raw: RawState = serde_json::from_slice(input).map_err(|e| StateError::Malformed {
            id: id_of(input),
            reason: e.to_string(),
        })?;
        let malformed = |reason: String| StateError::Malformed {
            id: Some(raw.id.clone()).filter(|id| !id.is_empty()),
            reason,
        };
        if raw.id.is_empty() {
            return Err(malformed("\"id\" is empty".into()));
        }
        let pid = match raw.pid {
            None | Some(0) => None,
            Some(p) => Some(
                u32::try_from(p)
                    .ok()
                    .filter(|p| i32::try_from(*p).is_ok())
                    .ok_or_else(|| malformed(format!("\"pid\" {p} is not a process id")))?,
            ),
        };
        let status = match serde_json::from_value::<ContainerState>(serde_json::json!(&raw.status))
        {
            Ok(known) => Status::Known(known),
            Err(_) => Status::Other(raw.status.clone()),
        };
        Ok(OciState {
            oci_version: raw.oci_version,
            id: raw.id,
            status,
            pid,
            bundle: raw.bundle.filter(|b| !b.as_os_str().is_empty()),
            annotations: raw.annotations.unwrap_or_default(),
        })
    }

    /// The annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// The `id` of a JSON object that failed to parse as a state, to name it in the error: from
/// the parsed object, or, for input that is not even JSON (truncated by a dying runtime), from
/// the first `"id": "..."` in the text.
fn id_of(input: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) {
        return value
            .get("id")?
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
    }
    let text = String::from_utf8_lossy(input);
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("\"id\"") {
        rest = &rest[at + 4..];
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let Some(value) = value.trim_start().strip_prefix('"') else {
            continue;
        };
        let id: String = value
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
            .take(1024)
            .collect();
        if !id.is_empty() {
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on this project's Debian 12 VM, byte for byte (see fixtures/state/README.md).
    const RUNC_CREATE_RUNTIME: &str = include_str!("../fixtures/state/runc-createRuntime.json");
    const RUNC_PRESTART: &str = include_str!("../fixtures/state/runc-prestart.json");
    const RUNC_POSTSTOP: &str = include_str!("../fixtures/state/runc-poststop.json");
    const RUNC_PAUSED: &str = include_str!("../fixtures/state/runc-state-paused.json");
    const PODMAN_CREATE_RUNTIME: &str = include_str!("../fixtures/state/podman-createRuntime.json");
    const PODMAN_POSTSTOP: &str = include_str!("../fixtures/state/podman-poststop.json");
    const CONTAINERD_SANDBOX: &str =
        include_str!("../fixtures/state/containerd-sandbox-createRuntime.json");
    const CRIO_SANDBOX: &str = include_str!("../fixtures/state/crio-sandbox-createRuntime.json");

    #[test]
    fn a_truncated_state_is_still_named_by_its_id() {
        assert_eq!(
            id_of(br#"{"ociVersion":"1.0.2","id":"ctr-1","status":"creat"#).as_deref(),
            Some("ctr-1")
        );
        assert_eq!(
            id_of(br#"{"id" : "a.b_c-9", "pid": 1"#).as_deref(),
            Some("a.b_c-9")
        );
        assert_eq!(id_of(br#"{"pid": 12, "bundle": "/x""#), None);
        assert_eq!(id_of(br#"{"id": 5, "#), None);
    }

    const PODMAN_ID: &str = "fe717215387631c310d59b6b3c2da5d023d98f5896c990581803f045f65f305d";

    fn parse(s: &str) -> OciState {
        OciState::parse(s.as_bytes()).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn runc_create_runtime_state_has_the_pid_and_bundle() {
        let s = parse(RUNC_CREATE_RUNTIME);
        assert_eq!(s.oci_version, "1.0.2-dev");
        assert_eq!(s.id, "hxtest");
        assert_eq!(s.status, Status::Known(ContainerState::Creating));
        assert_eq!(s.pid, Some(20255));
        assert_eq!(s.bundle, Some(PathBuf::from("/tmp/hx/bundle")));
        assert_eq!(s.annotation("netstack.io/attach"), Some("true"));
    }

    #[test]
    fn runc_prestart_state_is_the_create_runtime_state() {
        assert_eq!(parse(RUNC_PRESTART), parse(RUNC_CREATE_RUNTIME));
    }

    #[test]
    fn runc_poststop_state_has_no_pid() {
        let s = parse(RUNC_POSTSTOP);
        assert_eq!(s.status, Status::Known(ContainerState::Stopped));
        assert_eq!(s.pid, None);
        assert_eq!(s.id, "hxtest");
    }

    #[test]
    fn runc_paused_status_is_kept_not_rejected() {
        // oci-spec's State refuses this document; the hook must not.
        assert!(serde_json::from_str::<oci_spec::runtime::State>(RUNC_PAUSED).is_err());
        let s = parse(RUNC_PAUSED);
        assert_eq!(s.status, Status::Other("paused".into()));
        assert_eq!(s.pid, Some(23090));
        assert_eq!(s.id, "hxpause");
    }

    #[test]
    fn podman_create_runtime_state_carries_its_annotations() {
        let s = parse(PODMAN_CREATE_RUNTIME);
        assert_eq!(s.id, PODMAN_ID);
        assert_eq!(s.status, Status::Known(ContainerState::Creating));
        assert_eq!(s.pid, Some(20541));
        assert_eq!(s.annotation("io.container.manager"), Some("libpod"));
        assert_eq!(s.annotation("netstack.io/attach"), Some("true"));
        assert!(s.bundle.unwrap().ends_with("userdata"));
    }

    #[test]
    fn podman_poststop_state_has_no_pid_and_fewer_annotations() {
        let s = parse(PODMAN_POSTSTOP);
        assert_eq!(s.id, PODMAN_ID);
        assert_eq!(s.status, Status::Known(ContainerState::Stopped));
        assert_eq!(s.pid, None);
        assert_eq!(s.annotation("netstack.io/attach"), Some("true"));
        assert_eq!(s.annotation("io.container.manager"), None);
    }

    #[test]
    fn kubernetes_sandbox_states_carry_the_container_type() {
        let c = parse(CONTAINERD_SANDBOX);
        assert_eq!(
            c.annotation("io.kubernetes.cri.container-type"),
            Some("sandbox")
        );
        assert_eq!(c.pid, Some(41234));
        let o = parse(CRIO_SANDBOX);
        assert_eq!(
            o.annotation("io.kubernetes.cri-o.ContainerType"),
            Some("sandbox")
        );
    }

    #[test]
    fn bad_input_is_rejected_with_the_id_when_there_is_one() {
        // (input, expected error, what it covers)
        let table: &[(&str, StateError, &str)] = &[
            ("", StateError::Empty, "no stdin"),
            (" \n", StateError::Empty, "whitespace only"),
            ("{not json", malformed(None), "not JSON"),
            ("[1,2]", malformed(None), "not an object"),
            (r#"{"status":"creating"}"#, malformed(None), "no id"),
            (r#"{"id":""}"#, malformed(None), "empty id"),
            (
                r#"{"id":"c1","pid":"12"}"#,
                malformed(Some("c1")),
                "pid not a number",
            ),
            (
                r#"{"id":"c1","pid":-4}"#,
                malformed(Some("c1")),
                "negative pid",
            ),
            (
                r#"{"id":"c1","pid":4294967296}"#,
                malformed(Some("c1")),
                "pid too big",
            ),
            (
                r#"{"id":"c1","annotations":{"a":1}}"#,
                malformed(Some("c1")),
                "annotation not a string",
            ),
        ];
        for (input, want, what) in table {
            let got = OciState::parse(input.as_bytes()).unwrap_err();
            assert_eq!(got.container_id(), want.container_id(), "{what}");
            assert_eq!(
                std::mem::discriminant(&got),
                std::mem::discriminant(want),
                "{what}"
            );
        }
    }

    fn malformed(id: Option<&str>) -> StateError {
        StateError::Malformed {
            id: id.map(str::to_owned),
            reason: String::new(),
        }
    }

    #[test]
    fn minimal_state_gets_defaults() {
        let s = parse(r#"{"id":"c1","pid":0,"bundle":""}"#);
        assert_eq!(s.pid, None);
        assert_eq!(s.bundle, None);
        assert_eq!(s.status, Status::Other(String::new()));
        assert!(s.annotations.is_empty());
    }
}
