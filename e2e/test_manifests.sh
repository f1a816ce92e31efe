#!/usr/bin/env bash
# The Kubernetes install, checked without a cluster: every manifest parses and validates
# against the Kubernetes OpenAPI schemas (kubernetes-validate from PyPI, pinned, strict: no
# unknown fields) for the oldest and newest API versions netstack supports; the pieces agree
# with each other (ConfigMap keys, service account, RBAC, host paths, probes, the image's
# entrypoint, netstackd's flags); the ConfigMap's conflist template is the one in
# manifests/10-netstack.conflist (the one the multi-node e2e installs and uses) and renders
# for a node; the install step (manifests/install-cni.sh run, the DaemonSet's entrypoint)
# copies the binaries first, keeps the node's own reference plugins, and writes the conflist
# with the pod CIDRs netstackd reports only once netstackd answers (a stand-in netstackd, so
# no root needed); kubectl's kustomize renders manifests/ with its parameters and
# manifests/monitoring/ (the headless Service, validated like the rest, and the ServiceMonitor
# that selects it; the Service selects the DaemonSet's pods and its container port by name,
# checked by a checker that is shown to reject each mistake); the kind e2e's config parses, and
# the kind e2e skips cleanly (one SKIP line, exit 0) where it cannot run. Run by scripts/test.sh.
#
#   e2e/test_manifests.sh --sync   rewrites the ConfigMap's copy of the conflist template from
#                                  manifests/10-netstack.conflist, then checks.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${NETSTACK_BIN:-$ROOT/target/release}
M=$ROOT/manifests
VALIDATOR_VERSION=1.37.0
K8S_VERSIONS=(1.30.0 1.37.0)
VENV=${NETSTACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/netstack}/kubernetes-validate-$VALIDATOR_VERSION
WORK=$(mktemp -d /tmp/netstack-manifests.XXXXXX)
INSTALL=
trap '[ -n "$INSTALL" ] && kill -TERM "$INSTALL" 2>/dev/null && wait "$INSTALL"; rm -rf "$WORK"' EXIT

# The tally (ok, fail, log) and eventually; check here also shows a failed command's output.
. "$ROOT/e2e/checks.sh"
check() { local what=$1; shift; if "$@" >"$WORK/out" 2>&1; then ok "$what"; else fail "$what"; sed 's/^/       /' "$WORK/out"; fi; }

PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3

if [ "${1:-}" = --sync ]; then
  "$PY" - "$M" <<'EOF'
import re, sys
m = sys.argv[1]
conf = open(f"{m}/10-netstack.conflist").read()
path = f"{m}/02-config.yaml"
text = open(path).read()
head = text[: text.index("  10-netstack.conflist: |\n")]
body = "".join("    " + l if l.strip() else l for l in conf.splitlines(True))
open(path, "w").write(head + "  10-netstack.conflist: |\n" + body)
print(f"rewrote the template in {path}")
EOF
fi

log "kubernetes-validate $VALIDATOR_VERSION (PyPI) in $VENV"
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$VALIDATOR_VERSION" >"$WORK/pip.log" 2>&1 \
    || { cat "$WORK/pip.log" >&2; rm -rf "$VENV"; }
fi
check "kubernetes-validate $VALIDATOR_VERSION installed" test -x "$VENV/bin/kubernetes-validate"
VPY=$VENV/bin/python

log "schemas"
for v in "${K8S_VERSIONS[@]}"; do
  check "all manifests validate (strict) against Kubernetes $v" \
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$M"/*.yaml "$M/monitoring/metrics-service.yaml"
done
# The validator must be able to say no: a DaemonSet with a misspelt field.
sed 's/imagePullPolicy:/imagePulPolicy:/' "$M/03-daemonset.yaml" >"$WORK/bad.yaml"
if "$VENV/bin/kubernetes-validate" --strict --quiet -k "${K8S_VERSIONS[0]}" "$WORK/bad.yaml" >/dev/null 2>&1; then
  fail "the validator rejects a misspelt field"
else
  ok "the validator rejects a misspelt field"
fi

log "the pieces agree"
"$BIN/netstackd" --help >"$WORK/netstackd-help.txt" 2>&1 || true
check "netstackd --help runs (release build present)" test -s "$WORK/netstackd-help.txt"
check "manifests are consistent with each other, the image and netstackd" \
  "$VPY" - "$M" "$ROOT/Containerfile" "$WORK/netstackd-help.txt" <<'EOF'
import json, re, sys, yaml
m, containerfile, helpfile = sys.argv[1:4]
docs = []
for name in ["00-namespace.yaml", "01-rbac.yaml", "02-config.yaml", "03-daemonset.yaml"]:
    docs += [d for d in yaml.safe_load_all(open(f"{m}/{name}")) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)

