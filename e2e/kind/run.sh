#!/usr/bin/env bash
# e2e on real Kubernetes: a 2-node kind cluster (control-plane + worker) with
# disableDefaultCNI, netstack's image built and loaded, manifests/ applied. Checks: nodes
# become Ready; every node got the conflist with its own podCIDR and host-gw routes to the
# other; pod to pod on one node and across nodes, without NAT (the server sees the client's
# pod IP); pod to a ClusterIP Service (kube-proxy); hostPort through portmap; DNS through
# CoreDNS; egress masquerade to the node network; deleting a pod releases its attachment and
# its address on the node.
#
# Needs docker (a daemon that answers), kind, kubectl, jq, and the images: kind's node image,
# the Containerfile's base images and agnhost, either already in docker's image store or
# pullable from their registries. Where any of that is missing it prints one line
# "SKIP e2e/kind: <what is missing>" and exits 0 (exit 1 instead with KIND_REQUIRED=1, for a
# CI job that must run it). The image build itself fetches crates (crates.io) and Debian
# packages (a Debian mirror); a failed build is a failure, not a skip. Not run by
# scripts/test.sh (this project's CI machine has no kind and no registry, hence no kind node
# image); run it by hand:
#
#   e2e/kind/run.sh
#
# KEEP_CLUSTER=1 keeps the cluster for a look afterwards; KIND_CLUSTER (netstack-e2e),
# KIND_NODE_IMAGE (kind's default), NETSTACK_IMAGE (netstack:dev) and AGNHOST_IMAGE override
# the names. Exits 0 when every check passes, 1 otherwise.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CLUSTER=${KIND_CLUSTER:-netstack-e2e}
IMAGE=${NETSTACK_IMAGE:-netstack:dev}
AGNHOST=${AGNHOST_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.53}
KEEP=${KEEP_CLUSTER:-0}
NODE_IMAGE=${KIND_NODE_IMAGE:-}
CP=$CLUSTER-control-plane
WORKER=$CLUSTER-worker

FAILS=0
PASSES=0
log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
ok() { PASSES=$((PASSES + 1)); printf '  ok   %s\n' "$1"; }
fail() { FAILS=$((FAILS + 1)); printf '  FAIL %s\n' "$1"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }
skip() {
  if [ "${KIND_REQUIRED:-0}" = 1 ]; then
    echo "FAIL e2e/kind: $* (KIND_REQUIRED=1)"
    exit 1
  fi
  echo "SKIP e2e/kind: $*"
  exit 0
}
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

# have_image IMAGE: in docker's store, or pulled now.
have_image() { docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1; }
for img in $(awk 'toupper($1) == "FROM" { print $2 }' "$ROOT/Containerfile") "$AGNHOST" $NODE_IMAGE; do
  have_image "$img" || skip "image $img is neither in docker's image store nor pullable (no registry access?)"
done

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
# kind pulls its node image itself; without a registry that is where it fails.
CREATE_LOG=$(mktemp /tmp/netstack-kind-create.XXXXXX)
kind create cluster --name "$CLUSTER" --config "$ROOT/e2e/kind/kind.yaml" --wait 0s \
  ${NODE_IMAGE:+--image "$NODE_IMAGE"} 2>&1 | tee "$CREATE_LOG"
rc=${PIPESTATUS[0]}
pull_failed=0
grep -qi "failed to pull image" "$CREATE_LOG" && pull_failed=1
rm -f "$CREATE_LOG"
if [ "$rc" != 0 ]; then
  kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
  [ "$pull_failed" = 1 ] && skip "kind could not pull its node image (no registry access?); set KIND_NODE_IMAGE to one in docker's image store"
  echo "kind create cluster failed" >&2
  exit 1
fi
CREATED=1
ok "cluster created"

log "image $IMAGE"
docker build -f "$ROOT/Containerfile" -t "$IMAGE" "$ROOT" || { echo "docker build failed" >&2; exit 1; }
ok "image built"
kind load docker-image "$IMAGE" --name "$CLUSTER" >/dev/null && ok "image loaded into the nodes" || fail "kind load docker-image"
# The test pods' image too, so the nodes need no registry for it.
# (Not a check: kind cannot load some multi-arch images; the nodes then pull it themselves.)
kind load docker-image "$AGNHOST" --name "$CLUSTER" >/dev/null 2>&1 \
  || echo "  note: kind load docker-image $AGNHOST failed; the nodes will pull it"

log "install"
check "kubectl apply -k manifests/" k apply -k "$ROOT/manifests/"
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
check "$CP has netstack's masquerade table" k -n netstack exec "$(ds_pod_on "$CP")" -- nft list table ip netstack

log "workloads"
# agnhost netexec: /clientip answers with the caller's address as the server sees it.
pod() { # pod NAME NODE [HOSTPORT|host]   (host: a hostNetwork pod that only waits)
  local ports="[{\"containerPort\": 8080}]" args='["netexec", "--http-port=8080"]' hostnet=false
  case "${3:-}" in
    "") ;;
    host) ports="[]"; args='["pause"]'; hostnet=true ;;
    *) ports="[{\"containerPort\": 8080, \"hostPort\": $3}]" ;;
  esac
  k apply -f - <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "labels": {"app": "$1"}},
 "spec": {"nodeName": "$2", "hostNetwork": $hostnet, "tolerations": [{"operator": "Exists"}],
          "containers": [{"name": "c", "image": "$AGNHOST", "imagePullPolicy": "IfNotPresent",
                          "args": $args, "ports": $ports}]}}
EOF
}
pod server "$WORKER" >/dev/null
pod near "$WORKER" >/dev/null
pod far "$CP" >/dev/null
pod hostport "$WORKER" 30080 >/dev/null
pod worker-host "$WORKER" host >/dev/null
k expose pod server --name server --port 80 --target-port 8080 >/dev/null
check "test pods are Ready" k wait --for=condition=Ready pod/server pod/near pod/far pod/hostport pod/worker-host --timeout=300s
SERVER=$(pod_ip server)
seen() { k exec "$1" -- curl -s -m 5 "http://$2/clientip" | cut -d: -f1; }
check "pod to pod, same node: the server sees near's pod IP" test "$(seen near "$SERVER:8080")" = "$(pod_ip near)"
check "pod to pod, across nodes: the server sees far's pod IP (no NAT)" test "$(seen far "$SERVER:8080")" = "$(pod_ip far)"
check "the worker node reaches far's pod IP on $CP (far sees the worker's address)" test "$(seen worker-host "$(pod_ip far):8080")" = "$(node_ip "$WORKER")"
CLUSTER_IP=$(k get svc server -o jsonpath='{.spec.clusterIP}')
check "pod to ClusterIP $CLUSTER_IP (kube-proxy), across nodes" sh -c "kubectl --context kind-$CLUSTER exec far -- curl -s -m 5 http://$CLUSTER_IP/hostname | grep -qx server"
check "hostPort 30080 on the worker (portmap), from a pod on $CP" sh -c "kubectl --context kind-$CLUSTER exec far -- curl -s -m 5 http://$(node_ip "$WORKER"):30080/hostname | grep -qx hostport"
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
