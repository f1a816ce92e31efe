#!/usr/bin/env bash
# The VM rows of the benchmark (issue 19): the same test VM (e2e/vm/: Debian's cloud kernel, a
# busybox + iperf3 initramfs) attached two ways in one run, against a netstack TAP pod P:
#   vhost_user  its virtio-net on netstackd's vhost-user socket (a pod V of CNI mode
#               vhost-user; QEMU in V's netns on the socketPath of V's result, V's MAC)
#   kata_tap    QEMU's own -netdev tap on tap0_kata in a netstack TAP pod K, joined to K's
#               eth0 by tc mirred both ways: Kata's default tcfilter internetworking (test_vm's)
# Rows, each iperf3 for the duration with the client in pod P and the server in the guest:
# VM->pod TCP (-R: the guest sends) and pod->VM TCP, 1 and 4 streams; 64-byte UDP at full
# speed (-b 0) each way, delivered kpps and loss. The VMs boot one after the other (one runs
# at a time) and the output says whether they ran on KVM or TCG, and the machine's load.
# Prints one table and writes the same as JSON (default target/bench/vm.json). Everything it
# creates (netstackd, pods, QEMU, work dir) is removed on exit, Ctrl-C or failure.
#
#   e2e/bench/vm.sh [--quick] [--duration S] [--no-build] [--out FILE]
#
# As root, from the repository root. Default: 5-second runs (about 70 s under TCG);
# --quick: 1-second runs (about 25 s). run.sh --vm runs it after its own rows.
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DUR=5 BUILD=1
OUT=$REPO/target/bench/vm.json
while (($#)); do
  case $1 in
    --quick) DUR=1 ;;
    --duration) DUR=$2; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "vm.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
positive_ints vm.sh "$DUR"
need_root vm.sh

RUN_ID=${BENCH_RUN_ID:-$$}
ID=$((RUN_ID % 100000))
export RUN_ID
WORK=/tmp/netstack-benchvm.$RUN_ID
UPLINK=nsbvu$ID
DP_NETNS=/run/netns/nsbvm$ID-dp
# e2e/lib.sh: netstackd, the conflist, add_pod, cni, e2e_cleanup; then the VM helpers.
. "$REPO/e2e/lib.sh"
. "$REPO/e2e/vm/lib.sh"
P=nsbvm$ID-p
V=nsbvm$ID-v
K=nsbvm$ID-k
VU_CONFLIST=$WORK/vhost-user.conflist
PORT=5201

cleanup() {
  set +e
  trap - EXIT INT TERM HUP
  vm_cleanup
  vm_kata_tap_del "$K" 2>/dev/null
  [ -e "/run/netns/$V" ] && CONFLIST=$VU_CONFLIST cni DEL "$V" "/run/netns/$V" >/dev/null 2>&1
  e2e_cleanup
}
on_exit cleanup

if ((BUILD)); then
  log "building the release binaries"
  (cd "$REPO" && nice cargo build --release --quiet --bins) || exit 1
fi
mkdir -p "$WORK" "$(dirname "$OUT")"
ledger dir "$WORK"
ledger link "$UPLINK"
ledger netns "$(basename "$DP_NETNS")"

log "the VM (kernel, initramfs with iperf3) and the accelerator"
vm_assets || exit 1
vm_accel
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo +dirty)
log "VMs on $VM_ACCEL ($VM_ACCEL_WHY); load average $LOAD_START"

write_conflist
# 1.1.0: the result's socketPath is a CNI 1.1 field (a 1.0.0 result has none).
jq '.cniVersion = "1.1.0" | .plugins[0].mode = "vhost-user"' "$CONFLIST" >"$VU_CONFLIST"
# One worker: the one-vCPU guest uses one queue pair, which one worker reads (e2e/test_vhost.sh
# runs two workers on it); the Kata column's TAP pod gets the same one worker.
start_netstackd --workers 1 || exit 1
ledger pid "$NETSTACKD_PID"
for n in "$P" "$V" "$K"; do ledger netns "$n"; done
IP_P=$(add_pod "$P") || exit 1
IP_K=$(add_pod "$K") || exit 1
# A failed vhost-user ADD leaves that column n/a (and the exit status non-zero), not the run.
IP_V=$(CONFLIST=$VU_CONFLIST add_pod "$V") || IP_V=
echo "  pod P (TAP) $IP_P, pod V (vhost-user) $IP_V, pod K (TAP, Kata tcfilter) $IP_K"

