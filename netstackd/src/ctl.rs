//! `netstackd ctl`: the operator's view of a running netstackd over its control socket —
//! `status`, `list`, `stats [POD]`, `capture POD`, `metrics`, `release POD`, `node`,
//! `detach POD`, `gc [--dry-run]`, `ipam [--dir DIR]`. Tables for people by default,
//! `--json` for scripts (the JSON is the control protocol's, documented in the README).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::control::{
    AttachmentKey, CaptureRequest, Client, Counters, LinkMode, NodeStatus, PodInfo, Reply, Request,
    MAX_CAPTURE_SNAPLEN,
};
use crate::dataplane::capture_filter::CaptureFilter;
use crate::wire::pcap::{self, RECORD_HEADER_LEN};

/// What `ctl` is asked to do: the `netstackd ctl` subcommands (the doc comments are their
/// help text).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Daemon status.
    Status,
    /// Attached pods: container id, netns, ifname, IPs, MAC, mode, state.
    List,
    /// Counters of every pod, or of POD (container id, unique prefix, or namespace/name).
    Stats {
        /// The pod.
        pod: Option<String>,
    },
    /// Write a pcap of POD's frames, both directions (tcpdump -r / tshark -r read it).
    Capture {
        /// The pod (container id, unique prefix, or namespace/name).
        pod: String,
        /// The pod interface.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Output file ("-": stdout).
        #[arg(short = 'w', default_value = "-")]
        write: String,
        /// Stop after COUNT frames.
        #[arg(short = 'c', default_value_t = 0)]
        count: u64,
        /// Stop after this many seconds.
        #[arg(long = "duration", default_value_t = 0)]
        duration_s: u64,
        /// Bytes kept of each frame.
        #[arg(long, default_value_t = MAX_CAPTURE_SNAPLEN)]
        snaplen: u32,
        /// Keep only matching frames: `host ADDR`, `port N`, `tcp`, `udp`, `icmp`, `icmp6`,
        /// `arp`, joined by `and` (e.g. "host 10.0.0.1 and udp and port 53").
        #[arg(long, default_value = "")]
        filter: String,
    },
    /// Prometheus metrics.
    Metrics,
    /// Take POD out of quarantine (its queued frames are discarded, then it is served again).
    Release {
        /// The pod (container id, unique prefix, or namespace/name).
        pod: String,
        /// The pod interface.
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Node mode: pod CIDRs, the host-gw routes installed (peer node, CIDR, via), masquerade,
    /// forward accept rules, the node source's health, the last sync.
    Node,
    /// host-local's reservations (DIR/NETWORK/IP files) beside the attachments; names leaks: a
    /// reservation no attachment has, an attachment with no reservation.
    Ipam {
        /// host-local's data dir (its `dataDir`).
        #[arg(long, default_value = "/var/lib/cni/networks")]
        dir: std::path::PathBuf,
    },
    /// Detach every attachment whose netns is gone (deleted behind netstack's back); their
    /// IPAM reservations stay for CNI GC.
    Gc {
        /// Only print what would be detached.
        #[arg(long)]
        dry_run: bool,
    },
    /// Detach POD by hand, as CNI DEL does: its link is removed and its state file goes.
    Detach {
        /// The pod (container id, unique prefix, or namespace/name).
        pod: String,
        /// The pod interface.
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
}

fn call(client: &mut Client, req: &Request) -> anyhow::Result<(Reply, Vec<OwnedFd>)> {
    let (reply, fds) = client.call_with_fds(req, &[])?;
    if let Reply::Error { message, .. } = reply {
        bail!("netstackd: {message}");
    }
    Ok((reply, fds))
}

fn list(client: &mut Client) -> anyhow::Result<Vec<PodInfo>> {
    match call(client, &Request::List)?.0 {
        Reply::List { pods } => Ok(pods),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// Finds the one pod `name` designates: an exact container id, a unique prefix, or
/// `namespace/name` from the Kubernetes labels.
fn resolve<'a>(pods: &'a [PodInfo], name: &str) -> anyhow::Result<&'a PodInfo> {
    if let Some(p) = pods.iter().find(|p| p.key.container_id == name) {
        return Ok(p);
    }
    let by_k8s: Vec<_> = pods
        .iter()
        .filter(|p| {
            let ns = p
                .labels
                .get("K8S_POD_NAMESPACE")
                .map(String::as_str)
                .unwrap_or("");
            let pod = p
                .labels
                .get("K8S_POD_NAME")
                .map(String::as_str)
                .unwrap_or("");
            format!("{ns}/{pod}") == name
        })
        .collect();
    let by_prefix: Vec<_> = pods
        .iter()
        .filter(|p| p.key.container_id.starts_with(name))
        .collect();
    match (by_k8s.as_slice(), by_prefix.as_slice()) {
        ([one], _) | ([], [one]) => Ok(one),
        ([], []) => bail!("no attached pod matches {name:?}"),
        _ => bail!("{name:?} matches more than one pod: use the full container id"),
    }
}

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn short(id: &str) -> String {
    id.chars().take(16).collect()
}

fn counters_row(name: String, c: &Counters) -> Vec<String> {
    let drops: u64 = c.drops.values().sum();
    let reasons: Vec<String> = c
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    vec![
        name,
        c.rx_packets.to_string(),
        c.rx_bytes.to_string(),
        c.tx_packets.to_string(),
        c.tx_bytes.to_string(),
        c.rx_gso_packets.to_string(),
        c.vhost_queue_stops.to_string(),
        drops.to_string(),
        reasons.join(","),
    ]
}

/// Runs one `ctl` command against the daemon at `socket`.
pub fn run(socket: &Path, command: CtlCommand, json: bool) -> anyhow::Result<()> {
    let mut client = Client::connect(socket, Duration::from_secs(10))?;
    let mut out = std::io::stdout().lock();
    match command {
        CtlCommand::Status => {
            let (reply, _) = call(&mut client, &Request::Status)?;
            let Reply::Status(s) = reply else {
                bail!("unexpected reply")
            };
            // The daemon's control protocol, from its reply (1: netstack v0.1.0, which says none).
            let protocol = client
                .peer_protocol()
                .unwrap_or(crate::control::PROTOCOL_V1);
            if json {
                let mut v = serde_json::to_value(&s)?;
                v["protocol"] = protocol.into();
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let mut rows = vec![
                    vec!["daemon version".into(), s.version],
                    vec!["ctl version".into(), crate::version::LONG.into()],
                    vec!["control protocol".into(), protocol.to_string()],
                    vec!["workers".into(), s.workers.to_string()],
                    vec!["uplink".into(), s.uplink],
                    vec!["pod CIDR".into(), s.pod_cidr.to_string()],
                    vec!["gateway".into(), s.gateway.to_string()],
                    vec!["attachments".into(), s.attachments.to_string()],
                    vec![
                        "dataplane pid".into(),
                        s.dataplane_pid
                            .map_or("restarting".into(), |p| p.to_string()),
                    ],
                    vec![
                        "dataplane restarts".into(),
                        s.dataplane_restarts.to_string(),
                    ],
                    vec!["metrics".into(), s.metrics.unwrap_or_else(|| "off".into())],
                    vec![
                        "quarantined".into(),
                        if s.quarantined.is_empty() {
                            "none".into()
                        } else {
                            s.quarantined.join(",")
                        },
                    ],
                ];
                if let Some(dp) = &s.dp_netns {
                    rows.push(vec!["veth namespace".into(), dp.display().to_string()]);
                }
                if let Some(dir) = &s.vhost_dir {
                    rows.push(vec!["vhost-user dir".into(), dir.display().to_string()]);
                }
                if let Some(io) = &s.tap_io {
                    rows.push(vec!["TAP I/O".into(), io.clone()]);
                }
                write!(out, "{}", table(rows))?;
            }
        }
        CtlCommand::List => {
            let pods = list(&mut client)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&pods)?)?;
            } else {
                let mut rows = vec![[
                    "CONTAINER",
                    "POD",
                    "IFNAME",
                    "IPS",
                    "MAC",
                    "MODE",
                    "STATE",
                    "NETNS",
                ]
                .map(String::from)
                .to_vec()];
                for p in &pods {
                    let k8s = match (
                        p.labels.get("K8S_POD_NAMESPACE"),
                        p.labels.get("K8S_POD_NAME"),
                    ) {
                        (Some(ns), Some(n)) => format!("{ns}/{n}"),
                        _ => "-".into(),
                    };
                    let ips: Vec<String> = p.ips.iter().map(|i| i.to_string()).collect();
                    rows.push(vec![
                        short(&p.key.container_id),
                        k8s,
                        p.key.ifname.clone(),
                        ips.join(","),
                        p.mac.to_string(),
                        p.mode.to_string(),
                        p.state.to_string(),
                        p.netns.display().to_string(),
                    ]);
                }
                write!(out, "{}", table(rows))?;
                for p in &pods {
                    if let Some(socket) = &p.socket_path {
                        writeln!(
                            out,
                            "{}/{} {}: socket {}",
                            short(&p.key.container_id),
                            p.key.ifname,
                            p.mode,
                            socket.display()
                        )?;
                    }
                }
                for p in pods.iter().filter(|p| p.quarantine_reason.is_some()) {
                    let reason = p.quarantine_reason.as_deref().unwrap_or("");
                    writeln!(
                        out,
                        "{}/{} quarantined: {reason}",
                        short(&p.key.container_id),
                        p.key.ifname
                    )?;
                }
            }
        }
        CtlCommand::Release { pod, ifname } => {
            let infos = list(&mut client)?;
            let container_id = resolve(&infos, &pod)?.key.container_id.clone();
            let key = AttachmentKey {
                container_id,
                ifname,
            };
            call(&mut client, &Request::Release(key.clone()))?;
            if json {
                writeln!(out, "{}", serde_json::json!({ "released": key }))?;
            } else {
                writeln!(out, "{key} released")?;
            }
        }
        CtlCommand::Node => {
            let (reply, _) = call(&mut client, &Request::Node)?;
            let Reply::Node(status) = reply else {
                bail!("unexpected reply")
            };
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                write!(out, "{}", node_table(&status, now))?;
            }
        }
        CtlCommand::Detach { pod, ifname } => {
            let infos = list(&mut client)?;
            let info = resolve(&infos, &pod)?.clone();
            let key = AttachmentKey {
                container_id: info.key.container_id.clone(),
                ifname,
            };
            call(&mut client, &Request::Detach(key.clone()))?;
            // What CNI DEL does besides: the pod's link goes (a veth's went with its peer).
            let link_removed = remove_pod_link(&info.netns, &key.ifname, info.mode)
                .with_context(|| format!("{key}: removing its link in {}", info.netns.display()))?;
            if json {
                let v = serde_json::json!({ "detached": key, "link_removed": link_removed });
                writeln!(out, "{v}")?;
            } else {
                let link = if link_removed {
                    "its link removed"
                } else {
                    "no link of it left"
                };
                writeln!(out, "{key} detached, {link}")?;
            }
        }
        CtlCommand::Ipam { dir } => {
            let reservations = read_reservations(&dir).with_context(|| {
                format!("reading host-local's reservations in {}", dir.display())
            })?;
            let pods = list(&mut client)?;
            let view = ipam_view(&reservations, &pods);
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
            } else {
                let mut rows = vec![["NETWORK", "IP", "CONTAINER", "IFNAME", "ATTACHMENT"]
                    .map(String::from)
                    .to_vec()];
                for r in &view.reservations {
                    rows.push(vec![
                        r.network.clone(),
                        r.ip.to_string(),
                        short(&r.container_id),
                        r.ifname.clone(),
                        if r.attached { "attached" } else { "LEAK" }.into(),
                    ]);
                }
                write!(out, "{}", table(rows))?;
                for r in view.reservations.iter().filter(|r| !r.attached) {
                    writeln!(
                        out,
                        "leak: {}/{} reserved for {}/{}, which netstackd has no attachment of",
                        r.network, r.ip, r.container_id, r.ifname
                    )?;
                }
                for k in &view.unreserved {
                    writeln!(
                        out,
                        "leak: attachment {k} has no host-local reservation in {}",
                        dir.display()
                    )?;
                }
                let leaks = view.reservations.iter().filter(|r| !r.attached).count()
                    + view.unreserved.len();
                writeln!(out, "{leaks} leak(s)")?;
            }
        }
        CtlCommand::Gc { dry_run } => {
            let stale = gone_pods(list(&mut client)?, crate::netns::is_netns);
            let mut removed = Vec::new();
            for p in &stale {
                if !dry_run {
                    call(&mut client, &Request::Detach(p.key.clone()))?;
                }
                removed.push(p.key.clone());
            }
            if json {
                let v = serde_json::json!({ "dry_run": dry_run, "detached": removed });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let verb = if dry_run { "would detach" } else { "detached" };
                for p in &stale {
                    writeln!(
                        out,
                        "{verb} {} (netns {} is gone)",
                        p.key,
                        p.netns.display()
                    )?;
                }
                writeln!(
                    out,
                    "{} attachment(s) {verb}; their IPAM reservations stay (CNI GC or `ctl ipam` shows them)",
                    stale.len()
                )?;
            }
        }
        CtlCommand::Stats { pod } => {
            let (reply, _) = call(&mut client, &Request::Stats)?;
            let Reply::Stats { mut pods, uplink } = reply else {
                bail!("unexpected reply")
            };
            if let Some(name) = pod {
                let infos = list(&mut client)?;
                let want = resolve(&infos, &name)?.key.clone();
                pods.retain(|p| p.key == want);
            }
            if json {
                let v = serde_json::json!({ "pods": pods, "uplink": uplink });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                let mut rows = vec![[
                    "POD",
                    "RX_PKTS",
                    "RX_BYTES",
                    "TX_PKTS",
                    "TX_BYTES",
                    "RX_GSO",
                    "VQ_STOPS",
                    "DROPS",
                    "DROP_REASONS",
                ]
                .map(String::from)
                .to_vec()];
                for p in &pods {
                    rows.push(counters_row(
                        format!("{}/{}", short(&p.key.container_id), p.key.ifname),
                        &p.counters,
                    ));
                }
                rows.push(counters_row("(uplink)".into(), &uplink));
                write!(out, "{}", table(rows))?;
            }
        }
        CtlCommand::Metrics => {
            let (reply, _) = call(&mut client, &Request::Metrics)?;
            let Reply::Metrics { text } = reply else {
                bail!("unexpected reply")
            };
            write!(out, "{text}")?;
        }
        CtlCommand::Capture {
            pod,
            ifname,
            write,
            count,
            duration_s,
            snaplen,
            filter,
        } => {
            drop(out);
            // A clear error before anything is asked; the daemon parses it again.
            let frames = CaptureFilter::parse(&filter)
                .map_err(|e| anyhow::anyhow!("--filter {filter:?}: {e}"))?;
            let infos = list(&mut client)?;
            let container_id = resolve(&infos, &pod)?.key.container_id.clone();
            let snaplen = snaplen.clamp(64, MAX_CAPTURE_SNAPLEN);
            let req = Request::Capture(CaptureRequest {
                key: AttachmentKey {
                    container_id,
                    ifname,
                },
                snaplen,
                max_packets: count,
                max_seconds: duration_s,
                filter,
            });
            let (_, fds) = call(&mut client, &req)?;
            let pipe = fds
                .into_iter()
                .next()
                .context("netstackd sent no capture pipe")?;
            // Filtered here too: a daemon older than --filter sends every frame.
            let (n, here) = capture_to(pipe, &write, snaplen, count, duration_s, &frames)?;
            if here == 0 {
                eprintln!("netstackd ctl: {n} frames captured");
            } else {
                eprintln!("netstackd ctl: {n} frames captured, {here} more filtered out here (the daemon does not filter: it is older than --filter)");
            }
        }
    }
    Ok(())
}

