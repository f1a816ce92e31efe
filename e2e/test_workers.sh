#!/usr/bin/env bash
# e2e: big machines (issue 14). netstackd with more workers than one control message carried
# before (64 fds): for --workers 65, 128 and 256 (the kernel's MAX_TAP_QUEUES) the CNI plugin
# opens that many TAP queues and sends them (in descriptor frames), netstackd hands them to
# its dataplane child, and again after the child is killed and after netstackd restarts
# (restore). Per row: `ctl status` reports the workers; each pod TAP and the uplink have that
# many queues; the idle dataplane stays under 2 MiB per worker; a veth pod's peer gets one
# packet socket per worker; pods ping each other and move 4 MiB over TCP on 32 connections
# (which the kernel spreads over the queues: the upper half of the workers must wake up);
# DEL leaves no TAP, veth peer, state file or descriptor behind. --workers 257 and 0 are
# refused with a clear error. TAP queues go through io_uring (`--tap-io auto`, which takes it
# here: one restricted ring per worker), so these pings and transfers run on that path.
# --worker-slice-us 100 gives every dataplane thread a 100 µs scheduler slice, also after the
# child is killed; 50 is refused; without it they keep the slice they inherit. Flow balancing:
# 6 TCP streams between two TAP pods on 2 workers end split 3 to 3, as the metrics count each
# worker's active flows; `--flow-balance off` and one worker have no such series. Needs root;
# about 1 minute (2 on a loaded machine).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

ROWS=${WORKERS_ROWS:-65 128 256}
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }
state_files() { find "$STATE" -maxdepth 1 -name '*.json*' | wc -l; }
# tx_queues NETNS DEV: the queues the kernel has attached to a device (real_num_tx_queues).
tx_queues() { ip netns exec "$1" sh -c "ls /sys/class/net/$2/queues | grep -c '^tx-'"; }
host_tx_queues() { ls "/sys/class/net/$1/queues" | grep -c '^tx-'; }
# eventually SECONDS CMD...: CMD succeeds within SECONDS (polled every 0.2 s).
eventually() {
  local n=$(($1 * 5)); shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}
# wakeups_past WORKER: epoll wakeups summed over the workers numbered WORKER and up.
wakeups_past() {
  curl -sf "http://$(ctl status | jq -r .metrics)/metrics" |
    awk -v w="$1" -F'[{}"= ]+' '/^netstack_worker_wakeups_total\{/ { if ($3 >= w) s += $NF } END { print s + 0 }'
}
# transfer FROM TO_IP: 32 TCP connections (32 flows, so the kernel's flow hash spreads them
# over the TAP's queues) of 128 KiB each; true when every byte arrived intact.
transfer() {
  local from=$1 to=$2 to_ns=$3 i srv want
  head -c 131072 /dev/urandom >"$WORK/blob"
  : >"$WORK/sums"
  ip netns exec "$to_ns" timeout 60 socat -u TCP-LISTEN:5001,bind="$to",reuseaddr,fork \
    SYSTEM:"md5sum | cut -c1-32 >>$WORK/sums" &
  srv=$!
  eventually 5 sh -c "ip netns exec $to_ns ss -ltn 'sport = :5001' | grep -q LISTEN"
  for i in $(seq 32); do
    in_pod "$from" timeout 10 socat -u "OPEN:$WORK/blob" "TCP:$to:5001" || break
  done
  eventually 10 test "$(wc -l <"$WORK/sums")" = 32
  kill "$srv" 2>/dev/null
  wait "$srv" 2>/dev/null
  want=$(md5sum <"$WORK/blob" | cut -c1-32)
  [ "$(wc -l <"$WORK/sums")" = 32 ] && [ "$(sort -u "$WORK/sums")" = "$want" ]
}

write_conflist
# The veth pods' conflist: the same network (one IPAM range) in veth mode.
VETH_CONFLIST=$WORK/veth.conflist
jq '.plugins[0].mode = "veth"' "$CONFLIST" >"$VETH_CONFLIST"
add_veth_pod() { CONFLIST=$VETH_CONFLIST add_pod "$1"; }
del_veth_pod() { CONFLIST=$VETH_CONFLIST del_pod "$1"; }

log "--workers outside 1-256 is refused"
for bad in 257 0; do
  out=$(timeout 20 "$BIN/netstackd" --pod-cidr "$POD_CIDR" --socket "$WORK/bad.sock" --state-dir "$WORK/bad" \
    --uplink "nsw$((RUN_ID % 100000))" --metrics-addr off --workers "$bad" 2>&1); rc=$?
  check "--workers $bad: netstackd exits non-zero, saying the range and why ($(tail -1 <<<"$out"))" \
    sh -c "[ $rc != 0 ] && printf '%s' \"\$1\" | grep -q 'between 1 and 256.*MAX_TAP_QUEUES'" _ "$out"
  check "--workers $bad: no uplink left behind" sh -c "! ip link show nsw$((RUN_ID % 100000))"
