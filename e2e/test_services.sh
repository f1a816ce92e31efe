#!/usr/bin/env bash
# e2e: Kubernetes Services on a netstack node, with the rules kube-proxy installs written into
# the real kernel — iptables mode (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, KUBE-MARK-MASQ,
# KUBE-POSTROUTING, KUBE-NODEPORTS, a filter-table REJECT) and nftables mode (table
# `ip kube-proxy`: services / service-* / endpoint-* / external-* chains and verdict maps) —
# and conntrack doing its part. Each mode in turn: a pod reaches a ClusterIP whose endpoint is
# another pod on this node (TCP and UDP: the reply must go back through the node, which is
# what netstackd's service flow table is for), the node itself, and a pod on "another node"
# (a netns behind a veth); hairpin (a pod reaching its own Service); NodePort from an outside
# host with the client's address preserved (externalTrafficPolicy: Local); a Service without
# endpoints refuses; DNS to a ClusterIP backed by a pod (UDP, a response over 512 bytes, the
# TCP fallback); and over IPv6 (dual-stack pods, table `ip6 kube-proxy`) the same-node
# ClusterIP, TCP and UDP. Then the negative control: netstackd with --service-flows off fails
# the same-node rows (IPv4 in both modes, IPv6). Every address is this run's (ClusterIPs in
# 10.96.N.0/24, fd00:96:N::/64); every rule, link, netns and process is removed on exit, also
# on SIGTERM/SIGINT. Needs root, iptables (nft
# backend), nft, socat, dig, python3. Without MODE set it runs twice: TAP pods, then veth
# pods (about 16 s each).
set -uo pipefail

if [ -z "${MODE:-}" ]; then
  total_pass=0 total_fail=0 rc=0 child=
  trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait "$child"; cat "$out"; rm -f "$out"; exit 143' TERM INT
  for mode in tap veth; do
    out=$(mktemp)
    MODE=$mode bash "$0" >"$out" 2>&1 &
    child=$!
    wait "$child" || rc=1
    child=
    cat "$out"
    read -r p f < <(sed -n 's/^test_services: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$out")
    rm -f "$out"
    total_pass=$((total_pass + ${p:-0})) total_fail=$((total_fail + ${f:-1}))
  done
  echo "test_services: $total_pass passed, $total_fail failed (TAP and veth pods)"
  [ "$rc" = 0 ] && [ "$total_fail" = 0 ]
  exit
fi
. "$(dirname "$0")/lib.sh"

N=$((RUN_ID % 200 + 20))
CIDR_SVC=10.96.$N.0/24
CIP_B=10.96.$N.10      # pod B: tcp/80 -> 8080, udp/80 -> 8081
CIP_NODE=10.96.$N.11   # the node: tcp/80 -> NODE_IP:18080
CIP_REMOTE=10.96.$N.12 # a pod on another node: tcp/80 -> 10.245.N.2:8080
CIP_NONE=10.96.$N.13   # no endpoints: tcp/80 rejected
CIP_DNS=10.96.$N.14    # kube-dns: udp/53, tcp/53 -> pod B:5353
REMOTE_POD=10.245.$N.2
REMOTE_LINK_HOST=10.98.$N.1
REMOTE_LINK_PEER=10.98.$N.2
EXT_HOST=10.99.$N.1 # the node's address facing the outside client (a NodePort address)
EXT_CLIENT=10.99.$N.2
NODEPORT=$((30000 + N))
SHORT=$((RUN_ID % 100000))
REMOTE_NS=svc-remote-$RUN_ID
EXT_NS=svc-ext-$RUN_ID
REMOTE_VETH=svr$SHORT
EXT_VETH=svx$SHORT
A=svc-a-$RUN_ID
B=svc-b-$RUN_ID
SERVER_PIDS=()
IPT_UNDO=
NFT_TABLE=
FORWARD_WAS=$(cat /proc/sys/net/ipv4/ip_forward)
FORWARD6_WAS=$(cat /proc/sys/net/ipv6/conf/all/forwarding)
# IPv6: the pods are dual-stack; one ClusterIP (nftables mode, table ip6 kube-proxy) to pod B.
POD_CIDR6=fd00:10:244:$N::/64
CIP6_B=fd00:96:$N::10 # pod B: tcp/80 -> [B]:8086, udp/80 -> [B]:8087
NFT6_TABLE=

# ---- kube-proxy iptables mode -------------------------------------------------------------
# ipt TABLE ARGS...: one iptables change, remembered (as its undo) for cleanup.
ipt() {
  local t=$1 undo
  shift
  iptables -t "$t" "$@" || return 1
  case "$1" in
    -N) undo=(-X "$2") ;;
    -A | -I) undo=(-D "${@:2}") ;;
    *) return 0 ;;
  esac
  printf '%q ' iptables -t "$t" "${undo[@]}" >>"$IPT_UNDO"
  echo >>"$IPT_UNDO"
}
# ipt_chain TABLE CHAIN / ipt_once TABLE -A CHAIN RULE...: shared kube-proxy chains and base
# rules, made only when the node lacks them (a real kube-proxy's stay untouched).
ipt_chain() { iptables -t "$1" -S "$2" >/dev/null 2>&1 || ipt "$1" -N "$2"; }
ipt_once() { local t=$1; shift; iptables -t "$t" -C "${@:2}" 2>/dev/null || ipt "$t" "$@"; }
# kube-proxy names a Service's chains by a hash of its name: 16 characters.
chain_hash() { printf '%s' "$1/$RUN_ID" | sha256sum | tr a-f A-F | head -c 16; }

