#!/usr/bin/env bash
# How veth mode should receive from and send to its packet sockets, measured: recvmmsg batches
# (what netstackd does) against a TPACKET_V2 receive ring, and sendmmsg against a TPACKET_V2
# transmit ring (with recvmmsg), all through `nsbench pkt-fwd`, a one-thread AF_PACKET wire
# with netstackd's socket options (virtio-net header, qdisc bypass, batches of 32), between two
# pod namespaces made here. Per path: TCP 1 stream (iperf3), 64-byte UDP delivered (nsbench
# udp-blast at full speed), 1-byte TCP ping-pong RTT, the forwarder's CPU per Gbit and frames
# per receive, the kernel memory the rings pin, and whether 128 MiB of random bytes cross a TCP
# connection intact (sha256 at both ends). Every run is bounded in time; everything made is
# removed on exit.
#
#   e2e/bench/packet_io.sh [--duration S] [--no-build] [--out FILE]
#
# As root, from the repository root. Default: 5-second runs (about two minutes in all).
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DUR=5 BUILD=1 OUT=$REPO/target/bench/packet_io.json
while (($#)); do
  case $1 in
    --duration) DUR=$2; shift ;;
    --no-build) BUILD=0 ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "packet_io.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
positive_ints packet_io.sh "$DUR"
need_root packet_io.sh

ID=$(($$ % 100000))
P=npio$ID
A=$P-a B=$P-b F=$P-f
WORK=/tmp/netstack-packet-io.$$
X=$(($$ % 250 + 1))
IP_A=10.253.$X.1 IP_B=10.253.$X.2
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  for ns in "$A" "$B" "$F"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ((BUILD)); then
  (cd "$REPO" && cargo build --release -q -p nsbench) || { echo "packet_io.sh: build failed" >&2; exit 1; }
fi
NSB=$BIN/nsbench
[ -x "$NSB" ] || { echo "packet_io.sh: $NSB missing (build first, or drop --no-build)" >&2; exit 1; }
for t in iperf3 jq socat; do command -v "$t" >/dev/null || { echo "packet_io.sh: $t missing (scripts/deps.sh)" >&2; exit 1; }; done
mkdir -p "$WORK" "$(dirname "$OUT")"

# Two pods on one /24, wired through the forwarder's namespace: A eth0 = fa ... fb = B eth0.
for ns in "$A" "$B" "$F"; do ip netns add "$ns" && ip -n "$ns" link set lo up || exit 1; done
ip netns exec "$F" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add eth0 netns "$A" type veth peer name fa netns "$F" || exit 1
ip link add eth0 netns "$B" type veth peer name fb netns "$F" || exit 1
ip -n "$A" addr add "$IP_A/24" dev eth0
ip -n "$B" addr add "$IP_B/24" dev eth0
for l in "$A eth0" "$B eth0" "$F fa" "$F fb"; do set -- $l; ip -n "$1" link set "$2" up; done

# The receive and send paths of each column: recvmmsg/sendmmsg, RX ring, TX ring.
declare -A RXTX=([mmsg]="--rx mmsg --tx mmsg" [ring]="--rx ring --tx mmsg" [txring]="--rx mmsg --tx ring")
fwd() { # MODE KEY SECONDS: start the forwarder; it stops 1 s after the traffic, or at SECONDS
  ip netns exec "$F" timeout -k 2 $(($3 + 5)) "$NSB" pkt-fwd --a fa --b fb ${RXTX[$1]} \
    --duration "$3" --idle 1 >"$WORK/fwd-$1-$2.json" 2>&1 &
  FWD=$!; PIDS+=("$FWD")
  sleep 0.3
}
# Waits for the forwarder (in this shell: a subshell cannot wait for it), so two never overlap.
fwd_wait() { wait "$FWD" 2>/dev/null; }
num() { jq -r "$1 // empty" 2>/dev/null; }
# Busy jiffies of the whole machine (user + nice + system + irq + softirq + steal): the ring
# moves the copy into the sender's softirq, so the forwarder's own CPU alone would flatter it.
busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
HZ=$(getconf CLK_TCK)

