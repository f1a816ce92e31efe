#!/usr/bin/env bash
# e2e: BIG TCP in veth mode (netstackd --big-tcp). Without the option a veth pod's eth0 keeps
# the kernel's 64 KiB GSO/GRO sizes and no frame over 64 KiB crosses netstackd; with it, a new
# veth pod's eth0 and its peer get 196608 bytes for IPv6 and IPv4 (read over rtnetlink), TCP
# between two veth pods moves frames over 64 KiB (IPv4 and IPv6, counted): IPv4 ones whole,
# IPv6 ones cut into 64 KiB GSO frames (Linux 6.18 cannot take them whole from a packet
# socket); towards the node (uplink TUN) and a TAP pod they are cut too (counted), and all
# arrive intact (sha256 of 30 MB, no checksum or IPv6 header errors in the receiving pods). A pod made with BIG TCP is
# brought back to 64 KiB when netstackd restarts without it. Counter-based: no timing.
# Needs root.
set -uo pipefail
export MODE=veth
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

SIZE=196608
# sizes POD: gso_max_size gro_max_size gso_ipv4_max_size gro_ipv4_max_size of POD's eth0.
sizes() { in_pod "$1" python3 "$ROOT/e2e/link_sizes.py" eth0; }
# peer_sizes POD: the same of its peer in netstackd's namespace.
peer_sizes() { in_dp python3 "$ROOT/e2e/link_sizes.py" "$(veth_peer "$1")"; }
# add_tap_pod NAME: a TAP-mode pod on the veth-mode network (CNI_ARGS NETSTACK_MODE=tap).
add_tap_pod() {
  local result
  ip netns add "$1"
  ip -n "$1" link set lo up
  echo "$1" >>"$WORK/pods"
  result=$(cni ADD "$1" "/run/netns/$1" eth0 "IgnoreUnknown=1;NETSTACK_MODE=tap;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$1") ||
    { echo "ADD $1 failed: $result" >&2; return 1; }
  printf '%s' "$result" >"$WORK/$1.result.json"
  jq -r '.ips[0].address' <<<"$result" | cut -d/ -f1
}
ip6_of() { jq -r '.ips[] | .address | select(contains(":"))' "$WORK/$1.result.json" | cut -d/ -f1; }
# transfer FROM_NS TO_NS TO_IP PORT: 30 MB of random bytes over TCP (an empty TO_NS is the
# node); succeeds when their sha256 matches.
transfer() {
  local from=$1 to=$2 ip=$3 port=$4 srv six=
  case "$ip" in *:*) six=-6 ;; esac
  ${to:+ip netns exec "$to"} timeout 60 nc $six -l -s "$ip" -p "$port" >"$WORK/got" &
  srv=$!
  sleep 0.3
  ip netns exec "$from" timeout 60 nc $six -N "$ip" "$port" <"$WORK/blob"
  wait "$srv"
  test "$(sha256sum <"$WORK/blob" | cut -d' ' -f1)" = "$(sha256sum <"$WORK/got" | cut -d' ' -f1)"
}
# iperf POD SERVER_NS IP: a 2 s iperf3 from POD to IP (served in SERVER_NS, empty: the node).
iperf() {
  local six=
  case "$3" in *:*) six=-6 ;; esac
  ${2:+ip netns exec "$2"} iperf3 -s -1 -D --bind "$3" -p 5301
  sleep 0.3
  in_pod "$1" timeout 30 iperf3 $six -c "$3" -p 5301 -t 2 >/dev/null
}
ip6_hdr_errors() { in_pod "$1" nstat -az Ip6InHdrErrors | awk '/Ip6InHdrErrors/ {print $2}'; }
csum_errors() { in_pod "$1" nstat -az TcpInCsumErrors | awk '/TcpInCsumErrors/ {print $2}'; }
big_rx() { pod_counter "$1" '.rx_big_tcp_packets // 0'; }

