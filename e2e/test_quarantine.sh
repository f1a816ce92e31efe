#!/usr/bin/env bash
# e2e: no crash loop. Pod X floods pod Y with UDP while pods D and E sit idle; the dataplane
# child is killed with SIGSEGV again and again (the signal almost always lands while a worker
# handles X's batch, which the worker publishes in memory the supervisor shares) until X is
# quarantined: the next dataplanes do not read X's queues, D and E keep forwarding, the
# dataplane stays up, `ctl release` serves X again, and DEL of a quarantined pod cleans up.
# Then the per-message deadline: a stopped (hung) dataplane makes an ADD fail in bounded time
# with CNI's "try again later", the supervisor replaces the child, and the retried ADD works.
# Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap 'stop_flood; e2e_cleanup' EXIT

child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }
pod_state() { ctl list | jq -r --arg id "$1" '.[] | select(.container_id == $id) | .state'; }
quarantined_metric() {
  ctl metrics | awk -v id="container_id=\"$1\"" '/^netstack_pod_quarantined\{/ && index($0, id) { print $2 }'
}
# serving: a dataplane child runs and has answered its init and replay.
serving() { [ "$(ctl status | jq -r '.dataplane_pid // empty')" != "" ]; }
wait_serving() {
  local i
  for i in $(seq 1 100); do serving && return 0; sleep 0.1; done
  return 1
}

WORKERS=2
write_conflist
start_netstackd --workers "$WORKERS" || exit 1
X=q-x-$RUN_ID
Y=q-y-$RUN_ID
D=q-d-$RUN_ID
E=q-e-$RUN_ID
IP_X=$(add_pod "$X")
IP_Y=$(add_pod "$Y")
IP_D=$(add_pod "$D")
IP_E=$(add_pod "$E")

FLOODERS=()
# start_flood: X sends 1200-byte UDP datagrams to Y from 3 processes (so that X's queue stays
# backlogged even on a loaded machine), as fast as they can, for at most 90 s; Y has a sink on
# the port (no ICMP errors back to X). `ip netns exec` execs `timeout`, so the pids are those
# of the `timeout`s, which pass a SIGTERM on.
start_flood() {
  ip netns exec "$Y" timeout 100 socat -u UDP-RECV:5000 /dev/null &
  FLOODERS=($!)
  local i
  for i in 1 2 3; do
    ip netns exec "$X" timeout 100 python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, payload, end = (sys.argv[1], 5000), b"x" * 1200, time.time() + 90
while time.time() < end:
    for _ in range(1000):
        try:
            s.sendto(payload, dst)
        except OSError:
            pass
' "$IP_Y" &
    FLOODERS+=($!)
  done
}
stop_flood() {
  local p
  for p in "${FLOODERS[@]}"; do
    kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  FLOODERS=()
  return 0
}
# crash_until_quarantined POD: SIGSEGV the dataplane while POD floods, at most 9 times (3 times
# the strikes a quarantine takes), until POD is quarantined. Prints the kills it took.
crash_until_quarantined() {
  local kills=0 dp n
  while [ "$kills" -lt 9 ]; do
    wait_serving || break
    sleep 0.3
    dp=$(child_pid)
    [ -n "$dp" ] || continue
    kills=$((kills + 1))
    # Rust's runtime handles the first SIGSEGV that is not a fault by restoring the default
    # action and carrying on; the next one kills. At most 5 s of signals.
    for n in $(seq 1 100); do
      kill -SEGV "$dp" 2>/dev/null || break
      sleep 0.05
      [ "$(child_pid)" = "$dp" ] || break
    done
    sleep 0.1
    [ "$(pod_state "$1")" = quarantined ] && break
  done
  echo "$kills"
}

