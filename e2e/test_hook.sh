#!/usr/bin/env bash
# e2e: the OCI hook (netstack-hook) with the real runtimes. runc runs busybox containers from a
# local rootfs with the shipped config.json snippet; podman (--network=none, private config,
# storage and the shipped hooks.d file) runs them from an imported image. Each container gets
# an address and reaches a CNI pod through netstackd; after runc delete / podman rm nothing
# is left (no TAP, attachment or IPAM reservation). Then the hook's failure modes: bad input,
# bad annotations, netstackd frozen (SIGSTOP, and e2e/hook/fake_netstackd.py freezing in the
# middle of an attach, which the hook must roll back) or down. A container annotated
# netstack.io/mode=vhost-user becomes a VM pod (socket and placeholder), released at poststop.
# Needs root; run by scripts/test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/podman_lib.sh"

HOOK=$BIN/netstack-hook
RUNC_ROOT=$WORK/runc
BUNDLES=$WORK/bundles
HOOK_ENV=("NETSTACK_HOOK_CONFIG=$CONFLIST" "NETSTACK_CNI_PATH=$BIN:$REF_CNI" "NETSTACK_HOOK_TIMEOUT=10")
SLEEPERS=()
FAKE_PID=

ipam_reservations() { find "$IPAM_DIR/$NETWORK" -maxdepth 1 -name '[0-9]*' 2>/dev/null | wc -l; }
attachments() { ctl status | jq .attachments; }
attached_ifname() { ctl stats | jq -r --arg id "$1" '.pods[] | select(.container_id == $id) | .ifname'; }
# TAP/TUN queues netstackd holds open (the uplink's plus every pod's).
tun_fds() { find "/proc/$NETSTACKD_PID/fd" -lname /dev/net/tun 2>/dev/null | wc -l; }
netns_inode() { stat -L -c %i "/proc/$1/ns/net"; }
# netns_gone INODE: no process has this network namespace any more (and so no TAP in it).
netns_gone() { ! stat -L -c %i /proc/[0-9]*/ns/net 2>/dev/null | grep -qx "$1"; }
# The hook as a runtime runs it: only the environment its config gives it.
hook() { env -i "${HOOK_ENV[@]}" "$HOOK" "$@"; }
container_ipv4() { awk '/inet /{print $2}' | cut -d/ -f1; }

rc() { runc --root "$RUNC_ROOT" "$@"; }
hook_cleanup() {
  local c
  [ -n "$NETSTACKD_PID" ] && kill -CONT "$NETSTACKD_PID" 2>/dev/null
  for c in $(rc list -q 2>/dev/null); do rc delete -f "$c" >/dev/null 2>&1; done
  podman_cleanup
  for c in "${SLEEPERS[@]}" $FAKE_PID; do kill "$c" 2>/dev/null; done
  for c in "${PODS[@]}"; do del_pod "$c" 2>/dev/null; done
  PODS=()
  e2e_cleanup
}
trap hook_cleanup EXIT


# runc_bundle ID [JQ_FILTER]: a bundle running `sleep 300` with CAP_NET_RAW and the shipped
# hook snippet (hooks/runc/netstack-hooks.json) pointed at this run's binary and config; the
# filter edits the result (annotations, namespaces).
runc_bundle() {
  local id=$1 filter=${2:-.} dir=$BUNDLES/$1 env
  mkdir -p "$dir"
  (cd "$dir" && runc spec)
  env=$(printf '%s\n' "${HOOK_ENV[@]}" | jq -R . | jq -sc .)
  jq --arg hook "$HOOK" --argjson env "$env" \
    '.hooks |= with_entries(.value |= map(.path = $hook | .env = $env))' \
    "$ROOT/hooks/runc/netstack-hooks.json" >"$dir/snippet.json"
  jq -s --arg rootfs "$ROOTFS" '.[0] * .[1]
      | .root = {path: $rootfs, readonly: true}
      | .process.terminal = false | .process.args = ["sleep", "300"]
      | .process.capabilities |= with_entries(.value += ["CAP_NET_RAW"])' \
    "$dir/config.json" "$dir/snippet.json" | jq "$filter" >"$dir/config.new"
  mv "$dir/config.new" "$dir/config.json"
}

