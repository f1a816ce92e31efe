#!/usr/bin/env bash
# e2e: netstack as a netavark plugin (podman 5), driven by the real netavark (built once per
# machine by scripts/netavark.sh) as podman 5 drives it: `netavark --config DIR
# --plugin-directory DIR setup|teardown NETNS` with the options JSON on stdin. In TAP and veth
# mode: two containers of one network ping each other and the node, a 64 MiB transfer
# arrives intact, the static MAC and IPs are what was asked, a port mapping is reachable from
# the node, teardown leaves no link, attachment, rule or state; `create` fills in and
# validates a network, `info` reports API 1.0.0, and bad input is a clear error that leaves
# nothing behind. Needs root; run by scripts/test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

PLUGIN=$BIN/netstack-netavark
PLUGDIR=$WORK/netavark-plugins
NVCONF=$WORK/netavark-config
LISTENERS=()
nv_cleanup() {
  local p
  for p in "${LISTENERS[@]}"; do kill "$p" 2>/dev/null; done
  nft delete table inet netstack_netavark 2>/dev/null
  e2e_cleanup
}
trap nv_cleanup EXIT
trap 'exit 143' TERM INT

log "netavark"
NETAVARK=$("$ROOT/scripts/netavark.sh") || { fail "building netavark (scripts/netavark.sh)"; exit 1; }
ok "netavark: $("$NETAVARK" --version 2>&1 | head -1)"
mkdir -p "$PLUGDIR" "$NVCONF"
# netavark runs a plugin by the network's driver name.
ln -sf "$PLUGIN" "$PLUGDIR/netstack"
nv() { "$NETAVARK" --config "$NVCONF" --plugin-directory "$PLUGDIR" "$@"; }
attachments() { ctl status | jq .attachments; }
state_files() { find "$STATE" -name '*.json' | wc -l; }
no_nft_table() { ! nft list table inet netstack_netavark >/dev/null 2>&1; }
PREFIX=${POD_CIDR%.0/24}

write_conflist
start_netstackd || exit 1

log "info and create"
check "info: API 1.0.0 and a version" sh -c "$PLUGIN info | jq -e '.api_version == \"1.0.0\" and (.version | length > 0)'"
net_in() { jq -n --arg mode "$1" --arg sock "$SOCK" '{name: "nsnet", id: "0123456789abcdef", driver: "netstack", ipv6_enabled: false, internal: false, dns_enabled: true, options: {mode: $mode, socket: $sock}}'; }
if NET=$(net_in tap | "$PLUGIN" create); then ok "create a network with only options"; else fail "create: $NET"; fi
check "create: the subnet is netstackd's pod CIDR" test "$(jq -r '.subnets[0].subnet' <<<"$NET")" = "$POD_CIDR"
check "create: the gateway is netstackd's" test "$(jq -r '.subnets[0].gateway' <<<"$NET")" = "$GATEWAY"
check "create: podman does the IPAM (host-local) and no DNS" test "$(jq -r '.ipam_options.driver + " " + (.dns_enabled|tostring)' <<<"$NET")" = "host-local false"
check "create: name, id and driver unchanged" test "$(jq -r '.name + .id + .driver' <<<"$NET")" = "nsnet0123456789abcdefnetstack"
# bad_create WHAT FILTER PATTERN: create with the network edited by FILTER fails with an error
# object whose message matches PATTERN, and a non-zero exit.
bad_create() {
  local out rc
  out=$(net_in tap | jq "$2" | "$PLUGIN" create)
  rc=$?
  if [ "$rc" != 0 ] && jq -e --arg p "$3" '.error | test($p)' <<<"$out" >/dev/null 2>&1; then ok "create refuses $1"; else fail "create $1: rc $rc, $out"; fi
}
bad_create "a subnet outside netstackd's pod CIDR" '.subnets = [{subnet: "10.99.0.0/24"}]' "not inside netstackd's pod CIDR"
bad_create "a foreign gateway" ".subnets = [{subnet: \"$POD_CIDR\", gateway: \"$PREFIX.9\"}]" "not netstackd's gateway"
bad_create "an unknown option" '.options.vlan = "5"' "unknown option"
bad_create "an unknown mode" '.options.mode = "macvlan"' "mode"
bad_create "an internal network" '.internal = true' "internal"
bad_create "a config that is not JSON" 'tostring + "}"' "network config"

