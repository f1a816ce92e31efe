#!/usr/bin/env bash
# e2e: what an operator touches besides pods. Every binary's --version (with the commit), the
# plugin run by hand, ctl's flags after the subcommand, shell completions and man pages from
# the clap definitions, and the host install (scripts/install-host.sh): the systemd unit
# verified by systemd-analyze, the tmpfiles.d entry applied by systemd-tmpfiles, and netstackd
# run the way the unit says (its capability bounding set, no_new_privs, descriptor limit and
# settings file) with two pods forwarding through it. Needs root; run by scripts/test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT
mkdir -p "$WORK"

log "versions"
COMMIT=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
for b in netstackd netstack netstack-hook netstack-netavark; do
  out=$("$BIN/$b" --version 2>&1)
  check "$b --version names $VERSION and commit $COMMIT ($out)" test "$out" = "$b $VERSION (commit $COMMIT)"
done

log "the plugin run by hand"
# No CNI_COMMAND: the plugin must answer at once, not read stdin (here a pipe that stays open;
# timeout only ends a hang, it is not a measure).
out=$(sleep 60 | env -i PATH="$PATH" timeout 30 "$BIN/netstack" 2>&1); rc=$?
check "exits 0 without reading stdin (rc $rc)" test "$rc" = 0
check "says what it is" grep -q "^CNI netstack plugin $VERSION (commit $COMMIT)\$" <<<"$out"
check "lists the CNI versions it speaks" grep -q '^CNI protocol versions supported: 0.4.0, 1.0.0, 1.1.0$' <<<"$out"
out=$(printf '{}' | env -i PATH="$PATH" CNI_COMMAND=BOGUS "$BIN/netstack" 2>/dev/null)
check "with CNI_COMMAND set it is a CNI plugin again (unknown command: code 4)" test "$(jq -r .code <<<"$out")" = 4

log "completions and man pages"
COMP=$WORK/completion.bash
"$BIN/netstackd" completions bash >"$COMP"
check "bash completion parses" bash -n "$COMP"
check "bash completion registers netstackd" bash -c ". '$COMP' && complete -p netstackd"
check "bash completion offers ctl's subcommands" bash -c ". '$COMP'; COMP_WORDS=(netstackd ctl ''); COMP_CWORD=2; _netstackd netstackd '' ctl; printf '%s\n' \"\${COMPREPLY[@]}\" | grep -qx status"
check "zsh completion defines _netstackd" grep -q '^#compdef netstackd' <("$BIN/netstackd" completions zsh)
check "fish completion knows ctl" grep -q 'ctl' <("$BIN/netstackd" completions fish)
check "an unknown shell is refused" sh -c "! '$BIN/netstackd' completions tcsh 2>/dev/null"
mkdir -p "$WORK/man"
"$BIN/netstackd" man --dir "$WORK/man"
check "man pages for netstackd and every ctl command" \
  test -s "$WORK/man/netstackd.1" -a -s "$WORK/man/netstackd-ctl.1" -a -s "$WORK/man/netstackd-ctl-capture.1"
check "the hidden internal commands get no page" test ! -e "$WORK/man/netstackd-dataplane.1"
check "netstackd(1) renders with man and names --pod-cidr" \
  sh -c "MANWIDTH=100 man -l '$WORK/man/netstackd.1' 2>/dev/null | grep -q -- '--pod-cidr'"
check "the page carries the version" grep -q "netstackd $VERSION (commit $COMMIT)" "$WORK/man/netstackd.1"

log "host install (scripts/install-host.sh --destdir)"
D=$WORK/root
NETSTACK_BIN=$BIN "$ROOT/scripts/install-host.sh" --destdir "$D" >"$WORK/install.log" 2>&1
check "install-host.sh succeeds" test $? = 0
for f in usr/local/bin/netstackd usr/local/bin/netstack-hook opt/cni/bin/netstack; do
  check "$f installed, mode 755, the built binary" sh -c "test \"\$(stat -c %a '$D/$f')\" = 755 && cmp -s '$D/$f' '$BIN/$(basename "$f")'"
