#!/usr/bin/env bash
# e2e on real Kubernetes: a 2-node kind cluster (control-plane + worker) with
# disableDefaultCNI, netstack's image built and loaded, manifests/ applied. Checks: nodes
# become Ready; every node got the conflist with its own podCIDR and host-gw routes to the
# other; pod to pod on one node and across nodes, without NAT (the server sees the client's
# pod IP); pod to a ClusterIP Service (kube-proxy); hostPort through portmap; DNS through
# CoreDNS; egress masquerade to the node network; deleting a pod releases its attachment and
# its address on the node.
#
# Needs docker (working), kind, kubectl, jq and registry access (kind's node image, the
# build stage's base images, registry.k8s.io/e2e-test-images/agnhost). Where any is missing it
# prints "SKIP" and exits 0. Not run by scripts/test.sh (this project's CI machine has no
# registry); run it by hand:
#
#   e2e/kind/run.sh                  # KEEP_CLUSTER=1 keeps the cluster for a look afterwards
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=${KIND_CLUSTER:-netstack-e2e}
IMAGE=${NETSTACK_IMAGE:-netstack:dev}
AGNHOST=${AGNHOST_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}
KEEP=${KEEP_CLUSTER:-0}
CP=$CLUSTER-control-plane
WORKER=$CLUSTER-worker

FAILS=0
PASSES=0
log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
ok() { PASSES=$((PASSES + 1)); printf '  ok   %s\n' "$1"; }
fail() { FAILS=$((FAILS + 1)); printf '  FAIL %s\n' "$1"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }
skip() { echo "SKIP e2e/kind: $*"; exit 0; }
eventually() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 2
  done
}

for t in docker kind kubectl jq; do
  command -v "$t" >/dev/null 2>&1 || skip "$t is not installed"
done
docker info >/dev/null 2>&1 || skip "docker is installed but its daemon does not answer"

CREATED=0
cleanup() {
  if [ "$CREATED" = 1 ] && [ "$KEEP" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
  fi
}
trap cleanup EXIT

k() { kubectl --context "kind-$CLUSTER" "$@"; }
ds_pod_on() { k -n netstack get pods -l app.kubernetes.io/name=netstack --field-selector "spec.nodeName=$1" -o name | head -1; }
pod_ip() { k get pod "$1" -o jsonpath='{.status.podIP}'; }
node_ip() { k get node "$1" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}'; }
pod_cidr() { k get node "$1" -o jsonpath='{.spec.podCIDR}'; }

log "cluster $CLUSTER (kind, disableDefaultCNI)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "a kind cluster named $CLUSTER exists already: delete it or set KIND_CLUSTER" >&2
  exit 1
fi
kind create cluster --name "$CLUSTER" --config "$ROOT/e2e/kind/kind.yaml" --wait 0s || { echo "kind create cluster failed" >&2; exit 1; }
CREATED=1
ok "cluster created"

log "image $IMAGE"
docker build -f "$ROOT/Containerfile" -t "$IMAGE" "$ROOT" || { echo "docker build failed" >&2; exit 1; }
ok "image built"
kind load docker-image "$IMAGE" --name "$CLUSTER" >/dev/null && ok "image loaded into the nodes" || fail "kind load docker-image"

log "install"
check "kubectl apply -f manifests/" k apply -f "$ROOT/manifests/"
check "the DaemonSet rolls out on both nodes" k -n netstack rollout status ds/netstack --timeout=300s
check "both nodes become Ready" k wait --for=condition=Ready node --all --timeout=300s
check "CoreDNS becomes available" k -n kube-system rollout status deploy/coredns --timeout=300s
for n in "$CP" "$WORKER"; do
  cidr=$(pod_cidr "$n")
  got=$(docker exec "$n" cat /etc/cni/net.d/10-netstack.conflist 2>/dev/null | jq -r '.plugins[] | select(.type=="netstack") | .ipam.ranges[0][0].subnet')
  check "$n: conflist written with its podCIDR $cidr ($got)" test "$got" = "$cidr"
  check "$n: netstack in /opt/cni/bin" docker exec "$n" test -x /opt/cni/bin/netstack
  check "$n: netstackd answers its probe" k -n netstack exec "$(ds_pod_on "$n")" -- netstackd ctl --json status
done
check "$CP routes the worker's pod CIDR via the worker (host-gw)" sh -c "docker exec $CP ip route show proto 78 | grep -q '^$(pod_cidr "$WORKER") via $(node_ip "$WORKER") '"
check "the worker routes $CP's pod CIDR via $CP" sh -c "docker exec $WORKER ip route show proto 78 | grep -q '^$(pod_cidr "$CP") via $(node_ip "$CP") '"
check "$CP has netstack's masquerade table" docker exec "$CP" nft list table ip netstack

log "workloads"
# agnhost netexec: /clientip answers with the caller's address as the server sees it.
pod() { # pod NAME NODE [HOSTPORT]
  local ports="[{\"containerPort\": 8080}]"
  [ -n "${3:-}" ] && ports="[{\"containerPort\": 8080, \"hostPort\": $3}]"
  k apply -f - <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "labels": {"app": "$1"}},
 "spec": {"nodeName": "$2", "tolerations": [{"operator": "Exists"}],
          "containers": [{"name": "c", "image": "$AGNHOST", "args": ["netexec", "--http-port=8080"],
                          "ports": $ports}]}}
