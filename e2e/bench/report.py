#!/usr/bin/python3
"""Turns e2e/bench/run.sh's raw results (PATH<TAB>KEY<TAB>VALUE lines) into one table on stdout
and the same figures as JSON: every figure for every path (the median where a figure was
measured more than once, with its spread), netstack's ratio to the bridge plugin's figure and
to the floor's from the same run, the node's netfilter state, and the targets of issues 3 and
17 beside them (goals, not assertions). Standard library only (Debian's /usr/bin/python3)."""

import argparse
import json
import math
import os
import platform
import sys
from datetime import datetime, timezone

PATHS = ["tap", "veth", "bridge", "floor", "pasta", "pasta_1500", "slirp4netns", "slirp4netns_1500"]
NETSTACK = ["tap", "veth"]
PEERS = ["pasta", "pasta_1500", "slirp4netns", "slirp4netns_1500"]
SHORT = {"pasta_1500": "pasta1500", "slirp4netns": "slirp", "slirp4netns_1500": "slirp1500"}

# key, label, unit
FIGURES = [
    ("tcp1_p2p_gbps", "pod->pod TCP, 1 stream", "Gbit/s"),
    ("tcp4_p2p_gbps", "pod->pod TCP, 4 streams", "Gbit/s"),
    ("tcp1_p2n_gbps", "pod->node TCP, 1 stream", "Gbit/s"),
    ("tcp4_p2n_gbps", "pod->node TCP, 4 streams", "Gbit/s"),
    ("tcp1_n2p_gbps", "node->pod TCP, 1 stream (pasta: spliced port)", "Gbit/s"),
    ("udp64_tx_kpps", "UDP 64 B pod->pod, sent", "kpps"),
    ("udp64_rx_kpps", "UDP 64 B pod->pod, delivered", "kpps"),
    ("udp64_loss_pct", "UDP 64 B loss at full speed", "%"),
    ("udp64_half_loss_pct", "UDP 64 B loss at 1/2 bridge pps", "%"),
    ("rtt_min_us", "TCP 1 B ping-pong RTT, min", "us"),
    ("rtt_p50_us", "TCP 1 B ping-pong RTT, p50", "us"),
    ("rtt_p99_us", "TCP 1 B ping-pong RTT, p99", "us"),
    ("rtt_busy_p99_us", "TCP 1 B RTT p99, other CPU busy", "us"),
    ("crr_per_s", "TCP connect/request/close rate", "conn/s"),
    ("pairs_total_gbps", "pod pairs at once, total TCP", "Gbit/s"),
    ("pairs_jain", "pod pairs at once, Jain's fairness", "index"),
    ("cni_add_p50_ms", "CNI ADD latency, p50", "ms"),
    ("cni_add_p99_ms", "CNI ADD latency, p99", "ms"),
    ("ns_cpu_s_per_gbit", "netstackd CPU per Gbit (TCP runs)", "CPU-s"),
    ("ns_cpu_p2p_s_per_gbit", "forwarder CPU per Gbit, pod->pod TCP", "CPU-s"),
    ("sys_cpu_p2p_s_per_gbit", "machine CPU per Gbit, pod->pod TCP", "CPU-s"),
    ("sys_cpu_p2n_s_per_gbit", "machine CPU per Gbit, pod->node TCP", "CPU-s"),
    ("rss_per_pod_kib", "netstackd RSS per attached pod (added)", "KiB"),
    ("rss_avg_per_pod_kib", "netstackd RSS / attached pods", "KiB"),
    ("rss_total_mib", "netstackd RSS with the idle pods", "MiB"),
    ("idle_cpu_pct", "netstackd idle CPU with the idle pods", "% CPU"),
]
WIRE = ["tcp1_p2p_gbps", "tcp4_p2p_gbps", "udp64_tx_kpps", "udp64_rx_kpps", "udp64_loss_pct",
        "udp64_half_loss_pct", "rtt_min_us", "rtt_p50_us", "rtt_p99_us", "rtt_busy_p99_us",
        "crr_per_s", "sys_cpu_p2p_s_per_gbit"]
