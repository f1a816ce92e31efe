#!/usr/bin/env bash
# e2e: seeing inside netstackd. Counters move exactly for a known exchange, a capture of a ping
# and a TCP transfer reads back in tshark and tcpdump with the frames that were sent, the
# Prometheus exposition parses, the CLI's JSON has its documented shape, capture is root-only,
# and log lines about a pod carry its container id. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

PY=/usr/bin/python3 # Debian's, with python3-prometheus-client

# quiet_pod NAME: a pod netns with IPv6 off, so no router solicitation or MLD report lands in
# the middle of an exact count; then CNI ADD. Prints the pod's IPv4 address.
quiet_pod() {
  ip netns add "$1"
  PODS+=("$1")
  echo "$1" >>"$WORK/pods" # quiet_pod runs in $(...): e2e_cleanup reads this list
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$1" link set lo up
  cni ADD "$1" "/run/netns/$1" eth0 "IgnoreUnknown=1;K8S_POD_NAMESPACE=obs;K8S_POD_NAME=$1" | jq -r '.ips[0].address' | cut -d/ -f1
}
counter() { pod_counter "$1" "$2"; }

write_conflist
start_netstackd || exit 1
A=obs-a-$RUN_ID
B=obs-b-$RUN_ID
IP_A=$(quiet_pod "$A")
IP_B=$(quiet_pod "$B")
# No ARP of their own either (lib.sh), so that every counter row below counts only the test's
# frames, however long the rows between two readings take.
quiet_pods "$A" "$IP_A" "$B" "$IP_B"
in_pod "$A" ping -c 1 -W 2 "$IP_B" >/dev/null
sleep 0.2

log "counters for a known exchange"
a_rx=$(counter "$A" .rx_packets); a_tx=$(counter "$A" .tx_packets); a_rxb0=$(counter "$A" .rx_bytes)
b_rx=$(counter "$B" .rx_packets); b_tx=$(counter "$B" .tx_packets)
in_pod "$A" ping -c 7 -i 0.05 -W 2 -q "$IP_B" >/dev/null
sleep 0.2
check "7 echo requests counted from pod A (rx +$(( $(counter "$A" .rx_packets) - a_rx )))" test $(( $(counter "$A" .rx_packets) - a_rx )) = 7
check "7 echo requests delivered to pod B (tx +$(( $(counter "$B" .tx_packets) - b_tx )))" test $(( $(counter "$B" .tx_packets) - b_tx )) = 7
check "7 echo replies counted from pod B" test $(( $(counter "$B" .rx_packets) - b_rx )) = 7
check "7 echo replies delivered to pod A" test $(( $(counter "$A" .tx_packets) - a_tx )) = 7
a_rxb=$(counter "$A" .rx_bytes)
check "98-byte frames: pod A rx_bytes grows by exactly 7 x 98 ($((a_rxb - a_rxb0)))" test $((a_rxb - a_rxb0)) = $((7 * 98))

log "capture a ping and a TCP transfer"
head -c 300000 /dev/urandom >"$WORK/blob"
"$BIN/netstackd" ctl --socket "$SOCK" capture "$A" -w "$WORK/a.pcap" --duration 4 2>"$WORK/capture.err" &
CAP=$!
sleep 0.5
in_pod "$A" ping -c 3 -i 0.1 -W 2 -q "$IP_B" >/dev/null
in_pod "$B" timeout 20 nc -l -s "$IP_B" -p 7001 >"$WORK/got" &
srv=$!
sleep 0.3
in_pod "$A" timeout 20 nc -N "$IP_B" 7001 <"$WORK/blob"
wait "$srv"
wait "$CAP"; rc=$?
check "capture ends on its own after --duration" test "$rc" = 0
check "capture reports what it wrote" grep -q 'frames captured' "$WORK/capture.err"
check "tcpdump reads the file" tcpdump -nr "$WORK/a.pcap"
check "tshark reads the file" tshark -r "$WORK/a.pcap"
req=$(tshark -r "$WORK/a.pcap" -Y "icmp.type == 8 && ip.src == $IP_A && ip.dst == $IP_B" 2>/dev/null | wc -l)
rep=$(tshark -r "$WORK/a.pcap" -Y "icmp.type == 0 && ip.src == $IP_B && ip.dst == $IP_A" 2>/dev/null | wc -l)
check "the 3 echo requests pod A sent are in the capture ($req)" test "$req" = 3
check "the 3 echo replies pod A received are in the capture ($rep)" test "$rep" = 3
# The bytes of the stream the capture covers: the union of the segments' sequence ranges
# (relative numbers), so that a retransmitted segment counts once.
sent=$(tshark -r "$WORK/a.pcap" -Y "tcp.srcport != 7001 && tcp.dstport == 7001 && ip.src == $IP_A" -T fields -e tcp.seq -e tcp.len 2>/dev/null |
  sort -n -k1,1 | awk '{ e = $1 + $2; if (e > cur) { t += e - ($1 > cur ? $1 : cur); cur = e } } END { print t + 0 }')
