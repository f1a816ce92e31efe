#!/usr/bin/env bash
# How the dataplane's threads are scheduled, measured (issue 17: "worker threads' priority,
# placement and wakeup path are tuned and measured"): netstackd between two TAP pods, and
# variants of its threads' scheduling applied to the running dataplane from outside, taking
# turns within each round:
#   default   the kernel's default slice, nice 0
#   sliceN    a requested scheduler slice of N µs (EEVDF; what `--worker-slice-us N` sets)
#   niceN     nice N (negative needs CAP_SYS_NICE, which netstackd does not keep: measured
#             here only)
#   pin       worker i pinned to CPU i mod the CPU count (the others unpinned)
# Per variant and round: the TCP 1-byte ping-pong RTT (nsbench rr) with the other CPU idle and
# with it busy (a bounded shell loop in the node's namespace), and one iperf3 stream with the
# dataplane's CPU per Gbit, so a latency gain that costs throughput shows. Results (TSV and the
# median [min, max] per variant) go to target/bench/evals-sched.txt.
#
#   e2e/bench/sched.sh [--runs N] [--duration S] [--variants "default slice100 nice-5 pin"]
#                      [--no-build]
#
# As root, from the repository root. Every run is bounded in time; traffic only between the two
# pods made here; everything is removed on exit.
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RUNS=3 DUR=5 BUILD=1 VARIANTS="default slice100 nice-5 pin"
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --variants) VARIANTS=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "sched.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
positive_ints sched.sh "$RUNS" "$DUR"
need_root sched.sh
for v in $VARIANTS; do
  [[ $v =~ ^(default|pin|slice[0-9]+|nice-?[0-9]+)$ ]] || { echo "sched.sh: unknown variant $v (see --help)" >&2; exit 2; }
done
for t in iperf3 jq python3 taskset; do command -v "$t" >/dev/null || { echo "sched.sh: $t missing (scripts/deps.sh)" >&2; exit 1; }; done
if ((BUILD)); then
  (cd "$REPO" && nice -n 19 cargo build --release -q --bins) || { echo "sched.sh: build failed" >&2; exit 1; }
fi
ID=$(($$ % 100000))
NSB=$BIN/nsbench
OUT=$REPO/target/bench/evals-sched.txt
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_ID=$ID WORK=/tmp/netstack-sched.$$
. "$REPO/e2e/lib.sh"
A=nssc$ID-a B=nssc$ID-b
PIDS=()
mkdir -p "$(dirname "$OUT")"

cleanup() {
  local p
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for p in "$A" "$B"; do [ -e "/run/netns/$p" ] && del_pod "$p"; done
  stop_netstackd
  ip link del "$UPLINK" 2>/dev/null
  if mountpoint -q "$DP_NETNS" 2>/dev/null; then umount -l "$DP_NETNS"; fi
  rm -f "$DP_NETNS"
  rm -rf "$WORK"
}
on_exit cleanup