# ipt_service NAME CIP PROTO PORT ENDPOINT_IP ENDPOINT_PORT [NODEPORT]
ipt_service() {
  local name=$1 cip=$2 proto=$3 port=$4 ep=$5 epport=$6 np=${7:-}
  local svc=KUBE-SVC-$(chain_hash "$name/$proto") sep=KUBE-SEP-$(chain_hash "$name/$proto/$ep")
  local comment="e2e-$RUN_ID/$name:$proto"
  ipt nat -N "$svc"
  ipt nat -N "$sep"
  ipt nat -A KUBE-SERVICES -d "$cip/32" -p "$proto" -m comment --comment "$comment cluster IP" \
    -m "$proto" --dport "$port" -j "$svc"
  ipt nat -A "$svc" ! -s "$POD_CIDR" -d "$cip/32" -p "$proto" -m comment --comment "$comment cluster IP" \
    -m "$proto" --dport "$port" -j KUBE-MARK-MASQ
  ipt nat -A "$svc" -m comment --comment "$comment -> $ep:$epport" -j "$sep"
  ipt nat -A "$sep" -s "$ep/32" -m comment --comment "$comment" -j KUBE-MARK-MASQ
  ipt nat -A "$sep" -p "$proto" -m comment --comment "$comment" -m "$proto" -j DNAT --to-destination "$ep:$epport"
  if [ -n "$np" ]; then
    # externalTrafficPolicy: Local: pods take the cluster path, the node itself is
    # masqueraded, an outside client goes to the local endpoints without masquerade.
    local ext=KUBE-EXT-$(chain_hash "$name/$proto") svl=KUBE-SVL-$(chain_hash "$name/$proto")
    ipt nat -N "$ext"
    ipt nat -N "$svl"
    ipt nat -A KUBE-NODEPORTS -p "$proto" -m comment --comment "$comment" -m "$proto" --dport "$np" -j "$ext"
    ipt nat -A "$ext" -s "$POD_CIDR" -m comment --comment "pod traffic for $comment external destinations" -j "$svc"
    ipt nat -A "$ext" -m comment --comment "masquerade LOCAL traffic for $comment external destinations" \
      -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
    ipt nat -A "$ext" -m comment --comment "route LOCAL traffic for $comment external destinations" \
      -m addrtype --src-type LOCAL -j "$svc"
    ipt nat -A "$ext" -j "$svl"
    ipt nat -A "$svl" -m comment --comment "$comment -> $ep:$epport" -j "$sep"
  fi
}