/// Removes the pod's interface `ifname` in `netns` when it is netstack's kind for `mode`
/// (`tun` for a TAP, `veth`, a `dummy` with netstack's alias for a VM pod); returns whether
/// one was removed. A netns that is gone has none.
fn remove_pod_link(netns: &Path, ifname: &str, mode: LinkMode) -> anyhow::Result<bool> {
    let need_alias = mode == LinkMode::VhostUser;
    if !netns.exists() {
        return Ok(false);
    }
    let ifname = ifname.to_owned();
    let removed = crate::netns::run_in_netns(netns, move || {
        let nl = crate::netlink::Netlink::new()?;
        match nl.link_info(&ifname)? {
            Some(i)
                if mode.is_device_kind(i.kind.as_deref())
                    && (!need_alias || i.alias.as_deref() == Some(crate::control::VETH_ALIAS)) =>
            {
                nl.del_link(&ifname)
            }
            _ => Ok(false),
        }
    })??;
    Ok(removed)
}

/// One host-local reservation: a file named by the address in `<dir>/<network>/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Reservation {
    network: String,
    ip: std::net::IpAddr,
    container_id: String,
    ifname: String,
    /// Whether netstackd has an attachment of this (container id, ifname).
    attached: bool,
}

/// `ctl ipam`'s view: every reservation (with whether it is attached) and the attachments
/// that have none.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct IpamView {
    reservations: Vec<Reservation>,
    unreserved: Vec<AttachmentKey>,
}

