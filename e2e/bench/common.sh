# The preamble the benchmark scripts share (run.sh, add_parallel.sh, packet_io.sh), sourced:
# it only defines names and functions, it runs nothing. The paths of the repository and the
# binaries, log lines with the seconds since start, the ledger of what a run creates, a CNI
# call as a runtime makes it, the choice of free /24s, the checks of arguments and of root.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/../.." && pwd)
BIN=${NETSTACK_BIN:-$REPO/target/release}
REF_CNI=/usr/lib/cni
declare -A CONF PLUGIN # network config and plugin binary per kind of pod, for cni_call

# log TEXT: a bold line with the seconds since start, so slow phases show.
log() { printf '\033[1m==> [%3ds] %s\033[0m\n' "$SECONDS" "$*"; }

# ledger KIND NAME: with BENCH_LEDGER set (e2e/test_bench_smoke.sh), what this run created
# (netns, link, pid, dir), so a test can check that none of it is left.
ledger() { if [ -n "${BENCH_LEDGER:-}" ]; then echo "$1 $2" >>"$BENCH_LEDGER"; fi; }

# cni_call CMD KIND NAME: one plugin call with KIND's network config, as a runtime makes it,
# for the pod whose netns is /run/netns/NAME.
cni_call() {
  printf '%s' "${CONF[$2]}" | env CNI_COMMAND="$1" CNI_CONTAINERID="$3" CNI_NETNS="/run/netns/$3" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN:$REF_CNI" \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3" "${PLUGIN[$2]}"
}

# free_subnet START PREFIX...: prints the first X from START on (1..250, wrapping) for which
# no PREFIX.X.0/24 is in the node's routing table, so a run's subnets meet nobody's.
free_subnet() {
  local x=$1 p args
  shift
  for _ in $(seq 1 250); do
    args=()
    for p in "$@"; do args+=(-e "$p.$x.0/24"); done
    ip -4 route show | awk '{print $1}' | grep -qx "${args[@]}" || break
    x=$((x % 250 + 1))
  done
  echo "$x"
}

# positive_ints SCRIPT VALUE...: exits 2 unless every VALUE is a positive integer.
positive_ints() {
  local script=$1 v
  shift
  for v in "$@"; do
    [[ $v =~ ^[0-9]+$ ]] && ((v > 0)) || { echo "$script: counts and durations are positive integers" >&2; exit 2; }
  done
}

# need_root SCRIPT: exits 2 unless run as root.
need_root() { [ "$(id -u)" = 0 ] || { echo "$1: run as root" >&2; exit 2; }; }

# on_exit FUNCTION: FUNCTION runs on exit, and Ctrl-C, TERM and HUP exit (with 130, 143, 129),
# so that it runs for them too.
on_exit() {
  trap "$1" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}
