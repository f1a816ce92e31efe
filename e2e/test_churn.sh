#!/usr/bin/env bash
# e2e: no leaks under churn. 1000 ADD/DEL cycles straight through the CNI plugin (host-local
# IPAM, a /24 that a leak of a few hundred addresses would exhaust), with failures injected:
# netstackd SIGKILLed in the middle of an ADD (and started again: it re-reads its state dir),
# the netns deleted before DEL, DEL called twice, ADD again for a container id that is already
# attached. Afterwards: no TAP or veth left, host-local holds no address, no state file, and
# netstackd's fd counts are back to their idle baseline. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

child_pid() { pgrep -P "$NETSTACKD_PID" -f 'netstackd dataplane' | head -1; }
# running PID: the process exists and is not a zombie (a dead child waiting for init to reap it).
running() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
ipam_reservations() { find "$IPAM_DIR/$NETWORK" -maxdepth 1 -name '[0-9]*' 2>/dev/null | wc -l; }
state_files() { find "$STATE" -maxdepth 1 -name '*.json*' | wc -l; }
attachments() { ctl status | jq .attachments; }
# Host-netns TUN/TAP and veth devices, but not the uplinks of netstackds (ours or a concurrent
# test's): a pod TAP whose netns died would be moved here.
host_tun_veth() { { ip -o link show type tun; ip -o link show type veth; } | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -v '^nse[0-9]*$' | sort; }

CYCLES=${CHURN_CYCLES:-1000}
POOL=4

write_conflist
start_netstackd --workers 2 || exit 1
CONF=$(jq -c '.plugins[0] + {cniVersion: .cniVersion, name: .name}' "$CONFLIST")
# plugin CMD ID NETNS_PATH: one CNI call, output in $OUT, exit status returned.
OUT=
plugin() {
  OUT=$(printf '%s' "$CONF" | CNI_COMMAND=$1 CNI_CONTAINERID=$2 CNI_NETNS=$3 CNI_IFNAME=eth0 \
    CNI_PATH="$BIN:$REF_CNI" CNI_ARGS=IgnoreUnknown=1 "$BIN/netstack" 2>>"$WORK/plugin.err")
}
# problem TEXT: one unexpected outcome; the first few are printed, all are counted.
PROBLEMS=0
problem() {
  PROBLEMS=$((PROBLEMS + 1))
  [ "$PROBLEMS" -le 10 ] && printf '       cycle %s: %s\n' "$i" "$1"
}

NS=()
for n in $(seq 0 $((POOL - 1))); do
  NS+=("churn-$RUN_ID-$n")
  ip netns add "${NS[$n]}"
  echo "${NS[$n]}" >>"$WORK/pods"   # e2e_cleanup deletes them
done
GONE=churn-$RUN_ID-gone
echo "$GONE" >>"$WORK/pods"

sleep 0.5
SUP_FDS0=$(fd_count "$NETSTACKD_PID")
DP_FDS0=$(fd_count "$(child_pid)")
LINKS0=$(host_tun_veth)
log "idle baseline: supervisor $SUP_FDS0 fds, dataplane $DP_FDS0 fds; $CYCLES cycles"

