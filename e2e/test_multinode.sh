#!/usr/bin/env bash
# e2e: two nodes on one link, as Kubernetes would run netstack, without Kubernetes.
#
#   netns lan: bridge br0 ── node A (netns, 192.168.201.1)  pods 10.201.1.0/24
#                        ├── node B (netns, 192.168.201.2)  pods 10.201.2.0/24, fd00:201:2::/64
#                        └── ext    (netns, 192.168.201.100 and fd00:201::100: "the outside
#                                    world", no routes to any pod CIDR)
#
# Each node runs the DaemonSet's entrypoint (manifests/install-cni.sh run) inside its netns:
# it installs the CNI binaries into the node's own bin dir, starts netstackd with the shared
# static node list (--nodes-file) and writes the conflist from manifests/10-netstack.conflist
# once netstackd is ready. Pods are created with that conflist and those binaries. Checks:
# host-gw routes from the list, pod-to-pod across nodes without NAT (the receiver sees the
# sender's pod IP), egress masquerade to ext (and none where it is off), route removal and
# re-adding as the list changes, no route churn on resyncs, drift repair, cleanup. Then node A
# again with --kube against a stand-in API server (e2e/fake_kube_api.py): pod CIDRs from its
# (dual-stack) Node, its NetworkUnavailable condition patched to False once routes are in
# place, IPv6 egress masqueraded by the ip6 table, routes following Nodes that join and leave,
# none moved by a relist.
# Needs root; run by scripts/test.sh.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${NETSTACK_BIN:-$ROOT/target/release}
REF_CNI=/usr/lib/cni
ID=$$
WORK=/tmp/netstack-mn.$ID
LAN=mn-lan-$ID
NODE_A=mn-a-$ID
NODE_B=mn-b-$ID
EXT=mn-ext-$ID
IP_NODE_A=192.168.201.1
IP_NODE_B=192.168.201.2
IP_EXT=192.168.201.100
IP6_NODE_A=fd00:201::1
IP6_EXT=fd00:201::100
CIDR_A=10.201.1.0/24
CIDR_B=10.201.2.0/24
CIDR_B6=fd00:201:2::/64
SERVICE_CIDR=10.96.0.0/12
CLUSTER_CIDR=10.201.0.0/16,fd00:201::/48
NETNS=()
PIDS=()
declare -A NODE_PID
PODS=()

