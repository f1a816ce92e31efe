#!/usr/bin/env bash
# e2e: what netstackd does with its state files when it restarts. Files are named by
# (container id, ifname) without ambiguity, and files of the older naming are restored and
# renamed; a pod whose restore fails for any reason but "the pod is gone" (here: too small an
# RLIMIT_NOFILE) keeps its state file, shows as restore_failed in ctl and metrics, is retried
# (and cleaned up by the retry once its netns is gone, or by DEL), and forwards again after a
# restart with enough descriptors; a pod whose netns was deleted loses its state file; a
# /proc/PID/ns/net attachment whose process exited and whose pid now belongs to a process in
# another netns (with a TAP of the same name) is never re-entered; CNI GC leaves the OCI hook's
# attachments alone. Needs root; run by scripts/test.sh. About 40 s.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

# Many queues per pod, so that "enough descriptors for netstackd but not for the pods" has a
# wide margin on both sides.
WORKERS=8
SLEEPERS=()
restore_cleanup() {
  local p
  for p in "${SLEEPERS[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "${KEEP_LOG:-}" ] && cp "$WORK/netstackd.log" "$KEEP_LOG"
  e2e_cleanup
}
trap restore_cleanup EXIT

# start_limited NOFILE: netstackd with soft and hard RLIMIT_NOFILE NOFILE.
start_limited() { NETSTACKD_LAUNCH="prlimit --nofile=$1:$1 --" start_netstackd --workers "$WORKERS"; }
# pod_state ID [IFNAME]: the pod's state in `ctl list` (empty when not listed).
pod_state() {
  ctl list | jq -r --arg id "$1" --arg ifn "${2:-eth0}" \
    '.[] | select(.container_id == $id and .ifname == $ifn) | .state'
}
has_state_file() { test -f "$STATE/$1:${2:-eth0}.json"; }
fd_count() { find "/proc/$NETSTACKD_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
# sleeper: a sleeping process (its pid in SLEEPER_PID) in a new netns, without capabilities
# (as a container's; netstackd, with fewer than root, may open its /proc/PID/ns/net then).
sleeper() {
  unshare -n setpriv --bounding-set=-all --inh-caps=-all sleep 1000 &
  SLEEPER_PID=$!
  SLEEPERS+=("$SLEEPER_PID")
}
# The plugin's GC, as a 1.1.0 runtime calls it, with VALID the valid attachments (JSON array).
gc() {
  jq -c --argjson valid "$1" '.plugins[0] + {cniVersion: "1.1.0", name: .name,
      "cni.dev/valid-attachments": $valid}' "$CONFLIST" |
    env CNI_COMMAND=GC CNI_PATH="$BIN:$REF_CNI" "$BIN/netstack"
}
# reserved ID: host-local holds an address for container ID (files hold "ID\r\nifname").
# cni_check POD: CNI CHECK of a pod add_pod made, with its ADD result as prevResult.
cni_check() {
  jq -c --slurpfile r "$WORK/$1.result.json" '.plugins[0] + {cniVersion: .cniVersion,
      name: .name, prevResult: $r[0]}' "$CONFLIST" |
    env CNI_COMMAND=CHECK CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" CNI_IFNAME=eth0 \
      CNI_PATH="$BIN:$REF_CNI" CNI_ARGS="IgnoreUnknown=1" "$BIN/netstack"
}
reserved() { grep -rlE "^$1"$'\r'"?\$" "$IPAM_DIR/$NETWORK" >/dev/null 2>&1; }

build_release || exit 1
write_conflist
start_netstackd --workers "$WORKERS" || exit 1

P=r$RUN_ID
A=$P-a B=$P-b C=$P-c D=$P-d
IP_A=$(add_pod "$A") && IP_B=$(add_pod "$B") && add_pod "$C" >/dev/null && add_pod "$D" >/dev/null || exit 1
# Two attachments the older naming (<id>_<ifname>.json) gave the same file.
X1=$P-x_a X2=$P-x
for x in "$X1" "$X2"; do ip netns add "$x" && PODS+=("$x") && echo "$x" >>"$WORK/pods"; done
cni ADD "$X1" "/run/netns/$X1" b >/dev/null || exit 1
cni ADD "$X2" "/run/netns/$X2" a_b >/dev/null || exit 1

log "state file names"
check "one file per attachment, named <container id>:<ifname>.json" \
  sh -c "test \$(ls '$STATE' | wc -l) = 6 && test -f '$STATE/$A:eth0.json' && test -f '$STATE/$X1:b.json' && test -f '$STATE/$X2:a_b.json'"
check "a state file records the netns identity" jq -e '.netns_id.ino > 0' "$STATE/$A:eth0.json"
stop_netstackd
# B's file as an older netstackd wrote it: the bare attachment, under the older name.
if [ -f "$STATE/$B:eth0.json" ]; then
  jq 'del(.netns_id)' "$STATE/$B:eth0.json" >"$STATE/${B}_eth0.json" && rm "$STATE/$B:eth0.json"