iptables_install() {
  IPT_UNDO=$WORK/iptables.undo
  : >"$IPT_UNDO"
  local c
  for c in KUBE-SERVICES KUBE-NODEPORTS KUBE-POSTROUTING KUBE-MARK-MASQ; do ipt_chain nat "$c"; done
  ipt_chain filter KUBE-SERVICES
  ipt_once nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  ipt_once nat -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  ipt_once nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
  ipt_once nat -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
  ipt_once nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
  ipt_once nat -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
  ipt_once nat -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
  for c in INPUT FORWARD OUTPUT; do
    ipt_once filter -A "$c" -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  done
  ipt_service svc-b "$CIP_B" tcp 80 "$IP_B" 8080 "$NODEPORT"
  ipt_service svc-b "$CIP_B" udp 80 "$IP_B" 8081
  ipt_service svc-node "$CIP_NODE" tcp 80 "$NODE_IP" 18080
  ipt_service svc-remote "$CIP_REMOTE" tcp 80 "$REMOTE_POD" 8080
  ipt_service kube-dns "$CIP_DNS" udp 53 "$IP_B" 5353
  ipt_service kube-dns "$CIP_DNS" tcp 53 "$IP_B" 5353
  ipt filter -A KUBE-SERVICES -d "$CIP_NONE/32" -p tcp -m comment --comment "e2e-$RUN_ID/svc-none:tcp has no endpoints" \
    -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
  # Last, as kube-proxy keeps it: node ports on the node's own addresses.
  ipt_once nat -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" \
    -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
}

iptables_remove() {
  [ -n "$IPT_UNDO" ] && [ -f "$IPT_UNDO" ] || return 0
  local line
  # Newest first: rules before the chains they jump to, chains after their rules.
  tac "$IPT_UNDO" | while read -r line; do
    case "$line" in *" -X "*) eval "${line/ -X / -F }" 2>/dev/null ;; esac
    eval "$line" 2>/dev/null || echo "cleanup: $line failed" >&2
  done
  rm -f "$IPT_UNDO"
  IPT_UNDO=
}

# ---- kube-proxy nftables mode -------------------------------------------------------------
# nft_chains NAME CIP PROTO PORT EP EPPORT: a Service's chains, named as kube-proxy names them
# (service-HASH-NAMESPACE/NAME/PROTO/PORTNAME, endpoint-HASH-...__IP/PORT).
nft_service() {
  local name=$1 cip=$2 proto=$3 port=$4 ep=$5 epport=$6 h
  h=$(chain_hash "$name/$proto" | head -c 8)
  local svc="service-$h-e2e/$name/$proto/p$port" sep="endpoint-$h-e2e/$name/$proto/p${port}__$ep/$epport"
  cat <<NFT
  chain $svc {
    ip daddr $cip $proto dport $port ip saddr != $POD_CIDR jump mark-for-masquerade
    numgen random mod 1 vmap { 0 : goto $sep }
  }
  chain $sep {
    ip saddr $ep jump mark-for-masquerade
    meta l4proto $proto dnat to $ep:$epport
  }
NFT
  SVC_ELEMENTS+=("$cip . $proto . $port : goto $svc")
}

