#!/usr/bin/env bash
# e2e: an upgrade from netstack v0.1.0, as a DaemonSet rolling update does it, and the version
# skew on the way. scripts/old_release.sh builds v0.1.0's netstackd and plugin (once per
# machine, cached by commit). The old netstackd serves pods the old plugin added, TAP and veth;
# the new plugin (installed first) adds, checks and deletes a pod on the old daemon; then, with
# TCP streams and a ping running between the old pods, the old daemon gets SIGTERM and the
# current build starts on the same socket, state dir and uplink. The streams complete with every
# byte and no reset, the new daemon lists the old pods, the old plugin still adds, checks and
# deletes pods on it, the new plugin adds pods and deletes the old ones without leaving a TAP,
# veth, state file or IPAM reservation, and a rollback to v0.1.0 restores the pods the new daemon
# recorded. Needs root; about 40 s once the old release is built (its first build takes 5-15
# minutes on 2 cores).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

declare -A POD_CONF POD_IP
BG=()
upgrade_cleanup() {
  local p
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${!POD_CONF[@]}"; do
    [ -e "/run/netns/$p" ] && plugin "$BIN" DEL "$p" >/dev/null 2>&1
    ip netns del "$p" 2>/dev/null
  done
  e2e_cleanup
}
trap upgrade_cleanup EXIT
trap 'exit 143' TERM INT

OLD=$(bash "$ROOT/scripts/old_release.sh") || { fail "build v0.1.0 (scripts/old_release.sh)"; exit 1; }
NEW=$BIN
WORKERS=2
TAPCONF=$WORK/tap.conflist
VETHCONF=$WORK/veth.conflist
CONFLIST=$TAPCONF MODE=tap write_conflist
CONFLIST=$VETHCONF MODE=veth write_conflist
CONFLIST=$TAPCONF