# exec_in NAME IP MAC NETWORK [MAPPINGS]: netavark's setup/teardown input for one container.
exec_in() {
  jq -n --arg id "$1-$RUN_ID" --arg name "$1" --arg ip "$2" --arg mac "$3" --argjson net "$4" \
    --argjson pm "${5:-[]}" \
    '{container_id: $id, container_name: $name, port_mappings: $pm,
      networks: {nsnet: {interface_name: "eth0", static_ips: [$ip], static_mac: $mac, aliases: [$name]}},
      network_info: {nsnet: $net}}'
}

port=18080
for MODE in tap veth; do
  log "$MODE mode: two containers through netavark"
  NET=$(net_in "$MODE" | "$PLUGIN" create) || fail "$MODE: create"
  A=nva-$MODE-$RUN_ID B=nvb-$MODE-$RUN_ID
  ip netns add "$A" && ip netns add "$B" && ip -n "$A" link set lo up && ip -n "$B" link set lo up
  # Recorded for e2e_cleanup, so that a run that stops half-way leaves no namespace behind.
  printf '%s\n' "$A" "$B" >>"$WORK/pods"
  IPA=$PREFIX.$((50 + ${#MODE})) IPB=$PREFIX.$((60 + ${#MODE}))
  MACA=0a:58:00:aa:00:0${#MODE} MACB=0a:58:00:bb:00:0${#MODE}
  port=$((port + 1))
  PM=$(jq -nc --argjson p "$port" '[{container_port: 8080, host_ip: "", host_port: $p, protocol: "tcp", range: 1}]')
  exec_in nva "$IPA" "$MACA" "$NET" "$PM" >"$WORK/a.json"
  # B asks for its own egress rate (`podman run --network nsnet:egressRate=…`).
  exec_in nvb "$IPB" "$MACB" "$NET" | jq '.networks.nsnet.options = {egressRate: "50000000", egressBurst: "4000000"}' >"$WORK/b.json"
  if out=$(nv setup "/run/netns/$A" <"$WORK/a.json"); then ok "$MODE: netavark setup A"; else fail "$MODE: setup A: $out"; fi
  check "$MODE: setup's status block names eth0 with the MAC and address" test "$(jq -r '.nsnet.interfaces.eth0 | .mac_address + " " + .subnets[0].ipnet' <<<"$out")" = "$MACA $IPA/24"
  if out=$(nv setup "/run/netns/$B" <"$WORK/b.json"); then ok "$MODE: netavark setup B"; else fail "$MODE: setup B: $out"; fi
  check "$MODE: A's eth0 has the static MAC" test "$(ip netns exec "$A" cat /sys/class/net/eth0/address)" = "$MACA"
  check "$MODE: A's eth0 has the static address" sh -c "ip -n $A -4 -o addr show dev eth0 | grep -q 'inet $IPA/24'"
  check "$MODE: netstackd attached A in $MODE mode" test "$(ctl list | jq -r --arg ip "$IPA/24" '.. | objects | select(.ips? and (.ips | index($ip))) | .mode')" = "$MODE"
  check "$MODE: B's egress rate option reached netstackd" test "$(cat "$STATE"/*.json | jq -r --arg id "nvb-$RUN_ID" 'select(.container_id == $id) | .bandwidth.egressRate')" = 50000000
  check "$MODE: A pings B" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$IPB"
  check "$MODE: B pings A" in_pod "$B" ping -c 2 -i 0.2 -W 2 "$IPA"
  check "$MODE: A pings the node" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$GATEWAY"
  head -c 64M /dev/urandom >"$WORK/blob"
  in_pod "$B" timeout 60 socat -u TCP-LISTEN:5001,reuseaddr OPEN:"$WORK/blob.got",creat,trunc &
  receiver=$!
  sleep 0.5
  in_pod "$A" timeout 60 socat -u OPEN:"$WORK/blob" TCP:"$IPB":5001,retry=20,interval=0.2
  wait "$receiver"
  check "$MODE: 64 MiB A -> B arrive intact" test "$(sha256sum <"$WORK/blob")" = "$(sha256sum <"$WORK/blob.got")"
  rm -f "$WORK/blob" "$WORK/blob.got"
  in_pod "$A" timeout 30 socat TCP-LISTEN:8080,reuseaddr,fork SYSTEM:'echo mapped' &
  LISTENERS+=($!)
  sleep 0.5
  got=$(timeout 10 socat -T 5 - TCP:"$GATEWAY":"$port" </dev/null 2>/dev/null)
  check "$MODE: port mapping: the node reaches A's 8080 at $GATEWAY:$port" test "$got" = mapped
  kill "${LISTENERS[@]}" 2>/dev/null
  LISTENERS=()

  log "$MODE mode: bad input, then teardown"
  exec_in nvc "10.99.0.9" "0a:58:00:cc:00:01" "$NET" >"$WORK/c.json"
  C=nvc-$MODE-$RUN_ID
  ip netns add "$C"
  echo "$C" >>"$WORK/pods"
  before=$(attachments)
  out=$(nv setup "/run/netns/$C" <"$WORK/c.json")
  rc=$?
  if [ "$rc" != 0 ] && jq -e '.error | test("in none of the network.s subnets")' <<<"$out" >/dev/null 2>&1; then ok "$MODE: an address outside the network is a clear error"; else fail "$MODE: bad address: rc $rc, $out"; fi
  check "$MODE: ... and leaves nothing (no eth0, no attachment)" sh -c "! ip -n $C link show eth0 2>/dev/null && test \"\$($BIN/netstackd ctl --socket $SOCK --json status | jq .attachments)\" = $before"
  jq '.networks.nsnet.static_mac = "01:00:5e:00:00:01"' "$WORK/c.json" | jq --arg ip "$PREFIX.70" '.networks.nsnet.static_ips = [$ip]' >"$WORK/c2.json"
  out=$(nv setup "/run/netns/$C" <"$WORK/c2.json")
  rc=$?
  if [ "$rc" != 0 ] && jq -e '.error | test("not unicast")' <<<"$out" >/dev/null 2>&1; then ok "$MODE: a multicast static MAC is a clear error"; else fail "$MODE: bad MAC: rc $rc, $out"; fi
  check "$MODE: ... and leaves nothing" sh -c "! ip -n $C link show eth0 2>/dev/null && test \"\$($BIN/netstackd ctl --socket $SOCK --json status | jq .attachments)\" = $before"
  # Failures after the link exists must roll it back: an address netstackd already has (A's),
  # and port rules that cannot be written (no nft on PATH).
  jq --arg ip "$IPA" '.networks.nsnet.static_ips = [$ip]' "$WORK/c.json" >"$WORK/c3.json"
  out=$(nv setup "/run/netns/$C" <"$WORK/c3.json")
  rc=$?
  if [ "$rc" != 0 ] && jq -e '.error | length > 0' <<<"$out" >/dev/null 2>&1; then ok "$MODE: A's address again is refused ($(jq -r .error <<<"$out" | cut -c1-80))"; else fail "$MODE: duplicate address: rc $rc, $out"; fi
  check "$MODE: ... the link it made is gone and nothing is attached" sh -c "! ip -n $C link show eth0 2>/dev/null && test \"\$($BIN/netstackd ctl --socket $SOCK --json status | jq .attachments)\" = $before"
  jq --arg ip "$PREFIX.71" --argjson pm "$PM" '.networks.nsnet.static_ips = [$ip] | .port_mappings = $pm' "$WORK/c.json" >"$WORK/c4.json"
  mkdir -p "$WORK/empty-path"
  out=$(env PATH="$WORK/empty-path" "$NETAVARK" --config "$NVCONF" --plugin-directory "$PLUGDIR" setup "/run/netns/$C" <"$WORK/c4.json")
  rc=$?
  if [ "$rc" != 0 ] && jq -e '.error | test("port mappings")' <<<"$out" >/dev/null 2>&1; then ok "$MODE: port rules that cannot be written fail the setup"; else fail "$MODE: no nft: rc $rc, $out"; fi
  check "$MODE: ... and the link and attachment are rolled back" sh -c "! ip -n $C link show eth0 2>/dev/null && test \"\$($BIN/netstackd ctl --socket $SOCK --json status | jq .attachments)\" = $before"
  ip netns del "$C"
  check "$MODE: netavark teardown A" nv teardown "/run/netns/$A" <"$WORK/a.json"
  check "$MODE: netavark teardown B" nv teardown "/run/netns/$B" <"$WORK/b.json"
  check "$MODE: teardown again is no error" nv teardown "/run/netns/$A" <"$WORK/a.json"
  check "$MODE: no eth0 left in A or B" sh -c "! ip -n $A link show eth0 2>/dev/null && ! ip -n $B link show eth0 2>/dev/null"
  check "$MODE: no attachment and no state file left" test "$(attachments)/$(state_files)" = "0/0"
  check "$MODE: no port-mapping rules left" no_nft_table
  [ "$MODE" = veth ] && check "veth: no peer left in netstackd's namespace" sh -c "[ -z \"\$(nsenter --net=$DP_NETNS ip -o link show | grep -v ' lo:')\" ]"
  ip netns del "$A"
  ip netns del "$B"
done

echo "netavark: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