declare -A FIG
# fig PATH KEY VALUE: one figure (empty: not measured, null in the JSON).
fig() { FIG[$1.$2]=$3; }

# iperf PATH KEY IP ARGS...: iperf3 from pod P to the guest's server at IP for DUR seconds; prints
# the client's JSON on stdout (nothing, and status 1, if it failed). A run that fails (the
# guest's server still busy with the previous test under TCG) is tried again, 3 times at most.
iperf() {
  local path=$1 key=$2 ip=$3 j try
  j=$WORK/iperf-$path-$key.json
  shift 3
  for try in 1 2 3; do
    in_pod "$P" timeout -k 2 $((DUR + 30)) iperf3 -c "$ip" -p "$PORT" -t "$DUR" -J "$@" \
      >"$j" 2>"$WORK/iperf-$path-$key.err"
    jq -e '(.error | not) and (.end.sum_received or .end.sum)' "$j" >/dev/null 2>&1 && break
    echo "  $path $key (try $try): iperf3 failed: $(jq -r '.error // empty' "$j" 2>/dev/null)$(head -c 200 "$WORK/iperf-$path-$key.err")" >&2
    ((try == 3)) && return 1
    sleep 2
  done
  cat "$j"
}

# measure PATH VMNAME IP: the rows for one attachment, its VM booted and its server started.
measure() {
  local path=$1 vm=$2 ip=$3 j
  vm_run "$vm" "iperf3 -s -D -p $PORT" >/dev/null
  # The bound is for a hang: the server listens within a second or two even under TCG.
  eventually 20 in_pod "$P" timeout 5 iperf3 -c "$ip" -p "$PORT" -n 1K
  for streams in 1 4; do
    j=$(iperf "$path" "tcp${streams}_vm2pod" "$ip" -R -P "$streams") &&
      fig "$path" "tcp${streams}_vm2pod_gbps" "$(jq '.end.sum_received.bits_per_second / 1e9' <<<"$j")"
    j=$(iperf "$path" "tcp${streams}_pod2vm" "$ip" -P "$streams") &&
      fig "$path" "tcp${streams}_pod2vm_gbps" "$(jq '.end.sum_received.bits_per_second / 1e9' <<<"$j")"
  done
  # UDP: 64-byte payloads at full speed; the receiver's count (the client's end.sum with -R,
  # the server's as the client reports it without) of what arrived, per second of the run.
  for dir in vm2pod pod2vm; do
    local r=()
    [ "$dir" = vm2pod ] && r=(-R)
    j=$(iperf "$path" "udp64_$dir" "$ip" -u -l 64 -b 0 "${r[@]}") || continue
    fig "$path" "udp64_${dir}_kpps" "$(jq '.end.sum | (.packets - .lost_packets) / .seconds / 1e3' <<<"$j")"
    fig "$path" "udp64_${dir}_loss_pct" "$(jq '.end.sum.lost_percent' <<<"$j")"
  done
}

log "vhost-user: the VM on pod V's socket"
GW=$(jq -r '.ips[0].gateway' "$WORK/$K.result.json")
SOCK_V=$(jq -r '[.interfaces[] | select(.socketPath)][0].socketPath // empty' "$WORK/$V.result.json" 2>/dev/null)
MAC_V=$(jq -r '[.interfaces[] | select(.socketPath)][0].mac // empty' "$WORK/$V.result.json" 2>/dev/null)
CIDR_V=$(jq -r '.ips[0].address' "$WORK/$V.result.json" 2>/dev/null)
if [ -z "$IP_V" ] || [ -z "$SOCK_V" ] || [ -z "$MAC_V" ]; then
  echo "  vhost_user: no vhost-user pod (ADD failed, or its result has no socketPath/mac)" >&2
else
  vm_nic_vhost "$SOCK_V" "$MAC_V"
  VM_LAUNCH="ip netns exec $V" vm_boot vu "ns.ip=$CIDR_V ns.gw=$GW" -- "${VM_NIC[@]}"
  ok=$?
  ledger pid "${VM_PID[vu]}"
  if [ "$ok" = 0 ]; then
    vm_run vu -t 30 "ping -c 1 -W 20 $GW" >/dev/null
    measure vhost_user vu "$IP_V"
  fi
  vm_stop vu
