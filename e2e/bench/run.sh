#!/usr/bin/env bash
# One-command benchmark: netstack (TAP mode, veth mode) against the kernel's bridge path (the
# reference `bridge` plugin + host-local), the floor of a userspace hop (`nsbench floor`, the
# simplest TAP<->TAP forwarder, in place of netstackd for two pods of its own), and pasta /
# slirp4netns for pod-to-node (each as podman runs it, MTU 65520, and at MTU 1500), all in the
# same run on this machine (what each row measures: e2e/bench/README.md). Every pod is a
# network namespace made through the CNI call path (the plugin run with CNI_* variables, as
# e2e/lib.sh does); traffic only flows between these namespaces and the node (pod-to-node
# servers bind the pods' gateway; for pasta and slirp4netns netstackd's uplink address). Every
# run is bounded in time. Prints one table and writes the same as JSON to
# target/bench/latest.json. Everything it creates is removed on exit, Ctrl-C or failure.
#
#   e2e/bench/run.sh [--quick] [--duration S] [--runs N] [--pairs N] [--add-pods N] [--idle-pods N]
#                    [--idle-seconds S] [--no-build] [--out FILE] [--netstackd-args "ARGS"] [--vm]
#
# As root, from the repository root. Default: 5-second runs, the headline rows (TCP, UDP, RTT)
# and the goal rows (RTT with the other CPU busy, connection rate, pod pairs, CNI ADD latency)
# 3 times (median and spread), 10 pod pairs at once, CNI ADD latency over 50 pods, RSS and
# idle CPU with 200 idle pods (13 minutes on a loaded 2-vCPU VM, 2.3 of them the goal rows'
# repeats). --quick: 1-second runs (the nsbench rows half a second) once, 4 pairs, 10 pods.
# --netstackd-args: extra netstackd options for the run, e.g. "--veth-rx ring".
# --vm: then the VM rows too (e2e/bench/vm.sh: vhost-user against Kata's TAP, vm.json beside
# the JSON), with the same duration.
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE=$BENCH_DIR

DUR=5 NADD=50 NIDLE=200 IDLE_S=10 BUILD=1 BENCH_MODE=full EXTRA_ARGS= RUNS=3 PAIRS=10 NS_DUR= VM_ROWS=0
OUT=$REPO/target/bench/latest.json
while (($#)); do
  case $1 in
    --quick) BENCH_MODE=quick DUR=1 NADD=10 NIDLE=10 IDLE_S=3 RUNS=1 PAIRS=4 NS_DUR=0.5 ;;
    --duration) DUR=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --pairs) PAIRS=$2; shift ;;
    --add-pods) NADD=$2; shift ;;
    --idle-pods) NIDLE=$2; shift ;;
    --idle-seconds) IDLE_S=$2; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    --netstackd-args) EXTRA_ARGS=$2; shift ;;
    --vm) VM_ROWS=1 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
positive_ints run.sh "$DUR" "$NADD" "$NIDLE" "$IDLE_S" "$RUNS" "$PAIRS"
((NIDLE >= NADD)) || NIDLE=$NADD
NS_DUR=${NS_DUR:-$DUR} # the nsbench rows (UDP, RTT, connection rate): half a second in --quick
((PAIRS <= 50)) || { echo "run.sh: --pairs is at most 50" >&2; exit 2; }
need_root run.sh

# --- names: everything this run creates carries its id -------------------------------------
RUN_ID=${BENCH_RUN_ID:-$$}
ID=$((RUN_ID % 100000))
PFX=nsb$ID # every netns, link and file of this run carries it
WORK=/tmp/netstack-bench.$RUN_ID
# Three /24s nobody routes yet: netstack's pod CIDR, the bridge's subnet, pasta's.
X=$(free_subnet $((RUN_ID % 250 + 1)) 10.250 10.251 10.252)
POD_CIDR=10.250.$X.0/24
GATEWAY=10.250.$X.1
UPLINK=nsbu$ID
DP_NETNS=$PFX-dp # netstackd's namespace for veth-mode peers
BRIDGE=nsbbr$ID
BR_SUBNET=10.251.$X.0/24
BR_GW=10.251.$X.1
PASTA_ADDR=10.252.$X.2
PASTA_GW=10.252.$X.1
FLOOR_IP_A=10.249.$X.1 # the floor's two pods: one /24, in their own namespaces only
FLOOR_IP_B=10.249.$X.2
FLOOR_PID=
# The floor of the pod-to-node hop: a third pod wired to a TUN in the node's namespace (two
# more addresses of the floor's /24, /32 each: the pod, the node's end).
FLOOR_N_POD=10.249.$X.65
FLOOR_N_GW=10.249.$X.66
FLOOR_N_TUN=nsbf$ID
FLOOR_N_PID=
PORT=$((10000 + (RUN_ID % 200) * 100))
SPLICE_PORT=$((40000 + (RUN_ID % 200) * 2)) # pasta's forwarded port on the node; +1 for pasta_1500
NET=nsbench

SOCK=$WORK/netstackd.sock
STATE=$WORK/state
IPAM_DIR=$WORK/ipam
NETSTACKD_PID=
NSBENCH=$BIN/nsbench
RESULTS=$WORK/results.tsv
CLK_TCK=$(getconf CLK_TCK)
BGPIDS=()
declare -A IP

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
on_exit cleanup

