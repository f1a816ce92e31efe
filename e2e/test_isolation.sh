#!/usr/bin/env bash
# e2e: no pod can starve the others of netstackd's buffers (issue 13). Pods B and C are shaped
# to 1 kbit/s towards them (B with a small burst, C with the 2^32-1-bit burst containerd passes
# for kubernetes.io/ingress-bandwidth) and flooded by pod A with 64-byte UDP over 64 flows each,
# while pods D and E run iperf3 (TCP) and a 100 Hz ping. A control run first sends the same flood
# to two unshaped pods F and G, so that netstackd and the flooder burn the same CPU. Against the
# control, D<->E must keep at least 80% of the throughput and a p99 RTT (a lost ping counts as
# infinitely late) under 20 ms (or 1.5 x the control's, when a loaded machine makes even the
# control slower), and the drops must be counted on B and C only. C must also have
# received no more than its clamped burst and its rate allow. Every run is FLOOD_SECS long (30 s
# each, as the issue asks: about 75 s in all). Needs root; MODE=veth runs it over veths.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

FLOOD_SECS=${FLOOD_SECS:-30}
RATE=1000              # bit/s
SMALL_BURST=8000       # bits
HUGE_BURST=4294967295  # bits: containerd's burst for kubernetes.io/ingress-bandwidth
# The largest burst netstackd keeps for a 1 kbit/s bucket is 64 KiB (see the README's
# bandwidth section): what may reach C in a run, with room for the 25 ms queue and slack.
C_MAX_BYTES=$((65536 + RATE / 8 * (2 * FLOOD_SECS + 10) + 20000))

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
    CNI_IFNAME=eth0 CNI_PATH="$BIN:$REF_CNI" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=iso;K8S_POD_NAME=$name" \
    "$BIN/netstack") || { echo "ADD $name failed: $result" >&2; return 1; }
  jq -r '.ips[0].address' <<<"$result" | cut -d/ -f1
}
# drops_total POD [EXCEPT_REASON]: every frame dropped on the pod's link so far, all reasons
# but one.
drops_total() {
  ctl stats | jq -r --arg id "$1" --arg x "${2:-}" \
    '[.pods[] | select(.container_id == $id) | .counters.drops | del(.[$x]) | .[]] | add // 0'
}
drops() { ctl stats | jq -r --arg id "$1" --arg r "$2" '.pods[] | select(.container_id == $id) | .counters.drops[$r] // 0'; }

# flood DST_IP SECS: 64-byte UDP datagrams from pod A to DST_IP over 64 flows (source ports),
# as fast as nsbench sends them, for SECS seconds; the flooder's pid goes to FLOODERS.
FLOODERS=()
flood() {
  in_pod "$A" timeout -k 2 $(($2 + 10)) "$BIN/nsbench" udp-blast --connect "$1:9" --duration "$2" \
    --size 64 --flows 64 >"$WORK/flood-$1.json" 2>&1 &
  FLOODERS+=($!)
}
# flooded: waits for the flooders and prints what they sent.
flooded() {
  wait "${FLOODERS[@]}"
  FLOODERS=()
  log "flood sent $(jq -s 'map(.sent // 0) | add' "$WORK"/flood-*.json) datagrams"
  rm -f "$WORK"/flood-*.json
}

# measure NAME: floods (already running) while D pings E at 100 Hz and runs iperf3 to E for
# FLOOD_SECS; records Mbit/s in $WORK/NAME.mbps and the p99 RTT in µs ("lost" past 1% loss).
measure() {
  local name=$1 n=$((FLOOD_SECS * 100 - 300))
  in_pod "$E" timeout $((FLOOD_SECS + 30)) iperf3 -s -1 --bind "$IP_E" >/dev/null &
  local server=$!
  sleep 0.5
  # At a real-time priority: the pinger's own wakeups are not what is measured.
  in_pod "$D" timeout $((FLOOD_SECS + 10)) chrt -f 10 ping -n -i 0.01 -W 1 -c "$n" -w $((FLOOD_SECS + 5)) "$IP_E" \
    >"$WORK/$name.ping" 2>&1 &
  local pinger=$!
  in_pod "$D" timeout $((FLOOD_SECS + 20)) iperf3 -c "$IP_E" -t $((FLOOD_SECS - 3)) -J >"$WORK/$name.json"
  wait "$pinger"
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
  jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$WORK/$name.json" >"$WORK/$name.mbps" 2>/dev/null ||
    echo 0 >"$WORK/$name.mbps"
  # p99 over every ping sent: a lost one is later than any answer.
  local sent
  sent=$(grep -o '^[0-9]* packets transmitted' "$WORK/$name.ping" | cut -d' ' -f1)
  grep -o 'time=[0-9.]*' "$WORK/$name.ping" | cut -d= -f2 | sort -n |
    awk -v n="${sent:-0}" '{ rtt[++got] = $1 * 1000 }
      END { if (n < 100 || got < n - n / 100) { print "lost"; exit }
            k = int(n * 0.99 + 0.999); if (k > got) k = got; printf "%d\n", rtt[k] }' >"$WORK/$name.p99"
  log "$name: D->E $(cat "$WORK/$name.mbps") Mbit/s, ping p99 $(cat "$WORK/$name.p99") us ($(grep 'packets transmitted' "$WORK/$name.ping"))"
}

