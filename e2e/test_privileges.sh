#!/usr/bin/env bash
# e2e: the dataplane's least privilege. `netstackd dataplane-selftest` tries each forbidden
# call in a process locked down exactly as the dataplane child is (one row per probe: killed
# by SIGSYS, clone3 -> ENOSYS, the calls the dataplane needs still allowed, and without the
# filter the new uid cannot become root again nor signal a root process). Then a running
# netstackd in TAP mode, veth mode with another --dataplane-user, and veth mode with
# --veth-rx ring: every thread of its dataplane child shows the non-root uid/gid, no
# capability in any set, no_new_privs and both seccomp filters in /proc, pods still forward
# and a capture still arrives; the dataplane dies with its supervisor. Two TAP rounds read TAP
# queues through io_uring (the default `--tap-io auto`, which takes it here, and `--tap-io
# uring`; the probes io-uring-* show that a ring made before the lock-down only reads and
# writes, and that io_uring_setup and io_uring_register kill the dataplane), one with
# `--tap-io readv`, and `ctl status` says which. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT
mkdir -p "$WORK"

log "netstackd dataplane-selftest"
"$BIN/netstackd" dataplane-selftest >"$WORK/selftest.out" 2>&1
rc=$?
sed 's/^/    /' "$WORK/selftest.out"
for probe in uid-gid capabilities setuid-root kill-root clone3 thread clone-process \
  prctl-set-name prctl-other mmap-rw guest-memory mmap-exec mprotect-exec tgkill-own tgkill-other kill \
  execve open socket io-uring-setup io-uring-enter io-uring-nop io-uring-register forbidden-syscall; do
  row=$(grep -E "^(PASS|FAIL) $probe: " "$WORK/selftest.out" | head -1)
  check "selftest $probe: ${row#* $probe: }" grep -q "^PASS $probe: " "$WORK/selftest.out"
done
check "the self-test exits 0 (every probe passed)" test "$rc" = 0
check "the self-test refuses to run the dataplane as root" \
  sh -c "! '$BIN/netstackd' dataplane-selftest --user 0:0"
check "netstackd refuses --dataplane-user root, naming the problem" \
  sh -c "'$BIN/netstackd' --pod-cidr 10.0.0.0/24 --dataplane-user root 2>&1 | grep -q 'must not run as root'"

child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }
# every_thread PID FIELD VALUE: FIELD (a /proc status line, tab-separated values joined by
# spaces) is VALUE on every thread of PID, and there are at least 3 threads.
every_thread() {
  local t n=0
  for t in /proc/"$1"/task/*; do
    [ "$(awk -v k="$2:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "$t/status")" = "$3" ] || return 1
    n=$((n + 1))
  done
  [ "$n" -ge 3 ]
}

ROUND=0
WORKERS=2
# round LABEL MODE UID GID NETSTACKD_ARGS...: a netstackd with two pods; the dataplane's
# privileges on every thread; ping both ways; a capture.
round() {
  local label=$1 uid=$3 gid=$4 a b ip_a ip_b dp set
  MODE=$2
  shift 4
  ROUND=$((ROUND + 1))
  log "$label"
  write_conflist
  start_netstackd --workers "$WORKERS" "$@" || { fail "$label: netstackd starts"; return; }
  a=prv-a$ROUND-$RUN_ID
  b=prv-b$ROUND-$RUN_ID
  ip_a=$(add_pod "$a")
  ip_b=$(add_pod "$b")
  dp=$(child_pid)
  check "$label: the dataplane child runs" test -n "$dp"
  check "$label: its threads: $(ls /proc/"$dp"/task 2>/dev/null | wc -l) (main + $WORKERS workers)" \
    test "$(ls /proc/"$dp"/task | wc -l)" = $((WORKERS + 1))
  check "$label: Uid $uid (real, effective, saved, fs) on every thread" every_thread "$dp" Uid "$uid $uid $uid $uid"
  check "$label: Gid $gid on every thread" every_thread "$dp" Gid "$gid $gid $gid $gid"
  check "$label: no supplementary groups on every thread" every_thread "$dp" Groups ""
  for set in CapEff CapPrm CapInh CapBnd CapAmb; do
    check "$label: $set empty on every thread" every_thread "$dp" "$set" 0000000000000000
  done
  check "$label: NoNewPrivs 1 on every thread" every_thread "$dp" NoNewPrivs 1
  check "$label: Seccomp 2 (filter) on every thread" every_thread "$dp" Seccomp 2
  check "$label: both seccomp filters on every thread" every_thread "$dp" Seccomp_filters 2
  if [ -n "${TAP_IO:-}" ]; then
    check "$label: ctl status: the dataplane reads TAP queues with $TAP_IO" \
      sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.tap_io == \"$TAP_IO\"'"
    check "$label: ctl status (the table) shows it" \
      sh -c "$BIN/netstackd ctl --socket $SOCK status | grep -Eq '^TAP I/O +$TAP_IO *\$'"
  fi
  check "$label: ping A -> B" in_pod "$a" ping -c 3 -i 0.2 -W 2 "$ip_b"
  check "$label: ping B -> A" in_pod "$b" ping -c 3 -i 0.2 -W 2 "$ip_a"
  check "$label: ping A -> gateway" in_pod "$a" ping -c 2 -i 0.2 -W 2 "$GATEWAY"
  rm -f "$WORK/a.pcap"
  "$BIN/netstackd" ctl --socket "$SOCK" capture "$a" -w "$WORK/a.pcap" --duration 3 2>"$WORK/capture.err" &
  local cap=$!
  sleep 0.5
  in_pod "$a" ping -c 3 -i 0.1 -W 2 -q "$ip_b" >/dev/null
  wait "$cap"
  local req
  req=$(tcpdump -nr "$WORK/a.pcap" "icmp[icmptype] == icmp-echo and src $ip_a" 2>/dev/null | wc -l)
  check "$label: a capture through the supervisor's pipe has the 3 echo requests ($req)" test "$req" = 3
  check "$label: the same dataplane child still runs (nothing was refused)" test "$(child_pid)" = "$dp"
  check "$label: no dataplane exit in the log" sh -c "! grep -q 'dataplane exited' '$WORK/netstackd.log'"
  del_pod "$a"
  del_pod "$b"
}

TAP_IO=uring round "TAP mode, default user (nobody), default --tap-io (auto: io_uring here)" tap 65534 65534
stop_netstackd
TAP_IO=readv round "TAP mode, --tap-io readv" tap 65534 65534 --tap-io readv
stop_netstackd
round "veth mode, --dataplane-user 4242:4343" veth 4242 4343 --dataplane-user 4242:4343
stop_netstackd
# More worker threads than glibc's 8 malloc arenas: the ninth used to make glibc count the CPUs
# (an openat the filter forbids) and the dataplane died of SIGSYS at start.
WORKERS=16
TAP_IO=uring round "TAP mode, 16 workers, --tap-io uring" tap 65534 65534 --tap-io uring
stop_netstackd
WORKERS=2
round "veth mode, --veth-rx ring" veth 65534 65534 --veth-rx ring
DP=$(child_pid)
kill -9 "$NETSTACKD_PID"
wait "$NETSTACKD_PID" 2>/dev/null
NETSTACKD_PID=
sleep 0.3
# The uid switch clears the parent-death signal and the child sets it again (the socket closing
# would also end a child that is not stuck, so this row cannot tell the two apart).
check "the dataplane (uid 65534) dies with its supervisor (SIGKILL)" \
  sh -c "! grep -qE '^State:\s+[RSD]' /proc/$DP/status 2>/dev/null"

echo
echo "test_privileges: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
