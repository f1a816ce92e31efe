#!/usr/bin/env bash
# e2e: hostile input from a pod. Pod A writes crafted frames straight onto its eth0 with a raw
# AF_PACKET socket (e2e/hostile_frames.py): wrong source MAC, another pod's or the gateway's
# source IP, broken IPv4 headers, truncated headers, TTL 0/1, ARP replies claiming the gateway
# or another pod, fragments, 9000-byte frames over the MTU, offload headers that lie. Each row
# must move exactly its own drop-reason counter of pod A (or be refused by pod A's own kernel
# before netstackd could see it), bring back the ICMP error Linux would send, and deliver
# nothing to pod B; martian destinations (127/8, 0/8, 240/4) reach nothing on the node; then
# random frames, and pods A and B still talk through the same netstackd processes. Needs root
# and python3.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }

write_conflist
# --tap-io auto: io_uring here, so the flood below meets the io_uring read path (TAP mode).
start_netstackd --workers 2 --tap-io auto || exit 1
A=hostile-a-$RUN_ID
B=victim-b-$RUN_ID
IP_A=$(add_pod "$A") || exit 1
IP_B=$(add_pod "$B") || exit 1
SUP=$NETSTACKD_PID
DP=$(child_pid)
if [ "${MODE:-tap}" = tap ]; then
  check "the dataplane reads TAP queues through io_uring" \
    sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.tap_io == \"uring\"'"
fi
hostile() { in_pod "$A" python3 "$ROOT/e2e/hostile_frames.py" --peer-ip "$IP_B" --gateway "$GATEWAY" --port "${LO_PORT:-9}" "$@"; }

# Keep both pods quiet, so every counter change is ours (lib.sh).
quiet_pods "$A" "$IP_A" "$B" "$IP_B"

# counters: pod A's and pod B's counters, one JSON object {a: ..., b: ...}.
counters() {
  ctl stats | jq -c --arg a "$A" --arg b "$B" \
    '{a: (.pods[] | select(.container_id == $a) | .counters),
      b: (.pods[] | select(.container_id == $b) | .counters)}'
}
# delta BEFORE AFTER: "rx=N gso=N b_tx=N drops=reason+N,...", what one row changed.
delta() {
  jq -nr --argjson x "$1" --argjson y "$2" '
    "rx=\($y.a.rx_packets - $x.a.rx_packets) gso=\(($y.a.rx_gso_packets // 0) - ($x.a.rx_gso_packets // 0)) b_tx=\($y.b.tx_packets - $x.b.tx_packets) drops=" +
    ([$y.a.drops | to_entries[] | select(.value != $x.a.drops[.key]) |
      "\(.key)+\(.value - $x.a.drops[.key])"] | join(","))'
}
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# row NAME EXPECT [ICMP]: send one crafted frame from pod A and check what became of it.
#   EXPECT  a drop reason: exactly that counter of pod A moves by one, no other, pod B gets
#           nothing; "delivered": pod B gets it (a control row); alternatives with "|", where
#           "refused" is pod A's kernel failing the write (EINVAL) and "kernel-drop" is pod A's
#           kernel taking the write but never handing a frame to eth0's driver (a capture on
#           eth0 saw none leave, so netstackd had nothing to read).
#   ICMP    TYPE/CODE[/MTU] that must come back from the gateway, or "none" (none may).
row() {
  local name=$1 expect=$2 icmp=${3:-} args=() before after d out rc got=
  case "$icmp" in
    "") ;;
    none) args=(--expect-no-icmp) ;;
    *) args=(--expect-icmp "$icmp") ;;
  esac
  before=$(counters)
  out=$(hostile send "$name" "${args[@]}" 2>&1); rc=$?
  if [ "$rc" = 3 ]; then
    sleep 0.2
    d=$(delta "$before" "$(counters)")
    if [[ "|$expect|" == *"|refused|"* ]] && [ "$(field "$d" rx)" = 0 ]; then
      ok "$name: refused by pod A's own kernel ($(sed -n 's/.*refused by the pod kernel: //p' <<<"$out")); netstackd saw nothing"
    else
      fail "$name: pod A's kernel refused it, expected $expect ($out; $d)"
    fi
    return
  fi
  # Wait for netstackd to count the frame (or, if it never sees it, give it time to).
  local i
  for i in $(seq 1 30); do
    after=$(counters)
    [ "$(jq '.a.rx_packets' <<<"$after")" != "$(jq '.a.rx_packets' <<<"$before")" ] && break
    sleep 0.05
  done
  sleep 0.1
  after=$(counters)
  d=$(delta "$before" "$after")
  local drops b_tx rx handed
  drops=$(field "$d" drops); b_tx=$(field "$d" b_tx); rx=$(field "$d" rx)
  handed=$(sed -n 's/^handed to the device: //p' <<<"$out")
  d="$d handed=${handed:-?}"
  if [ "$rc" = 2 ]; then got="ICMP expectation $icmp not met: $(tail -1 <<<"$out")"; fi
  if [ "$rc" != 0 ] && [ "$rc" != 2 ]; then got="helper failed: $out"; fi
  local e matched=
  for e in ${expect//|/ }; do
    case "$e" in
      delivered) [ "$rx" = 1 ] && [ "$b_tx" = 1 ] && [ -z "$drops" ] && matched="delivered to pod B" ;;
      kernel-drop) [ "$rx" = 0 ] && [ "$b_tx" = 0 ] && [ "$handed" = 0 ] && matched="dropped by pod A's own kernel after the write: no frame left through eth0" ;;
      refused) ;;
      *) [ "$rx" = 1 ] && [ "$b_tx" = 0 ] && [ "$drops" = "$e+1" ] && matched="$e" ;;
    esac
    [ -n "$matched" ] && break
  done
  if [ -n "$matched" ] && [ -z "$got" ]; then
    ok "$name: $matched${icmp:+, ICMP ${icmp/none/none back}}"
  else
    fail "$name: expected $expect${icmp:+ and ICMP $icmp}, got $d${got:+; $got}"
  fi
}

