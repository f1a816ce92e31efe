#!/usr/bin/env bash
# e2e: veth mode ("mode": "veth"). First the TAP-mode e2e scripts (test_slice, test_supervisor,
# test_hostile, test_qdisc, test_gso, test_observe) run again with MODE=veth; then what only veth mode has: the peer in
# netstackd's own netns with nothing the kernel could route with, one fanout packet socket per
# worker and each frame read once, GSO frames whole, sockets re-created after kill -9, DEL and
# a vanished netns removing both ends, requests that do not fit refused, and
# `netstackd cleanup` removing the namespace, and dual-stack pods over IPv6 (pod to pod, pod to
# node and back, NDP answered with the gateway MAC, TCP, a foreign IPv6 source and a neighbor
# solicitation naming a foreign MAC dropped and counted). Needs root.
set -uo pipefail
export MODE=veth
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT


suite() { # SCRIPT LABEL: run another e2e script, one row for its result
  local out rc summary
  out=$(bash "$ROOT/e2e/$1.sh" 2>&1); rc=$?
  grep -E '^  FAIL' <<<"$out"
  sed -n '/^    --- node <-> pod diagnostics/,/^    ---$/p' <<<"$out"
  summary=$(grep -E "^$1: " <<<"$out" | tail -1)
  check "$1.sh passes in $2 (${summary:-no summary})" test "$rc" = 0
}
for t in test_slice test_supervisor test_hostile test_qdisc test_gso test_observe; do
  log "$t.sh with MODE=veth"
  suite "$t" "veth mode"
done
# The same with the sockets receiving through TPACKET_V2 rings (netstackd --veth-rx ring).
for t in test_slice test_supervisor test_hostile test_gso test_observe; do
  log "$t.sh with MODE=veth, --veth-rx ring"
  NETSTACKD_ARGS="--veth-rx ring" suite "$t" "veth mode with receive rings"
done

WORKERS=2
# sockets_on PEER: packet sockets in netstackd's netns bound to PEER.
sockets_on() {
  local idx
  idx=$(in_dp ip -j link show "$1" 2>/dev/null | jq '.[0].ifindex')
  [ -n "$idx" ] && [ "$idx" != null ] || { echo 0; return; }
  in_dp awk -v i="$idx" 'NR > 1 && $5 == i' /proc/net/packet | wc -l
}
# peer_up_noarp PEER / peer_absent PEER: the state of a peer in netstackd's netns.
peer_up_noarp() { in_dp ip link show "$1" | grep -q 'NOARP,UP'; }
peer_absent() { [ -e "$DP_NETNS" ] && ! in_dp ip link show "$1" >/dev/null 2>&1; }
# ten_replies PING_OUTPUT: 10 replies came back, none twice.
ten_replies() { grep -q ' 10 received' <<<"$1" && ! grep -q 'DUP\|duplicates' <<<"$1"; }
# quiet POD OTHER_IP: no IPv6 and no ARP from POD, so every frame counted is the test's own.
# eth0_tx_packets POD: the frames POD's kernel has sent on its eth0.
eth0_tx_packets() { ip -n "$1" -s -j link show eth0 | jq '.[0].stats64.tx.packets'; }
quiet() {
  in_pod "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  for n in "$GATEWAY" "$2"; do
    in_pod "$1" ip neigh replace "$n" lladdr 02:4e:53:00:00:01 dev eth0 nud permanent
  done
}

log "veth-specific checks"
write_conflist
start_netstackd --workers "$WORKERS" || exit 1
A=veth-a-$RUN_ID
B=veth-b-$RUN_ID
IP_A=$(add_pod "$A") && ok "ADD pod A ($IP_A)" || fail "ADD pod A"
IP_B=$(add_pod "$B") && ok "ADD pod B ($IP_B)" || fail "ADD pod B"
PEER_A=$(veth_peer "$A")
PEER_B=$(veth_peer "$B")

