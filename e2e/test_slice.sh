#!/usr/bin/env bash
# e2e: the vertical slice. netstackd + two pods through the CNI plugin with host-local IPAM:
# connectivity, bulk transfers checked by hash, counters, anti-spoofing, TTL, DEL semantics,
# and ADD failures that must leave nothing behind. Needs root; run by scripts/test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

# expect_code WHAT CODE OUTPUT: the plugin printed one CNI error object with this code.
expect_code() {
  local got
  got=$(jq -r '.code' <<<"$3" 2>/dev/null)
  if [ "$got" = "$2" ] && jq -e '.cniVersion and .msg' <<<"$3" >/dev/null 2>&1; then
    ok "$1 (code $2)"
  else
    fail "$1: expected CNI error code $2, got: $3"
  fi
}
ipam_reservations() { find "$IPAM_DIR/$NETWORK" -maxdepth 1 -name '[0-9]*' 2>/dev/null | wc -l; }
attachments() { ctl status | jq .attachments; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

log "netstackd"
write_conflist
start_netstackd || exit 1
check "control socket is mode 0600" test "$(stat -c %a "$SOCK")" = 600
check "uplink $UPLINK holds the gateway $GATEWAY" sh -c "ip -4 addr show dev $UPLINK | grep -q 'inet $GATEWAY/24'"
check "pod CIDR routed to the uplink" sh -c "ip route show $POD_CIDR | grep -q 'dev $UPLINK'"
check "uplink is a TUN with a vnet header" sh -c "ip -d link show $UPLINK | grep -q 'tun type tun.*vnet_hdr'"

log "ADD two pods"
A=e2e-a-$RUN_ID
B=e2e-b-$RUN_ID
IP_A=$(add_pod "$A") && ok "ADD pod A ($IP_A)" || fail "ADD pod A"
IP_B=$(add_pod "$B") && ok "ADD pod B ($IP_B)" || fail "ADD pod B"
R=$(cat "$WORK/$A.result.json")
check "result: cniVersion 1.0.0" test "$(jq -r .cniVersion <<<"$R")" = 1.0.0
check "result: interface eth0 in the sandbox" test "$(jq -r '.interfaces[0].name + " " + .interfaces[0].sandbox' <<<"$R")" = "eth0 /run/netns/$A"
check "result: ip points at interface 0 with the gateway" test "$(jq -r '(.ips[0].interface|tostring) + " " + .ips[0].gateway' <<<"$R")" = "0 $GATEWAY"
check "result: default route via the gateway" test "$(jq -r '.routes[] | select(.dst=="0.0.0.0/0") | .gw' <<<"$R")" = "$GATEWAY"
check "result MAC is the device's MAC" test "$(jq -r '.interfaces[0].mac' <<<"$R")" = "$(in_pod "$A" cat /sys/class/net/eth0/address)"
check "pod eth0 is what $MODE mode makes (TAP: multi-queue, vnet header; veth: peer in netstackd's netns)" pod_link_is_ours "$A"
check "pod eth0 has the address" sh -c "ip -n $A -4 addr show eth0 | grep -q 'inet $IP_A/24'"
check "pod default route via gateway" sh -c "ip -n $A route show default | grep -q 'via $GATEWAY dev eth0'"
check "pod eth0 hands TSO frames to netstackd" sh -c "ip netns exec $A ethtool -k eth0 | grep -q '^tcp-segmentation-offload: on'"
if [ "$MODE" = tap ]; then
  check "pod TAP's queue length raised to 2048 (the uplink's too)" \
    test "$(ip -n "$A" -j link show eth0 | jq .[0].txqlen)/$(ip -j link show "$UPLINK" | jq .[0].txqlen)" = 2048/2048
fi
check "netstackd has 2 attachments" test "$(attachments)" = 2
check "state file written for pod A" test -s "$STATE/${A}:eth0.json"
check "host-local holds 2 reservations" test "$(ipam_reservations)" = 2

log "connectivity"
check "ping pod A -> pod B" in_pod "$A" ping -c 3 -i 0.2 -W 2 "$IP_B"
check "ping pod B -> pod A" in_pod "$B" ping -c 3 -i 0.2 -W 2 "$IP_A"
check "ping pod A -> node (gateway)" in_pod "$A" ping -c 3 -i 0.2 -W 2 "$GATEWAY"
check "ping node -> pod B" ping -c 3 -i 0.2 -W 2 "$IP_B"
# When the node side fails, say what the node's routing and filtering looked like (a CI run once
# failed both rows above with nothing else to go on).
if ! ping -c 1 -W 2 "$IP_B" >/dev/null 2>&1; then
  {
    echo "--- node <-> pod diagnostics"
    ip -4 route show; ip -4 route get "$IP_B"; ip -4 addr show dev "$UPLINK"
    sysctl net.ipv4.conf.all.rp_filter "net.ipv4.conf.$UPLINK.rp_filter" net.ipv4.ip_forward
    iptables -S 2>&1 | head -20; nft list ruleset 2>&1 | head -40
    ip -s link show dev "$UPLINK"; ctl status | jq -c '.attachments, .dataplane' 2>&1
    tail -20 "$WORK/netstackd.log"
    echo "---"
  } 2>&1 | sed 's/^/    /'
fi
check "1400-byte ping with DF pod A -> pod B" in_pod "$A" ping -c 2 -i 0.2 -W 2 -M do -s 1400 "$IP_B"

log "counters move as expected"
before=$(pod_counter "$B" '.tx_packets')
in_pod "$A" ping -c 10 -i 0.05 -W 2 -q "$IP_B" >/dev/null
after=$(pod_counter "$B" '.tx_packets')
check "10 echo requests delivered to pod B (tx_packets +$((after - before)) >= 10)" test $((after - before)) -ge 10

log "100 MB TCP transfers, hash compared"
head -c 100M /dev/urandom >"$WORK/blob"
want=$(sha256sum <"$WORK/blob" | cut -d' ' -f1)
rx_pkts0=$(pod_counter "$A" '.rx_packets'); rx_bytes0=$(pod_counter "$A" '.rx_bytes')
in_pod "$B" timeout 60 nc -l -s "$IP_B" -p 5001 >"$WORK/got-b" &
srv=$!
sleep 0.3
in_pod "$A" timeout 60 nc -N "$IP_B" 5001 <"$WORK/blob"
wait $srv
check "pod A -> pod B: 100 MB arrive intact" test "$(sha256sum <"$WORK/got-b" | cut -d' ' -f1)" = "$want"
rx_pkts=$(( $(pod_counter "$A" '.rx_packets') - rx_pkts0 )); rx_bytes=$(( $(pod_counter "$A" '.rx_bytes') - rx_bytes0 ))
avg=$(( rx_bytes / (rx_pkts > 0 ? rx_pkts : 1) ))
check "TSO frames passed whole (avg frame from pod A $avg B > 3000 B)" test "$avg" -gt 3000
rm -f "$WORK/got-b"
timeout 60 nc -l -s "$GATEWAY" -p 5002 >"$WORK/got-node" &
srv=$!
sleep 0.3
in_pod "$A" timeout 60 nc -N "$GATEWAY" 5002 <"$WORK/blob"
wait $srv
check "pod A -> node: 100 MB arrive intact" test "$(sha256sum <"$WORK/got-node" | cut -d' ' -f1)" = "$want"
rm -f "$WORK/got-node"
in_pod "$A" timeout 60 nc -l -s "$IP_A" -p 5003 >"$WORK/got-a" &
srv=$!
sleep 0.3
timeout 60 nc -N "$IP_A" 5003 <"$WORK/blob"
wait $srv
check "node -> pod A: 100 MB arrive intact" test "$(sha256sum <"$WORK/got-a" | cut -d' ' -f1)" = "$want"
rm -f "$WORK/got-a" "$WORK/blob"

log "iperf3 pod A -> pod B (2 s)"
in_pod "$B" iperf3 -s -1 -D --bind "$IP_B"
sleep 0.3
rx_pkts0=$(pod_counter "$A" '.rx_packets'); rx_bytes0=$(pod_counter "$A" '.rx_bytes')
check "iperf3 between pods completes" in_pod "$A" iperf3 -c "$IP_B" -t 2 -J
rx_pkts=$(( $(pod_counter "$A" '.rx_packets') - rx_pkts0 )); rx_bytes=$(( $(pod_counter "$A" '.rx_bytes') - rx_bytes0 ))
avg=$(( rx_bytes / (rx_pkts > 0 ? rx_pkts : 1) ))
check "GSO is active under bulk TCP: avg frame from pod A $avg B >= 16384 B" test "$avg" -ge 16384
seg=$("$BIN/netstackd" ctl --socket "$SOCK" metrics | awk '$1 == "netstack_gso_segmented_frames_total" {print $2}')
check "and nothing was segmented in software (netstack_gso_segmented_frames_total ${seg:-missing})" test "${seg:-x}" = 0

log "pods cannot spoof"
spoof_ip=${POD_CIDR%.0/24}.250
in_pod "$A" ip addr add "$spoof_ip/32" dev eth0
sp0=$(pod_counter "$A" '.drops.spoofed')
if in_pod "$A" ping -c 2 -i 0.2 -W 1 -I "$spoof_ip" "$IP_B" >/dev/null 2>&1; then fail "ping from a foreign source IP got through"; else ok "ping from a foreign source IP is dropped"; fi
check "spoofed drops counted" test "$(pod_counter "$A" '.drops.spoofed')" -gt "$sp0"
in_pod "$A" ip addr del "$spoof_ip/32" dev eth0

log "TTL"
out=$(in_pod "$A" ping -c 1 -W 2 -t 1 "$IP_B" 2>&1)
check "TTL 1 gets ICMP time exceeded from the gateway" grep -q "From $GATEWAY.*Time to live exceeded" <<<"$out"
check "ttl_exceeded drops counted" test "$(pod_counter "$A" '.drops.ttl_exceeded')" -ge 1

log "malformed control requests do not hurt netstackd"
printf '\x00\x00\x00\x05hello' | socat -t 2 - "UNIX-CONNECT:$SOCK" >"$WORK/garbage.out" 2>&1
check "garbage request gets an error reply" grep -q '"reply":"error"' "$WORK/garbage.out"
printf '\x00\x00\x00\x0f{"op":"attach"}' | socat -t 2 - "UNIX-CONNECT:$SOCK" >"$WORK/garbage.out" 2>&1
check "attach without fields gets an error reply" grep -q '"reply":"error"' "$WORK/garbage.out"
printf '\xff\xff\xff\xff' | socat -t 2 - "UNIX-CONNECT:$SOCK" >/dev/null 2>&1
check "netstackd still serves after hostile requests" test "$(attachments)" = 2

log "idle costs nothing"
sleep 1
t0=$(cpu_ticks "$NETSTACKD_PID"); sleep 3; t1=$(cpu_ticks "$NETSTACKD_PID")
check "netstackd used $((t1 - t0)) ticks in 3 idle seconds (<= 5)" test $((t1 - t0)) -le 5

log "DEL"
check "DEL pod A" cni DEL "$A" "/run/netns/$A"
check "pod A's $MODE device is gone" sh -c "! ip -n $A link show eth0"
check "pod A's state file is gone" test ! -e "$STATE/${A}:eth0.json"
check "second DEL of pod A succeeds" cni DEL "$A" "/run/netns/$A"
ip netns del "$B"
check "DEL with an empty CNI_NETNS succeeds (netns already gone)" cni DEL "$B" ""
check "DEL of a pod never added succeeds" cni DEL "never-added-$RUN_ID" ""
check "no attachment left" test "$(attachments)" = 0
check "no host-local reservation left" test "$(ipam_reservations)" = 0

log "ADD failures leave nothing behind"
C=e2e-c-$RUN_ID
ip netns add "$C"; PODS+=("$C")
out=$(printf '{not json' | env CNI_COMMAND=ADD CNI_CONTAINERID="$C" CNI_NETNS="/run/netns/$C" CNI_IFNAME=eth0 CNI_PATH="$BIN:$REF_CNI" "$BIN/netstack"); rc=$?
expect_code "ADD with malformed JSON" 6 "$out"
check "  ... exits non-zero" test "$rc" -ne 0
out=$(cni ADD "$C" "/run/netns/missing-$RUN_ID"); expect_code "ADD with a missing netns" 3 "$out"
out=$(env -u CNI_NETNS CNI_COMMAND=ADD CNI_CONTAINERID="$C" CNI_IFNAME=eth0 CNI_PATH="$BIN" "$BIN/netstack" </dev/null); expect_code "ADD without CNI_NETNS" 4 "$out"
out=$(cni ADD "$C" "/run/netns/$C" "this-name-is-too-long0"); expect_code "ADD with a 22-character CNI_IFNAME" 4 "$out"
out=$(cni ADD "bad/id" "/run/netns/$C"); expect_code "ADD with an invalid container id" 4 "$out"
write_conflist 10.99.0.0/24
out=$(cni ADD "$C" "/run/netns/$C"); expect_code "ADD of an address outside netstackd's pod CIDR is refused (invalid network config)" 7 "$out"
check "  ... no TAP left in the netns" sh -c "! ip -n $C link show eth0"
check "  ... no host-local reservation left" test "$(ipam_reservations)" = 0
write_conflist
ip -n "$C" link add eth0 type veth peer name peer0
out=$(cni ADD "$C" "/run/netns/$C"); expect_code "ADD when eth0 already exists" 100 "$out"
check "  ... the existing eth0 is left alone" ip -n "$C" link show eth0 type veth
check "  ... no host-local reservation left" test "$(ipam_reservations)" = 0
check "  ... DEL after the failed ADD succeeds" cni DEL "$C" "/run/netns/$C"
check "  ... and keeps the foreign eth0" ip -n "$C" link show eth0 type veth
ip -n "$C" link del eth0
stop_netstackd
out=$(cni ADD "$C" "/run/netns/$C"); expect_code "ADD with netstackd stopped" 11 "$out"
check "  ... no TAP left in the netns" sh -c "! ip -n $C link show eth0"
check "  ... no host-local reservation left" test "$(ipam_reservations)" = 0
out=$(cni DEL "$C" "/run/netns/$C"); expect_code "DEL with netstackd stopped asks to retry" 11 "$out"

log "VERSION"
out=$(printf '{"cniVersion":"1.0.0"}' | env CNI_COMMAND=VERSION CNI_IFNAME=dummy CNI_NETNS=dummy CNI_PATH=dummy "$BIN/netstack")
check "VERSION lists 0.4.0, 1.0.0 and 1.1.0" test "$(jq -c .supportedVersions <<<"$out")" = '["0.4.0","1.0.0","1.1.0"]'

echo
echo "test_slice: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