/// host-local's reservations under `dir` (every network); `lock` and `last_reserved_ip.N`
/// are not reservations. A missing `dir` has none.
fn read_reservations(dir: &Path) -> anyhow::Result<Vec<Reservation>> {
    let mut found = Vec::new();
    let networks = match std::fs::read_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e.into()),
    };
    for network in networks.flatten() {
        if !network.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = network.file_name().to_string_lossy().into_owned();
        for entry in std::fs::read_dir(network.path())?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Ok(ip) = file.parse::<std::net::IpAddr>() else {
                continue;
            };
            let content = std::fs::read_to_string(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?;
            let (container_id, ifname) = parse_reservation(&content);
            found.push(Reservation {
                network: name.clone(),
                ip,
                container_id,
                ifname,
                attached: false,
            });
        }
    }
    found.sort_by(|a, b| (&a.network, a.ip).cmp(&(&b.network, b.ip)));
    Ok(found)
}

/// A reservation file's (container id, ifname); before host-local 0.8 it held only the id
/// (then the ifname is eth0).
fn parse_reservation(content: &str) -> (String, String) {
    let mut lines = content.lines().map(str::trim);
    let id = lines.next().unwrap_or_default().to_owned();
    let ifname = lines.next().filter(|l| !l.is_empty()).unwrap_or("eth0");
    (id, ifname.to_owned())
}