declare -A R
head -c 128M /dev/urandom >"$WORK/blob"
SUM=$(sha256sum <"$WORK/blob" | cut -d' ' -f1)
for mode in mmsg ring txring; do
  echo "==> $mode"
  # TCP, 1 stream.
  ip netns exec "$B" timeout -k 2 $((DUR + 15)) iperf3 -s -1 --bind "$IP_B" >/dev/null 2>&1 &
  PIDS+=($!)
  fwd "$mode" tcp $((DUR + 10))
  b0=$(busy)
  ip netns exec "$A" timeout -k 2 $((DUR + 10)) iperf3 -c "$IP_B" -t "$DUR" -J >"$WORK/iperf-$mode.json" 2>&1
  b1=$(busy)
  fwd_wait
  f=$(cat "$WORK/fwd-$mode-tcp.json")
  bps=$(num '.end.sum_received.bits_per_second' <"$WORK/iperf-$mode.json")
  if [ -z "$bps" ] || ! jq -e . >/dev/null 2>&1 <<<"$f"; then
    echo "  TCP failed: $(head -c 300 "$WORK/iperf-$mode.json") / $(head -c 300 <<<"$f")" >&2
  else
    R[$mode-tcp]=$(awk -v b="$bps" 'BEGIN {printf "%.2f", b / 1e9}')
    R[$mode-cpu]=$(awk -v c="$(num .cpu_seconds <<<"$f")" -v b="$bps" -v d="$DUR" 'BEGIN {printf "%.3f", c / (b * d / 1e9)}')
    R[$mode-mcpu]=$(awk -v j=$((b1 - b0)) -v hz="$HZ" -v b="$bps" -v d="$DUR" 'BEGIN {printf "%.3f", j / hz / (b * d / 1e9)}')
    R[$mode-fpc]=$(num .frames_per_rx_call <<<"$f" | xargs printf '%.1f')
    R[$mode-ring]=$(( $(num .ring_kernel_bytes_per_socket <<<"$f") + $(num .tx_ring_kernel_bytes_per_socket <<<"$f") ))
    R[$mode-busy]=$(num .tx_ring_busy <<<"$f")
    echo "  TCP ${R[$mode-tcp]} Gbit/s, forwarder $(num .cpu_seconds <<<"$f") CPU-s, $(num .frames <<<"$f") frames, ${R[$mode-fpc]} per receive"
  fi
  # 128 MiB of random bytes over TCP: do they arrive as sent?
  fwd "$mode" blob $((DUR + 25))
  ip netns exec "$B" timeout -k 2 30 socat -u TCP-LISTEN:5303,bind="$IP_B" - 2>/dev/null | sha256sum | cut -d' ' -f1 >"$WORK/sum-$mode" &
  RCV=$!; PIDS+=("$RCV")
  sleep 0.3
  ip netns exec "$A" timeout -k 2 25 socat -u FILE:"$WORK/blob" TCP:"$IP_B":5303 2>/dev/null
  wait "$RCV" 2>/dev/null
  fwd_wait
  if [ "$(cat "$WORK/sum-$mode")" = "$SUM" ]; then R[$mode-intact]=yes; else R[$mode-intact]=NO; fi
  echo "  128 MiB over TCP intact: ${R[$mode-intact]}"
  # 64-byte UDP at full speed.
  ip netns exec "$B" timeout -k 2 $((DUR + 15)) "$NSB" udp-sink --bind "$IP_B:5301" --duration $((DUR + 10)) --idle 0.5 \
    >"$WORK/sink-$mode.json" 2>&1 &
  SINK=$!; PIDS+=("$SINK")
  fwd "$mode" udp $((DUR + 10))
  ip netns exec "$A" timeout -k 2 $((DUR + 10)) "$NSB" udp-blast --connect "$IP_B:5301" --duration "$DUR" \
    >"$WORK/blast-$mode.json" 2>&1
  wait "$SINK" 2>/dev/null
  fwd_wait
  sent=$(num .sent <"$WORK/blast-$mode.json"); got=$(num .received <"$WORK/sink-$mode.json")
  el=$(num .elapsed_s <"$WORK/blast-$mode.json")
  if [ -n "$sent" ] && [ -n "$got" ] && [ -n "$el" ]; then
    R[$mode-udp]=$(awk -v g="$got" -v e="$el" 'BEGIN {printf "%.0f", g / e / 1000}')
    R[$mode-sent]=$(awk -v s="$sent" -v e="$el" 'BEGIN {printf "%.0f", s / e / 1000}')
    echo "  UDP 64 B: sent ${R[$mode-sent]} kpps, delivered ${R[$mode-udp]} kpps"
  else
    echo "  UDP failed: $(head -c 300 "$WORK/blast-$mode.json")" >&2
  fi
  # 1-byte ping-pong.
  ip netns exec "$B" timeout -k 2 $((DUR + 15)) "$NSB" rr-server --bind "$IP_B:5302" --duration $((DUR + 10)) >/dev/null 2>&1 &
  RRS=$!; PIDS+=("$RRS")
  fwd "$mode" rr $((DUR + 10))
  out=$(ip netns exec "$A" timeout -k 2 $((DUR + 10)) "$NSB" rr-client --connect "$IP_B:5302" --duration "$DUR" 2>&1)
  kill "$RRS" 2>/dev/null
  fwd_wait
  if jq -e .p50_us >/dev/null 2>&1 <<<"$out"; then
    R[$mode-rtt]=$(jq -r '"\(.min_us*10|round/10)/\(.p50_us*10|round/10)/\(.p99_us*10|round/10)"' <<<"$out")
    echo "  RTT min/p50/p99 ${R[$mode-rtt]} us"
  else
    echo "  RTT failed: $(head -c 300 <<<"$out")" >&2
  fi
