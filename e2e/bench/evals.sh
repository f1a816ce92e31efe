#!/usr/bin/env bash
# The design evaluations of e2e/bench/README.md ("Design evaluations"), each a number:
#   floor      `nsbench floor` variants (default: readv, io_uring, readv with a 50 µs spin)
#              between two pods of their own, taking turns, RUNS times: pod->pod TCP 1 and 4
#              streams, the forwarder's and the machine's CPU per Gbit, frames per wakeup and
#              per system call
#   netstackd  netstackd between two TAP pods: the same TCP runs, its own counters (ctl stats:
#              rx_calls, tx_calls, worker wakeups) as frames per wakeup and per call; with
#              --variants, one netstackd per variant and run, taking turns (a variant is
#              `default`, or a --tap-io value: readv, uring, auto); with --perf, a
#              `perf record -e cpu-clock -g` of the (last) dataplane during a 1-stream run
#   big-tcp    a veth pair between two pods, 1 IPv6 stream at gso/gro_max_size 65536 and
#              185000 (and whether a TAP takes 185000)
#   big-tcp-veth  netstackd between two veth pods, without and with --big-tcp, taking turns
#              (netstackd and the pods made anew for each): 1 IPv4 and 1 IPv6 stream pod->pod
#              and 1 IPv4 stream pod->node (with --big-tcp: the frames cut into 64 KiB ones),
#              Gbit/s, the dataplane's and the machine's CPU per Gbit, frames over 64 KiB
#   tpacket-v3 a TPACKET_V3 receive ring with PACKET_VNET_HDR on a veth end (tpacket_v3.py):
#              under a TCP stream (8 ms block timeout) and under pings (1 ms)
# Every run is bounded in time; traffic only between the namespaces made here; everything made
# is removed on exit. Results (TSV and a summary) go to target/bench/evals-PART.txt.
#
#   e2e/bench/evals.sh floor|netstackd|big-tcp|big-tcp-veth|tpacket-v3 [--runs N] [--duration S] [--variants "V..."]
#                      [--perf] [--no-build]
#
# As root, from the repository root; run it isolated (/tmp/iso.sh) when others test.
# A floor variant is readv, uring, or either followed by -spinN (N µs, e.g. readv-spin50).
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PART=${1:-}
shift || true
RUNS=3 DUR=5 BUILD=1 PERF=0 VARIANTS=
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --variants) VARIANTS=$2; shift ;;
    --perf) PERF=1 ;;
    --no-build) BUILD=0 ;;
    -h | --help) PART=help ;;
    *) echo "evals.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $PART in -h | --help | help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
case $PART in floor | netstackd | big-tcp | big-tcp-veth | tpacket-v3) ;; *) echo "evals.sh: floor, netstackd, big-tcp, big-tcp-veth or tpacket-v3 (see --help)" >&2; exit 2 ;; esac
case $PART in
  floor) VARIANTS=${VARIANTS:-readv uring readv-spin50} ;;
  *) VARIANTS=${VARIANTS:-default} ;;
esac
positive_ints evals.sh "$RUNS" "$DUR"
need_root evals.sh
for t in iperf3 jq; do command -v "$t" >/dev/null || { echo "evals.sh: $t missing (scripts/deps.sh)" >&2; exit 1; }; done
if ((BUILD)); then
  (cd "$REPO" && nice -n 19 cargo build --release -q --bins) || { echo "evals.sh: build failed" >&2; exit 1; }
fi
NSB=$BIN/nsbench
ID=$(($$ % 100000))
P=nsev$ID
EV_WORK=/tmp/netstack-evals.$$
OUT=$REPO/target/bench/evals-$PART.txt
X=$(free_subnet $(($$ % 250 + 1)) 10.248)
IP_A=10.248.$X.1 IP_B=10.248.$X.2
HZ=$(getconf CLK_TCK)
FWD_PID= LIB_LOADED=0
PIDS=()
mkdir -p "$EV_WORK" "$(dirname "$OUT")"

