//! Prometheus metrics: the text exposition (format 0.0.4) of the daemon's counters, served on
//! the HTTP listener (`GET /metrics`, see `http.rs`) and through the control socket.
//!
//! Link series are named from the point of view of the interface at the far end of netstack's
//! link, as cAdvisor's `container_network_{receive,transmit}_*` and `ip -s link` there count:
//! `netstack_pod_transmit_*` is what the pod sent (the dataplane's `rx` of the pod's link),
//! `netstack_pod_receive_*` what netstack delivered to it (`tx`); the uplink's likewise from the
//! node's uplink device. Separate names rather than a `direction` label, so that a `sum()` over
//! one family counts each frame once. Their labels are `pod_namespace`/`pod_name`, not
//! `namespace`/`pod`, which Kubernetes service discovery sets to the scraped target
//! (netstackd). No frame is in two series of one family, nor in two drop series.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::control::{Counters, PodInfo, PodState};

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
    /// Flow balancing, per worker (empty: off, or one worker).
    pub balance: crate::dataplane::BalanceStats,
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
    let per_pod: [(&str, &str, Field); 8] = [
        (
            "netstack_pod_receive_packets_total",
            "Frames netstack delivered to the pod (its interface received them), as cAdvisor's container_network_receive_packets_total. A GSO super-frame counts once, or as its segments when it was segmented in software on the way.",
            |c| c.tx_packets,
        ),
        (
            "netstack_pod_receive_bytes_total",
            "Bytes of the frames netstack delivered to the pod (Ethernet frames, no virtio-net header).",
            |c| c.tx_bytes,
        ),
        (
            "netstack_pod_transmit_packets_total",
            "Frames the pod sent that netstack read whole, as cAdvisor's container_network_transmit_packets_total; those netstack then dropped (netstack_pod_drops_total) are counted here too. A GSO super-frame counts once.",
            |c| c.rx_packets,
        ),
        (
            "netstack_pod_transmit_bytes_total",
            "Bytes of the frames the pod sent that netstack read whole (Ethernet frames, no virtio-net header).",
            |c| c.rx_bytes,
        ),
        (
            "netstack_pod_transmit_gso_packets_total",
            "Of netstack_pod_transmit_packets_total (already counted there), the GSO super-frames.",
            |c| c.rx_gso_packets,
        ),
        (
            "netstack_pod_read_calls_total",
            "netstack's read system calls that brought in frames the pod sent (one per frame on a TAP; one per recvmmsg batch, or per pass over a receive ring, in veth mode).",
            |c| c.rx_calls,
        ),
        (
            "netstack_pod_write_calls_total",
            "netstack's write system calls that delivered frames to the pod (one per frame on a TAP, one per sendmmsg batch in veth mode).",
            |c| c.tx_calls,
        ),
        (
            "netstack_pod_vhost_queue_stops_total",
            "A VM pod's virtqueues netstack stopped because the guest put garbage in a ring (a descriptor outside its memory, a loop, an available index jump); each stop counts once, and the queue runs again once the VMM sets it up anew. 0 for other pods.",
            |c| c.vhost_queue_stops,
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
        "Frames dropped, by reason, each once: at the pod that sent them when netstack could not read them whole (oversize, malformed; kernel_queue_full: the kernel dropped them before netstack read them) or would not route them (those also count in netstack_pod_transmit_packets_total); at the pod they were going to when its full queue (qdisc_full), its link (tx_error), a VM's full receive ring and backlog (guest_rx_full) or software segmentation (malformed) refused them.",
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
        let q = u8::from(p.state == PodState::Quarantined);
        let _ = writeln!(out, "netstack_pod_quarantined{{{}}} {q}", pod_labels(p));
    }
    family(
        &mut out,
        "netstack_pod_qdisc_depth",
        "gauge",
        "Frames waiting in the fifo qdisc queues towards the pod (its tail drops: netstack_pod_drops_total{reason=\"qdisc_full\"}).",
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
        "netstack_gso_segmented_frames_total",
        "counter",
        "GSO super-frames segmented in software because the egress refused them whole (each counts once in its sender's transmit series, its segments in the egress's receive series).",
    );
    let segmented: u64 =
        s.uplink.tx_gso_segmented + s.pods.iter().map(|(_, c)| c.tx_gso_segmented).sum::<u64>();
    let _ = writeln!(out, "netstack_gso_segmented_frames_total {segmented}");
    family(
        &mut out,
        "netstack_big_tcp_frames_total",
        "counter",
        "BIG TCP frames (GSO frames over 64 KiB, --big-tcp) received from pods.",
    );
    let big: u64 = s.pods.iter().map(|(_, c)| c.rx_big_tcp_packets).sum();
    let _ = writeln!(out, "netstack_big_tcp_frames_total {big}");
    family(
        &mut out,
        "netstack_big_tcp_chunked_frames_total",
        "counter",
        "BIG TCP frames cut into GSO frames of at most 64 KiB for an egress that takes no larger (a TAP, the uplink, a VM; IPv6 ones for a veth pod too).",
    );
    let chunked: u64 = s.uplink.tx_big_tcp_chunked
        + s.pods
            .iter()
            .map(|(_, c)| c.tx_big_tcp_chunked)
            .sum::<u64>();
    let _ = writeln!(out, "netstack_big_tcp_chunked_frames_total {chunked}");
    let uplink: [(&str, &str, u64); 5] = [
        (
            "netstack_uplink_transmit_packets_total",
            "Packets the node sent through the uplink towards pods (the uplink device's TX on the node), read whole by netstack; a GSO super-frame counts once. The same frames count again in the receiving pod's netstack_pod_receive_*.",
            s.uplink.rx_packets,
        ),
        (
            "netstack_uplink_transmit_bytes_total",
            "Bytes of the packets the node sent through the uplink towards pods.",
            s.uplink.rx_bytes,
        ),
        (
            "netstack_uplink_receive_packets_total",
            "Packets netstack delivered to the node through the uplink (the uplink device's RX on the node): what pods sent to the node or beyond it, counted already in the sending pod's netstack_pod_transmit_*.",
            s.uplink.tx_packets,
        ),
        (
            "netstack_uplink_receive_bytes_total",
            "Bytes of the packets netstack delivered to the node through the uplink.",
            s.uplink.tx_bytes,
        ),
        (
            "netstack_uplink_transmit_gso_packets_total",
            "Of netstack_uplink_transmit_packets_total (already counted there), the GSO super-frames.",
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
        "Packets dropped at the uplink, by reason, each once: from the node when netstack could not read or route them; towards the node when its full queue (qdisc_full), the device (tx_error) or software segmentation (malformed) refused them.",
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
    if !s.balance.active.is_empty() {
        family(
            &mut out,
            "netstack_worker_active_flows",
            "gauge",
            "Flows each dataplane worker forwarded at least 32 frames of in its last 50 ms window (flow balancing).",
        );
        for (w, n) in s.balance.active.iter().enumerate() {
            let _ = writeln!(out, "netstack_worker_active_flows{{worker=\"{w}\"}} {n}");
        }
        family(
            &mut out,
            "netstack_worker_flow_moves_total",
            "counter",
            "Flows each dataplane worker moved to a less busy one.",
        );
        for (w, n) in s.balance.moves.iter().enumerate() {
            let _ = writeln!(
                out,
                "netstack_worker_flow_moves_total{{worker=\"{w}\"}} {n}"
            );
        }
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
            labels: [("K8S_POD_NAME".to_owned(), nasty.to_owned())].into(),
            ..pod("c1")
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
            balance: Default::default(),
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

    /// One sample line of the exposition: metric name, labels (unescaped) and value.
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// Parses the sample lines of `text` (comments skipped), label values unescaped; panics on
    /// a line that is not a sample, so a rendering mistake fails the test that reads it.
    fn samples(text: &str) -> Vec<Sample> {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name_end = line
                .find(['{', ' '])
                .unwrap_or_else(|| panic!("no value on {line:?}"));
            let name = line[..name_end].to_owned();
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices();
                let mut key = String::new();
                loop {
                    let (i, c) = chars.next().unwrap_or_else(|| panic!("open {line:?}"));
                    match c {
                        '}' => {
                            rest = &body[i + 1..];
                            break;
                        }
                        ',' => {}
                        '=' => {
                            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                            let mut value = String::new();
                            loop {
                                match chars.next().map(|(_, c)| c) {
                                    Some('"') => break,
                                    Some('\\') => match chars.next().map(|(_, c)| c) {
                                        Some('n') => value.push('\n'),
                                        Some(c) => value.push(c),
                                        None => panic!("cut escape in {line:?}"),
                                    },
                                    Some(c) => value.push(c),
                                    None => panic!("cut value in {line:?}"),
                                }
                            }
                            labels.push((std::mem::take(&mut key), value));
                        }
                        c => key.push(c),
                    }
                }
            }
            let value = rest
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
            out.push(Sample {
                name,
                labels,
                value,
            });
        }
        out
    }

    fn pod(container_id: &str) -> PodInfo {
        PodInfo {
            key: AttachmentKey {
                container_id: container_id.into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/x".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            ips: Vec::new(),
            mode: crate::control::LinkMode::Tap,
            state: PodState::Attached,
            quarantine_reason: None,
            labels: [
                ("K8S_POD_NAMESPACE".to_owned(), "default".to_owned()),
                ("K8S_POD_NAME".to_owned(), container_id.to_owned()),
            ]
            .into(),
            error: None,
            socket_path: None,
        }
    }

    fn render_links(pods: Vec<(PodInfo, Counters)>, uplink: Counters) -> String {
        let control = ControlMetrics::default();
        render(&Snapshot {
            pods,
            uplink,
            wakeups: vec![0],
            balance: Default::default(),
            flows: crate::stack::FlowStats::default(),
            control: &control,
            dataplane_restarts: 0,
            restore_failed: Vec::new(),
            supervisor: None,
            dataplane: None,
            node: crate::node::NodeMetrics::default(),
        })
    }

    /// The value of the one sample of `name` with label `key="value"` (or without labels).
    fn value_of(all: &[Sample], name: &str, key: Option<(&str, &str)>) -> f64 {
        let hits: Vec<&Sample> = all
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| key.is_none_or(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
            .collect();
        assert_eq!(hits.len(), 1, "samples of {name} {key:?}");
        hits[0].value
    }

    #[test]
    fn link_series_are_named_from_the_far_end() {
        // Pod a sent 3 frames (the dataplane read them: rx) and was delivered 5 (tx); the
        // node sent 7 packets into the uplink (rx) and was delivered 11 (tx).
        let a = Counters {
            rx_packets: 3,
            rx_bytes: 300,
            tx_packets: 5,
            tx_bytes: 500,
            rx_gso_packets: 1,
            rx_calls: 2,
            tx_calls: 4,
            vhost_queue_stops: 2,
            rx_big_tcp_packets: 4,
            tx_big_tcp_chunked: 1,
            ..Counters::default()
        };
        let uplink = Counters {
            rx_packets: 7,
            rx_bytes: 700,
            tx_packets: 11,
            tx_bytes: 1100,
            rx_gso_packets: 6,
            tx_big_tcp_chunked: 2,
            ..Counters::default()
        };
        let all = samples(&render_links(vec![(pod("a"), a)], uplink));
        let id = Some(("container_id", "a"));
        for (name, want) in [
            ("netstack_pod_transmit_packets_total", 3.0),
            ("netstack_pod_transmit_bytes_total", 300.0),
            ("netstack_pod_receive_packets_total", 5.0),
            ("netstack_pod_receive_bytes_total", 500.0),
            ("netstack_pod_transmit_gso_packets_total", 1.0),
            ("netstack_pod_read_calls_total", 2.0),
            ("netstack_pod_write_calls_total", 4.0),
            ("netstack_pod_vhost_queue_stops_total", 2.0),
        ] {
            assert_eq!(value_of(&all, name, id), want, "{name}");
        }
        for (name, want) in [
            ("netstack_uplink_transmit_packets_total", 7.0),
            ("netstack_uplink_transmit_bytes_total", 700.0),
            ("netstack_uplink_receive_packets_total", 11.0),
            ("netstack_uplink_receive_bytes_total", 1100.0),
            ("netstack_uplink_transmit_gso_packets_total", 6.0),
            ("netstack_big_tcp_frames_total", 4.0),
            ("netstack_big_tcp_chunked_frames_total", 3.0),
        ] {
            assert_eq!(value_of(&all, name, None), want, "{name}");
        }
        // The names of v0.1.0 to this release are gone, not kept beside the new ones.
        assert!(
            !all.iter()
                .any(|s| s.name.contains("_rx_") || s.name.contains("_tx_")),
            "an rx/tx series is still rendered"
        );
    }

    #[test]
    fn a_dropped_frame_is_in_exactly_one_drop_series() {
        // One frame towards pod b tail-dropped by its full queue, one spoofed frame from pod
        // a, one frame towards the node dropped by the uplink's full queue.
        let mut a = Counters::default();
        a.drops.insert("spoofed".into(), 1);
        a.drops.insert("qdisc_full".into(), 0);
        let mut b = Counters::default();
        b.drops.insert("qdisc_full".into(), 1);
        b.drops.insert("spoofed".into(), 0);
        let mut uplink = Counters::default();
        uplink.drops.insert("qdisc_full".into(), 1);
        let text = render_links(vec![(pod("a"), a), (pod("b"), b)], uplink);
        let all = samples(&text);
        // Every series about drops, whatever its name: the three frames, each once.
        let drop_series = |s: &&Sample| s.name.contains("drop");
        let total: f64 = all.iter().filter(drop_series).map(|s| s.value).sum();
        assert_eq!(total, 3.0, "drop series add up to {total}:\n{text}");
        let of = |id: &str| -> f64 {
            all.iter()
                .filter(drop_series)
                .filter(|s| s.labels.iter().any(|(k, v)| k == "container_id" && v == id))
                .map(|s| s.value)
                .sum()
        };
        assert_eq!((of("a"), of("b")), (1.0, 1.0));
    }

    #[test]
    fn no_label_collides_with_kubernetes_service_discovery() {
        // The target labels kubernetes_sd relabelling and the Prometheus operator set.
        const TARGET: [&str; 8] = [
            "namespace",
            "pod",
            "container",
            "service",
            "endpoint",
            "node",
            "job",
            "instance",
        ];
        let mut c = Counters::default();
        c.drops.insert("spoofed".into(), 1);
        let mut restored = pod("r");
        restored.state = PodState::RestoreFailed;
        let control = ControlMetrics::default();
        let text = render(&Snapshot {
            pods: vec![(pod("a"), c.clone())],
            uplink: c,
            wakeups: vec![1, 2],
            balance: crate::dataplane::BalanceStats {
                active: vec![3, 4],
                moves: vec![5, 0],
            },
            flows: crate::stack::FlowStats::default(),
            control: &control,
            dataplane_restarts: 0,
            restore_failed: vec![restored],
            supervisor: None,
            dataplane: None,
            node: crate::node::NodeMetrics::default(),
        });
        let all = samples(&text);
        assert!(all.len() > 40, "too few samples to mean anything:\n{text}");
        for s in &all {
            for (k, _) in &s.labels {
                assert!(!TARGET.contains(&k.as_str()), "{} has label {k}", s.name);
            }
        }
        let a = value_of(&all, "netstack_pod_transmit_packets_total", None);
        assert_eq!(a, 0.0);
        let per_worker = |name: &str| -> Vec<(String, f64)> {
            all.iter()
                .filter(|s| s.name == name)
                .map(|s| (s.labels[0].1.clone(), s.value))
                .collect()
        };
        assert_eq!(
            per_worker("netstack_worker_active_flows"),
            [("0".to_string(), 3.0), ("1".to_string(), 4.0)]
        );
        assert_eq!(
            per_worker("netstack_worker_flow_moves_total"),
            [("0".to_string(), 5.0), ("1".to_string(), 0.0)]
        );
        let labels: Vec<&str> = all
            .iter()
            .find(|s| s.name == "netstack_pod_transmit_packets_total")
            .map(|s| s.labels.iter().map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            labels,
            ["pod_namespace", "pod_name", "container_id", "ifname"]
        );
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
            balance: Default::default(),
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
