#!/usr/bin/python3
"""Turns e2e/bench/run.sh's raw results (PATH<TAB>KEY<TAB>VALUE lines) into one table on stdout
and the same figures as JSON: every figure for every path, netstack's ratio to the bridge
plugin's figure from the same run, and the targets of issue 3 beside them (goals, not
assertions). Standard library only (Debian's /usr/bin/python3)."""

import argparse
import json
import math
import os
import platform
import sys
from datetime import datetime, timezone

PATHS = ["tap", "veth", "bridge", "pasta", "slirp4netns"]
NETSTACK = ["tap", "veth"]

# key, label, unit
FIGURES = [
    ("tcp1_p2p_gbps", "pod->pod TCP, 1 stream", "Gbit/s"),
    ("tcp4_p2p_gbps", "pod->pod TCP, 4 streams", "Gbit/s"),
    ("tcp1_p2n_gbps", "pod->node TCP, 1 stream", "Gbit/s"),
    ("tcp4_p2n_gbps", "pod->node TCP, 4 streams", "Gbit/s"),
    ("udp64_tx_kpps", "UDP 64 B pod->pod, sent", "kpps"),
    ("udp64_rx_kpps", "UDP 64 B pod->pod, delivered", "kpps"),
    ("udp64_loss_pct", "UDP 64 B loss at full speed", "%"),
    ("udp64_half_loss_pct", "UDP 64 B loss at 1/2 bridge pps", "%"),
    ("rtt_min_us", "TCP 1 B ping-pong RTT, min", "us"),
    ("rtt_p50_us", "TCP 1 B ping-pong RTT, p50", "us"),
    ("rtt_p99_us", "TCP 1 B ping-pong RTT, p99", "us"),
    ("cni_add_p50_ms", "CNI ADD latency, p50", "ms"),
    ("cni_add_p99_ms", "CNI ADD latency, p99", "ms"),
    ("ns_cpu_s_per_gbit", "netstackd CPU per Gbit (TCP runs)", "CPU-s"),
    ("sys_cpu_p2p_s_per_gbit", "machine CPU per Gbit, pod->pod TCP", "CPU-s"),
    ("sys_cpu_p2n_s_per_gbit", "machine CPU per Gbit, pod->node TCP", "CPU-s"),
    ("rss_per_pod_kib", "netstackd RSS per attached pod (added)", "KiB"),
    ("rss_avg_per_pod_kib", "netstackd RSS / attached pods", "KiB"),
    ("rss_total_mib", "netstackd RSS with the idle pods", "MiB"),
    ("idle_cpu_pct", "netstackd idle CPU with the idle pods", "% CPU"),
]
P2P = ["tcp1_p2p_gbps", "tcp4_p2p_gbps", "udp64_tx_kpps", "udp64_rx_kpps", "udp64_loss_pct",
       "udp64_half_loss_pct", "rtt_min_us", "rtt_p50_us", "rtt_p99_us", "cni_add_p50_ms",
       "cni_add_p99_ms", "sys_cpu_p2p_s_per_gbit"]
P2N = ["tcp1_p2n_gbps", "tcp4_p2n_gbps", "sys_cpu_p2n_s_per_gbit"]
EXPECTED = {
    "tap": P2P + P2N + ["ns_cpu_s_per_gbit", "rss_per_pod_kib", "rss_avg_per_pod_kib", "rss_total_mib", "idle_cpu_pct"],
    "veth": P2P + P2N + ["ns_cpu_s_per_gbit"],
    "bridge": P2P + P2N,
    "pasta": P2N,
    "slirp4netns": P2N,
}
# Multiples of netstack's pod-to-node throughput over the userspace peers.
MULTIPLES = [(f"vs_{peer}_{k}", f"pod->node TCP, {n} / {peer}", peer, f"{k}_gbps")
             for k, n in (("tcp1_p2n", "1 stream"), ("tcp4_p2n", "4 streams"))
             for peer in ("pasta", "slirp4netns")]


def ratio_goal(minimum):
    return lambda v, b: None if v is None or not b else v / b >= minimum