cleanup() {
  local p
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if ((LIB_LOADED)); then
    for p in "$P-a" "$P-b"; do [ -e "/run/netns/$p" ] && del_pod "$p"; done
    stop_netstackd
    ip link del "$UPLINK" 2>/dev/null
    if mountpoint -q "$DP_NETNS" 2>/dev/null; then umount -l "$DP_NETNS"; fi
    rm -f "$DP_NETNS"
    rm -rf "$WORK"
  fi
  for p in "$P-a" "$P-b"; do ip netns del "$p" 2>/dev/null; done
  rm -rf "$EV_WORK"
}
on_exit cleanup

# Busy ticks of the whole machine (all but idle and iowait).
busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# User + system ticks of a process (all its threads; io_uring's io-wq workers included).
ticks() { if [ -r "/proc/$1/stat" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
calc() { awk "BEGIN { printf \"%.4g\", $1 }"; }

# iperf NS_SERVER NS_CLIENT DST STREAMS: one iperf3 run of DUR seconds; prints Gbit/s (empty
# on failure).
PORT=$((20000 + ID % 20000))
iperf() {
  PORT=$((PORT + 1))
  ip netns exec "$1" timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "$3" -p "$PORT" >/dev/null 2>&1 &
  local spid=$! j
  PIDS+=("$spid")
  for _ in $(seq 1 100); do ip netns exec "$1" ss -Hlnt "sport = :$PORT" | grep -q . && break; sleep 0.05; done
  j=$(ip netns exec "$2" timeout -k 2 $((DUR + 15)) iperf3 -c "$3" -p "$PORT" -t "$DUR" -P "$4" -J 2>&1)
  wait "$spid" 2>/dev/null
  jq -r '.end.sum_received.bits_per_second / 1e9 // empty' <<<"$j" 2>/dev/null
}

# summary TSV KEYCOLS: per group (the first KEYCOLS columns), the median and [min, max] of
# every numeric column after them.
summary() {
  python3 - "$1" "$2" <<'PY'
import sys, statistics
path, k = sys.argv[1], int(sys.argv[2])
rows = [l.rstrip("\n").split("\t") for l in open(path)]
head, rows = rows[0], rows[1:]
groups = {}
for r in rows:
    groups.setdefault(tuple(r[:k]), []).append(r[k:])
print("  ".join(head[:k]) + ": " + ", ".join(head[k:]) + " -- median [min, max] over the runs")
for g, rs in groups.items():
    cells = []
    for c in range(len(head) - k):
        v = [float(r[c]) for r in rs if r[c] not in ("", "-")]
        cells.append(f"{statistics.median(v):.3g} [{min(v):.3g}, {max(v):.3g}]" if v else "-")
    print("  ".join(g) + f" (n={len(rs)}): " + ", ".join(cells))
PY
}

pods() { # the two pods of the floor and big-tcp parts
  local ns
  for ns in "$P-a" "$P-b"; do ip netns add "$ns" && ip -n "$ns" link set lo up || exit 1; done
}

# --- floor: nsbench floor variants, taking turns ---------------------------------------------
floor_part() {
  local run v io spin streams f0 f1 s0 s1 c0 c1 g rep0 rep1 tsv=$EV_WORK/floor.tsv
  pods
  printf 'variant\tstreams\tgbps\tfwd_cpu_s_per_gbit\tmachine_cpu_s_per_gbit\tframes_per_wakeup\tframes_per_syscall\tempty_reads_per_frame\n' >"$tsv"
  for run in $(seq 1 "$RUNS"); do
    for v in $VARIANTS; do
      io=${v%%-*} spin=0
      [[ $v == *-spin* ]] && spin=${v##*-spin}
      "$NSB" floor --a "/run/netns/$P-a" --b "/run/netns/$P-b" --io "$io" --spin-us "$spin" \
        --duration $((4 * DUR + 60)) --report "$EV_WORK/rep.json" 2>"$EV_WORK/floor.err" &
      FWD_PID=$!
      PIDS+=("$FWD_PID")
      for _ in $(seq 1 200); do
        ip -n "$P-a" link show eth0 >/dev/null 2>&1 && ip -n "$P-b" link show eth0 >/dev/null 2>&1 && break
        sleep 0.05
      done
      ip -n "$P-a" link set eth0 mtu 1500 up && ip -n "$P-b" link set eth0 mtu 1500 up &&
        ip -n "$P-a" addr add "$IP_A/24" dev eth0 && ip -n "$P-b" addr add "$IP_B/24" dev eth0 ||
        { echo "floor $v: no TAPs: $(cat "$EV_WORK/floor.err")" >&2; exit 1; }
      ip netns exec "$P-a" ping -c 3 -i 0.2 -W 2 -q "$IP_B" >/dev/null || { echo "floor $v: no connectivity" >&2; exit 1; }
      for streams in 1 4; do
        sleep 0.7
        rep0=$(cat "$EV_WORK/rep.json")
        f0=$(ticks "$FWD_PID") s0=$(busy)
        g=$(iperf "$P-b" "$P-a" "$IP_B" "$streams")
        f1=$(ticks "$FWD_PID") s1=$(busy)
        sleep 0.7
        rep1=$(cat "$EV_WORK/rep.json")
        [ -n "$g" ] || { echo "  $v $streams: iperf3 failed" >&2; continue; }
        c0=$(jq -r '[.frames, .wakeups, .syscalls, .empty_reads] | @tsv' <<<"$rep0")
        c1=$(jq -r '[.frames, .wakeups, .syscalls, .empty_reads] | @tsv' <<<"$rep1")
        read -r fr0 wk0 sc0 er0 <<<"$c0"
        read -r fr1 wk1 sc1 er1 <<<"$c1"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$streams" "$g" \
          "$(calc "($f1 - $f0) / $HZ / ($g * $DUR)")" "$(calc "($s1 - $s0) / $HZ / ($g * $DUR)")" \
          "$(calc "($fr1 - $fr0) / ($wk1 - $wk0 + 0.001)")" "$(calc "($fr1 - $fr0) / ($sc1 - $sc0 + 0.001)")" \
          "$(calc "($er1 - $er0) / ($fr1 - $fr0 + 0.001)")" | tee -a "$tsv"
      done
      kill -TERM "$FWD_PID" 2>/dev/null
      wait "$FWD_PID" 2>/dev/null
      # Its TAPs go with it, a moment later: the next one must not find them.
      for _ in $(seq 1 100); do
        ip -n "$P-a" link show eth0 >/dev/null 2>&1 || ip -n "$P-b" link show eth0 >/dev/null 2>&1 || break
        sleep 0.05
      done
    done
  done
  { echo "floor variants, $RUNS runs of ${DUR}s, taking turns; load before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
    cat "$tsv"; echo; summary "$tsv" 2; } >"$OUT"
}

# --- netstackd: its own counters, and perf ----------------------------------------------------
netstackd_part() {
  local run streams ip_a ip_b dp g s0 s1 n0 n1 st0 st1 v tsv=$EV_WORK/netstackd.tsv
  RUN_ID=$ID WORK=$EV_WORK/lib
  . "$REPO/e2e/lib.sh"
  LIB_LOADED=1
  write_conflist
  # up VARIANT: a netstackd with the variant's options and the two pods, which reach each other.
  up() {
    local opts=()
    case $1 in
      default) ;;
      readv | uring | auto) opts=(--tap-io "$1") ;;
      *) echo "evals.sh netstackd: variant $1 is default, readv, uring or auto" >&2; exit 2 ;;
    esac
    start_netstackd "${opts[@]}" || exit 1
    ip_a=$(add_pod "$P-a") && ip_b=$(add_pod "$P-b") || exit 1
    dp=$(ctl status | jq -r .dataplane_pid)
    ip netns exec "$P-a" ping -c 3 -i 0.2 -W 2 -q "$ip_b" >/dev/null || { echo "netstackd $1: no connectivity" >&2; exit 1; }
    echo "==> $1: tap_io $(ctl status | jq -r '.tap_io // "-"'), dataplane pid $dp"
  }
  down() { del_pod "$P-a"; del_pod "$P-b"; stop_netstackd; }
  printf 'variant\tstreams\tgbps\tdp_cpu_s_per_gbit\tmachine_cpu_s_per_gbit\tframes_per_wakeup\tframes_per_syscall\tframes_per_rx_call\tframes_per_tx_call\n' >"$tsv"
  # All frames the pods sent (rx) and got (tx), the read and write calls, the wakeups.
  totals() {
    printf '%s\t%s\n' "$(ctl stats | jq -r '[([.pods[].counters.rx_packets] | add), ([.pods[].counters.tx_packets] | add),
      ([.pods[].counters.rx_calls] | add), ([.pods[].counters.tx_calls] | add)] | @tsv')" \
      "$("$BIN/netstackd" ctl --socket "$SOCK" metrics | awk '$1 ~ /^netstack_worker_wakeups_total/ {n += $2} END {print n + 0}')"
  }
  local last=
  for run in $(seq 1 "$RUNS"); do
   for v in $VARIANTS; do
    [ -n "$last" ] && down
    up "$v"
    last=$v
    for streams in 1 4; do
      st0=$(totals) n0=$(ticks "$dp") s0=$(busy)
      g=$(iperf "$P-b" "$P-a" "$ip_b" "$streams")
      n1=$(ticks "$dp") s1=$(busy) st1=$(totals)
      [ -n "$g" ] || { echo "  netstackd $v $streams: iperf3 failed" >&2; continue; }
      read -r rx0 tx0 rc0 tc0 wk0 <<<"$st0"
      read -r rx1 tx1 rc1 tc1 wk1 <<<"$st1"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$streams" "$g" \
        "$(calc "($n1 - $n0) / $HZ / ($g * $DUR)")" "$(calc "($s1 - $s0) / $HZ / ($g * $DUR)")" \
        "$(calc "($rx1 - $rx0) / ($wk1 - $wk0 + 0.001)")" \
        "$(calc "($rx1 - $rx0) / ($rc1 - $rc0 + $tc1 - $tc0 + $wk1 - $wk0 + 0.001)")" \
        "$(calc "($rx1 - $rx0) / ($rc1 - $rc0 + 0.001)")" "$(calc "($tx1 - $tx0) / ($tc1 - $tc0 + 0.001)")" | tee -a "$tsv"
    done
   done
  done
  { echo "netstackd (TAP mode; variants, taking turns: $VARIANTS), $RUNS runs of ${DUR}s; frames per syscall counts reads (io_uring_enter batches with uring), writes and epoll_waits; load before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
    cat "$tsv"; echo; summary "$tsv" 2; } >"$OUT"
  if ((PERF)); then
    command -v perf >/dev/null || { echo "perf: not installed (apt install linux-perf)" >>"$OUT"; return; }
    echo "==> perf record -e cpu-clock -g -p $dp, 1 stream, ${DUR}s"
    local spid cpid
    PORT=$((PORT + 1))
    ip netns exec "$P-b" timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "$ip_b" -p "$PORT" >/dev/null 2>&1 &
    spid=$!
    PIDS+=("$spid")
    sleep 0.5
    ip netns exec "$P-a" timeout -k 2 $((DUR + 15)) iperf3 -c "$ip_b" -p "$PORT" -t "$DUR" >/dev/null 2>&1 &
    cpid=$!
    PIDS+=("$cpid")
    sleep 0.5
    if timeout -k 2 $((DUR + 10)) perf record -e cpu-clock -g -p "$dp" -o "$EV_WORK/perf.data" -- sleep $((DUR - 1)) \
      >"$EV_WORK/perf.log" 2>&1; then
      { echo; echo "perf report --no-children --sort symbol (dataplane $dp, cpu-clock, 1 stream):"
        perf report -i "$EV_WORK/perf.data" --stdio --no-children --sort symbol -g none --percent-limit 0.7 2>/dev/null |
          grep -v '^#' | grep -v '^$' | head -30
        echo; echo "by DSO:"; perf report -i "$EV_WORK/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null |
          grep -v '^#' | grep -v '^$' | head -8
        echo; echo "by kind (symbol names matched in this order; the rest is 'other'):"
        perf report -i "$EV_WORK/perf.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0 2>/dev/null |
          grep -v '^#' | python3 "$BENCH_DIR/perf_kinds.py"; } >>"$OUT"
    else
      { echo "perf record failed:"; tail -5 "$EV_WORK/perf.log"; } >>"$OUT"
    fi
    wait "$cpid" "$spid" 2>/dev/null
  fi
}