normal=0 twice=0 dup=0 gone=0 kills=0 kill_add_ok=0 kill_codes=
START=$SECONDS
for i in $(seq 1 "$CYCLES"); do
  id=churn-$RUN_ID-$i
  ns=/run/netns/${NS[$((i % POOL))]}
  case $((i % 10)) in
    1) # DEL called twice
      plugin ADD "$id" "$ns" || problem "ADD failed: $OUT"
      plugin DEL "$id" "$ns" || problem "DEL failed: $OUT"
      plugin DEL "$id" "$ns" || problem "second DEL failed: $OUT"
      twice=$((twice + 1)) ;;
    3) # ADD again for a container id that is attached: refused, the first one untouched
      plugin ADD "$id" "$ns" || problem "ADD failed: $OUT"
      if plugin ADD "$id" "$ns"; then problem "a second ADD of $id succeeded"; fi
      ip -n "${ns#/run/netns/}" link show eth0 type tun >/dev/null 2>&1 ||
        problem "the refused second ADD removed the first one's TAP"
      [ "$(attachments)" = 1 ] || problem "the refused second ADD detached the first one"
      [ "$(ipam_reservations)" = 1 ] || problem "the refused second ADD released the first one's address"
      plugin DEL "$id" "$ns" || problem "DEL failed: $OUT"
      dup=$((dup + 1)) ;;
    5) # the netns is deleted before DEL
      ip netns add "$GONE"
      plugin ADD "$id" "/run/netns/$GONE" || problem "ADD failed: $OUT"
      ip netns del "$GONE"
      plugin DEL "$id" "/run/netns/$GONE" || problem "DEL with the netns gone failed: $OUT"
      gone=$((gone + 1)) ;;
    7) if [ $((i % 50)) = 7 ]; then
        # netstackd SIGKILLed in the middle of an ADD, started again, then the runtime's DEL
        dp=$(child_pid)
        # Idle here (no pod attached): an fd leaked since the last start would show.
        [ "$(fd_count "$NETSTACKD_PID")" = "$SUP_FDS0" ] ||
          problem "the supervisor holds $(fd_count "$NETSTACKD_PID") fds idle, baseline $SUP_FDS0"
        [ "$(fd_count "$dp")" = "$DP_FDS0" ] ||
          problem "the dataplane holds $(fd_count "$dp") fds idle, baseline $DP_FDS0"
        printf '%s' "$CONF" | CNI_COMMAND=ADD CNI_CONTAINERID=$id CNI_NETNS=$ns CNI_IFNAME=eth0 \
          CNI_PATH="$BIN:$REF_CNI" CNI_ARGS=IgnoreUnknown=1 "$BIN/netstack" >"$WORK/add.out" 2>>"$WORK/plugin.err" &
        add=$!
        sleep "0.0$((RANDOM % 6))"
        kill -KILL "$NETSTACKD_PID"
        wait "$NETSTACKD_PID" 2>/dev/null
        wait "$add"; add_rc=$?
        for _ in $(seq 1 20); do running "$dp" || break; sleep 0.05; done
        running "$dp" && problem "the dataplane $dp outlived its supervisor"
        start_netstackd --workers 2 >/dev/null || { problem "netstackd did not start again"; break; }
        if [ "$add_rc" = 0 ]; then
          kill_add_ok=$((kill_add_ok + 1))
          [ "$(attachments)" = 1 ] || problem "ADD succeeded but the restarted netstackd did not restore it"
        else
          kill_codes="$kill_codes $(jq -r .code "$WORK/add.out" 2>/dev/null)"
          [ "$(attachments)" = 0 ] && [ "$(ipam_reservations)" = 0 ] &&
            ! ip -n "${ns#/run/netns/}" link show eth0 >/dev/null 2>&1 ||
            problem "the ADD that failed ($(cat "$WORK/add.out")) left something behind"
        fi
        plugin DEL "$id" "$ns" || problem "DEL after the restart failed: $OUT"
        kills=$((kills + 1))
      else
        plugin ADD "$id" "$ns" || problem "ADD failed: $OUT"
        plugin DEL "$id" "$ns" || problem "DEL failed: $OUT"
        normal=$((normal + 1))
      fi ;;
    *)
      plugin ADD "$id" "$ns" || problem "ADD failed: $OUT"
      plugin DEL "$id" "$ns" || problem "DEL failed: $OUT"
      normal=$((normal + 1)) ;;
  esac
done
ELAPSED=$((SECONDS - START))
log "$CYCLES cycles in ${ELAPSED}s"
check "$normal plain cycles, $twice with DEL twice, $dup with a second ADD of the same id, $gone with the netns gone before DEL, $kills with netstackd killed mid-ADD ($kill_add_ok ADDs got through, the others failed with codes:${kill_codes:- none}): every outcome as expected ($PROBLEMS unexpected)" \
  test "$PROBLEMS" = 0
check "all $CYCLES cycles ran" test "$((normal + twice + dup + gone + kills))" = "$CYCLES"

log "nothing left behind"
sleep 0.5
leftover=0
for n in "${NS[@]}"; do
  [ -n "$(ip -n "$n" -o link show type tun)" ] && leftover=$((leftover + 1))
done
check "no TAP left in the pods' netns" test "$leftover" = 0
new_links=$(comm -13 <(printf '%s\n' "$LINKS0") <(host_tun_veth) | grep -v '^$')
check "no TAP or veth left in the host netns${new_links:+ (new: $(echo $new_links))}" test -z "$new_links"
check "host-local holds no address ($(ipam_reservations))" test "$(ipam_reservations)" = 0
check "no state file left ($(state_files))" test "$(state_files)" = 0
check "netstackd has no attachment" test "$(attachments)" = 0
sup_fds=$(fd_count "$NETSTACKD_PID")
dp_fds=$(fd_count "$(child_pid)")
check "supervisor fd count back to its idle baseline ($sup_fds, baseline $SUP_FDS0)" test "$sup_fds" = "$SUP_FDS0"
check "dataplane fd count back to its idle baseline ($dp_fds, baseline $DP_FDS0)" test "$dp_fds" = "$DP_FDS0"
check "one dataplane process, the supervisor's child" test "$(pgrep -P "$NETSTACKD_PID" -fc 'netstackd dataplane')" = 1
check "the churn took under 170 s (${ELAPSED}s)" test "$ELAPSED" -lt 170

echo
echo "test_churn: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
