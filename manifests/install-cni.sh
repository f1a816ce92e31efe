#!/bin/sh
# netstack's install step and container entrypoint (the image ships it as
# /usr/local/bin/netstack-install; the multi-node e2e runs it as it is).
#
#   install-cni.sh run [NETSTACKD ARGS...]
#       The DaemonSet's entrypoint: installs the CNI binaries, starts netstackd, waits until it
#       answers on its control socket, and only then writes the conflist (so the node's
#       runtime reports the network ready only when ADD can succeed); then waits for netstackd
#       and passes SIGTERM/SIGINT on to it. Exits with netstackd's status.
#   install-cni.sh binaries
#       Copies `netstack` into $CNI_BIN_DIR (atomically: temporary name, then rename), and the
#       reference plugins the conflist uses (host-local, portmap, loopback) when the node has
#       none.
#   install-cni.sh conflist
#       Waits for netstackd, then writes $CNI_CONF_DIR/$CNI_CONF_NAME atomically.
#   install-cni.sh render POD_CIDR [POD_CIDR_V6]
#       Prints the conflist: $NETSTACK_TEMPLATE with the netstack plugin's socket set and its
#       host-local ranges replaced by this node's pod CIDR(s); routes of a family the node has
#       no range of are dropped. $NETSTACK_IPAM_DATA_DIR, if set, becomes host-local's dataDir;
#       $NETSTACK_MTU, if set, the plugin's mtu (`conflist` sets it to the uplink's MTU, which
#       netstackd took from the default route's interface unless told otherwise).
#   install-cni.sh uninstall [CLEANUP ARGS...]
#       Leaves the node as it was before netstack (manifests/uninstall/ runs it on every node
#       once the netstack DaemonSet is gone): refuses while a netstackd answers on the socket;
#       removes the conflist (the runtime stops choosing netstack), runs `netstackd cleanup`
#       with CLEANUP ARGS (pod TAPs and veths, the uplink, state, routes, nftables tables, the
#       FORWARD accept rules and the uplink rules in other tables' forward chains), then removes the plugin from $CNI_BIN_DIR. Reference plugins it
#       copied stay (other CNIs use them), as do the plugin's logs in /var/log/netstack.
#
# Environment (defaults are the DaemonSet's paths):
#   CNI_BIN_DIR=/host/opt/cni/bin  CNI_CONF_DIR=/host/etc/cni/net.d
#   CNI_CONF_NAME=10-netstack.conflist  NETSTACK_TEMPLATE=/etc/netstack/10-netstack.conflist
#   NETSTACK_SOCKET=/run/netstack/netstackd.sock  NETSTACKD=netstackd  NETSTACK_PLUGIN=<netstack
#   beside this script, else on PATH>  REF_CNI_DIR=/usr/lib/cni  READY_TIMEOUT=600 (seconds)
set -eu

CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/host/etc/cni/net.d}
CNI_CONF_NAME=${CNI_CONF_NAME:-10-netstack.conflist}
NETSTACK_TEMPLATE=${NETSTACK_TEMPLATE:-/etc/netstack/10-netstack.conflist}
NETSTACK_SOCKET=${NETSTACK_SOCKET:-/run/netstack/netstackd.sock}
NETSTACKD=${NETSTACKD:-netstackd}
REF_CNI_DIR=${REF_CNI_DIR:-/usr/lib/cni}
READY_TIMEOUT=${READY_TIMEOUT:-600}

