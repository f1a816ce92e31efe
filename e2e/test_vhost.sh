#!/usr/bin/env bash
# e2e: a real VM on netstackd's vhost-user socket (issue 19). A pod V made by CNI ADD with
# `"mode": "vhost-user"` in its own netns (a placeholder dummy eth0 with the pod's MAC and
# address, a vhost-user server socket in the result's socketPath), a plain TAP pod P, and the
# test VM (e2e/vm/) started in V's netns as Kata would, its virtio-net on V's socketPath with
# V's MAC and address (QEMU the vhost-user client, reconnect=1). Rows:
#   - the guest pings the gateway and P, P pings it, V's counters in netstackd move;
#   - 64 MiB each way with a sha256 check, guest <-> P and guest <-> the node (the host netns,
#     through netstackd's uplink, at the pods' gateway address);
#   - a frame from a second address the guest gives itself is dropped and counted spoofed,
#     and P never sees it;
#   - kill -9 of the dataplane child during a 64 MiB transfer (pod P's side shaped so that it
#     is still running): a new child, the same vhost-user connection (QEMU's socket, no log
#     line, the guest's carrier never dropped), the transfer completes with the right sha256;
#   - kill -9 of the supervisor (and so its child) and netstackd started again on the same
#     state dir: QEMU reconnects (a new connection), the guest pings P again, a transfer after
#     it is intact;
#   - CNI CHECK passes while the VM runs; DEL while QEMU runs: QEMU sees the disconnect (the
#     guest's link goes down), the socket, the dummy and the pod's state are gone;
#   - Kata's discovery path: a pod K with `"kataVhostUser": true`, QEMU on
#     /tmp/vhostuser_<IP>/vhu.sock, the guest pings the gateway; DEL removes that link;
#   - at the end no QEMU, netns or attachment is left.
# netstackd runs two workers and QEMU offers two queue pairs (queues=2); the one-vCPU guest
# enables one, so pair 0 is read by worker 0 and both workers write to the guest through it.
# Every wait is bounded.
# Needs root, qemu-system-x86, busybox-static, iperf3 (scripts/deps.sh). About a minute on 2
# cores under TCG.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$ROOT/e2e/vm/lib.sh"
V=vu-vm-$RUN_ID
P=vu-pod-$RUN_ID
K=vu-kata-$RUN_ID
VU_CONFLIST=$WORK/vhost-user.conflist
KATA_CONFLIST=$WORK/vhost-user-kata.conflist
VHOST_DIR=$WORK/vhost
MIB64=67108864
cleanup() {
  vm_cleanup
  [ -e "/run/netns/$V" ] && CONFLIST=$VU_CONFLIST cni DEL "$V" "/run/netns/$V" >/dev/null 2>&1
  [ -e "/run/netns/$K" ] && CONFLIST=$KATA_CONFLIST cni DEL "$K" "/run/netns/$K" >/dev/null 2>&1
  e2e_cleanup
}
trap cleanup EXIT

log "the VM: kernel and initramfs (cached in $VM_CACHE), accelerator"
if vm_assets; then
  ok "kernel $(cat "$(dirname "$VM_KERNEL")/release") and initramfs $(basename "$VM_INITRD") ready"
else
  fail "kernel and initramfs"
  exit 1
fi
vm_accel
log "the VM runs on $VM_ACCEL ($VM_ACCEL_WHY)"

write_conflist
# 1.1.0: the result's socketPath is a CNI 1.1 field (a 1.0.0 result has none).
jq '.cniVersion = "1.1.0" | .plugins[0].mode = "vhost-user"' "$CONFLIST" >"$VU_CONFLIST"
jq '.cniVersion = "1.1.0" | .plugins[0].mode = "vhost-user" | .plugins[0].kataVhostUser = true' "$CONFLIST" >"$KATA_CONFLIST"
# Two workers on one enabled queue pair: see the header.
NS_ARGS=(--workers 2 --vhost-dir "$VHOST_DIR")
start_netstackd "${NS_ARGS[@]}" || exit 1
child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }
# attached ID: how many attachments netstackd lists for the container ID.
attached() { ctl list | jq --arg id "$1" '[.[] | select(.container_id == $id)] | length'; }
# cni_del CONFLIST NAME: CNI DEL of the pod NAME with that conflist.
cni_del() { CONFLIST=$1 cni DEL "$2" "/run/netns/$2"; }

