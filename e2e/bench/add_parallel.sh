#!/usr/bin/env bash
# CNI ADD latency under concurrency, as a runtime starting many sandboxes at once sees it:
# rounds of C ADDs started together (C = 16 by default), each call timed on its own, for
# netstack TAP mode, netstack veth mode and the reference bridge plugin (host-local IPAM for
# all, `ipMasq` off), the kinds taking turns round by round so that all see the same machine.
# Prints p50/p99 per kind and netstack's ratio to the bridge's, and writes them as JSON.
#
#   e2e/bench/add_parallel.sh [--pods N] [--concurrency C] [--workers W] [--no-build] [--out FILE]
#
# As root, from the repository root. Default: 64 pods per kind in rounds of 16, netstackd with
# its default worker count (--workers W: that many queues per TAP, to see what a worker costs
# an ADD). About a minute. Every pod is DELeted (C at a time) before the next round of the
# same kind, so each round starts from the same number of pods; everything the run creates
# is removed on exit, Ctrl-C or failure (BENCH_LEDGER lists it, as for run.sh).
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NPODS=64 CONC=16 WORKERS= BUILD=1
OUT=$REPO/target/bench/add_parallel.json
while (($#)); do
  case $1 in
    --pods) NPODS=$2; shift ;;
    --concurrency) CONC=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "add_parallel.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
positive_ints add_parallel.sh "$NPODS" "$CONC" ${WORKERS:+"$WORKERS"}
need_root add_parallel.sh

RUN_ID=${BENCH_RUN_ID:-$$}
ID=$((RUN_ID % 100000))
PFX=nsa$ID
WORK=/tmp/netstack-addbench.$RUN_ID
X=$(free_subnet $((RUN_ID % 250 + 1)) 10.253 10.254)
POD_CIDR=10.253.$X.0/24
BR_SUBNET=10.254.$X.0/24
UPLINK=nsau$ID
BRIDGE=nsabr$ID
DP_NETNS=$PFX-dp
SOCK=$WORK/netstackd.sock
IPAM_DIR=$WORK/ipam
NETSTACKD_PID=

cleanup() {
  local rc=$? kind name
  set +e
  trap - EXIT INT TERM HUP
  if [ -f "$WORK/pods" ]; then
    while read -r kind name; do
      [ -e "/run/netns/$name" ] || continue
      cni_call DEL "$kind" "$name" >/dev/null 2>&1
      ip netns del "$name" 2>/dev/null
    done <"$WORK/pods"
  fi
  if [ -n "$NETSTACKD_PID" ]; then
    kill -TERM "$NETSTACKD_PID" 2>/dev/null
    wait "$NETSTACKD_PID" 2>/dev/null
  fi
  ip link del "$UPLINK" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  ip netns del "$DP_NETNS" 2>/dev/null
  for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PFX-"); do ip netns del "$name" 2>/dev/null; done
  rm -rf "$WORK"
  exit "$rc"
}
on_exit cleanup

log "add_parallel: packages and release build"
"$REPO/scripts/deps.sh" >/dev/null || exit 1
if ((BUILD)); then
  (cd "$REPO" && cargo build --release --quiet --bins) || exit 1
fi
mkdir -p "$WORK" "$IPAM_DIR" "$(dirname "$OUT")"
ledger dir "$WORK"
: >"$WORK/pods"

"$BIN/netstackd" --socket "$SOCK" --state-dir "$WORK/state" --pod-cidr "$POD_CIDR" --uplink "$UPLINK" \
  --metrics-addr off --dp-netns "/run/netns/$DP_NETNS" ${WORKERS:+--workers "$WORKERS"} \
  >>"$WORK/netstackd.log" 2>&1 &
NETSTACKD_PID=$!
ledger pid "$NETSTACKD_PID"
ledger netns "$DP_NETNS"
ledger link "$UPLINK"
ledger link "$BRIDGE"
for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "netstackd did not start:" >&2; cat "$WORK/netstackd.log" >&2; exit 1; }
W=$("$BIN/netstackd" ctl --socket "$SOCK" --json status | jq -r .workers)

