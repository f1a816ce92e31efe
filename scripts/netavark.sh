#!/usr/bin/env bash
# Builds netavark (podman 5's network tool) from crates.io once per machine, for
# e2e/test_netavark.sh, and prints the path of the binary. Debian 12 packages netavark 1.4,
# which predates plugin networks' port mappings and podman 5; 2.x builds here with the
# machine's Rust and Debian's protobuf-compiler (scripts/deps.sh installs it). The build takes
# several minutes on 2 cores the first time (a debug build); later calls find the binary in the cache.
set -euo pipefail
VERSION=${NETAVARK_VERSION:-2.1.0}
DEST=${NETAVARK_ROOT:-/var/cache/netstack/netavark-$VERSION}
if [ ! -x "$DEST/bin/netavark" ]; then
  command -v protoc >/dev/null || { echo "netavark.sh: protoc missing: run scripts/deps.sh" >&2; exit 1; }
  echo "netavark.sh: building netavark $VERSION into $DEST (once per machine)" >&2
  # A debug build of the one binary: it only has to run the tests, and it compiles in about
  # half the time of a release build.
  cargo install --quiet --locked --debug --bin netavark --version "$VERSION" --root "$DEST" netavark >&2
fi
echo "$DEST/bin/netavark"
