//! Node mode's health, for readiness (`/readyz`): whether the node source is connected (the
//! Kubernetes watch has listed, or the nodes file has been read), whether the routes of the
//! latest node list are all in the kernel, and whether the masquerade rules are written.
//! The sources and the reconciler set these flags; the metrics listener reads them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Node mode's health flags (one set per netstackd; tests make their own).
#[derive(Debug, Default)]
pub struct NodeHealth {
    started: AtomicBool,
    has_source: AtomicBool,
    kube: AtomicBool,
    source_connected: AtomicBool,
    routes_synced: AtomicBool,
    masquerade_wanted: AtomicBool,
    masquerade_written: AtomicBool,
    routes_installed: AtomicU64,
    sync_errors: AtomicU64,
    last_sync_unix: AtomicU64,
}

/// Node mode's state as metrics show it (`netstack_node_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    /// Host-gw routes in the kernel as of the last sync that wrote them all.
    pub routes_installed: u64,
    /// Route or masquerade writes that failed, since start.
    pub sync_errors: u64,
    /// The node source is connected and has delivered a node list.
    pub watch_up: bool,
    /// Masquerade is wanted and written for every pod CIDR.
    pub masquerade_applied: bool,
    /// When a sync last left everything in place, since the Unix epoch (0: never).
    pub last_sync_unix: u64,
}

/// One check of [`NodeHealth::readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is checked (`node source`, `routes`, `masquerade`).
    pub what: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// Why, in a few words.
    pub detail: &'static str,
}

impl NodeHealth {
    /// A health with nothing started.
    pub const fn new() -> Self {
        NodeHealth {
            started: AtomicBool::new(false),
            has_source: AtomicBool::new(false),
            kube: AtomicBool::new(false),
            source_connected: AtomicBool::new(false),
            routes_synced: AtomicBool::new(false),
            masquerade_wanted: AtomicBool::new(false),
            masquerade_written: AtomicBool::new(false),
            routes_installed: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            last_sync_unix: AtomicU64::new(0),
        }
    }

    /// A sync ended: `routes` host-gw routes confirmed in the kernel (`None`: not all
    /// written, the last count stays), `errors` writes failed, and whether everything is in
    /// place (then the last-sync time is now).
    pub fn record_sync(&self, routes: Option<usize>, errors: u64, in_place: bool) {
        if let Some(n) = routes {
            self.routes_installed.store(n as u64, Relaxed);
        }
        self.sync_errors.fetch_add(errors, Relaxed);
        if in_place {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_sync_unix.store(now, Relaxed);
        }
    }

    /// The state metrics show.
    pub fn metrics(&self) -> NodeMetrics {
        NodeMetrics {
            routes_installed: self.routes_installed.load(Relaxed),
            sync_errors: self.sync_errors.load(Relaxed),
            watch_up: self.has_source.load(Relaxed) && self.source_connected.load(Relaxed),
            masquerade_applied: self.masquerade_wanted.load(Relaxed)
                && self.masquerade_written.load(Relaxed),
            last_sync_unix: self.last_sync_unix.load(Relaxed),
        }
    }

    /// The node logic starts: with a node source or none (`kube` when it is the API), with
    /// masquerade or without.
    pub fn start(&self, has_source: bool, kube: bool, masquerade: bool) {
        self.has_source.store(has_source, Relaxed);
        self.kube.store(kube, Relaxed);
        self.masquerade_wanted.store(masquerade, Relaxed);
        self.started.store(true, Relaxed);
    }

    /// The source delivered a whole node list (true), or lost its connection (false).
    pub fn set_source_connected(&self, connected: bool) {
        self.source_connected.store(connected, Relaxed);
    }

    /// Whether the routes of the latest node list are all in the kernel.
    pub fn set_routes_synced(&self, synced: bool) {
        self.routes_synced.store(synced, Relaxed);
    }

    /// Whether every masquerade table is written.
    pub fn set_masquerade_written(&self, written: bool) {
        self.masquerade_written.store(written, Relaxed);
    }

    /// Whether routes are in place (what the Node's `NetworkUnavailable` condition reports).
    pub fn routes_synced(&self) -> bool {
        self.routes_synced.load(Relaxed)
    }

    /// Every check; ready when all pass.
    pub fn readiness(&self) -> Vec<Check> {
        let check = |what, ok, yes, no| Check {
            what,
            ok,
            detail: if ok { yes } else { no },
        };
        if !self.started.load(Relaxed) {
            return vec![check("node logic", false, "", "not started")];
        }
        let mut checks = Vec::new();
        if self.has_source.load(Relaxed) {
            let connected = self.source_connected.load(Relaxed);
            checks.push(if self.kube.load(Relaxed) {
                check(
                    "node source",
                    connected,
                    "Kubernetes watch connected",
                    "Kubernetes watch not connected",
                )
            } else {
                check(
                    "node source",
                    connected,
                    "nodes file read",
                    "no valid nodes file read",
                )
            });
            checks.push(check(
                "routes",
                self.routes_synced.load(Relaxed),
                "synced",
                "not synced",
            ));
        }
        if self.masquerade_wanted.load(Relaxed) {
            checks.push(check(
                "masquerade",
                self.masquerade_written.load(Relaxed),
                "written",
                "not written",
            ));
        }
        checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(h: &NodeHealth) -> Vec<&'static str> {
        h.readiness()
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.detail)
            .collect()
    }

    #[test]
    fn ready_only_when_the_source_routes_and_masquerade_are_all_in_place() {
        let h = NodeHealth::new();
        assert_eq!(failing(&h), ["not started"]);
        h.start(true, true, true);
        assert_eq!(
            failing(&h),
            [
                "Kubernetes watch not connected",
                "not synced",
                "not written"
            ]
        );
        h.set_source_connected(true);
        h.set_masquerade_written(true);
        assert_eq!(failing(&h), ["not synced"]);
        h.set_routes_synced(true);
        assert!(failing(&h).is_empty());
        let m = h.metrics();
        assert!(m.watch_up && m.masquerade_applied);
        assert_eq!(h.readiness().len(), 3);
        // A lost watch makes the node not ready again.
        h.set_source_connected(false);
        assert_eq!(failing(&h), ["Kubernetes watch not connected"]);

        // No node source, no masquerade: nothing to wait for once started.
        let bare = NodeHealth::new();
        bare.start(false, false, false);
        assert!(bare.readiness().is_empty());
        let file = NodeHealth::new();
        file.start(true, false, false);
        assert_eq!(failing(&file), ["no valid nodes file read", "not synced"]);
    }

    #[test]
    fn sync_records_routes_errors_and_time() {
        let h = NodeHealth::new();
        h.record_sync(Some(2), 0, false);
        assert_eq!(h.metrics().routes_installed, 2);
        assert_eq!(h.metrics().last_sync_unix, 0, "not in place: no sync time");
        // A failed sync keeps the last count and adds its errors.
        h.record_sync(None, 3, false);
        h.record_sync(None, 1, false);
        assert_eq!(
            (h.metrics().routes_installed, h.metrics().sync_errors),
            (2, 4)
        );
        h.record_sync(Some(0), 0, true);
        let m = h.metrics();
        assert_eq!(m.routes_installed, 0);
        assert!(m.last_sync_unix > 1_600_000_000);
        // Without a node source the watch is never up.
        assert!(!m.watch_up);
    }
}