log "crafted frames from pod A ($IP_A) next to pod B ($IP_B)"
row good-udp delivered                 # control: the measurement sees a delivery
row wrong-src-mac spoofed
row peer-src-ip spoofed
row gateway-src-ip spoofed
row bad-ip-checksum malformed
row ihl-4 malformed
row ihl-0 malformed
row ihl-past-frame malformed
row tot-len-over-frame malformed
row tot-len-under-header malformed
row version-5 malformed
row truncated-ip malformed
row truncated-arp malformed
row truncated-ethernet "malformed|refused"
row arp-non-ethernet malformed
row arp-reply-gateway spoofed
row arp-reply-peer spoofed
row arp-garp-peer spoofed
row arp-foreign-sender-mac spoofed
row ttl-1 ttl_exceeded 11/0
row ttl-0 ttl_exceeded 11/0
row ttl-1-to-gateway ttl_exceeded 11/0
row lldp unsupported
row broadcast-dst no_route
row multicast-dst no_route
row own-dst no_route

log "martian destinations"
# kube-proxy sets route_localnet=1: with it the node's kernel would deliver to its own
# loopback what arrives on the uplink for 127/8. Here on this run's uplink only.
sysctl -qw "net.ipv4.conf.$UPLINK.route_localnet=1"
LO_LOG=$WORK/loopback-listener.log
timeout 300 python3 -u -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
while True:
    d, a = s.recvfrom(65535)
    print("got %d bytes from %s" % (len(d), a[0]))
' >"$LO_LOG" 2>&1 &
LO_PID=$!
for _ in $(seq 1 50); do [ -s "$LO_LOG" ] && break; sleep 0.1; done
LO_PORT=$(head -1 "$LO_LOG")
row to-loopback martian none
row to-zeronet martian none
row to-class-e martian none
sleep 0.3
kill "$LO_PID" 2>/dev/null; wait "$LO_PID" 2>/dev/null
got=$(sed -n 2p "$LO_LOG")
check "the node's loopback listener (127.0.0.1:$LO_PORT) got nothing${got:+ (it $got)}" \
  test "$(wc -l <"$LO_LOG")" = 1

log "fragments"
row frag-first-ttl-1 ttl_exceeded 11/0  # ICMP about a first fragment, as Linux
row frag-later-ttl-1 ttl_exceeded none  # never about a later one (icmp_send)
row frag-past-64k malformed             # can never be reassembled: "ping of death"
before=$(pod_counter "$B" .tx_packets)
check "a 3000-byte ping pod A -> pod B in fragments (no DF) is answered" \
  in_pod "$A" ping -c 2 -i 0.2 -W 2 -M dont -s 3000 "$IP_B"
frags=$(( $(pod_counter "$B" .tx_packets) - before ))
check "  ... its 6 fragments were forwarded one by one, as Linux does (pod B tx_packets +$frags)" \
  test "$frags" = 6

log "frames over the 1500-byte MTU"
# Lets pod A's kernel put frames up to 9000 bytes on the wire; netstackd still knows pod A
# and pod B as MTU 1500.
in_pod "$A" ip link set eth0 mtu 9000
row frag-over-mtu too_big none          # Linux would fragment it; netstackd drops, counted
row jumbo-df frag_needed 3/4/1500
row jumbo-no-df too_big none
row jumbo-df-to-node frag_needed 3/4/1500
out=$(in_pod "$A" ping -c 1 -W 2 -M do -s 8972 "$IP_B" 2>&1)
check "ping -s 8972 -M do from pod A learns the path MTU 1500" grep -Eq 'mtu ?= ?1500' <<<"$out"

