#!/usr/bin/env bash
# e2e: VM pods (issue 19), the attachment without a VM. A real netstackd, host-local IPAM and
# the plugin as a runtime runs it: ADD in mode vhost-user prints a 1.1.0 result with the
# interface's socketPath (none for a 1.0.0 conf); the socket is a root-owned unix socket of
# mode 0600 (0660 and the group with vhostSocketMode/vhostSocketGroup); the pod netns holds a
# placeholder dummy (an ifb where the kernel has no dummy) with the pod's MAC, address and default route; `ctl list` shows the mode
# and the path; a client speaking vhost-user (GET_FEATURES) gets VIRTIO_F_VERSION_1; CHECK
# passes, and fails once the socket is removed by hand; a netstackd killed and started again
# binds the socket again and answers again, and cleans up a VM pod whose netns went meanwhile; the pod's mode can be picked per pod (CNI_ARGS
# NETSTACK_MODE); Kata's /tmp/vhostuser_<IP>/vhu.sock link comes and goes with kataVhostUser;
# GC and DEL remove socket, dummy, state file and IPAM reservation, and `netstackd cleanup`
# what a stopped netstackd left. Needs root; run by
# scripts/test.sh. About 3 s (plus the build every script starts with).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

MODE=vhost-user
VHOST_DIR=$WORK/vhost
KATA_DIRS=()
vhost_cleanup() {
  local d
  for d in "${KATA_DIRS[@]}"; do rm -rf "$d"; done
  e2e_cleanup
}
trap vhost_cleanup EXIT

# conf_with JQ_FILTER: the conflist, changed by JQ_FILTER (e.g. '.cniVersion = "1.1.0"').
conf_with() {
  local f
  f=$(jq "$1" "$CONFLIST") && printf '%s\n' "$f" >"$CONFLIST"
}
# get_features SOCKET: connects to SOCKET, sends VHOST_USER_GET_FEATURES (request 1, flags
# 0x1 = version 1, no payload) and prints the features of the reply in hex; fails when the
# reply is not a GET_FEATURES reply of 8 bytes.
get_features() {
  python3 - "$1" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(struct.pack("<III", 1, 0x1, 0))
buf = b""
while len(buf) < 20:
    chunk = s.recv(20 - len(buf))
    if not chunk:
        sys.exit("connection closed after %d bytes" % len(buf))
    buf += chunk
request, flags, size = struct.unpack("<III", buf[:12])
if request != 1 or not flags & 0x4 or size != 8:
    sys.exit("not a GET_FEATURES reply: request %d flags %#x size %d" % (request, flags, size))
print(hex(struct.unpack("<Q", buf[12:20])[0]))
PY
}
# has_version_1 SOCKET: the features offered include VIRTIO_F_VERSION_1 (bit 32).
has_version_1() {
  local f
  f=$(get_features "$1") || return 1
  (((f >> 32) & 1))
}
# cni_check POD [CNI_ARGS]: CNI CHECK with the pod's ADD result as prevResult.
cni_check() {
  jq -c --slurpfile r "$WORK/$1.result.json" '.plugins[0] + {cniVersion: .cniVersion,
      name: .name, prevResult: $r[0]}' "$CONFLIST" |
    env CNI_COMMAND=CHECK CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" CNI_IFNAME=eth0 \
      CNI_PATH="$BIN:$REF_CNI" CNI_ARGS="${2:-IgnoreUnknown=1}" "$BIN/netstack"
}
gc() {
  jq -c --argjson valid "$1" '.plugins[0] + {cniVersion: "1.1.0", name: .name,
      "cni.dev/valid-attachments": $valid}' "$CONFLIST" |
    env CNI_COMMAND=GC CNI_PATH="$BIN:$REF_CNI" "$BIN/netstack"
}
fails() { ! "$@" >/dev/null 2>&1; }
# json_ok JSON FILTER: FILTER is true of JSON.
json_ok() { jq -e "$2" <<<"$1" >/dev/null; }
reserved() { grep -rlE "^$1"$'\r'"?\$" "$IPAM_DIR/$NETWORK" >/dev/null 2>&1; }
result() { cat "$WORK/$1.result.json"; }
sock_of() { result "$1" | jq -r '.interfaces[0].socketPath'; }
listed() { ctl list | jq -r --arg id "$1" '.[] | select(.container_id == $id) | "\(.mode) \(.socket_path)"'; }