done

# thread_slices PID: the scheduler slice (sched_getattr's runtime, ns) of every thread of PID,
# one per line.
thread_slices() {
  python3 - "$1" <<'PY'
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
for tid in sorted(os.listdir(f"/proc/{sys.argv[1]}/task")):
    buf = ctypes.create_string_buffer(56)
    if libc.syscall(315, int(tid), buf, 56, 0) != 0:  # sched_getattr
        print("error", os.strerror(ctypes.get_errno()))
    else:
        print(struct.unpack("IIQiIQQQII", buf.raw)[5])
PY
}
# all_slices_are PID NS: every thread of PID runs with slice NS (and it has threads).
all_slices_are() { local s; s=$(thread_slices "$1"); [ -n "$s" ] && [ -z "$(grep -vx "$2" <<<"$s")" ]; }

log "--worker-slice-us: the dataplane's threads ask for a short scheduler slice"
out=$(timeout 20 "$BIN/netstackd" --pod-cidr "$POD_CIDR" --socket "$WORK/bad.sock" --state-dir "$WORK/bad" \
  --uplink "nsw$((RUN_ID % 100000))" --metrics-addr off --worker-slice-us 50 2>&1); rc=$?
check "--worker-slice-us 50: refused before anything starts, naming the bounds ($(tail -1 <<<"$out"))" \
  sh -c "[ $rc = 2 ] && printf '%s' \"\$1\" | grep -q 'outside 100..=100000'" _ "$out"
