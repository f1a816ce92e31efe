#!/usr/bin/env bash
# e2e: the operator's CLI on the node. `netstackd ctl node` with node mode off (it says so, and
# is no error) and on (a nodes file naming this node and a peer: the peer's route with its node
# and next hop, the masquerade table, the forward accept rules, health, the last sync), and
# `netstackd ctl detach` (the pod's link and state file go, as with CNI DEL), `ctl gc` (an
# attachment whose netns was deleted behind netstack's back; --dry-run changes nothing) and
# `ctl ipam` (host-local's reservations beside the attachments, leaks named) and `ctl capture
# --filter` (only matching frames reach the pcap; a bad filter is a CLI error). Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap 'ip link del nsctl-node 2>/dev/null; e2e_cleanup' EXIT

write_conflist
start_netstackd || exit 1

log "ctl node without node mode"
out=$(ctl node); rc=$?
check "ctl node --json exits 0 without node mode (rc $rc)" test "$rc" = 0
check "  ... and says node mode is off, source none" test "$(jq -r '"\(.enabled) \(.source)"' <<<"$out")" = "false none"
check "  ... with no routes" test "$(jq '.routes | length' <<<"$out")" = 0
out=$(ctlh node)
check "the table says node mode is off" grep -q '^node mode is off' <<<"$out"
check "  ... and that masquerade is off (--masquerade=false)" grep -q '^masquerade *off$' <<<"$out"

log "ctl detach"
A=ctl-a-$RUN_ID
B=ctl-b-$RUN_ID
IP_A=$(add_pod "$A")
IP_B=$(add_pod "$B")
check "pod A is attached with its state file" test -e "$STATE/$A:eth0.json"
check "pod A's link is netstack's" pod_link_is_ours "$A"
out=$(ctlh detach "$A"); rc=$?
check "ctl detach exits 0 ($out)" test "$rc" = 0
check "  ... and says the link went" grep -q "detached, its link removed" <<<"$out"
check "pod A is no longer listed" test "$(ctl list | jq --arg id "$A" '[.[] | select(.container_id == $id)] | length')" = 0
check "pod A's state file is gone" test ! -e "$STATE/$A:eth0.json"
check "pod A's eth0 is gone from its netns" sh -c "! ip -n '$A' link show eth0"
check "pod B still forwards to the node (ping the gateway)" in_pod "$B" ping -c 1 -W 2 "$GATEWAY"
check "CNI DEL after ctl detach still succeeds" cni DEL "$A" "/run/netns/$A"
ip netns del "$A"
check "a second detach names no pod" sh -c "! '$BIN/netstackd' ctl --socket '$SOCK' detach '$A' 2>/dev/null"
check "ctl detach --json names the key" test "$(ctl detach "$B" | jq -r '"\(.detached.container_id) \(.link_removed)"')" = "$B true"
check "pod B's state file is gone" test ! -e "$STATE/$B:eth0.json"

log "ctl gc"
C=ctl-c-$RUN_ID
D=ctl-d-$RUN_ID
IP_C=$(add_pod "$C")
IP_D=$(add_pod "$D")
ip netns del "$C" # behind netstack's back
out=$(ctlh gc --dry-run); rc=$?
check "gc --dry-run exits 0 (rc $rc)" test "$rc" = 0
check "  ... and names pod C as one it would detach" grep -q "^would detach $C/eth0 (netns /run/netns/$C is gone)\$" <<<"$out"
check "  ... but detaches nothing" test "$(ctl list | jq length)" = 2
check "  ... and leaves C's state file" test -e "$STATE/$C:eth0.json"
out=$(ctl gc)
check "gc detaches pod C, only it" test "$(jq -r '"\(.dry_run) \([.detached[].container_id] | join(","))"' <<<"$out")" = "false $C"
check "  ... C is no longer listed, D still is" test "$(ctl list | jq -r '[.[].container_id] | join(",")')" = "$D"
check "  ... C's state file is gone" test ! -e "$STATE/$C:eth0.json"
check "pod D still forwards (ping the gateway)" in_pod "$D" ping -c 1 -W 2 "$GATEWAY"
check "a second gc finds nothing" grep -q '^0 attachment(s) detached' <(ctlh gc)

