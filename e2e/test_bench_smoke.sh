#!/usr/bin/env bash
# e2e: the benchmark harness works (not a timing test): `e2e/bench/run.sh --quick` runs to the
# end, its JSON has every figure of the netstack TAP path, of veth mode (a veth ADD that fails
# fails this test), of the bridge plugin and of the floor forwarder as a number, the node's
# netfilter state and its wakeup settings (cpuidle, halt polling) are recorded, the table is printed, and nothing the run created is left: no
# netns, link, process or work directory. Then `e2e/bench/packet_io.sh`
# (recvmmsg against a TPACKET_V2 receive ring and a TPACKET_V2 transmit ring) with 1-second
# runs: every figure a number, 128 MiB crossed each path intact, nothing left.
# Then `e2e/bench/add_parallel.sh` (ADD latency under concurrency) with 16 pods per kind in
# rounds of 8: p50/p99 numbers for TAP, veth and bridge, no ADD failed, nothing left.
# Then `e2e/bench/vm.sh --quick` (the VM rows, vhost-user against Kata's TAP): the accelerator
# stated, every figure of both paths a number, nothing left (no QEMU, netns, link, netstackd).
# Then `e2e/bench/sched.sh` (the dataplane's scheduling variants) for one 1-second round: every
# figure a number, nothing left.
# Needs root; run by scripts/test.sh.
set -uo pipefail
cd "$(dirname "$0")/.."

FAILS=0
PASSES=0
ok() { PASSES=$((PASSES + 1)); printf '  ok   %s\n' "$1"; }
fail() { FAILS=$((FAILS + 1)); printf '  FAIL %s\n' "$1"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }

TMP=$(mktemp -d /tmp/netstack-bench-smoke.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
OUT=$TMP/bench.json
LEDGER=$TMP/ledger
export BENCH_RUN_ID=$$ BENCH_LEDGER=$LEDGER

# scripts/test.sh has just built the release binaries; build only if they are missing.
BUILD=(--no-build)
for b in netstackd netstack nsbench; do [ -x "target/release/$b" ] || BUILD=(); done
echo "==> e2e/bench/run.sh --quick ${BUILD[*]} (BENCH_RUN_ID=$BENCH_RUN_ID)"
start=$SECONDS
timeout -k 10 $((${#BUILD[@]} ? 180 : 900)) e2e/bench/run.sh --quick "${BUILD[@]}" --out "$OUT" >"$TMP/run.log" 2>&1
rc=$?
took=$((SECONDS - start))
if [ "$rc" = 0 ]; then ok "run.sh --quick exits 0 (${took} s)"; else
  fail "run.sh --quick exits 0 (exit $rc after ${took} s); its output:"
  sed 's/^/    /' "$TMP/run.log"
fi
check "the JSON is written and parses" jq -e '.schema == 1' "$OUT"
jq -e . "$OUT" >/dev/null 2>&1 || { jq . "$OUT" 2>&1 | tail -2; ls -l "$OUT"; head -c 400 "$OUT"; } | sed 's/^/    /'
check "the table is printed" grep -q '^pod->pod TCP, 1 stream' "$TMP/run.log"

WIRE_FIGURES=(tcp1_p2p_gbps tcp4_p2p_gbps udp64_tx_kpps udp64_rx_kpps udp64_loss_pct
  udp64_half_loss_pct rtt_min_us rtt_p50_us rtt_p99_us rtt_busy_p99_us crr_per_s sys_cpu_p2p_s_per_gbit)
BRIDGE_FIGURES=("${WIRE_FIGURES[@]}" tcp1_p2n_gbps tcp4_p2n_gbps tcp1_n2p_gbps cni_add_p50_ms
  cni_add_p99_ms sys_cpu_p2n_s_per_gbit)
VETH_FIGURES=("${BRIDGE_FIGURES[@]}" ns_cpu_s_per_gbit ns_cpu_p2p_s_per_gbit)
TAP_FIGURES=("${VETH_FIGURES[@]}" pairs_total_gbps pairs_jain rss_per_pod_kib rss_avg_per_pod_kib
  rss_total_mib idle_cpu_pct)
BRIDGE_FIGURES+=(pairs_total_gbps pairs_jain)
# The floor: pod to pod between two TAPs, pod to node and back through a TUN (--node-tun).
FLOOR_FIGURES=("${WIRE_FIGURES[@]}" ns_cpu_p2p_s_per_gbit tcp1_p2n_gbps tcp4_p2n_gbps tcp1_n2p_gbps
  sys_cpu_p2n_s_per_gbit)
# numbers PATH FIGURE...: the figures of PATH that are not numbers.
not_numbers() {
  local path=$1
  shift
  jq -r --arg p "$path" '.paths[$p] as $e | $ARGS.positional[] | select(($e[.] | type) != "number")' \
    "$OUT" --args "$@" 2>/dev/null || echo "(unreadable JSON)"
}
missing=$(not_numbers tap "${TAP_FIGURES[@]}")
check "TAP path: all ${#TAP_FIGURES[@]} figures are numbers${missing:+ (not: $(echo $missing))}" test -z "$missing"
missing=$(not_numbers bridge "${BRIDGE_FIGURES[@]}")
check "bridge path: all ${#BRIDGE_FIGURES[@]} figures are numbers${missing:+ (not: $(echo $missing))}" test -z "$missing"
# veth mode is this netstackd's: a failed attach is a failure, not "unsupported".
check "veth path came up (reason if not: $(jq -r '.paths.veth.reason' "$OUT" 2>/dev/null))" jq -e '.paths.veth.supported' "$OUT"
missing=$(not_numbers veth "${VETH_FIGURES[@]}")
check "veth path: all ${#VETH_FIGURES[@]} figures are numbers${missing:+ (not: $(echo $missing))}" test -z "$missing"
check "floor path came up (reason if not: $(jq -r '.paths.floor.reason' "$OUT" 2>/dev/null))" jq -e '.paths.floor.supported' "$OUT"
missing=$(not_numbers floor "${FLOOR_FIGURES[@]}")
check "floor path: all ${#FLOOR_FIGURES[@]} figures are numbers${missing:+ (not: $(echo $missing))}" test -z "$missing"
check "ratios to the bridge are numbers" jq -e '[.ratios_to_bridge.tap | .tcp1_p2p_gbps, .udp64_rx_kpps, .cni_add_p50_ms, .crr_per_s] | all(type == "number")' "$OUT"
check "netstackd's CPU per Gbit is read against the floor's" jq -e '[.ratios_to_floor.tap.ns_cpu_p2p_s_per_gbit, .ratios_to_floor.veth.ns_cpu_p2p_s_per_gbit] | all(type == "number" and . > 0)' "$OUT"
check "the pairs' fairness index is in (0, 1]" jq -e '[.paths.tap.pairs_jain, .paths.bridge.pairs_jain] | all(. > 0 and . <= 1.000001)' "$OUT"
check "every target has a verdict for the TAP path" jq -e '[.targets | to_entries[] | select(.key | startswith("vs_") | not) | .value.tap] | all(type == "boolean")' "$OUT"
check "the node's netfilter state is recorded" jq -e '.netfilter | has("br_netfilter") and has("conntrack_count") and has("nft_ruleset_lines") and has("iptables_rules")' "$OUT"
check "the table shows the netfilter state" grep -q '^netfilter: br_netfilter' "$TMP/run.log"
check "the node's wakeup settings are recorded ($(jq -c .node "$OUT" 2>/dev/null))" \
  jq -e '.node | has("cpuidle_driver") and has("guest_halt_poll_ns") and has("clocksource")' "$OUT"
for peer in pasta pasta_1500 slirp4netns slirp4netns_1500; do
  if jq -e --arg p "$peer" '.paths[$p].supported' "$OUT" >/dev/null 2>&1; then
    check "$peer: pod-to-node figures are numbers" jq -e --arg p "$peer" '[.paths[$p].tcp1_p2n_gbps, .paths[$p].tcp4_p2n_gbps] | all(type == "number")' "$OUT"
    case $peer in
      pasta*) check "$peer: node-to-pod through its forwarded (spliced) port is a number" \
        jq -e --arg p "$peer" '.paths[$p].tcp1_n2p_gbps | type == "number"' "$OUT" ;;
    esac
  else
    check "$peer: n/a with a reason" jq -e --arg p "$peer" '.paths[$p].reason | type == "string"' "$OUT"
  fi
done

echo "==> nothing left behind"
check "the run recorded what it created" test -s "$LEDGER"
left=()
while read -r kind name; do
  case $kind in
    netns) [ -e "/run/netns/$name" ] && left+=("netns $name") ;;
    link) ip link show dev "$name" >/dev/null 2>&1 && left+=("link $name") ;;
    dir) [ -e "$name" ] && left+=("dir $name") ;;
    pid)
      if [ -r "/proc/$name/cmdline" ] &&
        tr '\0' ' ' <"/proc/$name/cmdline" | grep -q -e netstackd -e iperf3 -e nsbench -e pasta -e slirp4netns -e 'while :'; then
        left+=("process $name")
      fi
      ;;
  esac
