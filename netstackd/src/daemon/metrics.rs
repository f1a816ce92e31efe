//! Prometheus metrics: the text exposition (format 0.0.4) of the daemon's counters, served on
//! the HTTP listener (`GET /metrics`, see `http.rs`) and through the control socket.
//!
//! Pod series are named from the pod's point of view, as cAdvisor's
//! `container_network_receive_*` are: `rx` is what the pod sent (netstack received it from the
//! pod), `tx` what was delivered to the pod. Their labels are `pod_namespace`/`pod_name`, not
//! `namespace`/`pod`, which Kubernetes service discovery sets to the scraped target (netstackd).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::control::{Counters, PodInfo};

/// Upper bounds (seconds) of the attach latency histogram buckets.
const ATTACH_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

/// Attach/detach tallies and the attach latency histogram.
#[derive(Default)]
pub struct ControlMetrics {
    attach_ok: AtomicU64,
    attach_failed: AtomicU64,
    detach: AtomicU64,
    buckets: [AtomicU64; ATTACH_BUCKETS.len()],
    sum_micros: AtomicU64,
}

impl ControlMetrics {
    /// Records one attach that took `elapsed`.
    pub fn attached(&self, ok: bool, elapsed: Duration) {
        if ok {
            self.attach_ok.fetch_add(1, Relaxed);
        } else {
            self.attach_failed.fetch_add(1, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        for (bound, bucket) in ATTACH_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Records one detach.
    pub fn detached(&self) {
        self.detach.fetch_add(1, Relaxed);
    }
}

/// Escapes a label value as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn pod_labels(p: &PodInfo) -> String {
    let get = |k: &str| p.labels.get(k).map(String::as_str).unwrap_or("");
    format!(
        "pod_namespace=\"{}\",pod_name=\"{}\",container_id=\"{}\",ifname=\"{}\"",
        label(get("K8S_POD_NAMESPACE")),
        label(get("K8S_POD_NAME")),
        label(&p.key.container_id),
        label(&p.key.ifname)
    )
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Everything the exposition is made of.
pub struct Snapshot<'a> {
    /// Attached pods with their counters.
    pub pods: Vec<(PodInfo, Counters)>,
    /// The uplink's counters.
    pub uplink: Counters,
    /// Epoll wakeups per worker.
    pub wakeups: Vec<u64>,
    /// The service flow table.
    pub flows: crate::stack::FlowStats,
    /// Control-plane tallies.
    pub control: &'a ControlMetrics,
    /// Dataplane restarts since start.
    pub dataplane_restarts: u64,
    /// Recorded pods netstackd could not restore (state `restore_failed`; retried).
    pub restore_failed: Vec<PodInfo>,
    /// The supervisor's own process figures (`None` if `/proc/self` could not be read).
    pub supervisor: Option<super::procstat::ProcessStats>,
    /// The dataplane child's process figures (`None` while it is not running).
    pub dataplane: Option<super::procstat::ProcessStats>,
    /// Node mode's state.
    pub node: crate::node::NodeMetrics,
}

/// Renders the text exposition.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    type Field = fn(&Counters) -> u64;
    let per_pod: [(&str, &str, Field); 7] = [
        (
            "netstack_pod_rx_packets_total",
            "Frames received from the pod.",
            |c| c.rx_packets,
        ),
        (
            "netstack_pod_rx_bytes_total",
            "Bytes received from the pod.",
            |c| c.rx_bytes,
        ),
        (
            "netstack_pod_tx_packets_total",
            "Frames delivered to the pod.",
            |c| c.tx_packets,
        ),
        (
            "netstack_pod_tx_bytes_total",
            "Bytes delivered to the pod.",
            |c| c.tx_bytes,
        ),
        (
            "netstack_pod_gso_frames_total",
            "GSO super-frames from the pod forwarded whole (no software segmentation).",
            |c| c.rx_gso_packets,
        ),
        (
            "netstack_pod_rx_calls_total",
            "Read system calls that brought frames in from the pod (one per recvmmsg batch, or per pass over a receive ring, in veth mode).",
            |c| c.rx_calls,
        ),
        (
            "netstack_pod_tx_calls_total",
            "Write system calls that sent frames to the pod (one per sendmmsg batch in veth mode).",
            |c| c.tx_calls,
        ),
    ];
    for (name, help, field) in per_pod {
        family(&mut out, name, "counter", help);
        for (p, c) in &s.pods {
            let _ = writeln!(out, "{name}{{{}}} {}", pod_labels(p), field(c));
        }
    }
    family(
        &mut out,
        "netstack_pod_drops_total",
        "counter",
        "Frames from or to the pod dropped, by reason.",
    );
    for (p, c) in &s.pods {
        for (reason, n) in &c.drops {
            let _ = writeln!(
                out,
                "netstack_pod_drops_total{{{},reason=\"{}\"}} {n}",
                pod_labels(p),
                label(reason)
            );
        }
    }
    family(
        &mut out,
        "netstack_pod_quarantined",
        "gauge",
        "1 while the pod is quarantined (the dataplane died repeatedly handling its frames; `netstackd ctl release` or DEL ends it).",
    );
    for (p, _) in &s.pods {
        let q = u8::from(p.state == "quarantined");
        let _ = writeln!(out, "netstack_pod_quarantined{{{}}} {q}", pod_labels(p));
    }
    family(
        &mut out,
        "netstack_pod_qdisc_depth",
        "gauge",
        "Frames waiting in the fifo qdisc queues towards the pod.",
    );
    for (p, c) in &s.pods {
        let _ = writeln!(
            out,
            "netstack_pod_qdisc_depth{{{}}} {}",
            pod_labels(p),
            c.qdisc_depth
        );
    }
    family(
        &mut out,
        "netstack_pod_qdisc_drops_total",
        "counter",
        "Frames towards the pod tail-dropped by a full fifo qdisc queue.",
    );
    for (p, c) in &s.pods {
        let n = c.drops.get("qdisc_full").copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "netstack_pod_qdisc_drops_total{{{}}} {n}",
            pod_labels(p)
        );
    }
    family(
        &mut out,
        "netstack_gso_segmented_frames_total",
        "counter",
        "GSO super-frames segmented in software because the egress refused them whole.",
    );
    let segmented: u64 =
        s.uplink.tx_gso_segmented + s.pods.iter().map(|(_, c)| c.tx_gso_segmented).sum::<u64>();
    let _ = writeln!(out, "netstack_gso_segmented_frames_total {segmented}");
    let uplink: [(&str, &str, u64); 5] = [
        (
            "netstack_uplink_rx_packets_total",
            "Packets from the node to pods.",
            s.uplink.rx_packets,
        ),
        (
            "netstack_uplink_rx_bytes_total",
            "Bytes from the node to pods.",
            s.uplink.rx_bytes,
        ),
        (
            "netstack_uplink_tx_packets_total",
            "Packets from pods to the node.",
            s.uplink.tx_packets,
        ),
        (
            "netstack_uplink_tx_bytes_total",
            "Bytes from pods to the node.",
            s.uplink.tx_bytes,
        ),
        (
            "netstack_uplink_gso_frames_total",
            "GSO super-frames from the node.",
            s.uplink.rx_gso_packets,
        ),
    ];
    for (name, help, v) in uplink {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(
        &mut out,
        "netstack_uplink_drops_total",
        "counter",
        "Packets from the node dropped, by reason.",
    );
    for (reason, n) in &s.uplink.drops {
        let _ = writeln!(
            out,
            "netstack_uplink_drops_total{{reason=\"{}\"}} {n}",
            label(reason)
        );
    }
    family(
        &mut out,
        "netstack_worker_wakeups_total",
        "counter",
        "Times each dataplane worker woke up from epoll.",
    );
    for (w, n) in s.wakeups.iter().enumerate() {
        let _ = writeln!(out, "netstack_worker_wakeups_total{{worker=\"{w}\"}} {n}");
    }
    let flows: [(&str, &str, &str, u64); 4] = [
        (
            "netstack_flow_table_capacity",
            "gauge",
            "Flows the service flow table holds at most (0: --service-flows off).",
            s.flows.capacity,
        ),
        (
            "netstack_flow_table_entries",
            "gauge",
            "Live service flows: replies to flows the node delivered from a local pod (a Service endpoint on this node), sent back to the node.",
            s.flows.entries,
        ),
        (
            "netstack_flow_table_inserts_total",
            "counter",
            "Service flows recorded.",
            s.flows.inserts,
        ),
        (
            "netstack_flow_table_evictions_total",
            "counter",
            "Live service flows dropped from a full bucket of the table (their replies are then switched directly).",
            s.flows.evictions,
        ),
    ];
    for (name, kind, help, v) in flows {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(
        &mut out,
        "netstack_attachments",
        "gauge",
        "Pod interfaces attached.",
    );
    let _ = writeln!(out, "netstack_attachments {}", s.pods.len());
    family(
        &mut out,
        "netstack_pod_restore_failed",
        "gauge",
        "1 for a recorded pod interface netstackd could not restore after a restart (state file kept, retried), 0 for one it serves.",
    );
    for (p, _) in &s.pods {
        let _ = writeln!(out, "netstack_pod_restore_failed{{{}}} 0", pod_labels(p));
    }
    for p in &s.restore_failed {
        let _ = writeln!(out, "netstack_pod_restore_failed{{{}}} 1", pod_labels(p));
    }
    family(
        &mut out,
        "netstack_attach_total",
        "counter",
        "Attach requests, by result.",
    );
    let _ = writeln!(
        out,
        "netstack_attach_total{{result=\"ok\"}} {}",
        s.control.attach_ok.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "netstack_attach_total{{result=\"error\"}} {}",
        s.control.attach_failed.load(Relaxed)
    );
    family(
        &mut out,
        "netstack_detach_total",
        "counter",
        "Detach requests.",
    );
    let _ = writeln!(
        out,
        "netstack_detach_total {}",
        s.control.detach.load(Relaxed)
    );
    family(
        &mut out,
        "netstack_attach_duration_seconds",
        "histogram",
        "Time to serve an attach request.",
    );
    let count = s.control.attach_ok.load(Relaxed) + s.control.attach_failed.load(Relaxed);
    for (bound, bucket) in ATTACH_BUCKETS.iter().zip(&s.control.buckets) {
        let _ = writeln!(
            out,
            "netstack_attach_duration_seconds_bucket{{le=\"{bound}\"}} {}",
            bucket.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "netstack_attach_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "netstack_attach_duration_seconds_sum {}",
        s.control.sum_micros.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "netstack_attach_duration_seconds_count {count}");
    family(
        &mut out,
        "netstack_dataplane_restarts_total",
        "counter",
        "Times the dataplane process was restarted.",
    );
    let _ = writeln!(
        out,
        "netstack_dataplane_restarts_total {}",
        s.dataplane_restarts
    );
    family(
        &mut out,
        "netstack_node_routes_refused_total",
        "counter",
        "Other nodes' pod CIDRs refused a host-gw route (node mode), by reason; each refusal counts once, when it appears.",
    );
    for (reason, n) in crate::node::refused_routes() {
        let _ = writeln!(
            out,
            "netstack_node_routes_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    render_node(&mut out, &s.node);
    render_process(&mut out, s.supervisor.as_ref(), s.dataplane.as_ref());
    family(
        &mut out,
        "netstack_build_info",
        "gauge",
        "Always 1; the labels name the release and the commit netstackd was built from.",
    );
    let _ = writeln!(
        out,
        "netstack_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        label(crate::version::VERSION),
        label(crate::version::COMMIT)
    );
    out
}

/// Node mode's gauges and counters (all 0 outside node mode).
fn render_node(out: &mut String, n: &crate::node::NodeMetrics) {
    let rows: [(&str, &str, &str, String); 5] = [
        (
            "netstack_node_routes_installed",
            "gauge",
            "Host-gw routes to other nodes' pod CIDRs in the kernel as of the last sync that wrote them all (node mode).",
            n.routes_installed.to_string(),
        ),
        (
            "netstack_node_sync_errors_total",
            "counter",
            "Route or masquerade writes that failed during a sync (node mode; retried at the next resync).",
            n.sync_errors.to_string(),
        ),
        (
            "netstack_node_watch_up",
            "gauge",
            "1 while the node source (the Kubernetes watch or the nodes file) has delivered a node list and is connected.",
            u8::from(n.watch_up).to_string(),
        ),
        (
            "netstack_node_masquerade_applied",
            "gauge",
            "1 while egress masquerade is wanted and its rules are written for every pod CIDR.",
            u8::from(n.masquerade_applied).to_string(),
        ),
        (
            "netstack_node_last_sync_timestamp_seconds",
            "gauge",
            "When a sync last left routes and masquerade all in place, since the Unix epoch (0: never).",
            n.last_sync_unix.to_string(),
        ),
    ];
    for (name, kind, help, v) in rows {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
}

/// The supervisor's standard `process_*` series and the dataplane child's CPU and memory.
fn render_process(
    out: &mut String,
    me: Option<&super::procstat::ProcessStats>,
    dataplane: Option<&super::procstat::ProcessStats>,
) {
    if let Some(me) = me {
        let mut rows: Vec<(&str, &str, &str, String)> = vec![
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the netstackd supervisor, in seconds.",
                me.cpu_seconds.to_string(),
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the netstackd supervisor, in bytes.",
                me.resident_bytes.to_string(),
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the netstackd supervisor since the Unix epoch, in seconds.",
                me.start_time_seconds.to_string(),
            ),
        ];
        if let Some(n) = me.open_fds {
            rows.push((
                "process_open_fds",
                "gauge",
                "Open file descriptors of the netstackd supervisor.",
                n.to_string(),
            ));
        }
        if let Some(n) = me.max_fds {
            rows.push((
                "process_max_fds",
                "gauge",
                "The supervisor's soft limit on open file descriptors.",
                n.to_string(),
            ));
        }
        for (name, kind, help, v) in rows {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
    if let Some(dp) = dataplane {
        family(
            out,
            "netstack_dataplane_cpu_seconds_total",
            "counter",
            "User and system CPU time of the running dataplane process, in seconds (restarts begin again at 0).",
        );
        let _ = writeln!(
            out,
            "netstack_dataplane_cpu_seconds_total {}",
            dp.cpu_seconds
        );
        family(
            out,
            "netstack_dataplane_resident_memory_bytes",
            "gauge",
            "Resident memory of the dataplane process, in bytes.",
        );
        let _ = writeln!(
            out,
            "netstack_dataplane_resident_memory_bytes {}",
            dp.resident_bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::AttachmentKey;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("plain"), "plain");
        assert_eq!(label(r"a\b"), r"a\\b");
        assert_eq!(label("say \"hi\""), r#"say \"hi\""#);
        assert_eq!(label("two\nlines"), r"two\nlines");
        assert_eq!(label("\\\"\n"), r#"\\\"\n"#);
    }

    #[test]
    fn hostile_label_values_stay_inside_their_sample_line() {
        let nasty = "x\"} 1\nnetstack_fake 2\\";
        let mut counters = Counters::default();
        counters.drops.insert(nasty.into(), 7);
        let pod = PodInfo {
            key: AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/x".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            ips: Vec::new(),
            mode: "tap".into(),
            state: "attached".into(),
            quarantine_reason: None,
            labels: [("K8S_POD_NAME".to_owned(), nasty.to_owned())].into(),
            error: None,
        };
        let uplink = Counters {
            drops: [(nasty.to_owned(), 3)].into(),
            ..Counters::default()
        };
        let control = ControlMetrics::default();
        let text = render(&Snapshot {
            pods: vec![(pod, counters)],
            uplink,
            wakeups: vec![1],
            flows: crate::stack::FlowStats::default(),
            control: &control,
            dataplane_restarts: 0,
            restore_failed: Vec::new(),
            supervisor: None,
            dataplane: None,
            node: crate::node::NodeMetrics::default(),
        });
        assert!(
            !text.lines().any(|l| l.starts_with("netstack_fake")),
            "a label value started a line of its own:\n{text}"
        );
        let escaped = r#"x\"} 1\nnetstack_fake 2\\"#;
        assert!(text.contains(&format!(
            "netstack_pod_drops_total{{pod_namespace=\"\",pod_name=\"{escaped}\",container_id=\"c1\",ifname=\"eth0\",reason=\"{escaped}\"}} 7"
        )));
        assert!(text.contains(&format!(
            "netstack_uplink_drops_total{{reason=\"{escaped}\"}} 3"
        )));
    }

    #[test]
    fn process_node_and_build_series_carry_their_values() {
        let control = ControlMetrics::default();
        let me = super::super::procstat::ProcessStats {
            cpu_seconds: 1.5,
            resident_bytes: 4096,
            start_time_seconds: 1_700_000_000.25,
            open_fds: Some(12),
            max_fds: None,
        };
        let dp = super::super::procstat::ProcessStats {
            cpu_seconds: 0.25,
            resident_bytes: 8192,
            ..me
        };
        let text = render(&Snapshot {
            pods: Vec::new(),
            uplink: Counters::default(),
            wakeups: Vec::new(),
            flows: crate::stack::FlowStats::default(),
            control: &control,
            dataplane_restarts: 0,
            restore_failed: Vec::new(),
            supervisor: Some(me),
            dataplane: Some(dp),
            node: crate::node::NodeMetrics {
                routes_installed: 3,
                sync_errors: 2,
                watch_up: true,
                masquerade_applied: false,
                last_sync_unix: 1_700_000_100,
            },
        });
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "process_cpu_seconds_total 1.5",
            "process_resident_memory_bytes 4096",
            "process_start_time_seconds 1700000000.25",
            "process_open_fds 12",
            "netstack_dataplane_cpu_seconds_total 0.25",
            "netstack_dataplane_resident_memory_bytes 8192",
            "netstack_node_routes_installed 3",
            "netstack_node_sync_errors_total 2",
            "netstack_node_watch_up 1",
            "netstack_node_masquerade_applied 0",
            "netstack_node_last_sync_timestamp_seconds 1700000100",
            &format!(
                "netstack_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                crate::version::VERSION,
                crate::version::COMMIT
            ),
        ] {
            assert!(lines.contains(&want), "no line {want:?} in:\n{text}");
        }
        // An unlimited descriptor limit has no sample rather than a made-up one.
        assert!(!text.contains("process_max_fds"));
    }
}
