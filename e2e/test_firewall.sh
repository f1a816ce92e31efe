#!/usr/bin/env bash
# e2e: a node with a hostile host firewall, and node mode's integration with what runs it.
#
#   node (netns): br0 192.168.210.1/24 fd00:210::1/64, MTU 1400, default routes via ext
#     ── veth ── ext (netns, 192.168.210.100 fd00:210::100: "the outside world", no route to
#                the pod CIDRs)
#   pods: 10.210.1.0/24 and fd00:210:1::/64 (dual-stack: iptables and ip6tables both)
#
# netstackd runs inside the node's netns through the DaemonSet's entrypoint
# (manifests/install-cni.sh run), pods are made with the conflist it renders. The firewalls,
# one after the other (all inside the node's netns: the machine's own are never touched):
#  1. iptables' and ip6tables' (iptables-nft) FORWARD policy DROP, as Docker leaves it, plus
#     a foreign rule that must survive, with br_netfilter active (bridge-nf-call-iptables=1
#     on the node's bridge; modprobe'd if the kernel has it as a module, unloaded again if we
#     loaded it):
#     pod<->pod, pod->node, node->pod and pod->outside (masqueraded: the outside sees the
#     node's address) work through netstackd's two tagged FORWARD rules; deleting them by hand
#     cuts pod->outside (the negative control), the next resync puts them back.
#  2. a foreign nftables table whose forward chain drops by default, firewalld's shape: (a)
#     policy drop, (b) policy accept and a trailing `reject with icmpx admin-prohibited`.
#     netstackd puts `iifname "netstack0" accept` and `oifname "netstack0" accept` (comment
#     "netstack: uplink") at the head of that chain, logging it: pod->outside works (IPv4 and
#     IPv6, masqueraded); deleting them by hand cuts it (the negative control) and the next
#     resync puts them back; SIGTERM, and `netstackd cleanup` after kill -9, delete them and
#     leave the table exactly as it was (`nft list table` compared); with
#     --forward-accept=false netstackd adds none and pod->outside is dropped there.
# Also: readiness (/readyz) not ready before a valid node list, ready after; the uplink's MTU
# and the conflist's from the default route's device (1400), an explicit --uplink-mtu winning;
# the masquerade rule's fully-random; SIGTERM and `netstackd cleanup` removing exactly
# netstackd's rules and leaving the FORWARD chain as it was; a restart after kill -9 adding no
# second copy; with --kube against the stand-in API server (e2e/fake_kube_api.py), /readyz
# ready while the Node watch is connected and not ready once the API server is gone. Needs
# root, iptables, nft, python3; run by scripts/test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

NODE=fw-node-$RUN_ID
EXT=fw-ext-$RUN_ID
IP_NODE=192.168.210.1
IP_EXT=192.168.210.100
IP6_NODE=fd00:210::1
IP6_EXT=fd00:210::100
CIDR=10.210.1.0/24
CIDR6=fd00:210:1::/64
FOREIGN=fwtest$RUN_ID
METRICS=127.0.0.1:9473
DP_NETNS=/run/netns/fw-dp-$RUN_ID
NODE_DIR=$WORK/node
NS_CREATED=()
LOADED_BR_NETFILTER=
INSTALL_PID=
DIRECT_PID=
API_PID=
NETSTACKD_STOPPED=
CONF=$NODE_DIR/conf/10-netstack.conflist

fw_cleanup() {
  local p
  [ -n "$NETSTACKD_STOPPED" ] && kill -CONT "$NETSTACKD_STOPPED" 2>/dev/null
  if [ -f "$WORK/fw-pods" ]; then
    while read -r p; do
      [ -s "$CONF" ] && node_cni DEL "$p" >/dev/null 2>&1
      ip netns del "$p" 2>/dev/null
    done <"$WORK/fw-pods"
  fi
  for p in $INSTALL_PID $DIRECT_PID $API_PID; do
    kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  e2e_cleanup
  # The node's netns holds every rule, table and policy this script changed: they go with it.
  for p in "${NS_CREATED[@]}"; do
    ip netns del "$p" 2>/dev/null
  done
  if [ -n "$LOADED_BR_NETFILTER" ]; then
    modprobe -r br_netfilter 2>/dev/null || true
  fi
}
trap fw_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for t in "$BIN/netstackd" "$BIN/netstack" "$REF_CNI/host-local" iptables ip6tables nft socat jq curl python3; do
  command -v "$t" >/dev/null || { echo "test_firewall: $t is missing" >&2; exit 1; }