log "offload headers that lie (PACKET_VNET_HDR)"
row vnet-tso-honest delivered          # control: an honest GSO frame passes whole
LIE="malformed|refused|kernel-drop"
row vnet-csum-in-ip-header "$LIE"
row vnet-csum-past-frame "$LIE"
row vnet-tso-on-udp "$LIE"
row vnet-uso-on-tcp "$LIE"
row vnet-tso6-on-ipv4 "$LIE"
row vnet-tso-size-0 "$LIE"
row vnet-tso-hdr-len-past-frame "$LIE"
row vnet-tso-csum-at-ip "$LIE"
row vnet-unknown-gso "$LIE"
# GSO frames whose every segment is larger than pod B's MTU: a Linux router checks each
# segment (skb_gso_validate_network_len), not the frame.
row vnet-tso-segments-over-mtu-df "frag_needed|refused" 3/4/1500
row vnet-tso-segments-over-mtu "too_big|refused" none
row vnet-tso-size-over-payload "too_big|refused"  # one segment after all: 3040 B, no DF

log "random frames"
for mode in plain vnet; do
  before=$(counters)
  flags=(); [ "$mode" = vnet ] && flags=(--vnet)
  out=$(hostile fuzz 3000 --seed "$RUN_ID" "${flags[@]}" 2>&1)
  sent=$(sed -n 's/^fuzz: \([0-9]*\) sent.*/\1/p' <<<"$out")
  handed=$(sed -n 's/^handed to the device: //p' <<<"$out")
  sleep 0.5
  after=$(counters)
  rx=$(jq -n --argjson x "$before" --argjson y "$after" '$y.a.rx_packets - $x.a.rx_packets')
  dropped=$(jq -n --argjson x "$before" --argjson y "$after" '([$y.a.drops[]] | add) - ([$x.a.drops[]] | add)')
  b_tx=$(jq -n --argjson x "$before" --argjson y "$after" '$y.b.tx_packets - $x.b.tx_packets')
  # Frames the kernel dropped before netstackd read them (a veth pod's socket buffer or
  # receive ring full; a burst of 3000 overflows a 30-frame ring) are counted too.
  kq=$(jq -n --argjson x "$before" --argjson y "$after" '($y.a.drops.kernel_queue_full // 0) - ($x.a.drops.kernel_queue_full // 0)')
  if [ "$mode" = plain ]; then
    check "$mode: netstackd read all $sent random frames or counted the kernel's drops (rx +$rx, kernel_queue_full +$kq)" test $((rx + kq)) = "$sent"
  else
    # Pod A's kernel checks a GSO write against its device's features (the TAP's offloads, the
    # veth's) and segments one the device cannot carry whole, e.g. TCP with the ECN flag on a
    # TAP without TSO_ECN: one write can reach netstackd as several frames.
    check "$mode: pod A's kernel handed frames to eth0 for the $sent random writes it took ($handed)" test "${handed:-0}" -gt 0
    check "$mode: netstackd read all $handed or counted the kernel's drops (rx +$rx, kernel_queue_full +$kq)" \
      test $((rx + kq)) = "${handed:-x}"
  fi
  check "$mode: every one is dropped and counted (drops +$dropped)" test "$dropped" = $((rx + kq))
  check "$mode: none reached pod B (tx_packets +$b_tx)" test "$b_tx" = 0
done

log "afterwards"
in_pod "$A" ip link set eth0 mtu 1500
check "the supervisor is the same process ($SUP)" kill -0 "$SUP"
check "the dataplane is the same process ($DP)" test "$(child_pid)" = "$DP"
check "no panic in netstackd's log" sh -c "! grep -qi panick '$WORK/netstackd.log'"
check "ping pod A -> pod B" in_pod "$A" ping -c 3 -i 0.2 -W 2 "$IP_B"
check "ping pod B -> pod A" in_pod "$B" ping -c 3 -i 0.2 -W 2 "$IP_A"
check "ping pod B -> node" in_pod "$B" ping -c 2 -i 0.2 -W 2 "$GATEWAY"
check "1400-byte ping with DF pod B -> pod A" in_pod "$B" ping -c 2 -i 0.2 -W 2 -M do -s 1400 "$IP_A"
log "pod A's drop counters"
ctl stats | jq -c --arg a "$A" '.pods[] | select(.container_id == $a) | .counters.drops'

echo
echo "test_hostile: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
