#!/usr/bin/env bash
# e2e: parallel CNI calls, as containerd and CRI-O make them for different sandboxes (issue 14).
# One netstackd (IPv4 + IPv6 pod CIDRs), four conflists of one network (one host-local pool):
# TAP IPv4, TAP dual-stack, veth IPv4, veth dual-stack.
#  1. 64 ADDs at once, 16 of each kind.
#  2. Then at once: DEL of half of them, 32 new ADDs and a CHECK of each of the other half,
#     with netstackd stopped (SIGTERM) and started again in the middle.
#  3. Calls that failed with the retryable code are retried as a runtime would; then DEL of all.
# Asserted: every call succeeds or fails with CNI code 11 (try again later); no two pods share
# an address; every pod that got a result has its link and reaches the gateway; at the end no
# TAP, veth peer, state file or host-local reservation is left, and netstackd's and its
# dataplane's descriptor counts are back to their idle baseline. Needs root; about 1 minute.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

N=${PARALLEL_ADDS:-64}
POD_CIDR6=fd00:e2e:$(printf '%x' $((RUN_ID % 65536)))::/64
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }
state_files() { find "$STATE" -maxdepth 1 -name '*.json*' | wc -l; }
# host-local keeps one file per reserved address (and last_reserved_ip.N, lock).
ipam_reservations() { find "$IPAM_DIR/$NETWORK" -maxdepth 1 -type f ! -name 'last_reserved_ip*' ! -name lock 2>/dev/null | wc -l; }

# conflist KIND: the plugin config of one kind (tap4, tap46, veth4, veth46), as libcni hands it.
write_conflist
for kind in tap4 tap46 veth4 veth46; do
  mode=${kind%%[0-9]*}
  jq -c --arg mode "$mode" --arg v6 "$POD_CIDR6" --arg kind "$kind" '
    .plugins[0] + {cniVersion: .cniVersion, name: .name, mode: $mode}
    | if ($kind | endswith("46")) then .ipam.ranges += [[{subnet: $v6}]] | .ipam.routes += [{dst: "::/0"}] else . end' \
    "$CONFLIST" >"$WORK/$kind.json"
done
kind_of() { local k=(tap4 tap46 veth4 veth46); echo "${k[$(($1 % 4))]}"; }

# call CMD ID KIND [PREV_RESULT_FILE]: one plugin call; stdout in $WORK/out/CMD-ID, exit
# status in $WORK/out/CMD-ID.rc.
mkdir -p "$WORK/out"
call() {
  local cmd=$1 id=$2 kind=$3 prev=${4:-} conf
  conf=$(cat "$WORK/$kind.json")
  [ -n "$prev" ] && conf=$(jq -c --slurpfile p "$prev" '. + {prevResult: $p[0]}' <<<"$conf")
  printf '%s' "$conf" | CNI_COMMAND=$cmd CNI_CONTAINERID=$id CNI_NETNS=/run/netns/$id CNI_IFNAME=eth0 \
    CNI_PATH="$BIN:$REF_CNI" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$id" \
    "$BIN/netstack" >"$WORK/out/$cmd-$id" 2>>"$WORK/plugin.err"
  echo $? >"$WORK/out/$cmd-$id.rc"
}
rc_of() { cat "$WORK/out/$1-$2.rc"; }
code_of() { jq -r '.code // empty' "$WORK/out/$1-$2" 2>/dev/null; }
# outcome CMD ID: ok, retry (CNI code 11) or the failure.
outcome() {
  if [ "$(rc_of "$1" "$2")" = 0 ]; then echo ok
  elif [ "$(code_of "$1" "$2")" = 11 ]; then echo retry
  else echo "failed: $(tr -d '\n' <"$WORK/out/$1-$2" | head -c 300)"
  fi
}
new_pod() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  echo "$1" >>"$WORK/pods"
}
# tally CMD IDS...: counts the outcomes; prints "ok retry bad", lists the bad ones.
tally() {
  local cmd=$1 id o okn=0 retry=0 bad=0; shift
  for id in "$@"; do
    o=$(outcome "$cmd" "$id")
    case $o in
      ok) okn=$((okn + 1)) ;;
      retry) retry=$((retry + 1)); echo "$id" >>"$WORK/retry-$cmd"
        jq -r .msg "$WORK/out/$cmd-$id" | sed "s/$id/ID/g; s/[0-9][0-9]*/N/g" >>"$WORK/why-$cmd" ;;
      *) bad=$((bad + 1)); echo "       $cmd $id: $o" >&2 ;;
    esac
  done
  [ -s "$WORK/why-$cmd" ] && sort "$WORK/why-$cmd" | uniq -c | sed "s/^/       $cmd asked to retry: /" >&2
  rm -f "$WORK/why-$cmd"
  echo "$okn $retry $bad"
}

