#!/usr/bin/env bash
# e2e: netstackd as a supervisor. Least privilege (capabilities, seccomp), a dataplane crash
# and a supervisor SIGKILL in the middle of TCP transfers (the same connections complete, bytes
# intact), 20 kill/restart cycles without leaks, pods whose netns vanished while netstackd was
# down, the control socket's guards, and `netstackd cleanup`. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }
status_field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
fd_count() { ls "/proc/$1/fd" | wc -l; }
# settled_fd_count PID: the fd count once start-up work (node logic, metrics) has settled —
# two reads 200 ms apart that agree.
settled_fd_count() {
  local a b i
  a=$(fd_count "$1")
  for i in $(seq 1 25); do
    sleep 0.2
    b=$(fd_count "$1")
    [ "$a" = "$b" ] && break
    a=$b
  done
  echo "$a"
}
# numqueues POD: the TAP's queues, or in veth mode the packet sockets bound to its peer.
numqueues() {
  if [ "$MODE" = veth ]; then
    local idx
    idx=$(in_dp ip -j link show "$(veth_peer "$1")" | jq '.[0].ifindex')
    in_dp awk -v i="$idx" 'NR > 1 && $5 == i' /proc/net/packet | wc -l
  else
    ip -n "$1" -d link show eth0 | grep -o 'numqueues [0-9]*' | cut -d' ' -f2
  fi
}
state_files() { find "$STATE" -name '*.json' | wc -l; }
WORKERS=2

write_conflist
start_netstackd --workers "$WORKERS" || exit 1
A=sup-a-$RUN_ID
B=sup-b-$RUN_ID
IP_A=$(add_pod "$A")
IP_B=$(add_pod "$B")
head -c 40M /dev/urandom >"$WORK/blob"
WANT=$(sha256sum <"$WORK/blob" | cut -d' ' -f1)

# start_slow_transfer PORT: pod A sends the 40 MB blob to pod B over one TCP connection, paced
# over about 4 s (1 MB per 100 ms), so faults can be injected while it runs.
start_slow_transfer() {
  rm -f "$WORK/got"
  in_pod "$B" timeout 90 nc -l -s "$IP_B" -p "$1" >"$WORK/got" &
  RECEIVER=$!
  sleep 0.3
  (for i in $(seq 0 39); do dd if="$WORK/blob" bs=1M skip="$i" count=1 status=none; sleep 0.1; done) |
    in_pod "$A" timeout 90 nc -N "$IP_B" "$1" &
  SENDER=$!
}
finish_transfer() {
  wait "$SENDER"; local s=$?
  wait "$RECEIVER"; local r=$?
  [ "$s" = 0 ] && [ "$r" = 0 ] && [ "$(sha256sum <"$WORK/got" | cut -d' ' -f1)" = "$WANT" ]
}

log "least privilege"
SUP=$NETSTACKD_PID
DP=$(child_pid)
check "the dataplane is a separate child process" test -n "$DP"
# CHOWN is kept because netstackd starts with it (as root): a VM pod's socket may be given to a
# group (vhostSocketGroup); without it at start netstackd runs without it.
check "supervisor CapEff is NET_ADMIN|NET_RAW|SYS_ADMIN|KILL|CHOWN only" test "$(status_field "$SUP" CapEff)" = 0000000000203021
check "supervisor CapPrm is NET_ADMIN|NET_RAW|SYS_ADMIN|KILL|CHOWN only" test "$(status_field "$SUP" CapPrm)" = 0000000000203021
# The bounding set also keeps SETGID|SETUID|SETPCAP, for the dataplane's switch to its own uid.
check "supervisor CapBnd is NET_ADMIN|NET_RAW|SYS_ADMIN|KILL|CHOWN + SETGID|SETUID|SETPCAP only" test "$(status_field "$SUP" CapBnd)" = 00000000002031e1
check "supervisor CapInh and CapAmb are empty" test "$(status_field "$SUP" CapInh)$(status_field "$SUP" CapAmb)" = 00000000000000000000000000000000
for set in CapEff CapPrm CapInh CapAmb CapBnd; do
  check "dataplane $set is empty" test "$(status_field "$DP" "$set")" = 0000000000000000
done
check "dataplane runs under a seccomp filter" test "$(status_field "$DP" Seccomp)" = 2
check "dataplane has no_new_privs" test "$(status_field "$DP" NoNewPrivs)" = 1
check "supervisor has no seccomp filter (it needs setns, netlink)" test "$(status_field "$SUP" Seccomp)" = 0

log "a dataplane crash mid-transfer"
start_slow_transfer 6001
sleep 1
OLD_DP=$(child_pid)
kill -9 "$OLD_DP"
new=
for _ in $(seq 1 20); do
  new=$(child_pid)
  [ -n "$new" ] && [ "$new" != "$OLD_DP" ] && break
  sleep 0.05
