#!/usr/bin/env bash
# The known-good vhost-user check (not in the CI list: needs dpdk-dev, about 90 MB of
# packages): the test VM of e2e/vm/lib.sh on `-netdev vhost-user` with memfd shared memory,
# served by DPDK's dpdk-testpmd (net_vhost0, --no-huge, rxonly) instead of netstackd. It
# shows that the VM side of a vhost-user attachment works on this host: the guest's
# virtio-net link comes up, the frames it sends (ARP for its gateway while it pings it) reach
# testpmd's port, and the virtio features QEMU and the guest negotiated (testpmd logs them;
# the guest shows its own in sysfs). TESTPMD_VHOST_ARGS adds devargs (e.g. tso=1). Needs
# root, qemu-system-x86, busybox-static, dpdk-dev.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/e2e/checks.sh"
WORK=/tmp/netstack-testpmd.$$
. "$ROOT/e2e/vm/lib.sh"
TESTPMD_PID=
cleanup() {
  vm_cleanup
  if [ -n "$TESTPMD_PID" ]; then
    kill -INT "$TESTPMD_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$TESTPMD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$TESTPMD_PID" 2>/dev/null
    wait "$TESTPMD_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK"
command -v dpdk-testpmd >/dev/null || { echo "testpmd_check: dpdk-testpmd missing (apt-get install dpdk-dev)" >&2; exit 1; }
vm_assets || exit 1
vm_accel

SOCK=$WORK/vhost.sock
log "dpdk-testpmd as the vhost-user backend ($SOCK, rxonly)"
# No hugepages, no PCI, no shared config; a small mbuf pool (the default one does not fit in
# 512 MB of malloc memory); core 0 for the main thread, core 1 forwards.
timeout 300 dpdk-testpmd --no-huge --no-pci -m 512 --no-shconf --file-prefix="nstp$$" -l 0-1 \
  --log-level=lib.vhost:info --vdev "net_vhost0,iface=$SOCK,queues=1${TESTPMD_VHOST_ARGS:+,$TESTPMD_VHOST_ARGS}" \
  -- --forward-mode=rxonly --stats-period 1 --total-num-mbufs=8192 \
  >"$WORK/testpmd.log" 2>&1 </dev/null &
TESTPMD_PID=$!
if eventually 30 test -S "$SOCK"; then ok "testpmd listens on $SOCK"; else fail "testpmd listens"; cat "$WORK/testpmd.log"; exit 1; fi

log "the VM on -netdev vhost-user (memfd shared memory, vectors=0 for TCG)"
MAC=02:00:00:00:00:02
if vm_boot vu "ns.ip=10.0.0.2/24 ns.gw=10.0.0.1" -- -chardev "socket,id=c0,path=$SOCK" \
  -netdev vhost-user,id=n0,chardev=c0 -device "virtio-net-pci,netdev=n0,mac=$MAC,vectors=0"; then
  ok "the VM booted on $VM_ACCEL: $(vm_ready_line vu)"
else
  fail "the VM booted"; tail -20 "$WORK/testpmd.log"; exit 1
fi
# The link comes up when QEMU has started the vhost-user device (a config interrupt after
# the driver's first use), so poll it for up to 10 s in the guest.
state=$(vm_run vu -t 20 'for i in $(seq 100); do [ "$(cat /sys/class/net/eth0/operstate)" = up ] && break; sleep 0.1; done; cat /sys/class/net/eth0/operstate')
check "the guest's virtio-net link is up (operstate $state)" test "$state" = up
gfeat=$(vm_run vu 'cat /sys/bus/virtio/devices/virtio0/features')
log "the guest driver's feature bits (bit 0 first): $gfeat"
rx_packets() { awk '/RX-packets:/ {n = $2} END {print n + 0}' "$WORK/testpmd.log"; }
rx0=$(rx_packets)
vm_run vu -t 30 'ping -c 5 -W 1 10.0.0.1' >/dev/null
eventually 10 sh -c "[ \$(awk '/RX-packets:/ {n = \$2} END {print n + 0}' $WORK/testpmd.log) -ge $((rx0 + 3)) ]"
rx=$(rx_packets)
check "frames the guest sent reached testpmd's port (RX-packets $rx0 -> $rx)" test "$rx" -ge $((rx0 + 3))
log "what testpmd logged of the negotiation"
grep -iE 'negotiated|features|protocol features|VHOST_CONFIG.*(feature|mem|vring)' "$WORK/testpmd.log" | sort -u | head -30
echo "testpmd_check: $PASSES passed, $FAILS failed (VM on $VM_ACCEL)"
[ "$FAILS" = 0 ]
