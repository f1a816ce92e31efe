#!/usr/bin/env bash
# e2e: a real VM in a netstack TAP pod, attached the way Kata Containers attaches a VM to a
# veth by default ("tcfilter" internetworking): a TAP tap0_kata in the pod's netns, joined to
# the pod's eth0 by tc ingress + mirred redirect both ways, QEMU's own `-netdev tap` on it, the
# pod's address moved into the guest and its MAC given to the guest's virtio-net. This is the
# baseline the vhost-user attachment (issue 19) is measured against. The VM is Debian's cloud
# kernel with a busybox initramfs (e2e/vm/), on KVM when a probe boot works and on TCG
# otherwise. Rows: the guest pings the gateway and a second (plain) TAP pod, that pod pings
# the guest, 64 MiB each way guest <-> pod with a sha256 check (through netstackd: pod K's
# counters carry them), and the teardown (VM stopped, Kata's tap0_kata and filters removed,
# CNI DEL, netns deleted) leaves no QEMU, no tap0_kata, no netns and no attachment. Needs
# root, qemu-system-x86 and busybox-static (scripts/deps.sh).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$ROOT/e2e/vm/lib.sh"
cleanup() {
  vm_cleanup
  e2e_cleanup
}
trap cleanup EXIT

MIB64=67108864

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
start_netstackd || exit 1
K=vm-kata-$RUN_ID
P=vm-pod-$RUN_ID
IP_K=$(add_pod "$K") && ok "ADD pod K, the VM's sandbox ($IP_K)" || fail "ADD pod K"
IP_P=$(add_pod "$P") && ok "ADD pod P, a plain TAP pod ($IP_P)" || fail "ADD pod P"
CIDR_K=$(jq -r '.ips[0].address' "$WORK/$K.result.json")
GW=$(jq -r '.ips[0].gateway' "$WORK/$K.result.json")
MAC_K=$(ip -n "$K" -j link show eth0 | jq -r '.[0].address')
MTU_K=$(ip -n "$K" -j link show eth0 | jq -r '.[0].mtu')

log "Kata's tcfilter internetworking in pod K's netns"
vm_kata_tap "$K" || fail "tap0_kata and the tc filters in pod K's netns"
check "pod K's eth0 keeps no address (moved into the guest)" \
  test "$(ip -n "$K" -j addr show dev eth0 | jq '[.[0].addr_info[] | select(.family == "inet")] | length')" = 0
check "eth0 -> tap0_kata and tap0_kata -> eth0 redirects in place" sh -c \
  "tc -n $K filter show dev eth0 ingress | grep -q 'Egress Redirect to device tap0_kata' &&
   tc -n $K filter show dev tap0_kata ingress | grep -q 'Egress Redirect to device eth0'"

log "boot the VM in pod K's netns (QEMU -netdev tap on tap0_kata, the pod's MAC and IP)"
t0=$SECONDS
vm_nic_tap "$MAC_K"
if VM_LAUNCH="ip netns exec $K" vm_boot kata "ns.ip=$CIDR_K ns.gw=$GW ns.mtu=$MTU_K" -- "${VM_NIC[@]}"; then
  ok "the VM booted to its shell on $VM_ACCEL in $((SECONDS - t0)) s"
else
  fail "the VM booted"
  exit 1
fi
ready=$(vm_ready_line kata)
check "the guest's eth0 has the pod's MAC and address ($ready)" \
  grep -q "net=eth0 $MAC_K $CIDR_K gw $GW mtu $MTU_K" <<<"$ready"
drv=$(vm_run kata 'basename $(readlink /sys/class/net/eth0/device/driver)')
check "the guest's eth0 is driven by virtio_net ($drv)" test "$drv" = virtio_net

log "ping"
out=$(vm_run kata -t 40 "ping -c 3 -W 10 $GW")
check "the guest pings the gateway $GW ($(grep -o '[0-9]* packets received' <<<"$out"))" grep -q ' 3 packets received' <<<"$out"
out=$(vm_run kata -t 40 "ping -c 3 -W 10 $IP_P")
check "the guest pings pod P $IP_P ($(grep -o '[0-9]* packets received' <<<"$out"))" grep -q ' 3 packets received' <<<"$out"
out=$(in_pod "$P" ping -c 3 -W 10 "$IP_K" 2>&1)
check "pod P pings the guest $IP_K ($(grep -o '[0-9]* received' <<<"$out"))" grep -q ' 3 received' <<<"$out"