N6=${POD_CIDR#10.244.}
N6=${N6%%.*}
POD_CIDR6=fd00:10:247:$N6::/64
GATEWAY6=fd00:10:247:$N6::1
write_conflist
jq --arg v6 "$POD_CIDR6" '.plugins[0].ipam.ranges += [[{subnet: $v6}]]
    | .plugins[0].ipam.routes += [{dst: "::/0"}]' "$CONFLIST" >"$WORK/dual.conflist"
CONFLIST=$WORK/dual.conflist
head -c 30M /dev/urandom >"$WORK/blob"

log "without --big-tcp: 64 KiB, as ever"
start_netstackd --workers 2 --pod-cidr-v6 "$POD_CIDR6" || exit 1
O=btcp-o-$RUN_ID
P=btcp-p-$RUN_ID
IP_O=$(add_pod "$O") && ok "ADD veth pod O ($IP_O)" || fail "ADD veth pod O"
IP_P=$(add_pod "$P") && ok "ADD veth pod P ($IP_P)" || fail "ADD veth pod P"
check "status reports no BIG TCP" test "$(ctl status | jq -r '.big_tcp // "none"')" = none
check "pod O's eth0 keeps 64 KiB ($(sizes "$O"))" test "$(sizes "$O")" = "65536 65536 65536 65536"
check "  ... and its peer ($(peer_sizes "$O"))" test "$(peer_sizes "$O")" = "65536 65536 65536 65536"
check "iperf3 pod O -> pod P" iperf "$O" "$P" "$IP_P"
check "  ... no frame over 64 KiB ($(big_rx "$O"))" test "$(big_rx "$O")" = 0
stop_netstackd

log "with --big-tcp"
start_netstackd --workers 2 --pod-cidr-v6 "$POD_CIDR6" --big-tcp || exit 1
check "status reports BIG TCP at $SIZE bytes" test "$(ctl status | jq -r '.big_tcp // "none"')" = "$SIZE"
check "a pod made before keeps 64 KiB ($(sizes "$O"))" test "$(sizes "$O")" = "65536 65536 65536 65536"
A=btcp-a-$RUN_ID
B=btcp-b-$RUN_ID
T=btcp-t-$RUN_ID
IP_A=$(add_pod "$A") && ok "ADD veth pod A ($IP_A)" || fail "ADD veth pod A"
IP_B=$(add_pod "$B") && ok "ADD veth pod B ($IP_B)" || fail "ADD veth pod B"
IP_T=$(add_tap_pod "$T") && ok "ADD TAP pod T ($IP_T)" || fail "ADD TAP pod T"
IP6_A=$(ip6_of "$A")
IP6_B=$(ip6_of "$B")
IP6_T=$(ip6_of "$T")
want="$SIZE $SIZE $SIZE $SIZE"
check "pod A's eth0: GSO/GRO sizes, IPv6 and IPv4, at $SIZE ($(sizes "$A"))" test "$(sizes "$A")" = "$want"
check "  ... and its peer's ($(peer_sizes "$A"))" test "$(peer_sizes "$A")" = "$want"
check "pod B's eth0 too ($(sizes "$B"))" test "$(sizes "$B")" = "$want"
check "TAP pod T's eth0 stays at 64 KiB ($(sizes "$T"))" test "$(sizes "$T" | cut -d' ' -f1)" = 65536

log "veth pod -> veth pod: IPv4 frames over 64 KiB pass whole"
for p in "$A" "$B" "$T"; do in_pod "$p" ping -c 1 -W 2 "$GATEWAY" >/dev/null; done
hdr0=$(ip6_hdr_errors "$B")
b0=$(big_rx "$A")
check "iperf3 IPv4 pod A -> pod B" iperf "$A" "$B" "$IP_B"
b1=$(big_rx "$A")
check "  ... pod A sent frames over 64 KiB ($((b1 - b0)))" test $((b1 - b0)) -gt 0
check "30 MB pod A -> pod B (IPv4) arrive intact (sha256)" transfer "$A" "$B" "$IP_B" 7201
chunked_b=$(pod_counter "$B" '.tx_big_tcp_chunked // 0')
check "  ... none was cut on the way to veth pod B ($chunked_b)" test "$chunked_b" = 0
log "veth pod -> veth pod: IPv6 ones are cut (Linux 6.18 drops them whole from a packet socket)"
check "iperf3 IPv6 pod A -> pod B" iperf "$A" "$B" "$IP6_B"
b2=$(big_rx "$A")
check "  ... frames over 64 KiB ($((b2 - b1)))" test $((b2 - b1)) -gt 0
check "30 MB pod A -> pod B (IPv6) arrive intact (sha256)" transfer "$A" "$B" "$IP6_B" 7202
chunked_b=$(pod_counter "$B" '.tx_big_tcp_chunked // 0')
check "  ... cut into 64 KiB GSO frames for veth pod B ($chunked_b)" test "$chunked_b" -gt 0
check "  ... pod B's kernel dropped no IPv6 frame as a header error ($hdr0 -> $(ip6_hdr_errors "$B"))" \
  test "$(ip6_hdr_errors "$B")" = "$hdr0"
check "no oversize or malformed drop from pod A ($(pod_counter "$A" '.drops | "\(.oversize) \(.malformed)"'))" \
  test "$(pod_counter "$A" '.drops.oversize + .drops.malformed')" = 0

log "towards the node and a TAP pod: cut into 64 KiB GSO frames"
up0=$(ctl stats | jq '.uplink.tx_big_tcp_chunked // 0')
check "iperf3 IPv4 pod A -> node" iperf "$A" "" "$GATEWAY"
check "30 MB pod A -> node (IPv4) arrive intact (sha256)" transfer "$A" "" "$GATEWAY" 7203
check "30 MB pod A -> node (IPv6) arrive intact (sha256)" transfer "$A" "" "$GATEWAY6" 7204
up=$(( $(ctl stats | jq '.uplink.tx_big_tcp_chunked // 0') - up0 ))
check "  ... frames to the uplink were cut into 64 KiB GSO frames ($up)" test "$up" -gt 0
cs0=$(csum_errors "$T")
check "iperf3 IPv4 veth pod A -> TAP pod T" iperf "$A" "$T" "$IP_T"
check "30 MB veth pod A -> TAP pod T (IPv4) arrive intact (sha256)" transfer "$A" "$T" "$IP_T" 7205
check "30 MB veth pod A -> TAP pod T (IPv6) arrive intact (sha256)" transfer "$A" "$T" "$IP6_T" 7206
chunked_t=$(pod_counter "$T" '.tx_big_tcp_chunked // 0')
check "  ... frames to pod T were cut into 64 KiB GSO frames ($chunked_t)" test "$chunked_t" -gt 0
check "  ... which pod T's TAP took whole: none segmented in software ($(pod_counter "$T" .tx_gso_segmented))" \
  test "$(pod_counter "$T" .tx_gso_segmented)" = 0
check "  ... pod T's kernel found no bad TCP checksum ($(csum_errors "$T"))" test "$(csum_errors "$T")" = "$cs0"
check "  ... and netstackd dropped nothing towards it ($(pod_counter "$T" '.drops | "\(.malformed) \(.tx_error)"'))" \
  test "$(pod_counter "$T" '.drops.malformed + .drops.tx_error')" = 0
check "TAP pod T -> veth pod A still works (30 MB, IPv4)" transfer "$T" "$A" "$IP_A" 7207
check "node -> veth pod A still works (30 MB, IPv4)" sh -c "
  ip netns exec '$A' timeout 60 nc -l -s '$IP_A' -p 7208 >'$WORK/got' & srv=\$!; sleep 0.3
  timeout 60 nc -N '$IP_A' 7208 <'$WORK/blob'; wait \$srv; cmp -s '$WORK/blob' '$WORK/got'"

log "restarted without --big-tcp: pods made with it come back to 64 KiB"
stop_netstackd
start_netstackd --workers 2 --pod-cidr-v6 "$POD_CIDR6" || exit 1
check "pods restored" test "$(ctl status | jq .attachments)" = 5
check "pod A's eth0 GSO sizes are 64 KiB again ($(sizes "$A"))" test "$(sizes "$A" | cut -d' ' -f1,3)" = "65536 65536"
check "30 MB pod A -> pod B (IPv4) arrive intact" transfer "$A" "$B" "$IP_B" 7209
check "  ... with no oversize drop ($(pod_counter "$A" .drops.oversize))" test "$(pod_counter "$A" .drops.oversize)" = 0

for p in "$A" "$B" "$T" "$O" "$P"; do
  check "DEL $p" cni DEL "$p" "/run/netns/$p"
  ip netns del "$p"
done
stop_netstackd
echo "test_big_tcp: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