# --- small helpers ---------------------------------------------------------------------------
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
# pid_ticks PID: user + system ticks of process PID (all its threads), 0 when it is gone.
pid_ticks() { if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
# fwd_ticks PATH: CPU ticks of what forwards PATH's frames in user space (netstackd, the floor).
# The floor's two forwarders (pod to pod, pod to node) never carry traffic at the same time.
fwd_ticks() {
  case $1 in
    tap | veth) ns_ticks ;;
    floor) echo $(($(pid_ticks "$FLOOR_PID") + $(pid_ticks "$FLOOR_N_PID"))) ;;
    *) echo 0 ;;
  esac
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

# The node's netfilter state, with the figures: a real node sends bridged traffic through
# iptables when br_netfilter is loaded, and a large ruleset or conntrack table costs every path.
nf() { printf 'netfilter\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
# (loaded as a module, or built in: either way its sysctls exist)
if [ -d /sys/module/br_netfilter ] || [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  nf br_netfilter loaded
else
  nf br_netfilter "not loaded"
fi
nf bridge_nf_call_iptables "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo n/a)"
nf conntrack_count "$(cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo "n/a (nf_conntrack not loaded)")"
nf nft_ruleset_lines "$(nft list ruleset 2>/dev/null | wc -l)"
nf iptables_rules "$(iptables-save 2>/dev/null | grep -c '^-A')"
nf ip6tables_rules "$(ip6tables-save 2>/dev/null | grep -c '^-A')"
# What sets the cost of waking an idle CPU, which every hop's RTT pays: in a VM whose guest
# halt polling is off (guest_halt_poll_ns 0), an idle vCPU halts and its wakeup goes through
# the hypervisor (e2e/bench/README.md, "Scheduling and wakeups").
nd() { printf 'node\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
nd cpuidle_driver "$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)"
nd guest_halt_poll_ns "$(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns 2>/dev/null || echo n/a)"
nd clocksource "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo n/a)"
nd tcp_congestion_control "$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo n/a)"

# --- 2. the paths ----------------------------------------------------------------------------
log "bench: netstackd ($POD_CIDR, uplink $UPLINK), bridge $BRIDGE ($BR_SUBNET)"
ledger link "$BRIDGE"
start_netstackd || exit 1
IPAM_NS='"ipam": { "type": "host-local", "ranges": [[{ "subnet": "'$POD_CIDR'" }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "'$IPAM_DIR'" }'
# The plugin's log (logFile) has each ADD's steps: where a slow ADD spent its time.
CNI_LOG=$WORK/cni.log
CONF[tap]='{ "cniVersion": "1.0.0", "name": "'$NET'", "type": "netstack", "mode": "tap", "socket": "'$SOCK'", "mtu": 1500, "logFile": "'$CNI_LOG'", '$IPAM_NS' }'
CONF[veth]='{ "cniVersion": "1.0.0", "name": "'$NET'", "type": "netstack", "mode": "veth", "socket": "'$SOCK'", "mtu": 1500, "logFile": "'$CNI_LOG'", '$IPAM_NS' }'
CONF[bridge]='{ "cniVersion": "1.0.0", "name": "'$NET-bridge'", "type": "bridge", "bridge": "'$BRIDGE'", "isGateway": true, "ipMasq": false, "hairpinMode": false, "mtu": 1500, "ipam": { "type": "host-local", "ranges": [[{ "subnet": "'$BR_SUBNET'" }]], "routes": [{ "dst": "0.0.0.0/0" }], "dataDir": "'$IPAM_DIR'" } }'
PLUGIN[tap]=$BIN/netstack PLUGIN[veth]=$BIN/netstack PLUGIN[bridge]=$REF_CNI/bridge
declare -A SERVER_NODE_IP=([tap]=$GATEWAY [veth]=$GATEWAY [bridge]=$BR_GW)

PATHS=() # the pod-to-pod paths that came up
for kind in tap veth bridge; do
  if ! pod_add "$kind" "$PFX-$kind-a"; then
    # Any failure is a failure (veth mode too: this netstackd has it), with the plugin's words.
    reason=$(jq -r '[.msg, .details] | map(select(. != null and . != "")) | join(": ")' <<<"$ADD_OUT" 2>/dev/null)
    echo "  $kind: ADD failed: ${reason:-$ADD_OUT}"
    na "$kind" "ADD failed: ${reason:-$(head -c 300 <<<"$ADD_OUT")}"
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

# The floor: two pods of its own, each with a TAP eth0 that `nsbench floor` creates there as
# netstackd creates a pod's TAP, on one /24 (a wire: ARP and all go through the forwarder).
P2P_PATHS=("${PATHS[@]}")
# like_netstack [-n NS] DEV: the floor's TAP or TUN DEV, still down, gets what netstack gives
# its own: no qdisc (noqueue) and a queue length of 2048 frames.
like_netstack() {
  local at=()
  [ "$1" = -n ] && at=(-n "$2") && shift 2
  tc "${at[@]}" qdisc replace dev "$1" root noqueue && ip "${at[@]}" link set "$1" txqueuelen 2048
}
floor_up() {
  local ns life=$(((RUNS * 8 + 12) * (DUR + 12) + 120)) # outlives every floor row, bounded
  for ns in "$PFX-floor-a" "$PFX-floor-b"; do
    ip netns add "$ns" || return 1
    echo "floor $ns" >>"$WORK/pods"
    ledger netns "$ns"
    ip -n "$ns" link set lo up
  done
  bg floor host "$NSBENCH" floor --a "/run/netns/$PFX-floor-a" --b "/run/netns/$PFX-floor-b" --duration "$life"
  FLOOR_PID=$BG_PID
  for _ in $(seq 1 200); do # 10 s: its first start may read the binary from a busy disk
    ip -n "$PFX-floor-a" link show eth0 >/dev/null 2>&1 && ip -n "$PFX-floor-b" link show eth0 >/dev/null 2>&1 && break
    kill -0 "$FLOOR_PID" 2>/dev/null || break
    sleep 0.05
  done
  like_netstack -n "$PFX-floor-a" eth0 && like_netstack -n "$PFX-floor-b" eth0 &&
    ip -n "$PFX-floor-a" link set eth0 mtu 1500 up && ip -n "$PFX-floor-b" link set eth0 mtu 1500 up &&
    ip -n "$PFX-floor-a" addr add "$FLOOR_IP_A/24" dev eth0 && ip -n "$PFX-floor-b" addr add "$FLOOR_IP_B/24" dev eth0 ||
    return 1
  IP[floor-a]=$FLOOR_IP_A IP[floor-b]=$FLOOR_IP_B
  for _ in 1 2 3 4 5; do
    nsx "$PFX-floor-a" ping -c 1 -W 1 -q "$FLOOR_IP_B" >/dev/null && return 0
  done
  { echo "the pods cannot reach each other:"; ip -n "$PFX-floor-a" -s link show eth0; ip -n "$PFX-floor-a" neigh
    ip -n "$PFX-floor-b" -s link show eth0; kill -0 "$FLOOR_PID" || echo "(the forwarder has exited)"; } >>"$WORK/floor.err" 2>&1
  return 1
}
if floor_up; then
  P2P_PATHS+=(floor)
  echo "  floor: pods $FLOOR_IP_A and $FLOOR_IP_B, nsbench floor (pid $FLOOR_PID) between their TAPs"
else
  sed 's/^/    floor: /' "$WORK/floor.err"
  na floor "the floor forwarder did not connect its pods: $(tail -c 600 "$WORK/floor.err" | tr -s '\n ' ' ')"
fi

# pasta and slirp4netns: one pod each per variant, pod-to-node only. Each as podman runs it by
# default (MTU 65520) and at MTU 1500. podman keeps the node's loopback out of their reach
# (pasta --no-map-gw, slirp4netns --disable-host-loopback): the pods reach the node at one of
# its addresses, here netstackd's uplink address, which they connect to from the node.
NODE_PATHS=("${PATHS[@]}")
declare -A NODE_DST=([tap]=$GATEWAY [veth]=$GATEWAY [bridge]=$BR_GW [pasta]=$GATEWAY [pasta_1500]=$GATEWAY
  [slirp4netns]=$GATEWAY [slirp4netns_1500]=$GATEWAY)
declare -A NODE_BIND=([tap]=$GATEWAY [veth]=$GATEWAY [bridge]=$BR_GW [pasta]=$GATEWAY [pasta_1500]=$GATEWAY
  [slirp4netns]=$GATEWAY [slirp4netns_1500]=$GATEWAY)
declare -A NODE_NS=([tap]=$PFX-tap-a [veth]=$PFX-veth-a [bridge]=$PFX-bridge-a)
# The floor's pod-to-node rows: `nsbench floor --node-tun` between a pod's TAP and a TUN in the
# node's namespace made as netstackd makes its uplink; the pod has a permanent neighbour entry
# for the node's end at the floor's MAC (no ARP crosses), the node a /32 route to the pod.
floor_node_up() {
  local ns=$PFX-floor-n life=$(((RUNS * 8 + 12) * (DUR + 12) + 120))
  ip netns add "$ns" || return 1
  echo "floor $ns" >>"$WORK/pods"
  ledger netns "$ns"
  ip -n "$ns" link set lo up
  bg floor-n host "$NSBENCH" floor --a "/run/netns/$ns" --node-tun "$FLOOR_N_TUN" --duration "$life"
  FLOOR_N_PID=$BG_PID
  for _ in $(seq 1 200); do
    ip -n "$ns" link show eth0 >/dev/null 2>&1 && ip link show "$FLOOR_N_TUN" >/dev/null 2>&1 && break
    kill -0 "$FLOOR_N_PID" 2>/dev/null || break
    sleep 0.05
  done
  sysctl -qw "net.ipv6.conf.$FLOOR_N_TUN.disable_ipv6=1" 2>/dev/null
  like_netstack "$FLOOR_N_TUN" && like_netstack -n "$ns" eth0 &&
    ip link set "$FLOOR_N_TUN" mtu 1500 up && ip addr add "$FLOOR_N_GW/32" dev "$FLOOR_N_TUN" &&
    ip route add "$FLOOR_N_POD/32" dev "$FLOOR_N_TUN" &&
    ip -n "$ns" link set eth0 mtu 1500 up && ip -n "$ns" addr add "$FLOOR_N_POD/32" dev eth0 &&
    ip -n "$ns" route add "$FLOOR_N_GW/32" dev eth0 && ip -n "$ns" route add default via "$FLOOR_N_GW" &&
    ip -n "$ns" neigh replace "$FLOOR_N_GW" lladdr 02:00:00:00:00:01 dev eth0 nud permanent || return 1
  for _ in 1 2 3 4 5; do
    nsx "$ns" ping -c 1 -W 1 -q "$FLOOR_N_GW" >/dev/null && return 0
  done
  { echo "the pod cannot reach the node:"; ip -n "$ns" -s link show eth0; ip -s link show "$FLOOR_N_TUN"
    kill -0 "$FLOOR_N_PID" || echo "(the forwarder has exited)"; } >>"$WORK/floor-n.err" 2>&1
  return 1
}
if [ -n "$FLOOR_PID" ] && floor_node_up; then
  NODE_PATHS+=(floor) NODE_NS[floor]=$PFX-floor-n NODE_BIND[floor]=$FLOOR_N_GW NODE_DST[floor]=$FLOOR_N_GW
  echo "  floor: pod $FLOOR_N_POD and the node's $FLOOR_N_GW, nsbench floor --node-tun (pid $FLOOR_N_PID)"
elif [ -n "$FLOOR_PID" ]; then
  sed 's/^/    floor (pod to node): /' "$WORK/floor-n.err"
  note floor "the pod-to-node floor did not connect its pod: $(tail -c 400 "$WORK/floor-n.err" | tr -s '\n ' ' ')"
fi
ready_addr() { # NS ADDR: wait (5 s) until the pod has the address
  for _ in $(seq 1 100); do
    ip -n "$1" -4 -o addr show 2>/dev/null | grep -q " $2/" && return 0
    sleep 0.05
  done
  return 1
}
# pasta: the options podman (4.4 and later) passes, `--config-net -t/-u/-T/-U ... --no-map-gw
# --netns`, with one TCP port forwarded from the node into the pod as `podman run -p` asks for
# (the node->pod row: pasta splices a connection to it from the node's loopback into the pod's
# loopback), MTU 65520 (its default, podman's), and an address and gateway of the run's own
# (podman lets pasta copy the node's: the same data path). Debian 12's podman 4.3 has no pasta.
declare -A SPLICE=([pasta]=$SPLICE_PORT [pasta_1500]=$((SPLICE_PORT + 1)))
for path in pasta pasta_1500; do
  command -v pasta >/dev/null || { na "$path" "not installed"; continue; }
  ns=$PFX-$path mtu=65520
  [ "$path" = pasta_1500 ] && mtu=1500
  ip netns add "$ns" && echo "pasta $ns" >>"$WORK/pods" && ledger netns "$ns" && ip -n "$ns" link set lo up
  bg "$path" host pasta --config-net --netns "/run/netns/$ns" --runas 0 -f -q -a "$PASTA_ADDR" -n 24 \
    -g "$PASTA_GW" -m "$mtu" -t "${SPLICE[$path]}" -u none -T none -U none --no-map-gw
  if ready_addr "$ns" "$PASTA_ADDR"; then NODE_PATHS+=("$path") NODE_NS[$path]=$ns; echo "  $path: pod $PASTA_ADDR, MTU $mtu"
  else na "$path" "pasta did not configure the pod: $(grep -v syslog "$WORK/$path.err" | tail -c 300 | tr -s '\n' ' ')"; fi
done
for path in slirp4netns slirp4netns_1500; do
  command -v slirp4netns >/dev/null || { na "$path" "not installed"; continue; }
  ns=$PFX-$path mtu=65520
  [ "$path" = slirp4netns_1500 ] && mtu=1500
  ip netns add "$ns" && echo "slirp4netns $ns" >>"$WORK/pods" && ledger netns "$ns" && ip -n "$ns" link set lo up
  # podman 4.3's options (`ps` during `podman run --network slirp4netns`: --disable-host-loopback
  # --mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 -c -e 3 -r 4) but the sandbox:
  # in a test here the pod's /run/netns mount (a shared mount) was gone once it started.
  bg "$path" host slirp4netns --configure --mtu="$mtu" --disable-host-loopback --enable-seccomp --enable-ipv6 \
    --netns-type=path "/run/netns/$ns" tap0
  if ready_addr "$ns" 10.0.2.100; then NODE_PATHS+=("$path") NODE_NS[$path]=$ns; echo "  $path: pod 10.0.2.100, MTU $mtu"
  else na "$path" "slirp4netns did not configure the pod: $(tail -c 300 "$WORK/$path.err" | tr -s '\n' ' ')"; fi
done
printf '%s\n' "${PATHS[@]}" | grep -qx tap || { echo "run.sh: the netstack TAP path did not come up" >&2; exit 1; }

# --- 3. traffic ------------------------------------------------------------------------------
# tcp PATH KEY STREAMS SERVER_NS BIND CLIENT_NS DST: one iperf3 run of DUR seconds.
tcp() {
  local path=$1 key=$2 streams=$3 sns=$4 bind=$5 cns=$6 dst=$7 spid ns0 ns1 s0 s1 bytes secs
  next_port
  bg "iperf-s-$path-$key" "$sns" timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "$bind" -p "$PORT"
  spid=$BG_PID
  wait_listen "$sns" tcp "$PORT" || { note "$path" "$key: iperf3 server did not start"; reap "$spid"; return 1; }
  ns0=$(fwd_ticks "$path") s0=$(sys_ticks)
  nsx "$cns" timeout --foreground -k 2 $((DUR + 15)) iperf3 -c "$dst" -p "$PORT" -t "$DUR" -P "$streams" -J \
    >"$WORK/iperf-$path-$key.json" 2>&1
  ns1=$(fwd_ticks "$path") s1=$(sys_ticks)
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
  case $path in tap | veth | floor) res "$path" "_${key}_ns_cpu_s" "$(calc "($ns1 - $ns0) / $CLK_TCK")" ;; esac
  printf '  %-12s %-8s %8.2f Gbit/s\n' "$path" "$key" "$(calc "$bytes * 8 / $secs / 1e9")"
}

# The headline rows (TCP, UDP at full speed, RTT) RUNS times, the paths taking turns within
# each run; report.py shows the median and the spread.
traffic_run() {
  local run=$1 streams path
  log "bench: run $run/$RUNS: TCP (iperf3), $DUR s each"
  for streams in 1 4; do
    for path in "${P2P_PATHS[@]}"; do
      tcp "$path" "tcp${streams}_p2p" "$streams" "$PFX-$path-b" "${IP[$path-b]}" "$PFX-$path-a" "${IP[$path-b]}"
    done
    for path in "${NODE_PATHS[@]}"; do
      tcp "$path" "tcp${streams}_p2n" "$streams" host "${NODE_BIND[$path]}" "${NODE_NS[$path]}" "${NODE_DST[$path]}"
    done
  done
  log "bench: run $run/$RUNS: UDP 64 B at full speed, TCP 1-byte ping-pong RTT, $NS_DUR s each"
  for path in "${P2P_PATHS[@]}"; do udp "$path" udp64; done
  for path in "${P2P_PATHS[@]}"; do rtt "$path" rtt; done
}

# udp PATH KEY [PPS]: 64-byte datagrams pod A -> pod B for DUR seconds (at PPS, or full speed).
udp() {
  local path=$1 key=$2 rate=${3:-} spid sent elapsed got
  next_port
  bg "udp-sink-$path-$key" "$PFX-$path-b" timeout -k 2 $((DUR + 15)) "$NSBENCH" udp-sink \
    --bind "${IP[$path-b]}:$PORT" --duration $((DUR + 10)) --idle 0.5
  spid=$BG_PID
  wait_listen "$PFX-$path-b" udp "$PORT" || { note "$path" "$key: udp-sink did not start"; reap "$spid"; return 1; }
  nsx "$PFX-$path-a" timeout --foreground -k 2 $((DUR + 10)) "$NSBENCH" udp-blast \
    --connect "${IP[$path-b]}:$PORT" --duration "$NS_DUR" ${rate:+--pps "$rate"} >"$WORK/udp-blast-$path-$key.json" 2>&1
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


# nsbench_pair PATH WHAT SERVER CLIENT CHECK: `nsbench SERVER` in pod B on the next port, then
# `nsbench CLIENT` in pod A against it for NS_DUR seconds; the client's JSON in CLIENT_JSON.
# Fails, with a note, when either fails or the jq expression CHECK is not true of it.
nsbench_pair() {
  local path=$1 what=$2 server=$3 client=$4 check=$5 spid
  next_port
  bg "$server-$path" "$PFX-$path-b" timeout -k 2 $((DUR + 15)) "$NSBENCH" "$server" \
    --bind "${IP[$path-b]}:$PORT" --duration $((DUR + 10))
  spid=$BG_PID
  wait_listen "$PFX-$path-b" tcp "$PORT" || { note "$path" "$what: $server did not start"; reap "$spid"; return 1; }
  CLIENT_JSON=$(nsx "$PFX-$path-a" timeout --foreground -k 2 $((DUR + 10)) "$NSBENCH" "$client" \
    --connect "${IP[$path-b]}:$PORT" --duration "$NS_DUR" 2>&1)
  kill -TERM "$spid" 2>/dev/null
  reap "$spid"
  jq -e "$check" <<<"$CLIENT_JSON" >/dev/null 2>&1 ||
    { note "$path" "$what: $client failed: $(head -c 200 <<<"$CLIENT_JSON")"; return 1; }
}

# rtt PATH KEY: 1-byte TCP ping-pong pod A -> pod B for NS_DUR seconds; KEY_p99_us etc.
rtt() {
  local path=$1 key=$2 out
  nsbench_pair "$path" "$key" rr-server rr-client '.samples > 0' || return 1
  out=$CLIENT_JSON
  if [ "$key" = rtt ]; then
    res "$path" rtt_min_us "$(jq -r .min_us <<<"$out")"
    res "$path" rtt_p50_us "$(jq -r .p50_us <<<"$out")"
  else
    res "$path" "_${key}_min_us" "$(jq -r .min_us <<<"$out")"
    res "$path" "_${key}_p50_us" "$(jq -r .p50_us <<<"$out")"
  fi
  res "$path" "${key}_p99_us" "$(jq -r .p99_us <<<"$out")"
  res "$path" "_${key}_samples" "$(jq -r .samples <<<"$out")"
  printf '  %-12s %-8s min %7.1f  p50 %7.1f  p99 %7.1f us (%s round trips)\n' "$path" "$key" \
    "$(jq -r .min_us <<<"$out")" "$(jq -r .p50_us <<<"$out")" "$(jq -r .p99_us <<<"$out")" "$(jq -r .samples <<<"$out")"
}

# spin_start: keeps one CPU busy in the node's netns for DUR + 5 s at most (a shell loop, no
# traffic), as another tenant's work would; sets SPIN_PID.
spin_start() {
  bg spin host timeout -k 1 $((DUR + 5)) bash -c 'while :; do :; done'
  SPIN_PID=$BG_PID
}

# crr PATH: TCP connect/request/close per second pod A -> pod B for NS_DUR seconds (TCP_CRR).
crr() {
  local path=$1 out
  # The client keeps TIME_WAIT: room for it in the pod's namespace (every path alike).
  ip netns exec "$PFX-$path-a" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
  nsbench_pair "$path" crr crr-server crr-client '.transactions > 0' || return 1
  out=$CLIENT_JSON
  res "$path" crr_per_s "$(jq -r .per_s <<<"$out")"
  res "$path" _crr_p50_us "$(jq -r .p50_us <<<"$out")"
  res "$path" _crr_p99_us "$(jq -r .p99_us <<<"$out")"
  res "$path" _crr_errors "$(jq -r .errors <<<"$out")"
  printf '  %-12s %8.0f connections/s (p50 %s us, p99 %s us, %s failed)\n' "$path" "$(jq -r .per_s <<<"$out")" \
    "$(jq -r .p50_us <<<"$out")" "$(jq -r .p99_us <<<"$out")" "$(jq -r .errors <<<"$out")"
}

# pairs_up KIND: PAIRS more pod pairs of KIND (pods KIND-mNa and KIND-mNb); fails, with a
# note, when an ADD fails.
pairs_up() {
  local kind=$1 i
  for i in $(seq 1 "$PAIRS"); do
    pod_add "$kind" "$PFX-$kind-m${i}a" && IP[$kind-m${i}a]=$POD_IP &&
      pod_add "$kind" "$PFX-$kind-m${i}b" && IP[$kind-m${i}b]=$POD_IP ||
      { note "$kind" "pairs: ADD of pair $i failed: $(head -c 200 <<<"$ADD_OUT")"; return 1; }
  done
}

# pairs_run KIND: one iperf3 stream in each of KIND's pairs, all at once for DUR seconds: the
# total and Jain's fairness index over the pairs' throughputs.
pairs_run() {
  local kind=$1 i spids=() cpids=() g gs=() ok=1
  for i in $(seq 1 "$PAIRS"); do
    bg "pair-s-$kind-$i" "$PFX-$kind-m${i}b" timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "${IP[$kind-m${i}b]}" -p "$((PORT + i))"
    spids+=("$BG_PID")
  done
  for i in $(seq 1 "$PAIRS"); do wait_listen "$PFX-$kind-m${i}b" tcp "$((PORT + i))" || ok=0; done
  if ((ok)); then
    for i in $(seq 1 "$PAIRS"); do
      bg "pair-c-$kind-$i" "$PFX-$kind-m${i}a" timeout -k 2 $((DUR + 15)) iperf3 -c "${IP[$kind-m${i}b]}" \
        -p "$((PORT + i))" -t "$DUR" -J
      cpids+=("$BG_PID")
    done
    for i in "${cpids[@]}"; do reap "$i"; done
  else
    note "$kind" "pairs: an iperf3 server did not start"
  fi
  for i in "${spids[@]}"; do reap "$i"; done
  if ((ok)); then
    for i in $(seq 1 "$PAIRS"); do
      g=$(jq -r '.end.sum_received.bits_per_second // empty' "$WORK/pair-c-$kind-$i.out" 2>/dev/null)
      [ -n "$g" ] || { note "$kind" "pairs: pair $i measured nothing"; ok=0; break; }
      gs+=("$(calc "$g / 1e9")")
    done
  fi
  PORT=$((PORT + PAIRS))
  ((ok)) || return 1
  res "$kind" pairs_total_gbps "$(printf '%s\n' "${gs[@]}" | awk '{ s += $1 } END { printf "%.6g", s }')"
  res "$kind" pairs_jain "$(printf '%s\n' "${gs[@]}" | awk '{ s += $1; q += $1 * $1 } END { printf "%.6g", q ? s * s / (NR * q) : 0 }')"
  res "$kind" _pairs_min_gbps "$(printf '%s\n' "${gs[@]}" | sort -g | head -1)"
  res "$kind" _pairs_max_gbps "$(printf '%s\n' "${gs[@]}" | sort -g | tail -1)"
  printf '  %-12s %d pairs: %s Gbit/s in all, Jain %s (each: %s)\n' "$kind" "$PAIRS" \
    "$(printf '%s\n' "${gs[@]}" | awk '{ s += $1 } END { printf "%.2f", s }')" \
    "$(printf '%s\n' "${gs[@]}" | awk '{ s += $1; q += $1 * $1 } END { printf "%.3f", s * s / (NR * q) }')" "$(echo "${gs[@]}" | xargs printf '%.2f ')"
}

# pairs_down KIND: KIND's pairs are deleted.
pairs_down() {
  local kind=$1 i
  for i in $(seq 1 "$PAIRS"); do pod_del "$kind" "$PFX-$kind-m${i}a"; pod_del "$kind" "$PFX-$kind-m${i}b"; done
}

for run in $(seq 1 "$RUNS"); do traffic_run "$run"; done

log "bench: UDP 64 B at half the bridge's delivered rate, $NS_DUR s each"
half=$(awk -F'\t' '$1 == "bridge" && $2 == "udp64_rx_kpps" { print $3 }' "$RESULTS" | sort -g |
  awk '{ v[NR] = $1 } END { if (NR) printf "%d", v[int((NR + 1) / 2)] * 500 }')
if [ -n "$half" ] && ((half > 0)); then
  res all _udp64_half_pps "$half"
  for path in "${P2P_PATHS[@]}"; do udp "$path" udp64_half "$half"; done
else
  note all "udp64_half: no bridge UDP figure to take half of"
fi

# The goal rows below (RTT with the other CPU busy, connection rate, pod pairs, CNI ADD) run
# RUNS times too, the paths taking turns within each run: report.py shows their median and spread.
for run in $(seq 1 "$RUNS"); do
  log "bench: run $run/$RUNS: TCP 1-byte ping-pong RTT with the other CPU busy, $NS_DUR s each"
  for path in "${P2P_PATHS[@]}"; do
    spin_start
    rtt "$path" rtt_busy
    kill -TERM "$SPIN_PID" 2>/dev/null # now, not when its timeout ends
    reap "$SPIN_PID"
  done
done

log "bench: node->pod TCP, 1 stream, $DUR s each (pasta: through its forwarded port)"
# netstack and the bridge: the node connects to pod A's address, which it routes; pasta: the
# node connects to the port pasta forwards on its loopback, which pasta splices into the pod's.
# Before the connection-rate rows: their TIME_WAITs in pod A would hold the server's port.
for path in "${NODE_PATHS[@]}"; do
  case $path in
    pasta | pasta_1500)
      port_was=$PORT PORT=$((SPLICE[$path] - 1)) # tcp() takes the next port: pasta's
      tcp "$path" tcp1_n2p 1 "${NODE_NS[$path]}" 127.0.0.1 host 127.0.0.1
      PORT=$port_was ;;
    tap | veth | bridge) tcp "$path" tcp1_n2p 1 "${NODE_NS[$path]}" "${IP[$path-a]}" host "${IP[$path-a]}" ;;
    floor) tcp floor tcp1_n2p 1 "$PFX-floor-n" "$FLOOR_N_POD" host "$FLOOR_N_POD" ;;
  esac
