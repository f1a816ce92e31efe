#!/usr/bin/env python3
# Sums a `perf report --stdio --no-children --sort dso,symbol -g none` (on stdin) into kinds of
# work by symbol name, for e2e/bench/evals.sh netstackd --perf: the copies, the system call
# entry and exit, checksums, the qdisc, epoll and wakeups, the receive stack, and netstackd's
# own code. The first matching kind takes a symbol; the rest is "other".
import re
import sys

KINDS = [
    ("copies (copy_to/from_iter, memcpy)", r"copy_(to|from)_iter|memcpy|memmove|copy_page|copy_user|rep_mov|__check_object_size"),
    ("checksums", r"csum|checksum"),
    ("qdisc", r"qdisc|pfifo|sch_direct|dev_queue_xmit|dev_hard_start_xmit"),
    ("epoll, wakeups, scheduler", r"ep_|epoll|eventfd|wake|finish_task_switch|schedule|pick_next|dequeue_task|enqueue_task|update_curr"),
    ("system call entry/exit", r"do_syscall|entry_SYSCALL|syscall_exit|syscall_enter|__x64_sys|__sys_|fdget|fput|ksys_"),
    ("softirq, irq re-enable (work done when interrupts come back on)", r"handle_softirqs|_raw_spin_unlock_irqrestore|__do_softirq|irq_exit|do_softirq"),
    ("TAP driver (tun_*)", r"^tun_|tun_"),
    ("network stack (skb, tcp, ip, netif)", r"skb|tcp_|ip_|ipv6_|netif|napi|__netif|gro|inet_|sock_|dst_|neigh|eth_|nf_"),
    ("memory (alloc, free, pages)", r"alloc|free|kmem|page|slab|folio|kfree"),
]

totals = {name: 0.0 for name, _ in KINDS}
totals["netstackd's own code"] = 0.0
totals["other"] = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
    if not m:
        continue
    pct, dso, _, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if dso == "netstackd":
        totals["netstackd's own code"] += pct
        continue
    for name, rx in KINDS:
        if re.search(rx, sym):
            totals[name] += pct
            break
    else:
        totals["other"] += pct
for name, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f"  {pct:6.2f}%  {name}")
