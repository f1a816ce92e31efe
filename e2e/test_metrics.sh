#!/usr/bin/env bash
# e2e: the metrics Prometheus scrapes from inside a cluster. netstackd runs in node mode (a
# nodes file naming this node and one other, masquerade on) with --metrics-addr on a
# non-loopback address of a veth, as the DaemonSet binds the node's address; the scrape
# over that address has netstack_build_info with the commit of HEAD, the supervisor's process_*
# series, the dataplane child's CPU and memory, and node mode's gauges. Then N known frames
# from pod A to pod B move A's netstack_pod_transmit_* and B's netstack_pod_receive_* by
# exactly N (and their bytes), as the pods' own interface counters (what cAdvisor reads) move,
# and nothing else: not the other directions, not the uplink, no drop series. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

PY=/usr/bin/python3 # Debian's, with python3-prometheus-client
LINK=nsm$((RUN_ID % 100000))
NODE_IP=10.99.$((RUN_ID % 200 + 20)).1
PEER_IP=${NODE_IP%.1}.2
OTHER_CIDR=10.245.$((RUN_ID % 200 + 20)).0/24
cleanup() {
  e2e_cleanup
  ip link del "$LINK" 2>/dev/null || true # its routes go with it
}
trap cleanup EXIT

mkdir -p "$WORK" "$STATE"
ip link add "$LINK" type veth peer name "${LINK}p"
ip addr add "$NODE_IP/24" dev "$LINK"
ip link set "$LINK" up && ip link set "${LINK}p" up
printf '{"nodes":[{"name":"node-m","podCIDRs":["%s"],"internalIPs":["%s"]},{"name":"node-o","podCIDRs":["%s"],"internalIPs":["%s"]}]}\n' \
  "$POD_CIDR" "$NODE_IP" "$OTHER_CIDR" "$PEER_IP" >"$WORK/nodes.json"

log "netstackd in node mode, metrics on $NODE_IP"
"$BIN/netstackd" --socket "$SOCK" --state-dir "$STATE" --pod-cidr "$POD_CIDR" --uplink "$UPLINK" \
  --metrics-addr "$NODE_IP:0" --dp-netns "$DP_NETNS" --masquerade=true --forward-accept=false \
  --uplink-mtu 1500 --node-name node-m --nodes-file "$WORK/nodes.json" --nodes-file-poll-ms 200 \
  --resync-secs 1 >>"$WORK/netstackd.log" 2>&1 &
NETSTACKD_PID=$!
check "netstackd starts with a non-loopback metrics address" eventually 20 test -S "$SOCK"
check "  ... and keeps running" kill -0 "$NETSTACKD_PID"
ADDR=$(ctl status | jq -r .metrics)
check "status names the metrics listener on $NODE_IP ($ADDR)" grep -q "^$NODE_IP:[0-9]" <<<"$ADDR"
check "the log warns that the listener is unauthenticated" grep -q 'not on loopback.*unauthenticated' "$WORK/netstackd.log"
check "/readyz answers 200 over $NODE_IP once the node list is synced" \
  eventually 20 sh -c "test \"\$(curl -s -o /dev/null -w '%{http_code}' http://$ADDR/readyz)\" = 200"
check "the other node's pod CIDR is routed via $PEER_IP" sh -c "ip route show $OTHER_CIDR | grep -q 'via $PEER_IP'"

# An IPv4-only node: the uplink has no IPv6, so the node's kernel sends nothing of its own
# (router solicitations, MLD reports) into netstack, and the uplink rows below stay at 0.
check "the IPv4-only uplink $UPLINK has IPv6 off (disable_ipv6 1)" test "$(cat /proc/sys/net/ipv6/conf/$UPLINK/disable_ipv6)" = 1
check "  ... and no link-local address" test -z "$(ip -6 addr show dev "$UPLINK")"
log "scrape over $ADDR"
COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD)
DP_PID=$(ctl status | jq -r .dataplane_pid)
$PY - "$ADDR" "$COMMIT" "$NETSTACKD_PID" "$DP_PID" >"$WORK/prom.out" 2>&1 <<'PY'
import os, sys, time, urllib.request
from prometheus_client.parser import text_string_to_metric_families
addr, commit, pid, dp_pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
fams = {f.name: f for f in text_string_to_metric_families(text)}
def one(name):
    # The parser names a counter's family without its _total suffix.
    f = fams.get(name) or fams.get(name.removesuffix("_total"))
    assert f is not None, f"no family {name}"
    assert len(f.samples) == 1, (name, f.samples)
    return f.samples[0]