check "the TCP payload pod A sent covers the 300000 bytes sent, once each ($sent)" test "$sent" = 300000
check "frames in both directions (pod B's ACKs too)" sh -c "tshark -r '$WORK/a.pcap' -Y 'tcp.srcport == 7001' 2>/dev/null | grep -q ."
check "no frames of other pods in pod A's capture" sh -c "! tshark -r '$WORK/a.pcap' -Y 'eth.addr != $(in_pod "$A" cat /sys/class/net/eth0/address) && eth.addr != 02:4e:53:00:00:01' 2>/dev/null | grep -q ."
"$BIN/netstackd" ctl --socket "$SOCK" capture "$A" -w "$WORK/c5.pcap" -c 5 2>/dev/null &
CAP=$!
sleep 0.3
in_pod "$A" ping -c 10 -i 0.05 -W 2 -q "$IP_B" >/dev/null
wait "$CAP"
check "-c 5 stops after exactly 5 frames" test "$(tshark -r "$WORK/c5.pcap" 2>/dev/null | wc -l)" = 5
check "capture of an unknown pod is an error" sh -c "! $BIN/netstackd ctl --socket $SOCK capture no-such-pod -w /dev/null -c 1"

log "capture is root-only"
chmod 666 "$SOCK"
out=$(printf '\x00\x00\x00\x2f{"op":"capture","container_id":"x","ifname":"eth0"}' | setpriv --reuid 65534 --regid 65534 --clear-groups socat -t 2 - "UNIX-CONNECT:$SOCK" 2>&1 | tr -d '\0')
chmod 600 "$SOCK"
check "a non-root user cannot start a capture" grep -q 'permission denied' <<<"$out"

log "Prometheus metrics"
ADDR=$(ctl status | jq -r .metrics)
check "status names the metrics listener on loopback ($ADDR)" grep -q '^127.0.0.1:' <<<"$ADDR"
$PY - "$ADDR" "$A" "$(counter "$A" .rx_packets)" >"$WORK/prom.out" 2>&1 <<'PY'
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
addr, pod, rx = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
fams = {f.name: f for f in text_string_to_metric_families(text)}
need = ["netstack_pod_transmit_packets", "netstack_pod_receive_bytes", "netstack_pod_drops",
        "netstack_pod_transmit_gso_packets", "netstack_gso_segmented_frames", "netstack_attach",
        "netstack_detach", "netstack_attach_duration_seconds", "netstack_worker_wakeups",
        "netstack_uplink_transmit_packets", "netstack_attachments", "netstack_dataplane_restarts"]
missing = [n for n in need if n not in fams]
assert not missing, f"missing families {missing}"
# What the pod transmitted is what netstack read from it: stats' rx_packets.
s = [x for x in fams["netstack_pod_transmit_packets"].samples if x.labels["container_id"] == pod]
assert len(s) == 1 and s[0].labels["pod_namespace"] == "obs" and s[0].labels["pod_name"] == pod, s
# Kubernetes service discovery sets namespace/pod to the scraped target's: pod series must not.
assert not any("namespace" in x.labels or "pod" in x.labels for f in fams.values() for x in f.samples), "namespace/pod label"
assert s[0].value == rx, (s[0].value, rx)
assert fams["netstack_attach_duration_seconds"].type == "histogram"
print("parsed", len(fams), "families")
PY
check "the exposition parses and pod A's transmit_packets matches stats' rx_packets ($(tail -1 "$WORK/prom.out"))" grep -q '^parsed' "$WORK/prom.out"
check "only GET /metrics is served" sh -c "$PY -c \"import urllib.request,sys; urllib.request.urlopen('http://$ADDR/other')\" 2>&1 | grep -q 404"
check "ctl metrics gives the same families" sh -c "$BIN/netstackd ctl --socket $SOCK metrics | grep -q '^netstack_attach_total{result=\"ok\"} 2'"
# A non-loopback --metrics-addr is served (with a warning): e2e/test_metrics.sh.

log "CLI"
check "list --json has the documented fields" test "$(ctl list | jq -c '.[0] | keys')" = '["container_id","ifname","ips","labels","mac","mode","netns","state"]'
check "status --json has the documented fields" jq -e '["version","workers","uplink","pod_cidr","gateway","attachments","metrics","dataplane_pid","dataplane_restarts"] - keys == []' <<<"$(ctl status)"
check "stats --json has the documented shape" jq -e '(.pods[0] | keys) == ["container_id","counters","ifname","ips","mac","netns"]
  and ((.pods[0].counters, .uplink) | ["drops","qdisc_depth","rx_bytes","rx_calls","rx_gso_packets","rx_packets","tx_bytes","tx_calls","tx_gso_segmented","tx_packets"] - keys == [])' <<<"$(ctl stats)"