start_netstackd --workers 2 --worker-slice-us 100 || fail "netstackd --worker-slice-us 100 starts"
DP=$(pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane')
check "every thread of the dataplane child runs with a 100 µs slice ($(thread_slices "$DP" | sort | uniq -c | xargs))" \
  all_slices_are "$DP" 100000
check "the supervisor says so in its log" grep -q 'ask for a short time slice slice_us=100' "$WORK/netstackd.log"
kill -KILL "$DP"
check "a new dataplane child runs after a kill" eventually 10 sh -c "[ -n \"\$(pgrep -P $NETSTACKD_PID -f 'netstackd dataplane')\" ] && [ \"\$(pgrep -P $NETSTACKD_PID -f 'netstackd dataplane')\" != $DP ]"
DP=$(pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane')
check "the restarted child's threads have the 100 µs slice too" eventually 5 all_slices_are "$DP" 100000
stop_netstackd
ip link del "$UPLINK" 2>/dev/null
start_netstackd --workers 2 || fail "netstackd starts without --worker-slice-us"
DP=$(pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane')
# What they inherit: this shell's slice (the kernel's default unless a parent asked for one).
check "without the option the threads keep the slice they inherit ($(thread_slices "$DP" | sort -u | xargs) ns, this shell's $(thread_slices $$ | head -1))" \
  all_slices_are "$DP" "$(thread_slices $$ | head -1)"
stop_netstackd
ip link del "$UPLINK" 2>/dev/null

# Flow balancing (dataplane/balance.rs): 6 TCP streams between two TAP pods on 2 workers. The
# kernel's hash may put 4, 5 or 6 of them on one worker's queue; netstackd moves one busy flow
# per 50 ms window from a worker with two or more active flows than the other, so the split
# ends 3 to 3 (give or take one flow that idles in a window).
# active_flows: the workers' active flow counts from the metrics, "a b".
active_flows() {
  curl -sf "http://$(ctl status | jq -r .metrics)/metrics" |
    awk -F'[{}"= ]+' '/^netstack_worker_active_flows\{/ { printf "%s ", $NF }'
}
# has_series NAME / no_series NAME: the metrics (fetched: a failed fetch fails both) have a
# sample of NAME, or none.
metrics_text() { curl -sf "http://$(ctl status | jq -r .metrics)/metrics"; }
# The text is read whole before grep looks: `curl | grep -q` fails under pipefail when grep
# stops reading first.
has_series() { local t; t=$(metrics_text) || return 1; grep -q "^$1" <<<"$t"; }
no_series() { local t; t=$(metrics_text) || return 1; ! grep -q "^$1" <<<"$t"; }
flow_moves() {
  curl -sf "http://$(ctl status | jq -r .metrics)/metrics" |
    awk -F'[{}"= ]+' '/^netstack_worker_flow_moves_total\{/ { s += $NF } END { print s + 0 }'
}
# balanced_3_times: three samples 0.2 s apart, each with at least 5 active flows, split
# within one.
balanced_3_times() {
  local i a b
  for i in 1 2 3; do
    read -r a b <<<"$(active_flows)"
    [ -n "$b" ] && [ $((a + b)) -ge 5 ] && [ $((a > b ? a - b : b - a)) -le 1 ] || return 1
    sleep 0.2
  done
}
start_netstackd --workers 2 || fail "netstackd --workers 2 starts"
BA=$(add_pod "balance-a-$RUN_ID") BB=$(add_pod "balance-b-$RUN_ID")
ip netns exec "balance-b-$RUN_ID" iperf3 -s -1 -D --bind "$BB" -p 5302
sleep 0.3
in_pod "balance-a-$RUN_ID" timeout 30 iperf3 -c "$BB" -p 5302 -P 6 -t 6 >"$WORK/balance.iperf" 2>&1 &
IPERF=$!
check "6 streams over 2 workers end split 3 to 3 (within one), as the metrics count active flows" \
  eventually 5 balanced_3_times
log "active flows per worker: $(active_flows); flows moved: $(flow_moves)"
check "the 6 streams complete" wait "$IPERF"
check "no frame written to pod b (moved flows' included) failed: tx_error $(pod_counter "balance-b-$RUN_ID" '.drops.tx_error // 0')" \
  test "$(pod_counter "balance-b-$RUN_ID" '.drops.tx_error // 0')" = 0
del_pod "balance-a-$RUN_ID"
del_pod "balance-b-$RUN_ID"
stop_netstackd
ip link del "$UPLINK" 2>/dev/null
start_netstackd --workers 2 --flow-balance off || fail "netstackd --flow-balance off starts"
# The workers' series come with the dataplane's first report: wait for it, so that the
# absence below is the option's doing and not an early scrape.
check "with --flow-balance off the workers' wakeups are in the metrics" \
  eventually 5 has_series netstack_worker_wakeups_total
check "and they have no flow balancing series" no_series netstack_worker_active_flows
stop_netstackd
ip link del "$UPLINK" 2>/dev/null
start_netstackd --workers 1 || fail "netstackd --workers 1 starts"
check "with one worker the worker's wakeups are in the metrics" \
  eventually 5 has_series netstack_worker_wakeups_total
check "and there is nobody to balance with: no flow balancing series" no_series netstack_worker_flow_moves_total
stop_netstackd
ip link del "$UPLINK" 2>/dev/null

# root_noqueue NS DEV: DEV (in pod NS, or the node's for "") has the noqueue root qdisc.
root_noqueue() {
  local at=()
  [ -n "$1" ] && at=(-n "$1")
  tc "${at[@]}" qdisc show dev "$2" root | grep -q '^qdisc noqueue '
}
slab_kib() { awk '/^Slab:/ { print $2 }' /proc/meminfo; }
for W in $ROWS; do
  log "--workers $W"
  start_netstackd --workers "$W" --tap-io auto || { fail "netstackd --workers $W starts"; continue; }
  SUP_FDS0=$(fd_count "$NETSTACKD_PID")
  DP=$(child_pid)
  DP_FDS0=$(fd_count "$DP")
  check "ctl status reports $W workers" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.workers == $W'"
  check "ctl status (the table) shows them" sh -c "$BIN/netstackd ctl --socket $SOCK status | grep -Eq '^workers +$W *\$'"
  check "the uplink $UPLINK has $W queues" test "$(host_tx_queues "$UPLINK")" = "$W"
  check "ctl status: the dataplane reads TAP queues through io_uring ($W rings)" \
    sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.tap_io == \"uring\"'"
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$DP/status")
  # A worker's frame buffers are allocated as they are needed, not all 16 MiB of them at start.
  check "the idle dataplane's RSS is $((rss / 1024)) MiB, under 2 MiB per worker + 64 MiB" \
    test "$rss" -lt $(((2 * W + 64) * 1024))
  check "the uplink has no qdisc (noqueue)" root_noqueue "" "$UPLINK"
  A=wa$W-$RUN_ID B=wb$W-$RUN_ID V=wv$W-$RUN_ID
  slab0=$(slab_kib)
  IP_A=$(add_pod "$A") && IP_B=$(add_pod "$B") || { fail "CNI ADD of two TAP pods with $W queues"; stop_netstackd; continue; }
  slab1=$(slab_kib)
  ok "CNI ADD of two TAP pods with $W queues ($IP_A, $IP_B)"
  check "pod TAP $A/eth0 has $W queues" test "$(tx_queues "$A" eth0)" = "$W"
  check "pod TAP $B/eth0 has $W queues" test "$(tx_queues "$B" eth0)" = "$W"
  check "pod TAP $A/eth0 has no qdisc (noqueue)" root_noqueue "$A" eth0
  # Each queue in use has its ring of 2048 pointers (16 KiB) and socket: 20 KiB are allowed
  # for it, and 6 MiB for the rest. A multi-queue TAP has 256 transmit queues whatever the
  # worker count: with the default mq root, each would add a pfifo_fast of three such rings,
  # 12 MiB a TAP.
  slab_max=$((2 * W * 20 + 6 * 1024))
  check "the two pods' TAPs cost the kernel $(((slab1 - slab0) / 1024)) MiB of slab, under $((slab_max / 1024)) MiB ($(((slab_max + 24 * 1024) / 1024)) with a qdisc per queue)" \
    test $((slab1 - slab0)) -lt "$slab_max"
  sup=$(fd_count "$NETSTACKD_PID")
  check "the supervisor holds $W more descriptors per pod ($SUP_FDS0 -> $sup)" test "$sup" = $((SUP_FDS0 + 2 * W))
  dp=$(fd_count "$DP")
  check "so does the dataplane child ($DP_FDS0 -> $dp)" test "$dp" -ge $((DP_FDS0 + 2 * W))
  IP_V=$(add_veth_pod "$V") || fail "CNI ADD of a veth pod"
  sup2=$(fd_count "$NETSTACKD_PID")
  check "the veth pod's peer gets $W packet sockets ($sup -> $sup2 supervisor descriptors)" test "$sup2" = $((sup + W))
  check "A pings B" in_pod "$A" ping -c 2 -W 2 "$IP_B"
  check "the veth pod pings A" in_pod "$V" ping -c 2 -W 2 "$IP_A"
  before=$(wakeups_past $((W / 2)))
  check "32 TCP connections A -> B deliver 128 KiB each, intact" transfer "$A" "$IP_B" "$B"
  after=$(wakeups_past $((W / 2)))
  # 32 flows all on the lower half of the queues: a chance of 2^-32.
  check "workers $((W / 2))-$((W - 1)) served some of them (their wakeups $before -> $after)" test "$after" -gt "$before"

  log "--workers $W: the dataplane child is killed; the new one gets every queue again"
  kill -KILL "$DP"
  check "a new dataplane child runs" eventually 10 sh -c "[ -n \"\$(pgrep -P $NETSTACKD_PID -f 'netstackd dataplane')\" ] && [ \"\$(pgrep -P $NETSTACKD_PID -f 'netstackd dataplane')\" != $DP ]"
  check "ctl status counts the restart" eventually 10 sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.dataplane_restarts == 1 and .dataplane_pid != null'"
  check "A pings B after the dataplane restart" eventually 10 in_pod "$A" ping -c 1 -W 1 "$IP_B"
  check "the veth pod pings B after it" eventually 10 in_pod "$V" ping -c 1 -W 1 "$IP_B"
  check "TCP A -> B after it" transfer "$A" "$IP_B" "$B"

  log "--workers $W: netstackd restarts and restores the pods from its state dir"
  stop_netstackd
  start_netstackd --workers "$W" --tap-io auto || { fail "netstackd --workers $W starts again"; continue; }
  check "all three pods restored" sh -c "$BIN/netstackd ctl --socket $SOCK --json list | jq -e '[.[] | select(.state == \"attached\")] | length == 3'"
  check "A pings B after the restore" eventually 10 in_pod "$A" ping -c 1 -W 1 "$IP_B"
  check "the veth pod pings A after it" eventually 10 in_pod "$V" ping -c 1 -W 1 "$IP_A"
  check "pod TAP $A/eth0 still has $W queues" test "$(tx_queues "$A" eth0)" = "$W"

  log "--workers $W: DEL"
  SUP_IDLE=$(fd_count "$NETSTACKD_PID")
  del_pod "$A"; del_pod "$B"; del_veth_pod "$V"
  sleep 0.3
  check "no attachment left" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.attachments == 0'"
  check "no state file left" test "$(state_files)" = 0
  sup=$(fd_count "$NETSTACKD_PID")
  check "the supervisor dropped every queue and socket ($SUP_IDLE -> $sup, idle $((SUP_IDLE - 3 * W)))" \
    test "$sup" = $((SUP_IDLE - 3 * W))
  check "no veth peer left" sh -c "[ -z \"\$(in_dp ip -o link show type veth)\" ]"
  stop_netstackd
  ip link del "$UPLINK" 2>/dev/null
done

if [ "$FAILS" != 0 ]; then
  echo "netstackd's warnings and errors:"
  grep -E ' (WARN|ERROR) ' "$WORK/netstackd.log" | tail -20
fi
echo
echo "test_workers: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
