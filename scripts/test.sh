#!/usr/bin/env bash
# The whole test suite, as root: dependencies, formatting, lints, unit tests (some create
# real TAP devices and namespaces), release build, then the e2e scripts in e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (namespaces, TAP devices)" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --quiet -- --test-threads=1
echo "==> cargo build --release"
cargo build --release --quiet --bins
echo "==> fuzz (scripts/fuzz.sh)"
./scripts/fuzz.sh

failed=()
for t in e2e/test_*.sh; do
  echo "==> $t"
  bash "$t" || failed+=("$t")
done
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all tests passed"
