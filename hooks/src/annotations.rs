//! What a container asks of netstack through its annotations, validated, and how Kubernetes
//! runtimes mark pod sandboxes.

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

/// containerd's CRI plugin: `sandbox` or `container`.
pub const CONTAINERD_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI-O: `sandbox` or `container`.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";

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
        let ifname = match state.annotation(IFNAME) {
            None => DEFAULT_IFNAME.to_owned(),
            Some(name) if netstackd::daemon::valid_ifname(name) => name.to_owned(),
            Some(name) => {
                return Err(bad(
                    IFNAME,
                    name,
                    "not an interface name (1-15 bytes, no '/', ':' or spaces)",
                ))
            }
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
        Ok(NetRequest {
            attach,
            ifname,
            mtu_bytes,
            egress_rate_bps,
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

/// The container's Kubernetes role, from the CRI runtimes' container-type annotations.
pub fn role(state: &OciState) -> Role {
    let kind = state
        .annotation(CONTAINERD_CONTAINER_TYPE)
        .or_else(|| state.annotation(CRIO_CONTAINER_TYPE));
    match kind {
        None => Role::Standalone,
        Some("sandbox") => Role::Sandbox,
        Some(_) => Role::PodMember,
    }
}

/// The pod metadata a Kubernetes runtime put on a sandbox, as the `K8S_POD_*` CNI_ARGS the
/// plugin keeps as attachment labels (containerd's `io.kubernetes.cri.sandbox-*`, or the
/// kubelet's pod labels that CRI-O copies).
pub fn pod_args(state: &OciState) -> Vec<(&'static str, String)> {
    let sources: [(&'static str, [&str; 2]); 3] = [
        (
            "K8S_POD_NAMESPACE",
            [
                "io.kubernetes.cri.sandbox-namespace",
                "io.kubernetes.pod.namespace",
            ],
        ),
        (
            "K8S_POD_NAME",
            ["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"],
        ),
        (
            "K8S_POD_UID",
            ["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"],
        ),
    ];
    let mut args: Vec<(&'static str, String)> = sources
        .iter()
        .filter_map(|(arg, keys)| {
            keys.iter()
                .find_map(|k| state.annotation(k))
                .filter(|v| cni_arg_safe(v))
                .map(|v| (*arg, v.to_owned()))
        })
        .collect();
    if role(state) == Role::Sandbox {
        args.push(("K8S_POD_INFRA_CONTAINER_ID", state.id.clone()));
    }
    args
}

/// Whether `value` can sit in `CNI_ARGS` (`K=V;K=V`) unchanged.
fn cni_arg_safe(value: &str) -> bool {
    !value.is_empty() && !value.contains([';', '=']) && !value.contains(char::is_whitespace)
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

    #[test]
    fn no_annotations_mean_no_attach_on_eth0() {
        let r = NetRequest::from_state(&state(&[])).unwrap();
        assert_eq!(
            r,
            NetRequest {
                attach: false,
                ifname: "eth0".into(),
                mtu_bytes: None,
                egress_rate_bps: None
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
        ]))
        .unwrap();
        assert!(r.attach);
        assert_eq!(r.ifname, "net0");
        assert_eq!(r.mtu_bytes, Some(1400));
        assert_eq!(r.egress_rate_bps, Some(10_000_000));
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
    fn roles_follow_both_cri_runtimes() {
        assert_eq!(role(&state(&[])), Role::Standalone);
        assert_eq!(
            role(&state(&[(CONTAINERD_CONTAINER_TYPE, "sandbox")])),
            Role::Sandbox
        );
        assert_eq!(
            role(&state(&[(CRIO_CONTAINER_TYPE, "sandbox")])),
            Role::Sandbox
        );
        assert_eq!(
            role(&state(&[(CONTAINERD_CONTAINER_TYPE, "container")])),
            Role::PodMember
        );
        assert_eq!(
            role(&state(&[(CRIO_CONTAINER_TYPE, "container")])),
            Role::PodMember
        );
    }

    #[test]
    fn pod_metadata_becomes_k8s_args() {
        let containerd = OciState::parse(include_bytes!(
            "../fixtures/state/containerd-sandbox-createRuntime.json"
        ))
        .unwrap();
        let args = pod_args(&containerd);
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
        assert_eq!(pod_args(&crio).len(), 4);
        // Values that would break CNI_ARGS are left out.
        assert!(pod_args(&state(&[("io.kubernetes.pod.name", "a;b=c")])).is_empty());
    }
}