P2P = WIRE + ["cni_add_p50_ms", "cni_add_p99_ms"]
P2N = ["tcp1_p2n_gbps", "tcp4_p2n_gbps", "sys_cpu_p2n_s_per_gbit"]
N2P = ["tcp1_n2p_gbps"]  # pasta: through the port it forwards (its splice path); not slirp
PAIRS = ["pairs_total_gbps", "pairs_jain"]
EXPECTED = {
    "tap": P2P + P2N + N2P + PAIRS + ["ns_cpu_s_per_gbit", "ns_cpu_p2p_s_per_gbit", "rss_per_pod_kib",
                                "rss_avg_per_pod_kib", "rss_total_mib", "idle_cpu_pct"],
    "veth": P2P + P2N + N2P + ["ns_cpu_s_per_gbit", "ns_cpu_p2p_s_per_gbit"],
    "bridge": P2P + P2N + N2P + PAIRS,
    # Pod to pod between two TAPs; pod to node through a TUN (nsbench floor --node-tun).
    "floor": WIRE + P2N + N2P + ["ns_cpu_p2p_s_per_gbit"],
    **{peer: P2N + (N2P if peer.startswith("pasta") else []) for peer in PEERS},
}
# Multiples of netstack's pod-to-node throughput over the userspace peers.
MULTIPLES = [(f"vs_{peer}_{k}", f"pod->node TCP, {n} / {peer}", peer, f"{k}_gbps")
             for k, n in (("tcp1_p2n", "1 stream"), ("tcp4_p2n", "4 streams"))
             for peer in PEERS]
# Figures read against the floor's (netstack / floor).
VS_FLOOR = ["ns_cpu_p2p_s_per_gbit", "sys_cpu_p2p_s_per_gbit", "tcp1_p2p_gbps", "tcp4_p2p_gbps",
            "tcp1_p2n_gbps", "tcp4_p2n_gbps", "tcp1_n2p_gbps", "sys_cpu_p2n_s_per_gbit",
            "udp64_rx_kpps", "rtt_min_us", "rtt_p50_us", "rtt_p99_us", "crr_per_s"]