done
UNIT=$D/etc/systemd/system/netstackd.service
check "unit, tmpfiles.d entry and settings file installed" test -s "$UNIT" -a -s "$D/etc/tmpfiles.d/netstack.conf" -a -s "$D/etc/default/netstackd"
check "completions for bash, zsh and fish, and man pages installed" test -s "$D/usr/local/share/bash-completion/completions/netstackd" \
  -a -s "$D/usr/local/share/zsh/site-functions/_netstackd" -a -s "$D/usr/local/share/fish/vendor_completions.d/netstackd.fish" \
  -a -s "$D/usr/local/share/man/man1/netstackd-ctl-list.1"
echo '# edited' >>"$D/etc/default/netstackd"
NETSTACK_BIN=$BIN "$ROOT/scripts/install-host.sh" --destdir "$D" >/dev/null 2>&1
check "a second install keeps the operator's settings file" grep -q '^# edited' "$D/etc/default/netstackd"
check "--prefix reaches the unit's ExecStart" sh -c "NETSTACK_BIN='$BIN' '$ROOT/scripts/install-host.sh' --destdir '$WORK/root2' --prefix /opt/netstack >/dev/null &&
  grep -qx 'ExecStart=/opt/netstack/bin/netstackd \$NETSTACKD_ARGS' '$WORK/root2/etc/systemd/system/netstackd.service'"

# systemd-analyze checks that ExecStart's binary exists: verify a copy that points into $D.
mkdir -p "$WORK/verify"
sed "s|^ExecStart=/usr/local|ExecStart=$D/usr/local|" "$UNIT" >"$WORK/verify/netstackd.service"
check "systemd-analyze verify accepts the unit" systemd-analyze verify --man=no "$WORK/verify/netstackd.service"
sed 's|^ExecStart=.*|ExecStart=bin/netstackd|' "$UNIT" >"$WORK/verify/bad.service"
check "  ... and rejects a broken copy (the check can fail)" sh -c "! systemd-analyze verify --man=no '$WORK/verify/bad.service' 2>/dev/null"

systemd-tmpfiles --create --root="$D" "$D/etc/tmpfiles.d/netstack.conf" 2>"$WORK/tmpfiles.err"
check "systemd-tmpfiles creates the directories: /run/netstack 700, /var/lib/netstack 700, /var/log/netstack 750" \
  test "$(stat -c %a "$D/run/netstack") $(stat -c %a "$D/var/lib/netstack") $(stat -c %a "$D/var/log/netstack")" = "700 700 750"

log "netstackd run the way the unit says"
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -1; }
CAPS=$(unit_value CapabilityBoundingSet)
NOFILE=$(unit_value LimitNOFILE)
check "the unit names its capability bounding set ($CAPS)" test -n "$CAPS"
NNP=$(unit_value NoNewPrivileges)
check "the unit leaves NoNewPrivileges off (the dataplane child regains SETUID/SETGID at exec)" test "${NNP:-no}" = no
check "ExecStart takes the command line from the settings file" \
  test "$(unit_value ExecStart)" = '/usr/local/bin/netstackd $NETSTACKD_ARGS' -a "$(unit_value EnvironmentFile)" = /etc/default/netstackd
# The settings file's command line, with this run's socket, state dir, uplink and pod CIDR.
(. "$D/etc/default/netstackd"; echo "$NETSTACKD_ARGS") >"$WORK/args"
check "the shipped settings name --pod-cidr, --socket, --state-dir and --uplink" \
  sh -c "grep -q -- '--pod-cidr' '$WORK/args' && grep -q -- '--socket' '$WORK/args' && grep -q -- '--state-dir' '$WORK/args' && grep -q -- '--uplink' '$WORK/args'"
# Raising the hard limit needs CAP_SYS_RESOURCE, which a sandboxed root (this CI's) may lack:
# then the unit's limit is met as far as the current hard limit allows, and the row says so.
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt "$NOFILE" ] && ! prlimit --nofile="$NOFILE:$NOFILE" true 2>/dev/null; then
  echo "    (cannot raise RLIMIT_NOFILE to $NOFILE here: using the hard limit $HARD)"
  NOFILE=$HARD