log "a pod whose frames keep crashing the dataplane is quarantined"
check "ping D -> E before" in_pod "$D" ping -c 2 -i 0.2 -W 2 "$IP_E"
start_flood
# flood_reaches_y: over 1000 of X's datagrams were delivered to Y (waits up to 10 s for the
# senders to start on a busy machine).
flood_reaches_y() {
  local i
  for i in $(seq 1 50); do
    [ "$(pod_counter "$Y" .tx_packets)" -gt 1000 ] && return 0
    sleep 0.2
  done
  return 1
}
check "X's flood reaches Y" flood_reaches_y
kills=$(crash_until_quarantined "$X")
echo "    $kills SIGSEGVs"
check "X is quarantined (ctl list) after at most 9 crashes" test "$(pod_state "$X")" = quarantined
check "ctl list gives the reason" sh -c "$BIN/netstackd ctl --socket $SOCK --json list | jq -r '.[] | select(.container_id == \"$X\") | .quarantine_reason' | grep -q 'died 3 times'"
check "the table of ctl list says so" sh -c "$BIN/netstackd ctl --socket $SOCK list | grep -q '$X.*quarantined'"
check "ctl status lists X as quarantined" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.quarantined == [\"$X/eth0\"]'"
check "netstack_pod_quarantined is 1 for X" test "$(quarantined_metric "$X")" = 1
check "netstack_pod_quarantined is 0 for D" test "$(quarantined_metric "$D")" = 0
check "a WARN log line names X's container id" grep -q "WARN.*pod quarantined.*container_id=$X" "$WORK/netstackd.log"
wait_serving
check "Y, D and E are not quarantined" test "$(pod_state "$Y")$(pod_state "$D")$(pod_state "$E")" = attachedattachedattached
wait_serving
RESTARTS=$(ctl status | jq .dataplane_restarts)
DP=$(child_pid)
check "ping D -> E while X still floods" in_pod "$D" ping -c 3 -i 0.2 -W 2 "$IP_E"
check "ping Y -> D" in_pod "$Y" ping -c 2 -i 0.2 -W 2 "$IP_D"
ty=$(pod_counter "$Y" .tx_packets)
sleep 3
check "the dataplane stays up: no restart in 3 s of X's flood" test "$(ctl status | jq .dataplane_restarts)" = "$RESTARTS" -a "$(child_pid)" = "$DP"
check "X's flood no longer reaches Y (its queues are not read)" test "$(pod_counter "$Y" .tx_packets)" = "$ty"
stop_flood

log "ctl release serves the pod again"
check "release of a pod that is not quarantined is refused" sh -c "$BIN/netstackd ctl --socket $SOCK release $D 2>&1 | grep -q 'not quarantined'"
check "ctl release X" ctlh release "$X"
check "X is attached again" test "$(pod_state "$X")" = attached
check "netstack_pod_quarantined is 0 for X" test "$(quarantined_metric "$X")" = 0
check "the release is logged with the count of discarded frames" grep -q "released from quarantine.*container_id=$X.*discarded=[1-9]" "$WORK/netstackd.log"
check "ping X -> Y after the release" in_pod "$X" ping -c 2 -i 0.2 -W 2 "$IP_Y"

log "DEL of a quarantined pod cleans up"
start_flood
sleep 1
kills=$(crash_until_quarantined "$X")
echo "    $kills SIGSEGVs"
check "X is quarantined again" test "$(pod_state "$X")" = quarantined
stop_flood
check "CNI DEL of the quarantined X succeeds" cni DEL "$X" "/run/netns/$X"
check "X is no longer listed" test -z "$(pod_state "$X")"
check "ctl status lists nothing quarantined" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.quarantined == []'"
check "X's state file is gone" test ! -e "$STATE/${X}_eth0.json"
check "X's TAP is gone" sh -c "! ip -n $X link show eth0"
check "ping D -> E after the DEL" in_pod "$D" ping -c 2 -i 0.2 -W 2 "$IP_E"

log "a hung dataplane: per-message deadline"
wait_serving
DP=$(child_pid)
kill -STOP "$DP"
F=q-f-$RUN_ID
ip netns add "$F"
echo "$F" >>"$WORK/pods"
started=$SECONDS
# The plugin's own control timeout (15 s) bounds this call if the deadline did not work.
out=$(cni ADD "$F" "/run/netns/$F")
rc=$?
echo "    ADD with a stopped dataplane: rc=$rc after $((SECONDS - started)) s: $out"
check "the ADD fails instead of hanging" test "$rc" != 0
check "... with CNI code 11, try again later" test "$(jq -r .code <<<"$out")" = 11
check "... saying the dataplane did not answer" grep -q 'did not answer' <<<"$out"
# The kill follows the reply to the plugin: give it a moment (bounded).
check "the supervisor killed the hung child" sh -c "for i in \$(seq 50); do ! kill -0 $DP 2>/dev/null && exit 0; grep -q '^State:.*Z' /proc/$DP/status 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
check "a new dataplane serves" wait_serving
kill -CONT "$DP" 2>/dev/null
check "the hang is logged" grep -q "did not answer within 8s: killing it as hung" "$WORK/netstackd.log"
check "the retried ADD succeeds" cni ADD "$F" "/run/netns/$F"
IP_F=$(ip -n "$F" -4 -o addr show eth0 | awk '{ print $4 }' | cut -d/ -f1)
check "ping F -> D" in_pod "$F" ping -c 2 -i 0.2 -W 2 "$IP_D"
check "ping D -> E" in_pod "$D" ping -c 2 -i 0.2 -W 2 "$IP_E"

echo
echo "test_quarantine: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