IP_P=$(add_pod "$P") && ok "ADD pod P, a plain TAP pod ($IP_P)" || fail "ADD pod P"
IP_V=$(CONFLIST=$VU_CONFLIST add_pod "$V") && ok "ADD pod V, mode vhost-user ($IP_V)" || {
  fail "ADD pod V (vhost-user)"
  exit 1
}
RES_V=$WORK/$V.result.json
SOCK_V=$(jq -r '[.interfaces[] | select(.socketPath)][0].socketPath // empty' "$RES_V")
MAC_V=$(jq -r '[.interfaces[] | select(.socketPath)][0].mac // empty' "$RES_V")
CIDR_V=$(jq -r '.ips[0].address' "$RES_V")
GW=$(jq -r '.ips[0].gateway' "$RES_V")
check "V's result: an interface with socketPath under --vhost-dir ($SOCK_V) and a MAC ($MAC_V)" \
  test "${SOCK_V#"$VHOST_DIR"/}" != "$SOCK_V" -a -n "$MAC_V"
check "  ... a unix socket, root's, mode 0600 ($(stat -c '%F %U %a' "$SOCK_V" 2>&1))" \
  test "$(stat -c '%F %U %a' "$SOCK_V")" = "socket root 600"
check "  ... pod V's eth0 is a placeholder (dummy, or ifb without dummy) with the pod's MAC and address" sh -c \
  "ip -n $V -d link show eth0 | grep -qw -e dummy -e ifb &&
   ip -n $V -j link show eth0 | jq -e '.[0].address == \"$MAC_V\"' &&
   ip -n $V -j addr show eth0 | jq -e '[.[0].addr_info[] | \"\(.local)/\(.prefixlen)\"] | index(\"$CIDR_V\")'"

log "boot the VM in pod V's netns on its vhost-user socket (V's MAC and address)"
vm_nic_vhost "$SOCK_V" "$MAC_V" 2
t0=$SECONDS
if VM_LAUNCH="ip netns exec $V" vm_boot vu "ns.ip=$CIDR_V ns.gw=$GW ns.mtu=1500" -- "${VM_NIC[@]}"; then
  ok "the VM booted to its shell on $VM_ACCEL in $((SECONDS - t0)) s"
else
  fail "the VM booted"
  tail -5 "$WORK/netstackd.log"
  exit 1
fi
QPID=${VM_PID[vu]}
ready=$(vm_ready_line vu)
check "the guest's eth0 has V's MAC and address ($ready)" grep -q "net=eth0 $MAC_V $CIDR_V gw $GW" <<<"$ready"
# operstate: QEMU raises the link once netstackd has the device running.
state=$(vm_run vu -t 30 'for i in $(seq 200); do [ "$(cat /sys/class/net/eth0/operstate)" = up ] && break; sleep 0.1; done; cat /sys/class/net/eth0/operstate')
check "the guest's virtio-net link is up ($state)" test "$state" = up

log "ping"
rx0=$(pod_counter "$V" .rx_packets)
tx0=$(pod_counter "$V" .tx_packets)
out=$(vm_run vu -t 40 "ping -c 3 -W 10 $GW")
check "the guest pings the gateway $GW ($(grep -o '[0-9]* packets received' <<<"$out"))" grep -q ' 3 packets received' <<<"$out"
out=$(vm_run vu -t 40 "ping -c 3 -W 10 $IP_P")
check "the guest pings pod P $IP_P ($(grep -o '[0-9]* packets received' <<<"$out"))" grep -q ' 3 packets received' <<<"$out"
out=$(in_pod "$P" ping -c 3 -W 10 "$IP_V" 2>&1)
check "pod P pings the guest $IP_V ($(grep -o '[0-9]* received' <<<"$out"))" grep -q ' 3 received' <<<"$out"
rx=$(($(pod_counter "$V" .rx_packets) - rx0))
tx=$(($(pod_counter "$V" .tx_packets) - tx0))
check "netstackd's counters for V moved: rx_packets +$rx, tx_packets +$tx (>= 9 each)" test "$rx" -ge 9 -a "$tx" -ge 9