fi
# B's TAP and the uplink with the kernel's default qdiscs, as an older netstack left them.
tc -n "$B" qdisc replace dev eth0 root mq && tc qdisc replace dev "$UPLINK" root mq ||
  fail "the kernel's default qdisc (mq) put back on B's TAP and the uplink"
start_netstackd --workers "$WORKERS" || exit 1
check "B's TAP, with the mq root of an older netstack, has noqueue after the restore" \
  sh -c "tc -n '$B' qdisc show dev eth0 root | grep -q '^qdisc noqueue '"
check "  ... and so has the uplink" sh -c "tc qdisc show dev '$UPLINK' root | grep -q '^qdisc noqueue '"
check "  ... which netstackd logs" grep -q "qdisc replaced by noqueue.*was=\"\?mq" "$WORK/netstackd.log"
check "both attachments of the colliding old names are restored" \
  test "$(pod_state "$X1" b)/$(pod_state "$X2" a_b)" = attached/attached
check "an old-named state file is restored" test "$(pod_state "$B")" = attached
check "  ... and rewritten in the new form (new name, netns identity)" \
  sh -c "test ! -e '$STATE/${B}_eth0.json' && jq -e '.netns_id.ino > 0' '$STATE/$B:eth0.json'"
check "ping A -> B" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$IP_B"
for x in "$X1:b" "$X2:a_b"; do cni DEL "${x%%:*}" "/run/netns/${x%%:*}" "${x#*:}" >/dev/null; done

log "RLIMIT_NOFILE too small for the pods: restore_failed, state files kept"
# What netstackd holds with every pod served, less what the pods' queues take, plus a few:
# enough for netstackd and a ctl connection, not for one pod's queues.
N=$(fd_count)
LIMIT=$((N - $(ctl status | jq .attachments) * WORKERS + 3))
stop_netstackd
start_limited "$LIMIT" || fail "netstackd starts with RLIMIT_NOFILE $LIMIT"
check "netstackd warns that RLIMIT_NOFILE is short, with the numbers" \
  grep -q "RLIMIT_NOFILE is short: $LIMIT descriptors" "$WORK/netstackd.log"
check "the pods show restore_failed in ctl list" \
  test "$(pod_state "$A")/$(pod_state "$B")/$(pod_state "$C")/$(pod_state "$D")" = restore_failed/restore_failed/restore_failed/restore_failed
check "  ... with the error" sh -c "$BIN/netstackd ctl --socket $SOCK --json list | jq -r '.[].error' | grep -q 'Too many open files'"
check "  ... and in the ctl table" sh -c "$BIN/netstackd ctl --socket $SOCK list | grep '$A' | grep -q restore_failed"
check "  ... and in the metrics" sh -c "$BIN/netstackd ctl --socket $SOCK metrics | grep -q 'netstack_pod_restore_failed{.*container_id=\"$A\".*} 1'"
check_fails_restore() { local out; out=$(cni_check "$1" 2>&1) && return 1; grep -q 'could not restore' <<<"$out"; }
check "CNI CHECK of a restore_failed pod fails, saying so" check_fails_restore "$A"
check "their state files are kept" sh -c "test \$(ls '$STATE' | wc -l) = 4"
check "a restore_failed pod's TAP is left in place" sh -c "ip -n $A -d link show eth0 | grep -q 'persist on'"
out=$(cni DEL "$D" "/run/netns/$D" 2>&1)
check "DEL of a restore_failed pod succeeds" test $? = 0
check "  ... and removes its state file and listing" sh -c "! test -f '$STATE/$D:eth0.json' && test -z \"\$($BIN/netstackd ctl --socket $SOCK --json list | jq -r '.[] | select(.container_id == \"$D\") | .state')\""
ip netns del "$C"
gone=
for _ in $(seq 1 80); do
  if ! has_state_file "$C" && [ -z "$(pod_state "$C")" ]; then gone=1; break; fi
  sleep 0.5
done
check "a retry (backoff 5 s, 10 s, ...) finds C's netns deleted and removes its state file" test -n "$gone"
check "A and B are still restore_failed, files kept" \
  sh -c "test '$(pod_state "$A")/$(pod_state "$B")' = restore_failed/restore_failed && test -f '$STATE/$A:eth0.json' && test -f '$STATE/$B:eth0.json'"
check "the retries were logged" grep -q "restore failed again, retrying in" "$WORK/netstackd.log"

log "enough descriptors again: the pods forward"
stop_netstackd
start_netstackd --workers "$WORKERS" || exit 1
check "A and B restored" test "$(pod_state "$A")/$(pod_state "$B")" = attached/attached
check "CNI CHECK of A passes" cni_check "$A"
check "metrics: restore_failed 0" sh -c "ctl() { $BIN/netstackd ctl --socket $SOCK metrics; }; ctl | grep -q 'netstack_pod_restore_failed{.*container_id=\"$A\".*} 0'"
check "ping A -> B" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$IP_B"

