//! What a container asks of netstack through its annotations, validated, and how Kubernetes
//! runtimes mark pod sandboxes.
//!
//! A container's role (sandbox, pod member, standalone) and its pod metadata are read only
//! from the annotations of the runtime that really runs it, which the hook's settings name
//! ([`Runtime`], `NETSTACK_HOOK_RUNTIME`): a container cannot carry another runtime's
//! annotations to pass for a sandbox, because those are never looked at.

use netstack_core::control::LinkMode;

use crate::error::HookError;
use crate::state::OciState;

/// `"true"` asks the hook to attach the container at createRuntime.
pub const ATTACH: &str = "netstack.io/attach";
/// The interface name inside the container (default `eth0`).
pub const IFNAME: &str = "netstack.io/ifname";
/// The interface MTU in bytes (default: the hook config's `mtu`).
pub const MTU: &str = "netstack.io/mtu";
/// The pod's egress rate in bits/s, with an optional k/M/G suffix (powers of 1000).
pub const EGRESS_RATE: &str = "netstack.io/egress-rate";
/// The link mode (`tap`, `veth`, `vhost-user`), overriding the hook config's `mode`; passed
/// to the plugin as `CNI_ARGS` `NETSTACK_MODE`.
pub const MODE: &str = "netstack.io/mode";

/// containerd's CRI plugin: `sandbox` or `container`.
pub const CONTAINERD_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O: `sandbox` or `container`.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";

/// The container runtime the hook runs under, which decides whose annotations count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Runtime {
    /// No Kubernetes runtime (plain runc, podman): every container is its own pod, and no
    /// CRI annotation is looked at.
    #[default]
    None,
    /// containerd's CRI plugin: `io.kubernetes.cri.*`.
    Containerd,
    /// CRI-O: `io.kubernetes.cri-o.ContainerType` and the kubelet's `io.kubernetes.pod.*`.
    CriO,
}

impl Runtime {
    /// Parses a `NETSTACK_HOOK_RUNTIME` value: `none`, `containerd` or `cri-o`.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "none" => Ok(Runtime::None),
            "containerd" => Ok(Runtime::Containerd),
            "cri-o" | "crio" => Ok(Runtime::CriO),
            other => Err(format!(
                "NETSTACK_HOOK_RUNTIME={other:?} is not one of none, containerd, cri-o"
            )),
        }
    }

    /// The annotation in which this runtime says `sandbox` or `container`.
    pub fn container_type_key(self) -> Option<&'static str> {
        match self {
            Runtime::None => None,
            Runtime::Containerd => Some(CONTAINERD_CONTAINER_TYPE),
            Runtime::CriO => Some(CRIO_CONTAINER_TYPE),
        }
    }

    /// (CNI_ARGS key, annotation) for the pod metadata this runtime puts on a sandbox.
    fn pod_keys(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Runtime::None => &[],
            Runtime::Containerd => &[
                ("K8S_POD_NAMESPACE", "io.kubernetes.cri.sandbox-namespace"),
                ("K8S_POD_NAME", "io.kubernetes.cri.sandbox-name"),
                ("K8S_POD_UID", "io.kubernetes.cri.sandbox-uid"),
            ],
            Runtime::CriO => &[
                ("K8S_POD_NAMESPACE", "io.kubernetes.pod.namespace"),
                ("K8S_POD_NAME", "io.kubernetes.pod.name"),
                ("K8S_POD_UID", "io.kubernetes.pod.uid"),
            ],
        }
    }
}

/// The interface name when the container names none.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The `CNI_ARGS` key that carries the egress rate into the attachment's labels.
pub const EGRESS_RATE_ARG: &str = "NETSTACK_EGRESS_RATE_BPS";

/// The MTU range the CNI plugin accepts (`netstack_cni::config::NetConf::parse`).
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65535;

/// What the container's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRequest {
    /// `netstack.io/attach` is `"true"`.
    pub attach: bool,
    /// The interface name inside the container.
    pub ifname: String,
    /// The interface MTU, overriding the hook config's.
    pub mtu_bytes: Option<u32>,
    /// The egress rate in bits/s.
    pub egress_rate_bps: Option<u64>,
    /// The link mode, overriding the hook config's.
    pub mode: Option<LinkMode>,
}