nft_install() {
  NFT_TABLE=kube-proxy
  nft list table ip "$NFT_TABLE" >/dev/null 2>&1 && NFT_TABLE=kube-proxy-$RUN_ID
  local h ext svc sep
  SVC_ELEMENTS=()
  h=$(chain_hash "svc-b/tcp" | head -c 8)
  ext="external-$h-e2e/svc-b/tcp/p80"
  svc="service-$h-e2e/svc-b/tcp/p80"
  sep="endpoint-$h-e2e/svc-b/tcp/p80__$IP_B/8080"
  {
    echo "table ip $NFT_TABLE {"
    cat <<NFT
  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
  chain nat-output { type nat hook output priority -100; policy accept; jump services; }
  chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }
  chain filter-input { type filter hook input priority -110; policy accept; ct state new jump service-endpoints-check; }
  chain filter-forward { type filter hook forward priority -110; policy accept; ct state new jump service-endpoints-check; }
  chain filter-output { type filter hook output priority -110; policy accept; ct state new jump service-endpoints-check; }
  chain mark-for-masquerade { mark set mark or 0x4000; }
  chain masquerading {
    mark and 0x4000 == 0 return
    mark set mark xor 0x4000
    masquerade fully-random
  }
  chain reject-chain { reject; }
NFT
    nft_service svc-b "$CIP_B" tcp 80 "$IP_B" 8080
    nft_service svc-b "$CIP_B" udp 80 "$IP_B" 8081
    nft_service svc-node "$CIP_NODE" tcp 80 "$NODE_IP" 18080
    nft_service svc-remote "$CIP_REMOTE" tcp 80 "$REMOTE_POD" 8080
    nft_service kube-dns "$CIP_DNS" udp 53 "$IP_B" 5353
    nft_service kube-dns "$CIP_DNS" tcp 53 "$IP_B" 5353
    cat <<NFT
  chain $ext {
    ip saddr $POD_CIDR goto $svc
    fib saddr type local jump mark-for-masquerade
    fib saddr type local goto $svc
    goto $sep
  }
  map service-ips {
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = { $(IFS=,; echo "${SVC_ELEMENTS[*]}") }
  }
  set nodeport-ips { type ipv4_addr; elements = { $EXT_HOST } }
  map service-nodeports {
    type inet_proto . inet_service : verdict
    elements = { tcp . $NODEPORT : goto $ext }
  }
  map no-endpoint-services {
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = { $CIP_NONE . tcp . 80 : goto reject-chain }
  }
  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips
    ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
  }
  chain service-endpoints-check {
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }
}
NFT
  } >"$WORK/kube-proxy.nft"
  nft -f "$WORK/kube-proxy.nft"
}

nft_remove() {
  [ -n "$NFT_TABLE" ] || return 0
  nft delete table ip "$NFT_TABLE" 2>/dev/null || echo "cleanup: nft table $NFT_TABLE" >&2
  NFT_TABLE=
}

# nft6_install: kube-proxy's IPv6 table (ip6 kube-proxy), one dual-protocol Service to pod B.
nft6_install() {
  NFT6_TABLE=kube-proxy
  nft list table ip6 "$NFT6_TABLE" >/dev/null 2>&1 && NFT6_TABLE=kube-proxy-$RUN_ID
  local ht hu EP6=${IP6_B//:/.} # nft names take no colons
  ht=$(chain_hash "svc-b6/tcp" | head -c 8)
  hu=$(chain_hash "svc-b6/udp" | head -c 8)
  nft -f - <<NFT
table ip6 $NFT6_TABLE {
  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
  chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }
  chain mark-for-masquerade { mark set mark or 0x4000; }
  chain masquerading {
    mark and 0x4000 == 0 return
    mark set mark xor 0x4000
    masquerade fully-random
  }
  chain endpoint-$ht-e2e/svc-b6/tcp/p80__$EP6/8086 {
    ip6 saddr $IP6_B jump mark-for-masquerade
    meta l4proto tcp dnat to [$IP6_B]:8086
  }
  chain service-$ht-e2e/svc-b6/tcp/p80 {
    ip6 daddr $CIP6_B tcp dport 80 ip6 saddr != $POD_CIDR6 jump mark-for-masquerade
    numgen random mod 1 vmap { 0 : goto endpoint-$ht-e2e/svc-b6/tcp/p80__$EP6/8086 }
  }
  chain endpoint-$hu-e2e/svc-b6/udp/p80__$EP6/8087 {
    ip6 saddr $IP6_B jump mark-for-masquerade
    meta l4proto udp dnat to [$IP6_B]:8087
  }
  chain service-$hu-e2e/svc-b6/udp/p80 {
    ip6 daddr $CIP6_B udp dport 80 ip6 saddr != $POD_CIDR6 jump mark-for-masquerade
    numgen random mod 1 vmap { 0 : goto endpoint-$hu-e2e/svc-b6/udp/p80__$EP6/8087 }
  }
  map service-ips {
    type ipv6_addr . inet_proto . inet_service : verdict
    elements = { $CIP6_B . tcp . 80 : goto service-$ht-e2e/svc-b6/tcp/p80, $CIP6_B . udp . 80 : goto service-$hu-e2e/svc-b6/udp/p80 }
  }
  chain services { ip6 daddr . meta l4proto . th dport vmap @service-ips; }
}
NFT
}
nft6_remove() {
  [ -n "$NFT6_TABLE" ] || return 0
  nft delete table ip6 "$NFT6_TABLE" 2>/dev/null || echo "cleanup: nft table ip6 $NFT6_TABLE" >&2
  NFT6_TABLE=
}