/// Puts reservations beside attachments: a reservation is attached when netstackd has its
/// (container id, ifname); an attachment with no reservation is listed apart.
fn ipam_view(reservations: &[Reservation], pods: &[PodInfo]) -> IpamView {
    let reservations: Vec<Reservation> = reservations
        .iter()
        .map(|r| Reservation {
            attached: pods
                .iter()
                .any(|p| p.key.container_id == r.container_id && p.key.ifname == r.ifname),
            ..r.clone()
        })
        .collect();
    let unreserved = pods
        .iter()
        .filter(|p| {
            !reservations
                .iter()
                .any(|r| p.key.container_id == r.container_id && p.key.ifname == r.ifname)
        })
        .map(|p| p.key.clone())
        .collect();
    IpamView {
        reservations,
        unreserved,
    }
}

/// The attachments whose netns is gone (`is_netns` says no).
fn gone_pods(pods: Vec<PodInfo>, is_netns: impl Fn(&Path) -> bool) -> Vec<PodInfo> {
    pods.into_iter().filter(|p| !is_netns(&p.netns)).collect()
}

fn join_or<T: ToString>(items: &[T], none: &str) -> String {
    if items.is_empty() {
        none.into()
    } else {
        items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
    }
}

/// `ctl node`'s table: node mode's settings and health, then the routes it installed. `now`
/// is the client's clock (seconds since the epoch), for the last sync's age.
/// The masquerade row of `ctl node`, whether node mode is on or off.
fn masquerade_row(s: &NodeStatus) -> Vec<String> {
    let state = if s.masquerade {
        format!(
            "on, tables {}",
            join_or(&s.masquerade_tables, "none written")
        )
    } else {
        "off".into()
    };
    vec!["masquerade".into(), state]
}