calls=$(ctl stats | jq -r '.pods[0].counters | "\(.rx_packets) \(.rx_calls) \(.tx_packets) \(.tx_calls)"')
if [ "$MODE" = veth ]; then
  check "veth: no more read or write calls than frames ($calls)" awk -v s="$calls" 'BEGIN {split(s, c, " "); exit !(c[2] > 0 && c[2] <= c[1] && c[4] > 0 && c[4] <= c[3])}'
elif [ "$(ctl status | jq -r .tap_io)" = readv ]; then
  check "TAP on readv: one read call per frame, one write call per frame ($calls)" awk -v s="$calls" 'BEGIN {split(s, c, " "); exit !(c[1] > 0 && c[1] == c[2] && c[3] == c[4])}'
else
  # io_uring (the default, --tap-io auto): a deep queue's frames in one call, a shallow one's
  # one call each.
  check "TAP on io_uring: no more read or write calls than frames ($calls)" awk -v s="$calls" 'BEGIN {split(s, c, " "); exit !(c[2] > 0 && c[2] <= c[1] && c[4] > 0 && c[4] <= c[3])}'
fi
check "list shows both pods attached, $MODE mode" test "$(ctl list | jq -r '[.[] | .mode + ":" + .state] | unique | join(",")')" = "$MODE:attached"
check "stats POD by namespace/name selects one pod" test "$(ctl stats "obs/$A" | jq '.pods | length')" = 1
check "stats POD by container id prefix" test "$(ctl stats "${A:0:8}" | jq -r '.pods[0].container_id')" = "$A"
check "the table output has a header and one row per pod" test "$(ctlh list | wc -l)" = 3
check "status table names the dataplane pid" sh -c "$BIN/netstackd ctl --socket $SOCK status | grep -q 'dataplane pid'"

log "no busy polling at idle"
wakeups() { "$BIN/netstackd" ctl --socket "$SOCK" metrics | awk '$1 ~ /^netstack_worker_wakeups_total/ {n += $2} END {print n + 0}'; }
cpu_ticks() { # utime + stime of netstackd and its dataplane child
  local p t=0
  for p in "$NETSTACKD_PID" $(pgrep -P "$NETSTACKD_PID"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
sleep 0.5
w0=$(wakeups); c0=$(cpu_ticks)
sleep 3
w1=$(wakeups); c1=$(cpu_ticks)
# Busy polling would be thousands of wakeups; the odd frame from the host kernel is one.
check "two attached idle pods: workers woke at most 3 times in 3 s ($w0 -> $w1)" test $((w1 - w0)) -le 3
check "  ... and netstackd used at most 2 clock ticks of CPU ($((c1 - c0)))" test $((c1 - c0)) -le 2

log "a pod TAP deleted under netstackd (not through CNI DEL)"
C=obs-c-$RUN_ID
quiet_pod "$C" >/dev/null
ip -n "$C" link del eth0
sleep 1
w0=$(wakeups); c0=$(cpu_ticks)
sleep 2
w1=$(wakeups); c1=$(cpu_ticks)
check "its dead TAP queues do not make the workers spin ($((w1 - w0)) wakeups, $((c1 - c0)) ticks in 2 s)" \
  test $((w1 - w0)) -le 3 -a $((c1 - c0)) -le 2
check "  ... the dead queues are logged with its container id" grep -q "no longer read.*container_id=$C" "$WORK/netstackd.log"
del_gone() { cni DEL "$C" "/run/netns/$C" >/dev/null && ! ctl list | jq -e --arg c "$C" '.[] | select(.container_id == $c)'; }
check "  ... and a later DEL releases it" del_gone
check "the other pods still talk" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$IP_B"

log "logs"
check "attach lines carry the container id" grep -q "attached.*container_id=.*$A" "$WORK/netstackd.log"
check "no per-packet lines at info" test "$(wc -l <"$WORK/netstackd.log")" -lt 40
lines0=$(wc -l <"$WORK/netstackd.log")
in_pod "$A" ping -c 20 -i 0.01 -W 2 -q "$IP_B" >/dev/null
check "  ... 20 pings add no line at info" test "$(wc -l <"$WORK/netstackd.log")" = "$lines0"
stop_netstackd
NETSTACK_LOG=netstackd=debug start_netstackd
ctl status >/dev/null
check "NETSTACK_LOG=netstackd=debug turns on debug lines (control requests)" grep -q ' DEBUG .*control request' "$WORK/netstackd.log"
stop_netstackd
: >"$WORK/netstackd.log"
start_netstackd --log warn
in_pod "$A" ping -c 2 -i 0.2 -W 2 -q "$IP_B" >/dev/null
check "--log warn keeps info lines out (restart with 2 pods logged nothing)" test ! -s "$WORK/netstackd.log"

echo
echo "test_observe: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