# --- big-tcp: a veth pair at gso_max_size 65536 and 185000 -------------------------------------
big_tcp_part() {
  local run size g err tsv=$EV_WORK/big.tsv
  pods
  ip link add eth0 netns "$P-a" type veth peer name eth0 netns "$P-b" || exit 1
  # IPv6: this iproute2 (6.1) has no gso_ipv4_max_size, the knob of IPv4 BIG TCP (6.3+).
  ip -n "$P-a" addr add fd00:e7::1/64 dev eth0 nodad && ip -n "$P-b" addr add fd00:e7::2/64 dev eth0 nodad
  ip -n "$P-a" link set eth0 up && ip -n "$P-b" link set eth0 up
  sleep 0.5
  printf 'gso_max_size\tgbps\tmachine_cpu_s_per_gbit\n' >"$tsv"
  for run in $(seq 1 "$RUNS"); do
    for size in 65536 185000; do
      for ns in "$P-a" "$P-b"; do
        ip -n "$ns" link set eth0 gso_max_size "$size" gro_max_size "$size" || exit 1
      done
      s0=$(busy)
      g=$(iperf "$P-b" "$P-a" fd00:e7::2 1)
      s1=$(busy)
      [ -n "$g" ] && printf '%s\t%s\t%s\n' "$size" "$g" "$(calc "($s1 - $s0) / $HZ / ($g * $DUR)")" | tee -a "$tsv"
    done
  done
  ip netns exec "$P-a" ip tuntap add dev tbig mode tap vnet_hdr
  err=$(ip -n "$P-a" link set tbig gso_max_size 185000 2>&1) && err="accepted"
  { echo "veth pair, 1 stream, $RUNS runs of ${DUR}s, IPv6 (IPv4 BIG TCP needs gso_ipv4_max_size: iproute2 $(ip -V | grep -o 'iproute2-[0-9.]*') has none); load before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
    cat "$tsv"; echo; summary "$tsv" 1; echo; echo "a TAP at gso_max_size 185000: $err"; } >"$OUT"
}