done
mkdir -p "$WORK" "$NODE_DIR"

in_node() { ip netns exec "$NODE" "$@"; }
check_not() { local what=$1; shift; if "$@" >/dev/null 2>&1; then fail "$what"; else ok "$what"; fi; }
# start_install ARGS...: the DaemonSet entrypoint in the node's netns (background; `ip netns
# exec` itself, not a function, so that $INSTALL_PID is the entrypoint).
start_install() {
  ip netns exec "$NODE" env CNI_BIN_DIR="$NODE_DIR/bin" CNI_CONF_DIR="$NODE_DIR/conf" \
    NETSTACK_TEMPLATE="$ROOT/manifests/10-netstack.conflist" NETSTACK_SOCKET="$SOCK" \
    NETSTACK_IPAM_DATA_DIR="$IPAM_DIR" NETSTACKD="$BIN/netstackd" NETSTACK_PLUGIN="$BIN/netstack" \
    REF_CNI_DIR="$REF_CNI" READY_TIMEOUT=20 NETSTACK_LOG=info \
    sh "$ROOT/manifests/install-cni.sh" run --pod-cidr "$CIDR" --pod-cidr-v6 "$CIDR6" --state-dir "$STATE" \
      --node-name node-fw --nodes-file "$WORK/nodes.json" --nodes-file-poll-ms 200 \
      --resync-secs 1 --metrics-addr "$METRICS" --workers 2 --dp-netns "$DP_NETNS" "$@" \
    >>"$WORK/netstackd.log" 2>&1 &
  INSTALL_PID=$!
}
stop_install() {
  kill -TERM "$INSTALL_PID" 2>/dev/null
  wait "$INSTALL_PID"
  local rc=$?
  INSTALL_PID=
  return $rc
}
# netstackd_pid: the netstackd the entrypoint started.
netstackd_pid() { pgrep -P "$INSTALL_PID" -x netstackd | head -1; }

