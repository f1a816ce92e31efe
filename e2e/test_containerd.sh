#!/usr/bin/env bash
# e2e: a real containerd (Debian's 1.6 + runc) creates pods with netstack over CRI, as the
# kubelet would: RunPodSandbox, PodSandboxStatus, StopPodSandbox, RemovePodSandbox through
# e2e/cri-client. containerd runs on a private socket, root and state dir, with the CRI
# plugin's CNI bin_dir/conf_dir pointing at ours and a static pause image built and imported
# here. Checks: two sandboxes get addresses from our plugin (and the runtime reports them),
# reach each other and the node through netstackd; stop + remove leaves no device, attachment
# or IPAM reservation; a sandbox created while netstackd is down fails with our error as
# containerd surfaces it, and succeeds on retry once netstackd is back. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

CTRD=$WORK/containerd
CTRD_SOCK=$CTRD/containerd.sock
CTRD_PID=
PAUSE_REF=netstack.test/pause:e2e
NETWORK=netstack-cri-$RUN_ID
CRI=$BIN/cri-client

check() { local what=$1; shift; if (set +o pipefail; "$@") >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }
cri() { "$CRI" --socket "$CTRD_SOCK" --timeout-secs 60 "$@"; }
ipam_reservations() { find "$IPAM_DIR/$NETWORK" -maxdepth 1 -type f -name '*[.:]*' ! -name 'last_reserved_ip*' 2>/dev/null | wc -l; }
attachments() { ctl status | jq .attachments; }

# run_sandbox NAME [ATTEMPT]: RunPodSandbox; prints the sandbox id.
run_sandbox() {
  local out
  out=$(cri run --name "$1" --uid "uid-$1-$RUN_ID" --namespace e2e --attempt "${2:-0}") || return 1
  jq -r .id <<<"$out"
}
remove_sandbox() { cri stop "$1" >/dev/null && cri remove "$1" >/dev/null; }

