#!/usr/bin/env bash
# e2e: the CNI conformance table. One row per requirement of the CNI spec (SPEC.md 1.0.0 and
# 1.1.0, CONVENTIONS.md) and per error code, each naming the section it checks; chaining with
# Debian's reference plugins (portmap, tuning); dual-stack IPv4/IPv6 through netstackd. The
# rows that need no root, daemon or netns (VERSION, most error codes) are Rust tests that run
# the plugin binary: cni-plugin/tests/conformance.rs.
#
# Everything on the node side runs in a "node" netns of its own: netstackd and its uplink,
# the plugin chain (so portmap's DNAT rules land there), and a "client" netns on a veth that
# plays the outside world. Pods are netns of their own. Needs root; run by scripts/test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cni_chain.sh"

N=$((RUN_ID % 200 + 20))
POD_CIDR=10.244.$N.0/24
GATEWAY=10.244.$N.1
POD_CIDR6=fd00:10:244:$N::/64
GATEWAY6=fd00:10:244:$N::1
NODE=cc-node-$RUN_ID
CLIENT=cc-client-$RUN_ID
NODE_IP=192.0.2.1      # the node's address on its "external" link
NODE_IP2=192.0.2.3     # a second node address (hostIP mappings)
CLIENT_IP=192.0.2.2
UPLINK_MTU=1400
CHAIN_BIN=$WORK/bin
CHAIN_CACHE=$WORK/cache
CHAIN_WRAP=(ip netns exec "$NODE")
BW_NETWORK=netstack-cc

# row SECTION WHAT COMMAND...: one line of the conformance table.
row() {
  local section=$1 what=$2
  shift 2
  # No pipefail in a check: `cmd | grep -q` must not fail when grep stops reading early.
  if (set +o pipefail; "$@") >"$WORK/row.out" 2>&1; then
    PASSES=$((PASSES + 1))
    printf '  ok   %-34s %s\n' "[$section]" "$what"
  else
    FAILS=$((FAILS + 1))
    printf '  FAIL %-34s %s\n' "[$section]" "$what"
    sed 's/^/         | /' "$WORK/row.out" | head -20
  fi
}
# is_error CODE OUTPUT: exactly one CNI error object with this code (and cniVersion, msg).
is_error() {
  jq -e --argjson c "$1" '.code == $c and (.cniVersion | type == "string") and (.msg | length > 0)' <<<"$2" >/dev/null ||
    { echo "expected error code $1, got: $2"; return 1; }
}
node() { ip netns exec "$NODE" "$@"; }
nctl() { "$BIN/netstackd" ctl --socket "$SOCK" --json "$@"; }