log "the peer in netstackd's netns"
check "status names the namespace ($DP_NETNS)" test "$(ctl status | jq -r .dp_netns)" = "$DP_NETNS"
check "list says veth for both pods" test "$(ctl list | jq -r '[.[].mode] | unique | join(",")')" = veth
check "pod A's eth0 is a veth marked netstack" sh -c "ip -n $A -d link show eth0 | grep -q 'alias netstack' && ip -n $A -d link show eth0 | grep -q veth"
check "its peer $PEER_A is in netstackd's netns" test -n "$PEER_A"
check "  ... named nsv + 12 hex digits" grep -Eq '^nsv[0-9a-f]{12}$' <<<"$PEER_A"
check "  ... and not in the host netns" sh -c "! ip link show $PEER_A"
check "netstackd's netns holds only lo and the two peers" \
  test "$(in_dp ip -j link show | jq -r '[.[].ifname] | sort | join(" ")')" = "$(printf '%s\n' lo "$PEER_A" "$PEER_B" | sort | tr '\n' ' ' | sed 's/ $//')"
check "no address on any interface there" test "$(in_dp ip -j addr show | jq '[.[].addr_info[]] | length')" = 0
check "the peer is up, without ARP" peer_up_noarp "$PEER_A"
feat() { in_pod "$1" ethtool -k eth0 | awk -v f="$2:" '$1 == f {print $2}'; }
check "pod A's eth0: GSO types a packet socket cannot carry are off (sctp $(feat "$A" tx-sctp-segmentation), udp_tnl $(feat "$A" tx-udp_tnl-segmentation), gso-list $(feat "$A" tx-gso-list))" \
  test "$(feat "$A" tx-sctp-segmentation)$(feat "$A" tx-udp_tnl-segmentation)$(feat "$A" tx-gre-segmentation)$(feat "$A" tx-gso-list)" = offoffoffoff
check "  ... TCP and UDP segmentation stay on" test "$(feat "$A" tx-tcp-segmentation)$(feat "$A" tx-tcp6-segmentation)$(feat "$A" tx-udp-segmentation)" = ononon
check "  ... and without IPv6" test "$(in_dp cat /proc/sys/net/ipv6/conf/$PEER_A/disable_ipv6)" = 1
check "IPv4 forwarding is off there" test "$(in_dp cat /proc/sys/net/ipv4/ip_forward)" = 0
check "no route there" test "$(in_dp ip -j route show | jq length)" = 0
check "one packet socket per worker on each peer ($(sockets_on "$PEER_A"), $(sockets_on "$PEER_B"))" \
  test "$(sockets_on "$PEER_A")$(sockets_on "$PEER_B")" = "$WORKERS$WORKERS"

log "each frame once (fanout)"
quiet "$A" "$IP_B"; quiet "$B" "$IP_A"
before_a=$(pod_counter "$A" .rx_packets); before_b=$(pod_counter "$B" .tx_packets)
out=$(in_pod "$A" ping -c 10 -i 0.05 -W 2 "$IP_B" 2>&1)
check "ping -c 10 pod A -> pod B: exactly 10 replies, no duplicates" ten_replies "$out"
check "pod A's rx_packets counted 10 ($(( $(pod_counter "$A" .rx_packets) - before_a )))" test $(( $(pod_counter "$A" .rx_packets) - before_a )) = 10
check "pod B's tx_packets counted 10 ($(( $(pod_counter "$B" .tx_packets) - before_b )))" test $(( $(pod_counter "$B" .tx_packets) - before_b )) = 10
# Several flows: the fanout hash spreads them over the workers, and none is read twice.
in_pod "$B" iperf3 -s -1 -D --bind "$IP_B"
sleep 0.3
rx0=$(pod_counter "$A" .rx_packets); bytes0=$(pod_counter "$A" .rx_bytes)
check "iperf3 with 4 streams pod A -> pod B completes" in_pod "$A" iperf3 -c "$IP_B" -t 2 -P 4
rx=$(( $(pod_counter "$A" .rx_packets) - rx0 )); bytes=$(( $(pod_counter "$A" .rx_bytes) - bytes0 ))
avg=$(( bytes / (rx > 0 ? rx : 1) ))
check "GSO frames cross the veth whole (avg frame from pod A $avg B >= 16384 B)" test "$avg" -ge 16384
seg=$("$BIN/netstackd" ctl --socket "$SOCK" metrics | awk '$1 == "netstack_gso_segmented_frames_total" {print $2}')
check "  ... none segmented in software (${seg:-missing})" test "${seg:-x}" = 0

