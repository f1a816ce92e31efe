#!/usr/bin/env bash
# One-command benchmark: netstack (TAP mode, veth mode) against the kernel's bridge path (the
# reference `bridge` plugin + host-local), and pasta / slirp4netns for pod-to-node, all in the
# same run on this machine. Every pod is a network namespace made through the CNI call path
# (the plugin run with CNI_* variables, as e2e/lib.sh does); traffic only flows between these
# namespaces and the node (pod-to-node servers bind the pods' gateway, or loopback for pasta
# and slirp4netns). Every run is bounded in time. Prints one table and writes the same as JSON
# to target/bench/latest.json. Everything it creates is removed on exit, Ctrl-C or failure.
#
#   e2e/bench/run.sh [--quick] [--duration S] [--add-pods N] [--idle-pods N] [--idle-seconds S]
#                    [--no-build] [--out FILE] [--netstackd-args "ARGS"]
#
# As root, from the repository root. Default: 5-second runs, CNI ADD latency over 50 pods,
# RSS and idle CPU with 200 idle pods (3-5 minutes). --quick: 1-second runs, 20 pods.
# --netstackd-args: extra netstackd options for the run, e.g. "--veth-rx ring".
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

DUR=5 NADD=50 NIDLE=200 IDLE_S=10 BUILD=1 BENCH_MODE=full EXTRA_ARGS=
OUT=$REPO/target/bench/latest.json
while (($#)); do
  case $1 in
    --quick) BENCH_MODE=quick DUR=1 NADD=20 NIDLE=20 IDLE_S=3 ;;
    --duration) DUR=$2; shift ;;
    --add-pods) NADD=$2; shift ;;
    --idle-pods) NIDLE=$2; shift ;;
    --idle-seconds) IDLE_S=$2; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    --netstackd-args) EXTRA_ARGS=$2; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in "$DUR" "$NADD" "$NIDLE" "$IDLE_S"; do
  [[ $v =~ ^[0-9]+$ ]] && ((v > 0)) || { echo "run.sh: durations and pod counts are positive integers" >&2; exit 2; }
done
((NIDLE >= NADD)) || NIDLE=$NADD
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root" >&2; exit 2; }

# --- names: everything this run creates carries its id -------------------------------------
RUN_ID=${BENCH_RUN_ID:-$$}
ID=$((RUN_ID % 100000))
PFX=nsb$ID # every netns, link and file of this run carries it
WORK=/tmp/netstack-bench.$RUN_ID
# Three /24s nobody routes yet: netstack's pod CIDR, the bridge's subnet, pasta's.
X=$((RUN_ID % 250 + 1))
for _ in $(seq 1 250); do
  ip -4 route show | awk '{print $1}' | grep -qx -e "10.250.$X.0/24" -e "10.251.$X.0/24" -e "10.252.$X.0/24" || break
  X=$((X % 250 + 1))
done
POD_CIDR=10.250.$X.0/24
GATEWAY=10.250.$X.1
UPLINK=nsbu$ID
DP_NETNS=$PFX-dp # netstackd's namespace for veth-mode peers
BRIDGE=nsbbr$ID
BR_SUBNET=10.251.$X.0/24
BR_GW=10.251.$X.1
PASTA_ADDR=10.252.$X.2
PASTA_GW=10.252.$X.1
SLIRP_GW=10.0.2.2 # slirp4netns' default gateway, which it maps to the node's loopback
PORT=$((10000 + (RUN_ID % 200) * 100))
NET=nsbench

BIN=${NETSTACK_BIN:-$REPO/target/release}
REF_CNI=/usr/lib/cni
SOCK=$WORK/netstackd.sock
STATE=$WORK/state
IPAM_DIR=$WORK/ipam
NETSTACKD_PID=
NSBENCH=$BIN/nsbench
RESULTS=$WORK/results.tsv
CLK_TCK=$(getconf CLK_TCK)
BGPIDS=()
declare -A CONF PLUGIN IP

# log with the seconds since start, so slow phases show.
log() { printf '\033[1m==> [%3ds] %s\033[0m\n' "$SECONDS" "$*"; }

