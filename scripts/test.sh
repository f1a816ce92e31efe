#!/usr/bin/env bash
# The whole test suite, as root: dependencies, formatting, lints, cargo deny (licences, bans,
# sources; deny.toml), unit tests (those marked `#[ignore = "needs root"]` create real TAP
# devices and namespaces; run here with --include-ignored), release build,
# then the e2e scripts in e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (namespaces, TAP devices)" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --all-features --quiet -- -D warnings
echo "==> the plugin and the hook depend on netstack-core only (cargo tree)"
# The runtime executes them for every pod: no daemon, no Kubernetes client, no HTTP or TLS.
for pkg in netstack-cni netstack-hook; do
  heavy=$(cargo tree -q -p "$pkg" -e normal,build --prefix none | awk '{print $1}' | sort -u |
    grep -E '^(netstackd|kube|kube-client|k8s-openapi|hyper|rustls|tokio-rustls|seccompiler)$' || true)
  [ -z "$heavy" ] || { echo "FAIL $pkg compiles: $heavy" >&2; exit 1; }
done
echo "==> cargo deny check licenses bans sources (deny.toml)"
# cargo-deny is built once per machine into /var/cache/netstack (scripts/cargo-deny.sh).
DENY_DIR=$(./scripts/cargo-deny.sh)
# It reads the metadata of every crate in Cargo.lock, for every platform (winapi and the like
# included), which a Linux build never downloads: fetch them first, or a fresh machine's
# registry lacks them and the offline check fails.
cargo fetch --locked --quiet
PATH="$DENY_DIR:$PATH" cargo deny --offline --log-level error check licenses bans sources
echo "==> cargo test"
# One ignored test boots the e2e VM (QEMU, TCG) on a vhost-user server with two workers: it
# gets the VM's kernel and initramfs from e2e/vm/lib.sh (cached in /var/cache/netstack/vm).
vm_env=$(bash -c '. e2e/vm/lib.sh && vm_assets >&2 && echo "$VM_KERNEL $VM_INITRD"')
read -r NETSTACK_VM_KERNEL NETSTACK_VM_INITRD <<<"$vm_env"
export NETSTACK_VM_KERNEL NETSTACK_VM_INITRD
cargo test --quiet -- --test-threads=1 --include-ignored  # the #[ignore = "needs root"] tests too
echo "==> cargo build --release (with the e2e tests' fault injection)"
cargo build --release --quiet --bins --features netstackd/fault-injection
echo "==> fuzz (scripts/fuzz.sh)"
./scripts/fuzz.sh

# What an e2e script must not leave behind: network namespaces, links and routes in the
# node's namespace. Devices a kernel module makes when it loads (ifb0 for the bandwidth
# plugin, tunnel fallbacks) are not a script's to remove and are left out.
node_objects() {
  ip netns list 2>/dev/null | awk '{print "netns " $1}'
  ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}' |
    grep -v -E '^link (ifb[0-9]+|sit0|tunl0|ip6tnl0|ip6gre0|gre0|gretap0|erspan0|ip_vti0|ip6_vti0)$'
  ip -4 route show 2>/dev/null | awk '{print "route " $1 " " $2 " " $3}'
}

# remove_leaks LINES: delete the namespaces and links a script left, so that the next script
# starts on a clean node (a stale route to a reused pod CIDR breaks node <-> pod traffic).
remove_leaks() {
  local kind name rest
  while read -r kind name rest; do
    case "$kind" in
      netns) ip netns del "$name" 2>/dev/null || true ;;
      link) ip link del "$name" 2>/dev/null || true ;;
    esac
  done <<<"$1"
}

failed=()
for t in e2e/test_*.sh; do
  echo "==> $t"
  before=$(node_objects | sort)
  bash "$t" || failed+=("$t")
  leaked=$(comm -13 <(echo "$before") <(node_objects | sort))
  if [ -n "$leaked" ]; then
    echo "FAIL $t left these behind on the node:" >&2
    sed 's/^/    /' <<<"$leaked" >&2
    remove_leaks "$leaked"
    [[ " ${failed[*]} " == *" $t "* ]] || failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all tests passed"