/// Where the container stands in Kubernetes' model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No CRI runtime made it (runc, podman): the container is its own pod.
    Standalone,
    /// A pod sandbox (its netns is the pod's).
    Sandbox,
    /// An application container of a pod: it shares the sandbox's netns; the hook leaves it
    /// alone.
    PodMember,
}

fn bad(key: &'static str, value: &str, reason: impl Into<String>) -> HookError {
    HookError::Annotation {
        key,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl NetRequest {
    /// Reads and validates the netstack annotations.
    pub fn from_state(state: &OciState) -> Result<Self, HookError> {
        let attach = match state.annotation(ATTACH) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(bad(ATTACH, other, "must be \"true\" or \"false\"")),
        };
        let ifname =
            match state.annotation(IFNAME) {
                None => DEFAULT_IFNAME.to_owned(),
                Some(name)
                    if netstack_core::control::valid_ifname(name)
                        && !name.contains(char::is_control) =>
                {
                    name.to_owned()
                }
                Some(name) => return Err(bad(
                    IFNAME,
                    name,
                    "not an interface name (1-15 bytes, no '/', ':', spaces or control characters)",
                )),
            };
        let mtu_bytes = match state.annotation(MTU) {
            None => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|m| MTU_RANGE.contains(m))
                    .ok_or_else(|| {
                        bad(
                            MTU,
                            v,
                            format!(
                                "must be an integer from {} to {}",
                                MTU_RANGE.start(),
                                MTU_RANGE.end()
                            ),
                        )
                    })?,
            ),
        };
        let egress_rate_bps = match state.annotation(EGRESS_RATE) {
            None => None,
            Some(v) => Some(parse_rate_bps(v).map_err(|reason| bad(EGRESS_RATE, v, reason))?),
        };
        let mode = match state.annotation(MODE) {
            None => None,
            Some(v) => Some(
                v.parse::<LinkMode>()
                    .map_err(|_| bad(MODE, v, "must be tap, veth or vhost-user"))?,
            ),
        };
        Ok(NetRequest {
            attach,
            ifname,
            mtu_bytes,
            egress_rate_bps,
            mode,
        })
    }
}

/// Parses a rate in bits/s: a positive integer, optionally followed by `k`, `M` or `G`
/// (×1000, ×1000², ×1000³), as `tc` and the CNI bandwidth plugin count.
pub fn parse_rate_bps(value: &str) -> Result<u64, String> {
    let (digits, scale) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1_000),
        Some(b'M') => (&value[..value.len() - 1], 1_000_000),
        Some(b'G') => (&value[..value.len() - 1], 1_000_000_000),
        _ => (value, 1),
    };
    let usage = "must be a positive integer of bits/s, optionally with a k, M or G suffix";
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(usage.into());
    }
    let n: u64 = digits.parse().map_err(|_| usage.to_owned())?;
    match n.checked_mul(scale) {
        Some(0) => Err(usage.into()),
        Some(bps) => Ok(bps),
        None => Err("too large".into()),
    }
}

/// The container's Kubernetes role, from the container-type annotation of `runtime` (the
/// runtime that runs it) and no other.
pub fn role(state: &OciState, runtime: Runtime) -> Role {
    match runtime
        .container_type_key()
        .and_then(|k| state.annotation(k))
    {
        None => Role::Standalone,
        Some("sandbox") => Role::Sandbox,
        Some(_) => Role::PodMember,
    }
}