# ---- the other hosts: a pod on another node, an outside client --------------------------
wire_netns() { # NS VETH HOST_ADDR PEER_ADDR: a netns behind a veth from the node
  ip netns add "$1" && ip -n "$1" link set lo up
  ip link add "$2" type veth peer name eth0 netns "$1"
  ip addr add "$3/30" dev "$2" && ip link set "$2" up
  ip -n "$1" addr add "$4/30" dev eth0 && ip -n "$1" link set eth0 up
  ip -n "$1" route add default via "$3"
}

svc_cleanup() {
  local p
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${SERVER_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  SERVER_PIDS=()
  iptables_remove
  nft_remove
  nft6_remove
  ip route del "10.245.$N.0/24" 2>/dev/null
  ip link del "$REMOTE_VETH" 2>/dev/null
  ip link del "$EXT_VETH" 2>/dev/null
  ip netns del "$REMOTE_NS" 2>/dev/null
  ip netns del "$EXT_NS" 2>/dev/null
  echo "$FORWARD_WAS" >/proc/sys/net/ipv4/ip_forward
  echo "$FORWARD6_WAS" >/proc/sys/net/ipv6/conf/all/forwarding
}
trap 'svc_cleanup; e2e_cleanup' EXIT
trap 'exit 143' TERM INT

# serve NETNS CMD...: a server in NETNS (empty: the node), its output in $WORK/servers.log,
# killed at cleanup.
serve() {
  local ns=$1
  shift
  if [ -n "$ns" ]; then
    ip netns exec "$ns" "$@" >>"$WORK/servers.log" 2>&1 &
  else
    "$@" >>"$WORK/servers.log" 2>&1 &
  fi
  SERVER_PIDS+=($!)
}

# ---- DNS: a tiny authoritative responder over UDP and TCP ---------------------------------
mkdir -p "$WORK"
cat >"$WORK/dns.py" <<'PY'
# A small DNS responder for the e2e: small.svc.test has one A record, big.svc.test has 40
# (about 700 bytes: over 512). Over UDP a response larger than the client allows (512 without
# EDNS, else the EDNS size) is truncated with TC set; over TCP it is whole.
import socket, struct, sys, threading

port = int(sys.argv[1])

def answer(query, limit):
    qid, flags, qd = struct.unpack(">HHH", query[:6])
    i, labels = 12, []
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode())
        i += 1 + query[i]
    question = query[12 : i + 5]
    name = ".".join(labels).lower()
    edns = len(query) > i + 5 and query[i + 5 : i + 8] == b"\x00\x00\x29"
    if edns:
        limit = max(limit, struct.unpack(">H", query[i + 8 : i + 10])[0])
    count = {"small.svc.test": 1, "big.svc.test": 40}.get(name, 0)
    rcode = 0 if count else 3
    records = b"".join(
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([10, 1, 2, n + 1]) for n in range(count)
    )
    opt = b"\x00\x00\x29" + struct.pack(">HIH", 4096, 0, 0) if edns else b""
    flags = 0x8400 | (flags & 0x0100) | rcode
    full = struct.pack(">HHHHHH", qid, flags, 1, count, 0, 1 if edns else 0) + question + records + opt
    if len(full) <= limit:
        return full
    return struct.pack(">HHHHHH", qid, flags | 0x0200, 1, 0, 0, 1 if edns else 0) + question + opt

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        q, peer = s.recvfrom(4096)
        try:
            s.sendto(answer(q, 512), peer)
        except Exception as e:
            print("dns: udp:", e, flush=True)

def tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        with c:
            try:
                n = struct.unpack(">H", c.recv(2, socket.MSG_WAITALL))[0]
                r = answer(c.recv(n, socket.MSG_WAITALL), 65535)
                c.sendall(struct.pack(">H", len(r)) + r)
                print("dns: answered over tcp", flush=True)
            except Exception as e:
                print("dns: tcp:", e, flush=True)