/// The forward-accept row of `ctl node`.
fn forward_row(s: &NodeStatus) -> Vec<String> {
    let state = if s.forward_accept {
        format!("on, pod CIDRs {}", join_or(&s.forward_rules, "none"))
    } else {
        "off".into()
    };
    vec!["forward accept".into(), state]
}

fn node_table(s: &NodeStatus, now: u64) -> String {
    if !s.enabled {
        let mut out = String::from(
            "node mode is off (no --nodes-file or --kube): no host-gw routes are managed\n",
        );
        out += &table(vec![masquerade_row(s), forward_row(s)]);
        return out;
    }
    let ready = s.health.iter().all(|c| c.ok);
    let health: Vec<String> = s
        .health
        .iter()
        .map(|c| format!("{}: {}", c.what, c.detail))
        .collect();
    let rows = vec![
        vec!["node".into(), s.node_name.clone()],
        vec!["source".into(), s.source.clone()],
        vec!["pod CIDRs".into(), join_or(&s.pod_cidrs, "none")],
        masquerade_row(s),
        vec!["no-masquerade".into(), join_or(&s.no_masquerade, "none")],
        forward_row(s),
        vec![
            "health".into(),
            format!(
                "{} ({})",
                if ready { "ready" } else { "NOT READY" },
                health.join("; ")
            ),
        ],
        vec![
            "last sync".into(),
            s.last_sync_unix.map_or("never".into(), |t| {
                format!("{}s ago", now.saturating_sub(t))
            }),
        ],
        vec![
            "last error".into(),
            s.last_error.clone().unwrap_or_else(|| "none".into()),
        ],
    ];
    let mut out = table(rows);
    out.push('\n');
    let mut routes = vec![["NODE", "CIDR", "VIA"].map(String::from).to_vec()];
    for r in &s.routes {
        let node = if r.node.is_empty() { "-" } else { &r.node };
        routes.push(vec![node.into(), r.cidr.to_string(), r.via.to_string()]);
    }
    out += &table(routes);
    out
}