log "a pod whose netns was deleted while netstackd was down"
stop_netstackd
ip netns del "$B"
start_netstackd --workers "$WORKERS" || exit 1
check "B is not listed" test -z "$(pod_state "$B")"
check "B's state file is removed" sh -c "! test -f '$STATE/$B:eth0.json'"
check "A is still served" test "$(pod_state "$A")" = attached

log "a /proc/PID/ns/net attachment whose pid was reused by a process in another netns"
H=$P-h
sleeper
H_PID=$SLEEPER_PID
cni ADD "$H" "/proc/$H_PID/ns/net" >/dev/null
check "the /proc attachment is served" test "$(pod_state "$H")" = attached
check "  ... its state file records the process start time" jq -e '.netns_id.pid_start > 0' "$STATE/$H:eth0.json"
stop_netstackd
start_netstackd --workers "$WORKERS" || exit 1
check "restored after a restart while its process lives (same namespace proven)" test "$(pod_state "$H")" = attached
stop_netstackd
kill "$H_PID"; wait "$H_PID" 2>/dev/null
# A decoy: another netns with a persistent multi-queue TAP eth0 (what restore looks for), and
# a process in it that gets H's old pid (ns_last_pid; other processes may take it: retried).
DECOY=$P-decoy
ip netns add "$DECOY" && PODS+=("$DECOY") && echo "$DECOY" >>"$WORK/pods"
ip -n "$DECOY" tuntap add dev eth0 mode tap multi_queue vnet_hdr
reused=
for _ in $(seq 1 50); do
  echo $((H_PID - 1)) >/proc/sys/kernel/ns_last_pid
  nsenter --net="/run/netns/$DECOY" setpriv --bounding-set=-all --inh-caps=-all sleep 1000 &
  p=$!
  if [ "$p" = "$H_PID" ]; then reused=1; SLEEPERS+=("$p"); break; fi
  # SIGKILL: the child may not have exec'd yet, and a bash child would run our EXIT trap.
  kill -KILL "$p"; wait "$p" 2>/dev/null
done
check "pid $H_PID now belongs to a process in the decoy netns" test -n "$reused"
start_netstackd --workers "$WORKERS" || exit 1
check "the attachment is not re-entered (not attached)" test "$(pod_state "$H")" != attached
check "  ... and, the pod being gone, its state file is removed" sh -c "! test -f '$STATE/$H:eth0.json'"
check "  ... the log says why" grep -q "no longer the network namespace recorded" "$WORK/netstackd.log"
check "the decoy's TAP was not taken (no queue of it is open)" \
  sh -c "ip -n $DECOY -d link show eth0 | grep -q 'numqueues 0 '"
cni DEL "$H" "/proc/$H_PID/ns/net" >/dev/null 2>&1

log "CNI GC and the OCI hook's attachments"
G=$P-g
sleeper
G_PID=$SLEEPER_PID
jq -nc --arg id "$G" --argjson pid "$G_PID" \
  '{ociVersion: "1.0.2-dev", id: $id, status: "creating", pid: $pid, bundle: "/nonexistent",
    annotations: {"netstack.io/attach": "true"}}' >"$WORK/$G.state"
env -i NETSTACK_HOOK_CONFIG="$CONFLIST" NETSTACK_CNI_PATH="$BIN:$REF_CNI" NETSTACK_HOOK_TIMEOUT=10 \
  "$BIN/netstack-hook" createRuntime <"$WORK/$G.state"
check "the hook attached its container" test "$(pod_state "$G")" = attached
check "  ... labelled as the hook's" sh -c "$BIN/netstackd ctl --socket $SOCK --json list | jq -e '.[] | select(.container_id == \"$G\") | .labels[\"netstack.owner\"] == \"hook\"'"
S=$P-s
add_pod "$S" >/dev/null || exit 1
gc "[{\"containerID\": \"$A\", \"ifname\": \"eth0\"}]"
check "GC succeeds" test $? = 0
check "GC released the stale CNI attachment" test -z "$(pod_state "$S")"
check "GC left the hook's attachment attached" test "$(pod_state "$G")" = attached
check "  ... its TAP in place" nsenter --net="/proc/$G_PID/ns/net" ip link show eth0
check "  ... and its address reserved" reserved "$G"
check "A (valid) is untouched" test "$(pod_state "$A")" = attached
jq '.status = "stopped"' "$WORK/$G.state" |
  env -i NETSTACK_HOOK_CONFIG="$CONFLIST" NETSTACK_CNI_PATH="$BIN:$REF_CNI" NETSTACK_HOOK_TIMEOUT=10 \
    "$BIN/netstack-hook" poststop
check "the hook's poststop releases it" test -z "$(pod_state "$G")"

echo "test_restore: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