/// The pod metadata `runtime` put on a sandbox, as the `K8S_POD_*` CNI_ARGS the plugin keeps
/// as attachment labels (containerd's `io.kubernetes.cri.sandbox-*`, or the kubelet's pod
/// labels that CRI-O copies), plus `K8S_POD_INFRA_CONTAINER_ID` for a sandbox. None without
/// a Kubernetes runtime. A value that cannot be a CNI_ARGS value and a label (a control
/// character, whitespace, `;` or `=`) is an error naming the annotation.
pub fn pod_args(
    state: &OciState,
    runtime: Runtime,
) -> Result<Vec<(&'static str, String)>, HookError> {
    let mut args = Vec::new();
    for (arg, key) in runtime.pod_keys() {
        if let Some(value) = state.annotation(key) {
            if !cni_arg_safe(value) {
                return Err(bad(
                    key,
                    value,
                    "not usable as a CNI_ARGS value and label (empty, or with a control character, whitespace, ';' or '=')",
                ));
            }
            args.push((*arg, value.to_owned()));
        }
    }
    if role(state, runtime) == Role::Sandbox {
        // The runtime's id, but it goes into CNI_ARGS all the same (found by fuzzing: an id
        // with ';' would have added keys of its own).
        if !cni_arg_safe(&state.id) {
            return Err(bad(
                "id",
                &state.id,
                "the container id is not usable as a CNI_ARGS value (a control character, whitespace, ';' or '=')",
            ));
        }
        args.push(("K8S_POD_INFRA_CONTAINER_ID", state.id.clone()));
    }
    Ok(args)
}