# node_cni CMD POD: one plugin call in the node's netns through the installed plugin.
node_cni() {
  local conf
  conf=$(jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' "$CONF")
  printf '%s' "$conf" | in_node env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$2" \
    CNI_IFNAME=eth0 CNI_PATH="$NODE_DIR/bin" \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$2" "$NODE_DIR/bin/netstack"
}
# new_pod NAME: a pod netns and ADD; prints its IPv4 address.
new_pod() {
  local result
  ip netns add "$1" && ip -n "$1" link set lo up
  echo "$1" >>"$WORK/fw-pods"
  result=$(node_cni ADD "$1") || { echo "ADD $1 failed: $result" >&2; return 1; }
  jq -r '.ips[0].address' <<<"$result" | cut -d/ -f1
}

# forward_rules: iptables' FORWARD chain in the node, as `iptables -S` prints it.
forward_rules() { in_node iptables -w -S FORWARD; }
forward_rules6() { in_node ip6tables -w -S FORWARD; }
tagged() { forward_rules | grep -c -- '--comment "netstack: pod CIDR"'; }
tagged6() { forward_rules6 | grep -c -- '--comment "netstack: pod CIDR"'; }
tagged_is() { test "$(tagged)" = "$1" && test "$(tagged6)" = "$1"; }
# The foreign table and its forward chain (as nft prints them, without handles).
foreign_table() { in_node nft list table inet "$FOREIGN"; }
foreign_chain() { in_node nft list chain inet "$FOREIGN" filter_FORWARD; }
uplink_count() { foreign_chain | grep -c 'comment "netstack: uplink"'; }
uplink_is() { test "$(uplink_count)" = "$1"; }
# uplink_at_head: the chain's first two rules are netstackd's, iifname then oifname.
UPLINK_HEAD='iifname "netstack0" accept comment "netstack: uplink"
oifname "netstack0" accept comment "netstack: uplink"'
uplink_at_head() {
  test "$(foreign_chain | grep -v -e 'type filter hook' -e '[{}]' | sed -n 's/^[[:space:]]*//; 1,2p')" = "$UPLINK_HEAD"
}
# foreign_apply: replaces the foreign table by stdin's, with netstackd stopped meanwhile
# (SIGSTOP: no resync between the write and FOREIGN_BEFORE, the table as written).
FOREIGN_BEFORE=
foreign_apply() {
  local pid
  pid=$(netstackd_pid)
  kill -STOP "$pid"; NETSTACKD_STOPPED=$pid
  in_node nft delete table inet "$FOREIGN" 2>/dev/null
  in_node nft -f -
  FOREIGN_BEFORE=$(foreign_table)
  kill -CONT "$pid"; NETSTACKD_STOPPED=
}
readyz() { in_node curl -s -o "$WORK/readyz.body" -w '%{http_code}' "http://$METRICS/readyz"; }
ready_is() { test "$(readyz)" = "$1"; }
# seen_by_ext POD: what address ext sees for a TCP connection from POD.
PORT=7100
seen_by_ext() {
  PORT=$((PORT + 1))
  ip netns exec "$EXT" timeout 10 socat -T 3 "TCP-LISTEN:$PORT,bind=$IP_EXT,reuseaddr" \
    SYSTEM:'echo $SOCAT_PEERADDR' 2>/dev/null &
  local server=$!
  sleep 0.3
  ip netns exec "$1" timeout 4 socat -T 2 - "TCP:$IP_EXT:$PORT,connect-timeout=2" </dev/null 2>/dev/null
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
}
outside_sees_node() { test "$(seen_by_ext "$1")" = "$IP_NODE"; }
# seen_by_ext6 POD: the same over IPv6 (the address normalised).
seen_by_ext6() {
  PORT=$((PORT + 1))
  ip netns exec "$EXT" timeout 10 socat -T 3 "TCP6-LISTEN:$PORT,bind=[$IP6_EXT],reuseaddr" \
    SYSTEM:'echo $SOCAT_PEERADDR' 2>/dev/null &
  local server=$! seen
  sleep 0.3
  seen=$(ip netns exec "$1" timeout 4 socat -T 2 - "TCP6:[$IP6_EXT]:$PORT,connect-timeout=2" </dev/null 2>/dev/null | tr -d '[]')
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
  python3 -c 'import ipaddress, sys; print(ipaddress.ip_address(sys.argv[1]))' "$seen" 2>/dev/null
}
outside_sees_node6() { test "$(seen_by_ext6 "$1")" = "$IP6_NODE"; }
ping1() { ip netns exec "$1" ping -c 1 -W 1 "$2"; }
# paths ROW_SUFFIX: pod<->pod, pod->node, node->pod (each must work whatever the firewall).
paths() {
  check "ping p1 -> p2 (pod to pod)$1" ping1 "$P1" "$IP_P2"
  check "ping p1 -> node $IP_NODE (pod to node)$1" ping1 "$P1" "$IP_NODE"
  check "ping node -> p2 (node to pod)$1" ping1 "$NODE" "$IP_P2"
}

log "topology: node (bridge br0, MTU 1400, default route via ext) and ext"
ip netns add "$NODE" && NS_CREATED+=("$NODE")
ip netns add "$EXT" && NS_CREATED+=("$EXT")
ip -n "$NODE" link set lo up
ip -n "$EXT" link set lo up
ip -n "$NODE" link add br0 type bridge
ip -n "$NODE" link add ext0 mtu 1400 type veth peer name eth0 netns "$EXT"
ip -n "$NODE" link set ext0 master br0 up
ip -n "$NODE" link set br0 mtu 1400 up
ip -n "$NODE" addr add "$IP_NODE/24" dev br0
ip -n "$NODE" addr add "$IP6_NODE/64" dev br0 nodad
ip -n "$NODE" route add default via "$IP_EXT"
ip -n "$EXT" link set eth0 mtu 1400 up
ip -n "$EXT" addr add "$IP_EXT/24" dev eth0
ip -n "$EXT" addr add "$IP6_EXT/64" dev eth0 nodad
ip -n "$NODE" -6 route add default via "$IP6_EXT" 
check "node reaches ext" ping1 "$NODE" "$IP_EXT"

log "hostile firewall 1: iptables FORWARD policy DROP (as Docker sets), br_netfilter active"
in_node iptables -w -P FORWARD DROP
in_node iptables -w -A FORWARD -s 10.99.0.0/16 -m comment --comment "someone else's" -j ACCEPT
in_node ip6tables -w -P FORWARD DROP
in_node ip6tables -w -A FORWARD -s fd00:99::/64 -m comment --comment "someone else's" -j ACCEPT
BEFORE=$(forward_rules)
BEFORE6=$(forward_rules6)
check "the node's FORWARD policy is DROP" grep -qx -- '-P FORWARD DROP' <<<"$BEFORE"
check "  ... in ip6tables too" grep -qx -- '-P FORWARD DROP' <<<"$BEFORE6"
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && command -v modprobe >/dev/null &&
  modprobe br_netfilter 2>/dev/null; then
  LOADED_BR_NETFILTER=1
fi
if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1
  check "br_netfilter: bridged frames on the node go through iptables (bridge-nf-call-iptables=1)" \
    test "$(in_node cat /proc/sys/net/bridge/bridge-nf-call-iptables)" = 1
else
  echo "  (br_netfilter is not available on this kernel: those rows run without it)"
fi

log "netstackd through the DaemonSet entrypoint; readiness waits for a valid node list"
echo '{"nodes": [' >"$WORK/nodes.json"
start_install
check "the conflist is written once netstackd answers" eventually 20 test -s "$CONF"
check "/readyz answers 503 before a valid node list" eventually 10 ready_is 503
check "  ... saying why" grep -q "FAIL node source: no valid nodes file read" "$WORK/readyz.body"
check "  ... while liveness (/healthz) is fine" test "$(in_node curl -s -o /dev/null -w '%{http_code}' "http://$METRICS/healthz")" = 200
printf '{"nodes":[{"name":"node-fw","podCIDRs":["%s","%s"],"internalIPs":["%s"]}]}\n' "$CIDR" "$CIDR6" "$IP_NODE" >"$WORK/nodes.json.tmp"
mv "$WORK/nodes.json.tmp" "$WORK/nodes.json"
check "/readyz answers 200 once the node list is read and synced" eventually 10 ready_is 200
check "  ... every check ok" sh -c "grep -q 'ok   routes: synced' '$WORK/readyz.body' && grep -q 'ok   masquerade: written' '$WORK/readyz.body' && ! grep -q FAIL '$WORK/readyz.body'"

log "MTU from the default route's device"
check "the uplink's MTU is br0's, 1400" test "$(in_node cat /sys/class/net/netstack0/mtu)" = 1400
check "the rendered conflist's MTU is 1400" test "$(jq '.plugins[0].mtu' "$CONF")" = 1400
check "  ... and the log says where it came from" grep -q "uplink MTU from the default route's interface.*mtu=1400.*link=br0" "$WORK/netstackd.log"

log "netstackd's rules"
check "two tagged accept rules in FORWARD, in iptables and ip6tables" eventually 5 tagged_is 2
RULES=$(forward_rules)
RULES6=$(forward_rules6)
check "  ... at its head: -s and -d of the pod CIDR" test "$(sed -n 2,3p <<<"$RULES" | awk '{print $3, $4}' | sort | tr '\n' ' ')" = "-d $CIDR -s $CIDR "
check "  ... of the IPv6 pod CIDR in ip6tables" test "$(sed -n 2,3p <<<"$RULES6" | awk '{print $3, $4}' | sort | tr '\n' ' ')" = "-d $CIDR6 -s $CIDR6 "
check "  ... the policy stays DROP" grep -qx -- '-P FORWARD DROP' <<<"$RULES"
check "masquerade is fully-random" sh -c "ip netns exec $NODE nft list table ip netstack | grep -q 'ip saddr $CIDR ip daddr != @no_masquerade masquerade fully-random'"
check "  ... IPv6 masquerade too" sh -c "ip netns exec $NODE nft list table ip6 netstack | grep -q 'ip6 saddr $CIDR6 ip6 daddr != @no_masquerade masquerade fully-random'"

log "pods"
P1=fw-p1-$RUN_ID
P2=fw-p2-$RUN_ID
IP_P1=$(new_pod "$P1") && ok "ADD p1 ($IP_P1)" || fail "ADD p1"
IP_P2=$(new_pod "$P2") && ok "ADD p2 ($IP_P2)" || fail "ADD p2"
check "p1 has the conflist's MTU, 1400" test "$(ip netns exec "$P1" cat /sys/class/net/eth0/mtu)" = 1400
paths " [FORWARD DROP]"
check "p1 -> outside: ext sees the node's address (masqueraded) [FORWARD DROP]" outside_sees_node "$P1"
check "ping p2 -> outside [FORWARD DROP]" ping1 "$P2" "$IP_EXT"
check "p1 -> outside over IPv6: ext sees the node's IPv6 address [ip6tables FORWARD DROP]" outside_sees_node6 "$P1"

log "negative control: without netstackd's rules the outside is unreachable"
# Deleted behind netstackd's back while its supervisor is stopped (SIGSTOP: no resync can put
# them back mid-probe; the dataplane, another process, keeps forwarding); each ping is a new
# flow, so no conntrack entry lets it through.
NETSTACKD_STOPPED=$(netstackd_pid)
kill -STOP "$NETSTACKD_STOPPED"
in_node iptables -w -D FORWARD -s "$CIDR" -m comment --comment "netstack: pod CIDR" -j ACCEPT
in_node iptables -w -D FORWARD -d "$CIDR" -m comment --comment "netstack: pod CIDR" -j ACCEPT
in_node ip6tables -w -D FORWARD -s "$CIDR6" -m comment --comment "netstack: pod CIDR" -j ACCEPT
in_node ip6tables -w -D FORWARD -d "$CIDR6" -m comment --comment "netstack: pod CIDR" -j ACCEPT
check "  (the rules are gone)" tagged_is 0
check_not "ping p1 -> outside fails without them" ping1 "$P1" "$IP_EXT"
check_not "  ... over IPv6 too" ping1 "$P1" "$IP6_EXT"
check "  ... while pod to pod still works" ping1 "$P1" "$IP_P2"
kill -CONT "$NETSTACKD_STOPPED"
NETSTACKD_STOPPED=
check "the next resync puts both back" eventually 5 tagged_is 2
check "ping p1 -> outside works again" ping1 "$P1" "$IP_EXT"
check "  ... over IPv6 too" ping1 "$P1" "$IP6_EXT"

log "hostile firewall 2a: a foreign nftables table whose forward chain has policy drop (firewalld's shape)"
foreign_apply <<EOF
table inet $FOREIGN {
	chain filter_FORWARD {
		type filter hook forward priority filter + 10; policy drop;
		ct state established,related accept
		iifname "lo" accept
	}
}
EOF
check "the foreign table is in place, policy drop" grep -q 'policy drop;' <<<"$FOREIGN_BEFORE"
check_not "  ... with none of netstack's rules yet" grep -q netstack <<<"$FOREIGN_BEFORE"
check "netstackd puts its two uplink rules at the head of that chain" eventually 5 uplink_at_head
check "  ... exactly two" uplink_is 2
check "  ... and logs it, naming the table and chain" grep -q "INFO.*table inet $FOREIGN chain filter_FORWARD drops forwarded packets by default: uplink accept rules written" "$WORK/netstackd.log"
check "  ... the rest of the table as it was (policy drop kept)" test "$(foreign_table | grep -v 'netstack: uplink')" = "$FOREIGN_BEFORE"
paths " [foreign nft policy drop]"
check "p2 -> outside through the foreign chain: ext sees the node's address" outside_sees_node "$P2"
check "  ... over IPv6: ext sees the node's IPv6 address" outside_sees_node6 "$P2"
# Negative control: the same rules deleted by hand (netstackd stopped: no resync mid-probe).
NETSTACKD_STOPPED=$(netstackd_pid)
kill -STOP "$NETSTACKD_STOPPED"
for h in $(in_node nft -a list chain inet "$FOREIGN" filter_FORWARD | sed -n 's/.*"netstack: uplink" # handle \([0-9]*\)$/\1/p'); do
  in_node nft delete rule inet "$FOREIGN" filter_FORWARD handle "$h"
done
check "  (deleted by hand)" uplink_is 0
check_not "without them, p2 -> outside is dropped by the foreign chain" ping1 "$P2" "$IP_EXT"
check_not "  ... over IPv6 too" ping1 "$P2" "$IP6_EXT"
kill -CONT "$NETSTACKD_STOPPED"
NETSTACKD_STOPPED=
check "the next resync puts them back at the head" eventually 5 uplink_at_head
check "  ... and p2 -> outside works again" ping1 "$P2" "$IP_EXT"
check "  ... over IPv6 too" ping1 "$P2" "$IP6_EXT"

log "hostile firewall 2b: policy accept, a trailing reject (firewalld's other shape)"
foreign_apply <<EOF
table inet $FOREIGN {
	chain filter_FORWARD {
		type filter hook forward priority filter + 10; policy accept;
		ct state established,related accept
		ct state invalid drop
		iifname "lo" accept
		reject with icmpx admin-prohibited
	}
}
EOF
check "netstackd puts its two uplink rules at the head of that chain too" eventually 5 uplink_at_head
check "  ... exactly two" uplink_is 2
check "p1 -> outside: ext sees the node's address [foreign trailing reject]" outside_sees_node "$P1"
check "  ... over IPv6 too" outside_sees_node6 "$P1"

log "shutdown: netstackd's rules go, the FORWARD chain is as it was"
node_cni DEL "$P1" >/dev/null && node_cni DEL "$P2" >/dev/null
stop_install; rc=$?
check "SIGTERM: the entrypoint exits 0 ($rc)" test "$rc" = 0
check "no tagged rule left in FORWARD" tagged_is 0
check "FORWARD is exactly as before netstackd (policy DROP, the foreign rule)" test "$(forward_rules)" = "$BEFORE"
check "  ... in ip6tables too" test "$(forward_rules6)" = "$BEFORE6"
check_not "no masquerade table left" in_node nft list table ip netstack
check "no uplink rule left in the foreign chain" uplink_is 0
check "  ... the foreign table exactly as before netstackd (nft list table)" test "$(foreign_table)" = "$FOREIGN_BEFORE"

log "an explicit MTU wins; kill -9 and a restart add no second copy; cleanup"
start_install --uplink-mtu 1300
rm -f "$CONF"
check "the conflist is written again" eventually 20 test -s "$CONF"
check "--uplink-mtu 1300: the uplink's MTU is 1300" test "$(in_node cat /sys/class/net/netstack0/mtu)" = 1300
check "  ... and the conflist's" test "$(jq '.plugins[0].mtu' "$CONF")" = 1300
check "two tagged rules again" eventually 5 tagged_is 2
check "  ... and the two uplink rules in the foreign chain" eventually 5 uplink_at_head
kill -KILL "$(netstackd_pid)"
wait "$INSTALL_PID" 2>/dev/null
INSTALL_PID=
check "kill -9 leaves them behind" tagged_is 2
check "  ... the uplink rules too" uplink_is 2
ip netns exec "$NODE" "$BIN/netstackd" --pod-cidr "$CIDR" --pod-cidr-v6 "$CIDR6" --socket "$SOCK" --state-dir "$STATE" \
  --metrics-addr off --workers 1 --dp-netns "$DP_NETNS" --resync-secs 1 >>"$WORK/netstackd.log" 2>&1 &
DIRECT_PID=$!
check "a restart answers" eventually 20 test -S "$SOCK"
sleep 1.5 # a resync
check "  ... and finds them: still exactly two (each family)" tagged_is 2
check "  ... and two uplink rules" uplink_is 2
kill -KILL "$DIRECT_PID"; wait "$DIRECT_PID" 2>/dev/null
DIRECT_PID=
out=$(in_node "$BIN/netstackd" cleanup --socket "$SOCK" --state-dir "$STATE" --dp-netns "$DP_NETNS" 2>&1)
check "netstackd cleanup reports the two rules removed" grep -q "2 iptables FORWARD rule(s) removed" <<<"$out"
check "  ... and the two ip6tables ones" grep -q "2 ip6tables FORWARD rule(s) removed" <<<"$out"
check "  ... and leaves FORWARD exactly as it found it" test "$(forward_rules)" = "$BEFORE"
check "  ... in ip6tables too" test "$(forward_rules6)" = "$BEFORE6"
check "  ... the masquerade table removed too" sh -c "! ip netns exec $NODE nft list table ip netstack"
check "  ... and the two uplink rules: it says so" grep -q "2 nftables forward rule(s) removed" <<<"$out"
check "  ... the foreign table exactly as before netstackd" test "$(foreign_table)" = "$FOREIGN_BEFORE"

log "negative control: --forward-accept=false leaves the foreign chain alone, and it drops"
# The pod CIDRs accepted in iptables by hand: only the foreign chain stands in the way.
hand_rules() {
  in_node iptables -w "$1" FORWARD -s "$CIDR" -m comment --comment "by hand" -j ACCEPT
  in_node iptables -w "$1" FORWARD -d "$CIDR" -m comment --comment "by hand" -j ACCEPT
  in_node ip6tables -w "$1" FORWARD -s "$CIDR6" -m comment --comment "by hand" -j ACCEPT
  in_node ip6tables -w "$1" FORWARD -d "$CIDR6" -m comment --comment "by hand" -j ACCEPT
}
hand_rules -I
ip netns exec "$NODE" "$BIN/netstackd" --pod-cidr "$CIDR" --pod-cidr-v6 "$CIDR6" --socket "$SOCK" --state-dir "$STATE" \
  --metrics-addr off --workers 1 --dp-netns "$DP_NETNS" --resync-secs 1 --forward-accept=false >>"$WORK/netstackd.log" 2>&1 &
DIRECT_PID=$!
check "netstackd --forward-accept=false answers" eventually 20 test -S "$SOCK"
P3=fw-p3-$RUN_ID
IP_P3=$(new_pod "$P3") && ok "ADD p3 ($IP_P3)" || fail "ADD p3"
sleep 1.5 # a resync
check "no uplink rule in the foreign chain" uplink_is 0
check "  ... no tagged rule in FORWARD" tagged_is 0
check_not "p3 -> outside is dropped by the foreign chain" ping1 "$P3" "$IP_EXT"
check_not "  ... over IPv6 too" ping1 "$P3" "$IP6_EXT"
check "  ... while pod -> node works" ping1 "$P3" "$IP_NODE"
in_node nft delete table inet "$FOREIGN"
check "  ... and p3 -> outside works once the foreign table is gone (only it stood in the way)" ping1 "$P3" "$IP_EXT"
node_cni DEL "$P3" >/dev/null
kill -TERM "$DIRECT_PID"; wait "$DIRECT_PID"
DIRECT_PID=
hand_rules -D
check "FORWARD exactly as before (the hand rules gone)" test "$(forward_rules)" = "$BEFORE"
check "  ... in ip6tables too" test "$(forward_rules6)" = "$BEFORE6"

log "readiness with --kube: ready while the Node watch is connected, not ready when it is lost"
ip netns exec "$NODE" python3 "$ROOT/e2e/fake_kube_api.py" "$WORK/api.port" 2>"$WORK/api.log" &
API_PID=$!
check "the stand-in API server listens" eventually 10 test -s "$WORK/api.port"
API=http://127.0.0.1:$(cat "$WORK/api.port")
printf 'apiVersion: v1\nkind: Config\nclusters: [{name: s, cluster: {server: "%s"}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: s, context: {cluster: s, user: u}}]\ncurrent-context: s\n' "$API" >"$WORK/kubeconfig"
check "the API holds Node node-fw" in_node curl -sf -X PUT --data \
  "{\"items\":[{\"metadata\":{\"name\":\"node-fw\"},\"spec\":{\"podCIDR\":\"$CIDR\",\"podCIDRs\":[\"$CIDR\"]},\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$IP_NODE\"}]}}]}" \
  "$API/test/nodes"
ip netns exec "$NODE" env KUBECONFIG="$WORK/kubeconfig" "$BIN/netstackd" --kube --node-name node-fw \
  --socket "$SOCK" --state-dir "$STATE" --metrics-addr "$METRICS" --workers 1 --dp-netns "$DP_NETNS" \
  --resync-secs 1 >>"$WORK/netstackd.log" 2>&1 &
DIRECT_PID=$!
check "/readyz answers 200 once the watch has listed and the routes are synced" eventually 20 ready_is 200
check "  ... saying the watch is connected" grep -q "ok   node source: Kubernetes watch connected" "$WORK/readyz.body"
kill "$API_PID"; wait "$API_PID" 2>/dev/null
check "the API server gone: /readyz answers 503" eventually 20 ready_is 503
check "  ... saying the watch is not connected" grep -q "FAIL node source: Kubernetes watch not connected" "$WORK/readyz.body"
check "  ... while liveness (/healthz) is fine" test "$(in_node curl -s -o /dev/null -w '%{http_code}' "http://$METRICS/healthz")" = 200
kill -TERM "$DIRECT_PID"; wait "$DIRECT_PID"; rc=$?
DIRECT_PID=
check "netstackd --kube exits 0 on SIGTERM ($rc)" test "$rc" = 0
check "  ... and takes its FORWARD rules with it" tagged_is 0

echo
echo "test_firewall: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