build_release || exit 1
write_conflist
conf_with '.cniVersion = "1.1.0"'
start_netstackd --vhost-dir "$VHOST_DIR" || exit 1

log "ADD in mode vhost-user: a 1.1.0 result with the socket's path"
IP_A=$(add_pod vm-a) || exit 1
SOCK_A=$(sock_of vm-a)
MAC_A=$(result vm-a | jq -r '.interfaces[0].mac')
check "the result is 1.1.0" test "$(result vm-a | jq -r .cniVersion)" = 1.1.0
check "socketPath is <vhost dir>/vu<16 hex digits>.sock ($SOCK_A)" \
  grep -qxE "$VHOST_DIR/vu[0-9a-f]{16}\.sock" <<<"$SOCK_A"
check "the interface is eth0 in the pod's netns with a local unicast MAC ($MAC_A)" \
  test "$(result vm-a | jq -r '.interfaces[0] | "\(.name) \(.sandbox)"')" = "eth0 /run/netns/vm-a"
check "the MAC is locally administered and unicast" grep -qiE '^[0-9a-f][26ae]:' <<<"$MAC_A"
check "ips and the default route reference it" \
  test "$(result vm-a | jq -r '"\(.ips[0].interface) \(.ips[0].gateway) \(.routes | map(.dst) | join(","))"')" \
  = "0 $GATEWAY 0.0.0.0/0"
check "the socket is a root-owned unix socket of mode 600" \
  test "$(stat -c '%F %U %a' "$SOCK_A")" = "socket root 600"

log "the placeholder: a dummy with the pod's MAC, address and route"
LINK=$(ip -n vm-a -d -j link show eth0)
# A dummy; an ifb on a kernel without the dummy driver (this CI's has none).
KIND=$(jq -r '.[0].linkinfo.info_kind' <<<"$LINK")
check "eth0 is a placeholder ($KIND), up, with alias netstack" \
  test "$(jq -r '.[0] | "\(.ifalias) \(.flags | index("UP") != null)"' <<<"$LINK") $KIND" \
  = "netstack true $( [ "$KIND" = ifb ] && echo ifb || echo dummy)"
check "eth0 has the pod's MAC" test "$(jq -r '.[0].address' <<<"$LINK")" = "$MAC_A"
check "eth0 has the pod's address" grep -q "inet $IP_A/24" <<<"$(ip -n vm-a -4 addr show eth0)"
check "the default route goes via the gateway on eth0" \
  grep -q "via $GATEWAY dev eth0" <<<"$(ip -n vm-a route show default)"
check "no TAP in the pod netns" fails grep -q tun <<<"$(ip -n vm-a -d link show)"

log "ctl list and vhost-user on the socket"
check "ctl list --json shows vhost-user and the path" test "$(listed vm-a)" = "vhost-user $SOCK_A"
check "ctl list shows the mode and the socket" \
  grep -q "vm-a/eth0 vhost-user: socket $SOCK_A" <<<"$(ctlh list)"
check "ctl status shows the vhost-user dir" \
  test "$(ctl status | jq -r .vhost_dir)" = "$VHOST_DIR"
check "GET_FEATURES is answered with VIRTIO_F_VERSION_1" has_version_1 "$SOCK_A"
check "a second client is answered too (the first one left)" has_version_1 "$SOCK_A"
check "the state file records the mode" \
  test "$(jq -r .mode "$STATE/vm-a:eth0.json")" = vhost-user

log "CHECK"
check "CHECK passes" cni_check vm-a
rm -f "$SOCK_A"
out=$(cni_check vm-a)
check "CHECK fails once the socket is removed by hand, naming it" \
  json_ok "$out" ".code == 101 and ((.msg + \" \" + (.details // \"\")) | contains(\"$SOCK_A\"))"