fi
bounding="-all$(for c in $CAPS; do c=${c#CAP_}; printf ',+%s' "${c,,}"; done)"
write_conflist
NETSTACKD_LAUNCH="prlimit --nofile=$NOFILE:$NOFILE -- setpriv $([ "$NNP" = yes ] && echo --no-new-privs) --bounding-set $bounding --" start_netstackd
check "netstackd starts inside the unit's limits" kill -0 "$NETSTACKD_PID"
# CapBnd decoded by capsh (cap_a,cap_b,...), beside the unit's names, both sorted.
got_caps=$(capsh --decode="$(awk '/^CapBnd/ {print $2}' "/proc/$NETSTACKD_PID/status")" | cut -d= -f2 | tr ',' '\n' | sort | paste -sd,)
want_caps=$(for c in $CAPS; do echo "${c,,}"; done | sort | paste -sd,)
check "its bounding set is the unit's ($got_caps)" test "$got_caps" = "$want_caps"
check "its descriptor limit is the unit's" sh -c "grep -q '^Max open files *$NOFILE ' /proc/$NETSTACKD_PID/limits"
stop_netstackd
# The counter-proof: the same limits with no_new_privs leave netstackd without a dataplane.
NETSTACKD_LAUNCH="prlimit --nofile=$NOFILE:$NOFILE -- setpriv --no-new-privs --bounding-set $bounding --" start_netstackd
for _ in $(seq 50); do grep -q 'needs CAP_SETGID' "$WORK/netstackd.log" && break; sleep 0.2; done
check "  ... while with no_new_privs its dataplane cannot switch user (why the unit leaves it off)" \
  grep -q 'dataplane: switching to uid:gid .* needs CAP_SETGID' "$WORK/netstackd.log"
stop_netstackd
NETSTACKD_LAUNCH="prlimit --nofile=$NOFILE:$NOFILE -- setpriv $([ "$NNP" = yes ] && echo --no-new-privs) --bounding-set $bounding --" start_netstackd
A=op-a-$RUN_ID
B=op-b-$RUN_ID
IP_A=$(add_pod "$A") && ok "ADD pod A ($IP_A)" || fail "ADD pod A"
IP_B=$(add_pod "$B") && ok "ADD pod B ($IP_B)" || fail "ADD pod B"
check "ping pod A -> pod B" in_pod "$A" ping -c 3 -i 0.2 -W 2 "$IP_B"
check "ping pod A -> node (gateway)" in_pod "$A" ping -c 3 -i 0.2 -W 2 "$GATEWAY"
check "the dataplane runs (ctl status names its pid)" test "$(ctl status | jq -r '.dataplane_pid // 0')" -gt 0
check "ctl status gives the daemon's version with its commit" test "$(ctl status | jq -r .version)" = "$VERSION (commit $COMMIT)"
check "  ... and the table gives ctl's own beside it" sh -c "'$BIN/netstackd' ctl --socket '$SOCK' status | grep -q 'ctl version.*$VERSION (commit $COMMIT)'"

log "the plugin's log file (logFile, logLevel)"
PLOG=$WORK/log/cni.log
jq --arg f "$PLOG" '.plugins[0].logFile = $f' "$CONFLIST" >"$CONFLIST.new" && mv "$CONFLIST.new" "$CONFLIST"
C=op-c-$RUN_ID
IP_C=$(add_pod "$C") && ok "ADD pod C with a logFile ($IP_C)" || fail "ADD pod C with a logFile"
cni CHECK "$C" "/run/netns/$C" eth0 "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7" >/dev/null 2>&1 || true
cni DEL "$C" "/run/netns/$C" >/dev/null 2>&1
cni ADD op-missing-$RUN_ID /run/netns/op-missing-$RUN_ID >/dev/null 2>&1
check "the log directory is created (mode 640 file)" test "$(stat -c %a "$PLOG" 2>/dev/null)" = 640
add_line=$(grep " ADD container=$C " "$PLOG")
check "ADD: one line with time, container, ifname, pod, result, address, duration and the steps' ($add_line)" \
  grep -qE "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z ADD container=$C ifname=eth0 pod=e2e/$C result=ok ips=$IP_C/24 took_ms=[0-9]+ steps=daemon:[0-9.]+,mounts:[0-9.]+,ipam:[0-9.]+,link:[0-9.]+,attach:[0-9.]+\$" <<<"$add_line"