done

for run in $(seq 1 "$RUNS"); do
  log "bench: run $run/$RUNS: TCP connect/request/close rate, $NS_DUR s each"
  for path in "${P2P_PATHS[@]}"; do crr "$path"; done
done

if [ -n "$FLOOR_PID" ]; then # the floor's rows are done: its TAPs (and TUN) go with it
  kill -TERM "$FLOOR_PID" ${FLOOR_N_PID:+"$FLOOR_N_PID"} 2>/dev/null
  reap "$FLOOR_PID"
  [ -n "$FLOOR_N_PID" ] && reap "$FLOOR_N_PID"
  FLOOR_PID= FLOOR_N_PID=
fi

# The pairs are made once and measured RUNS times, the kinds taking turns.
PAIR_KINDS=()
for kind in tap bridge; do
  printf '%s\n' "${PATHS[@]}" | grep -qx "$kind" || continue
  log "bench: $PAIRS pod pairs of $kind"
  pairs_up "$kind" && PAIR_KINDS+=("$kind")
done
for run in $(seq 1 "$RUNS"); do
  ((${#PAIR_KINDS[@]})) || break
  log "bench: run $run/$RUNS: $PAIRS pod pairs at once, one TCP stream each, $DUR s"
  for kind in "${PAIR_KINDS[@]}"; do pairs_run "$kind"; done
done
for kind in tap bridge; do pairs_down "$kind"; done

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
add_latency() { # KIND RUN: p50/p99 of run RUN's ADD wall times (with 50 pods the p99 is the slowest)
  local f=$WORK/add-$1-$2 p50 p99
  [ -s "$f" ] || return 1
  p50=$(sort -n "$f" | awk '{a[NR]=$1} END {r=int(NR*0.5+0.999999); print a[r<1?1:r]}')
  p99=$(sort -n "$f" | awk '{a[NR]=$1} END {r=int(NR*0.99+0.999999); print a[r<1?1:r]}')
  res "$1" cni_add_p50_ms "$p50"
  res "$1" cni_add_p99_ms "$p99"
  printf '  %-12s CNI ADD p50 %6.1f ms, p99 %6.1f ms over %d pods\n' "$1" "$p50" "$p99" "$(wc -l <"$f")"
  add_steps "$1" "$f"
}
# add_steps KIND FILE: for a netstack kind, the p50 of each step of the ADDs in FILE ("ms pod"
# lines) and the steps of the slowest, from the plugin's log; the p50s are kept as details.
add_steps() {
  local kind=$1 f=$2 slow
  [ -s "$CNI_LOG" ] && [ "$kind" != bridge ] || return 0
  slow=$(sort -n "$f" | tail -1)
  awk -v pods="$(cut -d' ' -f2 "$f" | tr '\n' ' ')" -v kind="$kind" -v slow="$slow" '
    BEGIN { n = split(pods, p, " "); for (i = 1; i <= n; i++) want[p[i]] = 1; split(slow, s, " ") }
    $2 == "ADD" && $6 == "result=ok" {
      c = $3; sub(/^container=/, "", c)
      if (!(c in want)) next
      for (i = 7; i <= NF; i++) if ($i ~ /^steps=/) {
        st = substr($i, 7)
        if (c == s[2]) slowest = st
        m = split(st, kv, ",")
        for (j = 1; j <= m; j++) { split(kv[j], x, ":"); v[x[1], ++cnt[x[1]]] = x[2]; if (!(x[1] in seen)) { seen[x[1]] = 1; order[++names] = x[1] } }
      }
    }
    END {
      line = ""
      for (k = 1; k <= names; k++) {
        name = order[k]; c = cnt[name]
        for (i = 1; i <= c; i++) a[i] = v[name, i]
        # insertion sort: tens of values
        for (i = 2; i <= c; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > t + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
        med = a[int((c + 1) / 2)]
        line = line sprintf(" %s %s", name, med)
        printf "%s\t_add_step_%s_p50_ms\t%s\n", kind, name, med > "/dev/stderr"
      }
      printf "  %-12s ADD steps, p50 ms:%s; the slowest (%s ms): %s\n", kind, line, s[1], slowest
    }' "$CNI_LOG" 2>>"$RESULTS"
}

# CNI ADD latency, RUNS times: NADD pods of each kind, the kinds taking turns one pod each, so
# all see the same machine (the kernel's asynchronous cleanup after earlier deletions, netns
# teardown and RCU, slows whichever ADDs come next), the order rotating from one pod to the next
# (no kind always right after another); then they are deleted, but for the last run's TAP pods:
# the first of the idle pods.
ADD_KINDS=()
for kind in bridge veth tap; do printf '%s\n' "${PATHS[@]}" | grep -qx "$kind" && ADD_KINDS+=("$kind"); done
declare -A ADDED=()
for run in $(seq 1 "$RUNS"); do
  log "bench: run $run/$RUNS: CNI ADD latency over $NADD pods of each kind"
  sleep 1
  if ((run == RUNS)); then # the idle pods' RSS is counted from here
    rss0=$(ns_rss_kib)
    att0=$(ctl status | jq -r .attachments)
  fi
  ADDED=()
  for i in $(seq 1 "$NADD"); do
    for j in "${!ADD_KINDS[@]}"; do
      kind=${ADD_KINDS[$(((i + j) % ${#ADD_KINDS[@]}))]}
      [ "${ADDED[$kind]:-0}" = $((i - 1)) ] || continue # a kind whose ADD failed stops there
      if pod_add "$kind" "$PFX-$kind-p$i"; then
        echo "$ADD_MS $PFX-$kind-p$i" >>"$WORK/add-$kind-$run"
        ADDED[$kind]=$i
      else
        note "$kind" "ADD of pod $i failed: $(head -c 200 <<<"$ADD_OUT")"
      fi
    done
  done
  for kind in "${ADD_KINDS[@]}"; do
    [ "${ADDED[$kind]:-0}" = "$NADD" ] && add_latency "$kind" "$run"
    [ "$kind" = tap ] && ((run == RUNS)) || del_many "$kind" "${ADDED[$kind]:-0}"
  done
done
log "bench: netstackd RSS and idle CPU with $NIDLE idle pods"
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
  --add-pods "$NADD" --idle-pods "$NIDLE" --idle-seconds "$IDLE_S" --started "$STARTED" --runs "$RUNS" --pairs "$PAIRS" \
  --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" \
  --git "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo +dirty)" ||
  exit 1
# Runs with the default output also keep a dated copy, to compare later runs with.
if [ "$OUT" = "$REPO/target/bench/latest.json" ]; then
  cp "$OUT" "$REPO/target/bench/$(date -u +%Y%m%dT%H%M%SZ)-$BENCH_MODE.json"
fi
echo "JSON: $OUT"
if ((VM_ROWS)); then
  log "the VM rows (e2e/bench/vm.sh)"
  "$HERE/vm.sh" --no-build --duration "$DUR" --out "$(dirname "$OUT")/vm.json" || exit 1
fi