# under RUNTIME: a runc_bundle filter naming the runtime the hook is to take itself to run
# under (NETSTACK_HOOK_RUNTIME in its hooks' env), as an installer for that runtime would.
under() { printf '.hooks |= with_entries(.value |= map(.env += ["NETSTACK_HOOK_RUNTIME=%s"]))' "$1"; }
# label_of ID LABEL: an attachment label of container ID ("-" if it has none).
label_of() { ctl list | jq -r --arg id "$1" --arg l "$2" '.[] | select(.container_id == $id) | .labels[$l] // "-"'; }

# runc_create ID: `runc create` (which runs the createRuntime hook); runc's output in $WORK.
runc_create() {
  rc create --bundle "$BUNDLES/$1" "$1" </dev/null >"$WORK/$1.runc.log" 2>&1
}

# sleeper NAME: a process in a fresh netns NAME (for direct hook calls); sets SLEEPER_PID.
sleeper() {
  ip netns add "$1"
  PODS+=("$1")
  ip netns exec "$1" sleep 300 >/dev/null 2>&1 &
  SLEEPER_PID=$!
  SLEEPERS+=("$SLEEPER_PID")
}

# state ID PID STATUS ANNOTATIONS_JSON: an OCI state as runc writes it.
state() {
  jq -nc --arg id "$1" --argjson pid "$2" --arg status "$3" --argjson ann "$4" \
    '{ociVersion: "1.0.2-dev", id: $id, status: $status, pid: $pid, bundle: "/nonexistent", annotations: $ann}'
}

# expect_failure WHAT ID STDERR_PATTERN RC STDERR: non-zero, one line, naming ID.
expect_failure() {
  local what=$1 id=$2 pattern=$3 status=$4 err=$5
  if [ "$status" -ne 0 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] &&
    grep -qF "container $id:" <<<"$err" && grep -qE -- "$pattern" <<<"$err"; then
    ok "$what"
  else
    fail "$what: exit $status, stderr: $err"
  fi
}

log "netstackd, a CNI pod and a busybox rootfs"
write_conflist
start_netstackd --vhost-dir "$WORK/vhost" || exit 1
P=e2e-hp-$RUN_ID
IP_P=$(add_pod "$P") && ok "CNI pod $P ($IP_P)" || fail "CNI pod $P"
PODS+=("$P") # add_pod ran in a subshell
TUN0=$(tun_fds)
make_rootfs
check "busybox is static (runs without a libc in the rootfs)" sh -c "! ldd /bin/busybox"
reserved0=$(ipam_reservations)

log "runc: the hook attaches a container (ifname, mtu and egress-rate annotations)"
R1=hook-r1-$RUN_ID
runc_bundle "$R1" '.annotations += {"netstack.io/ifname": "net0", "netstack.io/mtu": "1400", "netstack.io/egress-rate": "10M"}'
if runc_create "$R1" && rc start "$R1"; then ok "runc create + start $R1"; else fail "runc create $R1: $(cat "$WORK/$R1.runc.log")"; fi
R1_PID=$(rc state "$R1" | jq -r .pid)
R1_NS=$(netns_inode "$R1_PID")
check "netstackd has $R1/net0" test "$(attached_ifname "$R1")" = net0
R1_IP=$(rc exec "$R1" ip -4 addr show dev net0 | container_ipv4)
check "container has an address in the pod CIDR ($R1_IP)" test "${R1_IP%.*}.0/24" = "$POD_CIDR"
check "container net0 has MTU 1400" test "$(rc exec "$R1" cat /sys/class/net/net0/mtu)" = 1400
check "the egress-rate annotation is the attachment's shaping rate (10M)" \
  jq -e '.bandwidth.egressRate == 10000000 and .bandwidth.egressBurst == 1000000' "$STATE/${R1}:net0.json"