check "CHECK logged with the pod from CNI_ARGS" grep -q " CHECK container=$C ifname=eth0 pod=shop/cart-7 result=" "$PLOG"
check "DEL logged, with its steps" grep -qE " DEL container=$C ifname=eth0 pod=e2e/$C result=ok took_ms=[0-9]+ steps=detach:[0-9.]+,link:[0-9.]+,ipam:[0-9.]+\$" "$PLOG"
check "a failed ADD is logged with its CNI code and message" grep -qE " ADD container=op-missing-$RUN_ID .*result=error code=[0-9]+ msg=\"[^\"]*op-missing" "$PLOG"
check "VERSION is not logged" sh -c "! grep -q ' VERSION ' '$PLOG'"
# Sixteen plugin processes at once: sixteen whole lines, none torn or interleaved.
: >"$PLOG"
for i in $(seq 16); do cni STATUS "" "" "" >/dev/null 2>&1 & done
for j in $(jobs -p); do [ "$j" = "$NETSTACKD_PID" ] || wait "$j"; done
check "16 parallel calls: 16 whole lines ($(wc -l <"$PLOG"))" \
  test "$(grep -cE '^[0-9-]+T[0-9:.]+Z STATUS ifname=eth0 pod=e2e/ result=(ok|error code=[0-9]+ msg="[^"]*") took_ms=[0-9]+$' "$PLOG")/$(wc -l <"$PLOG")" = 16/16
jq '.plugins[0].logLevel = "error"' "$CONFLIST" >"$CONFLIST.new" && mv "$CONFLIST.new" "$CONFLIST"
: >"$PLOG"
cni DEL op-gone-$RUN_ID "" >/dev/null 2>&1
cni ADD op-missing-$RUN_ID /run/netns/op-missing-$RUN_ID >/dev/null 2>&1
check "logLevel error: the failed ADD alone is logged, not the DEL that succeeded" \
  test "$(grep -c ' ADD container=op-missing' "$PLOG")/$(wc -l <"$PLOG")" = 1/1
jq '.plugins[0].logLevel = "debug"' "$CONFLIST" >"$CONFLIST.new" && mv "$CONFLIST.new" "$CONFLIST"
cni DEL op-gone-$RUN_ID "" >/dev/null 2>&1
cni ADD op-missing-$RUN_ID /run/netns/op-missing-$RUN_ID >/dev/null 2>&1
check "logLevel debug: the netns, CNI_ARGS and the printed object are in the line" \
  grep -q " ADD container=op-missing-$RUN_ID .* netns=/run/netns/op-missing-$RUN_ID args=.*K8S_POD_NAME=op-missing-$RUN_ID.* output=" "$PLOG"
out=$(jq -c '.plugins[0] + {cniVersion: "1.1.0", name: .name, logLevel: "loud"}' "$CONFLIST" | env CNI_COMMAND=STATUS CNI_PATH="$BIN" "$BIN/netstack" 2>/dev/null)
check "an unknown logLevel is a config error (code 7)" test "$(jq -r .code <<<"$out")" = 7
jq 'del(.plugins[0].logFile, .plugins[0].logLevel)' "$CONFLIST" >"$CONFLIST.new" && mv "$CONFLIST.new" "$CONFLIST"

log "ctl flags before and after the subcommand"
ids() { jq -c '[.. | objects | select(has("container_id")) | .container_id] | sort'; }
before=$("$BIN/netstackd" ctl --socket "$SOCK" --json list | ids)
after=$("$BIN/netstackd" ctl list --json --socket "$SOCK" | ids)
check "ctl list --json --socket after the subcommand ($after)" test -n "$after" -a "$after" = "$before"
check "  ... and it lists both pods" test "$(jq length <<<"$after")" = 2
out=$("$BIN/netstackd" ctl status --socket "$SOCK" --json)
check "ctl status --json after the subcommand" test "$(jq -r .attachments <<<"$out")" = 2

echo
echo "test_operator: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
