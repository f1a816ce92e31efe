//! `netstackd ctl`: the operator's view of a running netstackd over its control socket —
//! `status`, `list`, `stats [POD]`, `capture POD`, `metrics`, `release POD`. Tables for people by default,
//! `--json` for scripts (the JSON is the control protocol's, documented in the README).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::control::{
    AttachmentKey, CaptureRequest, Client, Counters, PodInfo, Reply, Request, MAX_CAPTURE_SNAPLEN,
};
use crate::dataplane::capture::{pcap_file_header, RECORD_HEADER_LEN};

/// What `ctl` is asked to do.
#[derive(Debug, Clone)]
pub enum CtlCommand {
    /// Daemon status.
    Status,
    /// Attached pods.
    List,
    /// Counters of every pod, or of one.
    Stats {
        /// Container id, a unique prefix of one, or namespace/name.
        pod: Option<String>,
    },
    /// Capture a pod's frames into a pcap file.
    Capture {
        /// Container id, a unique prefix of one, or namespace/name.
        pod: String,
        /// The pod interface.
        ifname: String,
        /// Output file; "-" for stdout.
        write: String,
        /// Stop after this many frames (0: no limit but the daemon's).
        count: u64,
        /// Stop after this many seconds (0: no limit but the daemon's).
        duration_s: u64,
        /// Bytes kept per frame.
        snaplen: u32,
    },
    /// Prometheus text.
    Metrics,
    /// Take a pod out of quarantine.
    Release {
        /// Container id, a unique prefix of one, or namespace/name.
        pod: String,
        /// The pod interface.
        ifname: String,
    },
}

fn call(client: &mut Client, req: &Request) -> anyhow::Result<(Reply, Vec<OwnedFd>)> {
    let (reply, fds) = client.call_with_fds(req, &[])?;
    if let Reply::Error { message } = reply {
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
                        p.mode.clone(),
                        p.state.clone(),
                        p.netns.display().to_string(),
                    ]);
                }
                write!(out, "{}", table(rows))?;
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
        } => {
            drop(out);
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
            });
            let (_, fds) = call(&mut client, &req)?;
            let pipe = fds
                .into_iter()
                .next()
                .context("netstackd sent no capture pipe")?;
            let n = capture_to(pipe, &write, snaplen, count, duration_s)?;
            eprintln!("netstackd ctl: {n} frames captured");
        }
    }
    Ok(())
}

/// Copies records from the capture pipe into a pcap file until `count` frames, `duration_s`
/// seconds, or the daemon ends the capture. Returns the frames written.
fn capture_to(
    pipe: OwnedFd,
    path: &str,
    snaplen: u32,
    count: u64,
    duration_s: u64,
) -> anyhow::Result<u64> {
    let mut sink: Box<dyn Write> = if path == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
        ))
    };
    sink.write_all(&pcap_file_header(snaplen))?;
    let deadline = (duration_s > 0).then(|| Instant::now() + Duration::from_secs(duration_s));
    let mut written = 0;
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
        sink.write_all(&record[..RECORD_HEADER_LEN + incl])?;
        written += 1;
    }
    sink.flush()?;
    Ok(written)
}