# --- big-tcp-veth: netstackd's veth mode without and with --big-tcp ----------------------------
big_tcp_veth_part() {
  local run v ip_a ip_b ip6_b dp g n0 n1 s0 s1 b0 b1 what dst tsv=$EV_WORK/big-veth.tsv
  RUN_ID=$ID WORK=$EV_WORK/lib MODE=veth
  . "$REPO/e2e/lib.sh"
  LIB_LOADED=1
  local cidr6=fd00:10:248:$X::/64
  write_conflist
  jq --arg v6 "$cidr6" '.plugins[0].ipam.ranges += [[{subnet: $v6}]]
      | .plugins[0].ipam.routes += [{dst: "::/0"}]' "$CONFLIST" >"$WORK/dual.conflist"
  CONFLIST=$WORK/dual.conflist
  printf 'variant\tpath\tgbps\tdp_cpu_s_per_gbit\tmachine_cpu_s_per_gbit\tframes_over_64k_per_s\n' >"$tsv"
  big() { ctl stats | jq '[.pods[].counters.rx_big_tcp_packets // 0] | add // 0'; }
  for run in $(seq 1 "$RUNS"); do
    for v in 64k big; do
      start_netstackd --workers 2 --pod-cidr-v6 "$cidr6" $([ "$v" = big ] && echo --big-tcp) || exit 1
      ip_a=$(add_pod "$P-a") && ip_b=$(add_pod "$P-b") || exit 1
      ip6_b=$(jq -r '.ips[] | .address | select(contains(":"))' "$WORK/$P-b.result.json" | cut -d/ -f1)
      dp=$(ctl status | jq -r .dataplane_pid)
      ip netns exec "$P-a" ping -c 2 -i 0.2 -W 2 -q "$ip_b" >/dev/null || { echo "big-tcp-veth: no connectivity" >&2; exit 1; }
      ip netns exec "$P-a" ping -c 1 -W 2 -q "$GATEWAY" >/dev/null
      for what in v4 v6 node; do
        case $what in v4) dst=$ip_b ;; v6) dst=$ip6_b ;; node) dst=$GATEWAY ;; esac
        n0=$(ticks "$dp") s0=$(busy) b0=$(big)
        if [ "$what" = node ]; then
          # The node is the server: iperf3 in the host namespace (isolated: run under iso.sh).
          PORT=$((PORT + 1))
          timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "$dst" -p "$PORT" >/dev/null 2>&1 &
          local spid=$!
          PIDS+=("$spid")
          for _ in $(seq 1 100); do ss -Hlnt "sport = :$PORT" | grep -q . && break; sleep 0.05; done
          g=$(ip netns exec "$P-a" timeout -k 2 $((DUR + 15)) iperf3 -c "$dst" -p "$PORT" -t "$DUR" -J 2>&1 |
            jq -r '.end.sum_received.bits_per_second / 1e9 // empty' 2>/dev/null)
          wait "$spid" 2>/dev/null
        else
          g=$(iperf "$P-b" "$P-a" "$dst" 1)
        fi
        n1=$(ticks "$dp") s1=$(busy) b1=$(big)
        [ -n "$g" ] || { echo "  $v $what: iperf3 failed" >&2; continue; }
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$what" "$g" \
          "$(calc "($n1 - $n0) / $HZ / ($g * $DUR)")" "$(calc "($s1 - $s0) / $HZ / ($g * $DUR)")" \
          "$(calc "($b1 - $b0) / $DUR")" | tee -a "$tsv"
      done
      del_pod "$P-a"; del_pod "$P-b"
      stop_netstackd
    done
  done
  { echo "netstackd veth mode (2 workers), without and with --big-tcp (196608), taking turns, $RUNS runs of ${DUR}s, 1 stream each; load before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
    cat "$tsv"; echo; summary "$tsv" 2; } >"$OUT"
}

