//! The node list: what netstackd knows about each node of the cluster (name, pod CIDRs,
//! internal addresses), parsed from a static file or converted from Kubernetes Node objects.
//!
//! A nodes file is JSON, either netstack's own short form
//!
//! ```json
//! { "nodes": [ { "name": "node-b", "podCIDRs": ["10.244.2.0/24"], "internalIPs": ["192.168.1.2"] } ] }
//! ```
//!
//! or a Kubernetes `NodeList` (what `kubectl get nodes -o json` prints), of which only
//! `metadata.name`, `spec.podCIDR(s)` and the `InternalIP` entries of `status.addresses` are read.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// One node as the route logic sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeInfo {
    /// The node's name (Kubernetes `metadata.name`).
    pub name: String,
    /// The pod CIDRs the node's pods get addresses from (host bits cleared).
    pub pod_cidrs: Vec<IpNet>,
    /// The node's internal addresses, in the order given; the first of a family is the
    /// next hop for the node's pod CIDR of that family.
    pub internal_ips: Vec<IpAddr>,
}

/// Why a node list was refused; names the entry concerned.
#[derive(Debug, thiserror::Error)]
pub enum NodeListError {
    /// Not JSON of either accepted shape.
    #[error("not a node list (expected {{\"nodes\": [...]}} or a Kubernetes NodeList): {0}")]
    Decode(#[from] serde_json::Error),
    /// A node without a name.
    #[error("node #{index} has no name")]
    NoName {
        /// Its position in the list.
        index: usize,
    },
    /// A pod CIDR or address that does not parse.
    #[error("node {node}: invalid {what} {value:?}")]
    Invalid {
        /// The node's name.
        node: String,
        /// `pod CIDR` or `address`.
        what: &'static str,
        /// The value as given.
        value: String,
    },
    /// The same name twice.
    #[error("node {0} is listed twice")]
    Duplicate(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ListFile {
    Short { nodes: Vec<ShortNode> },
    Kube { items: Vec<KubeNode> },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShortNode {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Vec<String>,
    #[serde(default, rename = "internalIPs")]
    internal_ips: Vec<String>,
}

/// The few fields of a Kubernetes Node that matter here.
#[derive(Deserialize, Default)]
struct KubeNode {
    #[serde(default)]
    metadata: KubeMeta,
    #[serde(default)]
    spec: KubeSpec,
    #[serde(default)]
    status: KubeStatus,
}

#[derive(Deserialize, Default)]
struct KubeMeta {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct KubeSpec {
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct KubeStatus {
    #[serde(default)]
    addresses: Option<Vec<KubeAddress>>,
}

#[derive(Deserialize)]
struct KubeAddress {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

/// Parses a nodes file (either shape, see the module comment). Every node needs a name; pod
/// CIDRs and addresses must parse; names must be unique. Nodes come back sorted by name.
pub fn parse_node_list(bytes: &[u8]) -> Result<Vec<NodeInfo>, NodeListError> {
    let raw: Vec<(Option<String>, Vec<String>, Vec<String>)> = match serde_json::from_slice(bytes)?
    {
        ListFile::Short { nodes } => nodes
            .into_iter()
            .map(|n| {
                (
                    Some(n.name).filter(|s| !s.is_empty()),
                    n.pod_cidrs,
                    n.internal_ips,
                )
            })
            .collect(),
        ListFile::Kube { items } => items.into_iter().map(kube_fields).collect(),
    };
    let mut nodes = Vec::with_capacity(raw.len());
    for (index, (name, cidrs, ips)) in raw.into_iter().enumerate() {
        let name = name.ok_or(NodeListError::NoName { index })?;
        nodes.push(node_info(name, &cidrs, &ips)?);
    }
    nodes.sort();
    if let Some(w) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(NodeListError::Duplicate(w[0].name.clone()));
    }
    Ok(nodes)
}

/// (name, pod CIDRs, internal IPs) of a Kubernetes Node: `spec.podCIDRs`, else
/// `spec.podCIDR`; the `InternalIP` addresses of `status.addresses`.
fn kube_fields(node: KubeNode) -> (Option<String>, Vec<String>, Vec<String>) {
    let cidrs = match (node.spec.pod_cidrs, node.spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => list,
        (_, Some(one)) => vec![one],
        _ => Vec::new(),
    };
    let ips = node
        .status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.kind == "InternalIP")
        .map(|a| a.address)
        .collect();
    (node.metadata.name.filter(|s| !s.is_empty()), cidrs, ips)
}

/// Builds a [`NodeInfo`] from text fields, checking each.
pub(crate) fn node_info(
    name: String,
    cidrs: &[String],
    ips: &[String],
) -> Result<NodeInfo, NodeListError> {
    let invalid = |what, value: &String| NodeListError::Invalid {
        node: name.clone(),
        what,
        value: value.clone(),
    };
    let pod_cidrs = cidrs
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| invalid("pod CIDR", c))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let internal_ips = ips
        .iter()
        .map(|a| a.parse::<IpAddr>().map_err(|_| invalid("address", a)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeInfo {
        name,
        pod_cidrs,
        internal_ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn short_form_parses_sorted_with_host_bits_cleared() {
        let list = parse_node_list(
            br#"{"nodes": [
                {"name": "b", "podCIDRs": ["10.244.2.7/24"], "internalIPs": ["192.168.1.2"]},
                {"name": "a", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"],
                 "internalIPs": ["192.168.1.1", "fd00::1"]}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            list,
            vec![
                NodeInfo {
                    name: "a".into(),
                    pod_cidrs: vec![net("10.244.1.0/24"), net("fd00:1::/64")],
                    internal_ips: vec![ip("192.168.1.1"), ip("fd00::1")],
                },
                NodeInfo {
                    name: "b".into(),
                    pod_cidrs: vec![net("10.244.2.0/24")],
                    internal_ips: vec![ip("192.168.1.2")],
                },
            ]
        );
    }

    /// A trimmed `kubectl get nodes -o json` of a two-node kind cluster.
    const KUBECTL_NODES: &str = r#"{
      "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
      "items": [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "kind-worker", "labels": {"kubernetes.io/os": "linux"}},
         "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
                  "providerID": "kind://docker/kind/kind-worker"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.3"},
                                  {"type": "Hostname", "address": "kind-worker"}]}},
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": "kind-control-plane"},
         "spec": {"podCIDR": "10.244.0.0/24",
                  "taints": [{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]},
         "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.9"},
                                  {"type": "InternalIP", "address": "172.18.0.2"}]}}
      ]
    }"#;

    #[test]
    fn kubectl_node_list_parses() {
        let list = parse_node_list(KUBECTL_NODES.as_bytes()).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "kind-control-plane");
        assert_eq!(
            list[0].pod_cidrs,
            vec![net("10.244.0.0/24")],
            "podCIDR alone"
        );
        assert_eq!(
            list[0].internal_ips,
            vec![ip("172.18.0.2")],
            "ExternalIP ignored"
        );
        assert_eq!(list[1].name, "kind-worker");
        assert_eq!(list[1].internal_ips, vec![ip("172.18.0.3")]);
    }

    #[test]
    fn a_node_without_cidr_or_address_is_kept_empty() {
        let list = parse_node_list(br#"{"items": [{"metadata": {"name": "new"}}]}"#).unwrap();
        assert!(list[0].pod_cidrs.is_empty());
        assert!(list[0].internal_ips.is_empty());
    }

    #[test]
    fn bad_lists_are_refused_naming_the_node() {
        // (input, expected text in the error)
        let cases: &[(&str, &str)] = &[
            ("{not json", "not a node list"),
            (r#"{"something": []}"#, "not a node list"),
            (
                r#"{"nodes": [{"podCIDRs": ["10.0.0.0/24"]}]}"#,
                "node #0 has no name",
            ),
            (
                r#"{"nodes": [{"name": "x", "podCIDRs": ["10.0.0.0/33"]}]}"#,
                "node x: invalid pod CIDR",
            ),
            (
                r#"{"nodes": [{"name": "y", "internalIPs": ["10.0.0"]}]}"#,
                "node y: invalid address",
            ),
            (
                r#"{"nodes": [{"name": "z"}, {"name": "z"}]}"#,
                "node z is listed twice",
            ),
        ];
        for (input, want) in cases {
            let err = parse_node_list(input.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }
}