# Transfers: 64 MiB of random bytes, the receiver's sha256 against the sender's.
head -c "$MIB64" /dev/urandom >"$WORK/to_guest"
WANT_IN=$(sha256sum <"$WORK/to_guest" | cut -d' ' -f1)
WANT_OUT=$(vm_run vu -t 120 "head -c $MIB64 /dev/urandom >/tmp/out && sha256sum /tmp/out" | cut -d' ' -f1)
# from_host WHERE: runs the rest in pod P (pod) or in the node's netns (node).
from_host() {
  local where=$1
  shift
  if [ "$where" = pod ]; then in_pod "$P" "$@"; else "$@"; fi
}
# start_to_guest WHERE PORT: the guest listens on PORT (its sha256 into /tmp/hPORT), WHERE sends
# $WORK/to_guest in the background ($XFER_PID).
start_to_guest() {
  # The guest's nc gets stdin from a sleep (no data, no EOF) so that it only ends at the
  # sender's EOF; sha256sum writes its line when it does.
  vm_run vu "rm -f /tmp/h$2; sleep 600 | nc -l -p $2 | sha256sum >/tmp/h$2 &" >/dev/null
  sleep 1
  from_host "$1" timeout 300 nc -N "$IP_V" "$2" <"$WORK/to_guest" &
  XFER_PID=$!
}
# finish_to_guest PORT: waits for the sender; sets SENT (its status) and GOT (the guest's
# sha256), with bounded waits.
finish_to_guest() {
  local got=
  wait "$XFER_PID"
  SENT=$?
  for _ in $(seq 60); do
    got=$(vm_run vu "cat /tmp/h$1 2>/dev/null" | cut -d' ' -f1)
    [ -n "$got" ] && break
    sleep 1
  done
  vm_run vu 'killall sleep' >/dev/null
  GOT=${got:-none}
}
# from_guest WHERE PORT: the guest sends /tmp/out to a listener in WHERE (at P's address or the
# gateway on the node); sets SENT (the guest's nc status) and GOT (the receiver's sha256).
from_guest() {
  local where=$1 port=$2 addr=$IP_P srv
  [ "$where" = node ] && addr=$GATEWAY
  from_host "$where" timeout 300 nc -l -s "$addr" -p "$port" </dev/null | sha256sum >"$WORK/h$port" &
  srv=$!
  sleep 0.5
  vm_run vu -t 300 "nc $addr $port </tmp/out" >/dev/null
  SENT=$?
  wait "$srv"
  GOT=$(cut -d' ' -f1 "$WORK/h$port")
}

log "64 MiB each way with a sha256 check: guest <-> pod P, guest <-> node"
port=5100
for where in pod node; do
  port=$((port + 1))
  t0=$SECONDS
  start_to_guest "$where" "$port"
  finish_to_guest "$port"
  check "$where -> guest: 64 MiB sent (status $SENT), the guest's sha256 matches (${GOT:0:12}…, $((SECONDS - t0)) s)" \
    test "$SENT" = 0 -a "$GOT" = "$WANT_IN"
  port=$((port + 1))
  t0=$SECONDS
  rx0=$(pod_counter "$V" .rx_bytes)
  from_guest "$where" "$port"
  rx=$(($(pod_counter "$V" .rx_bytes) - rx0))
  check "guest -> $where: 64 MiB sent (status $SENT), the receiver's sha256 matches (${GOT:0:12}…, $((SECONDS - t0)) s)" \
    test "$SENT" = 0 -a -n "$WANT_OUT" -a "$GOT" = "$WANT_OUT"
  check "  ... through netstackd: V's rx_bytes grew by >= 64 MiB ($rx)" test "$rx" -ge "$MIB64"
done