done
check "a new dataplane runs within 1 s" test -n "$new" -a "$new" != "$OLD_DP"
check "the same TCP connection completes, 40 MB intact" finish_transfer
check "the supervisor was not restarted" test "$NETSTACKD_PID" = "$SUP"
check "the new dataplane is locked down too" test "$(status_field "$new" Seccomp)$(status_field "$new" CapEff)" = 20000000000000000

log "a syscall outside the seccomp allow-list kills only the dataplane"
stop_netstackd
NETSTACK_DATAPLANE_SELFTEST=forbidden-syscall start_netstackd --workers "$WORKERS"
sleep 1
check "this netstackd injects faults (built with --features netstackd/fault-injection)" \
  grep -q 'fault-injection build' "$WORK/netstackd.log"
check "the dataplane was killed by SIGSYS" grep -q 'dataplane up (it exited: signal: 31 (SIGSYS)' "$WORK/netstackd.log"
check "the supervisor survives and answers" ctl status
stop_netstackd
NETSTACK_DATAPLANE_SELFTEST=thread-panic start_netstackd --workers "$WORKERS"
sleep 1
check "a panicking dataplane thread takes the child down (SIGABRT)" grep -Eq 'exited.*signal: 6 \(SIGABRT\)' "$WORK/netstackd.log"
check "the supervisor survives a dataplane panic and answers" ctl status
stop_netstackd
start_netstackd --workers "$WORKERS"
check "pods restored after the restart" test "$(ctl status | jq .attachments)" = 2

log "supervisor SIGKILL mid-transfer"
start_slow_transfer 6002
sleep 1
OLD_DP=$(child_pid)
check "a dataplane runs before the supervisor is killed (pid ${OLD_DP:-none})" test -n "$OLD_DP"
kill -9 "$NETSTACKD_PID"
wait "$NETSTACKD_PID" 2>/dev/null
sleep 0.3
# dead_or_zombie PID: PID (a non-empty pid) no longer runs: gone, or a zombie not yet reaped.
dead_or_zombie() { [ -n "$1" ] && ! grep -qE '^State:\s+[RSD]' "/proc/$1/status" 2>/dev/null; }
check "the dataplane died with its supervisor" dead_or_zombie "$OLD_DP"
start_netstackd --workers "$WORKERS"
check "the same TCP connection completes, 40 MB intact" finish_transfer
check "both pods restored" test "$(ctl status | jq .attachments)" = 2

log "SIGTERM: clean stop, pods keep their TAPs, and come back"
stop_netstackd
if [ "$MODE" = veth ]; then
  check "pod A's veth is still there, its peer in netstackd's netns" pod_link_is_ours "$A"
else
  check "pod A's TAP is still there, persistent" sh -c "ip -n $A -d link show eth0 | grep -q 'persist on'"
fi
check "the uplink is still there" ip link show "$UPLINK"
check "the socket is gone" test ! -e "$SOCK"
start_netstackd --workers "$WORKERS"
check "ping A -> B after the restart" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$IP_B"

log "20 kill/restart cycles under ping load"
# Every reply is printed with its time (-D): after each kill, replies must come again (through
# the restarted netstackd) before the next kill. ping itself is $PINGER (no subshell), bounded.
ip netns exec "$A" ping -D -i 0.05 -w 300 "$IP_B" >"$WORK/ping.out" 2>&1 &
PINGER=$!
# replies_after TIME: ping.out holds a reply received after TIME (seconds since the epoch).
replies_after() { awk -F'[][]' -v t="$1" '/bytes from/ && $2 > t { found = 1 } END { exit !found }' "$WORK/ping.out"; }
BASE_FDS=$(settled_fd_count "$NETSTACKD_PID")
fds_ok=1
resumed=0
for i in $(seq 1 20); do
  killed_at=$(date +%s.%N)
  kill -9 "$NETSTACKD_PID"
  wait "$NETSTACKD_PID" 2>/dev/null
  start_netstackd --workers "$WORKERS" || { fds_ok=0; break; }
  n=$(settled_fd_count "$NETSTACKD_PID")
  [ "$n" = "$BASE_FDS" ] || { echo "    cycle $i: $n fds, baseline $BASE_FDS"; fds_ok=0; }
  # The bound is for a hang: a restart after which no reply comes is what this counts.
  if eventually 10 replies_after "$killed_at"; then resumed=$((resumed + 1)); else echo "    cycle $i: no reply after the restart"; fi