fi

log "kata_tap: the same VM on QEMU's -netdev tap in pod K (Kata's tcfilter)"
CIDR_K=$(jq -r '.ips[0].address' "$WORK/$K.result.json")
MAC_K=$(ip -n "$K" -j link show eth0 | jq -r '.[0].address')
if vm_kata_tap "$K"; then
  vm_nic_tap "$MAC_K"
  VM_LAUNCH="ip netns exec $K" vm_boot kata "ns.ip=$CIDR_K ns.gw=$GW" -- "${VM_NIC[@]}"
  ok=$?
  ledger pid "${VM_PID[kata]}"
  if [ "$ok" = 0 ]; then
    vm_run kata -t 30 "ping -c 1 -W 20 $GW" >/dev/null
    measure kata_tap kata "$IP_K"
  fi
  vm_stop kata
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

KEYS=(tcp1_vm2pod_gbps tcp4_vm2pod_gbps tcp1_pod2vm_gbps tcp4_pod2vm_gbps udp64_vm2pod_kpps
  udp64_vm2pod_loss_pct udp64_pod2vm_kpps udp64_pod2vm_loss_pct)
declare -A LABEL=([tcp1_vm2pod_gbps]="VM->pod TCP, 1 stream (Gbit/s)"
  [tcp4_vm2pod_gbps]="VM->pod TCP, 4 streams (Gbit/s)"
  [tcp1_pod2vm_gbps]="pod->VM TCP, 1 stream (Gbit/s)"
  [tcp4_pod2vm_gbps]="pod->VM TCP, 4 streams (Gbit/s)"
  [udp64_vm2pod_kpps]="VM->pod UDP 64 B delivered (kpps)"
  [udp64_vm2pod_loss_pct]="VM->pod UDP 64 B loss (%)"
  [udp64_pod2vm_kpps]="pod->VM UDP 64 B delivered (kpps)"
  [udp64_pod2vm_loss_pct]="pod->VM UDP 64 B loss (%)")
num() { [ -n "${FIG[$1]:-}" ] && printf '%s' "${FIG[$1]}" || printf null; }

{
  printf '{"schema": 1, "started": "%s", "git": "%s", "accel": "%s", "accel_why": %s, "duration_s": %s, "load_start": "%s", "load_end": "%s", "paths": {' \
    "$STARTED" "$GIT" "$VM_ACCEL" "$(jq -Rn --arg w "$VM_ACCEL_WHY" '$w')" "$DUR" "$LOAD_START" "$LOAD_END"
  sep=
  for path in vhost_user kata_tap; do
    printf '%s"%s": {' "$sep" "$path"
    s2=
    for k in "${KEYS[@]}"; do printf '%s"%s": %s' "$s2" "$k" "$(num "$path.$k")"; s2=", "; done
    printf '}'
    sep=", "
  done
  printf '}}\n'
} | jq '. + {ratios: (.paths as $p | $p.vhost_user | with_entries(select(.key | test("loss") | not)
  | .value = (if (.value | type) == "number" and ($p.kata_tap[.key] | type) == "number" and $p.kata_tap[.key] > 0
              then .value / $p.kata_tap[.key] else null end)))}' >"$OUT"

echo
echo "VM rows ($STARTED, $GIT): VMs on $VM_ACCEL ($VM_ACCEL_WHY), ${DUR}-second runs, load average $LOAD_START -> $LOAD_END"
printf '%-36s %12s %12s %8s\n' "" vhost-user kata-tap vu/tap
for k in "${KEYS[@]}"; do
  printf '%-36s %12s %12s %8s\n' "${LABEL[$k]}" \
    "$(jq -r --arg k "$k" '.paths.vhost_user[$k] // "n/a" | if type == "number" then (. * 1000 | round / 1000) else . end' "$OUT")" \
    "$(jq -r --arg k "$k" '.paths.kata_tap[$k] // "n/a" | if type == "number" then (. * 1000 | round / 1000) else . end' "$OUT")" \
    "$(jq -r --arg k "$k" '.ratios[$k] // "" | if type == "number" then "x\(. * 100 | round / 100)" else . end' "$OUT")"
done
echo "JSON: $OUT"
jq -e '[.paths[][]] | all(type == "number")' "$OUT" >/dev/null