log "ctl ipam"
NETDIR=$IPAM_DIR/$NETWORK
LEAKED_IP=${POD_CIDR%.0/24}.250
printf 'handmade-%s\r\neth0' "$RUN_ID" >"$NETDIR/$LEAKED_IP" # a reservation no pod has
out=$(ctl ipam --dir "$IPAM_DIR"); rc=$?
check "ctl ipam --json exits 0 (rc $rc)" test "$rc" = 0
state_of() { jq -r --arg ip "$1" '.reservations[] | select(.ip == $ip) | "\(.network) \(.container_id) \(.ifname) \(.attached)"' <<<"$out"; }
check "pod D's reservation is attached" test "$(state_of "$IP_D")" = "$NETWORK $D eth0 true"
check "the hand-made reservation is a leak" test "$(state_of "$LEAKED_IP")" = "$NETWORK handmade-$RUN_ID eth0 false"
check "pod C's reservation (gc'd, never released) is a leak" test "$(state_of "$IP_C")" = "$NETWORK $C eth0 false"
check "every attachment has a reservation" test "$(jq '.unreserved | length' <<<"$out")" = 0
out=$(ctlh ipam --dir "$IPAM_DIR")
check "the table names the leaked reservation" grep -q "^leak: $NETWORK/$LEAKED_IP reserved for handmade-$RUN_ID/eth0, which netstackd has no attachment of\$" <<<"$out"
check "the table counts 3 leaks (B detached by hand, C gc'd, the hand-made one)" grep -q '^3 leak(s)$' <<<"$out"
mv "$NETDIR/$IP_D" "$WORK/d.reservation"
check "an attachment without a reservation is named" grep -q "^leak: attachment $D/eth0 has no host-local reservation in $IPAM_DIR\$" <(ctlh ipam --dir "$IPAM_DIR")
mv "$WORK/d.reservation" "$NETDIR/$IP_D"
rm -f "$NETDIR/$LEAKED_IP"


log "ctl capture --filter"
# capture_filtered FILTER OUT: capture pod D's frames through FILTER into OUT, in the
# background (-c 2: ends after two kept frames; --duration only bounds a hang).
capture_filtered() {
  "$BIN/netstackd" ctl --socket "$SOCK" capture "$D" --filter "$1" -w "$2" -c 2 --duration 20 2>"$2.err" &
  CAP=$!
}
# mixed_traffic: from pod D to the gateway, until the capture has its frames: a ping, UDP to
# 5354, UDP to 5353 (each round has one frame of each kind the filters look for).
mixed_traffic() {
  while kill -0 "$CAP" 2>/dev/null; do
    in_pod "$D" ping -c 1 -W 1 -q "$GATEWAY" >/dev/null
    for port in 5354 5353; do
      in_pod "$D" sh -c "echo x | timeout 2 nc -u -w 0 '$GATEWAY' $port" 2>/dev/null
    done
    sleep 0.1
  done
}
capture_filtered "udp and port 5353" "$WORK/udp.pcap"
mixed_traffic
wait "$CAP"; rc=$?
check "capture --filter ends after its 2 frames (rc $rc)" test "$rc" = 0
check "the pcap holds 2 frames" test "$(tcpdump -nr "$WORK/udp.pcap" 2>/dev/null | wc -l)" = 2
check "  ... both UDP to port 5353 (tshark)" test "$(tshark -r "$WORK/udp.pcap" -Y 'udp.dstport == 5353' 2>/dev/null | wc -l)" = 2
check "  ... filtered by the daemon, not by ctl" sh -c "grep -q '2 frames captured' '$WORK/udp.pcap.err' && ! grep -q 'filtered out here' '$WORK/udp.pcap.err'"
capture_filtered "host $GATEWAY and icmp" "$WORK/icmp.pcap"
mixed_traffic
wait "$CAP"
check "host and icmp: 2 frames, both ICMP with the gateway" \
  test "$(tcpdump -nr "$WORK/icmp.pcap" "icmp and host $GATEWAY" 2>/dev/null | wc -l) $(tcpdump -nr "$WORK/icmp.pcap" 2>/dev/null | wc -l)" = "2 2"
out=$("$BIN/netstackd" ctl --socket "$SOCK" capture "$D" --filter "udp or tcp" -w "$WORK/bad.pcap" 2>&1); rc=$?
check "a filter that does not parse is a clear CLI error (rc $rc: $out)" \
  sh -c "test $rc = 1 && grep -q 'expected \"and\", found \"or\"' <<'EOF'