done

v() { echo "${R[$1]:--}"; }
echo
echo "packet-socket paths (nsbench pkt-fwd, one thread, ${DUR} s runs; 2 CPUs shared with the endpoints)"
row() { printf '%-36s %-9s %12s %12s %12s\n' "$@"; }
row figure unit "rx/tx mmsg" "RX ring" "TX ring"
row ------------------------------------ --------- ------------ ------------ ------------
row "TCP 1 stream" Gbit/s "$(v mmsg-tcp)" "$(v ring-tcp)" "$(v txring-tcp)"
row "forwarder CPU per Gbit (TCP)" CPU-s "$(v mmsg-cpu)" "$(v ring-cpu)" "$(v txring-cpu)"
row "machine CPU per Gbit (TCP)" CPU-s "$(v mmsg-mcpu)" "$(v ring-mcpu)" "$(v txring-mcpu)"
row "frames per receive (TCP)" frames "$(v mmsg-fpc)" "$(v ring-fpc)" "$(v txring-fpc)"
row "TX ring full, sent by sendmmsg (TCP)" frames - - "$(v txring-busy)"
row "128 MiB over TCP intact" sha256 "$(v mmsg-intact)" "$(v ring-intact)" "$(v txring-intact)"
row "UDP 64 B sent" kpps "$(v mmsg-sent)" "$(v ring-sent)" "$(v txring-sent)"
row "UDP 64 B delivered" kpps "$(v mmsg-udp)" "$(v ring-udp)" "$(v txring-udp)"
row "TCP 1 B RTT min/p50/p99" us "$(v mmsg-rtt)" "$(v ring-rtt)" "$(v txring-rtt)"
row "ring kernel memory per socket" KiB 0 "$(( ${R[ring-ring]:-0} / 1024 ))" "$(( ${R[txring-ring]:-0} / 1024 ))"
echo "A ring frame must hold a whole 64 KiB GSO frame; netstackd opens one socket per worker per veth pod."

json='{}'
for k in "${!R[@]}"; do json=$(jq --arg k "$k" --arg v "${R[$k]}" '. + {($k): $v}' <<<"$json"); done
jq --arg d "$DUR" '{duration_s: ($d | tonumber), results: .}' <<<"$json" >"$OUT"
echo "JSON: $OUT"
