#!/usr/bin/env bash
# e2e: the daemon's edges hold up against slow and hostile clients (issue 13). The metrics
# listener: 50 clients trickling one byte every 1.5 s and one streaming 1 GiB without a newline
# leave the supervisor's RSS within 2 MiB and a GET /metrics beside them answers within 2 s;
# /healthz answers. The control socket: more idle connections than its bound neither add
# threads past the bound nor block `ctl status`, and a request trickled byte by byte is cut
# at its deadline; error replies say their kind. (That a slow attach of one pod holds no lock over the others is proven by
# the registry's unit tests.) Needs root; about 40 s.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
trap e2e_cleanup EXIT

PY=/usr/bin/python3
LOAD="$PY $(dirname "$0")/edges_load.py"
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$NETSTACKD_PID/status"; }
threads() { ls "/proc/$NETSTACKD_PID/task" | wc -l; }

write_conflist
start_netstackd || exit 1
ADDR=$(ctl status | jq -r .metrics)
POD=edges-$RUN_ID
add_pod "$POD" >/dev/null || fail "CNI ADD of $POD"

log "metrics listener under 50 tricklers and a 1 GiB streamer"
curl -sf "http://$ADDR/metrics" >/dev/null # warm up: the first scrape's allocations
check "/healthz answers ok" sh -c "curl -sf http://$ADDR/healthz | grep -qx ok"
base=$(rss_kb)
out=$($LOAD http "$ADDR" "$NETSTACKD_PID")
echo "    $out"
scrape=$(jq -r .metrics.seconds <<<"$out")
check "GET /metrics beside them answers 200 with every family (in ${scrape}s)" \
  jq -e '.metrics.status == 200 and .metrics.families > 10' <<<"$out"
check "... within 2 s" jq -e '.metrics.seconds < 2' <<<"$out"
check "GET /healthz beside them answers ok" jq -e '.healthz.status == 200 and .healthz.body == "ok\n"' <<<"$out"
check "the streamer is cut by netstackd ($(jq -r .streamer.bytes <<<"$out") bytes accepted by the kernel)" \
  jq -e '.streamer.cut and .streamer.bytes < 64 * 1048576' <<<"$out"
check "every trickler is cut by the request-head deadline" jq -e '.tricklers.cut == 50' <<<"$out"
peak=$(jq -r .rss_max_kb <<<"$out")
check "supervisor RSS grew by under 2 MiB (${base} -> peak ${peak} KiB)" test $((peak - base)) -lt 2048
check "and still answers a scrape afterwards" sh -c "curl -sf http://$ADDR/metrics | grep -q '^netstack_attachments 1'"
check "an unknown path is 404" test "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/other")" = 404
check "POST /metrics is 405" test "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$ADDR/metrics")" = 405

log "control socket: 100 idle connections (bound 32), then ctl status"
t0=$(threads)
coproc IDLE { $LOAD idle "$SOCK" 100 8; }
read -r _ <&"${IDLE[0]}" # all connected
sleep 0.5                # and accepted
t1=$(threads)
check "threads stay bounded: $t0 -> $t1 with 100 idle clients (bound 32)" test $((t1 - t0)) -le 32
check "ctl status answers beside them" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.attachments == 1'"
wait "$IDLE_PID" 2>/dev/null

log "control socket: a request trickled one byte a second"
res=$($LOAD trickle "$SOCK")
check "the trickled request is cut at its deadline ($res)" grep -q '^cut after' <<<"$res"
check "ctl status still answers" sh -c "$BIN/netstackd ctl --socket $SOCK --json status | jq -e '.attachments == 1'"

log "control socket: error replies say their kind"
# A newer client's request it cannot read, a malformed one of this protocol, and a release of
# a pod that is not attached, as raw frames (4-byte length, JSON).
kinds=$($PY - "$SOCK" <<'PYEOF'
import json, socket, struct, sys
def ask(body):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    b = json.dumps(body).encode()
    s.sendall(struct.pack(">I", len(b)) + b)
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    r = json.loads(s.recv(n, socket.MSG_WAITALL))
    s.close()
    return r
print(json.dumps([
    ask({"op": "attach_many", "protocol": 4}),
    ask({"op": "attach_many", "protocol": 3}),
    ask({"op": "release", "container_id": "nope", "ifname": "eth0", "protocol": 3}),
]))
PYEOF
)
echo "    $kinds"
check "a newer client's unreadable request: kind protocol_version, message still ends (retryable)" \
  jq -e '.[0].kind == "protocol_version" and (.[0].message | endswith("(retryable)"))' <<<"$kinds"
check "a malformed request: kind invalid_request" jq -e '.[1].kind == "invalid_request"' <<<"$kinds"
check "release of a pod not attached: kind not_found" jq -e '.[2].kind == "not_found"' <<<"$kinds"

del_pod "$POD"
echo
echo "test_daemon_edges: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