done <"$LEDGER"
check "no netns, link, process or directory of the run is left${left:+ (left: ${left[*]})}" test "${#left[@]}" = 0
ID=$((BENCH_RUN_ID % 100000))
check "no netns named nsb$ID-*" sh -c "! ip netns list | grep -q '^nsb$ID-'"
check "no link named nsb*$ID" sh -c "! ip -br link | grep -q -e '^nsbu$ID[ @]' -e '^nsbbr$ID[ @]'"
check "no iptables rule for the bench bridge" sh -c "! iptables-save 2>/dev/null | grep -q 'nsbbr$ID'"

echo "==> e2e/bench/packet_io.sh --duration 1"
PIO=$TMP/packet_io.json
timeout -k 10 300 e2e/bench/packet_io.sh --duration 1 --no-build --out "$PIO" >"$TMP/pio.log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then ok "packet_io.sh exits 0"; else
  fail "packet_io.sh exits 0 (exit $rc); its output:"
  sed 's/^/    /' "$TMP/pio.log"
fi
check "the comparison table is printed" grep -q '^TCP 1 stream' "$TMP/pio.log"
for k in mmsg-tcp ring-tcp txring-tcp mmsg-udp ring-udp txring-udp mmsg-mcpu ring-mcpu txring-mcpu; do
  check "packet_io $k is a number ($(jq -r --arg k "$k" '.results[$k]' "$PIO" 2>/dev/null))" \
    jq -e --arg k "$k" '.results[$k] | tonumber > 0' "$PIO"
done
check "the ring's kernel memory is reported (2 MiB)" jq -e '.results["ring-ring"] | tonumber == 2097152' "$PIO"
check "the TX ring's kernel memory is reported (8 MiB)" jq -e '.results["txring-ring"] | tonumber == 8388608' "$PIO"
for k in mmsg ring txring; do
  check "128 MiB of random bytes crossed the $k path intact" jq -e --arg k "$k-intact" '.results[$k] == "yes"' "$PIO"
done
check "packet_io.sh left no namespace" sh -c "! ip netns list | grep -q '^npio'"

echo "==> e2e/bench/add_parallel.sh --pods 16 --concurrency 8"
ADDJ=$TMP/add_parallel.json
timeout -k 10 300 env BENCH_LEDGER="$TMP/ledger-add" e2e/bench/add_parallel.sh --pods 16 --concurrency 8 \
  --no-build --out "$ADDJ" >"$TMP/add.log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then ok "add_parallel.sh exits 0"; else
  fail "add_parallel.sh exits 0 (exit $rc); its output:"
  sed 's/^/    /' "$TMP/add.log"
fi
for k in tap veth bridge; do
  check "add_parallel $k: p50 and p99 are numbers over 16 ADDs, none failed ($(jq -c --arg k "$k" '.kinds[$k]' "$ADDJ" 2>/dev/null))" \
    jq -e --arg k "$k" '.kinds[$k] | (.p50_ms | type == "number") and (.p99_ms >= .p50_ms) and .samples == 16 and .failed == 0' "$ADDJ"