r1_default_route() { rc exec "$R1" ip route | grep -q "default via $GATEWAY dev net0"; }
check "container default route via the gateway" r1_default_route
check "one more host-local reservation" test "$(ipam_reservations)" = $((reserved0 + 1))
check "runc container pings the CNI pod" rc exec "$R1" ping -c 3 -i 0.2 -W 2 "$IP_P"
check "CNI pod pings the runc container" in_pod "$P" ping -c 3 -i 0.2 -W 2 "$R1_IP"
check "node pings the runc container" ping -c 2 -i 0.2 -W 2 "$R1_IP"
state "$R1" "$R1_PID" creating "$(jq -c .annotations "$BUNDLES/$R1/config.json")" >"$WORK/$R1.state"
check "createRuntime again for an attached container succeeds" hook createRuntime <"$WORK/$R1.state"
check "  ... and leaves it alone (one attachment, one reservation)" test "$(attachments)/$(ipam_reservations)" = "2/$((reserved0 + 1))"

log "runc delete: poststop releases everything"
check "runc delete -f $R1" rc delete -f "$R1"
check "no attachment for $R1" test -z "$(attached_ifname "$R1")"
check "no host-local reservation for $R1" test "$(ipam_reservations)" = "$reserved0"
check "no netstackd state file for $R1" test ! -e "$STATE/${R1}:net0.json"
check "netstackd closed the TAP queues ($TUN0 tun fds, as before)" test "$(tun_fds)" = "$TUN0"
check "the container's netns and TAP are gone" netns_gone "$R1_NS"
jq '.status = "stopped" | del(.pid)' "$WORK/$R1.state" >"$WORK/$R1.poststop"
check "a second poststop succeeds" hook poststop <"$WORK/$R1.poststop"
check "  ... and changes nothing" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"