EOF
}
pod server "$WORKER" >/dev/null
pod near "$WORKER" >/dev/null
pod far "$CP" >/dev/null
pod hostport "$WORKER" 30080 >/dev/null
k expose pod server --name server --port 80 --target-port 8080 >/dev/null
check "test pods are Ready" k wait --for=condition=Ready pod/server pod/near pod/far pod/hostport --timeout=300s
SERVER=$(pod_ip server)
seen() { k exec "$1" -- curl -s -m 5 "http://$2/clientip" | cut -d: -f1; }
check "pod to pod, same node: the server sees near's pod IP" test "$(seen near "$SERVER:8080")" = "$(pod_ip near)"
check "pod to pod, across nodes: the server sees far's pod IP (no NAT)" test "$(seen far "$SERVER:8080")" = "$(pod_ip far)"
check "the worker node reaches far's pod IP" docker exec "$WORKER" ping -c 2 -W 2 "$(pod_ip far)"
CLUSTER_IP=$(k get svc server -o jsonpath='{.spec.clusterIP}')
check "pod to ClusterIP $CLUSTER_IP (kube-proxy), across nodes" sh -c "kubectl --context kind-$CLUSTER exec far -- curl -s -m 5 http://$CLUSTER_IP/hostname | grep -qx server"
check "hostPort 30080 on the worker (portmap), from $CP" sh -c "docker exec $CP curl -s -m 5 http://$(node_ip "$WORKER"):30080/hostname | grep -qx hostport"
check "DNS through CoreDNS: server.default.svc.cluster.local is $CLUSTER_IP" sh -c "kubectl --context kind-$CLUSTER exec far -- nslookup server.default.svc.cluster.local | grep -q '$CLUSTER_IP'"
GATEWAY=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')
check "egress: a pod reaches the node network's gateway $GATEWAY (masqueraded)" k exec far -- ping -c 2 -W 2 "$GATEWAY"

log "pod deletion"
NEAR_IP=$(pod_ip near)
NEAR_ID=$(docker exec "$WORKER" crictl pods --name near -q 2>/dev/null | head -1)
check "near's sandbox is attached to netstackd" sh -c "kubectl --context kind-$CLUSTER -n netstack exec $(ds_pod_on "$WORKER") -- netstackd ctl --json list | grep -q '${NEAR_ID:-none}'"
check "kubectl delete pod near" k delete pod near --wait=true --timeout=120s
check "netstackd on the worker no longer has near's attachment" eventually 60 sh -c "! kubectl --context kind-$CLUSTER -n netstack exec $(ds_pod_on "$WORKER") -- netstackd ctl --json list | grep -q '${NEAR_ID:-none}'"
check "host-local released near's address $NEAR_IP" eventually 60 sh -c "! docker exec $WORKER ls /var/lib/cni/networks/netstack | grep -qx '$NEAR_IP'"

echo
echo "e2e/kind: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