write_conflist
start_netstackd || exit 1
A=iso-a-$RUN_ID
B=iso-b-$RUN_ID
C=iso-c-$RUN_ID
D=iso-d-$RUN_ID
E=iso-e-$RUN_ID
F=iso-f-$RUN_ID
G=iso-g-$RUN_ID
IP_A=$(add_pod "$A")
IP_B=$(shaped_pod "$B" "{\"bandwidth\":{\"ingressRate\":$RATE,\"ingressBurst\":$SMALL_BURST}}")
IP_C=$(shaped_pod "$C" "{\"bandwidth\":{\"ingressRate\":$RATE,\"ingressBurst\":$HUGE_BURST}}")
IP_D=$(add_pod "$D")
IP_E=$(add_pod "$E")
IP_F=$(add_pod "$F")
IP_G=$(add_pod "$G")
check "seven pods were added" test -n "$IP_A" -a -n "$IP_B" -a -n "$IP_C" -a -n "$IP_D" -a -n "$IP_E" -a -n "$IP_F" -a -n "$IP_G"
check "pod D reaches pod E" in_pod "$D" ping -c 1 -W 2 "$IP_E"

log "control: the flood to unshaped pods F and G for ${FLOOD_SECS} s"
flood "$IP_F" "$FLOOD_SECS"
flood "$IP_G" "$FLOOD_SECS"
measure control
flooded
ctl_mbps=$(cat "$WORK/control.mbps")
check "the control run moved data (D->E $ctl_mbps Mbit/s)" test "$ctl_mbps" -gt 0

# In veth mode the flooder may outrun the worker reading its own packet sockets: that excess is
# the flooder's own, counted on A as kernel_queue_full, and is not what this test is about.
before_d=$(drops_total "$D") before_e=$(drops_total "$E") before_a=$(drops_total "$A" kernel_queue_full)
before_b=$(drops "$B" qdisc_full) before_c=$(drops "$C" qdisc_full)
log "hostile: the same flood to pods B and C, shaped to $RATE bit/s, for ${FLOOD_SECS} s"
flood "$IP_B" "$FLOOD_SECS"
flood "$IP_C" "$FLOOD_SECS"
measure hostile
flooded
mbps=$(cat "$WORK/hostile.mbps")
p99=$(cat "$WORK/hostile.p99")
check "D->E keeps at least 80% of the control's throughput ($mbps vs $ctl_mbps Mbit/s)" \
  test $((mbps * 100)) -ge $((ctl_mbps * 80))
# 20 ms, as the issue asks; on a machine so loaded that the control itself is slower (other
# builds on 2 cores delay the pinger and the workers), no worse than 1.5 x the control.
ctl_p99=$(cat "$WORK/control.p99")
bound=20000
[ "$ctl_p99" != lost ] && [ "$ctl_p99" -gt 13333 ] && bound=$((ctl_p99 * 3 / 2))
check "D->E ping p99 stays under $bound us ($p99 us; control $ctl_p99 us)" \
  test "$p99" != lost -a "${p99/lost/99999999}" -lt "$bound"
b_drops=$(($(drops "$B" qdisc_full) - before_b))
c_drops=$(($(drops "$C" qdisc_full) - before_c))
check "the flood was tail-dropped on B ($b_drops qdisc_full)" test "$b_drops" -gt 1000
check "the flood was tail-dropped on C, whose huge burst is clamped ($c_drops qdisc_full)" test "$c_drops" -gt 1000
after_d=$(drops_total "$D") after_e=$(drops_total "$E") after_a=$(drops_total "$A" kernel_queue_full)
check "no drops on D, E or A (D $((after_d - before_d)), E $((after_e - before_e)), A $((after_a - before_a)))" \
  test "$after_d" = "$before_d" -a "$after_e" = "$before_e" -a "$after_a" = "$before_a"
c_bytes=$(pod_counter "$C" .tx_bytes)
check "C received no more than its clamped burst and rate allow ($c_bytes <= $C_MAX_BYTES bytes)" \
  test "${c_bytes:-999999999}" -le "$C_MAX_BYTES"
check "netstackd is still running" kill -0 "$NETSTACKD_PID"

echo "test_isolation: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