say() { printf 'netstack-install: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

plugin_binary() {
  if [ -n "${NETSTACK_PLUGIN:-}" ]; then
    printf '%s' "$NETSTACK_PLUGIN"
  else
    command -v netstack || die "the netstack CNI plugin binary is not on PATH (set NETSTACK_PLUGIN)"
  fi
}

# install_file SRC DEST: copy under a temporary name in DEST's directory, then rename.
install_file() {
  tmp="$(dirname "$2")/.$(basename "$2").tmp.$$"
  cp "$1" "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$2"
}

cmd_binaries() {
  mkdir -p "$CNI_BIN_DIR"
  install_file "$(plugin_binary)" "$CNI_BIN_DIR/netstack"
  say "installed $CNI_BIN_DIR/netstack"
  for p in host-local portmap loopback; do
    if [ -x "$CNI_BIN_DIR/$p" ]; then
      continue
    fi
    [ -x "$REF_CNI_DIR/$p" ] || die "$p is neither in $CNI_BIN_DIR nor in $REF_CNI_DIR"
    install_file "$REF_CNI_DIR/$p" "$CNI_BIN_DIR/$p"
    say "installed $CNI_BIN_DIR/$p (the node had none)"
  done
}

cmd_render() {
  [ $# -ge 1 ] || { say "render: POD_CIDR [POD_CIDR_V6] expected"; return 1; }
  [ -r "$NETSTACK_TEMPLATE" ] || { say "template $NETSTACK_TEMPLATE is not readable"; return 1; }
  jq --arg v4 "$1" --arg v6 "${2:-}" --arg socket "$NETSTACK_SOCKET" \
     --arg datadir "${NETSTACK_IPAM_DATA_DIR:-}" --arg mtu "${NETSTACK_MTU:-}" '
    def v6: test(":");
    if ([.plugins[]? | select(.type == "netstack")] | length) != 1 then
      error("the template must have exactly one plugin of type netstack")
    else . end
    | .plugins |= map(
        if .type == "netstack" then
          .socket = $socket
          | .ipam.ranges = ([[{subnet: $v4}]] + (if $v6 == "" then [] else [[{subnet: $v6}]] end))
          | .ipam.routes = ((.ipam.routes // [{dst: "0.0.0.0/0"}])
                            | map(select((.dst | v6 | not) or $v6 != "")))
          | if $datadir == "" then . else .ipam.dataDir = $datadir end
          | if $mtu == "" then . else .mtu = ($mtu | tonumber) end
        else . end)
  ' "$NETSTACK_TEMPLATE"
}

# wait_ready [PID]: until netstackd answers `ctl status` (or PID dies, or the timeout); prints
# the status JSON.
wait_ready() {
  waited=0
  while :; do
    if out=$("$NETSTACKD" ctl --socket "$NETSTACK_SOCKET" --json status 2>/dev/null); then
      printf '%s' "$out"
      return 0
    fi
    if [ -n "${1:-}" ] && ! kill -0 "$1" 2>/dev/null; then
      say "netstackd exited before it was ready"
      return 1
    fi
    if [ "$waited" -ge "$((READY_TIMEOUT * 5))" ]; then
      say "netstackd not ready after ${READY_TIMEOUT}s"
      return 1
    fi
    waited=$((waited + 1))
    sleep 0.2
  done
}

cmd_conflist() {
  status=$(wait_ready "${1:-}") || return 1
  v4=$(printf '%s' "$status" | jq -r '.pod_cidr // .status.pod_cidr // empty')
  v6=$(printf '%s' "$status" | jq -r '.pod_cidr_v6 // .status.pod_cidr_v6 // empty')
  [ -n "$v4" ] || { say "netstackd's status has no pod_cidr: $status"; return 1; }
  # The pods' MTU is the uplink's, as netstackd set it (this runs in the node's netns).
  uplink=$(printf '%s' "$status" | jq -r '.uplink // empty')
  if [ -z "${NETSTACK_MTU:-}" ] && [ -n "$uplink" ] && [ -r "/sys/class/net/$uplink/mtu" ]; then
    NETSTACK_MTU=$(cat "/sys/class/net/$uplink/mtu")
  fi
  mkdir -p "$CNI_CONF_DIR"
  dest="$CNI_CONF_DIR/$CNI_CONF_NAME"
  tmp="$CNI_CONF_DIR/.$CNI_CONF_NAME.tmp.$$"
  if ! cmd_render "$v4" "$v6" >"$tmp"; then
    rm -f "$tmp"
    say "rendering $NETSTACK_TEMPLATE failed"
    return 1
  fi
  mv -f "$tmp" "$dest"
  say "wrote $dest for pod CIDR $v4${v6:+ and $v6}${NETSTACK_MTU:+, MTU $NETSTACK_MTU}"
}

cmd_run() {
  cmd_binaries
  "$NETSTACKD" --socket "$NETSTACK_SOCKET" "$@" &
  pid=$!
  trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
  if ! cmd_conflist "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
    exit 1
  fi
  # `wait` returns early when a trapped signal arrives: wait again until netstackd is gone.
  rc=0
  while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" && rc=0 || rc=$?
  done
  exit "$rc"
}

cmd_uninstall() {
  if "$NETSTACKD" ctl --socket "$NETSTACK_SOCKET" --json status >/dev/null 2>&1; then
    die "netstackd still answers on $NETSTACK_SOCKET: delete the netstack DaemonSet first"
  fi
  rm -f "$CNI_CONF_DIR/$CNI_CONF_NAME"
  say "removed $CNI_CONF_DIR/$CNI_CONF_NAME"
  "$NETSTACKD" cleanup --socket "$NETSTACK_SOCKET" "$@" || die "netstackd cleanup failed"
  rm -f "$CNI_BIN_DIR/netstack"
  say "removed $CNI_BIN_DIR/netstack; the node is as it was before netstack"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  run) cmd_run "$@" ;;
  binaries) cmd_binaries ;;
  conflist) cmd_conflist ;;
  render) cmd_render "$@" ;;
  uninstall) cmd_uninstall "$@" ;;
  *) die "usage: $0 run [NETSTACKD ARGS...] | binaries | conflist | render POD_CIDR [POD_CIDR_V6] | uninstall [CLEANUP ARGS...]" ;;
esac
