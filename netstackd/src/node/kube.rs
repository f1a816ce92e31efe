//! The Kubernetes node source (`--kube`), through kube-rs: the client is configured in-cluster
//! (the pod's service account) or from `KUBECONFIG`; this node's pod CIDR is read from its
//! Node object, and every Node is watched (list, then watch; relist after a lost watch, with
//! backoff) and folded into node lists for the reconciler. Once routes are in place the Node's
//! `NetworkUnavailable` condition is set to False ([`network_available_patch`]), as flannel,
//! Calico and Cilium do: until then a cloud's route controller (or a node bootstrapped with
//! the condition True) keeps ordinary pods off the node.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::health::NodeHealth;
use super::list::{node_info, NodeListError};
use super::sync::Msg;
use super::watch::{NodeEvent, NodeFold};
use super::NodeInfo;

/// Reads a Node's fields that matter here: `spec.podCIDRs` (else `spec.podCIDR`) and the
/// `InternalIP` addresses.
pub fn node_from_kube(node: &Node) -> Result<NodeInfo, NodeListError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(NodeListError::NoName { index: 0 });
    }
    let spec = node.spec.as_ref();
    let cidrs = match spec.and_then(|s| s.pod_cidrs.clone()) {
        Some(list) if !list.is_empty() => list,
        _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    let ips: Vec<String> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
                .collect()
        })
        .unwrap_or_default();
    node_info(name, &cidrs, &ips)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Kubernetes client's runtime")
}