log "runc: a sandbox CNI already attached is left alone, and poststop releases it"
S=hook-s-$RUN_ID
ip netns add "$S"; ip -n "$S" link set lo up; PODS+=("$S")
S_IP=$(cni ADD "$S" "/run/netns/$S" | jq -r '.ips[0].address' | cut -d/ -f1)
check "CNI ADD of sandbox $S ($S_IP)" test -n "$S_IP"
runc_bundle "$S" ".linux.namespaces |= map(if .type == \"network\" then .path = \"/run/netns/$S\" else . end)
  | .annotations += {\"io.kubernetes.cri.container-type\": \"sandbox\", \"io.kubernetes.cri.sandbox-name\": \"web-0\"}
  | $(under containerd)"
if runc_create "$S"; then ok "runc create of the sandbox"; else fail "runc create $S: $(cat "$WORK/$S.runc.log")"; fi
check "still one attachment for the sandbox, with CNI's address" test "$(ctl stats | jq -r --arg id "$S" '[.pods[] | select(.container_id == $id) | .ips[0]] | join(",")')" = "$S_IP/24"
check "no second interface in the sandbox" test "$(ip -n "$S" -o link show | wc -l)" = 2
check "no second reservation" test "$(ipam_reservations)" = $((reserved0 + 1))
R3=hook-r3-$RUN_ID
runc_bundle "$R3" ".annotations += {\"io.kubernetes.cri.container-type\": \"container\"} | $(under containerd)"
if runc_create "$R3"; then ok "runc create of a pod's application container"; else fail "runc create $R3: $(cat "$WORK/$R3.runc.log")"; fi
check "  ... is not attached (its sandbox carries the network)" test -z "$(attached_ifname "$R3")"
check "runc delete of the application container" rc delete -f "$R3"
check "runc delete of the sandbox" rc delete -f "$S"
check "poststop detached the CNI attachment" test -z "$(attached_ifname "$S")"
check "  ... deleted the TAP in the pinned netns" sh -c "! ip -n $S link show eth0"
check "  ... released the reservation" test "$(ipam_reservations)" = "$reserved0"

log "runc: a VM pod through the hook (netstack.io/mode=vhost-user), and poststop releases it"
R9=hook-r9-$RUN_ID
runc_bundle "$R9" '.annotations += {"netstack.io/mode": "vhost-user"}'
if runc_create "$R9"; then ok "runc create of $R9"; else fail "runc create $R9: $(cat "$WORK/$R9.runc.log")"; fi
r9_listed() { ctl list | jq -r --arg id "$R9" '.[] | select(.container_id == $id) | "\(.mode) \(.socket_path)"'; }
R9_SOCK=$(r9_listed | cut -d' ' -f2)
check "netstackd serves $R9 in mode vhost-user on $R9_SOCK" test "$(r9_listed)" = "vhost-user $WORK/vhost/${R9_SOCK##*/}"
check "  ... its socket is a unix socket of mode 600" test "$(stat -c '%F %a' "$R9_SOCK")" = "socket 600"
r9_placeholder() {
  nsenter -t "$(rc state "$R9" | jq -r .pid)" -n ip -d -j link show eth0 |
    jq -e '.[0] | .ifalias == "netstack" and (.linkinfo.info_kind == "dummy" or .linkinfo.info_kind == "ifb")'
}
check "  ... the container's eth0 is the placeholder" r9_placeholder
check "  ... one more reservation" test "$(ipam_reservations)" = $((reserved0 + 1))
check "runc delete -f $R9" rc delete -f "$R9"
check "  ... poststop detached it" test -z "$(r9_listed)"
check "  ... and closed its socket" test ! -e "$R9_SOCK"
check "  ... and released the reservation" test "$(ipam_reservations)" = "$reserved0"

log "runc: the container's role comes from the runtime that runs it"
# Under CRI-O an application container carrying containerd's sandbox annotation is still an
# application container: CRI-O's annotation is the only one read.
R6=hook-r6-$RUN_ID
runc_bundle "$R6" ".annotations += {\"io.kubernetes.cri-o.ContainerType\": \"container\", \"io.kubernetes.cri.container-type\": \"sandbox\"} | $(under cri-o)"
if runc_create "$R6"; then ok "runc create of a CRI-O app container spoofing containerd's sandbox annotation"; else fail "runc create $R6: $(cat "$WORK/$R6.runc.log")"; fi
check "  ... is not attached (not taken for a sandbox)" test -z "$(attached_ifname "$R6")"
check "  ... runc delete" rc delete -f "$R6"
# Without a Kubernetes runtime (plain runc) CRI annotations mean nothing: a container posing
# as kube-system's kube-dns sandbox is attached as itself, without the pod's labels.
R7=hook-r7-$RUN_ID
runc_bundle "$R7" '.annotations += {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-name": "kube-dns", "io.kubernetes.cri.sandbox-namespace": "kube-system"}'
if runc_create "$R7"; then ok "runc create of a plain container posing as a containerd sandbox"; else fail "runc create $R7: $(cat "$WORK/$R7.runc.log")"; fi
check "  ... attached as a standalone container" test "$(attached_ifname "$R7")" = eth0
check "  ... without the posed pod name or infra id as labels" test "$(label_of "$R7" K8S_POD_NAME)/$(label_of "$R7" K8S_POD_INFRA_CONTAINER_ID)" = "-/-"
check "  ... runc delete releases it" rc delete -f "$R7"
check "  ... nothing left" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"

log "runc: control characters in pod metadata fail runc create and leave nothing"
R8=hook-r8-$RUN_ID
runc_bundle "$R8" ".annotations += {\"io.kubernetes.cri.container-type\": \"sandbox\", \"io.kubernetes.cri.sandbox-name\": \"web\u001b[31m\"} | $(under containerd)"
if runc_create "$R8"; then fail "runc create with an escape sequence in the pod name succeeded"; else ok "runc create with an escape sequence in the pod name fails"; fi
check "  ... runc reports the hook's line naming $R8 and the annotation" grep -qF "createRuntime: container $R8: annotation io.kubernetes.cri.sandbox-name=" "$WORK/$R8.runc.log"
check "  ... with the value escaped" grep -qF 'web\\u{1b}[31m' "$WORK/$R8.runc.log"
no_raw_escape() { ! grep -q "$(printf '\033')" "$1"; }
check "  ... the line carries no raw escape character" no_raw_escape "$WORK/$R8.runc.log"
check "  ... nothing attached or reserved" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"

log "runc: a bad annotation fails runc create and leaves nothing"
R4=hook-r4-$RUN_ID
runc_bundle "$R4" '.annotations += {"netstack.io/mtu": "abc"}'
if runc_create "$R4"; then fail "runc create with netstack.io/mtu=abc succeeded"; else ok "runc create with netstack.io/mtu=abc fails"; fi
check "  ... runc reports the hook's line naming $R4 and the annotation" grep -qF "createRuntime: container $R4: annotation netstack.io/mtu=" "$WORK/$R4.runc.log"
check "  ... runc destroyed the container" sh -c "! runc --root $RUNC_ROOT state $R4"
check "  ... nothing attached or reserved" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"

log "runc: a leftover attachment of the same container id is replaced"
R5=hook-r5-$RUN_ID
ip netns add "$R5-old"
cni ADD "$R5" "/run/netns/$R5-old" >/dev/null
ip netns del "$R5-old" # its runtime died: no DEL, and the netns is gone
check "netstackd still holds the leftover $R5/eth0" test "$(attached_ifname "$R5")" = eth0
runc_bundle "$R5"
if runc_create "$R5"; then ok "runc create $R5"; else fail "runc create $R5: $(cat "$WORK/$R5.runc.log")"; fi
R5_PID=$(rc state "$R5" | jq -r .pid)
check "  ... attached in its own netns now" test "$(ctl stats | jq -r --arg id "$R5" '.pods[] | select(.container_id == $id) | .netns')" = "/proc/$R5_PID/ns/net"
check "  ... one attachment and one reservation for it" test "$(attachments)/$(ipam_reservations)" = "2/$((reserved0 + 1))"
check "runc delete -f $R5" rc delete -f "$R5"
check "  ... nothing left" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"

log "podman --network=none with the shipped hooks.d file"
podman_setup "$REF_CNI"
import_ok=$?
env=$(printf '%s\n' "${HOOK_ENV[@]}" | jq -R . | jq -sc .)
jq --arg hook "$HOOK" --argjson env "$env" '.hook.path = $hook | .hook.env = $env' \
  "$ROOT/hooks/hooks.d/netstack.json" >"$PM/hooks.d/50-netstack.json"
if [ "$import_ok" = 0 ]; then ok "podman import of the rootfs"; else fail "podman import: $(cat "$WORK/import.log")"; fi
Q1=hook-q1-$RUN_ID
if pm run -d --name "$Q1" --network=none --annotation netstack.io/attach=true --cap-add NET_RAW "$IMAGE" sleep 300 >"$WORK/$Q1.log" 2>&1; then
  ok "podman run --network=none --annotation netstack.io/attach=true"
else
  fail "podman run: $(cat "$WORK/$Q1.log")"
fi
Q1_ID=$(pm inspect --format '{{.Id}}' "$Q1")
Q1_NS=$(netns_inode "$(pm inspect --format '{{.State.Pid}}' "$Q1")")
check "netstackd has the podman container (its full id) on eth0" test "$(attached_ifname "$Q1_ID")" = eth0
Q1_IP=$(pm exec "$Q1" ip -4 addr show dev eth0 | container_ipv4)
check "podman container has an address in the pod CIDR ($Q1_IP)" test "${Q1_IP%.*}.0/24" = "$POD_CIDR"
check "podman container pings the CNI pod" pm exec "$Q1" ping -c 3 -i 0.2 -W 2 "$IP_P"
check "CNI pod pings the podman container" in_pod "$P" ping -c 3 -i 0.2 -W 2 "$Q1_IP"
Q2=hook-q2-$RUN_ID
pm run -d --name "$Q2" --network=none "$IMAGE" sleep 300 >"$WORK/$Q2.log" 2>&1
check "a podman container without the annotation runs" test "$(pm inspect --format '{{.State.Running}}' "$Q2")" = true
check "  ... and is not attached" test "$(attachments)" = 2
check "podman rm -f $Q1" pm rm -f -t 0 "$Q1"
check "no attachment for the podman container" test -z "$(attached_ifname "$Q1_ID")"
check "no host-local reservation for it" test "$(ipam_reservations)" = "$reserved0"
check "its netns and TAP are gone" netns_gone "$Q1_NS"
check "netstackd closed its TAP queues" test "$(tun_fds)" = "$TUN0"
check "podman rm -f $Q2" pm rm -f -t 0 "$Q2"
check "only the CNI pod is left attached" test "$(attachments)" = 1

log "podman with the shipped CRI-O hooks.d file: only sandboxes reach the hook"
CRIO_HOOK=$ROOT/hooks/hooks.d/cri-o/netstack.json
check "the CRI-O file filters on CRI-O's sandbox annotation" test "$(jq -r '.when.annotations["^io\\.kubernetes\\.cri-o\\.ContainerType$"]' "$CRIO_HOOK")" = '^sandbox$'
check "  ... and on netstack.io/attach" test "$(jq -r '.when.annotations["^netstack\\.io/attach$"]' "$CRIO_HOOK")" = '^true$'
check "  ... and names CRI-O as the runtime" jq -e '.hook.env | index("NETSTACK_HOOK_RUNTIME=cri-o")' "$CRIO_HOOK"
# podman matches hooks.d files as CRI-O does (the same library): the CRI-O file in its place.
jq --arg hook "$HOOK" --argjson env "$env" \
  '.hook.path = $hook | .hook.env = $env + [.hook.env[] | select(startswith("NETSTACK_HOOK_RUNTIME="))]' \
  "$CRIO_HOOK" >"$PM/hooks.d/50-netstack.json"
Q3=hook-q3-$RUN_ID
pm run -d --name "$Q3" --network=none --annotation netstack.io/attach=true \
  --annotation io.kubernetes.cri-o.ContainerType=container "$IMAGE" sleep 300 >"$WORK/$Q3.log" 2>&1
check "an annotated application container (ContainerType=container) runs" test "$(pm inspect --format '{{.State.Running}}' "$Q3")" = true
check "  ... and never reaches the hook: not attached" test "$(attachments)" = 1
Q4=hook-q4-$RUN_ID
pm run -d --name "$Q4" --network=none --annotation netstack.io/attach=true \
  --annotation io.kubernetes.cri-o.ContainerType=sandbox --cap-add NET_RAW "$IMAGE" sleep 300 >"$WORK/$Q4.log" 2>&1
check "an annotated sandbox (ContainerType=sandbox) runs" test "$(pm inspect --format '{{.State.Running}}' "$Q4")" = true
Q4_ID=$(pm inspect --format '{{.Id}}' "$Q4")
check "  ... and is attached" test "$(attached_ifname "$Q4_ID")" = eth0
check "  ... with its sandbox id as K8S_POD_INFRA_CONTAINER_ID" test "$(label_of "$Q4_ID" K8S_POD_INFRA_CONTAINER_ID)" = "$Q4_ID"
check "podman rm -f of both" pm rm -f -t 0 "$Q3" "$Q4"
check "  ... only the CNI pod is left attached" test "$(attachments)" = 1
check "  ... and no reservation" test "$(ipam_reservations)" = "$reserved0"

log "bad input: non-zero, one line on stderr naming the container, nothing left"
H=hook-h-$RUN_ID
sleeper "$H"
H_PID=$SLEEPER_PID
ATTACH='{"netstack.io/attach":"true"}'
err=$(hook createRuntime </dev/null 2>&1); expect_failure "no stdin" "(unknown)" "no OCI state on stdin" $? "$err"
err=$(printf '{"id":"%s",' "$H" | hook createRuntime 2>&1); expect_failure "truncated JSON (still named by its id)" "$H" "malformed OCI state" $? "$err"
err=$(printf '{"id":"%s","pid":"12"}' "$H" | hook createRuntime 2>&1); expect_failure "pid of the wrong type" "$H" "malformed OCI state" $? "$err"
err=$(state "$H" "$H_PID" creating "$ATTACH" | hook poststart 2>&1); expect_failure "unknown stage" "$H" "unknown stage" $? "$err"
err=$(state "$H" "$H_PID" creating "$ATTACH" | env -i "$HOOK" 2>&1); expect_failure "no stage" "$H" "no stage argument" $? "$err"
for bad in 'netstack.io/attach=yes' 'netstack.io/ifname=this-is-too-long0' $'netstack.io/ifname=et\001h' 'netstack.io/mtu=70000' 'netstack.io/egress-rate=fast'; do
  ann=$(jq -nc --arg k "${bad%%=*}" --arg v "${bad#*=}" '{"netstack.io/attach":"true"} + {($k): $v}')
  err=$(state "$H" "$H_PID" creating "$ann" | hook createRuntime 2>&1)
  expect_failure "bad annotation $bad" "$H" "annotation ${bad%%=*}=" $? "$err"
done
check "  ... no interface added to the netns" test "$(ip -n "$H" -o link show | wc -l)" = 1
check "  ... nothing attached or reserved" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"
err=$(state "$H" "$H_PID" creating "$ATTACH" | env -i NETSTACK_HOOK_CONFIG="$WORK/missing.conflist" "$HOOK" createRuntime 2>&1)
expect_failure "missing hook config" "$H" "missing.conflist" $? "$err"
poststop_never_attached() { state "never-$RUN_ID" 0 stopped "$ATTACH" | hook poststop; }
check "poststop of a container never attached succeeds" poststop_never_attached
check "  ... and changes nothing" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"

log "netstackd hangs: the hook keeps to its timeout"
kill -STOP "$NETSTACKD_PID"
t0=$(date +%s%N)
err=$(state "$H" "$H_PID" creating "$ATTACH" | env -i "${HOOK_ENV[@]}" NETSTACK_HOOK_TIMEOUT=2 "$HOOK" createRuntime 2>&1); status=$?
ms=$((($(date +%s%N) - t0) / 1000000))
kill -CONT "$NETSTACKD_PID"
expect_failure "createRuntime with netstackd stopped (SIGSTOP)" "$H" "within" $status "$err"
echo "       ($err)"
check "  ... returned in ${ms} ms (timeout 2000 ms)" test "$ms" -lt 3000
check "  ... no TAP in the netns" test "$(ip -n "$H" -o link show | wc -l)" = 1
check "  ... nothing attached or reserved" test "$(attachments)/$(ipam_reservations)" = "1/$reserved0"

log "netstackd freezes in the middle of an attach: the hook rolls the ADD back in time"
FAKE_SOCK=$WORK/fake.sock
python3 "$ROOT/e2e/hook/fake_netstackd.py" "$FAKE_SOCK" "$POD_CIDR" 2>"$WORK/fake.log" &
FAKE_PID=$!
for _ in $(seq 50); do [ -S "$FAKE_SOCK" ] && break; sleep 0.1; done
jq --arg s "$FAKE_SOCK" '.plugins[0].socket = $s' "$CONFLIST" >"$WORK/fake.conflist"
F=hook-f-$RUN_ID
sleeper "$F"
t0=$(date +%s%N)
err=$(state "$F" "$SLEEPER_PID" creating "$ATTACH" | env -i NETSTACK_HOOK_CONFIG="$WORK/fake.conflist" \
  NETSTACK_CNI_PATH="$REF_CNI" NETSTACK_HOOK_TIMEOUT=3 "$HOOK" createRuntime 2>&1); status=$?
ms=$((($(date +%s%N) - t0) / 1000000))
expect_failure "createRuntime with netstackd frozen on attach" "$F" "within 3000 ms; the attach it had started was rolled back" $status "$err"
echo "       ($err)"
check "  ... returned in ${ms} ms (timeout 3000 ms)" test "$ms" -lt 3500
check "  ... the TAP it had created is gone" test "$(ip -n "$F" -o link show | wc -l)" = 1
check "  ... the address it had reserved is released" test "$(ipam_reservations)" = "$reserved0"
kill "$FAKE_PID"; FAKE_PID=

log "netstackd down"
attach_h() { state "$H" "$H_PID" creating "$ATTACH" | hook createRuntime; }
check "the hook attaches a plain netns process (direct call)" attach_h
check "  ... with an address on eth0" sh -c "ip -n $H -4 addr show dev eth0 | grep -q 'inet ${POD_CIDR%.0/24}'"
stop_netstackd
err=$(state "$H-2" "$H_PID" creating "$ATTACH" | hook createRuntime 2>&1); expect_failure "createRuntime with netstackd down" "$H-2" "not reachable" $? "$err"
err=$(state "$H" 0 stopped "$ATTACH" | hook poststop 2>&1); expect_failure "poststop with netstackd down" "$H" "not reachable" $? "$err"
check "  ... released the IPAM reservation all the same" test "$(ipam_reservations)" = "$reserved0"

echo
echo "test_hook: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
