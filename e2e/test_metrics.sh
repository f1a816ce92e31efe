#!/usr/bin/env bash
# e2e: the metrics Prometheus scrapes from inside a cluster. netstackd runs in node mode (a
# nodes file naming this node and one other, masquerade on) with --metrics-addr on a
# non-loopback address of a veth, as the DaemonSet binds the node's address; the scrape
# over that address has netstack_build_info with the commit of HEAD, the supervisor's process_*
# series, the dataplane child's CPU and memory, and node mode's gauges. Needs root.
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
