#!/usr/bin/env bash
# e2e: podman's CNI backend on a netstack network, TAP and veth mode. podman passes a
# container's `--mac-address` as CNI_ARGS `MAC=` and `--ip` as `IP=` (which host-local reads):
# the container must get exactly that MAC and address, reach another container and the node,
# and leave nothing behind at `podman rm`. Needs root; run by scripts/test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/podman_lib.sh"

attachments() { ctl status | jq .attachments; }
ipam_reservations() { find "$IPAM_DIR/$NETWORK" -maxdepth 1 -name '[0-9]*' 2>/dev/null | wc -l; }
pm_cleanup() { podman_cleanup; e2e_cleanup; }
trap pm_cleanup EXIT

if podman_setup "$BIN" "$REF_CNI"; then ok "podman (CNI backend) with an imported image"; else fail "podman setup: $(cat "$WORK/import.log")"; exit 1; fi
PREFIX=${POD_CIDR%.0/24}
for MODE in tap veth; do
  log "podman run --mac-address --ip on a netstack network, $MODE mode"
  write_conflist
  cp "$CONFLIST" "$PM/net.d/netstack-e2e.conflist"
  start_netstackd || exit 1
  C1=pm-$MODE-1-$RUN_ID C2=pm-$MODE-2-$RUN_ID
  MAC1=0a:58:aa:bb:cc:0${#MODE} IP1=$PREFIX.$((40 + ${#MODE}))
  if pm run -d --name "$C1" --network "$NETWORK" --mac-address "$MAC1" --ip "$IP1" --cap-add NET_RAW "$IMAGE" sleep 300 >"$WORK/c1.log" 2>&1; then
    ok "$MODE: podman run --mac-address $MAC1 --ip $IP1"
  else
    fail "$MODE: podman run: $(cat "$WORK/c1.log")"
  fi
  check "$MODE: podman run of a second container (addresses from host-local)" \
    pm run -d --name "$C2" --network "$NETWORK" --cap-add NET_RAW "$IMAGE" sleep 300
  got_mac=$(pm exec "$C1" cat /sys/class/net/eth0/address 2>/dev/null)
  check "$MODE: eth0 has MAC $MAC1 (got $got_mac)" test "$got_mac" = "$MAC1"
  got_ip=$(pm exec "$C1" ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}')
  check "$MODE: eth0 has $IP1 (got $got_ip)" test "${got_ip%/*}" = "$IP1"
  check "$MODE: netstackd records the MAC" test "$(ctl stats | jq -r --arg ip "$IP1/24" '.pods[] | select(.ips | index($ip)) | .mac')" = "$MAC1"
  check "$MODE: netstackd attached it in $MODE mode" test "$(ctl list | jq -r --arg ip "$IP1/24" '.. | objects | select(.ips? and (.ips | index($ip))) | .mode')" = "$MODE"
  IP2=$(pm exec "$C2" ip -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
  check "$MODE: container 1 pings container 2 ($IP2)" pm exec "$C1" ping -c 2 -i 0.2 -W 2 "$IP2"
  check "$MODE: container 2 pings container 1 at the static address" pm exec "$C2" ping -c 2 -i 0.2 -W 2 "$IP1"
  check "$MODE: container 1 pings the node (gateway)" pm exec "$C1" ping -c 2 -i 0.2 -W 2 "$GATEWAY"
  check "$MODE: podman rm -f both" pm rm -f -t 0 "$C1" "$C2"
  check "$MODE: no attachment and no IPAM reservation left" test "$(attachments)/$(ipam_reservations)" = "0/0"
  stop_netstackd
  ip link del "$UPLINK" 2>/dev/null
done

echo "podman CNI: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