# sched_apply PID SLICE_US NICE: every thread of PID gets SCHED_OTHER with that slice (0: the
# kernel's default) and nice value (sched_setattr, as --worker-slice-us does for the slice).
sched_apply() {
  python3 - "$@" <<'PY'
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
pid, slice_us, nice = (int(a) for a in sys.argv[1:4])
for tid in os.listdir(f"/proc/{pid}/task"):
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQII", 56, 0, 0, nice, 0, slice_us * 1000, 0, 0, 0, 0), 56)
    if libc.syscall(314, int(tid), attr, 0) != 0:  # sched_setattr
        sys.exit(f"sched_setattr {tid}: {os.strerror(ctypes.get_errno())}")
PY
}
# pin PID on|off: the workers (threads dp-I) on CPU I mod NCPU, or all threads on every CPU.
pin() {
  local t name
  for t in /proc/"$1"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    if [ "$2" = on ] && [[ $name =~ ^dp-([0-9]+)$ ]]; then
      taskset -pc $((BASH_REMATCH[1] % NCPU)) "${t##*/}" >/dev/null
    else
      taskset -pc 0-$((NCPU - 1)) "${t##*/}" >/dev/null
    fi
  done
}
variant() { # PID VARIANT
  case $2 in
    default) sched_apply "$1" 0 0 && pin "$1" off ;;
    slice*) sched_apply "$1" "${2#slice}" 0 && pin "$1" off ;;
    nice*) sched_apply "$1" 0 "${2#nice}" && pin "$1" off ;;
    pin) sched_apply "$1" 0 0 && pin "$1" on ;;
  esac
}
ticks() { if [ -r "/proc/$1/stat" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
PORT=$((20000 + ID % 20000))
rr() { # BUSY: prints min p50 p99 (µs)
  local spid busy= out
  PORT=$((PORT + 1))
  ip netns exec "$B" timeout -k 2 $((DUR + 15)) "$NSB" rr-server --bind "$IP_B:$PORT" --duration $((DUR + 10)) >/dev/null 2>&1 &
  spid=$!
  PIDS+=("$spid")
  for _ in $(seq 1 100); do ip netns exec "$B" ss -Hlnt "sport = :$PORT" | grep -q . && break; sleep 0.05; done
  if (($1)); then timeout -k 1 $((DUR + 5)) bash -c 'while :; do :; done' & busy=$!; PIDS+=("$busy"); fi
  out=$(ip netns exec "$A" timeout -k 2 $((DUR + 10)) "$NSB" rr-client --connect "$IP_B:$PORT" --duration "$DUR" 2>&1)
  kill -TERM "$spid" $busy 2>/dev/null
  wait "$spid" $busy 2>/dev/null
  jq -r '[.min_us, .p50_us, .p99_us] | @tsv' <<<"$out" 2>/dev/null || printf -- '-\t-\t-\n'
}
iperf1() { # prints Gbit/s and the dataplane's CPU-s per Gbit
  local spid j g t0 t1
  PORT=$((PORT + 1))
  ip netns exec "$B" timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "$IP_B" -p "$PORT" >/dev/null 2>&1 &
  spid=$!
  PIDS+=("$spid")
  for _ in $(seq 1 100); do ip netns exec "$B" ss -Hlnt "sport = :$PORT" | grep -q . && break; sleep 0.05; done
  t0=$(ticks "$DP")
  j=$(ip netns exec "$A" timeout -k 2 $((DUR + 15)) iperf3 -c "$IP_B" -p "$PORT" -t "$DUR" -J 2>&1)
  t1=$(ticks "$DP")
  wait "$spid" 2>/dev/null
  g=$(jq -r '.end.sum_received.bits_per_second / 1e9 // empty' <<<"$j" 2>/dev/null)
  if [ -n "$g" ]; then
    printf '%s\t%s\n' "$g" "$(awk "BEGIN { printf \"%.4g\", ($t1 - $t0) / $HZ / ($g * $DUR) }")"
  else
    printf -- '-\t-\n'
  fi
}

write_conflist
start_netstackd || exit 1
IP_A=$(add_pod "$A") && IP_B=$(add_pod "$B") || exit 1
DP=$(ctl status | jq -r .dataplane_pid)
ip netns exec "$A" ping -c 3 -i 0.2 -W 2 -q "$IP_B" >/dev/null || { echo "sched.sh: no connectivity" >&2; exit 1; }
TSV=$WORK/sched.tsv
printf 'variant\trtt_min_us\trtt_p50_us\trtt_p99_us\tbusy_min_us\tbusy_p50_us\tbusy_p99_us\tgbps\tdp_cpu_s_per_gbit\n' >"$TSV"
for run in $(seq 1 "$RUNS"); do
  for v in $VARIANTS; do
    variant "$DP" "$v" || exit 1
    printf '%s\t%s\t%s\t%s\n' "$v" "$(rr 0)" "$(rr 1)" "$(iperf1)" | tee -a "$TSV"
  done
done
{ echo "dataplane scheduling variants (netstackd TAP mode, $(ctl status | jq -r .workers) workers, $NCPU CPUs), $RUNS runs of ${DUR}s taking turns; load before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
  cat "$TSV"; echo
  python3 - "$TSV" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
head, rows = rows[0], rows[1:]
groups = {}
for r in rows:
    groups.setdefault(r[0], []).append(r[1:])
print("variant: " + ", ".join(head[1:]) + " -- median [min, max] over the runs")
for g, rs in groups.items():
    cells = []
    for c in range(len(head) - 1):
        v = [float(r[c]) for r in rs if r[c] not in ("", "-")]
        cells.append(f"{statistics.median(v):.3g} [{min(v):.3g}, {max(v):.3g}]" if v else "-")
    print(f"{g} (n={len(rs)}): " + ", ".join(cells))
PY
} >"$OUT"
echo
tail -n $(($(wc -w <<<"$VARIANTS") + 1)) "$OUT"
echo "(table and runs: $OUT)"
