#!/usr/bin/env bash
# e2e: the fifo qdisc and per-pod shaping from the CNI `bandwidth` capability. A pod with an
# ingress rate receives no more than its rate allows (the excess is tail-dropped and counted
# as qdisc_full, and shows in the queue-depth and qdisc-drop metrics); a pod with an egress
# rate sends no more than its rate (it is pushed back, not dropped by netstackd); an unshaped
# pair is not held to either rate. Bounds are on bytes delivered, which shaping decides, with
# generous slack. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT


RATE=20000000  # bit/s
BURST=1000000  # bits
SECS=3

# shaped_pod NAME RUNTIME_CONFIG_JSON: a pod made by CNI ADD with runtimeConfig, as a
# runtime passes a pod's bandwidth annotations. Prints the pod's IPv4 address.
shaped_pod() {
  local name=$1 rc=$2 conf result
  ip netns add "$name"
  ip -n "$name" link set lo up
  PODS+=("$name")
  echo "$name" >>"$WORK/pods"
  conf=$(jq -c --argjson rc "$rc" '.plugins[0] + {cniVersion: .cniVersion, name: .name, runtimeConfig: $rc}' "$CONFLIST")
  result=$(printf '%s' "$conf" | env CNI_COMMAND=ADD CNI_CONTAINERID="$name" CNI_NETNS="/run/netns/$name" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN:$REF_CNI" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=qdisc;K8S_POD_NAME=$name" \
    "$BIN/netstack") || { echo "ADD $name failed: $result" >&2; return 1; }
  jq -r '.ips[0].address' <<<"$result" | cut -d/ -f1
}
drops() { ctl stats | jq -r --arg id "$1" --arg r "$2" '.pods[] | select(.container_id == $id) | .counters.drops[$r] // 0'; }

write_conflist
start_netstackd || exit 1
A=qd-a-$RUN_ID
B=qd-b-$RUN_ID
C=qd-c-$RUN_ID
D=qd-d-$RUN_ID
IP_A=$(add_pod "$A")
IP_B=$(shaped_pod "$B" "{\"bandwidth\":{\"ingressRate\":$RATE,\"ingressBurst\":$BURST}}")
IP_C=$(shaped_pod "$C" "{\"bandwidth\":{\"egressRate\":$RATE,\"egressBurst\":$BURST}}")
IP_D=$(add_pod "$D")
check "the shaped pods were added ($IP_B, $IP_C)" test -n "$IP_B" -a -n "$IP_C"
check "pod B's attachment records its ingress rate" \
  jq -e ".bandwidth.ingressRate == $RATE" "$STATE/${B}:eth0.json"
in_pod "$A" ping -c 1 -W 2 "$IP_B" >/dev/null
in_pod "$C" ping -c 1 -W 2 "$IP_A" >/dev/null

# Most bytes the shaper may let through in SECS: rate x time + burst + the 25 ms queue, +15 %.
max_bytes=$(((RATE / 8 * SECS + BURST / 8 + 65536 + RATE / 8 / 40) * 115 / 100))
min_bytes=$((RATE / 8 * SECS / 2))

log "UDP at 5x pod B's ingress rate for ${SECS} s"
in_pod "$B" iperf3 -s -1 -D --bind "$IP_B"
sleep 0.3
in_pod "$A" timeout 30 iperf3 -u -b $((RATE * 5)) -l 1400 -c "$IP_B" -t "$SECS" -J >"$WORK/udp.json" &
client=$!
max_depth=0
for _ in $(seq 1 $((SECS * 4))); do
  sleep 0.25
  d=$(pod_counter "$B" .qdisc_depth)
  [ "${d:-0}" -gt "$max_depth" ] && max_depth=$d
done
wait "$client"
got=$(jq -r '.end.sum.bytes * (1 - .end.sum.lost_percent / 100) | floor' "$WORK/udp.json")
check "pod B received at most its rate allows ($got <= $max_bytes bytes)" test "${got:-999999999}" -le "$max_bytes"
check "pod B still received at its rate ($got >= $min_bytes bytes)" test "${got:-0}" -ge "$min_bytes"
qfull=$(drops "$B" qdisc_full)
check "the excess was tail-dropped and counted as qdisc_full ($qfull)" test "${qfull:-0}" -gt 100
check "the queue towards pod B was seen non-empty (max depth $max_depth)" test "$max_depth" -gt 0
check "the metrics show pod B's qdisc drops (reason qdisc_full, the one series that counts them)" sh -c \
  "$BIN/netstackd ctl --socket $SOCK metrics | grep -E '^netstack_pod_drops_total\{[^}]*container_id=\"$B\"[^}]*reason=\"qdisc_full\"' | awk '{exit !(\$2 > 100)}'"
check "the metrics carry a queue-depth gauge per pod" sh -c \
  "$BIN/netstackd ctl --socket $SOCK metrics | grep -q '^netstack_pod_qdisc_depth{.*container_id=\"$A\"'"
check "no qdisc drops towards the unshaped pod A" test "$(drops "$A" qdisc_full)" = 0
check "pod A -> pod B still answers ping after the flood" in_pod "$A" ping -c 2 -W 2 "$IP_B"

log "TCP from pod C (egress ${RATE} bit/s) for ${SECS} s"
in_pod "$A" iperf3 -s -1 -D --bind "$IP_A"
sleep 0.3
in_pod "$C" timeout 30 iperf3 -c "$IP_A" -t "$SECS" -J >"$WORK/tcp.json"
got=$(jq -r '.end.sum_received.bytes' "$WORK/tcp.json")
check "pod C sent at most its rate allows ($got <= $max_bytes bytes)" test "${got:-999999999}" -le "$max_bytes"
check "pod C still sent at its rate ($got >= $min_bytes bytes)" test "${got:-0}" -ge "$min_bytes"
check "egress shaping pushed back instead of dropping in netstackd (A qdisc_full 0)" test "$(drops "$A" qdisc_full)" = 0

log "TCP between unshaped pods A -> D for ${SECS} s"
in_pod "$D" iperf3 -s -1 -D --bind "$IP_D"
sleep 0.3
in_pod "$A" timeout 30 iperf3 -c "$IP_D" -t "$SECS" -J >"$WORK/free.json"
got=$(jq -r '.end.sum_received.bytes' "$WORK/free.json")
# Twenty times what the shaper lets through (about 470 Mbit/s): far above any rate a shaper
# set on this pair could give, far below what the pair forwards unshaped (Gbit/s on 2 cores).
check "unshaped pods are not held to the shaped rate ($got > 20 x $max_bytes bytes)" test "${got:-0}" -gt $((20 * max_bytes))

log "detach drops the shaped pod's queues"
del_pod "$B"
check "pod B is gone from netstackd" sh -c "! $BIN/netstackd ctl --socket $SOCK --json list | jq -e '.[] | select(.container_id == \"$B\")'"
check "netstackd is still running" kill -0 "$NETSTACKD_PID"

echo "test_qdisc: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