# The tally (ok, fail, check, log) and eventually.
. "$ROOT/e2e/checks.sh"
cleanup() {
  local p n
  for p in "${PODS[@]}"; do
    ip netns del "$p" 2>/dev/null
  done
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null
  done
  for n in "${NETNS[@]}"; do
    ip netns del "$n" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

netns() { ip netns add "$1" && NETNS+=("$1") && ip -n "$1" link set lo up; }
# plug NETNS ADDR PORT: eth0 in NETNS, a veth whose peer PORT is a port of the LAN bridge.
plug() {
  ip link add eth0 netns "$1" type veth peer name "$3" netns "$LAN"
  ip -n "$LAN" link set "$3" master br0 up
  ip -n "$1" addr add "$2/24" dev eth0
  ip -n "$1" link set eth0 up
}

# node_dir NODE: that node's root (its CNI bin and conf dirs, socket, state, IPAM).
node_dir() { printf '%s/%s' "$WORK" "$1"; }

# start_node NODE NETNS [NETSTACKD ARGS...]: the DaemonSet entrypoint inside the node's netns,
# with the node source in SOURCE_ARGS (the static list unless a step says otherwise).
FILE_SOURCE_ARGS=(--nodes-file "$WORK/nodes.json" --nodes-file-poll-ms 200)
SOURCE_ARGS=("${FILE_SOURCE_ARGS[@]}")
start_node() {
  local node=$1 ns=$2 dir
  shift 2
  dir=$(node_dir "$node")
  mkdir -p "$dir"
  ip netns exec "$ns" env \
    CNI_BIN_DIR="$dir/opt/cni/bin" CNI_CONF_DIR="$dir/etc/cni/net.d" \
    NETSTACK_TEMPLATE="$ROOT/manifests/10-netstack.conflist" \
    NETSTACK_SOCKET="$dir/netstackd.sock" NETSTACK_IPAM_DATA_DIR="$dir/ipam" \
    NETSTACKD="$BIN/netstackd" NETSTACK_PLUGIN="$BIN/netstack" REF_CNI_DIR="$REF_CNI" \
    READY_TIMEOUT=20 NETSTACK_LOG=info \
    sh "$ROOT/manifests/install-cni.sh" run \
      --state-dir "$dir/state" --node-name "$node" "${SOURCE_ARGS[@]}" \
      --resync-secs 1 --metrics-addr off --workers 2 "$@" \
    >>"$dir/log" 2>&1 &
  PIDS+=($!)
  NODE_PID[$node]=$!
}

conflist_of() { printf '%s/etc/cni/net.d/10-netstack.conflist' "$(node_dir "$1")"; }

# cni NODE NETNS CMD POD: one plugin call through the node's installed binaries and conflist.
cni() {
  local dir conf
  dir=$(node_dir "$1")
  conf=$(jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' "$(conflist_of "$1")")
  printf '%s' "$conf" | ip netns exec "$2" env CNI_COMMAND="$3" CNI_CONTAINERID="$4" \
    CNI_NETNS="/run/netns/$4" CNI_IFNAME=eth0 CNI_PATH="$dir/opt/cni/bin" \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$4" "$dir/opt/cni/bin/netstack"
}

# add_pod NODE NETNS POD: prints the pod's IPv4 address. Runs in a subshell ($(...)): the
# pod's netns must already exist (new_pod), so that cleanup knows it.
new_pod() { ip netns add "$1" && PODS+=("$1") && ip -n "$1" link set lo up; }
add_pod() {
  local result
  result=$(cni "$1" "$2" ADD "$3") || { echo "ADD $3 failed: $result" >&2; return 1; }
  jq -r '.ips[] | select(.address | test("\\.")) | .address' <<<"$result" | cut -d/ -f1
}

# peer_of NETNS ADDR PORT: serve one TCP connection on ADDR:PORT in NETNS that answers with the
# client's address as this side sees it (background).
peer_of() {
  ip netns exec "$1" timeout 20 socat -T 5 "TCP-LISTEN:$3,bind=$2,reuseaddr" \
    SYSTEM:'echo $SOCAT_PEERADDR' &
  PIDS+=($!)
  sleep 0.3
}
# ask NETNS ADDR PORT: what the peer_of server at ADDR:PORT saw as our address.
ask() { ip netns exec "$1" timeout 5 socat -T 3 - "TCP:$2:$3" </dev/null 2>/dev/null; }

routes_of() { ip -n "$1" -4 route show proto 78; }
# refused NODE REASON: node NODE's netstack_node_routes_refused_total for REASON.
refused() {
  "$BIN/netstackd" ctl --socket "$(node_dir "$1")/netstackd.sock" metrics |
    awk -v r="netstack_node_routes_refused_total{reason=\"$2\"}" '$1 == r {print $2}'
}
refused_is() { test "$(refused "$1" "$2")" = "$3"; }
has_route() { routes_of "$1" | grep -q "^$2 via $3 dev eth0 *$"; }
no_route() { ! routes_of "$1" | grep -q "^$2 "; }

write_nodes() {
  # write_nodes NAME:CIDR:IP...: the static node list, replaced atomically.
  local entries=() spec name cidr ip
  for spec in "$@"; do
    IFS=: read -r name cidr ip <<<"$spec"
    entries+=("{\"name\":\"$name\",\"podCIDRs\":[\"$cidr\"],\"internalIPs\":[\"$ip\"]}")
  done
  local IFS=,
  printf '{"nodes":[%s]}\n' "${entries[*]}" >"$WORK/nodes.json.tmp"
  mv "$WORK/nodes.json.tmp" "$WORK/nodes.json"
}

for t in "$BIN/netstackd" "$BIN/netstack" "$REF_CNI/host-local" socat jq nft curl python3; do
  command -v "$t" >/dev/null || { echo "test_multinode: $t is missing" >&2; exit 1; }
done
mkdir -p "$WORK"

log "topology: lan bridge, nodes A and B, ext"
netns "$LAN"
ip -n "$LAN" link add br0 type bridge
ip -n "$LAN" link set br0 up
netns "$NODE_A"; plug "$NODE_A" "$IP_NODE_A" port-a
netns "$NODE_B"; plug "$NODE_B" "$IP_NODE_B" port-b
netns "$EXT"; plug "$EXT" "$IP_EXT" port-ext
ip -n "$NODE_A" addr add "$IP6_NODE_A/64" dev eth0 nodad
ip -n "$EXT" addr add "$IP6_EXT/64" dev eth0 nodad
check "node A reaches node B on the link" ip netns exec "$NODE_A" ping -c 1 -W 2 "$IP_NODE_B"

log "install step: a netstackd that cannot start never gets a conflist"
start_node node-x "$NODE_A" --pod-cidr 10.201.9.0/31
wait "${NODE_PID[node-x]}"; rc=$?
check "the entrypoint exits non-zero ($rc)" test "$rc" -ne 0
check "no conflist written for it" test ! -e "$(conflist_of node-x)"
check "the CNI binaries were installed before netstackd started" test -x "$(node_dir node-x)/opt/cni/bin/netstack"
check "netstackd's failure is in the log" grep -q "too small" "$(node_dir node-x)/log"

log "nodes A and B through the DaemonSet entrypoint"
write_nodes "node-a:$CIDR_A:$IP_NODE_A" "node-b:$CIDR_B:$IP_NODE_B"
start_node node-a "$NODE_A" --pod-cidr "$CIDR_A" --service-cidr "$SERVICE_CIDR"
# B guards its routes: other nodes' pod CIDRs must lie in the cluster CIDR, be /20 or longer
# and stay clear of the service CIDR (its masquerade is off, so these exempt nothing).
start_node node-b "$NODE_B" --pod-cidr "$CIDR_B" --pod-cidr-v6 "$CIDR_B6" --masquerade=false \
  --cluster-cidr "$CLUSTER_CIDR" --service-cidr "$SERVICE_CIDR" --node-cidr-min-prefix 20
check "node A's conflist is written once netstackd is ready" eventually 20 test -s "$(conflist_of node-a)"
check "node B's conflist is written once netstackd is ready" eventually 20 test -s "$(conflist_of node-b)"
CONF_A=$(conflist_of node-a)
check "conflist: netstack plugin uses node A's pod CIDR only" test "$(jq -c '[.plugins[] | select(.type=="netstack") | .ipam.ranges][0]' "$CONF_A")" = "[[{\"subnet\":\"$CIDR_A\"}]]"
check "conflist: no IPv6 route without an IPv6 range" test "$(jq -c '[.plugins[] | select(.type=="netstack") | .ipam.routes][0]' "$CONF_A")" = '[{"dst":"0.0.0.0/0"}]'
check "conflist: the socket netstackd serves" test "$(jq -r '.plugins[0].socket' "$CONF_A")" = "$(node_dir node-a)/netstackd.sock"
check "conflist: everything else is the template's" test "$(jq -S 'del(.plugins[0].socket, .plugins[0].ipam)' "$CONF_A")" = "$(jq -S 'del(.plugins[0].socket, .plugins[0].ipam)' "$ROOT/manifests/10-netstack.conflist")"
for p in netstack host-local portmap loopback; do
  check "node A's bin dir has $p" test -x "$(node_dir node-a)/opt/cni/bin/$p"
done
check "netstack in the bin dir is the built plugin" cmp "$BIN/netstack" "$(node_dir node-a)/opt/cni/bin/netstack"
check "no temporary file left in the conf dir" test "$(ls -A "$(dirname "$CONF_A")")" = 10-netstack.conflist
CONF_B=$(conflist_of node-b)
check "dual-stack node B's conflist has both its pod CIDRs" test "$(jq -c '.plugins[0].ipam.ranges' "$CONF_B")" = "[[{\"subnet\":\"$CIDR_B\"}],[{\"subnet\":\"$CIDR_B6\"}]]"
check "  ... and both default routes" test "$(jq -c '[.plugins[0].ipam.routes[].dst]' "$CONF_B")" = '["0.0.0.0/0","::/0"]'
check "  ... as netstackd's status reports them" test "$("$BIN/netstackd" ctl --socket "$(node_dir node-b)/netstackd.sock" --json status | jq -r '.pod_cidr_v6')" = "$CIDR_B6"

log "host-gw routes from the node list"
check "A routes $CIDR_B via B" eventually 5 has_route "$NODE_A" "$CIDR_B" "$IP_NODE_B"
check "B routes $CIDR_A via A" eventually 5 has_route "$NODE_B" "$CIDR_A" "$IP_NODE_A"
check "A has no route for its own CIDR from the list" test "$(routes_of "$NODE_A" | wc -l)" = 1
check "A masquerades its pods' traffic (table ip netstack)" eventually 5 sh -c "ip netns exec $NODE_A nft list table ip netstack | grep -q 'ip saddr $CIDR_A ip daddr != @no_masquerade masquerade'"
# exempt NETNS ADDR: ADDR is in the node's no-masquerade set.
exempt() { ip netns exec "$1" nft get element ip netstack no_masquerade "{ $2 }"; }
# not_exempt NETNS ADDR: the no-masquerade set is there and ADDR is not in it (nft says "No
# such file or directory" for a missing table as for a missing element: the set is listed first).
not_exempt() {
  ip netns exec "$1" nft list set ip netstack no_masquerade >/dev/null 2>&1 || return 1
  ! exempt "$@"
}
# no_table NETNS: nft answers in NETNS, and lists no table ip netstack.
no_table() {
  local tables
  tables=$(ip netns exec "$1" nft list tables) || return 1
  ! grep -qx 'table ip netstack' <<<"$tables"
}
# echo_requests NETNS: the ICMP echo requests NETNS's kernel has received so far.
echo_requests() { ip netns exec "$1" nstat -asz IcmpInEchos | awk '$1 == "IcmpInEchos" { print $2 }'; }
# unanswered NETNS ADDR: ping in NETNS sends 2 echo requests to ADDR and gets no reply (not a
# ping that could not run or send).
unanswered() {
  local out
  out=$(ip netns exec "$1" ping -c 2 -i 0.2 -W 1 "$2" 2>&1)
  [ $? = 1 ] && grep -q '^2 packets transmitted, 0 received' <<<"$out"
}
check "A's no-masquerade set holds A's pod CIDR" exempt "$NODE_A" 10.201.1.77
check "  ... B's pod CIDR (from the node list)" exempt "$NODE_A" 10.201.2.77
check "  ... the service CIDR (--service-cidr)" exempt "$NODE_A" 10.100.0.1
check "  ... and not the outside world" not_exempt "$NODE_A" "$IP_EXT"
check "B has no masquerade table (--masquerade=false)" no_table "$NODE_B"

log "pods through the installed plugin and conflist"
A1=mn-a1-$ID; A2=mn-a2-$ID; B1=mn-b1-$ID
new_pod "$A1"; new_pod "$A2"; new_pod "$B1"
IP_A1=$(add_pod node-a "$NODE_A" "$A1") && ok "ADD pod a1 on A ($IP_A1)" || fail "ADD pod a1 on A"
IP_A2=$(add_pod node-a "$NODE_A" "$A2") && ok "ADD pod a2 on A ($IP_A2)" || fail "ADD pod a2 on A"
IP_B1=$(add_pod node-b "$NODE_B" "$B1") && ok "ADD pod b1 on B ($IP_B1)" || fail "ADD pod b1 on B"
check "a1's address is in A's pod CIDR" test "${IP_A1%.*}.0/24" = "$CIDR_A"
check "b1's address is in B's pod CIDR" test "${IP_B1%.*}.0/24" = "$CIDR_B"
check "b1 also got an IPv6 address in $CIDR_B6 (dual-stack conflist)" sh -c "ip -n $B1 -6 addr show dev eth0 scope global | grep -q 'inet6 ${CIDR_B6%::/64}:'"

log "pod to pod"
check "ping a1 -> a2 (same node)" ip netns exec "$A1" ping -c 2 -i 0.2 -W 2 "$IP_A2"
check "ping a1 -> b1 (across nodes)" ip netns exec "$A1" ping -c 3 -i 0.2 -W 2 "$IP_B1"
check "ping b1 -> a1 (across nodes)" ip netns exec "$B1" ping -c 3 -i 0.2 -W 2 "$IP_A1"
peer_of "$B1" "$IP_B1" 7001
seen=$(ask "$A1" "$IP_B1" 7001)
check "b1 sees a1's pod IP, not node A's ($seen)" test "$seen" = "$IP_A1"
peer_of "$A1" "$IP_A1" 7002
seen=$(ask "$B1" "$IP_A1" 7002)
check "a1 sees b1's pod IP ($seen)" test "$seen" = "$IP_B1"
check "node B reaches pod a1 by its pod IP" ip netns exec "$NODE_B" ping -c 1 -W 2 "$IP_A1"

log "egress masquerade"
peer_of "$EXT" "$IP_EXT" 7003
seen=$(ask "$A1" "$IP_EXT" 7003)
check "ext sees node A's address for a1's connection ($seen)" test "$seen" = "$IP_NODE_A"
check "ping a1 -> ext (masqueraded)" ip netns exec "$A1" ping -c 2 -i 0.2 -W 2 "$IP_EXT"
ext_echos=$(echo_requests "$EXT")
check "ping b1 -> ext gets no reply where masquerade is off (ext has no route to pods)" unanswered "$B1" "$IP_EXT"
check "  ... though ext received both echo requests" test "$(($(echo_requests "$EXT") - ext_echos))" = 2

log "resyncs do not touch routes that are right"
ip -n "$NODE_A" monitor route >"$WORK/monitor-a" 2>&1 &
mon=$!
PIDS+=("$mon")
sleep 3.5 # three resyncs (--resync-secs 1) and ~17 reads of the unchanged list
kill "$mon" 2>/dev/null; wait "$mon" 2>/dev/null
check "no route event on A across three resyncs" test ! -s "$WORK/monitor-a"
check "A's masquerade table was not rewritten" test "$(grep -c 'egress masquerade rules written' "$(node_dir node-a)/log")" = 2

log "the node list changes"
write_nodes "node-a:$CIDR_A:$IP_NODE_A"
check "removing node B from the list removes A's route to $CIDR_B" eventually 5 no_route "$NODE_A" "$CIDR_B"
check "a1 no longer reaches b1 (2 pings sent, none answered)" unanswered "$A1" "$IP_B1"
check "A's no-masquerade set dropped $CIDR_B" eventually 5 sh -c "! ip netns exec $NODE_A nft get element ip netstack no_masquerade '{ 10.201.2.77 }'"
check "B keeps its route to A (A is still listed)" has_route "$NODE_B" "$CIDR_A" "$IP_NODE_A"
echo '{"nodes": [' >"$WORK/nodes.json.tmp" && mv "$WORK/nodes.json.tmp" "$WORK/nodes.json"
sleep 1
check "an invalid list changes nothing (B's route to A stays)" has_route "$NODE_B" "$CIDR_A" "$IP_NODE_A"
check "  ... and is reported" grep -q "keeping the last list" "$(node_dir node-b)/log"
write_nodes "node-a:$CIDR_A:$IP_NODE_A" "node-b:$CIDR_B:$IP_NODE_B"
check "node B back in the list: A's route returns" eventually 5 has_route "$NODE_A" "$CIDR_B" "$IP_NODE_B"
check "ping a1 -> b1 again" ip netns exec "$A1" ping -c 2 -i 0.2 -W 2 "$IP_B1"
write_nodes "node-a:$CIDR_A:$IP_NODE_A" "node-b:$CIDR_B:192.168.201.22"
check "node B's address changes: A's route follows in place" eventually 5 has_route "$NODE_A" "$CIDR_B" 192.168.201.22
write_nodes "node-a:$CIDR_A:$IP_NODE_A" "node-b:$CIDR_B:$IP_NODE_B"
check "  ... and back" eventually 5 has_route "$NODE_A" "$CIDR_B" "$IP_NODE_B"
ip -n "$NODE_A" route del "$CIDR_B"
check "a route deleted behind netstack's back is restored at the next resync" eventually 5 has_route "$NODE_A" "$CIDR_B" "$IP_NODE_B"
ip -n "$NODE_A" route add 10.201.77.0/24 via "$IP_NODE_B"
write_nodes "node-a:$CIDR_A:$IP_NODE_A" "node-b:$CIDR_B:$IP_NODE_B" "node-c:10.201.77.0/24:192.168.201.3"
sleep 1.5
check "a foreign route to a listed CIDR is left alone" sh -c "ip -n $NODE_A route show 10.201.77.0/24 | grep -q 'via $IP_NODE_B' && ! ip -n $NODE_A route show 10.201.77.0/24 | grep -q 'proto 78'"

log "node objects with a bad pod CIDR or next hop are refused, logged and counted"
write_nodes "node-a:$CIDR_A:$IP_NODE_A" "node-b:$CIDR_B:$IP_NODE_B" \
  "node-out:10.55.0.0/24:192.168.201.5" "node-short:10.201.64.0/19:192.168.201.6" \
  "node-svc:10.96.5.0/24:192.168.201.7" "node-own:10.201.2.128/25:192.168.201.8" \
  "node-far:10.201.50.0/24:172.31.0.9" "node-good:10.201.60.0/24:192.168.201.10"
check "B routes the good newcomer's 10.201.60.0/24 via 192.168.201.10" eventually 5 has_route "$NODE_B" 10.201.60.0/24 192.168.201.10
check "  ... and keeps its route to A" has_route "$NODE_B" "$CIDR_A" "$IP_NODE_A"
# (what, CIDR, reason label)
for bad in "outside --cluster-cidr:10.55.0.0/24:outside_cluster_cidr" \
  "a /19 (minimum /20):10.201.64.0/19:prefix_too_short" \
  "overlapping --service-cidr:10.96.5.0/24:overlaps_service_cidr" \
  "overlapping B's own pod CIDR:10.201.2.128/25:overlaps_node_cidr" \
  "next hop 172.31.0.9 off the link:10.201.50.0/24:next_hop_not_connected"; do
  IFS=: read -r what cidr reason <<<"$bad"
  check "B refuses $cidr, $what: no route" no_route "$NODE_B" "$cidr"
  check "  ... counted once as $reason" eventually 5 refused_is node-b "$reason" 1
  check "  ... and logged as a warning naming the node and the reason" \
    grep -qE "WARN.*node node-[a-z]+: pod CIDR $cidr refused \($reason\)" "$(node_dir node-b)/log"
done
check "A refuses the off-link next hop too (no guard flags needed)" no_route "$NODE_A" 10.201.50.0/24
check "  ... counted on A" test "$(refused node-a next_hop_not_connected)" = 1
sleep 1.5 # a resync and several reads of the same list
check "a resync does not count a refusal again" test "$(refused node-b outside_cluster_cidr)" = 1
write_nodes "node-a:$CIDR_A:$IP_NODE_A" "node-b:$CIDR_B:$IP_NODE_B"
check "the newcomers leave: B's route to 10.201.60.0/24 goes" eventually 5 no_route "$NODE_B" 10.201.60.0/24

log "pod deletion"
check "DEL b1" cni node-b "$NODE_B" DEL "$B1"
check "b1's TAP is gone" sh -c "! ip -n $B1 link show eth0"
check "B has no attachment left" test "$("$BIN/netstackd" ctl --socket "$(node_dir node-b)/netstackd.sock" --json status | jq .attachments)" = 0

log "shutdown and cleanup"
kill -TERM "${NODE_PID[node-a]}"
wait "${NODE_PID[node-a]}"; rc=$?
check "node A's entrypoint passes SIGTERM on and exits 0 ($rc)" test "$rc" = 0
check "netstackd on A removed its masquerade table on shutdown" no_table "$NODE_A"
check "A's routes stay across a restart" has_route "$NODE_A" "$CIDR_B" "$IP_NODE_B"
# A crash (kill -9) leaves the masquerade table behind: cleanup removes it.
ip netns exec "$NODE_A" "$BIN/netstackd" --pod-cidr "$CIDR_A" --socket "$(node_dir node-a)/netstackd.sock" \
  --state-dir "$(node_dir node-a)/state" --node-name node-a --nodes-file "$WORK/nodes.json" \
  --metrics-addr off --workers 1 >>"$(node_dir node-a)/log" 2>&1 &
crashed=$!
PIDS+=("$crashed")
check "netstackd on A again (masquerade on by default)" eventually 20 sh -c "ip netns exec $NODE_A nft list table ip netstack"
kill -KILL "$crashed"; wait "$crashed" 2>/dev/null
check "kill -9 leaves netstack's table behind" ip netns exec "$NODE_A" nft list table ip netstack
out=$(ip netns exec "$NODE_A" "$BIN/netstackd" cleanup --socket "$(node_dir node-a)/netstackd.sock" --state-dir "$(node_dir node-a)/state" 2>&1)
check "netstackd cleanup on A succeeds" grep -q "1 host-gw route(s) removed" <<<"$out"
check "  ... and reports the table removed" grep -q "nftables table ip netstack removed" <<<"$out"
check "no netstack table left on A" no_table "$NODE_A"
check "no netstack route left on A" test -z "$(routes_of "$NODE_A")"
check "the foreign route is still there" sh -c "ip -n $NODE_A route show 10.201.77.0/24 | grep -q via"
check "no uplink left on A" sh -c "! ip -n $NODE_A link show netstack0"

log "node A through the Kubernetes API (--kube; a stand-in API server in A's netns)"
# The same entrypoint, with --kube instead of --nodes-file and no --pod-cidr: the pod CIDRs
# come from node-a's Node object, the routes from the watch on all Nodes.
mv "$(node_dir node-a)" "$(node_dir node-a).file"
ip netns exec "$NODE_A" python3 "$ROOT/e2e/fake_kube_api.py" "$WORK/api.port" 2>"$WORK/api.log" &
PIDS+=($!)
check "the stand-in API server listens" eventually 10 test -s "$WORK/api.port"
API=http://127.0.0.1:$(cat "$WORK/api.port")
cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: standin, cluster: {server: "$API"}}]
users: [{name: netstack, user: {}}]
contexts: [{name: standin, context: {cluster: standin, user: netstack}}]
current-context: standin
EOF
CIDR_A6=fd00:201:1::/64
# kube_node NAME POD_CIDRS_JSON INTERNAL_IP: a Node object.
kube_node() {
  printf '{"metadata":{"name":"%s"},"spec":{"podCIDR":%s,"podCIDRs":%s},"status":{"addresses":[{"type":"Hostname","address":"%s"},{"type":"InternalIP","address":"%s"}]}}' \
    "$1" "$(jq -c '.[0]' <<<"$2")" "$2" "$1" "$3"
}
# put_nodes NODE_JSON...: the cluster's Nodes, replaced.
put_nodes() {
  local IFS=,
  ip netns exec "$NODE_A" curl -sf -X PUT --data "{\"items\":[$*]}" "$API/test/nodes" >/dev/null
}
api_stat() { ip netns exec "$NODE_A" curl -sf "$API/test/stats" | jq -r ".$1"; }
NODE_KA=$(kube_node node-a "[\"$CIDR_A\",\"$CIDR_A6\"]" "$IP_NODE_A")
NODE_KB=$(kube_node node-b "[\"$CIDR_B\"]" "$IP_NODE_B")
NODE_KC=$(kube_node node-c '["10.201.3.0/24"]' 192.168.201.3)
check "the API holds nodes a and b" put_nodes "$NODE_KA" "$NODE_KB"
SOURCE_ARGS=(--kube)
KUBECONFIG=$WORK/kubeconfig start_node node-a "$NODE_A"
SOURCE_ARGS=("${FILE_SOURCE_ARGS[@]}")
CONF_A=$(conflist_of node-a)
check "node A's conflist is written once netstackd is ready" eventually 20 test -s "$CONF_A"
check "  ... with both pod CIDRs of node-a's Node (no --pod-cidr given)" test \
  "$(jq -c '.plugins[0].ipam.ranges' "$CONF_A")" = "[[{\"subnet\":\"$CIDR_A\"}],[{\"subnet\":\"$CIDR_A6\"}]]"