log "anti-spoofing: a frame from an address that is not V's"
SPOOF=${CIDR_V%.*/*}.250
sp0=$(pod_counter "$V" .drops.spoofed)
in_pod "$P" timeout 20 tcpdump -l -n -i eth0 "src host $SPOOF" >"$WORK/spoof.pcap.txt" 2>/dev/null &
DUMP=$!
sleep 1
out=$(vm_run vu -t 30 "ip addr add $SPOOF/32 dev eth0 && ping -c 3 -W 2 -I $SPOOF $IP_P; ip addr del $SPOOF/32 dev eth0")
sp=$(($(pod_counter "$V" .drops.spoofed) - sp0))
sleep 1
kill "$DUMP" 2>/dev/null
wait "$DUMP" 2>/dev/null
check "the guest's pings from $SPOOF got no reply ($(grep -o '[0-9]* packets received' <<<"$out"))" grep -q ' 0 packets received' <<<"$out"
check "  ... netstackd counted V's frames from it as spoofed (+$sp, >= 3)" test "$sp" -ge 3
check "  ... and pod P never saw a packet from $SPOOF ($(wc -l <"$WORK/spoof.pcap.txt") lines)" test ! -s "$WORK/spoof.pcap.txt"

# qemu_sockets: QEMU's socket inodes (the vhost-user connection and its console), sorted.
qemu_sockets() { find "/proc/$QPID/fd" -type l -printf '%l\n' 2>/dev/null | grep '^socket:' | sort | tr '\n' ' '; }
carrier_changes() { vm_run vu 'cat /sys/class/net/eth0/carrier_changes'; }

log "kill -9 of the dataplane child during a 64 MiB transfer pod P -> guest"
# P's egress is shaped to 100 Mbit/s (about 5 s for 64 MiB) so that the kill lands mid-way.
tc -n "$P" qdisc add dev eth0 root tbf rate 100mbit burst 64kb latency 500ms
socks0=$(qemu_sockets)
cc0=$(carrier_changes)
qlog0=$(wc -c <"$VM_WORK/vu/qemu.log")
tx0=$(pod_counter "$V" .tx_bytes)
start_to_guest pod 5201
tx_over() { [ "$(pod_counter "$V" .tx_bytes)" -gt "$1" ]; }
eventually 30 tx_over $((tx0 + 4 * 1048576))
OLD_DP=$(child_pid)
moved=$(($(pod_counter "$V" .tx_bytes) - tx0))
kill -9 "$OLD_DP"
new=
for _ in $(seq 50); do
  new=$(child_pid)
  [ -n "$new" ] && [ "$new" != "$OLD_DP" ] && break
  sleep 0.1
done
check "the kill landed mid-transfer ($moved of $MIB64 bytes had reached the guest)" test "$moved" -gt 0 -a "$moved" -lt "$MIB64"
check "the supervisor started a new dataplane (pid $OLD_DP -> ${new:-none})" test -n "$new" -a "$new" != "$OLD_DP"
finish_to_guest 5201
check "the transfer completed (status $SENT) and the guest's sha256 matches (${GOT:0:12}…)" \
  test "$SENT" = 0 -a "$GOT" = "$WANT_IN"
check "QEMU kept its vhost-user connection (the same sockets: $socks0)" test "$(qemu_sockets)" = "$socks0"
check "QEMU logged nothing ($(tail -c +$((qlog0 + 1)) "$VM_WORK/vu/qemu.log" | head -c 200))" \
  test "$(wc -c <"$VM_WORK/vu/qemu.log")" = "$qlog0"
cc=$(carrier_changes)
check "the guest's link never went down (carrier_changes $cc0 -> $cc)" test -n "$cc" -a "$cc" = "$cc0"
tc -n "$P" qdisc del dev eth0 root

log "netstackd restarted (supervisor and child killed, started again on the same state dir)"
kill -9 "$NETSTACKD_PID"
wait "$NETSTACKD_PID" 2>/dev/null
start_netstackd "${NS_ARGS[@]}"
check "netstackd is back with V's attachment" test "$(attached "$V")" = 1
# QEMU retries the socket every second (reconnect=1), then negotiates again.
reconnected() { [ "$(qemu_sockets)" != "$socks0" ] && vm_run vu -t 10 "ping -c 1 -W 2 $IP_P" >/dev/null; }
if eventually 60 reconnected; then ok "QEMU reconnected (a new connection) and the guest pings P again"; else
  fail "QEMU reconnected and the guest pings P again (sockets: $(qemu_sockets))"
fi
check "QEMU is still running" vm_alive vu
out=$(vm_run vu -t 40 "ping -c 3 -W 10 $IP_P")
check "the guest pings pod P ($(grep -o '[0-9]* packets received' <<<"$out"))" grep -q ' 3 packets received' <<<"$out"
start_to_guest pod 5202
finish_to_guest 5202
check "pod P -> guest after the restart: 64 MiB (status $SENT), sha256 matches (${GOT:0:12}…)" \
  test "$SENT" = 0 -a "$GOT" = "$WANT_IN"
from_guest pod 5203
check "guest -> pod P after the restart: 64 MiB (status $SENT), sha256 matches (${GOT:0:12}…)" \
  test "$SENT" = 0 -a "$GOT" = "$WANT_OUT"

log "CNI CHECK while the VM runs, DEL while QEMU runs"
# cni_check CONFLIST NAME: CHECK with the ADD result as prevResult, as a runtime calls it.
cni_check() {
  jq -c --slurpfile r "$WORK/$2.result.json" '.plugins[0] + {cniVersion: .cniVersion, name: .name, prevResult: $r[0]}' "$1" |
    env CNI_COMMAND=CHECK CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$2" CNI_IFNAME=eth0 \
      CNI_PATH="$BIN:$REF_CNI" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$2" "$BIN/netstack"
}
check "CNI CHECK of pod V passes" cni_check "$VU_CONFLIST" "$V"
socks1=$(qemu_sockets)
check "CNI DEL pod V (QEMU still running)" cni_del "$VU_CONFLIST" "$V"
state=$(vm_run vu -t 30 'for i in $(seq 200); do [ "$(cat /sys/class/net/eth0/operstate)" = down ] && break; sleep 0.1; done; cat /sys/class/net/eth0/operstate')
check "QEMU saw the disconnect: the guest's link is down ($state), its connection closed" \
  test "$state" = down -a "$(qemu_sockets)" != "$socks1"
check "V's socket is gone" test ! -e "$SOCK_V"
check "V's dummy eth0 is gone" sh -c "! ip -n $V link show eth0"
check "V has no state file left" sh -c "! grep -rlq -- '$V' '$STATE'"
check "netstackd holds no attachment for V" test "$(attached "$V")" = 0
vm_stop vu
check "QEMU (pid $QPID) is gone" sh -c "! kill -0 $QPID 2>/dev/null"

log "Kata's discovery path: kataVhostUser, QEMU on /tmp/vhostuser_<IP>/vhu.sock"
IP_K=$(CONFLIST=$KATA_CONFLIST add_pod "$K") && ok "ADD pod K with kataVhostUser ($IP_K)" || fail "ADD pod K"
KATA_SOCK=/tmp/vhostuser_$IP_K/vhu.sock
MAC_K=$(ip -n "$K" -j link show eth0 | jq -r '.[0].address')
CIDR_K=$(jq -r '.ips[0].address' "$WORK/$K.result.json")
check "$KATA_SOCK is a socket" test -S "$KATA_SOCK"
vm_nic_vhost "$KATA_SOCK" "$MAC_K"
if VM_LAUNCH="ip netns exec $K" vm_boot kata "ns.ip=$CIDR_K ns.gw=$GW ns.mtu=1500" -- "${VM_NIC[@]}"; then
  out=$(vm_run kata -t 40 "ping -c 1 -W 20 $GW")
  check "the guest on Kata's path pings the gateway ($(grep -o '[0-9]* packets received' <<<"$out"))" grep -q ' 1 packets received' <<<"$out"
else
  fail "the VM on Kata's socket booted"
fi
check "CNI DEL pod K (QEMU still running)" cni_del "$KATA_CONFLIST" "$K"
check "the Kata link /tmp/vhostuser_$IP_K is gone" test ! -e "/tmp/vhostuser_$IP_K"
vm_stop kata

log "teardown"
check "CNI DEL pod P" cni DEL "$P" "/run/netns/$P"
for n in "$V" "$K" "$P"; do ip netns del "$n" 2>/dev/null; done
check "the three netns are gone" sh -c "! ip netns list | grep -q -e $V -e $K -e $P"
check "netstackd holds no attachment" test "$(ctl list | jq length)" = 0
no_qemu_left() { ! pgrep -f "^qemu-system-x86_64 .*$VM_WORK/" >/dev/null; }
check "no QEMU of this run left (none with a console under $VM_WORK)" no_qemu_left

echo "test_vhost: $PASSES passed, $FAILS failed (VM on $VM_ACCEL)"
[ "$FAILS" = 0 ]
