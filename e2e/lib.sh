#!/usr/bin/env bash
# Shared pieces of the demo and the e2e tests: a netstackd of our own, pod namespaces, and
# the CNI call path (the plugin run with CNI_* variables and the plugin object of a conflist,
# with cniVersion and name inserted as libcni does). Everything lives under $WORK and is
# removed by e2e_cleanup, which the scripts run on exit.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${NETSTACK_BIN:-$ROOT/target/release}
REF_CNI=/usr/lib/cni
RUN_ID=${RUN_ID:-$$}
WORK=${WORK:-/tmp/netstack-e2e.$RUN_ID}
# The pod CIDR: 10.244.N.0/24 with N from the run id, skipping any N the node already routes
# (a second route to the same subnet would take the node's side of pod traffic).
free_pod_cidr() {
  local n=$((RUN_ID % 200 + 20)) i
  for i in $(seq 200); do
    ip -4 route show table main 2>/dev/null | grep -q "^10\.244\.$n\." || break
    n=$(((n - 20 + 1) % 200 + 20))
  done
  echo "10.244.$n.0/24"
}
POD_CIDR=${POD_CIDR:-$(free_pod_cidr)}
GATEWAY=${POD_CIDR%.0/24}.1
UPLINK=${UPLINK:-nse$((RUN_ID % 100000))}
SOCK=$WORK/netstackd.sock
STATE=$WORK/state
IPAM_DIR=$WORK/ipam
CONFLIST=$WORK/netstack.conflist
# The pods' link mode (tap or veth) and netstackd's namespace for veth peers, one per run.
MODE=${MODE:-tap}
DP_NETNS=${DP_NETNS:-/run/netns/nsdp-$RUN_ID}
NETWORK=netstack-e2e
NETSTACKD_PID=
PODS=()

# The tally (ok, fail, check, log) and the waits (eventually, wait_for_socket).
. "$ROOT/e2e/checks.sh"

# write_conflist [subnet]: the conflist the runtime would read from /etc/cni/net.d, in $MODE.
write_conflist() {
  local subnet=${1:-$POD_CIDR}
  mkdir -p "$WORK" "$IPAM_DIR"
  cat >"$CONFLIST" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$NETWORK",
  "plugins": [
    {
      "type": "netstack",
      "mode": "$MODE",
      "socket": "$SOCK",
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$subnet" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$IPAM_DIR"
      }
    }
  ]
}
JSON
}

# start_netstackd ARGS...: netstackd with this run's names, plus ARGS and $NETSTACKD_ARGS (the
# host's firewall left alone and the uplink at the conflist's MTU, 1500, whatever the node's);
# $NETSTACKD_LAUNCH, when set, is a command prefix (e.g. `prlimit --nofile=64:64 --`).
start_netstackd() {
  mkdir -p "$WORK" "$STATE"
  rm -f "$SOCK"
  # The host's FORWARD chain stays untouched and the uplink keeps 1500 whatever the node's
  # default route says; netstackd v0.1.0 (test_upgrade's old release) has neither flag.
  local host_flags=()
  "$BIN/netstackd" --help 2>/dev/null | grep -q -- --forward-accept &&
    host_flags=(--forward-accept=false --uplink-mtu 1500)
  ${NETSTACKD_LAUNCH:-} "$BIN/netstackd" --socket "$SOCK" --state-dir "$STATE" --pod-cidr "$POD_CIDR" \
    --uplink "$UPLINK" --metrics-addr 127.0.0.1:0 --dp-netns "$DP_NETNS" --masquerade=false \
    "${host_flags[@]}" ${NETSTACKD_ARGS:-} "$@" >>"$WORK/netstackd.log" 2>&1 &
  NETSTACKD_PID=$!
  wait_for_socket "$SOCK" "$NETSTACKD_PID" "$WORK/netstackd.log"
}

stop_netstackd() {
  if [ -n "$NETSTACKD_PID" ] && kill -0 "$NETSTACKD_PID" 2>/dev/null; then
    kill -TERM "$NETSTACKD_PID"
    wait "$NETSTACKD_PID" 2>/dev/null || true
  fi
  NETSTACKD_PID=
}