start_netstackd() {
  local dp=()
  # veth mode's namespace for the peers: ours, so that the run leaves nothing shared behind.
  "$BIN/netstackd" --help 2>/dev/null | grep -q -- --dp-netns && dp=(--dp-netns "/run/netns/$DP_NETNS")
  # The host's FORWARD chain stays untouched, and the uplink keeps 1500 as the bridge baseline's
  # links do (by default netstackd takes the MTU of the default route's interface).
  "$BIN/netstackd" --help 2>/dev/null | grep -q -- --forward-accept && dp+=(--forward-accept=false --uplink-mtu 1500)
  mkdir -p "$STATE"
  "$BIN/netstackd" --socket "$SOCK" --state-dir "$STATE" --pod-cidr "$POD_CIDR" --uplink "$UPLINK" \
    --metrics-addr off "${dp[@]}" $EXTRA_ARGS >>"$WORK/netstackd.log" 2>&1 &
  NETSTACKD_PID=$!
  ledger pid "$NETSTACKD_PID"
  ledger netns "$DP_NETNS"
  ledger link "$UPLINK"
  for _ in $(seq 1 100); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$NETSTACKD_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "netstackd did not start; its log:" >&2
  cat "$WORK/netstackd.log" >&2
  return 1
}

stop_netstackd() {
  [ -n "$NETSTACKD_PID" ] || return 0
  kill -TERM "$NETSTACKD_PID" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$NETSTACKD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$NETSTACKD_PID" 2>/dev/null
  wait "$NETSTACKD_PID" 2>/dev/null
  NETSTACKD_PID=
}

ctl() { "$BIN/netstackd" ctl --socket "$SOCK" --json "$@"; }

# --- cleanup: on exit, Ctrl-C, failure -------------------------------------------------------
cleanup() {
  local rc=$? p kind name
  set +e
  trap - EXIT INT TERM HUP
  for p in "${BGPIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${BGPIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  if [ -f "$WORK/pods" ]; then
    while read -r kind name; do
      [ -e "/run/netns/$name" ] || continue
      [ -n "${CONF[$kind]:-}" ] && cni_call DEL "$kind" "$name" >/dev/null 2>&1
      ip netns del "$name" 2>/dev/null
    done <"$WORK/pods"
  fi
  stop_netstackd
  ip link del "$UPLINK" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  ip netns del "$DP_NETNS" 2>/dev/null # netstackd created it (veth mode); it is ours
  # Anything of ours a failed step may have left (names carry the run id).
  for name in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PFX-"); do ip netns del "$name" 2>/dev/null; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- small helpers ---------------------------------------------------------------------------
# ledger KIND NAME: with BENCH_LEDGER set (e2e/test_bench_smoke.sh), what this run created
# (netns, link, pid, dir), so a test can check that none of it is left.
ledger() { if [ -n "${BENCH_LEDGER:-}" ]; then echo "$1 $2" >>"$BENCH_LEDGER"; fi; }
res() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }   # PATH KEY VALUE
na() { res "$1" _na "$2"; }                                     # PATH REASON: path unavailable
note() { printf '%s\t%s\t%s\n' "$1" _note "$2" >>"$RESULTS"; }  # PATH TEXT: a figure missing
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }

# nsx NS CMD...: CMD in pod NS, or in the node's netns for "host".
nsx() {
  local ns=$1
  shift
  if [ "$ns" = host ]; then "$@"; else ip netns exec "$ns" "$@"; fi
}

# bg NAME NS CMD...: CMD in the background (output in $WORK/NAME.out/.err); sets BG_PID.
bg() {
  local name=$1 ns=$2
  shift 2
  if [ "$ns" = host ]; then
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  else
    ip netns exec "$ns" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  fi
  BG_PID=$!
  BGPIDS+=("$BG_PID")
  ledger pid "$BG_PID"
}

# reap PID: wait for a background job (it is bounded by its own timeout), then forget it.
reap() {
  local p=$1 i
  for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  for i in "${!BGPIDS[@]}"; do [ "${BGPIDS[$i]}" = "$p" ] && unset 'BGPIDS[i]'; done
}

# wait_listen NS tcp|udp PORT: until something listens there (5 s at most).
wait_listen() {
  local flag=-t
  [ "$2" = udp ] && flag=-u
  for _ in $(seq 1 100); do
    nsx "$1" ss -Hln "$flag" "sport = :$3" 2>/dev/null | grep -q . && return 0
    sleep 0.05
  done
  return 1
}

next_port() { PORT=$((PORT + 1)); }

