#!/usr/bin/env bash
# Installs netstack on a host without Kubernetes (podman, CRI-O or containerd calling CNI):
# netstackd and netstack-hook, the CNI plugin, the systemd unit and its settings file, the
# tmpfiles.d entry, shell completions and man pages. Build first: cargo build --release --bins.
#
#   scripts/install-host.sh [--prefix /usr/local] [--cni-bin-dir /opt/cni/bin] [--destdir DIR] [--start]
#   scripts/install-host.sh --uninstall [same options]
#
# --destdir installs under DIR (packaging, tests) and touches nothing else. Without it, on a host
# run by systemd, the unit is loaded (daemon-reload) and the directories created; --start also
# enables and starts netstackd. /etc/default/netstackd is never overwritten: edit its --pod-cidr.
# Uninstall stops netstackd, runs `netstackd cleanup` (pod TAPs, uplink, state) and removes the
# files; the settings file is kept.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${NETSTACK_BIN:-$ROOT/target/release}
PREFIX=/usr/local
CNI_BIN_DIR=/opt/cni/bin
DESTDIR=
START=no
ACTION=install

die() { echo "install-host: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) PREFIX=${2:?}; shift 2 ;;
    --cni-bin-dir) CNI_BIN_DIR=${2:?}; shift 2 ;;
    --destdir) DESTDIR=${2:?}; shift 2 ;;
    --start) START=yes; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

D=$DESTDIR
UNIT=$D/etc/systemd/system/netstackd.service
TMPFILES=$D/etc/tmpfiles.d/netstack.conf
DEFAULTS=$D/etc/default/netstackd
MAN_DIR=$D$PREFIX/share/man/man1
BASH_COMP=$D$PREFIX/share/bash-completion/completions/netstackd
ZSH_COMP=$D$PREFIX/share/zsh/site-functions/_netstackd
FISH_COMP=$D$PREFIX/share/fish/vendor_completions.d/netstackd.fish
systemd_runs() { [ -z "$D" ] && [ -d /run/systemd/system ]; }

if [ "$ACTION" = uninstall ]; then
  if systemd_runs; then systemctl disable --now netstackd.service 2>/dev/null || true; fi
  if [ -z "$D" ] && [ -x "$PREFIX/bin/netstackd" ]; then "$PREFIX/bin/netstackd" cleanup || true; fi
  rm -f "$D$PREFIX/bin/netstackd" "$D$PREFIX/bin/netstack-hook" "$D$CNI_BIN_DIR/netstack" \
    "$UNIT" "$TMPFILES" "$BASH_COMP" "$ZSH_COMP" "$FISH_COMP" "$MAN_DIR"/netstackd*.1
  if systemd_runs; then systemctl daemon-reload; fi
  echo "netstack removed (kept $DEFAULTS)"
  exit 0
fi

for b in netstackd netstack netstack-hook; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run cargo build --release --bins first"
done
install -D -m 0755 "$BIN/netstackd" "$D$PREFIX/bin/netstackd"
install -D -m 0755 "$BIN/netstack-hook" "$D$PREFIX/bin/netstack-hook"
install -D -m 0755 "$BIN/netstack" "$D$CNI_BIN_DIR/netstack"
install -d -m 0755 "$(dirname "$UNIT")" "$(dirname "$TMPFILES")" "$(dirname "$DEFAULTS")" "$MAN_DIR" \
  "$(dirname "$BASH_COMP")" "$(dirname "$ZSH_COMP")" "$(dirname "$FISH_COMP")"
sed "s|^ExecStart=/usr/local/bin/netstackd|ExecStart=$PREFIX/bin/netstackd|" \
  "$ROOT/dist/systemd/netstackd.service" >"$UNIT"
chmod 0644 "$UNIT"
install -m 0644 "$ROOT/dist/tmpfiles.d/netstack.conf" "$TMPFILES"
[ -e "$DEFAULTS" ] || install -m 0644 "$ROOT/dist/netstackd.default" "$DEFAULTS"
"$BIN/netstackd" completions bash >"$BASH_COMP"
"$BIN/netstackd" completions zsh >"$ZSH_COMP"
"$BIN/netstackd" completions fish >"$FISH_COMP"
"$BIN/netstackd" man --dir "$MAN_DIR"
echo "netstack installed under ${D:-/} (netstackd $("$BIN/netstackd" --version | cut -d' ' -f2-))"

if systemd_runs; then
  systemd-tmpfiles --create "$TMPFILES"
  systemctl daemon-reload
  if [ "$START" = yes ]; then
    systemctl enable --now netstackd.service
  else
    echo "next: set --pod-cidr in $DEFAULTS, then: systemctl enable --now netstackd"
  fi
elif [ -z "$D" ]; then
  echo "systemd is not running here: start $PREFIX/bin/netstackd \$NETSTACKD_ARGS (from $DEFAULTS) yourself"
fi