# key: (goal text, check(value, bridge value) -> bool | None)
TARGETS = {
    "tcp1_p2p_gbps": (">= 0.9x bridge", ratio_goal(0.9)),
    "tcp4_p2p_gbps": (">= 0.7x bridge", ratio_goal(0.7)),
    "tcp1_p2n_gbps": (">= 0.8x kernel", ratio_goal(0.8)),
    "tcp4_p2n_gbps": (">= 0.8x kernel", ratio_goal(0.8)),
    "udp64_rx_kpps": (">= 0.5x bridge", ratio_goal(0.5)),
    "udp64_half_loss_pct": ("< 1 %", lambda v, b: None if v is None else v < 1.0),
    "rtt_min_us": ("bridge + <= 10 us",
                   lambda v, b: None if v is None or b is None else v - b <= 10.0),
    "cni_add_p50_ms": ("<= bridge", lambda v, b: None if v is None or b is None else v <= b),
    "rss_per_pod_kib": ("<= 1024 KiB", lambda v, b: None if v is None else v <= 1024),
    "idle_cpu_pct": ("< 1 %", lambda v, b: None if v is None else v < 1.0),
}
for _key, _label, _peer, _fig in MULTIPLES:
    TARGETS[_key] = (">= 5x", lambda v, b: None if v is None else v >= 5.0)


def num(s):
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def load(path):
    paths = {p: {"supported": True, "reason": None, "notes": [], "figures": {}, "detail": {}}
             for p in PATHS}
    extra = {"notes": [], "detail": {}}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3:
                continue
            p, key, value = parts
            entry = paths.get(p, extra)
            if key == "_na":
                entry["supported"] = False
                entry["reason"] = value
            elif key == "_note":
                entry["notes"].append(value)
            elif key.startswith("_"):
                entry["detail"][key[1:]] = num(value)
            else:
                entry["figures"][key] = num(value)
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
    for a in ("duration", "add-pods", "idle-pods", "idle-seconds"):
        ap.add_argument(f"--{a}", type=int, default=0)
    args = ap.parse_args()

    paths, extra = load(args.results)
    derive(paths)

    def val(p, k):
        e = paths[p]
        return e["figures"].get(k) if e["supported"] else None

    ratios = {p: {} for p in NETSTACK}
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
                t[p] = check(val(p, k), val("bridge", k)) if paths[p]["supported"] else None
        targets[k] = t

    out_paths = {}
    for p in PATHS:
        e = paths[p]
        o = {"supported": e["supported"], "reason": e["reason"], "notes": e["notes"]}
        if e["supported"]:
            for k in EXPECTED[p]:
                o[k] = e["figures"].get(k)
        o["detail"] = e["detail"]
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
            "loadavg_before": args.load_before,
            "loadavg_after": args.load_after,
            "git": args.git,
        },
        "udp64_half_pps": extra["detail"].get("udp64_half_pps"),
        "notes": extra["notes"],
        "paths": out_paths,
        "ratios_to_bridge": ratios,
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

    head = ["figure", "unit", "tap", "veth", "bridge", "pasta", "slirp", "tap/br", "veth/br",
            "target", "met tap/veth"]
    rows = []
    for k, label, unit in FIGURES:
        cells = [label, unit] + [fmt(val(p, k)) if paths[p]["supported"] else "n/a" for p in PATHS]
        cells += [fmt(ratios[p][k], "x") if ratios[p][k] is not None else "" for p in NETSTACK]
        goal = TARGETS[k][0] if k in TARGETS else ""
        if k == "rtt_min_us":
            added = [val(p, k) - val("bridge", k) if val(p, k) is not None and val("bridge", k) is not None
                     else None for p in NETSTACK]
            cells[7:9] = [f"{a:+.1f}us" if a is not None else "" for a in added]
        rows.append(cells + [goal, met(k)])
    for key, label, peer, fig in MULTIPLES:
        cells = [label, "x"] + [fmt(multiples[p][key], "x") if p in multiples else "" for p in PATHS]
        rows.append(cells + ["", "", TARGETS[key][0], met(key)])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) if i < 9 else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print()
    print(f"netstack benchmark ({args.mode}: {args.duration} s runs, CNI ADD over {args.add_pods} pods,"
          f" {args.idle_pods} idle pods; {os.cpu_count()} CPUs, load {args.load_before} -> {args.load_after})")
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    for p in PATHS:
        e = paths[p]
        if not e["supported"]:
            print(f"{p}: n/a ({e['reason']})")
        for n in e["notes"]:
            print(f"{p}: {n}")
    for n in extra["notes"]:
        print(f"note: {n}")
    print("Targets are goals, not assertions. '-': not measured on that path; n/a: path unavailable."
          " Machine CPU counts everything running on the machine.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