threading.Thread(target=udp, daemon=True).start()
tcp()
PY

# ---- the node ---------------------------------------------------------------------------
log "the node: netstackd, two pods, the other hosts, servers"
build_release || exit 1
check "conntrack is there (nf_conntrack: /proc/sys/net/netfilter/nf_conntrack_max)" test -e /proc/sys/net/netfilter/nf_conntrack_max
write_conflist
jq --arg s6 "$POD_CIDR6" '.plugins[0].ipam.ranges += [[{subnet: $s6}]] | .plugins[0].ipam.routes += [{dst: "::/0"}]' \
  "$CONFLIST" >"$CONFLIST.new" && mv "$CONFLIST.new" "$CONFLIST"
start_netstackd --workers 2 --pod-cidr-v6 "$POD_CIDR6" || exit 1
IP_A=$(add_pod "$A") && ok "ADD pod A ($IP_A)" || fail "ADD pod A"
IP_B=$(add_pod "$B") && ok "ADD pod B ($IP_B)" || fail "ADD pod B"
ip6_of() { jq -r '[.ips[].address | select(contains(":"))][0] // empty | split("/")[0]' "$WORK/$1.result.json"; }
IP6_A=$(ip6_of "$A")
IP6_B=$(ip6_of "$B")
# socat names IPv6 peers written out in full.
IP6_A_FULL=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_address(sys.argv[1]).exploded)' "${IP6_A:-::}")
# no_tentative NETNS: duplicate address detection is over in NETNS.
no_tentative() { local i; for i in $(seq 50); do [ -z "$(ip -n "$1" -6 addr show tentative)" ] && return 0; sleep 0.1; done; return 1; }
check "both pods are dual-stack ($IP6_A, $IP6_B)" sh -c "[ -n '$IP6_A' ] && [ -n '$IP6_B' ]"
no_tentative "$A"; no_tentative "$B"
check "the dual-stack uplink $UPLINK keeps IPv6 (disable_ipv6 0)" test "$(cat /proc/sys/net/ipv6/conf/$UPLINK/disable_ipv6)" = 0
check "IPv4 forwarding is on (netstackd sets it; restored to $FORWARD_WAS at exit)" test "$(cat /proc/sys/net/ipv4/ip_forward)" = 1
# The node's own address for the node-endpoint Service: the one of its default route, else
# the pods' gateway.
NODE_IP=$(ip -4 -j route get 192.0.2.1 2>/dev/null | jq -r '.[0].prefsrc // empty')
NODE_IP=${NODE_IP:-$GATEWAY}
wire_netns "$REMOTE_NS" "$REMOTE_VETH" "$REMOTE_LINK_HOST" "$REMOTE_LINK_PEER"
ip -n "$REMOTE_NS" addr add "$REMOTE_POD/32" dev lo
ip route add "10.245.$N.0/24" via "$REMOTE_LINK_PEER"
wire_netns "$EXT_NS" "$EXT_VETH" "$EXT_HOST" "$EXT_CLIENT"

# Each server answers with who it is and whom it sees (socat's SOCAT_PEERADDR).
serve "$B" socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo pod-b saw $SOCAT_PEERADDR'
serve "$B" socat UDP-RECVFROM:8081,fork SYSTEM:'read -r line; echo pod-b saw $SOCAT_PEERADDR'
serve "$B" python3 "$WORK/dns.py" 5353
serve "" socat TCP-LISTEN:18080,bind="$NODE_IP",fork,reuseaddr SYSTEM:'echo node saw $SOCAT_PEERADDR'
serve "$REMOTE_NS" socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:'echo remote saw $SOCAT_PEERADDR'
serve "$B" socat TCP6-LISTEN:8086,fork,reuseaddr SYSTEM:'echo pod-b saw $SOCAT_PEERADDR'
serve "$B" socat UDP6-RECVFROM:8087,fork SYSTEM:'read -r line; echo pod-b saw $SOCAT_PEERADDR'
# listening NETNS PROTO PORT: a socket listens there (up to 5 s: python starts slowly).
listening() {
  local i run=()
  [ -n "$1" ] && run=(ip netns exec "$1")
  for i in $(seq 50); do
    "${run[@]}" ss -Hln"${2:0:1}" "sport = :$3" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}