log "recvmmsg / sendmmsg batches"
# burst POD IP N: N 64-byte UDP datagrams from POD to IP while the dataplane child is stopped
# (SIGSTOP), so that they all wait for it: how many it then takes per call is its batch,
# whatever the machine's load (in a flood, that depends on who is faster). Nothing listens on
# the port; the receiver's few port-unreachable errors go the other way and count elsewhere.
burst() {
  local dp
  dp=$(pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1)
  kill -STOP "$dp"
  in_pod "$1" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"b" * 64, (sys.argv[1], 5999))' "$2" "$3"
  kill -CONT "$dp"
}
# moved_by POD FIELD FROM N: FIELD of POD has moved at least N past FROM.
moved_by() { [ $(( $(pod_counter "$1" "$2") - $3 )) -ge "$4" ]; }
rxp0=$(pod_counter "$A" .rx_packets); rxc0=$(pod_counter "$A" .rx_calls)
txp0=$(pod_counter "$B" .tx_packets); txc0=$(pod_counter "$B" .tx_calls)
burst "$A" "$IP_B" 100
check "100 datagrams sent pod A -> pod B while the dataplane was stopped all arrive" \
  eventually 10 moved_by "$B" .tx_packets "$txp0" 100
rxp=$(( $(pod_counter "$A" .rx_packets) - rxp0 )); rxc=$(( $(pod_counter "$A" .rx_calls) - rxc0 ))
txp=$(( $(pod_counter "$B" .tx_packets) - txp0 )); txc=$(( $(pod_counter "$B" .tx_calls) - txc0 ))
# Hundredths of a frame per call.
per_rx=$(( rxp * 100 / (rxc > 0 ? rxc : 1) )); per_tx=$(( txp * 100 / (txc > 0 ? txc : 1) ))
check "recvmmsg brings several frames per call from pod A ($rxp frames in $rxc calls)" test "$per_rx" -ge 200
check "sendmmsg sends several frames per call to pod B ($txp frames in $txc calls)" test "$per_tx" -ge 200
check "  ... and never more than a batch (32) per call" test "$per_rx" -le 3200 -a "$per_tx" -le 3200

log "kill -9 re-creates the sockets"
DP=$(pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1)
kill -9 "$NETSTACKD_PID"; wait "$NETSTACKD_PID" 2>/dev/null
# The dataplane follows its supervisor (PR_SET_PDEATHSIG); wait until it is gone.
for _ in $(seq 1 50); do kill -0 "$DP" 2>/dev/null || break; sleep 0.1; done
check "no socket is left on the peer while netstackd is down" test "$(sockets_on "$PEER_A")" = 0
check "the peer stays in netstackd's netns" test "$(veth_peer "$A")" = "$PEER_A"
start_netstackd --workers "$WORKERS"
check "both pods restored" test "$(ctl status | jq .attachments)" = 2
check "again exactly $WORKERS sockets on each peer" test "$(sockets_on "$PEER_A")$(sockets_on "$PEER_B")" = "$WORKERS$WORKERS"
before_a=$(pod_counter "$A" .rx_packets)
out=$(in_pod "$A" ping -c 10 -i 0.05 -W 2 "$IP_B" 2>&1)
check "ping -c 10 after the restart: exactly 10 replies" ten_replies "$out"
check "  ... counted 10" test $(( $(pod_counter "$A" .rx_packets) - before_a )) = 10
check "ping node -> pod B" ping -c 2 -i 0.2 -W 2 "$IP_B"

