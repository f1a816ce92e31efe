#!/usr/bin/env bash
# The main job, on one machine as root: install what is needed, build, start netstackd, create
# two pods through the CNI call path, show ping and iperf3 between the pods and from a pod to
# the node, print netstackd's counters, and tear everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
. e2e/lib.sh
trap e2e_cleanup EXIT

log "building release binaries"
build_release

log "starting netstackd (pod CIDR $POD_CIDR, uplink $UPLINK, gateway $GATEWAY)"
start_netstackd
ctlh status

write_conflist
log "CNI ADD for two pods (conflist $CONFLIST: netstack + host-local)"
A=demo-a-$RUN_ID
B=demo-b-$RUN_ID
IP_A=$(add_pod "$A")
IP_B=$(add_pod "$B")
echo "pod A: $IP_A   pod B: $IP_B"
jq . "$WORK/$A.result.json"
in_pod "$A" ip -d addr show eth0 | sed 's/^/    /'

log "ping pod A -> pod B"
in_pod "$A" ping -c 3 -i 0.2 "$IP_B"
log "ping pod A -> node ($GATEWAY)"
in_pod "$A" ping -c 3 -i 0.2 "$GATEWAY"

log "iperf3, 5 s, pod A -> pod B"
in_pod "$B" iperf3 -s -1 -D --bind "$IP_B"
sleep 0.5
in_pod "$A" iperf3 -c "$IP_B" -t 5 -f g

log "iperf3, 5 s, pod A -> node"
iperf3 -s -1 -D --bind "$GATEWAY"
sleep 0.5
in_pod "$A" iperf3 -c "$GATEWAY" -t 5 -f g

log "netstackd's view: pods and counters"
ctlh list
ctlh stats

log "CNI DEL and teardown"
cni DEL "$A" "/run/netns/$A"
cni DEL "$B" "/run/netns/$B"
echo "attachments left: $(ctl status | jq .attachments)"