check "A routes $CIDR_B via B, from the watched Nodes" eventually 10 has_route "$NODE_A" "$CIDR_B" "$IP_NODE_B"
check "A masquerades, with B's pod CIDR exempt" eventually 5 exempt "$NODE_A" 10.201.2.77
# Routes in place: the Node's NetworkUnavailable condition goes to False, by a strategic merge
# patch of node-a's status carrying that one condition.
patch_of_a() { ip netns exec "$NODE_A" curl -sf "$API/test/patches" | jq -e --arg p /api/v1/nodes/node-a/status '[.[] | select(.path == $p)][0]'; }
check "netstackd patches node-a's status once routes are in place" eventually 10 patch_of_a
PATCH_A=$(patch_of_a 2>/dev/null)
check "  ... a strategic merge patch" test "$(jq -r .content_type <<<"$PATCH_A")" = application/strategic-merge-patch+json
check "  ... setting NetworkUnavailable to False, reason NetstackRoutesCreated, nothing else" test \
  "$(jq -c '.body.status.conditions | map({type, status, reason})' <<<"$PATCH_A")" = '[{"type":"NetworkUnavailable","status":"False","reason":"NetstackRoutesCreated"}]'
check "  ... and says so in its log" grep -q "NetworkUnavailable set to False" "$(node_dir node-a)/log"
first_line() { grep -n -m1 "$1" "$(node_dir node-a)/log" | cut -d: -f1; }
check "  ... after its first host-gw route" test "$(first_line 'host-gw route')" -lt "$(first_line 'NetworkUnavailable set to False')"
A3=mn-a3-$ID
new_pod "$A3"
IP_A3=$(add_pod node-a "$NODE_A" "$A3") && ok "ADD pod a3 on A ($IP_A3)" || fail "ADD pod a3 on A"
check "node B reaches pod a3 across nodes" ip netns exec "$NODE_B" ping -c 2 -i 0.2 -W 2 "$IP_A3"
# Egress over IPv6: the Node is dual-stack, so a3 has an IPv6 address too, and netstack's
# ip6 table masquerades it (ext has no route to any pod CIDR).
check "A masquerades IPv6 pod traffic too (table ip6 netstack)" eventually 5 sh -c "ip netns exec $NODE_A nft list table ip6 netstack | grep -q 'ip6 saddr $CIDR_A6 ip6 daddr != @no_masquerade masquerade'"
ip netns exec "$EXT" timeout 20 socat -T 5 "TCP6-LISTEN:7006,bind=[$IP6_EXT],reuseaddr" SYSTEM:'echo $SOCAT_PEERADDR' &
PIDS+=($!)
sleep 0.3
seen=$(ip netns exec "$A3" timeout 5 socat -T 3 - "TCP6:[$IP6_EXT]:7006" </dev/null 2>/dev/null | tr -d '[]')
seen=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_address(sys.argv[1]))' "$seen" 2>/dev/null)
check "ext sees node A's IPv6 address for a3's connection ($seen)" test "$seen" = "$IP6_NODE_A"
# Two bad Nodes join with it: one whose next hop is off the link, one claiming 0.0.0.0/0.
NODE_KFAR=$(kube_node node-far '["10.201.50.0/24"]' 172.31.0.9)
NODE_KALL=$(kube_node node-all '["0.0.0.0/0"]' 192.168.201.9)
no_default() { ! routes_of "$1" | grep -q '^default'; }
check "a node joins the cluster (with two bad Nodes)" put_nodes "$NODE_KA" "$NODE_KB" "$NODE_KC" "$NODE_KFAR" "$NODE_KALL"
check "  ... A routes its pod CIDR 10.201.3.0/24 via 192.168.201.3" eventually 10 has_route "$NODE_A" 10.201.3.0/24 192.168.201.3
check "  ... the Node with an off-link next hop is refused and counted" eventually 5 refused_is node-a next_hop_not_connected 1
check "  ... no route to its 10.201.50.0/24" no_route "$NODE_A" 10.201.50.0/24
check "  ... the Node claiming 0.0.0.0/0 is refused (prefix_too_short) and counted" test "$(refused node-a prefix_too_short)" = 1
check "  ... no default route from it" no_default "$NODE_A"
check "  ... and its 0.0.0.0/0 exempts nothing from masquerade" not_exempt "$NODE_A" "$IP_EXT"