done
kill -INT "$PINGER" 2>/dev/null; wait "$PINGER" 2>/dev/null
check "supervisor fd count stays at its baseline ($BASE_FDS)" test "$fds_ok" = 1
check "pod A's $MODE device has exactly $WORKERS queues/sockets" test "$(numqueues "$A")" = "$WORKERS"
check "pod B's $MODE device has exactly $WORKERS queues/sockets" test "$(numqueues "$B")" = "$WORKERS"
check "exactly 2 state files, no temporaries" test "$(state_files)" = 2 -a "$(find "$STATE" -name '*.tmp' | wc -l)" = 0
check "one dataplane process" test "$(pgrep -f "netstackd dataplane" -P "$NETSTACKD_PID" | wc -l)" = 1
check "ping replies came again after each of the 20 restarts ($resumed of 20)" test "$resumed" = 20
check "ping A -> B after the cycles" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$IP_B"

log "a pod whose netns vanished while netstackd was down"
stop_netstackd
ip netns del "$B"
start_netstackd --workers "$WORKERS"
check "only pod A is restored" test "$(ctl status | jq .attachments)" = 1
check "pod B's state file is removed" test ! -e "$STATE/${B}:eth0.json"
check "the cleanup is logged with the container id" grep -q "pod is gone, cleaning up.*$B" "$WORK/netstackd.log"
cni DEL "$B" "" >/dev/null
check "ping A -> node still works" in_pod "$A" ping -c 2 -i 0.2 -W 2 "$GATEWAY"

log "the control socket's guards"
check "the socket is root-owned, mode 0600" test "$(stat -c '%U %a' "$SOCK")" = "root 600"
chmod 666 "$SOCK"
out=$(printf '\x00\x00\x00\x0f{"op":"status"}' | setpriv --reuid 65534 --regid 65534 --clear-groups socat -t 2 - "UNIX-CONNECT:$SOCK" 2>&1 | tr -d '\0')
chmod 600 "$SOCK"
check "a non-root peer is refused (SO_PEERCRED)" grep -q 'permission denied: uid 65534' <<<"$out"
sleep 0.2
BASE_FDS=$(fd_count "$NETSTACKD_PID")
ls -l "/proc/$NETSTACKD_PID/fd" >"$WORK/fds.before"
send_fds() { # QUEUES NFDS: an attach announcing QUEUES queues, carrying NFDS fds of /dev/null
  python3 - "$SOCK" "$1" "$2" "${POD_CIDR%.0/24}.77/24" <<'PY'
import json, os, socket, struct, sys
path, queues, nfds, ip = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
req = {"op": "attach", "container_id": "hostile", "ifname": "eth0", "netns": "/proc/1/ns/net",
       "mac": "0a:58:0a:00:00:09", "ips": [ip], "mtu": 1500, "queues": queues}
body = json.dumps(req).encode()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
fds = [os.open("/dev/null", os.O_RDWR) for _ in range(nfds)]
socket.send_fds(s, [struct.pack(">I", len(body)) + body], fds)
n = struct.unpack(">I", s.recv(4))[0]
print(s.recv(n).decode())
PY
}
check "an attach carrying fds that are not TAP queues is refused" grep -q 'is not a TAP queue' <<<"$(send_fds 2 2)"
check "an attach whose fd count does not match is refused" grep -q 'carries 1 fds' <<<"$(send_fds 2 1)"
check "an attach with too many fds is refused" grep -q '"reply":"error"' <<<"$(send_fds 70 70)"
check "refused attaches are logged with the container id" grep -q 'WARN.*attach refused.*container_id=hostile' "$WORK/netstackd.log"
sleep 0.2
ls -l "/proc/$NETSTACKD_PID/fd" >"$WORK/fds.after"
check "refused fds are closed (supervisor fd count back to $BASE_FDS)" test "$(fd_count "$NETSTACKD_PID")" = "$BASE_FDS"
diff "$WORK/fds.before" "$WORK/fds.after" >&2

log "netstackd cleanup"
check "cleanup refuses while netstackd runs" sh -c "! $BIN/netstackd cleanup --socket $SOCK --state-dir $STATE --uplink $UPLINK --dp-netns $DP_NETNS"
stop_netstackd
check "cleanup succeeds once it is stopped" "$BIN/netstackd" cleanup --socket "$SOCK" --state-dir "$STATE" --uplink "$UPLINK" --dp-netns "$DP_NETNS"
check "  ... pod A's $MODE device is gone" sh -c "! ip -n $A link show eth0"
check "  ... netstackd's netns for veth peers is gone" test ! -e "$DP_NETNS"
check "  ... the uplink is gone" sh -c "! ip link show $UPLINK"
check "  ... no state files" test "$(state_files)" = 0

echo
echo "test_supervisor: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
