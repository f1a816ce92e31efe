#!/usr/bin/env bash
# Installs what netstack's demo and tests need on Debian 12 (as root). Idempotent and quick
# when everything is already there. The Rust toolchain (cargo >= the workspace rust-version) must be present.
set -euo pipefail

PACKAGES=(containernetworking-plugins iperf3 iproute2 iputils-ping ethtool jq netcat-openbsd socat procps runc podman busybox-static python3 tshark tcpdump python3-prometheus-client)
PACKAGES+=(containerd protobuf-compiler gcc libc6-dev iptables)  # CNI chaining (portmap) and the containerd e2e
PACKAGES+=(nftables curl python3-venv)  # node mode: masquerade (nft); test_multinode, test_manifests (kubernetes-validate venv)
PACKAGES+=(passt slirp4netns)  # e2e/bench: the pasta and slirp4netns baselines
PACKAGES+=(g++)  # scripts/fuzz.sh: libfuzzer-sys compiles libFuzzer (C++)
PACKAGES+=(systemd man-db libcap2-bin util-linux)  # test_operator: systemd-analyze, systemd-tmpfiles, man, capsh, setpriv
PACKAGES+=(bind9-dnsutils)  # e2e/test_services.sh: dig (DNS through a ClusterIP)
PACKAGES+=(qemu-system-x86)  # e2e/test_vm.sh: the test VM (with busybox-static for its initramfs)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  for c in "$HOME/.cargo/bin/cargo" /usr/local/cargo/bin/cargo; do
    [ -x "$c" ] && export PATH="$(dirname "$c"):$PATH" && break
  done
fi
# One minimum Rust version everywhere: the workspace's rust-version, which every crate inherits.
MSRV=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found: install a Rust toolchain (>= $MSRV) first" >&2; exit 1; }
have=$(cargo --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$MSRV" "${have%%-*}" | sort -V | head -1)" != "$MSRV" ]; then
  echo "deps: cargo $have is older than the project's rust-version $MSRV" >&2
  exit 1
fi
[ -e /dev/net/tun ] || { echo "deps: /dev/net/tun is missing" >&2; exit 1; }
