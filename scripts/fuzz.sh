#!/usr/bin/env bash
# Coverage-guided fuzzing (fuzz/, cargo-fuzz + libFuzzer): builds every target and runs each for
# FUZZ_SECONDS (default 8) on its checked-in corpus fuzz/corpus/<target>/. New inputs go to a
# throwaway directory, so the checked-in corpus never changes; a crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run. Usage: scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-8}
(cd fuzz && cargo fmt -- --check)  # its own workspace: `cargo fmt --all` does not reach it

if ! cargo fuzz --version >/dev/null 2>&1; then
  # About 30 s with a warm crates.io index, into ~/.cargo/bin where later runs find it.
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi
# cargo-fuzz passes -Z flags (sanitizer, coverage); RUSTC_BOOTSTRAP lets the stable toolchain
# take them. AddressSanitizer ships with stable's rust-std on x86_64 Linux.
export RUSTC_BOOTSTRAP=1
# Release optimisations with debug assertions and overflow checks (cargo-fuzz's default).
build=(--codegen-units 16)

targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo fuzz build "${build[@]}" >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if cargo fuzz run "${build[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    echo "fuzz: $t: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${secs}s, $(grep -o 'cov: [0-9]*' "$log" | tail -1), no crash"
  else
    echo "fuzz: $t FAILED; input in fuzz/artifacts/$t/:" >&2
    grep -A30 -m1 -E '^==[0-9]+==|panicked|ERROR: libFuzzer' "$log" >&2 || tail -40 "$log" >&2
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