/// This node's pod CIDRs from its Node object, waiting (up to `timeout`) for the controller
/// manager to assign them.
pub fn own_pod_cidrs(node_name: &str, timeout: Duration) -> anyhow::Result<Vec<IpNet>> {
    let rt = runtime()?;
    rt.block_on(async {
        let client = Client::try_default()
            .await
            .context("configuring the Kubernetes client (in-cluster, or KUBECONFIG)")?;
        let api: Api<Node> = Api::all(client);
        let start = Instant::now();
        let mut said = false;
        loop {
            match api.get(node_name).await {
                Ok(node) => {
                    let info = node_from_kube(&node)
                        .with_context(|| format!("reading Node {node_name}"))?;
                    if !info.pod_cidrs.is_empty() {
                        return Ok(info.pod_cidrs);
                    }
                    if !said {
                        tracing::info!(node = node_name, "waiting for the Node's spec.podCIDR");
                        said = true;
                    }
                }
                Err(e) if start.elapsed() < timeout => {
                    tracing::warn!(node = node_name, "reading the Node: {e}; retrying");
                }
                Err(e) => return Err(e).with_context(|| format!("reading Node {node_name}")),
            }
            if start.elapsed() >= timeout {
                bail!(
                    "Node {node_name} has no spec.podCIDR after {}s: is the controller manager \
                     run with --allocate-node-cidrs?",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

fn event(e: watcher::Event<Node>) -> Option<NodeEvent> {
    let info = |n: &Node| match node_from_kube(n) {
        Ok(info) => Some(info),
        Err(err) => {
            tracing::warn!("ignoring a Node: {err}");
            None
        }
    };
    Some(match e {
        watcher::Event::Apply(n) => NodeEvent::Apply(info(&n)?),
        watcher::Event::Delete(n) => NodeEvent::Delete(n.metadata.name?),
        watcher::Event::Init => NodeEvent::Init,
        watcher::Event::InitApply(n) => NodeEvent::InitApply(info(&n)?),
        watcher::Event::InitDone => NodeEvent::InitDone,
    })
}

/// The reason netstack gives on the Node's `NetworkUnavailable` condition.
pub const ROUTES_CREATED: &str = "NetstackRoutesCreated";

/// The strategic merge patch of a Node's status that sets its `NetworkUnavailable` condition
/// to False at `now` (RFC 3339); the other conditions are left alone (their merge key is
/// `type`).
pub fn network_available_patch(now: &str) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": ROUTES_CREATED,
                "message": "netstack's host-gw routes and pod network are set up on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

/// Waits until routes are in place, then patches the Node's `NetworkUnavailable` condition
/// to False; retried (every few seconds) until the API server takes it.
async fn report_network_available(client: Client, node_name: String, health: &NodeHealth) {
    let api: Api<Node> = Api::all(client);
    let mut said = String::new();
    loop {
        if health.routes_synced() {
            let now = k8s_openapi::chrono::Utc::now()
                .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
            let patch = Patch::Strategic(network_available_patch(&now));
            match api
                .patch_status(&node_name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        node = %node_name,
                        reason = ROUTES_CREATED,
                        "Node condition NetworkUnavailable set to False"
                    );
                    return;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != said {
                        tracing::warn!(
                            node = %node_name,
                            "setting the Node's NetworkUnavailable condition: {msg}; retrying"
                        );
                        said = msg;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Starts the thread that watches every Node and sends each changed node list to `tx`,
/// reports the watch's state to `health`, and sets this Node's `NetworkUnavailable` condition
/// once `health` says routes are in place.
pub fn spawn_watcher(
    tx: Sender<Msg>,
    node_name: String,
    health: &'static NodeHealth,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kube-nodes".into())
        .spawn(move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("node watcher: {e:#}");
                    return;
                }
            };
            rt.block_on(watch(tx, node_name, health));
        })
        .map(drop)
}

async fn watch(tx: Sender<Msg>, node_name: String, health: &'static NodeHealth) {
    let client = loop {
        match Client::try_default().await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!("node watcher: configuring the Kubernetes client: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tokio::spawn(report_network_available(client.clone(), node_name, health));
    let api: Api<Node> = Api::all(client);
    let mut fold = NodeFold::default();
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => {
                if matches!(e, watcher::Event::InitDone) {
                    health.set_source_connected(true);
                }
                if let Some(nodes) = event(e).and_then(|e| fold.apply(e)) {
                    tracing::info!(nodes = nodes.len(), "node list changed");
                    if tx.send(Msg::Nodes(nodes)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                health.set_source_connected(false);
                tracing::warn!("node watch: {e}; relisting");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_patch_sets_only_network_unavailable_to_false() {
        let patch = network_available_patch("2026-12-05T18:00:00Z");
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1, "the other conditions are kubelet's");
        let c = &conditions[0];
        assert_eq!(c["type"], "NetworkUnavailable");
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], ROUTES_CREATED);
        assert_eq!(c["lastTransitionTime"], "2026-12-05T18:00:00Z");
        // It is a valid Node status for the API's own types.
        let node: Node = serde_json::from_value(patch).unwrap();
        let status = node.status.unwrap().conditions.unwrap();
        assert_eq!(status[0].type_, "NetworkUnavailable");
    }

    #[test]
    fn a_kube_node_converts_like_a_node_list_item() {
        let node: Node = serde_json::from_str(
            r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "kind-worker"},
                "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
                "status": {"addresses": [{"type": "Hostname", "address": "kind-worker"},
                                         {"type": "InternalIP", "address": "172.18.0.3"},
                                         {"type": "InternalIP", "address": "fc00:f853:ccd:e793::3"}]}}"#,
        )
        .unwrap();
        let info = node_from_kube(&node).unwrap();
        assert_eq!(info.name, "kind-worker");
        assert_eq!(
            info.pod_cidrs,
            vec![
                "10.244.1.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap()
            ]
        );
        assert_eq!(
            info.internal_ips,
            vec![
                "172.18.0.3".parse::<std::net::IpAddr>().unwrap(),
                "fc00:f853:ccd:e793::3".parse().unwrap()
            ]
        );
        let bare: Node = serde_json::from_str(
            r#"{"metadata": {"name": "new"}, "spec": {"podCIDR": "10.2.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(
            node_from_kube(&bare).unwrap().pod_cidrs,
            vec!["10.2.0.0/24".parse::<IpNet>().unwrap()]
        );
        let unnamed: Node = serde_json::from_str(r#"{"metadata": {}}"#).unwrap();
        assert!(node_from_kube(&unnamed).is_err());
    }
}