def row(what, ok):
    print(("ok   " if ok else "FAIL ") + what)
b = one("netstack_build_info")
row(f"netstack_build_info 1 with commit {b.labels.get('commit')} (HEAD {commit})",
    b.value == 1 and b.labels.get("commit") == commit and b.labels.get("version", "") != "")
fds = len(os.listdir(f"/proc/{pid}/fd"))
v = one("process_open_fds").value
row(f"process_open_fds {v} > 0 (the supervisor has {fds} now)", v > 0 and abs(v - fds) <= 8)
v = one("process_max_fds").value
row(f"process_max_fds {v} >= process_open_fds", v >= one("process_open_fds").value)
v = one("process_resident_memory_bytes").value
row(f"process_resident_memory_bytes {v} > 1 MiB", v > 2**20)
v = one("process_cpu_seconds_total").value
row(f"process_cpu_seconds_total {v} >= 0", v >= 0 and fams["process_cpu_seconds"].type == "counter")
v = one("process_start_time_seconds").value
start = os.stat(f"/proc/{pid}").st_mtime  # about when the process's /proc entry appeared
row(f"process_start_time_seconds {v} is netstackd's start, not in the future",
    0 < v <= time.time() + 1 and abs(v - start) < 120)
v = one("netstack_dataplane_resident_memory_bytes").value
with open(f"/proc/{dp_pid}/status") as f:
    rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
row(f"netstack_dataplane_resident_memory_bytes {v} > 0, near the child's VmRSS ({rss})",
    v > 0 and abs(v - rss) < rss / 2)
v = one("netstack_dataplane_cpu_seconds_total").value
row(f"netstack_dataplane_cpu_seconds_total {v} >= 0", v >= 0)
row("netstack_node_watch_up 1", one("netstack_node_watch_up").value == 1)
row("netstack_node_routes_installed 1 (the other node)", one("netstack_node_routes_installed").value == 1)
row("netstack_node_masquerade_applied 1", one("netstack_node_masquerade_applied").value == 1)
row("netstack_node_sync_errors_total 0", one("netstack_node_sync_errors_total").value == 0)
v = one("netstack_node_last_sync_timestamp_seconds").value
row(f"netstack_node_last_sync_timestamp_seconds {v} is recent", time.time() - 120 < v <= time.time() + 1)
PY
while read -r state what; do
  case "$state" in
    ok) ok "$what" ;;
    *) fail "${what:-the scrape: $(tail -3 "$WORK/prom.out" | tr '\n' ' ')}" ;;
  esac
done <"$WORK/prom.out"
check "the scrape produced its rows" grep -q '^ok   netstack_node_watch_up' "$WORK/prom.out"

