#!/usr/bin/env bash
# The tally and the waits every e2e script shares (e2e/lib.sh sources it; scripts that build
# their own nodes source it alone). Sourcing it only defines functions and gives FAILS and
# PASSES a default of 0: it sets no trap, creates no namespace, file or process, and reads
# no other variable.

FAILS=${FAILS:-0}
PASSES=${PASSES:-0}

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ok WHAT / fail WHAT: one row of the tally. check WHAT CMD...: runs CMD quietly and records
# its outcome. Scripts end with `[ "$FAILS" = 0 ]`.
ok() { PASSES=$((PASSES + 1)); printf '  ok   %s\n' "$1"; }
fail() { FAILS=$((FAILS + 1)); printf '  FAIL %s\n' "$1"; }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi; }

# eventually SECONDS CMD...: CMD succeeds within SECONDS (polled every 0.2 s; the bound is
# for a hang, not a measure).
eventually() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

# wait_for_socket SOCKET PID LOG: a daemon just started as PID answers once SOCKET exists.
# Returns 1, with LOG on stderr, if PID exits first or 10 s pass.
wait_for_socket() {
  local i
  for i in $(seq 1 100); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "the daemon (pid $2) did not create $1; its log $3:" >&2
  cat "$3" >&2
  return 1
}