def cpu_model():
    """The CPU's model name from /proc/cpuinfo (None where it has none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def ratio_goal(minimum):
    return lambda v, b: None if v is None or not b else v / b >= minimum


def ratio_cap(maximum):
    return lambda v, b: None if v is None or not b else v / b <= maximum


# key: (goal text, check(value, reference value) -> bool | None); the reference is the
# bridge's figure unless REFERENCE names another path.
TARGETS = {
    "tcp1_p2p_gbps": (">= 0.9x bridge", ratio_goal(0.9)),
    "tcp4_p2p_gbps": (">= 0.7x bridge", ratio_goal(0.7)),
    "tcp1_p2n_gbps": (">= 0.85x kernel", ratio_goal(0.85)),
    "tcp4_p2n_gbps": (">= 0.8x kernel", ratio_goal(0.8)),
    "udp64_rx_kpps": (">= 1.0x bridge", ratio_goal(1.0)),
    "udp64_half_loss_pct": ("< 1 %", lambda v, b: None if v is None else v < 1.0),
    "rtt_min_us": ("bridge + <= 8 us", lambda v, b: None if v is None or b is None else v - b <= 8.0),
    "rtt_p50_us": ("bridge + <= 8 us", lambda v, b: None if v is None or b is None else v - b <= 8.0),
    "rtt_p99_us": ("<= 1.1x bridge", ratio_cap(1.1)),
    "cni_add_p50_ms": ("<= bridge", lambda v, b: None if v is None or b is None else v <= b),
    "cni_add_p99_ms": ("<= 1.5x bridge", ratio_cap(1.5)),
    "rss_per_pod_kib": ("<= 1024 KiB", lambda v, b: None if v is None else v <= 1024),
    "idle_cpu_pct": ("< 1 %", lambda v, b: None if v is None else v < 1.0),
    # issue 17
    "rtt_busy_p99_us": ("<= 1.1x bridge", ratio_cap(1.1)),
    "crr_per_s": (">= 0.9x bridge", ratio_goal(0.9)),
    "pairs_total_gbps": (">= 0.7x bridge", ratio_goal(0.7)),
    "pairs_jain": (">= 0.9", lambda v, b: None if v is None else v >= 0.9),
    "ns_cpu_p2p_s_per_gbit": ("<= 1.25x floor", ratio_cap(1.25)),
    "sys_cpu_p2p_s_per_gbit": ("<= 1.5x bridge", ratio_cap(1.5)),
}
REFERENCE = {"ns_cpu_p2p_s_per_gbit": "floor"}
for _key, _label, _peer, _fig in MULTIPLES:
    TARGETS[_key] = (">= 5x", lambda v, b: None if v is None else v >= 5.0)


def num(s):
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def load(path):
    """Reads the results; a figure measured more than once becomes its median, and its runs
    go to `spread` ([min, max, runs]); a detail measured more than once is summed (CPU seconds
    and Gbit add up over runs)."""
    paths = {p: {"supported": True, "reason": None, "notes": [], "figures": {}, "detail": {},
                 "spread": {}} for p in PATHS}
    extra = {"notes": [], "detail": {}, "netfilter": {}, "node": {}}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3:
                continue
            p, key, value = parts
            if p in ("netfilter", "node"):
                extra[p][key] = value
                continue
            entry = paths.get(p, extra)
            if key == "_na":
                entry["supported"] = False
                entry["reason"] = value
            elif key == "_note":
                entry["notes"].append(value)
            elif key.startswith("_"):
                v, old = num(value), entry["detail"].get(key[1:])
                summed = key.endswith("_cpu_s") or key.endswith("_gbit")
                entry["detail"][key[1:]] = v + old if summed and v is not None and old is not None else v
            else:
                entry["figures"].setdefault(key, []).append(num(value))
    for e in paths.values():
        for key, runs in e["figures"].items():
            good = [v for v in runs if v is not None]
            e["figures"][key] = median(good) if good else None
            if len(good) > 1:
                e["spread"][key] = [min(good), max(good), len(good)]
    return paths, extra


def per_gbit(detail, keys, cpu):
    cpu_s = [detail.get(f"{k}_{cpu}_cpu_s") for k in keys]
    gbit = [detail.get(f"{k}_gbit") for k in keys]
    pairs = [(c, g) for c, g in zip(cpu_s, gbit) if c is not None and g]
    if not pairs:
        return None
    return sum(c for c, _ in pairs) / sum(g for _, g in pairs)


def derive(paths):
    tcp_p2p = ["tcp1_p2p", "tcp4_p2p"]
    tcp_p2n = ["tcp1_p2n", "tcp4_p2n"]
    for p, e in paths.items():
        d, f = e["detail"], e["figures"]
        if p in NETSTACK:
            f["ns_cpu_s_per_gbit"] = per_gbit(d, tcp_p2p + tcp_p2n, "ns")
        if p in NETSTACK + ["floor"]:
            f["ns_cpu_p2p_s_per_gbit"] = per_gbit(d, tcp_p2p, "ns")
        f["sys_cpu_p2p_s_per_gbit"] = per_gbit(d, tcp_p2p, "sys")
        f["sys_cpu_p2n_s_per_gbit"] = per_gbit(d, tcp_p2n, "sys")


def fmt(v, unit=""):
    if v is None:
        return "-"
    a = abs(v)
    s = f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 else f"{v:.3f}"
    return s + unit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    for a in ("mode", "started", "load-before", "load-after", "git"):
        ap.add_argument(f"--{a}", default="")
    for a in ("duration", "add-pods", "idle-pods", "idle-seconds", "runs", "pairs"):
        ap.add_argument(f"--{a}", type=int, default=0)
    args = ap.parse_args()

    paths, extra = load(args.results)
    derive(paths)

    def val(p, k):
        e = paths[p]
        return e["figures"].get(k) if e["supported"] else None

    ratios = {p: {} for p in NETSTACK}
    vs_floor = {p: {} for p in NETSTACK}
    for p in NETSTACK:
        for k in VS_FLOOR:
            v, f = val(p, k), val("floor", k)
            vs_floor[p][k] = v / f if v is not None and f else None
    multiples = {p: {} for p in NETSTACK + ["bridge"]}
    for p in NETSTACK:
        for k, _, _ in FIGURES:
            v, b = val(p, k), val("bridge", k)
            ratios[p][k] = v / b if v is not None and b else None
    for p in multiples:
        for key, _, peer, fig in MULTIPLES:
            v, b = val(p, fig), val(peer, fig)
            multiples[p][key] = v / b if v is not None and b else None

    targets = {}
    for k, (goal, check) in TARGETS.items():
        t = {"goal": goal}
        for p in NETSTACK:
            if k in multiples[p]:
                t[p] = check(multiples[p][k], None) if paths[p]["supported"] else None
            else:
                ref = val(REFERENCE.get(k, "bridge"), k)
                t[p] = check(val(p, k), ref) if paths[p]["supported"] else None
        targets[k] = t

    out_paths = {}
    for p in PATHS:
        e = paths[p]
        o = {"supported": e["supported"], "reason": e["reason"], "notes": e["notes"]}
        if e["supported"]:
            for k in EXPECTED[p]:
                o[k] = e["figures"].get(k)
        o["detail"] = e["detail"]
        o["spread"] = e["spread"]
        out_paths[p] = o

    doc = {
        "schema": 1,
        "started": args.started,
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": args.mode,
        "duration_s": args.duration,
        "cni_add_pods": args.add_pods,
        "idle_pods": args.idle_pods,
        "idle_seconds": args.idle_seconds,
        "machine": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            # Sessions land on different hosts: the CPU model says which one a run had.
            "cpu_model": cpu_model(),
            "loadavg_before": args.load_before,
            "loadavg_after": args.load_after,
            "git": args.git,
        },
        "runs": args.runs,
        "pairs": args.pairs,
        "netfilter": extra["netfilter"],
        "node": extra["node"],
        "udp64_half_pps": extra["detail"].get("udp64_half_pps"),
        "notes": extra["notes"],
        "paths": out_paths,
        "ratios_to_bridge": ratios,
        "ratios_to_floor": vs_floor,
        "multiples": multiples,
        "targets": targets,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)

    # The table.
    def met(k):
        t = targets.get(k)
        if not t:
            return ""
        return "/".join({True: "yes", False: "no", None: "-"}[t[p]] for p in NETSTACK)

    def cell(p, k):
        if not paths[p]["supported"]:
            return "n/a"
        sp = paths[p]["spread"].get(k)
        return fmt(val(p, k)) + (f" ({fmt(sp[0])}-{fmt(sp[1])})" if sp else "")

    head = ["figure", "unit"] + [SHORT.get(p, p) for p in PATHS] + ["tap/br", "veth/br", "tap/floor",
                                                                    "target", "met tap/veth"]
    nratio = 3
    rows = []
    for k, label, unit in FIGURES:
        if k.startswith("pairs_"):
            label = f"{args.pairs} {label}"
        cells = [label, unit] + [cell(p, k) for p in PATHS]
        cells += [fmt(ratios[p][k], "x") if ratios[p][k] is not None else "" for p in NETSTACK]
        cells += [fmt(vs_floor["tap"][k], "x") if vs_floor["tap"].get(k) is not None else ""]
        goal = TARGETS[k][0] if k in TARGETS else ""
        if k in ("rtt_min_us", "rtt_p50_us"):
            added = [val(p, k) - val("bridge", k) if val(p, k) is not None and val("bridge", k) is not None
                     else None for p in NETSTACK]
            at = 2 + len(PATHS)
            cells[at:at + 2] = [f"{a:+.1f}us" if a is not None else "" for a in added]
        rows.append(cells + [goal, met(k)])
    for key, label, peer, fig in MULTIPLES:
        cells = [label, "x"] + [fmt(multiples[p][key], "x") if p in multiples else "" for p in PATHS]
        rows.append(cells + [""] * nratio + [TARGETS[key][0], met(key)])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    last_number = 2 + len(PATHS) + nratio

    def line(cells):
        return "  ".join(str(c).ljust(w) if i < 2 or i >= last_number else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print()
    print(f"netstack benchmark ({args.mode}: {args.duration} s runs, headline rows {args.runs}x"
          f" (median, spread in brackets), CNI ADD over {args.add_pods} pods, {args.idle_pods} idle pods;"
          f" {os.cpu_count()} CPUs, load {args.load_before} -> {args.load_after})")
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    nf = extra["netfilter"]
    if nf:
        print("netfilter: " + ", ".join(f"{k} {v}" for k, v in nf.items()))
    if extra["node"]:
        print("node: " + ", ".join(f"{k} {v}" for k, v in extra["node"].items()))
    for p in PATHS:
        e = paths[p]
        if not e["supported"]:
            print(f"{p}: n/a ({e['reason']})")
        for n in e["notes"]:
            print(f"{p}: {n}")
    for n in extra["notes"]:
        print(f"note: {n}")
    print("Targets are goals, not assertions. '-': not measured on that path; n/a: path unavailable."
          " Machine CPU counts everything running on the machine. floor: nsbench floor, the simplest"
          " TAP<->TAP forwarder; pasta, slirp: MTU 65520 as podman runs them; pasta1500, slirp1500: MTU 1500.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