IPAM_NS='"ipam": { "type": "host-local", "ranges": [[{ "subnet": "'$POD_CIDR'" }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "'$IPAM_DIR'" }'
CONF[tap]='{ "cniVersion": "1.0.0", "name": "nsadd", "type": "netstack", "mode": "tap", "socket": "'$SOCK'", "mtu": 1500, '$IPAM_NS' }'
CONF[veth]='{ "cniVersion": "1.0.0", "name": "nsadd", "type": "netstack", "mode": "veth", "socket": "'$SOCK'", "mtu": 1500, '$IPAM_NS' }'
CONF[bridge]='{ "cniVersion": "1.0.0", "name": "nsadd-bridge", "type": "bridge", "bridge": "'$BRIDGE'", "isGateway": true, "ipMasq": false, "hairpinMode": false, "mtu": 1500, "ipam": { "type": "host-local", "ranges": [[{ "subnet": "'$BR_SUBNET'" }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "'$IPAM_DIR'" } }'
PLUGIN[tap]=$BIN/netstack PLUGIN[veth]=$BIN/netstack PLUGIN[bridge]=$REF_CNI/bridge
KINDS=(tap veth bridge)

# timed_add KIND NAME: one ADD; appends its wall time in ms to $WORK/ms-KIND, or a failure.
timed_add() {
  local t0 t1 out
  t0=$EPOCHREALTIME
  out=$(cni_call ADD "$1" "$2" 2>&1)
  local rc=$?
  t1=$EPOCHREALTIME
  if ((rc == 0)); then
    awk -v a="${t0/./}" -v b="${t1/./}" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$WORK/ms-$1"
  else
    echo "$2: $(head -c 200 <<<"$out")" >>"$WORK/fail-$1"
  fi
}

ROUNDS=$(((NPODS + CONC - 1) / CONC))
log "add_parallel: $ROUNDS rounds of $CONC concurrent ADDs per kind (netstackd: $W workers)"
for r in $(seq 1 "$ROUNDS"); do
  for kind in "${KINDS[@]}"; do
    names=()
    for c in $(seq 1 "$CONC"); do
      name=$PFX-$kind-$r-$c
      ip netns add "$name" && ip -n "$name" link set lo up
      echo "$kind $name" >>"$WORK/pods"
      ledger netns "$name"
      names+=("$name")
    done
    pids=()
    for name in "${names[@]}"; do timed_add "$kind" "$name" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; done
    # Back to no pods of this kind: DEL (as many at once), then the namespaces.
    pids=()
    for name in "${names[@]}"; do cni_call DEL "$kind" "$name" >/dev/null 2>&1 & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p"; done
    for name in "${names[@]}"; do ip netns del "$name"; done
  done
done

pct() { # FILE P: the P-th percentile (nearest rank)
  sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {r=int(NR*p+0.999999); print a[r<1?1:r]}'
}
json="{\"concurrency\": $CONC, \"pods_per_kind\": $((ROUNDS * CONC)), \"workers\": $W, \"kinds\": {"
sep=
printf '  %-7s %9s %9s %8s %8s\n' kind "p50 ms" "p99 ms" samples failed
for kind in "${KINDS[@]}"; do
  n=0 f=0
  [ -f "$WORK/ms-$kind" ] && n=$(wc -l <"$WORK/ms-$kind")
  [ -f "$WORK/fail-$kind" ] && f=$(wc -l <"$WORK/fail-$kind")
  if ((n > 0)); then p50=$(pct "$WORK/ms-$kind" 0.5) p99=$(pct "$WORK/ms-$kind" 0.99); else p50=null p99=null; fi
  printf '  %-7s %9s %9s %8s %8s\n' "$kind" "$p50" "$p99" "$n" "$f"
  [ "$f" -gt 0 ] && head -3 "$WORK/fail-$kind" | sed 's/^/          /'
  json="$json$sep\"$kind\": {\"p50_ms\": $p50, \"p99_ms\": $p99, \"samples\": $n, \"failed\": $f}"
  sep=", "
done
json="$json}}"
jq . <<<"$json" >"$OUT"
for kind in tap veth; do
  jq -r --arg k "$kind" '.kinds as $x | if ($x[$k].p50_ms and $x.bridge.p50_ms) then
    "  \($k) / bridge: p50 x\($x[$k].p50_ms / $x.bridge.p50_ms * 100 | round / 100), p99 x\($x[$k].p99_ms / $x.bridge.p99_ms * 100 | round / 100)"
    else empty end' "$OUT"
done
echo "JSON: $OUT"