log "a netstackd restart binds the socket again, and cleans up a VM pod whose netns went"
add_pod vm-g >/dev/null || exit 1
SOCK_G=$(sock_of vm-g)
kill -9 "$NETSTACKD_PID"
wait "$NETSTACKD_PID" 2>/dev/null
NETSTACKD_PID=
ip netns del vm-g
start_netstackd --vhost-dir "$VHOST_DIR" || exit 1
check "the pod whose netns is gone: its stale socket is removed" test ! -e "$SOCK_G"
check "  ... and its state file" test ! -e "$STATE/vm-g:eth0.json"
check "  ... and it is not listed" test -z "$(listed vm-g)"
check "the socket is back, mode 600" test "$(stat -c '%F %U %a' "$SOCK_A")" = "socket root 600"
check "GET_FEATURES is answered again" has_version_1 "$SOCK_A"
check "CHECK passes again" cni_check vm-a
check "ctl list still shows it" test "$(listed vm-a)" = "vhost-user $SOCK_A"

log "socket mode and group from the conflist"
conf_with '.plugins[0].vhostSocketMode = "0660" | .plugins[0].vhostSocketGroup = 4321'
add_pod vm-b >/dev/null || exit 1
SOCK_B=$(sock_of vm-b)
check "the socket is mode 660, owner root, group 4321" \
  test "$(stat -c '%F %U %a %g' "$SOCK_B")" = "socket root 660 4321"
check "GET_FEATURES on it" has_version_1 "$SOCK_B"
check "CHECK passes with the mode and group" cni_check vm-b
conf_with '.plugins[0].vhostSocketMode = "0600"'
check "CHECK fails when the config asks another mode" fails cni_check vm-b
conf_with 'del(.plugins[0].vhostSocketMode, .plugins[0].vhostSocketGroup)'

log "Kata's socket link"
conf_with '.plugins[0].kataVhostUser = true'
IP_C=$(add_pod vm-c) || exit 1
KATA_C=/tmp/vhostuser_$IP_C/vhu.sock
KATA_DIRS+=("/tmp/vhostuser_$IP_C")
check "$KATA_C links to the socket" test "$(readlink "$KATA_C")" = "$(sock_of vm-c)"
check "its directory is mode 700" test "$(stat -c '%a' "/tmp/vhostuser_$IP_C")" = 700
check "GET_FEATURES through the link" has_version_1 "$KATA_C"
cni DEL vm-c /run/netns/vm-c >/dev/null
check "DEL removes the link and its directory" test ! -e "/tmp/vhostuser_$IP_C"
check "DEL removes the socket" test ! -e "$(sock_of vm-c)"
# A failed ADD leaves nothing: the directory of Kata's link for the next addresses host-local
# hands out is another user's (anyone can make one in /tmp), so the link is refused after
# netstackd bound the socket; the plugin takes the attachment back.
last=$(cat "$IPAM_DIR/$NETWORK/last_reserved_ip.0")
for n in 1 2; do
  d=/tmp/vhostuser_$(python3 -c "import ipaddress,sys; print(ipaddress.ip_address(sys.argv[1]) + $n)" "$last")
  KATA_DIRS+=("$d")
  mkdir -m 700 "$d" && chown nobody "$d"
done
socks_before=$(find "$VHOST_DIR" -name '*.sock' | sort)
ip netns add vm-k
echo vm-k >>"$WORK/pods"
out=$(cni ADD vm-k /run/netns/vm-k)
check "ADD fails when Kata's directory is another user's, naming it" \
  json_ok "$out" '.code == 100 and (.msg | contains("not a directory of this user"))'
check "  ... and netstackd holds no attachment for it" test -z "$(listed vm-k)"
check "  ... and no socket of it is left" test "$(find "$VHOST_DIR" -name '*.sock' | sort)" = "$socks_before"
check "  ... and no placeholder" fails ip -n vm-k link show eth0
check "  ... and no address reserved" fails reserved vm-k
check "  ... and the other user's directory is left alone" \
  test "$(stat -c %U "${KATA_DIRS[-2]}")" = nobody