log "N frames from pod A to pod B: each counted once, at A's transmit and B's receive"
N=50
PAYLOAD=100
FRAME=$((14 + 20 + 8 + PAYLOAD)) # Ethernet + IPv4 + UDP headers: what the series count
write_conflist
A=mta-$RUN_ID
B=mtb-$RUN_ID
IP_A=$(add_pod "$A") && IP_B=$(add_pod "$B")
check "pods A ($IP_A) and B ($IP_B) attached" test -n "$IP_A" -a -n "$IP_B"
# Keep both pods quiet, so every counter change is ours (lib.sh).
quiet_pods "$A" "$IP_A" "$B" "$IP_B"
# link_series: every pod and uplink series as `NAME[:CONTAINER_ID] VALUE` lines; drop series
# of one link are added up under `NAME:ID` (or `NAME` for the uplink), whatever the reason.
link_series() {
  "$BIN/netstackd" ctl --socket "$SOCK" metrics | awk '
    /^netstack_(pod|uplink)_/ {
      split($1, a, "{"); key = a[1]
      if (match($1, /container_id="[^"]*"/)) key = key ":" substr($1, RSTART + 14, RLENGTH - 15)
      v[key] += $2
    }
    END { for (k in v) print k, v[k] }' | sort
}
# pod_if_stat POD tx|rx packets|bytes: the pod's own eth0 counter, which cAdvisor reads.
pod_if_stat() { in_pod "$1" cat "/sys/class/net/eth0/statistics/${2}_${3}"; }
# The receiver counts N datagrams (bounded: 20 s), so B's kernel answers nothing.
in_pod "$B" timeout 20 "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5001))
open(sys.argv[3], "w").close()
n = 0
while n < int(sys.argv[2]):
    s.recv(65536)
    n += 1
print(n)' "$IP_B" "$N" "$WORK/bound" >"$WORK/received" 2>&1 &
RECV=$!
eventually 10 test -e "$WORK/bound"
link_series >"$WORK/before"
A_TX0=$(pod_if_stat "$A" tx packets) B_RX0=$(pod_if_stat "$B" rx packets)
in_pod "$A" "$PY" -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"m" * int(sys.argv[3]), (sys.argv[1], 5001))' "$IP_B" "$N" "$PAYLOAD"
wait "$RECV"
check "pod B received the $N datagrams ($(cat "$WORK/received"))" test "$(cat "$WORK/received")" = "$N"
link_series >"$WORK/after"
A_TX=$(($(pod_if_stat "$A" tx packets) - A_TX0)) B_RX=$(($(pod_if_stat "$B" rx packets) - B_RX0))
# moved NAME: how far series NAME moved (every series is in both snapshots).
moved() {
  awk -v k="$1" '$1 == k { if (FILENAME ~ /before$/) b = $2; else { a = $2; seen = 1 } }
    END { if (seen) printf "%d\n", a - b; else print "missing" }' "$WORK/before" "$WORK/after"
}
for row in "netstack_pod_transmit_packets_total:$A $N" "netstack_pod_transmit_bytes_total:$A $((N * FRAME))" \
  "netstack_pod_receive_packets_total:$B $N" "netstack_pod_receive_bytes_total:$B $((N * FRAME))" \
  "netstack_pod_receive_packets_total:$A 0" "netstack_pod_transmit_packets_total:$B 0" \
  "netstack_pod_drops_total:$A 0" "netstack_pod_drops_total:$B 0" \
  "netstack_uplink_transmit_packets_total 0" "netstack_uplink_receive_packets_total 0" "netstack_uplink_drops_total 0"; do
  set -- $row
  got=$(moved "$1")
  what=${1%%:*}
  [ "$1" = "$what" ] || what="$what of ${1#*:}"
  check "$what moved by $2 ($got)" test "$got" = "$2"
done
# The whole family summed over every pod: each frame once (at its sender), not twice.
sum_moved() { grep "^$1:" "$WORK/after" | cut -d' ' -f1 | while read -r k; do moved "$k"; done | awk '{n += $1} END {print n + 0}'; }
check "sum(netstack_pod_transmit_packets_total) moved by $N ($(sum_moved netstack_pod_transmit_packets_total))" \
  test "$(sum_moved netstack_pod_transmit_packets_total)" = "$N"
check "sum(netstack_pod_receive_packets_total) moved by $N ($(sum_moved netstack_pod_receive_packets_total))" \
  test "$(sum_moved netstack_pod_receive_packets_total)" = "$N"
check "transmit is pod A's own eth0 TX, as cAdvisor reads it ($A_TX)" test "$A_TX" = "$N"
check "receive is pod B's own eth0 RX ($B_RX)" test "$B_RX" = "$N"
del_pod "$A"
del_pod "$B"

log "the other node leaves the list: the routes gauge follows"
printf '{"nodes":[{"name":"node-m","podCIDRs":["%s"],"internalIPs":["%s"]}]}\n' "$POD_CIDR" "$NODE_IP" >"$WORK/nodes.json.tmp"
mv "$WORK/nodes.json.tmp" "$WORK/nodes.json"
check "netstack_node_routes_installed drops to 0" \
  eventually 20 sh -c "curl -s http://$ADDR/metrics | grep -qx 'netstack_node_routes_installed 0'"
check "  ... and the route is gone" sh -c "! ip route show $OTHER_CIDR | grep -q ."

kill -0 "$NETSTACKD_PID" 2>/dev/null || { echo "netstackd exited; its log:"; cat "$WORK/netstackd.log"; } >&2
stop_netstackd
echo
echo "test_metrics: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