/// Copies records from the capture pipe into a pcap file until `count` frames, `duration_s`
/// seconds, or the daemon ends the capture. Returns the frames written and those `filter`
/// dropped here (a daemon that filters sends none of those).
fn capture_to(
    pipe: OwnedFd,
    path: &str,
    snaplen: u32,
    count: u64,
    duration_s: u64,
    filter: &CaptureFilter,
) -> anyhow::Result<(u64, u64)> {
    let mut sink: Box<dyn Write> = if path == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
        ))
    };
    sink.write_all(&pcap::file_header(snaplen))?;
    let deadline = (duration_s > 0).then(|| Instant::now() + Duration::from_secs(duration_s));
    let mut written = 0;
    let mut filtered_here = 0;
    let mut pipe_file = std::fs::File::from(pipe);
    let mut record = vec![0u8; RECORD_HEADER_LEN + MAX_CAPTURE_SNAPLEN as usize];
    while count == 0 || written < count {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let mut fds = [nix::poll::PollFd::new(
                pipe_file.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(
                &mut fds,
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
            ) {
                Ok(0) => break,
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let (hdr, rest) = record.split_at_mut(RECORD_HEADER_LEN);
        match pipe_file.read_exact(hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let incl = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        if incl > rest.len() {
            bail!("corrupt capture record ({incl} bytes)");
        }
        pipe_file.read_exact(&mut rest[..incl])?;
        if !filter.matches(&rest[..incl]) {
            filtered_here += 1;
            continue;
        }
        sink.write_all(&record[..RECORD_HEADER_LEN + incl])?;
        written += 1;
    }
    sink.flush()?;
    Ok((written, filtered_here))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{NodeCheck, NodeRoute};

    #[test]
    fn reservation_files_of_every_host_local_version_parse() {
        // (what, content, id, ifname)
        let cases = [
            (
                "host-local >= 0.8: id CRLF ifname",
                "c1\r\neth1",
                "c1",
                "eth1",
            ),
            ("before 0.8: the id only", "c2", "c2", "eth0"),
            ("a trailing newline", "c3\nnet0\n", "c3", "net0"),
        ];
        for (what, content, id, ifname) in cases {
            assert_eq!(
                parse_reservation(content),
                (id.to_owned(), ifname.to_owned()),
                "{what}"
            );
        }
    }

    #[test]
    fn ipam_names_leaks_both_ways() {
        let pod = |id: &str| -> PodInfo {
            serde_json::from_value(serde_json::json!({
                "container_id": id, "ifname": "eth0", "netns": "/run/netns/x",
                "mac": "0a:58:0a:f4:01:05", "ips": [], "mode": "tap", "state": "serving", "labels": {},
            }))
            .unwrap()
        };
        let res = |ip: &str, id: &str, ifname: &str| Reservation {
            network: "n".into(),
            ip: ip.parse().unwrap(),
            container_id: id.into(),
            ifname: ifname.into(),
            attached: false,
        };
        let view = ipam_view(
            &[
                res("10.0.0.2", "a", "eth0"),
                res("10.0.0.3", "gone", "eth0"),
                res("10.0.0.4", "b", "eth1"),
            ],
            &[pod("a"), pod("b")],
        );
        let attached: Vec<bool> = view.reservations.iter().map(|r| r.attached).collect();
        assert_eq!(
            attached,
            [true, false, false],
            "b's reservation is another ifname's"
        );
        let unreserved: Vec<String> = view.unreserved.iter().map(|k| k.to_string()).collect();
        assert_eq!(unreserved, ["b/eth0"]);
    }

    #[test]
    fn gc_picks_only_the_attachments_whose_netns_is_gone() {
        let pod = |id: &str, netns: &str| -> PodInfo {
            serde_json::from_value(serde_json::json!({
                "container_id": id, "ifname": "eth0", "netns": netns,
                "mac": "0a:58:0a:f4:01:05", "ips": [], "mode": "tap", "state": "serving", "labels": {},
            }))
            .unwrap()
        };
        let pods = vec![pod("a", "/run/netns/a"), pod("b", "/run/netns/b")];
        let gone = gone_pods(pods, |p| p != Path::new("/run/netns/b"));
        let ids: Vec<&str> = gone.iter().map(|p| p.key.container_id.as_str()).collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn node_table_says_when_node_mode_is_off() {
        let off = NodeStatus {
            source: "none".into(),
            masquerade: true,
            masquerade_tables: vec!["ip netstack".into()],
            ..Default::default()
        };
        let text = node_table(&off, 0);
        assert!(text.starts_with("node mode is off"), "{text}");
        assert!(
            text.contains("masquerade      on, tables ip netstack"),
            "{text}"
        );
        assert!(text.contains("forward accept  off"), "{text}");
    }

    #[test]
    fn node_table_lists_routes_health_and_the_last_sync() {
        let on = NodeStatus {
            enabled: true,
            source: "file /etc/nodes.json".into(),
            node_name: "a".into(),
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            routes: vec![
                NodeRoute {
                    node: "b".into(),
                    cidr: "10.244.2.0/24".parse().unwrap(),
                    via: "192.168.1.2".parse().unwrap(),
                },
                NodeRoute {
                    node: String::new(),
                    cidr: "10.244.3.0/24".parse().unwrap(),
                    via: "192.168.1.3".parse().unwrap(),
                },
            ],
            masquerade: false,
            forward_accept: true,
            forward_rules: vec!["10.244.1.0/24".parse().unwrap()],
            health: vec![NodeCheck {
                what: "routes".into(),
                ok: false,
                detail: "not synced".into(),
            }],
            last_sync_unix: Some(100),
            last_error: Some("egress masquerade: boom".into()),
            ..Default::default()
        };
        let text = node_table(&on, 130);
        for want in [
            "node            a\n",
            "source          file /etc/nodes.json\n",
            "pod CIDRs       10.244.1.0/24\n",
            "masquerade      off\n",
            "forward accept  on, pod CIDRs 10.244.1.0/24\n",
            "health          NOT READY (routes: not synced)\n",
            "last sync       30s ago\n",
            "last error      egress masquerade: boom\n",
            "NODE  CIDR           VIA\n",
            "b     10.244.2.0/24  192.168.1.2\n",
            "-     10.244.3.0/24  192.168.1.3\n",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }
}