$out
EOF"
check "  ... and writes no file" test ! -e "$WORK/bad.pcap"

del_pod "$B"
del_pod "$D"
stop_netstackd

log "ctl node with node mode (--nodes-file)"
# A link carrying the node network: this node 192.168.77.1, the peer 192.168.77.2.
ip link add nsctl-node type veth peer name nsctl-peer
ip addr add 192.168.77.1/24 dev nsctl-node
ip link set nsctl-node up
ip link set nsctl-peer up
cat >"$WORK/nodes.json" <<JSON
{"nodes": [
  {"name": "node-a", "podCIDRs": ["$POD_CIDR"], "internalIPs": ["192.168.77.1"]},
  {"name": "node-b", "podCIDRs": ["10.250.2.0/24"], "internalIPs": ["192.168.77.2"]}
]}
JSON
rm -f "$SOCK"
"$BIN/netstackd" --socket "$SOCK" --state-dir "$STATE" --pod-cidr "$POD_CIDR" \
  --uplink "$UPLINK" --metrics-addr off --dp-netns "$DP_NETNS" --uplink-mtu 1500 \
  --node-name node-a --nodes-file "$WORK/nodes.json" --nodes-file-poll-ms 200 \
  --service-cidr 10.96.0.0/12 \
  >>"$WORK/netstackd.log" 2>&1 &
NETSTACKD_PID=$!
check "netstackd starts in node mode" eventually 20 test -S "$SOCK"
routed() { ctl node | jq -e '.routes | length == 1'; }
check "ctl node shows the peer's route once synced" eventually 20 routed
out=$(ctl node)
check "enabled, from the nodes file, as node-a" test "$(jq -r '"\(.enabled) \(.source) \(.node_name)"' <<<"$out")" = "true file $WORK/nodes.json node-a"
check "this node's pod CIDR" test "$(jq -r '.pod_cidrs | join(",")' <<<"$out")" = "$POD_CIDR"
check "the route: node-b's 10.250.2.0/24 via 192.168.77.2" \
  test "$(jq -r '.routes[0] | "\(.node) \(.cidr) \(.via)"' <<<"$out")" = "node-b 10.250.2.0/24 192.168.77.2"
check "  ... and it is in the kernel" sh -c "ip route show 10.250.2.0/24 | grep -q 'via 192.168.77.2'"
check "masquerade on, table ip netstack written" test "$(jq -r '"\(.masquerade) \(.masquerade_tables | join(","))"' <<<"$out")" = "true ip netstack"
check "the no-masquerade set holds the service CIDR and node-b's pod CIDR" \
  jq -e '(.no_masquerade | index("10.96.0.0/12")) and (.no_masquerade | index("10.250.2.0/24"))' <<<"$out"
check "  ... as nft has it" nft get element ip netstack no_masquerade '{ 10.250.2.7 }'
check "  ... and not what is outside the cluster" sh -c "! nft get element ip netstack no_masquerade '{ 10.250.3.7 }'"
check "forward accept on for this node's pod CIDR" test "$(jq -r '"\(.forward_accept) \(.forward_rules | join(","))"' <<<"$out")" = "true $POD_CIDR"
check "every health check passes" jq -e '(.health | length) == 3 and all(.health[]; .ok)' <<<"$out"
check "a last sync time, no error" jq -e '.last_sync_unix > 0 and .last_error == null' <<<"$out"
out=$(ctlh node)
check "the table names the node and source" grep -q "^source *file $WORK/nodes.json\$" <<<"$out"
check "the table's health says ready" grep -q '^health *ready (node source: nodes file read; routes: synced; masquerade: written)$' <<<"$out"
check "the table's route row" grep -Eq '^node-b +10\.250\.2\.0/24 +192\.168\.77\.2$' <<<"$out"

# node-b leaves the list: its route goes from the kernel and from ctl node.
cat >"$WORK/nodes.json.tmp" <<JSON
{"nodes": [{"name": "node-a", "podCIDRs": ["$POD_CIDR"], "internalIPs": ["192.168.77.1"]}]}
JSON
mv "$WORK/nodes.json.tmp" "$WORK/nodes.json"
unrouted() { ctl node | jq -e '.routes | length == 0'; }
check "a node that leaves: its route leaves ctl node" eventually 20 unrouted
check "  ... and the kernel" sh -c "! ip route show 10.250.2.0/24 | grep -q via"
stop_netstackd

echo "ctl: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