cleanup() {
  local p
  for p in $(ls /run/netns 2>/dev/null | grep -- "-$RUN_ID\$"); do
    case $p in "$NODE" | "$CLIENT") continue ;; esac
    # What a runtime would do for a pod it forgets: DEL of the whole chain, then the netns.
    [ -n "${CONFLIST_CHAIN:-}" ] && chain DEL "$CONFLIST_CHAIN" "$p" "/run/netns/$p" >/dev/null 2>&1
    [ -n "${CONF:-}" ] && plugin DEL "$CONF" "$p" "/run/netns/$p" >/dev/null 2>&1
    ip netns del "$p" 2>/dev/null
  done
  [ -n "${SERVER_PIDS:-}" ] && kill $SERVER_PIDS 2>/dev/null
  stop_node_netstackd
  ip netns del "$CLIENT" 2>/dev/null
  ip netns del "$NODE" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_node_netstackd [DELAY_S]: netstackd in the node netns (after DELAY_S seconds, without
# waiting for it then); NETSTACKD_PID is netstackd's own pid.
start_node_netstackd() {
  rm -f "$SOCK"
  (sleep "${1:-0}" && exec ip netns exec "$NODE" "$BIN/netstackd" --socket "$SOCK" --state-dir "$STATE" --pod-cidr "$POD_CIDR" \
    --pod-cidr-v6 "$POD_CIDR6" --uplink "$UPLINK" --uplink-mtu "$UPLINK_MTU" --workers 2 \
    --metrics-addr off >>"$WORK/netstackd.log" 2>&1) &
  NETSTACKD_PID=$!
  [ "${1:-0}" = 0 ] || return 0
  wait_for_socket "$SOCK" "$NETSTACKD_PID" "$WORK/netstackd.log"
}
stop_node_netstackd() {
  local pid=${NETSTACKD_PID:-}
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    # Not our child when a subshell started it: wait for it to be gone all the same.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  NETSTACKD_PID=
}

# plugin CMD CONF_FILE CONTAINER_ID NETNS [IFNAME] [CNI_ARGS] [STDIN_JQ]: one direct call of
# the netstack plugin, in the node netns, with the plugin object of CONF_FILE (a conflist)
# as stdin, as libcni derives it (runtimeConfig and prevResult come through STDIN_JQ).
plugin() {
  local conf
  conf=$(jq -c ".plugins[0] + {cniVersion: .cniVersion, name: .name} | del(.capabilities) | ${7:-.}" "$2")
  printf '%s' "$conf" | node env CNI_COMMAND="$1" CNI_CONTAINERID="$3" CNI_NETNS="$4" \
    CNI_IFNAME="${5:-eth0}" CNI_PATH="$CHAIN_BIN" \
    CNI_ARGS="${6:-IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$3;K8S_POD_UID=uid-$3}" \
    "$CHAIN_BIN/netstack"
}

# write_conf FILE VERSION [EXTRA_PLUGINS_JSON]: a conflist with netstack (dual-stack host-local)
# first, then the given plugins.
write_conf() {
  jq -n --arg v "$2" --arg name "$BW_NETWORK" --arg sock "$SOCK" --arg ipam "$IPAM_DIR" \
    --arg s4 "$POD_CIDR" --arg s6 "$POD_CIDR6" --argjson more "${3:-[]}" '{
    cniVersion: $v, name: $name,
    plugins: ([{
      type: "netstack", socket: $sock, mtu: 1500, statusWaitMs: 3000, "x-unknown-key": {"kept": true},
      capabilities: {mac: true, ips: true, bandwidth: true},
      ipam: {type: "host-local", dataDir: $ipam,
             ranges: [[{subnet: $s4}], [{subnet: $s6}]],
             routes: [{dst: "0.0.0.0/0"}, {dst: "::/0"}]}
    }] + $more)}' >"$1"
}
# reservations: how many addresses host-local has reserved; reserved ID: does ID hold any?
reservations() { find "$IPAM_DIR/$BW_NETWORK" -maxdepth 1 -type f -name '*[.:]*' ! -name 'last_reserved_ip*' 2>/dev/null | wc -l; }
reserved() {
  local f
  for f in $(find "$IPAM_DIR/$BW_NETWORK" -maxdepth 1 -type f -name '*[.:]*' ! -name 'last_reserved_ip*' 2>/dev/null); do
    head -1 "$f" | tr -d '\r'; echo
  done | grep -qx -- "$1"
}
attached() { nctl list | jq --arg id "$1" '[.[] | select(.container_id == $id)] | length'; }
new_pod() { ip netns add "$1" && ip -n "$1" link set lo up; }

