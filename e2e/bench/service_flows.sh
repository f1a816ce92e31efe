#!/usr/bin/env bash
# What the service flow table costs pod-to-pod traffic (see README, *Services*): iperf3 TCP
# (1 stream) and 64-byte UDP (nsbench udp-blast, delivered kpps) from pod A to pod B, with
# the table never used, with it holding ~20 000 Service flows (made by real DNATed UDP
# requests from pod A through an nft rule), and with --service-flows off, in RUNS rounds of the
# three. Prints one line per run and the medians. As root, from the repository root; about
# 40 s per round (DUR=5 RUNS=5: 3.5 minutes).
set -uo pipefail
. "$(dirname "$0")/../lib.sh"
DUR=${DUR:-5}
RUNS=${RUNS:-5}
FLOWS=${FLOWS:-20000}
NFT_TABLE=svcbench-$RUN_ID
CIP=10.96.$((RUN_ID % 200 + 20)).20
A=sfb-a-$RUN_ID
B=sfb-b-$RUN_ID
SERVERS=()
cleanup() {
  local p
  for p in "${SERVERS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  nft delete table ip "$NFT_TABLE" 2>/dev/null
  e2e_cleanup
}
trap cleanup EXIT
trap 'exit 143' TERM INT

build_release || exit 1
write_conflist
start_netstackd --workers 2 || exit 1
IP_A=$(add_pod "$A") || exit 1
IP_B=$(add_pod "$B") || exit 1
in_pod "$B" iperf3 -s -B "$IP_B" >/dev/null 2>&1 &
SERVERS+=($!)
sleep 0.5

declare -A RESULTS
measure() { # LABEL: one TCP and one UDP run
  local label=$1 gbps kpps spid
  gbps=$(in_pod "$A" timeout $((DUR + 10)) iperf3 -c "$IP_B" -t "$DUR" -J | jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100')
  in_pod "$B" timeout $((DUR + 15)) "$BIN/nsbench" udp-sink --bind "$IP_B:9100" --duration $((DUR + 10)) --idle 0.5 >"$WORK/sink.out" 2>&1 &
  spid=$!
  sleep 0.3
  in_pod "$A" timeout $((DUR + 10)) "$BIN/nsbench" udp-blast --connect "$IP_B:9100" --duration "$DUR" >"$WORK/blast.json" 2>&1
  wait "$spid"
  kpps=$(jq -r --slurpfile s "$WORK/sink.out" '($s[0].received / .elapsed_s / 1000) | round' "$WORK/blast.json")
  echo "$label: tcp1 ${gbps} Gbit/s, udp64 delivered ${kpps} kpps"
  RESULTS[$label]+="$gbps $kpps;"
}
entries() { ctlh metrics | awk '$1 == "netstack_flow_table_entries" {print $2}'; }

# populate: one UDP request from each of $FLOWS source ports to a ClusterIP DNATed to pod B.
populate() {
  in_pod "$A" python3 - "$CIP" "$FLOWS" <<'PY'
import socket, sys, time
cip, n = sys.argv[1], int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (cip, 9))
    socks.append(s)
    if len(socks) >= 500:
        for s in socks:
            s.close()
        socks = []
        time.sleep(0.02)
PY
  sleep 1
}
nft -f - <<NFT
table ip $NFT_TABLE {
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; ip daddr $CIP udp dport 9 dnat to $IP_B:9; }
}
NFT

# Rounds, so that the machine's load drifts over all three states alike: a fresh netstackd
# (table unused), the same after $FLOWS Service requests, then one with --service-flows off.
for round in $(seq "$RUNS"); do
  [ "$round" = 1 ] || { stop_netstackd; start_netstackd --workers 2 || exit 1; sleep 1; }
  measure "table unused"
  populate
  echo "  flow table entries: $(entries) (inserts $(ctlh metrics | awk '$1 == "netstack_flow_table_inserts_total" {print $2}'))"
  measure "table populated"
  stop_netstackd
  start_netstackd --workers 2 --service-flows off || exit 1
  sleep 1
  measure "flows off"
done

echo "the table's own cost per pod-to-pod packet on this CPU (nsbench flow-lookup):"
"$BIN/nsbench" flow-lookup
echo "medians (tcp1 Gbit/s, udp64 kpps):"
median() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for label in "table unused" "table populated" "flows off"; do
  runs=$(tr ';' '\n' <<<"${RESULTS[$label]}" | grep .)
  printf '  %-16s tcp1 %s  udp64 %s\n' "$label" "$(cut -d' ' -f1 <<<"$runs" | median)" "$(cut -d' ' -f2 <<<"$runs" | median)"
done