log "64 MiB each way, guest <-> pod P, sha256 checked"
head -c "$MIB64" /dev/urandom >"$WORK/to_guest"
want=$(sha256sum <"$WORK/to_guest" | cut -d' ' -f1)
tx0=$(pod_counter "$K" .tx_bytes)
# The guest's nc gets stdin from a sleep (no data, no EOF) so that it only ends at the
# sender's EOF; sha256sum writes its line when it does.
vm_run kata "sleep 600 | nc -l -p 5001 | sha256sum >/tmp/h1 &" >/dev/null
sleep 1
t0=$SECONDS
in_pod "$P" timeout 300 nc -N "$IP_K" 5001 <"$WORK/to_guest"
sent=$?
got=
for _ in $(seq 60); do
  got=$(vm_run kata 'cat /tmp/h1 2>/dev/null' | cut -d' ' -f1)
  [ -n "$got" ] && break
  sleep 1
done
secs=$((SECONDS - t0))
vm_run kata 'killall sleep' >/dev/null
check "pod P -> guest: 64 MiB sent (nc status $sent) and the guest's sha256 matches (${got:0:12}…, ${secs}s)" \
  test "$sent" = 0 -a "$got" = "$want"
tx=$(($(pod_counter "$K" .tx_bytes) - tx0))
check "  ... through netstackd: pod K's tx_bytes grew by >= 64 MiB ($tx)" test "$tx" -ge "$MIB64"

want=$(vm_run kata -t 120 "head -c $MIB64 /dev/urandom >/tmp/out && sha256sum /tmp/out" | cut -d' ' -f1)
rx0=$(pod_counter "$K" .rx_bytes)
in_pod "$P" timeout 300 nc -l -s "$IP_P" -p 5002 </dev/null | sha256sum >"$WORK/h2" &
srv=$!
sleep 0.5
t0=$SECONDS
vm_run kata -t 300 "nc $IP_P 5002 </tmp/out; rm -f /tmp/out" >/dev/null
sent=$?
wait "$srv"
got=$(cut -d' ' -f1 "$WORK/h2")
check "guest -> pod P: 64 MiB sent (status $sent) and pod P's sha256 matches (${got:0:12}…, $((SECONDS - t0))s)" \
  test "$sent" = 0 -a -n "$want" -a "$got" = "$want"
rx=$(($(pod_counter "$K" .rx_bytes) - rx0))
check "  ... through netstackd: pod K's rx_bytes grew by >= 64 MiB ($rx)" test "$rx" -ge "$MIB64"

log "teardown: VM stopped, Kata's TAP and filters removed, CNI DEL of both pods"
qpid=${VM_PID[kata]}
vm_stop kata
check "QEMU (pid $qpid) is gone" sh -c "! kill -0 $qpid 2>/dev/null"
vm_kata_tap_del "$K"
check "no tap0_kata in pod K's netns" sh -c "! ip -n $K link show tap0_kata"
check "CNI DEL pod K" cni DEL "$K" "/run/netns/$K"
check "CNI DEL pod P" cni DEL "$P" "/run/netns/$P"
check "pod K's eth0 is gone" sh -c "! ip -n $K link show eth0"
ip netns del "$K"
ip netns del "$P"
check "both netns are gone" sh -c "! ip netns list | grep -q -e $K -e $P"
check "netstackd holds no attachment" test "$(ctl list | jq length)" = 0
no_qemu_left() { ! pgrep -f "^qemu-system-x86_64 .*$VM_WORK/" >/dev/null; }
check "no QEMU of this run left (none with a console under $VM_WORK)" no_qemu_left

echo "test_vm: $PASSES passed, $FAILS failed (VM on $VM_ACCEL)"
[ "$FAILS" = 0 ]