log "requests that do not fit veth mode"
attach_raw() { # JSON NFDS: an attach request with NFDS fds of /dev/null
  python3 - "$SOCK" "$1" "$2" <<'PY'
import json, os, socket, struct, sys
path, req, nfds = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = req.encode()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
fds = [os.open("/dev/null", os.O_RDWR) for _ in range(nfds)]
socket.send_fds(s, [struct.pack(">I", len(body)) + body], fds)
n = struct.unpack(">I", s.recv(4))[0]
print(s.recv(n).decode())
PY
}
C=veth-c-$RUN_ID
ip netns add "$C"; echo "$C" >>"$WORK/pods"
ip -n "$C" link add eth0 type veth peer name nsv000000000000
req() { # PEER [QUEUES]
  printf '{"op":"attach","container_id":"%s","ifname":"eth0","netns":"/run/netns/%s","mac":"0a:58:0a:00:00:09","ips":["%s/24"],"mtu":1500,"queues":%s,"mode":"veth","peer":"%s"}' \
    "$C" "$C" "${POD_CIDR%.0/24}.77" "${2:-0}" "$1"
}
check "an attach naming another peer is refused" grep -q 'the veth peer must be named' <<<"$(attach_raw "$(req nsv000000000000)" 0)"
check "a veth attach carrying fds is refused" grep -q 'carries no fds' <<<"$(attach_raw "$(req nsv000000000000)" 2)"
check "a veth attach announcing queues is refused" grep -q 'announces no queues' <<<"$(attach_raw "$(req nsv000000000000 2)" 0)"
# The name netstack derives for C/eth0 (FNV-1a of "C\0eth0", as control::veth_peer_name).
peer_c=$(python3 -c '
import sys
h = 0xcbf29ce484222325
for b in sys.argv[1].encode() + b"\0eth0":
    h = ((h ^ b) * 0x100000001b3) % 2**64
print("nsv%012x" % (h >> 16))' "$C")
ip -n "$C" link del eth0
ip -n "$C" link add eth0 type veth peer name "$peer_c"
check "the right peer name, but eth0 is someone else's veth (no netstack alias): refused" \
  grep -q 'eth0 is not a netstack veth' <<<"$(attach_raw "$(req "$peer_c")" 0)"
check "  ... and its peer was not taken" ip -n "$C" link show "$peer_c"
ip -n "$C" link del eth0
check "nothing was attached" test "$(ctl status | jq .attachments)" = 2
# moved_logged PEER: netstackd's log says it moved PEER from a pod's netns into its own.
moved_logged() { grep "veth peer is in the pod's namespace: moving it" "$WORK/netstackd.log" | grep -q "$1"; }
not() { ! "$@"; }
# What a plugin that made the pair in the pod's netns (older ones, or the fallback when it
# cannot create the peer in place) hands over: netstackd moves the peer, and says so.
ip -n "$C" link add eth0 type veth peer name "$peer_c"
ip -n "$C" link set eth0 alias netstack
out=$(attach_raw "$(req "$peer_c")" 0)
check "a netstack veth whose peer is in the pod's netns is attached (${out:0:60})" grep -q '"done"' <<<"$out"
check "  ... its peer was moved into netstackd's netns" test "$(veth_peer "$C")" = "$peer_c"
check "  ... and netstackd logs the move" moved_logged "$peer_c"
check "  ... DEL removes it" cni DEL "$C" "/run/netns/$C"
check "  ... and its peer" peer_absent "$peer_c"

log "the plugin creates the peer in netstackd's netns: no namespace move"
# `ip monitor link` in the new pod's netns and in netstackd's, each bounded by timeout, from
# before the ADD to after it. A marker veth made and deleted in each namespace shows that
# the monitor listens (before) and has written everything up to then (after). A peer made in
# the pod's netns and moved shows there as a new link and then as "Deleted".
G=veth-g-$RUN_ID
ip netns add "$G"; ip -n "$G" link set lo up; echo "$G" >>"$WORK/pods"
timeout 60 ip -n "$G" monitor link >"$WORK/monitor-pod" 2>&1 &
MON_POD=$!
timeout 60 nsenter --net="$DP_NETNS" ip monitor link >"$WORK/monitor-dp" 2>&1 &
MON_DP=$!
marker() { # NAME: a veth NAME/NAME-p made and deleted in the pod's and netstackd's netns until both monitors saw it (20 tries)
  local _
  for _ in $(seq 1 20); do
    ip -n "$G" link add "$1" type veth peer name "$1-p" && ip -n "$G" link del "$1"
    in_dp ip link add "$1" type veth peer name "$1-p" && in_dp ip link del "$1"
    sleep 0.2
    grep -q "Deleted.*$1" "$WORK/monitor-pod" && grep -q "Deleted.*$1" "$WORK/monitor-dp" && return 0
  done
  return 1
}
check "ip monitor listens in both namespaces" marker mkb0
result=$(cni ADD "$G" "/run/netns/$G")
check "ADD pod G" test -n "$(jq -r '.ips[0].address // empty' <<<"$result" 2>/dev/null)"
PEER_G=$(veth_peer "$G")
check "  ... its peer ${PEER_G:-none} is in netstackd's netns" grep -Eq '^nsv[0-9a-f]{12}$' <<<"$PEER_G"
check "  ... both monitors have caught up" marker mka0
kill "$MON_POD" "$MON_DP" 2>/dev/null; wait "$MON_POD" "$MON_DP" 2>/dev/null
check "the pod's netns saw its eth0 appear" grep -q ': eth0@' "$WORK/monitor-pod"
check "  ... and never the peer: no new link, no deletion ($(grep -c "${PEER_G:-nsv}" "$WORK/monitor-pod") lines)" \
  test "$(grep -c "${PEER_G:-nsv}" "$WORK/monitor-pod")" = 0
check "netstackd's netns saw the peer appear, and never leave" \
  sh -c "grep -q '${PEER_G:-nsv}@' '$WORK/monitor-dp' && ! grep -q 'Deleted.*${PEER_G:-nsv}' '$WORK/monitor-dp'"
check "netstackd did not move it (no move logged for it)" not moved_logged "${PEER_G:-nsv}"
check "  ... and it is set up as a moved one was: up, without ARP" peer_up_noarp "$PEER_G"
check "  ... without IPv6" test "$(in_dp cat "/proc/sys/net/ipv6/conf/$PEER_G/disable_ipv6")" = 1
check "  ... with one packet socket per worker ($(sockets_on "$PEER_G"))" test "$(sockets_on "$PEER_G")" = "$WORKERS"
check "DEL pod G" cni DEL "$G" "/run/netns/$G"
check "  ... its peer is gone" peer_absent "$PEER_G"
ip netns del "$G"

log "DEL removes both ends"
check "DEL pod A" cni DEL "$A" "/run/netns/$A"
check "pod A's eth0 is gone" sh -c "! ip -n $A link show eth0"
check "its peer $PEER_A is gone from netstackd's netns" peer_absent "$PEER_A"
check "its state file is gone" test ! -e "$STATE/${A}:eth0.json"
check "a second DEL succeeds" cni DEL "$A" "/run/netns/$A"
log "a pod netns deleted without DEL takes its peer with it"
ip netns del "$B"
sleep 0.2
check "pod B's peer $PEER_B is gone" peer_absent "$PEER_B"
check "DEL with an empty CNI_NETNS succeeds" cni DEL "$B" ""
check "no attachment left" test "$(ctl status | jq .attachments)" = 0
check "netstackd's netns holds only lo" test "$(in_dp ip -j link show | jq -r '[.[].ifname] | join(" ")')" = lo

log "netstackd cleanup"
D=veth-d-$RUN_ID
IP_D=$(add_pod "$D") && ok "ADD pod D ($IP_D)" || fail "ADD pod D"
PEER_D=$(veth_peer "$D")
stop_netstackd
check "cleanup succeeds" "$BIN/netstackd" cleanup --socket "$SOCK" --state-dir "$STATE" --uplink "$UPLINK" --dp-netns "$DP_NETNS"
check "  ... pod D's eth0 is gone" sh -c "! ip -n $D link show eth0"
check "  ... netstackd's netns is gone" test ! -e "$DP_NETNS"
check "  ... no state files" test "$(find "$STATE" -name '*.json' | wc -l)" = 0

log "receive rings (--veth-rx ring)"
start_netstackd --workers "$WORKERS" --veth-rx ring || exit 1
E=veth-e-$RUN_ID
F=veth-f-$RUN_ID
IP_E=$(add_pod "$E") && ok "ADD pod E ($IP_E)" || fail "ADD pod E"
IP_F=$(add_pod "$F") && ok "ADD pod F ($IP_F)" || fail "ADD pod F"
check "status says the sockets receive through rings" test "$(ctl status | jq -r .veth_rx)" = ring
DP=$(pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1)
rings() { grep -c 'socket:' "/proc/$1/maps" 2>/dev/null; }
check "the dataplane maps one ring per worker per pod ($(rings "$DP"))" test "$(rings "$DP")" = $((2 * WORKERS))
quiet "$E" "$IP_F"; quiet "$F" "$IP_E"
before=$(pod_counter "$E" .rx_packets)
out=$(in_pod "$E" ping -c 10 -i 0.05 -W 2 "$IP_F" 2>&1)
check "ping -c 10 pod E -> pod F: exactly 10 replies, no duplicates" ten_replies "$out"
check "  ... counted 10" test $(( $(pod_counter "$E" .rx_packets) - before )) = 10
in_pod "$F" iperf3 -s -1 -D --bind "$IP_F"
sleep 0.3
rx0=$(pod_counter "$E" .rx_packets); bytes0=$(pod_counter "$E" .rx_bytes)
check "iperf3 pod E -> pod F completes" in_pod "$E" iperf3 -c "$IP_F" -t 2
rx=$(( $(pod_counter "$E" .rx_packets) - rx0 )); bytes=$(( $(pod_counter "$E" .rx_bytes) - bytes0 ))
avg=$(( bytes / (rx > 0 ? rx : 1) ))
check "a ring frame holds a GSO frame whole (avg frame from pod E $avg B >= 16384 B)" test "$avg" -ge 16384
in_pod "$F" iperf3 -s -1 -D --bind "$IP_F"
sleep 0.3
rxp0=$(pod_counter "$E" .rx_packets); rxc0=$(pod_counter "$E" .rx_calls)
# 20: a ring holds 30 frames (RING_BYTES / RING_FRAME), the rest would be the kernel's drops.
burst "$E" "$IP_F" 20
check "20 datagrams sent pod E -> pod F while the dataplane was stopped all arrive" \
  eventually 10 moved_by "$E" .rx_packets "$rxp0" 20
rxp=$(( $(pod_counter "$E" .rx_packets) - rxp0 )); rxc=$(( $(pod_counter "$E" .rx_calls) - rxc0 ))
check "several frames taken from the ring per pass ($rxp frames in $rxc passes)" test $(( rxp * 100 / (rxc > 0 ? rxc : 1) )) -ge 200
rxp0=$(pod_counter "$E" .rx_packets)
kq0=$(pod_counter "$E" '.drops.kernel_queue_full // 0'); etx0=$(eth0_tx_packets "$E")
check "a 2 s flood of 64 B datagrams pod E -> pod F completes" in_pod "$E" iperf3 -c "$IP_F" -u -b 0 -l 64 -t 2
# Every frame pod E's kernel put on its veth during the flood either came out of the ring
# (rx_packets) or was dropped by the kernel with the ring full (kernel_queue_full).
flood_balance() {
  local sent read dropped
  sent=$(( $(eth0_tx_packets "$E") - etx0 ))
  read=$(( $(pod_counter "$E" .rx_packets) - rxp0 ))
  dropped=$(( $(pod_counter "$E" '.drops.kernel_queue_full // 0') - kq0 ))
  echo "$sent sent, $read read, $dropped kernel_queue_full"
  [ "$sent" = $((read + dropped)) ]
}
eventually 5 flood_balance
check "the flood overflowed the ring: kernel_queue_full +$(( $(pod_counter "$E" '.drops.kernel_queue_full // 0') - kq0 ))" \
  test "$(pod_counter "$E" '.drops.kernel_queue_full // 0')" -gt "$kq0"
check "what the full ring dropped is counted: every frame pod E sent was read or counted ($(flood_balance))" flood_balance
kill -9 "$DP"
for _ in $(seq 1 50); do
  n=$(pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1)
  [ -n "$n" ] && [ "$n" != "$DP" ] && [ "$(ctl status | jq .dataplane_pid)" = "$n" ] && break
  sleep 0.1
done
check "a killed dataplane is replaced (pid $DP -> ${n:-none})" test -n "$n" -a "$n" != "$DP"
check "  ... and the new one maps the rings again ($(rings "$n"))" test "$(rings "$n")" = $((2 * WORKERS))
before=$(pod_counter "$E" .rx_packets)
out=$(in_pod "$E" ping -c 10 -i 0.05 -W 2 "$IP_F" 2>&1)
check "  ... it finds where the kernel writes in each ring: ping -c 10 gets exactly 10 replies" ten_replies "$out"
check "  ... counted 10" test $(( $(pod_counter "$E" .rx_packets) - before )) = 10
check "DEL pod E" cni DEL "$E" "/run/netns/$E"
check "DEL pod F" cni DEL "$F" "/run/netns/$F"
check "no mapping left in the dataplane" test "$(rings "$n")" = 0
stop_netstackd

log "IPv6 in veth mode (dual-stack pods)"
# A /64 of this run's own (the third byte of the IPv4 pod CIDR), apart from the other scripts'.
N6=${POD_CIDR#10.244.}
N6=${N6%%.*}
POD_CIDR6=fd00:10:246:$N6::/64
GATEWAY6=fd00:10:246:$N6::1
GATEWAY_MAC=02:4e:53:00:00:01
start_netstackd --workers "$WORKERS" --pod-cidr-v6 "$POD_CIDR6" || exit 1
CONFLIST=$WORK/dual.conflist
jq --arg v6 "$POD_CIDR6" '.plugins[0].ipam.ranges += [[{subnet: $v6}]]
    | .plugins[0].ipam.routes += [{dst: "::/0"}]' "$WORK/netstack.conflist" >"$CONFLIST"
J=veth6-j-$RUN_ID
K=veth6-k-$RUN_ID
IP_J=$(add_pod "$J") && ok "ADD dual-stack veth pod J ($IP_J)" || fail "ADD pod J"
IP_K=$(add_pod "$K") && ok "ADD dual-stack veth pod K ($IP_K)" || fail "ADD pod K"
ip6_of() { jq -r '.ips[] | .address | select(contains(":"))' "$WORK/$1.result.json" | cut -d/ -f1; }
IP6_J=$(ip6_of "$J")
IP6_K=$(ip6_of "$K")
check "pod J's eth0 is a veth, its peer in netstackd's netns" pod_link_is_ours "$J"
check "  ... with the IPv6 address $IP6_J/64" eval 'ip -n "$J" -6 addr show dev eth0 | grep "$IP6_J/64"'
check "  ... and an IPv6 default route via $GATEWAY6" eval 'ip -n "$J" -6 route show default | grep "via $GATEWAY6 dev eth0"'
for p in "$J" "$K"; do in_pod "$p" ip -6 neigh flush dev eth0; done
check "pod -> pod IPv6: ping6 J -> K" in_pod "$J" ping -6 -c 3 -i 0.2 -W 2 "$IP6_K"
check "pod -> node IPv6: ping6 K -> the IPv6 gateway on the node" in_pod "$K" ping -6 -c 3 -i 0.2 -W 2 "$GATEWAY6"
check "node -> pod IPv6: ping6 node -> J" ping -6 -c 3 -i 0.2 -W 2 "$IP6_J"
# NDP: both pods solicited (the flush above) and netstackd answered for the gateway and for the
# other pod, with its gateway MAC; the pods' kernels keep the entries as reachable ones.
neigh_is_gateway() { in_pod "$1" ip -6 neigh show "$2" dev eth0 | grep -qE "lladdr $GATEWAY_MAC (router )?(REACHABLE|STALE|DELAY|PROBE)"; }
check "NDP: pod K resolved the IPv6 gateway to $GATEWAY_MAC (router)" \
  eval 'in_pod "$K" ip -6 neigh show "$GATEWAY6" dev eth0 | grep -q "lladdr $GATEWAY_MAC router"'
check "NDP: pod J resolved pod K's address to $GATEWAY_MAC" neigh_is_gateway "$J" "$IP6_K"
head -c 8M /dev/urandom >"$WORK/blob6"
in_pod "$K" timeout 20 nc -6 -l -s "$IP6_K" -p 5006 >"$WORK/got6" &
srv=$!
sleep 0.3
in_pod "$J" timeout 20 nc -6 -N "$IP6_K" 5006 <"$WORK/blob6"
wait "$srv"
check "TCP over IPv6 pod J -> pod K: 8 MB arrive intact" cmp "$WORK/blob6" "$WORK/got6"
# Anti-spoofing: an IPv6 source that is not pod J's, from pod J.
SPOOF6=fd00:10:246:$N6::bad
ip -n "$J" addr add "$SPOOF6/128" dev eth0 nodad
spoofed() { ctl stats | jq --arg id "$J" '.pods[] | select(.container_id == $id) | .counters.drops.spoofed // 0'; }
sp0=$(spoofed)
# Echo requests pod K's kernel received.
in_echos() { in_pod "$K" awk '$1 == "Icmp6InEchos" { print $2 }' /proc/net/snmp6; }
echo0=$(in_echos)
check "anti-spoofing: ping6 from $SPOOF6 (not pod J's) gets no reply" \
  eval '! in_pod "$J" ping -6 -c 3 -i 0.2 -W 1 -I "$SPOOF6" "$IP6_K"'
check "  ... its 3 echo requests counted spoofed ($sp0 -> $(spoofed))" test "$(spoofed)" -ge $((sp0 + 3))
check "  ... and none reached pod K (Icmp6InEchos $echo0 -> $(in_echos))" test "$(in_echos)" = "$echo0"
ip -n "$J" addr del "$SPOOF6/128" dev eth0
check "  ... pod J's own address still works afterwards" in_pod "$J" ping -6 -c 2 -i 0.2 -W 2 "$IP6_K"
# A neighbor solicitation for the gateway whose source link-layer address is not pod J's MAC
# (an attempt to poison the answer), sent raw from pod J's eth0 with its own Ethernet source.
send_ns() { # POD SRC_IP TARGET SLLA_MAC
  in_pod "$1" python3 - "$2" "$3" "$4" "$(in_pod "$1" cat /sys/class/net/eth0/address)" <<'PY'
import ipaddress, socket, struct, sys
src, target = (ipaddress.IPv6Address(a) for a in sys.argv[1:3])
slla, mine = (bytes.fromhex(m.replace(":", "")) for m in sys.argv[3:5])
dst = ipaddress.IPv6Address("ff02::1:ff00:0") + (int(target) & 0xFFFFFF)
icmp = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed + bytes([1, 1]) + slla
pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(icmp), 58)
data = pseudo + icmp
csum = sum(struct.unpack("!%dH" % (len(data) // 2), data))
while csum >> 16:
    csum = (csum & 0xFFFF) + (csum >> 16)
icmp = icmp[:2] + struct.pack("!H", ~csum & 0xFFFF) + icmp[4:]
ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + src.packed + dst.packed
eth = b"\x33\x33" + dst.packed[-4:] + mine + b"\x86\xdd"
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(eth + ip6 + icmp)
PY
}
sp0=$(spoofed)
send_ns "$J" "$IP6_J" "$GATEWAY6" 02:00:00:00:00:99
sleep 0.3
check "NDP anti-spoofing: a solicitation naming another MAC as pod J's is dropped and counted spoofed ($sp0 -> $(spoofed))" \
  test "$(spoofed)" = $((sp0 + 1))
sp0=$(spoofed)
in_na() { in_pod "$J" awk '$1 == "Icmp6InNeighborAdvertisements" { print $2 }' /proc/net/snmp6; }
na0=$(in_na)
send_ns "$J" "$IP6_J" "$GATEWAY6" "$(in_pod "$J" cat /sys/class/net/eth0/address)"
sleep 0.3
check "  ... the same solicitation with pod J's own MAC is answered (advertisements to J $na0 -> $(in_na)), not counted" \
  eval 'test "$(in_na)" -gt "$na0" && test "$(spoofed)" = "$sp0"'
PEER_J=$(veth_peer "$J")
check "DEL pod J (dual-stack veth)" cni DEL "$J" "/run/netns/$J"
check "  ... its peer is gone, its state file too" eval 'peer_absent "$PEER_J" && test ! -e "$STATE/$J:eth0.json"'
check "  ... both of its addresses are released" \
  eval '! grep -rqE "^$J" "$WORK/ipam/$NETWORK"'
check "DEL pod K" cni DEL "$K" "/run/netns/$K"
stop_netstackd

echo
echo "test_veth: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