start_netstackd --workers 2 --pod-cidr-v6 "$POD_CIDR6" || exit 1
sleep 0.5
SUP_FDS0=$(fd_count "$NETSTACKD_PID")
DP_FDS0=$(fd_count "$(child_pid)")

log "$N ADDs at once (TAP and veth, IPv4 and dual-stack)"
IDS=()
for i in $(seq 0 $((N - 1))); do
  id=par-$RUN_ID-$i
  IDS+=("$id")
  new_pod "$id"
done
PIDS=()
for i in $(seq 0 $((N - 1))); do
  call ADD "${IDS[$i]}" "$(kind_of "$i")" &
  PIDS+=($!)
done
for p in "${PIDS[@]}"; do wait "$p"; done
read -r okn retry bad <<<"$(tally ADD "${IDS[@]}")"
check "$N ADDs: $okn succeeded, $retry asked to retry (code 11), $bad failed otherwise" test "$bad" = 0
check "most of them went through ($okn of $N)" test "$okn" -ge $((N * 3 / 4))
# Runtimes retry: so does this test, one at a time, until every pod is up.
for id in $(cat "$WORK/retry-ADD" 2>/dev/null); do
  i=${id##*-}
  call DEL "$id" "$(kind_of "$i")"
  call ADD "$id" "$(kind_of "$i")"
  [ "$(outcome ADD "$id")" = ok ] || fail "the retried ADD of $id: $(outcome ADD "$id")"
done
rm -f "$WORK/retry-ADD"

# addresses: every address in the successful ADD results, one per line.
addresses() {
  local id
  for id in "$@"; do
    [ "$(rc_of ADD "$id")" = 0 ] && jq -r '.ips[].address' "$WORK/out/ADD-$id"
  done
}
all=$(addresses "${IDS[@]}" | sort)
dups=$(uniq -d <<<"$all")
check "no two pods share an address ($(wc -l <<<"$all") addresses, duplicates: ${dups:-none})" test -z "$dups"
v6=$(grep -c : <<<"$all")
check "the dual-stack pods got IPv6 addresses ($v6 of $((N / 2)))" test "$v6" = $((N / 2))
check "netstackd holds $N attachments" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.attachments == $N'"
unreached=
for i in $(seq 0 $((N - 1))); do
  id=${IDS[$i]}
  ip netns exec "$id" ping -c 1 -W 2 "$GATEWAY" >/dev/null 2>&1 || unreached="$unreached $id"
done
check "every pod reaches the gateway${unreached:+ (not:$unreached)}" test -z "$unreached"
a=$(jq -r '.ips[0].address' "$WORK/out/ADD-${IDS[0]}" | cut -d/ -f1)
check "pods reach each other across modes (veth ${IDS[3]} -> TAP ${IDS[0]})" \
  ip netns exec "${IDS[3]}" ping -c 1 -W 2 "$a"

log "DEL half, ADD $((N / 2)) more, CHECK the rest, all at once; netstackd restarts meanwhile"
NEW=()
for i in $(seq "$N" $((N + N / 2 - 1))); do
  id=par-$RUN_ID-$i
  NEW+=("$id")
  new_pod "$id"
done
PIDS=()
DELS=() CHECKS=()
for i in $(seq 0 $((N - 1))); do
  id=${IDS[$i]}
  if [ $((i % 2)) = 0 ]; then
    DELS+=("$id"); call DEL "$id" "$(kind_of "$i")" &
  else
    CHECKS+=("$id"); call CHECK "$id" "$(kind_of "$i")" "$WORK/out/ADD-$id" &
  fi
  PIDS+=($!)
  if [ "$i" = $((N / 2)) ]; then
    # In the middle of it all: netstackd stops (SIGTERM) and starts again.
    stop_netstackd
    start_netstackd --workers 2 --pod-cidr-v6 "$POD_CIDR6" >/dev/null || fail "netstackd starts again"
  fi
done
for i in $(seq "$N" $((N + N / 2 - 1))); do
  call ADD "${NEW[$((i - N))]}" "$(kind_of "$i")" &
  PIDS+=($!)
done
for p in "${PIDS[@]}"; do wait "$p"; done
read -r okn retry bad <<<"$(tally DEL "${DELS[@]}")"
check "${#DELS[@]} DELs: $okn succeeded, $retry asked to retry, $bad failed otherwise" test "$bad" = 0
read -r okn retry bad <<<"$(tally CHECK "${CHECKS[@]}")"
check "${#CHECKS[@]} CHECKs: $okn succeeded, $retry asked to retry, $bad failed otherwise" test "$bad" = 0
read -r okn retry bad <<<"$(tally ADD "${NEW[@]}")"
check "${#NEW[@]} new ADDs: $okn succeeded, $retry asked to retry, $bad failed otherwise" test "$bad" = 0

log "retries, as a runtime makes them"
for id in $(cat "$WORK/retry-DEL" 2>/dev/null); do
  i=${id##*-}; call DEL "$id" "$(kind_of "$i")"
  [ "$(outcome DEL "$id")" = ok ] || fail "the retried DEL of $id: $(outcome DEL "$id")"
done
for id in $(cat "$WORK/retry-ADD" 2>/dev/null); do
  i=${id##*-}; call DEL "$id" "$(kind_of "$i")"; call ADD "$id" "$(kind_of "$i")"
  [ "$(outcome ADD "$id")" = ok ] || fail "the retried ADD of $id: $(outcome ADD "$id")"
done
for id in $(cat "$WORK/retry-CHECK" 2>/dev/null); do
  i=${id##*-}; call CHECK "$id" "$(kind_of "$i")" "$WORK/out/ADD-$id"
  [ "$(outcome CHECK "$id")" = ok ] || fail "the retried CHECK of $id: $(outcome CHECK "$id")"
done
LIVE=("${CHECKS[@]}" "${NEW[@]}")
all=$(addresses "${LIVE[@]}" | sort)
dups=$(uniq -d <<<"$all")
check "no two live pods share an address ($(wc -l <<<"$all") addresses, duplicates: ${dups:-none})" test -z "$dups"
check "netstackd holds the ${#LIVE[@]} live pods" \
  sh -c "$BIN/netstackd ctl --socket $SOCK --json list | jq -e '[.[] | select(.state == \"attached\")] | length == ${#LIVE[@]}'"
check "host-local holds one reservation per live address" test "$(ipam_reservations)" = "$(wc -l <<<"$all")"
unreached=
for id in "${LIVE[@]}"; do
  ip netns exec "$id" ping -c 1 -W 2 "$GATEWAY" >/dev/null 2>&1 || unreached="$unreached $id"
done
check "every live pod reaches the gateway${unreached:+ (not:$unreached)}" test -z "$unreached"
links=0
for id in "${DELS[@]}"; do
  ip -n "$id" link show eth0 >/dev/null 2>&1 && links=$((links + 1))
done
check "the deleted pods have no eth0 left ($links)" test "$links" = 0

log "DEL of every live pod, at once"
PIDS=()
for id in "${LIVE[@]}"; do
  i=${id##*-}; call DEL "$id" "$(kind_of "$i")" &
  PIDS+=($!)
done
for p in "${PIDS[@]}"; do wait "$p"; done
rm -f "$WORK/retry-DEL"
read -r okn retry bad <<<"$(tally DEL "${LIVE[@]}")"
check "${#LIVE[@]} DELs: $okn succeeded, $retry asked to retry, $bad failed otherwise" test "$bad" = 0
for id in $(cat "$WORK/retry-DEL" 2>/dev/null); do
  i=${id##*-}; call DEL "$id" "$(kind_of "$i")"
done
sleep 0.5
links=0
for id in "${IDS[@]}" "${NEW[@]}"; do
  ip -n "$id" link show eth0 >/dev/null 2>&1 && links=$((links + 1))
done
check "no pod TAP or veth left ($links)" test "$links" = 0
peers=$(in_dp ip -o link show type veth 2>/dev/null | wc -l)
check "no veth peer left in netstackd's namespace ($peers)" test "$peers" = 0
check "no state file left ($(state_files))" test "$(state_files)" = 0
check "host-local holds no reservation ($(ipam_reservations))" test "$(ipam_reservations)" = 0
check "netstackd has no attachment" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.attachments == 0'"
sup=$(fd_count "$NETSTACKD_PID")
dp=$(fd_count "$(child_pid)")
check "supervisor descriptors back to the idle baseline ($sup, baseline $SUP_FDS0)" test "$sup" = "$SUP_FDS0"
check "dataplane descriptors back to the idle baseline ($dp, baseline $DP_FDS0)" test "$dp" = "$DP_FDS0"

if [ "$FAILS" != 0 ]; then
  echo "plugin stderr (last lines):"; tail -5 "$WORK/plugin.err"
  echo "netstackd's warnings and errors:"; grep -E ' (WARN|ERROR) ' "$WORK/netstackd.log" | tail -10
fi
echo
echo "test_parallel: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