/// Whether `value` can sit in `CNI_ARGS` (`K=V;K=V`) unchanged and be a label.
fn cni_arg_safe(value: &str) -> bool {
    !value.is_empty()
        && !value.contains([';', '='])
        && !value.contains(|c: char| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(annotations: &[(&str, &str)]) -> OciState {
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        let json = serde_json::json!({"id": "c1", "annotations": map});
        OciState::parse(json.to_string().as_bytes()).unwrap()
    }

    /// Found by the hook_state fuzz target: a sandbox id went into CNI_ARGS unchecked.
    #[test]
    fn a_sandbox_id_that_cannot_be_a_cni_args_value_is_refused() {
        let json = serde_json::json!({"id": "abc;MAC=0a:00:00:00:00:01",
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"}});
        let s = OciState::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(role(&s, Runtime::Containerd), Role::Sandbox);
        assert!(pod_args(&s, Runtime::Containerd).is_err());
    }

    #[test]
    fn no_annotations_mean_no_attach_on_eth0() {
        let r = NetRequest::from_state(&state(&[])).unwrap();
        assert_eq!(
            r,
            NetRequest {
                attach: false,
                ifname: "eth0".into(),
                mtu_bytes: None,
                egress_rate_bps: None,
                mode: None,
            }
        );
    }

    #[test]
    fn all_annotations_are_honoured() {
        let r = NetRequest::from_state(&state(&[
            (ATTACH, "true"),
            (IFNAME, "net0"),
            (MTU, "1400"),
            (EGRESS_RATE, "10M"),
            (MODE, "vhost-user"),
        ]))
        .unwrap();
        assert!(r.attach);
        assert_eq!(r.ifname, "net0");
        assert_eq!(r.mtu_bytes, Some(1400));
        assert_eq!(r.egress_rate_bps, Some(10_000_000));
        assert_eq!(r.mode, Some(LinkMode::VhostUser));
    }

    #[test]
    fn bad_annotation_values_are_rejected_naming_the_key() {
        // (annotation, value, what it covers)
        let table = [
            (ATTACH, "yes", "attach is true or false"),
            (ATTACH, "True", "attach matches the hooks.d regex exactly"),
            (IFNAME, "this-is-too-long0", "16-byte interface name"),
            (IFNAME, "a/b", "slash in the name"),
            (IFNAME, "", "empty name"),
            (MTU, "abc", "mtu not a number"),
            (MTU, "70000", "mtu too big"),
            (MTU, "100", "mtu too small"),
            (MTU, "-1500", "negative mtu"),
            (EGRESS_RATE, "fast", "rate not a number"),
            (EGRESS_RATE, "0", "zero rate"),
            (EGRESS_RATE, "-5M", "negative rate"),
            (MODE, "macvlan", "unknown mode"),
            (MODE, "vhost_user", "mode with an underscore"),
        ];
        for (key, value, what) in table {
            match NetRequest::from_state(&state(&[(key, value)])) {
                Err(HookError::Annotation {
                    key: k, value: v, ..
                }) => {
                    assert_eq!((k, v.as_str()), (key, value), "{what}");
                }
                other => panic!("{what}: expected an annotation error, got {other:?}"),
            }
        }
    }

    #[test]
    fn rates_take_decimal_suffixes() {
        // (input, bits/s or None for an error)
        let table = [
            ("1", Some(1)),
            ("125000", Some(125_000)),
            ("500k", Some(500_000)),
            ("500K", Some(500_000)),
            ("10M", Some(10_000_000)),
            ("2G", Some(2_000_000_000)),
            ("0k", None),
            ("", None),
            ("M", None),
            ("1.5G", None),
            ("10m", None),
            ("10 M", None),
            ("+10", None),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("18446744073709551615G", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_rate_bps(input).ok(), want, "{input:?}");
        }
    }

    #[test]
    fn roles_come_from_the_running_runtime_only() {
        use Runtime::*;
        const CD: &str = CONTAINERD_CONTAINER_TYPE;
        const CRIO: &str = CRIO_CONTAINER_TYPE;
        // (runtime, annotations, expected role, what it covers)
        type Case = (
            Runtime,
            &'static [(&'static str, &'static str)],
            Role,
            &'static str,
        );
        let table: &[Case] = &[
            (None, &[], Role::Standalone, "runc, nothing"),
            (Containerd, &[], Role::Standalone, "containerd, no type"),
            (
                Containerd,
                &[(CD, "sandbox")],
                Role::Sandbox,
                "containerd sandbox",
            ),
            (
                Containerd,
                &[(CD, "container")],
                Role::PodMember,
                "containerd app",
            ),
            (CriO, &[(CRIO, "sandbox")], Role::Sandbox, "CRI-O sandbox"),
            (CriO, &[(CRIO, "container")], Role::PodMember, "CRI-O app"),
            (
                CriO,
                &[(CRIO, "container"), (CD, "sandbox")],
                Role::PodMember,
                "a CRI-O app container with a spoofed containerd sandbox annotation",
            ),
            (
                Containerd,
                &[(CD, "container"), (CRIO, "sandbox")],
                Role::PodMember,
                "a containerd app container with a spoofed CRI-O sandbox annotation",
            ),
            (
                CriO,
                &[(CD, "sandbox")],
                Role::Standalone,
                "only containerd's annotation under CRI-O",
            ),
            (
                None,
                &[(CD, "sandbox"), (CRIO, "sandbox")],
                Role::Standalone,
                "plain runc/podman: CRI annotations mean nothing",
            ),
        ];
        for (runtime, annotations, want, what) in table {
            assert_eq!(role(&state(annotations), *runtime), *want, "{what}");
        }
    }

    #[test]
    fn runtime_names_parse() {
        assert_eq!(Runtime::parse("none"), Ok(Runtime::None));
        assert_eq!(Runtime::parse("containerd"), Ok(Runtime::Containerd));
        assert_eq!(Runtime::parse("cri-o"), Ok(Runtime::CriO));
        assert_eq!(Runtime::parse("crio"), Ok(Runtime::CriO));
        assert!(Runtime::parse("docker").is_err());
        assert!(Runtime::parse("").is_err());
    }

    #[test]
    fn control_characters_in_pod_metadata_or_ifname_are_refused() {
        // (runtime, annotation, value, what it covers)
        let table = [
            (
                Runtime::Containerd,
                "io.kubernetes.cri.sandbox-name",
                "web\u{1b}[31m",
                "an escape sequence",
            ),
            (
                Runtime::Containerd,
                "io.kubernetes.cri.sandbox-namespace",
                "a\u{7}b",
                "a bell",
            ),
            (Runtime::CriO, "io.kubernetes.pod.name", "a\nb", "a newline"),
            (Runtime::CriO, "io.kubernetes.pod.uid", "a\u{0}b", "a NUL"),
            (
                Runtime::CriO,
                "io.kubernetes.pod.name",
                "a\u{85}b",
                "a C1 control",
            ),
            (
                Runtime::CriO,
                "io.kubernetes.pod.name",
                "a;b=c",
                "CNI_ARGS syntax",
            ),
            (Runtime::CriO, "io.kubernetes.pod.name", "", "empty"),
        ];
        for (runtime, key, value, what) in table {
            match pod_args(&state(&[(key, value)]), runtime) {
                Err(HookError::Annotation {
                    key: k, value: v, ..
                }) => {
                    assert_eq!((k, v.as_str()), (key, value), "{what}");
                }
                other => panic!("{what}: expected an annotation error, got {other:?}"),
            }
        }
        for name in ["et\u{1}h", "e\u{7f}th"] {
            assert!(
                matches!(
                    NetRequest::from_state(&state(&[(IFNAME, name)])),
                    Err(HookError::Annotation { key: IFNAME, .. })
                ),
                "{name:?}"
            );
        }
        // Without a Kubernetes runtime the pod annotations are not read, bad or not.
        assert_eq!(
            pod_args(
                &state(&[("io.kubernetes.pod.name", "a\u{1b}b")]),
                Runtime::None
            )
            .unwrap(),
            vec![]
        );
    }

    #[test]
    fn each_shipped_hooks_d_file_lets_only_its_runtimes_sandboxes_through() {
        // (file, its text, the runtime it is for)
        let files = [
            (
                "hooks.d/netstack.json",
                include_str!("../hooks.d/netstack.json"),
                Runtime::None,
            ),
            (
                "hooks.d/cri-o/netstack.json",
                include_str!("../hooks.d/cri-o/netstack.json"),
                Runtime::CriO,
            ),
            (
                "hooks.d/containerd/netstack.json",
                include_str!("../hooks.d/containerd/netstack.json"),
                Runtime::Containerd,
            ),
        ];
        for (file, text, want) in files {
            let doc: serde_json::Value = serde_json::from_str(text).unwrap();
            let runtime = doc["hook"]["env"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|e| e.as_str()?.strip_prefix("NETSTACK_HOOK_RUNTIME="))
                .map(|v| Runtime::parse(v).unwrap());
            assert_eq!(runtime, Some(want), "{file}: NETSTACK_HOOK_RUNTIME");
            let when = doc["when"]["annotations"].as_object().unwrap();
            assert_eq!(when["^netstack\\.io/attach$"], "^true$", "{file}");
            match want.container_type_key() {
                None => assert_eq!(when.len(), 1, "{file}: no sandbox filter"),
                Some(key) => {
                    let regex = format!("^{}$", key.replace('.', "\\."));
                    assert_eq!(
                        when.get(&regex).and_then(|v| v.as_str()),
                        Some("^sandbox$"),
                        "{file}: {regex}"
                    );
                    assert_eq!(when.len(), 2, "{file}");
                }
            }
        }
    }

    #[test]
    fn pod_metadata_becomes_k8s_args() {
        let containerd = OciState::parse(include_bytes!(
            "../fixtures/state/containerd-sandbox-createRuntime.json"
        ))
        .unwrap();
        let args = pod_args(&containerd, Runtime::Containerd).unwrap();
        assert_eq!(
            args,
            vec![
                ("K8S_POD_NAMESPACE", "default".to_owned()),
                ("K8S_POD_NAME", "web-0".to_owned()),
                (
                    "K8S_POD_UID",
                    "6a1f0c3e-2b4d-4e59-9a7c-1d2e3f4a5b6c".to_owned()
                ),
                ("K8S_POD_INFRA_CONTAINER_ID", containerd.id.clone()),
            ]
        );
        let crio = OciState::parse(include_bytes!(
            "../fixtures/state/crio-sandbox-createRuntime.json"
        ))
        .unwrap();
        assert_eq!(pod_args(&crio, Runtime::CriO).unwrap().len(), 4);
        // Each runtime's metadata is its own: containerd's sandbox read as CRI-O has none.
        assert_eq!(pod_args(&containerd, Runtime::CriO).unwrap(), vec![]);
        assert_eq!(pod_args(&crio, Runtime::Containerd).unwrap(), vec![]);
    }
}