# The watch expires (410): the watcher relists the same Nodes; no route may move.
changes_before=$(grep -c "node list changed" "$(node_dir node-a)/log")
lists_before=$(api_stat lists)
watches_before=$(api_stat watches)
ip -n "$NODE_A" monitor route >"$WORK/monitor-kube" 2>&1 &
mon=$!
PIDS+=("$mon")
ip netns exec "$NODE_A" curl -sf -X POST "$API/test/expire" >/dev/null
# Relisted, and watching again after the relist (so the relist has been folded in).
check "the expired watch makes netstackd relist" eventually 20 sh -c "[ \$(ip netns exec $NODE_A curl -sf $API/test/stats | jq .lists) -gt $lists_before ]"
check "  ... and watch again" eventually 20 sh -c "[ \$(ip netns exec $NODE_A curl -sf $API/test/stats | jq .watches) -gt $((watches_before + 1)) ]"
kill "$mon" 2>/dev/null; wait "$mon" 2>/dev/null
check "  ... without a route event on A" test ! -s "$WORK/monitor-kube"
check "  ... nor a new node list" test "$(grep -c "node list changed" "$(node_dir node-a)/log")" = "$changes_before"

check "node-b leaves the cluster" put_nodes "$NODE_KA" "$NODE_KC"
check "  ... A's route to $CIDR_B is removed" eventually 10 no_route "$NODE_A" "$CIDR_B"
check "  ... the route to node-c stays" has_route "$NODE_A" 10.201.3.0/24 192.168.201.3
check "DEL a3" cni node-a "$NODE_A" DEL "$A3"
kill -TERM "${NODE_PID[node-a]}"
wait "${NODE_PID[node-a]}"; rc=$?
check "node A (--kube) exits 0 on SIGTERM ($rc)" test "$rc" = 0

echo
echo "test_multinode: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