done
left=()
while read -r kind name; do
  case $kind in
    netns) [ -e "/run/netns/$name" ] && left+=("netns $name") ;;
    link) ip link show dev "$name" >/dev/null 2>&1 && left+=("link $name") ;;
    dir) [ -e "$name" ] && left+=("dir $name") ;;
    pid) [ -r "/proc/$name/cmdline" ] && tr '\0' ' ' <"/proc/$name/cmdline" | grep -q netstackd && left+=("process $name") ;;
  esac
done <"$TMP/ledger-add"
check "add_parallel.sh recorded what it created and left none of it${left:+ (left: ${left[*]})}" \
  sh -c "[ -s '$TMP/ledger-add' ] && [ ${#left[@]} = 0 ]"

echo "==> e2e/bench/vm.sh --quick"
VMJ=$TMP/vm.json
timeout -k 10 300 env BENCH_LEDGER="$TMP/ledger-vm" e2e/bench/vm.sh --quick --no-build --out "$VMJ" \
  >"$TMP/vm.log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then ok "vm.sh --quick exits 0"; else
  fail "vm.sh --quick exits 0 (exit $rc); its output:"
  sed 's/^/    /' "$TMP/vm.log"
fi
check "the VM table is printed, KVM or TCG stated" grep -Eq '^VM rows .*VMs on (kvm|tcg)' "$TMP/vm.log"
check "the JSON states the accelerator ($(jq -r .accel "$VMJ" 2>/dev/null))" jq -e '.accel == "kvm" or .accel == "tcg"' "$VMJ"
VM_FIGURES=(tcp1_vm2pod_gbps tcp4_vm2pod_gbps tcp1_pod2vm_gbps tcp4_pod2vm_gbps udp64_vm2pod_kpps
  udp64_vm2pod_loss_pct udp64_pod2vm_kpps udp64_pod2vm_loss_pct)
for path in vhost_user kata_tap; do
  missing=$(jq -r --arg p "$path" '.paths[$p] as $e | $ARGS.positional[] | select(($e[.] | type) != "number")' \
    "$VMJ" --args "${VM_FIGURES[@]}" 2>/dev/null || echo "(unreadable JSON)")
  check "VM $path: all ${#VM_FIGURES[@]} figures are numbers${missing:+ (not: $(echo $missing))}" test -z "$missing"
done
left=()
while read -r kind name; do
  case $kind in
    netns) [ -e "/run/netns/$name" ] && left+=("netns $name") ;;
    link) ip link show dev "$name" >/dev/null 2>&1 && left+=("link $name") ;;
    dir) [ -e "$name" ] && left+=("dir $name") ;;
    pid) [ -r "/proc/$name/cmdline" ] && tr '\0' ' ' <"/proc/$name/cmdline" | grep -q -e netstackd -e qemu && left+=("process $name") ;;
  esac
done <"$TMP/ledger-vm"
check "vm.sh recorded what it created and left none of it${left:+ (left: ${left[*]})}" \
  sh -c "[ -s '$TMP/ledger-vm' ] && [ ${#left[@]} = 0 ]"

echo "==> e2e/bench/sched.sh --runs 1 --duration 1"
timeout -k 10 300 e2e/bench/sched.sh --runs 1 --duration 1 --no-build --variants "default slice100 pin" \
  >"$TMP/sched.log" 2>&1
rc=$?
if [ "$rc" = 0 ]; then ok "sched.sh exits 0"; else
  fail "sched.sh exits 0 (exit $rc); its output:"
  sed 's/^/    /' "$TMP/sched.log"
fi
for v in default slice100 pin; do
  # variant (n=1): eight figures, each "median [min, max]": RTT idle and busy, Gbit/s, CPU/Gbit.
  check "sched.sh $v: all eight figures are numbers" \
    grep -Eq "^$v \(n=1\): ([0-9.e+]+ \[[0-9.e+]+, [0-9.e+]+\](, |$)){8}" "$TMP/sched.log"
done
check "sched.sh left no namespace or netstackd" sh -c "! ip netns list | grep -q '^nssc' && ! pgrep -f 'netstack-sched\.'"

echo
echo "test_bench_smoke: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
