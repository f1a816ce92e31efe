#!/usr/bin/env bash
# e2e: netstack never leaks or hides a pod's network namespace. A runtime (CRI-O's pinns)
# bind-mounts each pod's netns as a file in a directory that is not a mount point, before the
# first ADD; netstack once made that directory a mount point by binding it onto itself, which
# copied those mounts and hid the originals, so that the runtime's unmount at pod removal left
# the namespace alive. This test plays the runtime on a private mount (as /run is on a node
# where unmounts do not propagate), in TAP and veth mode, with the veth namespace configured
# in the runtime's own directory (the worst case) and a netstackd restart between ADD and DEL;
# then it builds the old netstack's self-bind by hand and checks that netstackd releases the
# namespaces it hid, at start, leaving every visible namespace alone. Needs root.
set -uo pipefail
RT_ROOT=/tmp/nsrt-$$
export DP_NETNS=$RT_ROOT/netns/netstack-dp
. "$(dirname "$0")/lib.sh"

cleanup_all() {
  e2e_cleanup
  umount -l "$RT_ROOT" 2>/dev/null
  rmdir "$RT_ROOT" 2>/dev/null
}
trap cleanup_all EXIT

# nsfs_mounted PATH: some nsfs mount (visible or hidden) sits at PATH in our mount table.
nsfs_mounted() { awk -v p="$1" '$5 == p && $0 ~ / - nsfs / {f = 1} END {exit !f}' /proc/self/mountinfo; }
# pinns PATH: what the runtime does for a new pod: a file and a new netns bind-mounted on it.
pinns() { touch "$1" && unshare --net="$1" true && nsenter --net="$1" ip link set lo up; }
# runtime_remove PATH: what the runtime does when the pod goes: unmount, then remove the file.
runtime_remove() { umount "$1" && rm "$1"; }
in_ns() { local ns=$1; shift; nsenter --net="$ns" "$@"; }

# A private tmpfs standing in for the node's /run; the runtime's netns directory inside it is
# not a mount point.
mkdir -p "$RT_ROOT"
mount -t tmpfs -o size=1m netstack-e2e-run "$RT_ROOT" && mount --make-private "$RT_ROOT" || exit 1
RT=$RT_ROOT/netns
mkdir -p "$RT"

for MODE in tap veth; do
  log "$MODE mode: pod namespaces mounted by the runtime before the first ADD"
  write_conflist
  start_netstackd || exit 1
  pods=()
  for i in 1 2 3; do
    p=$RT/$MODE-p$i
    pinns "$p" || fail "runtime made $p"
    pods+=("$p")
  done
  ips=()
  for p in "${pods[@]}"; do
    r=$(cni ADD "$(basename "$p")-$RUN_ID" "$p") && ok "ADD $(basename "$p")" || fail "ADD $(basename "$p"): $r"
    ips+=("$(jq -r '.ips[0].address' <<<"$r" | cut -d/ -f1)")
  done
  check "$MODE: the runtime's directory was not made a mount point" sh -c "! mountpoint -q $RT"
  [ "$MODE" = veth ] && check "veth: the peers' namespace exists in the runtime's directory" test -e "$DP_NETNS"
  check "$MODE: pod 1 pings pod 2" in_ns "${pods[0]}" ping -c 2 -W 2 -i 0.2 "${ips[1]}"

  log "$MODE mode: netstackd restarts, then the pods go"
  stop_netstackd
  start_netstackd || exit 1
  check "$MODE: after the restart pod 2 pings pod 3" in_ns "${pods[1]}" ping -c 2 -W 2 -i 0.2 "${ips[2]}"
  for p in "${pods[@]}"; do
    check "DEL $(basename "$p")" cni DEL "$(basename "$p")-$RUN_ID" "$p"
    if runtime_remove "$p" 2>"$WORK/rm.err"; then ok "$MODE: runtime unmounts and removes $(basename "$p")"; else fail "$MODE: runtime cannot remove $(basename "$p"): $(cat "$WORK/rm.err")"; fi
    check "$MODE: no nsfs mount of $(basename "$p") is left, visible or hidden" sh -c "! awk -v p=$p '\$5 == p && / - nsfs /' /proc/self/mountinfo | grep -q ."
  done
  stop_netstackd
  if mountpoint -q "$DP_NETNS"; then umount "$DP_NETNS"; fi
  rm -f "$DP_NETNS" "$WORK/rm.err"
  ip link del "$UPLINK" 2>/dev/null
done
check "the runtime's directory is empty again" sh -c "[ -z \"\$(ls -A $RT)\" ]"
check "nothing is mounted in it" sh -c "! awk -v d=$RT/ 'index(\$5, d) == 1' /proc/self/mountinfo | grep -q ."

log "an older netstack's self-bind hides namespaces: netstackd releases them at start"
OLD=$RT_ROOT/old
mkdir -p "$OLD"
pinns "$OLD/q1" && pinns "$OLD/q2" || fail "runtime made q1, q2"
# What netstack before 0.2 did at its first veth ADD (as `ip netns add` does):
mount --rbind "$OLD" "$OLD" && mount --make-rshared "$OLD" || fail "old self-bind"
pinns "$OLD/q3" || fail "runtime made q3 after the self-bind"
umount "$OLD/q1" || fail "runtime unmounts q1"
check "precondition: q1's file cannot be removed (EBUSY)" sh -c "! rm $OLD/q1 2>/dev/null"
check "precondition: q1's namespace is still mounted, hidden" nsfs_mounted "$OLD/q1"
DP_NETNS=$OLD/netstack-dp
start_netstackd || exit 1
check "netstackd logged the release" grep -q "released network namespaces hidden" "$WORK/netstackd.log"
check "q1 is no longer mounted anywhere" sh -c "! awk -v p=$OLD/q1 '\$5 == p && / - nsfs /' /proc/self/mountinfo | grep -q ."
check "q1's file was removed" test ! -e "$OLD/q1"
check "q2 (still the runtime's) is a network namespace" in_ns "$OLD/q2" ip link show lo
check "q3 (mounted after the self-bind) is a network namespace" in_ns "$OLD/q3" ip link show lo
check "the self-bind is still in place" mountpoint -q "$OLD"
check "q2 is removable by the runtime, and leaves nothing" sh -c "umount $OLD/q2 && rm $OLD/q2 && ! awk -v p=$OLD/q2 '\$5 == p' /proc/self/mountinfo | grep -q ."
check "q3 is removable by the runtime" runtime_remove "$OLD/q3"
stop_netstackd

echo "netns leak: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