servers_listen() {
  listening "$B" tcp 8080 && listening "$B" udp 8081 && listening "$B" udp 5353 &&
    listening "$B" tcp 5353 && listening "" tcp 18080 && listening "$REMOTE_NS" tcp 8080 &&
    listening "$B" tcp 8086 && listening "$B" udp 8087
}
check "the servers listen (pod B tcp 8080, udp 8081, dns 5353 udp+tcp; node 18080; remote pod 8080)" servers_listen

tcp_get() { timeout 6 ip netns exec "$1" socat -T 3 - "TCP:$2:$3,connect-timeout=3" </dev/null 2>&1; }
udp_get() { echo hi | timeout 6 ip netns exec "$1" socat -T 2 - "UDP:$2:$3" 2>&1; }
not_answered() { ! grep -qF "pod-b saw" <<<"$1"; }
flow_metric() { ctlh metrics 2>/dev/null | awk -v m="$1" '$1 == m {print $2}'; }

# rows MODE: every Service row, against the rules of MODE.
rows() {
  local mode=$1 out
  log "$mode: ClusterIP to a pod on the same node"
  out=$(tcp_get "$A" "$CIP_B" 80)
  check "[$mode] pod A -> ClusterIP tcp -> pod B: answered, B saw A's own address ($out)" test "$out" = "pod-b saw $IP_A"
  out=$(udp_get "$A" "$CIP_B" 80)
  check "[$mode] pod A -> ClusterIP udp -> pod B: the reply came from the ClusterIP ($out)" test "$out" = "pod-b saw $IP_A"
  log "$mode: ClusterIP to the node and to a pod on another node"
  out=$(tcp_get "$A" "$CIP_NODE" 80)
  check "[$mode] pod A -> ClusterIP -> the node ($NODE_IP:18080): $out" test "$out" = "node saw $IP_A"
  out=$(tcp_get "$A" "$CIP_REMOTE" 80)
  check "[$mode] pod A -> ClusterIP -> a pod on another node ($REMOTE_POD): $out" test "$out" = "remote saw $IP_A"
  log "$mode: hairpin"
  out=$(tcp_get "$B" "$CIP_B" 80)
  check "[$mode] pod B -> its own Service -> pod B: answered, masqueraded to the node ($out)" test "$out" = "pod-b saw $GATEWAY"
  log "$mode: NodePort from an outside host, externalTrafficPolicy: Local"
  out=$(tcp_get "$EXT_NS" "$EXT_HOST" "$NODEPORT")
  check "[$mode] outside client -> $EXT_HOST:$NODEPORT -> pod B, which saw the client's address ($out)" test "$out" = "pod-b saw $EXT_CLIENT"
  log "$mode: a Service without endpoints"
  out=$(tcp_get "$A" "$CIP_NONE" 80)
  check "[$mode] pod A -> ClusterIP without endpoints: connection refused, not a timeout ($out)" grep -q 'Connection refused' <<<"$out"
  log "$mode: DNS through a ClusterIP to pod B"
  out=$(timeout 10 ip netns exec "$A" dig +time=2 +tries=1 +short @"$CIP_DNS" small.svc.test A 2>&1)
  check "[$mode] dig over UDP: small.svc.test = 10.1.2.1 ($out)" test "$out" = 10.1.2.1
  out=$(timeout 10 ip netns exec "$A" dig +time=2 +tries=1 +ignore +bufsize=1232 @"$CIP_DNS" big.svc.test A 2>&1)
  local size
  size=$(sed -n 's/^;; MSG SIZE  rcvd: \([0-9]*\)$/\1/p' <<<"$out")
  check "[$mode] dig with EDNS: 40 answers in one UDP response of ${size:-?} bytes (> 512), not truncated" \
    edns_answer_whole "$out" "${size:-0}"
  out=$(timeout 15 ip netns exec "$A" dig +time=2 +tries=1 +noedns @"$CIP_DNS" big.svc.test A 2>&1)
  check "[$mode] dig without EDNS: truncated over UDP, retried over TCP, 40 answers" tcp_fallback_whole "$out"
}
# edns_answer_whole DIG_OUTPUT SIZE / tcp_fallback_whole DIG_OUTPUT: what dig printed says so.
edns_answer_whole() {
  grep -q 'ANSWER: 40,' <<<"$1" && [ "$2" -gt 512 ] && ! grep -q 'flags:[a-z ]* tc[ ;]' <<<"$1"
}
tcp_fallback_whole() {
  grep -q 'Truncated, retrying in TCP mode' <<<"$1" && grep -q 'ANSWER: 40,' <<<"$1" && grep -q '(TCP)' <<<"$1"
}