ctl() { "$BIN/netstackd" ctl --socket "$SOCK" --json "$@"; }
# ctlh: the same, as the human-readable tables an operator sees.
ctlh() { "$BIN/netstackd" ctl --socket "$SOCK" "$@"; }

# pod_counter POD_CONTAINER_ID JQ_PATH: one counter of one pod, e.g. '.rx_packets'.
pod_counter() {
  ctl stats | jq -r --arg id "$1" ".pods[] | select(.container_id == \$id) | .counters$2"
}

# cni CMD CONTAINER_ID NETNS_PATH [IFNAME] [CNI_ARGS]: one plugin call, as a runtime makes it.
cni() {
  local conf
  conf=$(jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' "$CONFLIST")
  printf '%s' "$conf" | env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="$3" \
    CNI_IFNAME="${4:-eth0}" CNI_PATH="$BIN:$REF_CNI" \
    CNI_ARGS="${5:-IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$2}" "$BIN/netstack"
}

# add_pod NAME: a pod netns plus CNI ADD; prints the pod's IPv4 address.
add_pod() {
  local name=$1 result
  ip netns add "$name"
  ip -n "$name" link set lo up
  PODS+=("$name")
  # Also on disk: add_pod usually runs in $(...), a subshell whose PODS the caller never sees.
  echo "$name" >>"$WORK/pods"
  result=$(cni ADD "$name" "/run/netns/$name") || { echo "ADD $name failed: $result" >&2; return 1; }
  printf '%s' "$result" >"$WORK/$name.result.json"
  jq -r '.ips[0].address' <<<"$result" | cut -d/ -f1
}

del_pod() {
  local name=$1
  cni DEL "$name" "/run/netns/$name" >/dev/null || true
  ip netns del "$name" 2>/dev/null || true
}

in_pod() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

e2e_cleanup() {
  local p
  [ -f "$WORK/pods" ] && mapfile -t -O "${#PODS[@]}" PODS <"$WORK/pods"
  for p in "${PODS[@]}"; do
    [ -e "/run/netns/$p" ] && del_pod "$p"
  done
  PODS=()
  stop_netstackd
  pkill -f "iperf3 .*--bind $GATEWAY" 2>/dev/null || true
  ip link del "$UPLINK" 2>/dev/null || true
  if mountpoint -q "$DP_NETNS" 2>/dev/null; then umount -l "$DP_NETNS"; fi
  rm -f "$DP_NETNS"
  rm -rf "$WORK"
}

# in_dp CMD...: run CMD in netstackd's namespace for veth peers.
in_dp() { nsenter --net="$DP_NETNS" "$@"; }

# veth_peer NETNS: the name of the peer of the pod's eth0 in netstackd's namespace (empty if
# there is none there).
veth_peer() {
  local idx
  idx=$(ip -n "$1" -j link show eth0 2>/dev/null | jq -r '.[0].link_index // empty')
  [ -n "$idx" ] || return 0
  in_dp ip -j link show 2>/dev/null | jq -r --argjson i "$idx" '.[] | select(.ifindex == $i) | .ifname'
}

# pod_link_is_ours NETNS: the pod's eth0 is what $MODE makes: a multi-queue TAP with the
# vnet header, or a veth whose peer is in netstackd's namespace.
pod_link_is_ours() {
  case "$MODE" in
    tap) ip -n "$1" -d link show eth0 | grep -q 'tun type tap.*vnet_hdr.*multi_queue' ;;
    veth) ip -n "$1" -d link show eth0 | grep -q 'veth' && [ -n "$(veth_peer "$1")" ] ;;
    *) return 1 ;;
  esac
}

# quiet_pods POD_A IP_A POD_B IP_B: keeps two pods from sending anything of their own, so that
# every counter change is the test's: no IPv6 (router solicitations, MLD) and no ARP (the
# gateway and the other pod are permanent neighbours at the gateway MAC).
quiet_pods() {
  local pod peer n
  for pod in "$1:$4" "$3:$2"; do
    peer=${pod#*:}
    pod=${pod%%:*}
    in_pod "$pod" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    for n in "$GATEWAY" "$peer"; do
      in_pod "$pod" ip neigh replace "$n" lladdr 02:4e:53:00:00:01 dev eth0 nud permanent
    done
  done
}

build_release() {
  (cd "$ROOT" && cargo build --release --quiet --bins --features netstackd/fault-injection)
}
