//! Folding a list-and-watch stream of nodes (what the Kubernetes watcher yields) into whole
//! node lists for the reconciler: one list per real change, and a relist (`Init` ..
//! `InitDone`, after a restart or a lost watch) replaces the known set in one step, so a
//! resync never removes and re-adds a route.

use std::collections::BTreeMap;

use super::NodeInfo;

/// One event of a list-and-watch stream (the shape of kube-runtime's `watcher::Event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A node was added or changed.
    Apply(NodeInfo),
    /// A node was deleted (by name).
    Delete(String),
    /// A (re)list starts; `InitApply` events follow until `InitDone`.
    Init,
    /// A node of the (re)list.
    InitApply(NodeInfo),
    /// The (re)list is complete: nodes not in it are gone.
    InitDone,
}

/// The known nodes, and a relist being gathered.
#[derive(Debug, Default)]
pub struct NodeFold {
    known: BTreeMap<String, NodeInfo>,
    relist: Option<BTreeMap<String, NodeInfo>>,
    listed_once: bool,
}

impl NodeFold {
    /// Takes one event; returns the whole node list when it changed. Nothing is returned
    /// before the first complete list, so a starting netstackd never acts on half a cluster.
    pub fn apply(&mut self, event: NodeEvent) -> Option<Vec<NodeInfo>> {
        let changed = match event {
            NodeEvent::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            NodeEvent::InitApply(node) => {
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(node.name.clone(), node);
                false
            }
            NodeEvent::InitDone => {
                let list = self.relist.take().unwrap_or_default();
                let first = !self.listed_once;
                self.listed_once = true;
                let changed = list != self.known;
                self.known = list;
                first || changed
            }
            NodeEvent::Apply(node) => {
                let changed = self.known.get(&node.name) != Some(&node);
                self.known.insert(node.name.clone(), node);
                changed
            }
            NodeEvent::Delete(name) => self.known.remove(&name).is_some(),
        };
        (changed && self.listed_once).then(|| self.known.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            internal_ips: vec!["192.168.0.1".parse().unwrap()],
        }
    }
    fn names(list: Option<Vec<NodeInfo>>) -> Option<Vec<String>> {
        list.map(|l| l.into_iter().map(|n| n.name).collect())
    }

    #[test]
    fn a_stream_yields_a_list_only_when_the_set_changes() {
        use NodeEvent::*;
        let a = node("a", "10.1.0.0/24");
        let b = node("b", "10.2.0.0/24");
        let b2 = node("b", "10.22.0.0/24");
        // (event, the list it yields, or None) in order: one table, one fold.
        let steps: Vec<(NodeEvent, Option<Vec<&str>>)> = vec![
            (Init, None),
            (InitApply(a.clone()), None),
            (InitApply(b.clone()), None),
            (InitDone, Some(vec!["a", "b"])),
            // A status-only update of a node (same fields for us) changes nothing.
            (Apply(b.clone()), None),
            (Apply(b2.clone()), Some(vec!["a", "b"])),
            (Delete("a".into()), Some(vec!["b"])),
            (Delete("a".into()), None),
            // A relist with the same content (watch expired, restarted): nothing to do.
            (Init, None),
            (InitApply(b2.clone()), None),
            (InitDone, None),
            // A relist that missed a deletion: the node is dropped in one step.
            (Apply(a.clone()), Some(vec!["a", "b"])),
            (Init, None),
            (InitApply(b2.clone()), None),
            (InitDone, Some(vec!["b"])),
        ];
        let mut fold = NodeFold::default();
        for (i, (event, want)) in steps.into_iter().enumerate() {
            let want = want.map(|v| v.into_iter().map(String::from).collect());
            assert_eq!(
                names(fold.apply(event.clone())),
                want,
                "step {i}: {event:?}"
            );
        }
    }

    #[test]
    fn nothing_before_the_first_complete_list_even_an_empty_one_counts() {
        let mut fold = NodeFold::default();
        assert_eq!(fold.apply(NodeEvent::Apply(node("a", "10.1.0.0/24"))), None);
        assert_eq!(fold.apply(NodeEvent::Init), None);
        assert_eq!(
            fold.apply(NodeEvent::InitDone),
            Some(vec![]),
            "an empty cluster is news"
        );
    }
}
