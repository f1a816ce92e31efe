#!/usr/bin/env bash
# Installs cargo-deny from crates.io once per machine, for scripts/test.sh's dependency check
# (licenses, bans, sources: deny.toml), and prints the directory holding the binary. A fresh
# machine builds it once (several minutes on 2 cores); later calls find it in the cache.
# 0.18.3 is the newest release that builds with Rust 1.85 or later (its rust-version).
set -euo pipefail
VERSION=${CARGO_DENY_VERSION:-0.18.3}
DEST=${CARGO_DENY_ROOT:-/var/cache/netstack/cargo-deny-$VERSION}
if [ ! -x "$DEST/bin/cargo-deny" ]; then
  echo "cargo-deny.sh: building cargo-deny $VERSION into $DEST (once per machine)" >&2
  cargo install --quiet --locked --version "$VERSION" --root "$DEST" cargo-deny >&2
fi
echo "$DEST/bin"