ns = by[("Namespace", "netstack")]["metadata"]["name"]
sa = by[("ServiceAccount", "netstack")]
cm = by[("ConfigMap", "netstack-config")]
ds = by[("DaemonSet", "netstack")]
role = by[("ClusterRole", "netstack")]
binding = by[("ClusterRoleBinding", "netstack")]
for d in (sa, cm, ds):
    need(d["metadata"].get("namespace") == ns, f"{d['kind']} is not in namespace {ns}")

# RBAC: read Nodes and patch their status (NetworkUnavailable), nothing else; bound to the
# DaemonSet's service account.
need(role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                       {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}],
     f"ClusterRole rules: {role['rules']}")
need(binding["roleRef"]["name"] == role["metadata"]["name"], "binding names another role")
need({"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns} in binding["subjects"],
     "binding does not name the service account")

pod = ds["spec"]["template"]["spec"]
need(ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items(),
     "selector does not match the pod labels")
need(pod.get("serviceAccountName") == sa["metadata"]["name"], "DaemonSet runs as another service account")
need(pod.get("hostNetwork") is True, "DaemonSet is not hostNetwork")
need({"operator": "Exists"} in pod.get("tolerations", []), "DaemonSet does not tolerate every taint")
[c] = [c for c in pod["containers"] if c["name"] == "netstackd"]

# Host paths the issue and the install step need, each mounted.
host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
mounts = {vm["name"]: vm for vm in c["volumeMounts"]}
for path in ["/opt/cni/bin", "/etc/cni/net.d", "/run/netstack", "/var/lib/netstack", "/run/netns", "/var/run/netns"]:
    names = [n for n, p in host.items() if p == path]
    need(names and names[0] in mounts, f"host path {path} is not mounted")
for path in ["/run/netns", "/var/run/netns"]:
    [n] = [n for n, p in host.items() if p == path]
    need(mounts[n].get("mountPropagation") == "HostToContainer", f"{path} does not propagate new netns mounts")
[n] = [n for n, p in host.items() if p == "/run/netstack"]
need(mounts[n].get("mountPropagation") == "Bidirectional", "/run/netstack (veth namespace) does not propagate both ways")
env = {e["name"]: e for e in c["env"]}
need(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", "NODE_NAME is not the node's name")
need(mounts[[n for n, p in host.items() if p == "/opt/cni/bin"][0]]["mountPath"] == env["CNI_BIN_DIR"]["value"],
     "CNI_BIN_DIR is not where /opt/cni/bin is mounted")
need(mounts[[n for n, p in host.items() if p == "/etc/cni/net.d"][0]]["mountPath"] == env["CNI_CONF_DIR"]["value"],
     "CNI_CONF_DIR is not where /etc/cni/net.d is mounted")
cfg_mount = mounts[[v["name"] for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"]][0]]
need(env["NETSTACK_TEMPLATE"]["value"] == cfg_mount["mountPath"] + "/10-netstack.conflist",
     "NETSTACK_TEMPLATE is not the ConfigMap's template")
for e in c["env"]:
    ref = e.get("valueFrom", {}).get("configMapKeyRef")
    if ref:
        need(ref["name"] == cm["metadata"]["name"] and ref["key"] in cm["data"], f"env {e['name']}: no key {ref['key']}")
# Every $(VAR) in args is an env var of the container.
for a in c["args"]:
    for var in re.findall(r"\$\((\w+)\)", a):
        need(var in env, f"arg {a} uses undefined $({var})")

# Start-up and liveness ask netstackd over its control socket; readiness asks /readyz on the
# metrics listener (node mode's health: watch, routes, masquerade): on the address netstackd
# binds, the node's (the pod's IP, which the kubelet probes when the probe names no host).
for probe in ["startupProbe", "livenessProbe"]:
    cmd = c.get(probe, {}).get("exec", {}).get("command", [])
    need(cmd[:2] == ["netstackd", "ctl"] and "status" in cmd, f"{probe} does not ask netstackd ctl status: {cmd}")
ready = c.get("readinessProbe", {}).get("httpGet", {})
metrics_addr = next((a.split("=", 1)[1] for a in c["args"] if a.startswith("--metrics-addr=")), "127.0.0.1:9473")
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
probe_port = ports.get(ready.get("port"), ready.get("port"))
# No host: the kubelet probes the pod's IP, for a hostNetwork pod the node's (status.hostIP).
probe_host = ready.get("host") or "$(HOST_IP)"
need(env.get("HOST_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.hostIP",
     "HOST_IP is not the node's address (status.hostIP)")
need(ready.get("path") == "/readyz" and f"{probe_host}:{probe_port}" == metrics_addr,
     f"readinessProbe does not ask /readyz on the metrics listener {metrics_addr}: {ready}")
# Prometheus finds the listener: a port named metrics, the usual scrape annotations.
metrics_port = int(metrics_addr.rsplit(":", 1)[1])
need(ports.get("metrics") == metrics_port, f"no containerPort named metrics on {metrics_port}: {ports}")
ann = ds["spec"]["template"]["metadata"].get("annotations", {})
need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(metrics_port),
     f"scrape annotations do not name port {metrics_port}: {ann}")
# The PodMonitor (a CRD kind kubernetes-validate has no schema for): checked field by field.
[pm] = [d for d in yaml.safe_load_all(open(f"{m}/monitoring/podmonitor.yaml")) if d]
need(pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor", "podmonitor.yaml is no PodMonitor")
need(set(pm) == {"apiVersion", "kind", "metadata", "spec"} and pm["metadata"].get("namespace") == ns,
     f"PodMonitor: unexpected top-level fields or namespace: {pm}")
need(set(pm["spec"]) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}, f"PodMonitor spec fields: {set(pm['spec'])}")
need(pm["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items(),
     "PodMonitor selector does not match the DaemonSet's pods")
need(pm["spec"].get("namespaceSelector", {}).get("matchNames") == [ns], "PodMonitor looks in another namespace")
[ep] = pm["spec"]["podMetricsEndpoints"]
need(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels", "scheme"}, f"PodMonitor endpoint fields: {set(ep)}")
need(ep.get("port") == "metrics" and ep.get("path", "/metrics") == "/metrics", f"PodMonitor endpoint: {ep}")

# The flags the DaemonSet passes are netstackd's.
helptext = open(helpfile).read()
for a in c["args"]:
    flag = a.split("=")[0]
    need(flag.startswith("--") and re.search(rf"(^|\s){re.escape(flag)}[\s,=<]", helptext), f"netstackd has no flag {flag}")

# The image provides the command, the binaries the probes and the entrypoint use, the template.
cf = open(containerfile).read()
need(c["command"][0] == "netstack-install" and "/usr/local/bin/netstack-install" in cf,
     "the image does not install the entrypoint")
for b in ["netstackd", "netstack", "netstack-hook"]:
    need(re.search(rf"target/release/{re.escape(b)}\b", cf), f"the image does not ship {b}")
for pkg in ["nftables", "iptables", "jq", "containernetworking-plugins"]:
    need(pkg in cf, f"the image does not install {pkg}")

# The ConfigMap's template is manifests/10-netstack.conflist, byte for byte.
need(cm["data"]["10-netstack.conflist"] == open(f"{m}/10-netstack.conflist").read(),
     "ConfigMap 10-netstack.conflist differs from manifests/10-netstack.conflist (run e2e/test_manifests.sh --sync)")
need(cm["data"]["masquerade"] in ("true", "false"), "masquerade is not true/false")

if errors:
    print("\n".join(errors))
    sys.exit(1)
EOF
# Every COPY source of the Containerfile exists in the build context.
missing=$(awk '/^COPY/ && !/--from/ { for (i = 2; i < NF; i++) print $i }' "$ROOT/Containerfile" | while read -r src; do [ -e "$ROOT/$src" ] || echo "$src"; done)
check "every COPY source of the Containerfile exists ${missing:+(missing: $missing)}" test -z "$missing"

log "the conflist template"
check "10-netstack.conflist is JSON with exactly one netstack plugin" \
  jq -e '[.plugins[] | select(.type == "netstack")] | length == 1' "$M/10-netstack.conflist"
NETSTACK_TEMPLATE=$M/10-netstack.conflist sh "$M/install-cni.sh" render 10.244.7.0/24 >"$WORK/v4.conflist" 2>"$WORK/render.err"
check "renders for an IPv4 node: its range only" test "$(jq -c '.plugins[0].ipam.ranges' "$WORK/v4.conflist")" = '[[{"subnet":"10.244.7.0/24"}]]'
check "  ... without IPv6 routes" test "$(jq -c '[.plugins[0].ipam.routes[].dst]' "$WORK/v4.conflist")" = '["0.0.0.0/0"]'
check "  ... with the default socket" test "$(jq -r '.plugins[0].socket' "$WORK/v4.conflist")" = /run/netstack/netstackd.sock
NETSTACK_TEMPLATE=$M/10-netstack.conflist sh "$M/install-cni.sh" render 10.244.7.0/24 fd00:10:244:7::/64 >"$WORK/v6.conflist" 2>>"$WORK/render.err"
check "renders for a dual-stack node: both ranges" test "$(jq -c '.plugins[0].ipam.ranges' "$WORK/v6.conflist")" = '[[{"subnet":"10.244.7.0/24"}],[{"subnet":"fd00:10:244:7::/64"}]]'
check "  ... with the template's MTU when none is given" test "$(jq '.plugins[0].mtu' "$WORK/v6.conflist")" = "$(jq '.plugins[0].mtu' "$M/10-netstack.conflist")"
check "renders the MTU it is given (NETSTACK_MTU)" test "$(NETSTACK_MTU=1400 NETSTACK_TEMPLATE=$M/10-netstack.conflist sh "$M/install-cni.sh" render 10.244.7.0/24 | jq '.plugins[0].mtu')" = 1400
echo '{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}' >"$WORK/nonetstack.conflist"
if NETSTACK_TEMPLATE=$WORK/nonetstack.conflist sh "$M/install-cni.sh" render 10.244.7.0/24 >/dev/null 2>&1; then
  fail "a template without the netstack plugin is refused"
else
  ok "a template without the netstack plugin is refused"
fi

log "the install step (manifests/install-cni.sh run) with a stand-in netstackd"
# The stand-in answers `ctl ... status` (counting each call) only once $FAKE/ready exists, as
# a netstackd still waiting for its Node's podCIDR would; run as the daemon, it records its
# arguments and waits for SIGTERM.
FAKE=$WORK/fake
mkdir -p "$FAKE/ref" "$FAKE/node/bin" "$FAKE/node/conf" "$FAKE/run"
cat >"$FAKE/netstackd" <<'EOF'
#!/bin/sh
if [ "$1" = ctl ]; then
  echo asked >>"$FAKE/asked"
  [ -e "$FAKE/ready" ] || exit 1
  echo '{"version":"0","pod_cidr":"10.244.7.0/24","pod_cidr_v6":"fd00:10:244:7::/64","attachments":0}'
  exit 0
fi
echo "$*" >"$FAKE/args"
trap 'exit 0' TERM
while :; do sleep 1; done
EOF
for f in netstackd ref/host-local ref/portmap ref/loopback plugin; do
  [ -e "$FAKE/$f" ] || printf '#!/bin/sh\necho %s\n' "$(basename "$f")" >"$FAKE/$f"
  chmod 0755 "$FAKE/$f"
done
printf '#!/bin/sh\necho the node own\n' >"$FAKE/node/bin/host-local"
chmod 0755 "$FAKE/node/bin/host-local"
FAKE=$FAKE CNI_BIN_DIR=$FAKE/node/bin CNI_CONF_DIR=$FAKE/node/conf \
  NETSTACK_TEMPLATE=$M/10-netstack.conflist NETSTACK_SOCKET=$FAKE/run/netstackd.sock \
  NETSTACKD=$FAKE/netstackd NETSTACK_PLUGIN=$FAKE/plugin REF_CNI_DIR=$FAKE/ref \
  sh "$M/install-cni.sh" run --kube --masquerade=true >"$WORK/install.log" 2>&1 &
INSTALL=$!
check "the plugin is installed before netstackd is ready" eventually 30 test -x "$FAKE/node/bin/netstack"
check "netstackd is started with the entrypoint's arguments and the socket" eventually 30 \
  grep -qx -- "--socket $FAKE/run/netstackd.sock --kube --masquerade=true" "$FAKE/args"
check "the entrypoint keeps asking netstackd" eventually 30 sh -c "[ \$(wc -l <'$FAKE/asked') -ge 3 ]"
check "no conflist while netstackd is not ready" test -z "$(ls -A "$FAKE/node/conf")"
touch "$FAKE/ready"
check "the conflist is written once netstackd answers" eventually 30 test -s "$FAKE/node/conf/10-netstack.conflist"
check "  ... with the pod CIDRs netstackd reports (both families)" test \
  "$(jq -c '.plugins[0].ipam.ranges' "$FAKE/node/conf/10-netstack.conflist")" = '[[{"subnet":"10.244.7.0/24"}],[{"subnet":"fd00:10:244:7::/64"}]]'
check "  ... and nothing else in the conf dir (written under a temporary name, renamed)" \
  test "$(ls -A "$FAKE/node/conf")" = 10-netstack.conflist
check "the node's own host-local is kept" grep -q "the node own" "$FAKE/node/bin/host-local"
check "portmap and loopback, which the node lacked, are copied" \
  sh -c "cmp '$FAKE/ref/portmap' '$FAKE/node/bin/portmap' && cmp '$FAKE/ref/loopback' '$FAKE/node/bin/loopback'"
check "netstack in the bin dir is the plugin" cmp "$FAKE/plugin" "$FAKE/node/bin/netstack"
kill -TERM "$INSTALL"
wait "$INSTALL"; rc=$?
INSTALL=
check "SIGTERM reaches netstackd and the entrypoint exits with its status ($rc)" test "$rc" = 0
rm -f "$FAKE/ref/portmap" "$FAKE/node/bin/portmap"
if FAKE=$FAKE CNI_BIN_DIR=$FAKE/node/bin REF_CNI_DIR=$FAKE/ref NETSTACK_PLUGIN=$FAKE/plugin \
   sh "$M/install-cni.sh" binaries >"$WORK/install2.log" 2>&1; then
  fail "a reference plugin missing everywhere fails the install"
else
  check "a reference plugin missing everywhere fails the install, naming it" grep -q "portmap is neither in" "$WORK/install2.log"
fi

log "kustomize (manifests/kustomization.yaml) and the uninstall DaemonSet"
"$BIN/netstackd" cleanup --help >"$WORK/cleanup-help.txt" 2>&1 || true
check "the kustomization lists the four manifests, sets the DaemonSet's image and patches CIDRs the ConfigMap has" \
  "$VPY" - "$M" "$WORK/cleanup-help.txt" <<'EOF'
import glob, os, sys, yaml
m, cleanup_help = sys.argv[1:3]
k = yaml.safe_load(open(f"{m}/kustomization.yaml"))
errors = []
assert k["kind"] == "Kustomization", k
want = sorted(os.path.basename(p) for p in glob.glob(f"{m}/0*.yaml"))
if sorted(k["resources"]) != want:
    errors.append(f"resources {k['resources']} are not the manifests {want}")
docs = [d for n in want for d in yaml.safe_load_all(open(f"{m}/{n}")) if d]
images = {c["image"].split(":")[0] for d in docs if d["kind"] == "DaemonSet"
          for c in d["spec"]["template"]["spec"]["containers"]}
names = {i["name"] for i in k["images"]}
if images != names:
    errors.append(f"kustomize images {names} are not the DaemonSet's {images}")
cm = next(d for d in docs if d["kind"] == "ConfigMap")
for p in k["patches"]:
    if p["target"]["name"] != cm["metadata"]["name"]:
        errors.append(f"patch target {p['target']} is not the ConfigMap")
    for op in yaml.safe_load(p["patch"]):
        key = op["path"].removeprefix("/data/")
        if op["op"] != "replace" or key not in cm["data"]:
            errors.append(f"patch {op} replaces no ConfigMap key")
u = [d for d in yaml.safe_load_all(open(f"{m}/uninstall/netstack-uninstall.yaml")) if d]
ds = next(d for d in u if d["kind"] == "DaemonSet")
init = ds["spec"]["template"]["spec"]["initContainers"][0]
if init["command"] != ["netstack-install", "uninstall"]:
    errors.append(f"uninstall init container runs {init['command']}")
if init["image"].split(":")[0] not in images:
    errors.append(f"uninstall image {init['image']} is not netstack's")
helptext = open(cleanup_help).read()
for a in init["args"]:
    flag = a.split("=")[0]
    if flag not in helptext:
        errors.append(f"uninstall passes {flag}, which netstackd cleanup does not take")
mounts = {v["mountPath"] for v in init["volumeMounts"]}
for path in ["/host/opt/cni/bin", "/host/etc/cni/net.d", "/run/netstack", "/var/lib/netstack", "/run/netns"]:
    if path not in mounts:
        errors.append(f"uninstall does not mount {path}")
print("\n".join(errors))
sys.exit(1 if errors else 0)
EOF

log "monitoring: the ServiceMonitor, the Service it selects, the PodMonitor (manifests/monitoring)"
KUBECTL=$(command -v kubectl)
check "kubectl (kustomize built in) is installed" test -n "$KUBECTL"
check "kubectl kustomize renders manifests/" sh -c "'$KUBECTL' kustomize '$M' >'$WORK/base.yaml'"
check "kubectl kustomize renders manifests/monitoring/" sh -c "'$KUBECTL' kustomize '$M/monitoring' >'$WORK/monitoring.yaml'"
"$VPY" - "$M" "$WORK/base.yaml" "$WORK/monitoring.yaml" >"$WORK/monitoring.out" 2>&1 <<'EOF'
import copy, sys, yaml
m, base_out, mon_out = sys.argv[1:4]
def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]
def row(what, ok):
    print(("ok   " if ok else "FAIL ") + what)
[ds] = [d for d in load(f"{m}/03-daemonset.yaml") if d["kind"] == "DaemonSet"]
[svc] = load(f"{m}/monitoring/metrics-service.yaml")
[sm] = load(f"{m}/monitoring/servicemonitor.yaml")
[pm] = load(f"{m}/monitoring/podmonitor.yaml")
# Every other pod template the manifests ship (the uninstall DaemonSet): the Service must not
# select those pods.
others = [d["spec"]["template"]["metadata"]["labels"] for d in load(f"{m}/uninstall/netstack-uninstall.yaml")
          if d["kind"] in ("DaemonSet", "Deployment", "Job")]

def errors(svc, sm, ds):
    """What is wrong between the Service, the ServiceMonitor and the DaemonSet, or []."""
    out = []
    ns = ds["metadata"]["namespace"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    [c] = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "netstackd"]
    cports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    sel = svc["spec"].get("selector") or {}
    if svc["kind"] != "Service" or svc["metadata"].get("namespace") != ns:
        out.append(f"no Service in namespace {ns}")
    if svc["spec"].get("clusterIP") != "None":
        out.append("the Service is not headless")
    if svc["spec"].get("publishNotReadyAddresses") is not True:
        out.append("a netstackd that is not ready would not be scraped (publishNotReadyAddresses)")
    if not sel or not sel.items() <= pod_labels.items():
        out.append(f"the Service's selector {sel} does not select the DaemonSet's pods {pod_labels}")
    if any(sel.items() <= o.items() for o in others):
        out.append(f"the Service's selector {sel} also selects the uninstall pods")
    sports = svc["spec"].get("ports", [])
    named = [p for p in sports if p.get("name") == "metrics"]
    if len(named) != 1:
        out.append(f"the Service has no single port named metrics: {sports}")
    else:
        p = named[0]
        target = p.get("targetPort", p.get("port"))
        # A named targetPort must be the container's port named metrics; a number, its number.
        if cports.get("metrics") is None or target not in ("metrics", cports["metrics"]):
            out.append(f"the Service's targetPort {target} is not the container's metrics port ({cports})")
        elif p.get("port") != cports["metrics"]:
            out.append(f"the Service's port {p.get('port')} is not the metrics port {cports['metrics']}")
    if sm.get("apiVersion") != "monitoring.coreos.com/v1" or sm.get("kind") != "ServiceMonitor":
        out.append("servicemonitor.yaml is no monitoring.coreos.com/v1 ServiceMonitor")
    if set(sm) != {"apiVersion", "kind", "metadata", "spec"} or sm["metadata"].get("namespace") != ns:
        out.append("ServiceMonitor: unexpected top-level fields or namespace")
    if not set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}:
        out.append(f"ServiceMonitor spec fields: {set(sm['spec'])}")
    smsel = sm["spec"].get("selector", {}).get("matchLabels") or {}
    if not smsel or not smsel.items() <= svc["metadata"].get("labels", {}).items():
        out.append(f"the ServiceMonitor's selector {smsel} does not match the Service's labels")
    if sm["spec"].get("namespaceSelector", {}).get("matchNames") != [svc["metadata"].get("namespace")]:
        out.append("the ServiceMonitor looks in another namespace than the Service's")
    eps = sm["spec"].get("endpoints", [])
    if len(eps) != 1 or not set(eps[0]) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels", "scheme"}:
        out.append(f"ServiceMonitor endpoints: {eps}")
    elif eps[0].get("port") not in [p.get("name") for p in sports] or eps[0].get("path", "/metrics") != "/metrics":
        out.append(f"the ServiceMonitor's endpoint {eps[0]} names no port of the Service")
    return out

e = errors(svc, sm, ds)
row("the Service is headless, keeps unready pods and selects exactly the DaemonSet's pods, its metrics port is the "
    "container's, the ServiceMonitor selects the Service and scrapes that port" + (f": {e}" if e else ""), not e)
# The check can say no: one mistake at a time.
def mutated(what, change):
    s2, sm2, ds2 = copy.deepcopy(svc), copy.deepcopy(sm), copy.deepcopy(ds)
    change(s2, sm2, ds2)
    row(f"  ... and rejects {what}", bool(errors(s2, sm2, ds2)))
mutated("a Service selecting other labels", lambda s, _, __: s["spec"].update(selector={"app.kubernetes.io/name": "other"}))
mutated("a Service port named otherwise", lambda s, _, __: s["spec"]["ports"][0].update(name="metric"))
mutated("a targetPort that is no container port", lambda s, _, __: s["spec"]["ports"][0].update(targetPort="web"))
mutated("a container port renamed", lambda _, __, d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(name="prom"))
mutated("a ServiceMonitor selecting labels the Service lacks",
        lambda _, sm, __: sm["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "web"}))
mutated("a ServiceMonitor endpoint on another port", lambda _, sm, __: sm["spec"]["endpoints"][0].update(port="http"))
mutated("a Service that is not headless", lambda s, _, __: s["spec"].pop("clusterIP"))
mutated("a Service that drops netstackds failing readiness", lambda s, _, __: s["spec"].pop("publishNotReadyAddresses"))

# Both monitors must not be applied together (each target would be scraped twice): the
# monitoring kustomization carries the ServiceMonitor and its Service, not the PodMonitor; the
# base kustomization carries none of them (a cluster without the operator has no such kinds).
k = yaml.safe_load(open(f"{m}/monitoring/kustomization.yaml"))
row(f"manifests/monitoring/kustomization.yaml lists the Service and the ServiceMonitor only ({k.get('resources')})",
    sorted(k.get("resources", [])) == ["metrics-service.yaml", "servicemonitor.yaml"])
rendered = load(mon_out)
row("kustomize renders exactly that Service and that ServiceMonitor",
    sorted(d["kind"] for d in rendered) == ["Service", "ServiceMonitor"] and svc in rendered and sm in rendered)
base = load(base_out)
row("the base install (kubectl apply -k manifests/) has no Prometheus operator kind",
    not any(d["apiVersion"].startswith("monitoring.coreos.com") for d in base) and len(base) >= 6)
# The base renders with its parameters applied, as `kubectl apply -k manifests/` sends it.
kb = yaml.safe_load(open(f"{m}/kustomization.yaml"))
[rds] = [d for d in base if d["kind"] == "DaemonSet"]
[rcm] = [d for d in base if d["kind"] == "ConfigMap"]
img = kb["images"][0]
want_img = f"{img['newName']}:{img['newTag']}"
row(f"  ... the DaemonSet's image is the kustomization's ({want_img})",
    rds["spec"]["template"]["spec"]["containers"][0]["image"] == want_img)
ops = [op for p in kb["patches"] for op in yaml.safe_load(p["patch"])]
row("  ... the ConfigMap carries the kustomization's CIDRs",
    len(ops) == 2 and all(rcm["data"][op["path"].removeprefix("/data/")] == op["value"] for op in ops))
# The PodMonitor and the ServiceMonitor reach the same pods through the same port name.
row("the PodMonitor scrapes the same pods and port as the ServiceMonitor",
    pm["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    and pm["spec"]["podMetricsEndpoints"][0]["port"] == sm["spec"]["endpoints"][0]["port"])
EOF
while read -r state what; do
  case "$state" in
    ok) ok "$what" ;;
    *) fail "${what:-the monitoring check: $(tail -3 "$WORK/monitoring.out" | tr '\n' ' ')}" ;;
  esac
done <"$WORK/monitoring.out"
check "the monitoring check produced its rows" grep -q '^ok   the PodMonitor' "$WORK/monitoring.out"

log "the uninstall step (install-cni.sh uninstall) on a node namespace where netstackd ran"
NODE=mf-node-$$
UN=$WORK/uninstall
mkdir -p "$UN/bin" "$UN/conf" "$UN/state"
ip netns add "$NODE"
trap '[ -n "$INSTALL" ] && kill -TERM "$INSTALL" 2>/dev/null && wait "$INSTALL"; ip netns del "$NODE" 2>/dev/null; rm -rf "$WORK"' EXIT
ip -n "$NODE" link set lo up
ip netns exec "$NODE" "$BIN/netstackd" --socket "$UN/sock" --state-dir "$UN/state" --pod-cidr 10.250.9.0/24 \
  --uplink mfup0 --dp-netns "$UN/dp" --metrics-addr off --masquerade=true >"$WORK/un-netstackd.log" 2>&1 &
UNPID=$!
wait_for_socket "$UN/sock" "$UNPID" "$WORK/un-netstackd.log"
cp "$M/10-netstack.conflist" "$UN/conf/10-netstack.conflist"
cp "$BIN/netstack" "$UN/bin/netstack"
printf '#!/bin/sh\n' >"$UN/bin/host-local"
chmod 0755 "$UN/bin/host-local"
uninstall_step() {
  ip netns exec "$NODE" env CNI_BIN_DIR="$UN/bin" CNI_CONF_DIR="$UN/conf" NETSTACK_SOCKET="$UN/sock" \
    NETSTACKD="$BIN/netstackd" sh "$M/install-cni.sh" uninstall --state-dir "$UN/state" --uplink mfup0 --dp-netns "$UN/dp"
}
uninstall_step >"$WORK/un1.log" 2>&1; rc=$?
check "uninstall refuses while netstackd answers (rc $rc)" sh -c "[ $rc != 0 ] && grep -q 'still answers' '$WORK/un1.log'"
check "  ... and touched nothing" test -s "$UN/conf/10-netstack.conflist" -a -x "$UN/bin/netstack"
check "netstackd made its uplink and masquerade table in the node namespace" \
  sh -c "ip -n '$NODE' link show mfup0 >/dev/null && ip netns exec '$NODE' nft list table ip netstack >/dev/null"
kill -9 "$UNPID"
wait "$UNPID" 2>/dev/null
check "after netstackd is gone (kill -9), uninstall succeeds" uninstall_step
check "  ... the conflist is gone" test ! -e "$UN/conf/10-netstack.conflist"
check "  ... the plugin is gone, the node's own host-local stays" test ! -e "$UN/bin/netstack" -a -x "$UN/bin/host-local"
check "  ... the uplink is gone" sh -c "! ip -n '$NODE' link show mfup0 >/dev/null 2>&1"
check "  ... the masquerade table is gone" sh -c "! ip netns exec '$NODE' nft list table ip netstack >/dev/null 2>&1"
check "  ... no state file is left" test -z "$(ls -A "$UN/state" 2>/dev/null)"
check "  ... the node namespace holds only lo" test "$(ip -n "$NODE" -o link show | wc -l)" = 1
check "a second uninstall is harmless" uninstall_step
ip netns del "$NODE"

log "the kind e2e's config"
check "e2e/kind/kind.yaml parses, disables the default CNI, has two nodes" "$VPY" -c '
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
assert c["kind"] == "Cluster" and c["networking"]["disableDefaultCNI"] is True, c
assert [n["role"] for n in c["nodes"]] == ["control-plane", "worker"], c["nodes"]
' "$ROOT/e2e/kind/kind.yaml"
check "e2e/kind/run.sh is valid shell" bash -n "$ROOT/e2e/kind/run.sh"
check "the GitHub Actions workflow runs e2e/kind/run.sh with KIND_REQUIRED=1 after installing kind" "$VPY" -c '
import sys, yaml
w = yaml.safe_load(open(sys.argv[1]))
steps = w["jobs"]["kind"]["steps"]
runs = [s.get("run", "") for s in steps]
assert any("KIND_REQUIRED=1" in r and "e2e/kind/run.sh" in r for r in runs), runs
uses = [s.get("uses", "") for s in steps]
assert uses.index(next(u for u in uses if u.startswith("helm/kind-action"))) < runs.index(next(r for r in runs if "e2e/kind/run.sh" in r)), steps
' "$ROOT/.github/workflows/kind.yml"
# The kind e2e where it cannot run: stand-ins for docker, kind and kubectl on PATH (each logs
# its arguments); docker's daemon answers but has no image and no registry ($STUB_IMAGES=1:
# every image is there, but kind cannot pull its node image).
STUB=$WORK/stub
mkdir -p "$STUB"
cat >"$STUB/docker" <<'EOF'
#!/bin/sh
echo "docker $*" >>"$STUB/calls"
case "$1 $2" in
  "info "*) exit 0 ;;
  "image inspect") [ "${STUB_IMAGES:-0}" = 1 ] ;;
  *) exit 1 ;;
esac
EOF
cat >"$STUB/kind" <<'EOF'
#!/bin/sh
echo "kind $*" >>"$STUB/calls"
if [ "$1 $2" = "create cluster" ]; then
  echo 'ERROR: failed to create cluster: failed to pull image "kindest/node:v1.33.1": command "docker pull kindest/node:v1.33.1" failed with error: exit status 1' >&2
  exit 1
fi
exit 0
EOF
printf '#!/bin/sh\necho "kubectl $*" >>"$STUB/calls"\n' >"$STUB/kubectl"
chmod 0755 "$STUB/docker" "$STUB/kind" "$STUB/kubectl"
kind_e2e() { STUB=$STUB PATH="$STUB:$PATH" bash "$ROOT/e2e/kind/run.sh" >"$WORK/kind.out" 2>&1; }
kind_e2e; rc=$?
check "kind e2e without images or registry: exits 0 ($rc)" test "$rc" = 0
check "  ... with a SKIP line naming the missing image" grep -qx "SKIP e2e/kind: image docker.io/library/rust:[^ ]* is neither in docker's image store nor pullable (no registry access?)" "$WORK/kind.out"
check "  ... before creating any cluster" sh -c "! grep -q '^kind create' '$STUB/calls'"
KIND_REQUIRED=1 kind_e2e; rc=$?
check "  ... and fails (exit $rc) with KIND_REQUIRED=1" sh -c "[ $rc = 1 ] && grep -q '^FAIL e2e/kind: image' '$WORK/kind.out'"
: >"$STUB/calls"
STUB_IMAGES=1 kind_e2e; rc=$?
check "kind e2e where kind cannot pull its node image: SKIP, exit 0 ($rc)" sh -c "[ $rc = 0 ] && grep -q '^SKIP e2e/kind: kind could not pull its node image' '$WORK/kind.out'"
check "  ... after deleting the half-made cluster" grep -q "^kind delete cluster --name netstack-e2e" "$STUB/calls"
check "  ... having built nothing" sh -c "! grep -q '^docker build' '$STUB/calls'"


echo
echo "test_manifests: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