conf_with 'del(.plugins[0].kataVhostUser)'

log "a 1.0.0 conf, and the mode picked per pod"
conf_with '.cniVersion = "1.0.0"'
add_pod vm-d >/dev/null || exit 1
check "a 1.0.0 result has no socketPath" \
  test "$(result vm-d | jq -r '.cniVersion + " " + (.interfaces[0] | has("socketPath") | tostring)')" = "1.0.0 false"
SOCK_D=$(ctl list | jq -r '.[] | select(.container_id == "vm-d") | .socket_path')
check "but the pod is served on its socket" has_version_1 "$SOCK_D"
conf_with '.cniVersion = "1.1.0" | .plugins[0].mode = "tap"'
ip netns add vm-e
echo vm-e >>"$WORK/pods"
out=$(cni ADD vm-e /run/netns/vm-e eth0 "IgnoreUnknown=1;NETSTACK_MODE=vhost-user")
printf '%s' "$out" >"$WORK/vm-e.result.json"
check "CNI_ARGS NETSTACK_MODE=vhost-user makes a VM pod of a TAP network" \
  test "$(listed vm-e)" = "vhost-user $(sock_of vm-e)"
check "its CHECK passes with the same CNI_ARGS" \
  cni_check vm-e "IgnoreUnknown=1;NETSTACK_MODE=vhost-user"
out=$(cni ADD vm-f /run/netns/vm-e net1 "IgnoreUnknown=1;NETSTACK_MODE=hovercraft")
check "a bad NETSTACK_MODE is refused (code 2)" \
  json_ok "$out" '.code == 2 and ((.msg + " " + (.details // "")) | contains("NETSTACK_MODE"))'
cni DEL vm-e /run/netns/vm-e eth0 "IgnoreUnknown=1;NETSTACK_MODE=vhost-user" >/dev/null
check "DEL with the same CNI_ARGS removes its socket" test ! -e "$(sock_of vm-e)"
check "and its dummy" fails ip -n vm-e link show eth0
conf_with '.plugins[0].mode = "vhost-user"'

log "GC and DEL"
ID_B=$(ctl list | jq -r '.[] | select(.container_id == "vm-b") | .container_id')
gc '[{"containerID":"vm-a","ifname":"eth0"},{"containerID":"vm-d","ifname":"eth0"}]' >/dev/null
check "GC detaches the pod it was not told of ($ID_B): its socket goes" test ! -e "$SOCK_B"
check "and its dummy" fails ip -n vm-b link show eth0
check "GC leaves the valid ones" test -S "$SOCK_A"
cni DEL vm-a /run/netns/vm-a >/dev/null
check "DEL removes the socket" test ! -e "$SOCK_A"
check "DEL removes the dummy" fails ip -n vm-a link show eth0
check "DEL removes the state file" test ! -e "$STATE/vm-a:eth0.json"
check "DEL releases the IPAM reservation" fails reserved vm-a
check "ctl list no longer has it" test -z "$(listed vm-a)"
check "DEL again succeeds" cni DEL vm-a /run/netns/vm-a
ip netns del vm-a
check "DEL of a pod whose netns is gone succeeds" cni DEL vm-a /run/netns/vm-a

log "netstackd cleanup (uninstall) removes what is left of a VM pod"
stop_netstackd
check "a VM pod's socket outlives a stopped netstackd (for the next start)" test -S "$SOCK_D"
"$BIN/netstackd" cleanup --socket "$SOCK" --state-dir "$STATE" --uplink "$UPLINK" \
  --dp-netns "$DP_NETNS" --vhost-dir "$VHOST_DIR" >"$WORK/cleanup.out" 2>&1
check "cleanup removes the socket" test ! -e "$SOCK_D"
check "  ... and the vhost dir, empty now" test ! -e "$VHOST_DIR"
check "  ... and the placeholder" fails ip -n vm-d link show eth0

echo "test_vhost_attach: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