cleanup() {
  local id pid
  if [ -n "$CTRD_PID" ] && kill -0 "$CTRD_PID" 2>/dev/null; then
    [ -S "$SOCK" ] || start_netstackd >/dev/null 2>&1
    # Every sandbox of this private containerd is ours.
    for id in $(cri list 2>/dev/null | jq -r '.[]'); do remove_sandbox "$id" 2>/dev/null; done
    kill -TERM "$CTRD_PID"
    wait "$CTRD_PID" 2>/dev/null
  fi
  # Shims of this containerd only (their command line names our private socket).
  for pid in $(pgrep -f -- "-address $CTRD_SOCK" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  grep -F " $WORK/" /proc/mounts | cut -d' ' -f2 | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  e2e_cleanup
}
trap cleanup EXIT

for tool in containerd runc ctr gcc; do
  command -v "$tool" >/dev/null || { echo "test_containerd: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
[ -x "$CRI" ] || { echo "test_containerd: $CRI is missing (cargo build --release --bins)" >&2; exit 1; }

log "containerd $(containerd --version | awk '{print $3}') with netstack as its CNI"
mkdir -p "$WORK/cni-bin" "$WORK/cni-conf" "$CTRD" "$IPAM_DIR"
for p in "$REF_CNI"/*; do ln -sf "$p" "$WORK/cni-bin/"; done
ln -sf "$BIN/netstack" "$WORK/cni-bin/netstack"
# The shipped conflist, with this run's network name, pod CIDR, socket and IPAM dir.
jq --arg name "$NETWORK" --arg sock "$SOCK" --arg cidr "$POD_CIDR" --arg ipam "$IPAM_DIR" '
  .name = $name | .plugins[0].socket = $sock
  | .plugins[0].ipam.ranges = [[{subnet: $cidr}]] | .plugins[0].ipam.routes = [{dst: "0.0.0.0/0"}]
  | .plugins[0].ipam.dataDir = $ipam' "$ROOT/manifests/10-netstack.conflist" >"$WORK/cni-conf/10-netstack.conflist"
sed -e "s|@WORK@|$WORK|g" -e "s|@PAUSE@|$PAUSE_REF|g" "$ROOT/e2e/containerd/config.toml.in" >"$CTRD/config.toml"
"$ROOT/e2e/containerd/build_pause_image.sh" "$WORK/pause.tar" "$PAUSE_REF" || { echo "building the pause image failed" >&2; exit 1; }

start_netstackd || exit 1
containerd --config "$CTRD/config.toml" >"$CTRD/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 1 100); do
  cri version >/dev/null 2>&1 && break
  kill -0 "$CTRD_PID" 2>/dev/null || break
  sleep 0.1
done
check "containerd answers CRI Version on its private socket" cri version
if ! ctr --address "$CTRD_SOCK" -n k8s.io images import "$WORK/pause.tar" >"$WORK/import.log" 2>&1; then
  cat "$WORK/import.log" >&2
  fail "pause image imported"
  exit 1
fi
ok "static pause image built and imported as $PAUSE_REF"

log "two sandboxes over CRI"
A=$(run_sandbox cri-a) && ok "RunPodSandbox cri-a" || fail "RunPodSandbox cri-a: $(tail -3 "$CTRD/containerd.log")"
B=$(run_sandbox cri-b) && ok "RunPodSandbox cri-b" || fail "RunPodSandbox cri-b"
SA=$(cri status "$A")
SB=$(cri status "$B")
IP_A=$(jq -r .ip <<<"$SA")
IP_B=$(jq -r .ip <<<"$SB")
NS_A=$(jq -r .netns <<<"$SA")
NS_B=$(jq -r .netns <<<"$SB")
check "PodSandboxStatus: cri-a ready with $IP_A from the pod CIDR $POD_CIDR" \
  test "$(jq -r .state <<<"$SA")" = ready -a "${IP_A%.*}.0/24" = "$POD_CIDR"
check "PodSandboxStatus: cri-b ready with $IP_B" test "$(jq -r .state <<<"$SB")" = ready -a "${IP_B%.*}.0/24" = "$POD_CIDR"
check "the addresses are netstackd's attachments, keyed by sandbox id, with the pod's labels" \
  eval 'ctl list | jq -e --arg a "$A" --arg ip "$IP_A" ".[] | select(.container_id == \$a and .ifname == \"eth0\")
    | (.ips[0] | startswith(\$ip + \"/\")) and .labels.K8S_POD_NAME == \"cri-a\" and .labels.K8S_POD_NAMESPACE == \"e2e\"
      and .labels.K8S_POD_INFRA_CONTAINER_ID == \$a"'
check "cri-a's eth0 is a netstack TAP in its netns ($NS_A)" eval 'nsenter --net="$NS_A" ip -d link show eth0 | grep -q "tun type tap"'
check "ping cri-a -> cri-b" nsenter --net="$NS_A" ping -c 3 -i 0.2 -W 2 "$IP_B"
check "ping cri-b -> node (gateway $GATEWAY)" nsenter --net="$NS_B" ping -c 3 -i 0.2 -W 2 "$GATEWAY"
check "ping node -> cri-a" ping -c 3 -i 0.2 -W 2 "$IP_A"
before=$(pod_counter "$B" '.tx_packets')
nsenter --net="$NS_A" ping -c 5 -i 0.1 -W 2 -q "$IP_B" >/dev/null
check "the pings went through netstackd (cri-b tx_packets +$(( $(pod_counter "$B" '.tx_packets') - before )))" \
  test $(( $(pod_counter "$B" '.tx_packets') - before )) -ge 5
check "host-local holds 2 reservations" test "$(ipam_reservations)" = 2

log "stop and remove"
check "StopPodSandbox + RemovePodSandbox cri-a" remove_sandbox "$A"
check "StopPodSandbox + RemovePodSandbox cri-b" remove_sandbox "$B"
check "no attachment left in netstackd" test "$(attachments)" = 0
check "no IPAM reservation left" test "$(ipam_reservations)" = 0
check "the sandboxes' netns (and their TAPs) are gone" eval '[ ! -e "$NS_A" ] && [ ! -e "$NS_B" ]'
check "no state file left" test -z "$(ls "$STATE")"

log "a sandbox while netstackd is down"
stop_netstackd
if out=$(cri run --name cri-c --uid "uid-cri-c-$RUN_ID" --namespace e2e 2>&1); then
  fail "RunPodSandbox with netstackd down should fail"
else
  ok "RunPodSandbox with netstackd down fails"
fi
check "containerd surfaces our CNI error (code 11: try again later, netstackd not reachable)" \
  eval 'grep -q "try again later: netstackd is not reachable" <<<"$out"'
echo "    containerd said: $(grep -o 'failed to setup network.*' <<<"$out" | cut -c1-220)"
check "the failed sandbox left no IPAM reservation" test "$(ipam_reservations)" = 0
# containerd keeps the failed sandbox (NotReady) for the kubelet to clean up; the kubelet then
# stops and removes it and creates the pod's sandbox again with the next attempt number.
FAILED=$(grep -o 'failed to setup network for sandbox \\\?"[0-9a-f]*' <<<"$out" | grep -o '[0-9a-f]\{64\}' | head -1)
start_netstackd || exit 1
check "the failed sandbox is stopped and removed (CNI DEL succeeds now)" remove_sandbox "$FAILED"
C=$(run_sandbox cri-c 1) && ok "RunPodSandbox retried once netstackd is back succeeds" || fail "RunPodSandbox retry"
SC=$(cri status "$C")
check "PodSandboxStatus reports cri-c's address $(jq -r .ip <<<"$SC")" test -n "$(jq -r '.ip // empty' <<<"$SC")"
check "cri-c reaches the node" nsenter --net="$(jq -r .netns <<<"$SC")" ping -c 2 -i 0.2 -W 2 "$GATEWAY"
check "StopPodSandbox + RemovePodSandbox cri-c" remove_sandbox "$C"
check "nothing left: attachments, reservations" eval '[ "$(attachments)" = 0 ] && [ "$(ipam_reservations)" = 0 ]'

echo
echo "test_containerd: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