# plugin BINDIR CMD POD: one CNI call of the plugin in BINDIR for POD, with POD's conflist (and
# its ADD result as prevResult for CHECK), as a runtime makes it.
plugin() {
  local bin=$1 cmd=$2 pod=$3 stdin
  stdin=$(jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' "${POD_CONF[$pod]}")
  if [ "$cmd" = CHECK ]; then
    stdin=$(jq -c --slurpfile r "$WORK/$pod.result.json" '. + {prevResult: $r[0]}' <<<"$stdin")
  fi
  printf '%s' "$stdin" | env CNI_COMMAND="$cmd" CNI_CONTAINERID="$pod" CNI_NETNS="/run/netns/$pod" \
    CNI_IFNAME=eth0 CNI_PATH="$bin:$REF_CNI" \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$pod" "$bin/netstack"
}
# add BINDIR POD CONFLIST WHO: a pod netns and its CNI ADD by the plugin in BINDIR; one row.
add() {
  local bin=$1 pod=$2 out
  POD_CONF[$pod]=$3
  ip netns add "$pod" && ip -n "$pod" link set lo up
  if out=$(plugin "$bin" ADD "$pod"); then
    printf '%s' "$out" >"$WORK/$pod.result.json"
    POD_IP[$pod]=$(jq -r '.ips[0].address' <<<"$out" | cut -d/ -f1)
    ok "$4 ADD $pod ($(basename "$3" .conflist), ${POD_IP[$pod]})"
  else
    fail "$4 ADD $pod: $out"
  fi
}
# run_plugin BINDIR CMD POD WHO: a CHECK or DEL as one row, printing the error it gave.
run_plugin() {
  local out
  if out=$(plugin "$1" "$2" "$3"); then ok "$4 $2 $3"; else fail "$4 $2 $3: $out"; fi
}
# daemon BINDIR: replaces the running netstackd (if any) the way a DaemonSet rolling update
# does: SIGTERM, wait for it to exit, start the one in BINDIR on the same socket, state dir
# and uplink. Prints nothing; sets SWAP_MS.
daemon() {
  local t0
  t0=$(date +%s%N)
  stop_netstackd
  BIN=$1 start_netstackd --workers "$WORKERS" || return 1
  SWAP_MS=$((($(date +%s%N) - t0) / 1000000))
}
listed() { # POD: attached in `ctl list` of the running daemon
  ctl list | jq -e --arg id "$1" 'any(.[]; .container_id == $id and .state == "attached")' >/dev/null
}
state_version() { # POD: the state_version of its state file ("null" for v0.1.0's format)
  jq -r '.state_version' "$STATE/$1:eth0.json"
}
reserved() { grep -rlE "^$1"$'\r'"?\$" "$IPAM_DIR/$NETWORK" >/dev/null 2>&1; }
# gone POD PEER: after DEL, nothing of POD is left: no eth0 in its netns, no veth peer in
# netstackd's netns, no state file, no IPAM reservation, not listed.
gone() {
  ! ip -n "$1" link show eth0 >/dev/null 2>&1 &&
    { [ -z "$2" ] || ! in_dp ip link show "$2" >/dev/null 2>&1; } &&
    [ ! -e "$STATE/$1:eth0.json" ] && ! reserved "$1" && ! listed "$1"
}
ping_ok() { in_pod "$1" ping -c 2 -i 0.2 -W 2 "$2" >/dev/null 2>&1; }
# tcp_stat POD FIELD: a Tcp counter of /proc/net/snmp in POD's netns.
tcp_stat() {
  in_pod "$1" awk -v f="$2" '$1 == "Tcp:" && !n { for (i = 2; i <= NF; i++) h[i] = $i; n = 1; next }
    $1 == "Tcp:" { for (i = 2; i <= NF; i++) if (h[i] == f) print $i }' /proc/net/snmp
}

log "v0.1.0: its netstackd and plugin ($OLD)"
TAG_COMMIT=$(git -C "$ROOT" rev-parse --verify --quiet 'v0.1.0^{commit}' || echo 9ca7713e7743caa61a1b59fd02bbf63da40965c0)
check "the old binaries are v0.1.0's ($TAG_COMMIT)" test "$(cat "$OLD/COMMIT")" = "$TAG_COMMIT"
BIN=$OLD start_netstackd --workers "$WORKERS" || { fail "start v0.1.0 netstackd"; exit 1; }
check "v0.1.0's netstackd speaks control protocol 1 (it names none)" test "$(ctl status | jq .protocol)" = 1
A=upg-a-$RUN_ID B=upg-b-$RUN_ID C=upg-c-$RUN_ID D=upg-d-$RUN_ID
add "$OLD" "$A" "$TAPCONF" "v0.1.0 plugin:"
add "$OLD" "$B" "$TAPCONF" "v0.1.0 plugin:"
add "$OLD" "$C" "$VETHCONF" "v0.1.0 plugin:"
add "$OLD" "$D" "$VETHCONF" "v0.1.0 plugin:"
check "v0.1.0 wrote its state files without a version (the format this build calls 1)" \
  test "$(state_version "$A")$(state_version "$C")" = nullnull
check "pod A (TAP) reaches pod B (TAP) and pod C (veth)" eval 'ping_ok "$A" "${POD_IP[$B]}" && ping_ok "$A" "${POD_IP[$C]}"'

log "skew: the new plugin (installed first) on the v0.1.0 netstackd"
E=upg-e-$RUN_ID V=upg-v-$RUN_ID
add "$NEW" "$E" "$TAPCONF" "new plugin -> v0.1.0 netstackd:"
add "$NEW" "$V" "$VETHCONF" "new plugin -> v0.1.0 netstackd:"
check "pod E (new plugin, TAP) reaches pod A" ping_ok "$E" "${POD_IP[$A]}"
check "pod V (new plugin, veth) reaches pod C" ping_ok "$V" "${POD_IP[$C]}"
run_plugin "$NEW" CHECK "$E" "new plugin -> v0.1.0 netstackd:"
run_plugin "$NEW" CHECK "$V" "new plugin -> v0.1.0 netstackd:"
run_plugin "$NEW" CHECK "$A" "new plugin -> v0.1.0 netstackd, pod of the old plugin:"
PEER_V=$(veth_peer "$V")
run_plugin "$NEW" DEL "$E" "new plugin -> v0.1.0 netstackd:"
run_plugin "$NEW" DEL "$V" "new plugin -> v0.1.0 netstackd:"
check "... nothing of E or V is left (TAP, veth peer, state file, IPAM, ctl list)" \
  eval 'gone "$E" "" && gone "$V" "$PEER_V"'

log "rolling update under load: SIGTERM v0.1.0, start this build on the same state"
head -c 30M /dev/urandom >"$WORK/blob"
WANT=$(sha256sum <"$WORK/blob" | cut -d' ' -f1)
# stream FROM TO PORT: FROM sends the 30 MB blob to TO over one TCP connection, paced over
# about 3 s (1 MB per 100 ms), so the daemon is replaced while it runs. Appends the pids to BG.
stream() {
  in_pod "$2" timeout 90 nc -l -s "${POD_IP[$2]}" -p "$3" >"$WORK/got.$3" &
  BG+=($!)
  sleep 0.3
  (for i in $(seq 0 29); do dd if="$WORK/blob" bs=1M skip="$i" count=1 status=none; sleep 0.1; done) |
    in_pod "$1" timeout 90 nc -N "${POD_IP[$2]}" "$3" &
  BG+=($!)
}
# stream_done PORT RECEIVER_PID SENDER_PID: both ends exited 0, every byte arrived intact.
stream_done() {
  wait "$3"; local s=$?
  wait "$2"; local r=$?
  [ "$s" = 0 ] && [ "$r" = 0 ] && [ "$(sha256sum <"$WORK/got.$1" | cut -d' ' -f1)" = "$WANT" ]
}
RST0_A=$(tcp_stat "$A" EstabResets) RST0_C=$(tcp_stat "$C" EstabResets)
RTX0_A=$(tcp_stat "$A" RetransSegs) RTX0_C=$(tcp_stat "$C" RetransSegs)
stream "$A" "$B" 7001
TAP_STREAM=("${BG[@]: -2}")
stream "$C" "$D" 7002
VETH_STREAM=("${BG[@]: -2}")
in_pod "$A" ping -c 50 -i 0.1 -W 1 "${POD_IP[$D]}" >"$WORK/ping.txt" 2>&1 &
PING=$!
BG+=("$PING")
sleep 1
if daemon "$NEW"; then ok "this build started on v0.1.0's state (SIGTERM to socket up: $SWAP_MS ms)"; else fail "start this build"; exit 1; fi
check "the TAP pods' TCP stream (A -> B) completes, 30 MB intact" stream_done 7001 "${TAP_STREAM[@]}"
check "the veth pods' TCP stream (C -> D) completes, 30 MB intact" stream_done 7002 "${VETH_STREAM[@]}"
check "... and neither sender saw a reset (Tcp EstabResets unchanged)" \
  test "$(tcp_stat "$A" EstabResets)/$(tcp_stat "$C" EstabResets)" = "$RST0_A/$RST0_C"
wait "$PING"
RTX_A=$(($(tcp_stat "$A" RetransSegs) - RTX0_A))
RTX_C=$(($(tcp_stat "$C" RetransSegs) - RTX0_C))
LOST=$(grep -oE '[0-9]+ received' "$WORK/ping.txt" | awk '{ print 50 - $1 }')
log "figures: swap $SWAP_MS ms; retransmitted segments: TAP stream $RTX_A, veth stream $RTX_C; pings lost across the swap (A -> D, every 100 ms): ${LOST:-?} of 50"

log "this build serves v0.1.0's pods"
check "this build's netstackd speaks control protocol 3" test "$(ctl status | jq .protocol)" = 3
for p in "$A" "$B" "$C" "$D"; do
  check "ctl list of the new netstackd shows $p attached" listed "$p"
done
check "ctl status counts the 4 pods" test "$(ctl status | jq .attachments)" = 4
check "v0.1.0's state files are read as they are (not rewritten)" \
  test "$(state_version "$A")$(state_version "$D")" = nullnull
check "old pods reach each other: A -> B, C -> D, B -> C" \
  eval 'ping_ok "$A" "${POD_IP[$B]}" && ping_ok "$C" "${POD_IP[$D]}" && ping_ok "$B" "${POD_IP[$C]}"'
run_plugin "$NEW" CHECK "$A" "new plugin, pod of the old plugin:"
run_plugin "$NEW" CHECK "$C" "new plugin, pod of the old plugin:"
# raw_request JSON: one request on the control socket, as bytes; prints the reply's JSON.
raw_request() {
  python3 - "$SOCK" "$1" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = sys.argv[2].encode()
s.sendall(struct.pack(">I", len(body)) + body)
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
print(s.recv(n, socket.MSG_WAITALL).decode())
PY
}
out=$(raw_request '{"op":"attach_many","pods":[],"protocol":4}')
check "a request of a newer protocol it cannot read is refused retryable, naming both protocols" \
  eval 'jq -r .message <<<"$out" | grep -E "client speaks control protocol 4 .*netstackd speaks 3 .*\(retryable\)$"'
out=$(raw_request '{"op":"status"}')
check "a request without a version (v0.1.0's bytes) is answered, with the daemon's protocol" \
  test "$(jq -r '.reply + " " + (.protocol | tostring)' <<<"$out")" = "status 3"

log "skew: the v0.1.0 plugin on this netstackd"
F=upg-f-$RUN_ID W=upg-w-$RUN_ID
add "$OLD" "$F" "$TAPCONF" "v0.1.0 plugin -> new netstackd:"
add "$OLD" "$W" "$VETHCONF" "v0.1.0 plugin -> new netstackd:"
check "the new netstackd records them in its format (state_version 2)" \
  test "$(state_version "$F")$(state_version "$W")" = 22
check "pods F and W reach old pods A and D" eval 'ping_ok "$F" "${POD_IP[$A]}" && ping_ok "$W" "${POD_IP[$D]}"'
run_plugin "$OLD" CHECK "$F" "v0.1.0 plugin -> new netstackd:"
run_plugin "$OLD" CHECK "$W" "v0.1.0 plugin -> new netstackd:"
PEER_W=$(veth_peer "$W")
run_plugin "$OLD" DEL "$F" "v0.1.0 plugin -> new netstackd:"
run_plugin "$OLD" DEL "$W" "v0.1.0 plugin -> new netstackd:"
check "... nothing of F or W is left" eval 'gone "$F" "" && gone "$W" "$PEER_W"'

log "the new plugin on this netstackd, and DEL of v0.1.0's pods"
G=upg-g-$RUN_ID H=upg-h-$RUN_ID
add "$NEW" "$G" "$TAPCONF" "new plugin:"
add "$NEW" "$H" "$VETHCONF" "new plugin:"
check "pod G reaches old pod B, pod H old pod C" eval 'ping_ok "$G" "${POD_IP[$B]}" && ping_ok "$H" "${POD_IP[$C]}"'
PEER_C=$(veth_peer "$C")
run_plugin "$NEW" DEL "$A" "new plugin, pod of the old plugin:"
run_plugin "$NEW" DEL "$C" "new plugin, pod of the old plugin:"
check "... nothing of A (TAP) or C (veth) is left" eval 'gone "$A" "" && gone "$C" "$PEER_C"'
check "the other pods are unaffected: B -> D, G -> H" \
  eval 'ping_ok "$B" "${POD_IP[$D]}" && ping_ok "$G" "${POD_IP[$H]}"'

log "rollback: SIGTERM this build, start v0.1.0 again"
if daemon "$OLD"; then ok "v0.1.0 started on this build's state ($SWAP_MS ms)"; else fail "restart v0.1.0"; exit 1; fi
for p in "$B" "$D" "$G" "$H"; do
  check "v0.1.0 restored $p (its own ctl list)" eval 'BIN=$OLD listed "$p"'
done
check "pods still reach each other under v0.1.0: G -> B, H -> D" \
  eval 'ping_ok "$G" "${POD_IP[$B]}" && ping_ok "$H" "${POD_IP[$D]}"'
PEER_H=$(veth_peer "$H")
PEER_D=$(veth_peer "$D")
for p in "$B" "$D" "$G" "$H"; do run_plugin "$NEW" DEL "$p" "new plugin -> v0.1.0 netstackd:"; done
check "... nothing of B, D, G, H is left" \
  eval 'gone "$B" "" && gone "$D" "$PEER_D" && gone "$G" "" && gone "$H" "$PEER_H"'
check "the state dir is empty" test -z "$(ls -A "$STATE")"

echo "test_upgrade: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