# --- tpacket-v3: what a V3 ring with the virtio-net header delivers --------------------------
tpacket_v3_part() {
  local probe=$BENCH_DIR/tpacket_v3.py
  pods
  ip link add eth0 netns "$P-a" type veth peer name eth0 netns "$P-b" || exit 1
  ip -n "$P-a" addr add "$IP_A/24" dev eth0 && ip -n "$P-b" addr add "$IP_B/24" dev eth0
  ip -n "$P-a" link set eth0 up && ip -n "$P-b" link set eth0 up
  ip netns exec "$P-b" timeout -k 2 $((DUR + 20)) iperf3 -s -1 -B "$IP_B" -p 5201 >/dev/null 2>&1 &
  PIDS+=($!)
  ip netns exec "$P-b" timeout -k 2 $((DUR + 10)) python3 "$probe" eth0 $((DUR + 1)) 8 >"$EV_WORK/v3-tcp" 2>&1 &
  local probe_pid=$!
  PIDS+=("$probe_pid")
  sleep 0.5
  ip netns exec "$P-a" timeout -k 2 $((DUR + 10)) iperf3 -c "$IP_B" -p 5201 -t "$DUR" >/dev/null 2>&1
  wait "$probe_pid"
  ip netns exec "$P-b" timeout -k 2 $((DUR + 10)) python3 "$probe" eth0 3 1 >"$EV_WORK/v3-ping" 2>&1 &
  probe_pid=$!
  PIDS+=("$probe_pid")
  sleep 0.3
  ip netns exec "$P-a" ping -c 20 -i 0.1 -q "$IP_B" >/dev/null
  wait "$probe_pid"
  { echo "TPACKET_V3 + PACKET_VNET_HDR receive ring on a veth end; load before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "TCP 1 stream, ${DUR}s, 8 ms block timeout: $(cat "$EV_WORK/v3-tcp")"
    echo "20 pings 100 ms apart, 1 ms block timeout: $(cat "$EV_WORK/v3-ping")"; } >"$OUT"
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
case $PART in
  floor) floor_part ;;
  netstackd) netstackd_part ;;
  big-tcp) big_tcp_part ;;
  big-tcp-veth) big_tcp_veth_part ;;
  tpacket-v3) tpacket_v3_part ;;
esac
echo
cat "$OUT"