log "kube-proxy iptables mode"
if iptables_install; then ok "iptables rules in kube-proxy's shape installed ($(wc -l <"$IPT_UNDO") changes)"; else fail "iptables rules"; fi
rows iptables
iptables_remove
check "iptables: every rule of this run removed" sh -c "! iptables-save | grep -q 'e2e-$RUN_ID'"

log "kube-proxy nftables mode"
if nft_install; then ok "nftables table ip $NFT_TABLE installed"; else fail "nftables table"; fi
rows nftables

log "IPv6, nftables mode (table ip6 kube-proxy): ClusterIP to a pod on the same node"
if nft6_install; then ok "nftables table ip6 $NFT6_TABLE installed"; else fail "nftables table ip6"; fi
out=$(tcp_get "$A" "[$CIP6_B]" 80)
check "[nftables, IPv6] pod A -> [$CIP6_B]:80 tcp -> pod B: answered, B saw A's own address ($out)" test "$out" = "pod-b saw [$IP6_A_FULL]"
out=$(udp_get "$A" "[$CIP6_B]" 80)
check "[nftables, IPv6] pod A -> [$CIP6_B]:80 udp -> pod B: the reply came from the ClusterIP ($out)" test "$out" = "pod-b saw [$IP6_A_FULL]"

inserts=$(flow_metric netstack_flow_table_inserts_total)
check "the flow table was used: netstack_flow_table_inserts_total ${inserts:-?} > 0, evictions $(flow_metric netstack_flow_table_evictions_total)" \
  test "${inserts:-0}" -gt 0
check "  ... and holds live entries (netstack_flow_table_entries $(flow_metric netstack_flow_table_entries))" \
  test "$(flow_metric netstack_flow_table_entries)" -gt 0

log "negative control: netstackd --service-flows off"
stop_netstackd
start_netstackd --workers 2 --pod-cidr-v6 "$POD_CIDR6" --service-flows off || exit 1
for i in $(seq 50); do [ "$(ctl list | jq '[.[] | select(.state == "attached")] | length')" = 2 ] && break; sleep 0.1; done
check "the pods are served again after the restart (pod A -> node ClusterIP)" test "$(tcp_get "$A" "$CIP_NODE" 80)" = "node saw $IP_A"
check "the flow table is off: netstack_flow_table_capacity 0" test "$(flow_metric netstack_flow_table_capacity)" = 0
out=$(tcp_get "$A" "$CIP_B" 80)
check "[nftables, flows off] pod A -> ClusterIP tcp -> pod B fails ($out)" test "$out" != "pod-b saw $IP_A"
out=$(udp_get "$A" "$CIP_B" 80)
check "[nftables, flows off] pod A -> ClusterIP udp -> pod B gets no reply ($out)" test "$out" != "pod-b saw $IP_A"
out=$(tcp_get "$A" "[$CIP6_B]" 80)
check "[nftables, IPv6, flows off] pod A -> [$CIP6_B]:80 tcp -> pod B fails ($out)" not_answered "$out"
nft_remove
nft6_remove
iptables_install >/dev/null
out=$(tcp_get "$A" "$CIP_B" 80)
check "[iptables, flows off] pod A -> ClusterIP tcp -> pod B fails ($out)" test "$out" != "pod-b saw $IP_A"
check "[iptables, flows off] hairpin still works: it never needed the table" test "$(tcp_get "$B" "$CIP_B" 80)" = "pod-b saw $GATEWAY"

echo "test_services: $PASSES passed, $FAILS failed"
[ "$FAILS" = 0 ]