# netstackd's CPU ticks: supervisor (with reaped dataplanes) + the live dataplane.
dp_pid() { ctl status 2>/dev/null | jq -r '.dataplane_pid // empty'; }
ns_ticks() {
  local t=0 dp
  [ -r "/proc/$NETSTACKD_PID/stat" ] && t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$NETSTACKD_PID/stat")
  dp=$(dp_pid)
  [ -n "$dp" ] && [ -r "/proc/$dp/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$dp/stat")))
  echo "$t"
}
# Busy ticks of the whole machine (all CPUs, everything but idle and iowait).
sys_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# VmRSS (KiB) of supervisor + dataplane.
ns_rss_kib() {
  local r=0 p
  for p in "$NETSTACKD_PID" "$(dp_pid)"; do
    [ -n "$p" ] && [ -r "/proc/$p/status" ] && r=$((r + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo "$r"
}

# cni_call CMD KIND NAME: one plugin call with KIND's network config, as a runtime makes it.
cni_call() {
  printf '%s' "${CONF[$2]}" | env CNI_COMMAND="$1" CNI_CONTAINERID="$3" CNI_NETNS="/run/netns/$3" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN:$REF_CNI" \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3" "${PLUGIN[$2]}"
}

# pod_add KIND NAME: netns + CNI ADD. Sets POD_IP, ADD_MS (the plugin call's wall time) and
# ADD_OUT (the plugin's output).
pod_add() {
  local kind=$1 name=$2 t0 t1 rc
  POD_IP='' ADD_MS=''
  ip netns add "$name" || return 1
  echo "$kind $name" >>"$WORK/pods"
  ledger netns "$name"
  ip -n "$name" link set lo up
  t0=$EPOCHREALTIME
  ADD_OUT=$(cni_call ADD "$kind" "$name" 2>&1)
  rc=$?
  t1=$EPOCHREALTIME
  ((rc == 0)) || return 1
  ADD_MS=$(calc "(${t1/./} - ${t0/./}) / 1000")
  POD_IP=$(jq -r '.ips[0].address' <<<"$ADD_OUT" | cut -d/ -f1)
  if [ -n "${BENCH_LEDGER:-}" ]; then # the node-side links the plugin made (bridge, host veth)
    jq -r '.interfaces[]? | select((.sandbox // "") == "") | "link " + .name' <<<"$ADD_OUT" >>"$BENCH_LEDGER"
  fi
  [ -n "$POD_IP" ] && [ "$POD_IP" != null ]
}

pod_del() {
  [ -e "/run/netns/$2" ] || return 0
  cni_call DEL "$1" "$2" >/dev/null 2>&1
  ip netns del "$2" 2>/dev/null
}

# --- 1. packages and binaries ----------------------------------------------------------------
log "bench: packages and release build"
"$REPO/scripts/deps.sh" || exit 1
if ((BUILD)); then
  (cd "$REPO" && cargo build --release --quiet --bins) || exit 1  # as scripts/test.sh builds: no rebuild
fi
for b in netstackd netstack nsbench; do
  [ -x "$BIN/$b" ] || { echo "run.sh: $BIN/$b is missing (build first)" >&2; exit 1; }
done
mkdir -p "$WORK" "$(dirname "$OUT")"
ledger dir "$WORK"
: >"$RESULTS"
: >"$WORK/pods"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- 2. the paths ----------------------------------------------------------------------------
log "bench: netstackd ($POD_CIDR, uplink $UPLINK), bridge $BRIDGE ($BR_SUBNET)"
ledger link "$BRIDGE"
start_netstackd || exit 1
IPAM_NS='"ipam": { "type": "host-local", "ranges": [[{ "subnet": "'$POD_CIDR'" }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "'$IPAM_DIR'" }'
CONF[tap]='{ "cniVersion": "1.0.0", "name": "'$NET'", "type": "netstack", "mode": "tap", "socket": "'$SOCK'", "mtu": 1500, '$IPAM_NS' }'
CONF[veth]='{ "cniVersion": "1.0.0", "name": "'$NET'", "type": "netstack", "mode": "veth", "socket": "'$SOCK'", "mtu": 1500, '$IPAM_NS' }'
CONF[bridge]='{ "cniVersion": "1.0.0", "name": "'$NET-bridge'", "type": "bridge", "bridge": "'$BRIDGE'", "isGateway": true, "ipMasq": false, "hairpinMode": false, "mtu": 1500, "ipam": { "type": "host-local", "ranges": [[{ "subnet": "'$BR_SUBNET'" }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "'$IPAM_DIR'" } }'
PLUGIN[tap]=$BIN/netstack PLUGIN[veth]=$BIN/netstack PLUGIN[bridge]=$REF_CNI/bridge
declare -A SERVER_NODE_IP=([tap]=$GATEWAY [veth]=$GATEWAY [bridge]=$BR_GW)

PATHS=() # the pod-to-pod paths that came up
for kind in tap veth bridge; do
  if ! pod_add "$kind" "$PFX-$kind-a"; then
    reason=$(jq -r '.msg // empty' <<<"$ADD_OUT" 2>/dev/null)
    [ "$kind" = veth ] && reason="veth mode unsupported${reason:+: $reason}"
    echo "  $kind: ADD failed: ${reason:-$ADD_OUT}"
    na "$kind" "${reason:-ADD failed}"
    pod_del "$kind" "$PFX-$kind-a"
    continue
  fi
  IP[$kind-a]=$POD_IP
  if ! pod_add "$kind" "$PFX-$kind-b"; then
    echo "  $kind: second ADD failed: $ADD_OUT"
    na "$kind" "second ADD failed"
    pod_del "$kind" "$PFX-$kind-a"
    pod_del "$kind" "$PFX-$kind-b"
    continue
  fi
  IP[$kind-b]=$POD_IP
  if ! nsx "$PFX-$kind-a" ping -c 2 -i 0.2 -W 2 -q "${IP[$kind-b]}" >/dev/null ||
    ! nsx "$PFX-$kind-a" ping -c 1 -W 2 -q "${SERVER_NODE_IP[$kind]}" >/dev/null; then
    echo "  $kind: pods cannot reach each other or the node"
    na "$kind" "no connectivity"
    continue
  fi
  echo "  $kind: pods ${IP[$kind-a]} and ${IP[$kind-b]}"
  PATHS+=("$kind")
done

# pasta and slirp4netns: one pod each, pod-to-node only (their gateway is the node's loopback).
NODE_PATHS=("${PATHS[@]}")
declare -A NODE_DST=([tap]=$GATEWAY [veth]=$GATEWAY [bridge]=$BR_GW [pasta]=$PASTA_GW [slirp4netns]=$SLIRP_GW)
declare -A NODE_BIND=([tap]=$GATEWAY [veth]=$GATEWAY [bridge]=$BR_GW [pasta]=127.0.0.1 [slirp4netns]=127.0.0.1)
ready_addr() { # NS ADDR: wait (5 s) until the pod has the address
  for _ in $(seq 1 100); do
    ip -n "$1" -4 -o addr show 2>/dev/null | grep -q " $2/" && return 0
    sleep 0.05
  done
  return 1
}
if command -v pasta >/dev/null; then
  ns=$PFX-pasta
  ip netns add "$ns" && echo "pasta $ns" >>"$WORK/pods" && ledger netns "$ns" && ip -n "$ns" link set lo up
  bg pasta host pasta --config-net --netns "/run/netns/$ns" --runas 0 -f -q -a "$PASTA_ADDR" -n 24 \
    -g "$PASTA_GW" -m 1500 -t none -u none -T none -U none
  if ready_addr "$ns" "$PASTA_ADDR"; then NODE_PATHS+=(pasta); echo "  pasta: pod $PASTA_ADDR, MTU 1500"
  else na pasta "pasta did not configure the pod: $(head -c 300 "$WORK/pasta.err")"; fi
else
  na pasta "not installed"
fi
if command -v slirp4netns >/dev/null; then
  ns=$PFX-slirp
  ip netns add "$ns" && echo "slirp4netns $ns" >>"$WORK/pods" && ledger netns "$ns" && ip -n "$ns" link set lo up
  bg slirp host slirp4netns --configure --mtu=1500 --netns-type=path "/run/netns/$ns" tap0
  if ready_addr "$ns" 10.0.2.100; then NODE_PATHS+=(slirp4netns); echo "  slirp4netns: pod 10.0.2.100, MTU 1500"
  else na slirp4netns "slirp4netns did not configure the pod: $(head -c 300 "$WORK/slirp.err")"; fi
else
  na slirp4netns "not installed"
fi
declare -A NODE_NS=([tap]=$PFX-tap-a [veth]=$PFX-veth-a [bridge]=$PFX-bridge-a [pasta]=$PFX-pasta [slirp4netns]=$PFX-slirp)
printf '%s\n' "${PATHS[@]}" | grep -qx tap || { echo "run.sh: the netstack TAP path did not come up" >&2; exit 1; }

# --- 3. traffic ------------------------------------------------------------------------------
# tcp PATH KEY STREAMS SERVER_NS BIND CLIENT_NS DST: one iperf3 run of DUR seconds.
tcp() {
  local path=$1 key=$2 streams=$3 sns=$4 bind=$5 cns=$6 dst=$7 spid ns0 ns1 s0 s1 bytes secs
  next_port
  bg "iperf-s-$path-$key" "$sns" timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "$bind" -p "$PORT"
  spid=$BG_PID
  wait_listen "$sns" tcp "$PORT" || { note "$path" "$key: iperf3 server did not start"; reap "$spid"; return 1; }
  ns0=$(ns_ticks) s0=$(sys_ticks)
  nsx "$cns" timeout --foreground -k 2 $((DUR + 15)) iperf3 -c "$dst" -p "$PORT" -t "$DUR" -P "$streams" -J \
    >"$WORK/iperf-$path-$key.json" 2>&1
  ns1=$(ns_ticks) s1=$(sys_ticks)
  reap "$spid"
  bytes=$(jq -r '.end.sum_received.bytes // empty' "$WORK/iperf-$path-$key.json" 2>/dev/null)
  secs=$(jq -r '.end.sum_received.seconds // empty' "$WORK/iperf-$path-$key.json" 2>/dev/null)
  if [ -z "$bytes" ] || [ -z "$secs" ] || [ "$bytes" = 0 ]; then
    note "$path" "$key: iperf3 failed: $(jq -r '.error // empty' "$WORK/iperf-$path-$key.json" 2>/dev/null | head -c 200)"
    return 1
  fi
  res "$path" "${key}_gbps" "$(calc "$bytes * 8 / $secs / 1e9")"
  res "$path" "_${key}_gbit" "$(calc "$bytes * 8 / 1e9")"
  res "$path" "_${key}_sys_cpu_s" "$(calc "($s1 - $s0) / $CLK_TCK")"
  case $path in tap | veth) res "$path" "_${key}_ns_cpu_s" "$(calc "($ns1 - $ns0) / $CLK_TCK")" ;; esac
  printf '  %-12s %-8s %8.2f Gbit/s\n' "$path" "$key" "$(calc "$bytes * 8 / $secs / 1e9")"
}

log "bench: TCP, iperf3, $DUR s each"
for streams in 1 4; do
  for path in "${PATHS[@]}"; do
    tcp "$path" "tcp${streams}_p2p" "$streams" "$PFX-$path-b" "${IP[$path-b]}" "$PFX-$path-a" "${IP[$path-b]}"
  done
  for path in "${NODE_PATHS[@]}"; do
    tcp "$path" "tcp${streams}_p2n" "$streams" host "${NODE_BIND[$path]}" "${NODE_NS[$path]}" "${NODE_DST[$path]}"
  done
done

# udp PATH KEY [PPS]: 64-byte datagrams pod A -> pod B for DUR seconds (at PPS, or full speed).
udp() {
  local path=$1 key=$2 rate=${3:-} spid sent elapsed got
  next_port
  bg "udp-sink-$path-$key" "$PFX-$path-b" timeout -k 2 $((DUR + 15)) "$NSBENCH" udp-sink \
    --bind "${IP[$path-b]}:$PORT" --duration $((DUR + 10)) --idle 0.5
  spid=$BG_PID
  wait_listen "$PFX-$path-b" udp "$PORT" || { note "$path" "$key: udp-sink did not start"; reap "$spid"; return 1; }
  nsx "$PFX-$path-a" timeout --foreground -k 2 $((DUR + 10)) "$NSBENCH" udp-blast \
    --connect "${IP[$path-b]}:$PORT" --duration "$DUR" ${rate:+--pps "$rate"} >"$WORK/udp-blast-$path-$key.json" 2>&1
  reap "$spid"
  sent=$(jq -r '.sent // empty' "$WORK/udp-blast-$path-$key.json" 2>/dev/null)
  elapsed=$(jq -r '.elapsed_s // empty' "$WORK/udp-blast-$path-$key.json" 2>/dev/null)
  got=$(jq -r '.received // empty' "$WORK/udp-sink-$path-$key.out" 2>/dev/null)
  if [ -z "$sent" ] || [ -z "$got" ] || [ "$sent" = 0 ]; then
    note "$path" "$key: udp-blast/udp-sink failed: $(head -c 200 "$WORK/udp-blast-$path-$key.json")"
    return 1
  fi
  if [ -z "$rate" ]; then
    res "$path" "${key}_tx_kpps" "$(calc "$sent / $elapsed / 1000")"
    res "$path" "${key}_rx_kpps" "$(calc "$got / $elapsed / 1000")"
  fi
  res "$path" "${key}_loss_pct" "$(calc "($sent - $got) * 100 / $sent")"
  printf '  %-12s %-10s sent %8.1f kpps, delivered %8.1f kpps, loss %5.2f %%\n' "$path" "$key" \
    "$(calc "$sent / $elapsed / 1000")" "$(calc "$got / $elapsed / 1000")" "$(calc "($sent - $got) * 100 / $sent")"
}

log "bench: UDP 64 B, $DUR s each (full speed, then at half the bridge's delivered rate)"
for path in "${PATHS[@]}"; do udp "$path" udp64; done
half=$(awk -F'\t' '$1 == "bridge" && $2 == "udp64_rx_kpps" { printf "%d", $3 * 500 }' "$RESULTS")
if [ -n "$half" ] && ((half > 0)); then
  res all _udp64_half_pps "$half"
  for path in "${PATHS[@]}"; do udp "$path" udp64_half "$half"; done
else
  note all "udp64_half: no bridge UDP figure to take half of"
fi

# rtt PATH: 1-byte TCP ping-pong pod A -> pod B for DUR seconds.
rtt() {
  local path=$1 spid out
  next_port
  bg "rr-server-$path" "$PFX-$path-b" timeout -k 2 $((DUR + 15)) "$NSBENCH" rr-server \
    --bind "${IP[$path-b]}:$PORT" --duration $((DUR + 10))
  spid=$BG_PID
  wait_listen "$PFX-$path-b" tcp "$PORT" || { note "$path" "rtt: rr-server did not start"; reap "$spid"; return 1; }
  out=$(nsx "$PFX-$path-a" timeout --foreground -k 2 $((DUR + 10)) "$NSBENCH" rr-client \
    --connect "${IP[$path-b]}:$PORT" --duration "$DUR" 2>&1)
  kill -TERM "$spid" 2>/dev/null
  reap "$spid"
  if ! jq -e '.samples > 0' <<<"$out" >/dev/null 2>&1; then
    note "$path" "rtt: rr-client failed: $(head -c 200 <<<"$out")"
    return 1
  fi
  res "$path" rtt_min_us "$(jq -r .min_us <<<"$out")"
  res "$path" rtt_p50_us "$(jq -r .p50_us <<<"$out")"
  res "$path" rtt_p99_us "$(jq -r .p99_us <<<"$out")"
  res "$path" _rtt_samples "$(jq -r .samples <<<"$out")"
  printf '  %-12s min %7.1f  p50 %7.1f  p99 %7.1f us (%s round trips)\n' "$path" \
    "$(jq -r .min_us <<<"$out")" "$(jq -r .p50_us <<<"$out")" "$(jq -r .p99_us <<<"$out")" "$(jq -r .samples <<<"$out")"
}

log "bench: TCP 1-byte ping-pong RTT, $DUR s each"
for path in "${PATHS[@]}"; do rtt "$path"; done

# --- 4. CNI ADD latency, RSS and idle CPU with many pods --------------------------------------
# add_more KIND FROM TO: pods FROM..TO of KIND, untimed.
add_more() {
  local kind=$1 i
  for i in $(seq "$2" "$3"); do
    if ! pod_add "$kind" "$PFX-$kind-p$i"; then
      note "$kind" "ADD of pod $i failed: $(head -c 200 <<<"$ADD_OUT")"
      return 1
    fi
  done
  return 0
}
del_many() {
  local kind=$1 n=$2 i
  for i in $(seq 1 "$n"); do pod_del "$kind" "$PFX-$kind-p$i"; done
}
add_latency() { # KIND: p50/p99 of the recorded ADD wall times
  [ -s "$WORK/add-$1" ] || return 1
  res "$1" cni_add_p50_ms "$(sort -n "$WORK/add-$1" | awk '{a[NR]=$1} END {r=int(NR*0.5+0.999999); print a[r<1?1:r]}')"
  res "$1" cni_add_p99_ms "$(sort -n "$WORK/add-$1" | awk '{a[NR]=$1} END {r=int(NR*0.99+0.999999); print a[r<1?1:r]}')"
  printf '  %-12s CNI ADD p50 %6.1f ms, p99 %6.1f ms over %d pods\n' "$1" \
    "$(awk -F'\t' -v p="$1" '$1 == p && $2 == "cni_add_p50_ms" {print $3}' "$RESULTS")" \
    "$(awk -F'\t' -v p="$1" '$1 == p && $2 == "cni_add_p99_ms" {print $3}' "$RESULTS")" "$(wc -l <"$WORK/add-$1")"
}

log "bench: CNI ADD latency over $NADD pods; netstackd RSS and idle CPU with $NIDLE idle pods"
# The kinds take turns, one pod each, so all see the same machine: the kernel's asynchronous
# cleanup after earlier deletions (netns teardown, RCU) slows whichever ADDs come next.
ADD_KINDS=()
for kind in bridge veth tap; do printf '%s\n' "${PATHS[@]}" | grep -qx "$kind" && ADD_KINDS+=("$kind"); done
sleep 1
rss0=$(ns_rss_kib)
att0=$(ctl status | jq -r .attachments)
declare -A ADDED=()
for i in $(seq 1 "$NADD"); do
  for kind in "${ADD_KINDS[@]}"; do
    [ "${ADDED[$kind]:-0}" = $((i - 1)) ] || continue # a kind whose ADD failed stops there
    if pod_add "$kind" "$PFX-$kind-p$i"; then
      echo "$ADD_MS" >>"$WORK/add-$kind"
      ADDED[$kind]=$i
    else
      note "$kind" "ADD of pod $i failed: $(head -c 200 <<<"$ADD_OUT")"
    fi
  done
done
for kind in "${ADD_KINDS[@]}"; do
  [ "${ADDED[$kind]:-0}" = "$NADD" ] && add_latency "$kind"
  [ "$kind" = tap ] || del_many "$kind" "${ADDED[$kind]:-0}"
done
# The rest of the idle TAP pods, untimed.
if [ "${ADDED[tap]:-0}" = "$NADD" ] && add_more tap $((NADD + 1)) "$NIDLE"; then
  sleep 1
  rss1=$(ns_rss_kib)
  att1=$(ctl status | jq -r .attachments)
  t0=$(ns_ticks)
  sleep "$IDLE_S"
  t1=$(ns_ticks)
  res tap rss_per_pod_kib "$(calc "($rss1 - $rss0) / ($att1 - $att0)")"
  res tap rss_avg_per_pod_kib "$(calc "$rss1 / $att1")"
  res tap rss_total_mib "$(calc "$rss1 / 1024")"
  res tap idle_cpu_pct "$(calc "($t1 - $t0) * 100 / $CLK_TCK / $IDLE_S")"
  res tap _idle_pods "$((att1 - att0))"
  res tap _attachments "$att1"
  printf '  %-12s RSS %d -> %d KiB with %d more pods (%s KiB each); idle CPU %s %% of one CPU over %s s\n' tap \
    "$rss0" "$rss1" "$((att1 - att0))" "$(calc "($rss1 - $rss0) / ($att1 - $att0)")" \
    "$(calc "($t1 - $t0) * 100 / $CLK_TCK / $IDLE_S")" "$IDLE_S"
fi
del_many tap "$NIDLE"

# --- 5. report -------------------------------------------------------------------------------
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
/usr/bin/python3 "$HERE/report.py" --results "$RESULTS" --out "$OUT" --mode "$BENCH_MODE" --duration "$DUR" \
  --add-pods "$NADD" --idle-pods "$NIDLE" --idle-seconds "$IDLE_S" --started "$STARTED" \
  --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" \
  --git "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo +dirty)" ||
  exit 1
# Runs with the default output also keep a dated copy, to compare later runs with.
if [ "$OUT" = "$REPO/target/bench/latest.json" ]; then
  cp "$OUT" "$REPO/target/bench/$(date -u +%Y%m%dT%H%M%SZ)-$BENCH_MODE.json"
fi
echo "JSON: $OUT"