# ---------------------------------------------------------------------------------------
log "setup: node and client namespaces, netstackd (dual-stack, uplink MTU $UPLINK_MTU)"
mkdir -p "$WORK" "$STATE" "$IPAM_DIR" "$CHAIN_BIN" "$CHAIN_CACHE"
for p in "$REF_CNI"/*; do ln -sf "$p" "$CHAIN_BIN/"; done
ln -sf "$BIN/netstack" "$CHAIN_BIN/netstack"
# recording-ipam: an IPAM plugin that speaks CNI 1.1.0 (so it gets GC and STATUS), keeps a
# copy of every stdin it is given in $WORK/ipam-log/<COMMAND>, and hands address management
# to Debian's host-local at 1.0.0.
mkdir -p "$WORK/ipam-log"
cat >"$CHAIN_BIN/recording-ipam" <<SH
#!/bin/sh
in=\$(cat)
printf '%s\n' "\$in" >>"$WORK/ipam-log/\$CNI_COMMAND"
case \$CNI_COMMAND in
  VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}' ;;
  GC|STATUS) ;;
  *) v=\$(printf '%s' "\$in" | jq -r .cniVersion)
     printf '%s' "\$in" | jq -c '.cniVersion = "1.0.0" | .ipam.type = "host-local"' | "$REF_CNI/host-local" >"$WORK/ipam-log/out" || { cat "$WORK/ipam-log/out"; exit 1; }
     jq -c --arg v "\$v" 'if .cniVersion then .cniVersion = \$v else . end' "$WORK/ipam-log/out" ;;
esac
SH
chmod +x "$CHAIN_BIN/recording-ipam"
ip netns add "$NODE"
ip netns add "$CLIENT"
node ip link set lo up
ip -n "$CLIENT" link set lo up
ip link add "ccn$N" netns "$NODE" type veth peer name "ccc$N" netns "$CLIENT"
node ip addr add "$NODE_IP/24" dev "ccn$N"
node ip addr add "$NODE_IP2/24" dev "ccn$N"
node ip link set "ccn$N" up
ip -n "$CLIENT" addr add "$CLIENT_IP/24" dev "ccc$N"
ip -n "$CLIENT" link set "ccc$N" up
start_node_netstackd || exit 1

CONF=$WORK/v100.conflist;  write_conf "$CONF" 1.0.0
CONF110=$WORK/v110.conflist; write_conf "$CONF110" 1.1.0
CONF040=$WORK/v040.conflist; write_conf "$CONF040" 0.4.0
CONFLIST_CHAIN=$WORK/chain.conflist
write_conf "$CONFLIST_CHAIN" 1.0.0 '[{"type":"portmap","capabilities":{"portMappings":true}},
  {"type":"tuning","sysctl":{"net.ipv4.conf.eth0.arp_ignore":"1","net.ipv6.conf.eth0.hop_limit":"33"}}]'
# The same chain without portmap, for CHECK: Debian's portmap 1.1.1 fails every CHECK where
# ip6tables works (its checkPorts looks for the pod's rules in both iptables and ip6tables).
CONFLIST_NOPM=$WORK/chain-check.conflist
jq 'del(.plugins[1])' "$CONFLIST_CHAIN" >"$CONFLIST_NOPM"

# ---------------------------------------------------------------------------------------
log "parameters and error codes"
# VERSION, the error codes that need no daemon or netns (1, 2, 3, 4, 5, 6, 7) and the plugin
# run by hand are rows of cni-plugin/tests/conformance.rs (cargo test); these need the node.
P=cc-p-$RUN_ID
new_pod "$P"
out=$(plugin ADD "$CONF" "$P" "/run/netns/$P" eth0 "" ".ipam.ranges = [[{\"subnet\":\"10.9.$N.0/24\"}]]")
row "SPEC §5 error code 7" "an address netstackd refuses (outside its pod CIDR): its error kind gives 7, not 100" \
  jq -e '.code == 7 and (.msg | contains("10.9.'"$N"'.") and contains("is not a pod address"))' <<<"$out"
ref=$(jq -c '.plugins[0].ipam.ranges = [[{"subnet":"10.0.0.0/33"}]] | .plugins[0] + {cniVersion, name}' "$CONF" |
  node env CNI_COMMAND=ADD CNI_CONTAINERID="$P" CNI_NETNS="/run/netns/$P" CNI_IFNAME=eth0 CNI_PATH="$CHAIN_BIN" "$CHAIN_BIN/host-local")
out=$(plugin ADD "$CONF" "$P" "/run/netns/$P" eth0 "" '.ipam.ranges = [[{"subnet":"10.0.0.0/33"}]]')
row "SPEC §4 delegation" "an IPAM error is passed on with the IPAM plugin's own code ($(jq .code <<<"$ref"))" \
  test "$(jq .code <<<"$out")" = "$(jq .code <<<"$ref")"
nothing_left_in_p() { ! ip -n "$P" link show eth0 && [ "$(reservations)" = 0 ] && [ "$(attached "$P")" = 0 ]; }
row "SPEC §3 ADD failure leaves nothing" "no TAP, attachment or reservation after the failed ADDs" nothing_left_in_p
ip -n "$P" link add eth0 type veth peer name eth0p
out=$(plugin ADD "$CONF" "$P" "/run/netns/$P")
row "SPEC §2 ADD: interface exists (100)" "ADD when CNI_IFNAME already exists in the container" is_error 100 "$out"
row "SPEC §3 ADD failure leaves nothing" "... the foreign eth0 is kept, nothing reserved" \
  eval 'ip -n "$P" link show eth0 type veth && [ "$(reservations)" = 0 ]'
del_keeps_foreign() { plugin DEL "$CONF" "$P" "/run/netns/$P" && ip -n "$P" link show eth0 type veth; }
row "SPEC §2 DEL" "DEL after that failed ADD succeeds and leaves the foreign eth0" del_keeps_foreign
ip netns del "$P"

# ---------------------------------------------------------------------------------------
log "ADD results (1.0.0, 0.4.0, 1.1.0), capabilities, CNI_ARGS"
A=cc-a-$RUN_ID
new_pod "$A"
RA=$(plugin ADD "$CONF" "$A" "/run/netns/$A" eth0 "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=u1;K8S_POD_INFRA_CONTAINER_ID=$A;FOO=bar" \
  '. + {runtimeConfig: {bandwidth: {ingressRate: 1000000, ingressBurst: 4294967295, egressRate: 2000000, egressBurst: 4294967295}, portMappings: [{hostPort: 9, containerPort: 9, protocol: "tcp"}]}}')
IP_A=$(jq -r '.ips[] | select(.address | contains(".")) | .address' <<<"$RA" | cut -d/ -f1)
IP6_A=$(jq -r '.ips[] | select(.address | contains(":")) | .address' <<<"$RA" | cut -d/ -f1)
row "SPEC §5 ADD result" "1.0.0 result: eth0 in the sandbox, v4 + v6 addresses on interface 0 with gateways, routes" \
  jq -e --arg ns "/run/netns/$A" --arg gw "$GATEWAY" --arg gw6 "$GATEWAY6" '
    .cniVersion == "1.0.0" and .interfaces == [.interfaces[0]] and .interfaces[0].name == "eth0"
    and .interfaces[0].sandbox == $ns and (.interfaces[0] | has("mtu") | not)
    and ([.ips[].interface] == [0, 0]) and ([.ips[].gateway] | sort) == ([$gw, $gw6] | sort)
    and ([.ips[] | has("version")] | any | not)
    and ([.routes[] | "\(.dst) \(.gw)"] | sort) == (["0.0.0.0/0 \($gw)", "::/0 \($gw6)"] | sort)' <<<"$RA"
row "SPEC §2 ADD: device in the netns" "eth0 is a multi-queue TAP with the result's MAC and both addresses" \
  eval 'ip -n $A -d link show eth0 | grep -q "tap.*multi_queue" &&
    [ "$(ip netns exec $A cat /sys/class/net/eth0/address)" = "$(jq -r ".interfaces[0].mac" <<<"$RA")" ] &&
    ip -n $A addr show eth0 | grep -q "inet $IP_A/24" && ip -n $A addr show eth0 | grep -q "inet6 $IP6_A/64"'
row "CONVENTIONS bandwidth" "runtimeConfig.bandwidth is recorded with the attachment (enforced by the qdisc: test_qdisc.sh)" \
  jq -e '.bandwidth.ingressRate == 1000000 and .bandwidth.egressRate == 2000000' "$STATE/${A}:eth0.json"
# no_dnat_for_a: the node's nat table has no rule for pod A's address or port 9, and no
# portmap chain (iptables answering, so an unreadable table does not pass).
no_dnat_for_a() { local r; r=$(node iptables -t nat -S) && ! grep -qE -- "$IP_A|--dport 9( |$)|CNI-DN-" <<<"$r"; }
row "CONVENTIONS portMappings" "runtimeConfig.portMappings is left to a chained portmap: ADD succeeds, no DNAT rule made" \
  eval '[[ "$IP_A" == 10.244.$N.* ]] && no_dnat_for_a'
row "SPEC §2 parameters: CNI_ARGS" "IgnoreUnknown=1 accepts FOO; K8S_POD_* kept with the attachment" \
  eval 'nctl list | jq -e --arg id $A ".[] | select(.container_id == \$id) | .labels
    | .K8S_POD_NAMESPACE == \"ns1\" and .K8S_POD_NAME == \"web-0\" and .K8S_POD_UID == \"u1\"
      and .K8S_POD_INFRA_CONTAINER_ID == \$id and .[\"cni.network\"] == \"$BW_NETWORK\""'
B=cc-b-$RUN_ID
new_pod "$B"
RB=$(plugin ADD "$CONF040" "$B" "/run/netns/$B" eth0 "" '. + {runtimeConfig: {mac: "0a:58:00:00:be:ef", ips: ["10.244.'$N'.77/24"]}}')
IP_B=$(jq -r '.ips[] | select(.version == "4") | .address' <<<"$RB" | cut -d/ -f1)
IP6_B=$(jq -r '.ips[] | select(.version == "6") | .address' <<<"$RB" | cut -d/ -f1)
row "SPEC §5 result (0.4.0)" "0.4.0 config gets a 0.4.0 result: ips carry version 4 and 6" \
  jq -e '.cniVersion == "0.4.0" and ([.ips[].version] | sort) == ["4", "6"]' <<<"$RB"
row "CONVENTIONS mac" "runtimeConfig.mac sets the device MAC and the result's" \
  eval '[ "$(ip netns exec $B cat /sys/class/net/eth0/address)" = 0a:58:00:00:be:ef ] && jq -e ".interfaces[0].mac == \"0a:58:00:00:be:ef\"" <<<"$RB"'
row "CONVENTIONS ips" "runtimeConfig.ips is passed to IPAM: the pod got 10.244.$N.77" test "$IP_B" = "10.244.$N.77"
C=cc-c-$RUN_ID
new_pod "$C"
RC=$(plugin ADD "$CONF110" "$C" "/run/netns/$C")
row "SPEC §1 version 1.1.0" "a 1.1.0 config works with a 1.0.0-only host-local (negotiated down); result 1.1.0 with mtu" \
  jq -e '.cniVersion == "1.1.0" and .interfaces[0].mtu == 1500 and (.ips | length) == 2' <<<"$RC"
row "SPEC §1 unknown fields" "an unknown plugin key (x-unknown-key) is accepted and ignored: a result, not an error" \
  jq -e --arg net "10.244.$N." '(has("code") | not) and (.ips[0].address | type == "string" and startswith($net))' <<<"$RC"
D=cc-d-$RUN_ID
new_pod "$D"
PREV='{"cniVersion":"1.0.0","interfaces":[{"name":"ext9","mac":"02:00:00:00:00:09"}],"ips":[{"address":"192.0.2.99/32","interface":0}],"routes":[],"dns":{"nameservers":["192.0.2.53"]},"x-vendor":{"kept":true}}'
RD=$(plugin ADD "$CONF" "$D" "/run/netns/$D" eth0 "" ". + {prevResult: $PREV}")
row "SPEC §3 chained ADD: prevResult" "prevResult passed through and extended: its interface, address, DNS and unknown field kept" \
  jq -e '(.interfaces | map(.name)) == ["ext9", "eth0"] and .ips[0].address == "192.0.2.99/32"
    and ([.ips[1:][].interface] | unique) == [1] and .dns.nameservers == ["192.0.2.53"] and .["x-vendor"].kept' <<<"$RD"
plugin DEL "$CONF" "$D" "/run/netns/$D" >/dev/null

CONFREC=$WORK/rec.conflist
jq '.plugins[0].ipam.type = "recording-ipam"' "$CONF110" >"$CONFREC"
E=cc-e-$RUN_ID
new_pod "$E"
RE=$(plugin ADD "$CONFREC" "$E" "/run/netns/$E")
row "SPEC §1 unknown fields" "... and reaches the IPAM plugin unchanged, with the whole plugin config" \
  jq -se 'length == 1 and .[0]["x-unknown-key"] == {"kept": true} and .[0].type == "netstack" and .[0].ipam.type == "recording-ipam"' "$WORK/ipam-log/ADD"
row "SPEC §4 delegation (1.1.0 IPAM)" "a 1.1.0 IPAM plugin is called at 1.1.0 and its result used" \
  eval 'jq -se ".[0].cniVersion == \"1.1.0\"" "$WORK/ipam-log/ADD" && jq -e "(.ips | length) == 2" <<<"$RE"'

# ---------------------------------------------------------------------------------------
log "CHECK"
chk() { plugin CHECK "$1" "$2" "/run/netns/$2" eth0 "" ". + {prevResult: $3}"; }
row "SPEC §2 CHECK" "CHECK of a fresh attachment against its result succeeds" chk "$CONF" "$A" "$RA"
row "SPEC §2 CHECK (0.4.0)" "CHECK with a 0.4.0 config and result succeeds" chk "$CONF040" "$B" "$RB"
out=$(plugin CHECK "$CONF" "$A" "/run/netns/$A")
row "SPEC §2 CHECK (7)" "CHECK without prevResult" is_error 7 "$out"
ip -n "$A" link set eth0 address 0a:58:11:22:33:44
ip -n "$A" -6 route del default
ip -n "$A" addr del "$IP6_A/64" dev eth0
out=$(chk "$CONF" "$A" "$RA")
names_every_difference() {
  local t
  jq -e '.code == 101' <<<"$out" || return 1
  for t in "has MAC 0a:58:11:22:33:44" "address $IP6_A/64 is missing" "route ::/0 via $GATEWAY6 is missing"; do
    jq -r .msg <<<"$out" | grep -qF "$t" || { echo "not named: $t in $out"; return 1; }
  done
}
row "SPEC §2 CHECK: mismatch (101)" "each difference named: the MAC, the IPv6 address, the IPv6 default route" names_every_difference
ip -n "$A" link set eth0 address "$(jq -r '.interfaces[0].mac' <<<"$RA")"
ip -n "$A" addr add "$IP6_A/64" dev eth0 nodad
ip -n "$A" -6 route replace default via "$GATEWAY6" dev eth0
row "SPEC §2 CHECK" "CHECK passes again once the netns is restored" chk "$CONF" "$A" "$RA"
# netstackd must hold the attachment: restart it without E's state file (as if it had lost
# it), and CHECK of E names that.
stop_node_netstackd
mv "$STATE/${E}:eth0.json" "$WORK/e-state.json"
start_node_netstackd || exit 1
out=$(chk "$CONFREC" "$E" "$RE")
row "SPEC §2 CHECK: netstackd (101)" "an attachment netstackd does not hold is named in CHECK's error" \
  eval 'jq -e ".code == 101" <<<"$out" && jq -r .msg <<<"$out" | grep -q "netstackd does not hold"'
row "SPEC §2 CHECK: IPAM" "CHECK runs the IPAM plugin's CHECK" test -s "$WORK/ipam-log/CHECK"
plugin DEL "$CONFREC" "$E" "/run/netns/$E" >/dev/null

# ---------------------------------------------------------------------------------------
log "dual-stack through netstackd"
row "dual-stack: routes" "pod has an IPv6 default route via $GATEWAY6" \
  eval 'ip -n $B -6 route show default | grep -q "via $GATEWAY6 dev eth0"'
row "dual-stack: uplink" "the uplink carries the IPv6 pod CIDR and holds the IPv6 gateway" \
  eval 'node ip -6 route show $POD_CIDR6 | grep -q "dev $UPLINK" && node ip -6 addr show dev $UPLINK | grep -q "$GATEWAY6/64"'
row "dual-stack: pod -> pod IPv6" "ping6 pod A -> pod B" ip netns exec "$A" ping -6 -c 2 -i 0.2 -W 2 "$IP6_B"
row "dual-stack: pod -> node IPv6" "ping6 pod B -> node (IPv6 gateway)" ip netns exec "$B" ping -6 -c 2 -i 0.2 -W 2 "$GATEWAY6"
row "dual-stack: node -> pod IPv6" "ping6 node -> pod A" node ping -6 -c 2 -i 0.2 -W 2 "$IP6_A"
row "dual-stack: pod -> pod IPv4" "ping pod A -> pod B" ip netns exec "$A" ping -c 2 -i 0.2 -W 2 "$IP_B"
row "dual-stack: NDP" "pod B resolved the IPv6 gateway to netstackd's gateway MAC 02:4e:53:00:00:01" \
  eval 'ip -n $B -6 neigh show $GATEWAY6 | grep -q "lladdr 02:4e:53:00:00:01"'
head -c 8M /dev/urandom >"$WORK/blob6"
node timeout 20 nc -6 -l -s "$GATEWAY6" -p 5006 >"$WORK/got6" &
srv=$!
sleep 0.3
# Pod B: pod A is shaped to 2 Mbit/s egress (the bandwidth row above), and its burst of 2^32-1
# bits is clamped to 100 ms of the rate, so 8 MB would take half a minute from A.
ip netns exec "$B" timeout 20 nc -6 -N "$GATEWAY6" 5006 <"$WORK/blob6"
wait $srv
row "dual-stack: TCP over IPv6" "8 MB pod B -> node over IPv6 arrive intact" cmp "$WORK/blob6" "$WORK/got6"
out=$(ip netns exec "$A" ping -6 -c 1 -W 2 -t 1 "$IP6_B" 2>&1)
row "dual-stack: hop limit" "hop limit 1 gets ICMPv6 time exceeded from $GATEWAY6" grep -q "From $GATEWAY6.*Time exceeded" <<<"$out"
out=$(ip netns exec "$B" ping -6 -c 2 -i 0.3 -W 2 -M do -s 1420 "$GATEWAY6" 2>&1)
row "dual-stack: packet too big" "1468-byte IPv6 to the node (uplink MTU $UPLINK_MTU) gets packet too big, mtu=$UPLINK_MTU" \
  grep -qE "mtu[=: ]+$UPLINK_MTU" <<<"$out"
out=$(ip netns exec "$B" ping -c 2 -i 0.3 -W 2 -M do -s 1420 "$GATEWAY" 2>&1)
row "IPv4 frag needed" "1448-byte DF IPv4 to the node gets fragmentation needed, mtu = $UPLINK_MTU" \
  grep -qE "mtu[=: ]+$UPLINK_MTU" <<<"$out"
SPOOF6=${POD_CIDR6%::/64}::bad
ip -n "$A" addr add "$SPOOF6/128" dev eth0 nodad
sp0=$(nctl stats | jq --arg id "$A" '.pods[] | select(.container_id == $id) | .counters.drops.spoofed')
row "dual-stack: anti-spoofing" "IPv6 from an address that is not the pod's is dropped" \
  eval '! ip netns exec $A ping -6 -c 2 -i 0.2 -W 1 -I $SPOOF6 $IP6_B'
row "dual-stack: anti-spoofing" "... and counted spoofed" \
  test "$(nctl stats | jq --arg id "$A" '.pods[] | select(.container_id == $id) | .counters.drops.spoofed')" -gt "$sp0"
ip -n "$A" addr del "$SPOOF6/128" dev eth0

# ---------------------------------------------------------------------------------------
log "DEL"
row "SPEC §2 DEL" "DEL of pod C (1.1.0) removes its TAP, attachment and IPv4+IPv6 reservations" \
  eval 'plugin DEL $CONF110 $C /run/netns/$C && ! ip -n $C link show eth0 && [ $(attached $C) = 0 ] && ! reserved $C'
row "SPEC §2 DEL: idempotent" "a second DEL succeeds" plugin DEL "$CONF110" "$C" "/run/netns/$C"
ip netns del "$C"
row "SPEC §2 DEL: netns gone" "DEL with an empty CNI_NETNS succeeds" plugin DEL "$CONF110" "$C" ""

# ---------------------------------------------------------------------------------------
log "STATUS"
row "SPEC §2 STATUS" "STATUS succeeds while netstackd and IPAM answer" plugin STATUS "$CONF110" "" ""
out=$(plugin STATUS "$CONF110" "" "" eth0 "" '.ipam.type = "no-such-ipam"')
row "SPEC §2 STATUS (50)" "IPAM plugin unavailable: code 50 (pods keep working)" is_error 50 "$out"
stop_node_netstackd
start_node_netstackd 1
t0=$(date +%s%N)
plugin STATUS "$CONF110" "" "" >"$WORK/status.out"
status_rc=$?
row "SPEC §2 STATUS: no flap" "STATUS during a netstackd restart waits it out and succeeds ($(( ($(date +%s%N) - t0) / 1000000 )) ms)" \
  test "$status_rc" = 0
row "netstackd restart" "pods keep IPv4 and IPv6 connectivity after the restart" \
  eval 'ip netns exec $A ping -c 1 -W 2 $IP_B && ip netns exec $A ping -6 -c 1 -W 2 $IP6_B'
stop_node_netstackd
out=$(plugin STATUS "$CONF110" "" "" eth0 "" '.statusWaitMs = 300')
row "SPEC §2 STATUS (51)" "netstackd down past statusWaitMs: code 51 (pods may lack connectivity)" is_error 51 "$out"
out=$(plugin ADD "$CONF" "cc-x-$RUN_ID" "/run/netns/$A" eth1)
row "SPEC §5 error code 11" "ADD with netstackd down: try again later" is_error 11 "$out"
out=$(plugin DEL "$CONF" "cc-x-$RUN_ID" "")
row "SPEC §5 error code 11" "DEL with netstackd down asks to retry (the attachment is not forgotten)" is_error 11 "$out"
start_node_netstackd || exit 1

# ---------------------------------------------------------------------------------------
log "GC"
G1=cc-g1-$RUN_ID
G2=cc-g2-$RUN_ID
new_pod "$G1"
new_pod "$G2"
plugin ADD "$CONF110" "$G1" "/run/netns/$G1" >/dev/null
plugin ADD "$CONF110" "$G2" "/run/netns/$G2" >/dev/null
# An allocation whose ADD died before it reached netstackd: only host-local knows it.
jq -c '.plugins[0] + {cniVersion: "1.0.0", name}' "$CONF110" | node env CNI_COMMAND=ADD CNI_CONTAINERID=orphan-$RUN_ID \
  CNI_NETNS=/run/netns/$G1 CNI_IFNAME=eth0 CNI_PATH="$CHAIN_BIN" "$CHAIN_BIN/host-local" >/dev/null
out=$(plugin GC "$CONF110" "" "")
row "SPEC §2 GC (7)" "GC without cni.dev/valid-attachments" is_error 7 "$out"
VALID=$(jq -nc --arg a "$A" --arg b "$B" --arg g "$G1" '[{containerID:$a,ifname:"eth0"},{containerID:$b,ifname:"eth0"},{containerID:$g,ifname:"eth0"}]')
row "SPEC §2 GC" "GC (cni.dev/valid-attachments) succeeds" plugin GC "$CONF110" "" "" eth0 "" ". + {\"cni.dev/valid-attachments\": $VALID}"
row "SPEC §2 GC" "the stale attachment's TAP, netstackd attachment and reservations are gone" \
  eval '! ip -n $G2 link show eth0 && [ $(attached $G2) = 0 ] && ! reserved $G2'
row "SPEC §2 GC (host-local has none)" "the orphaned host-local reservation is released by DEL" \
  eval '! reserved orphan-$RUN_ID'
row "SPEC §2 GC" "valid attachments are untouched" \
  eval 'ip -n $G1 link show eth0 && [ $(attached $G1) = 1 ] && [ $(attached $A) = 1 ] && reserved $G1 && ip netns exec $A ping -c 1 -W 2 $IP_B'
VALID=$(jq -nc --arg a "$A" --arg b "$B" '[{containerID:$a,ifname:"eth0"},{containerID:$b,ifname:"eth0"}]')
row "SPEC §2 GC (#1101)" "the older key cni.dev/attachments is honoured too" \
  eval 'plugin GC $CONF110 "" "" eth0 "" ". + {\"cni.dev/attachments\": $VALID}" && [ $(attached $G1) = 0 ] && ! reserved $G1'

row "SPEC §2 GC: delegated" "GC is passed on to an IPAM plugin that speaks 1.1.0, valid attachments included" \
  eval 'plugin GC "$CONFREC" "" "" eth0 "" ". + {\"cni.dev/valid-attachments\": $VALID}" &&
    jq -se "length == 1 and (.[0][\"cni.dev/valid-attachments\"] | length) == 2" "$WORK/ipam-log/GC"'

# ---------------------------------------------------------------------------------------
log "chaining: netstack -> portmap -> tuning (reference plugins, CNI 1.0.0)"
for p in "$A" "$B" "$G1" "$G2"; do plugin DEL "$CONF" "$p" "/run/netns/$p" >/dev/null; ip netns del "$p"; done
row "SPEC §2 DEL" "after every DEL and GC: no attachment and no reservation left" \
  eval '[ $(nctl list | jq length) = 0 ] && [ $(reservations) = 0 ]'
W=cc-w-$RUN_ID
new_pod "$W"
PM=$(jq -nc --arg ip2 "$NODE_IP2" '{portMappings: [
  {hostPort: 8080, containerPort: 80, protocol: "tcp"},
  {hostPort: 8081, containerPort: 81, protocol: "tcp", hostIP: $ip2}]}')
RW=$(chain ADD "$CONFLIST_CHAIN" "$W" "/run/netns/$W" "$PM")
row "SPEC §3 chain ADD" "netstack -> portmap -> tuning ADD succeeds; the final result keeps our interface" \
  jq -e '.cniVersion == "1.0.0" and .interfaces[0].name == "eth0" and (.ips | length) == 2' <<<"$RW"
IP_W=$(jq -r '.ips[] | select(.address | contains(".")) | .address' <<<"$RW" | cut -d/ -f1)
for port in 80 81; do
  ip netns exec "$W" socat TCP-LISTEN:$port,reuseaddr,fork SYSTEM:"echo pod-$port" >/dev/null 2>&1 &
  SERVER_PIDS="${SERVER_PIDS:-} $!"
done
sleep 0.3
fetch() { ip netns exec "$1" socat -T 2 - "TCP:$2:$3,connect-timeout=2" </dev/null 2>/dev/null; }
row "chaining: portmap" "hostPort 8080 (no hostIP) reaches the pod from another host via the node's address" \
  test "$(fetch "$CLIENT" "$NODE_IP" 8080)" = pod-80
row "chaining: portmap" "hostPort 8080 reaches the pod from the node itself (its own address)" \
  test "$(fetch "$NODE" "$NODE_IP" 8080)" = pod-80
row "chaining: portmap hostIP" "hostPort 8081 with hostIP $NODE_IP2 reaches the pod there" \
  test "$(fetch "$CLIENT" "$NODE_IP2" 8081)" = pod-81
row "chaining: portmap hostIP" "... and not via the node's other address $NODE_IP" \
  test -z "$(fetch "$CLIENT" "$NODE_IP" 8081)"
row "chaining: tuning" "tuning's sysctls are set in the pod after netstack" \
  eval '[ $(ip netns exec $W sysctl -n net.ipv4.conf.eth0.arp_ignore) = 1 ] && [ $(ip netns exec $W sysctl -n net.ipv6.conf.eth0.hop_limit) = 33 ]'
row "SPEC §3 chain CHECK" "CHECK in chain order with the cached final result: netstack, tuning (not portmap 1.1.1)" \
  chain CHECK "$CONFLIST_NOPM" "$W" "/run/netns/$W" "$PM"
row "chaining: portmap" "while the pod exists, DNAT rules for it are in the node's nat table" \
  eval 'node iptables -t nat -S | grep -q CNI-DN-'
row "SPEC §3 chain DEL" "DEL of the chain (reverse order, cached result) succeeds" \
  chain DEL "$CONFLIST_CHAIN" "$W" "/run/netns/$W" "$PM"
row "chaining: portmap" "DEL removed the DNAT rules" eval '! node iptables -t nat -S | grep -q CNI-DN-'
row "chaining: portmap" "hostPort 8080 no longer answers" test -z "$(fetch "$CLIENT" "$NODE_IP" 8080)"
kill $SERVER_PIDS 2>/dev/null
SERVER_PIDS=
ip netns del "$W"

echo
echo "test_cni_conformance: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
