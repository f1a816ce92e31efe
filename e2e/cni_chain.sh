#!/usr/bin/env bash
# A conflist executed as libcni executes it (SPEC.md §3), for the e2e tests: every plugin of
# the list is run with cniVersion and name inserted, `capabilities` replaced by the
# `runtimeConfig` it asked for, and `prevResult` set — ADD in list order (each plugin gets the
# previous result, the final one is cached), CHECK in order with the cached result, DEL in
# reverse order with the cached result (the cache entry goes once DEL succeeded). Sourced;
# needs CHAIN_BIN (the CNI bin dir) and CHAIN_CACHE (a directory); the plugins run prefixed
# by the command in the array CHAIN_WRAP (e.g. `ip netns exec NODE`), if set.

# chain_plugin_conf CONFLIST INDEX RUNTIME_ARGS PREV: the stdin of plugin INDEX.
chain_plugin_conf() {
  jq -c --argjson i "$2" --argjson rt "$3" --argjson prev "$4" '
    .plugins[$i] as $p
    | ($p | del(.capabilities)) + {cniVersion: .cniVersion, name: .name}
    + (if $p.capabilities then
         {runtimeConfig: ($rt | with_entries(select(.key as $k | $p.capabilities[$k] == true)))}
       else {} end)
    + (if $prev == null then {} else {prevResult: $prev} end)' "$1"
}

# chain CMD CONFLIST CONTAINER_ID NETNS [RUNTIME_ARGS_JSON] [IFNAME] [CNI_ARGS]: prints the
# final ADD result, or the failing plugin's error object (and returns 1).
chain() {
  local cmd=$1 conflist=$2 cid=$3 netns=$4 rt=${5:-'{}'} ifname=${6:-eth0}
  local args=${7:-"IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=$3;K8S_POD_INFRA_CONTAINER_ID=$3;K8S_POD_UID=uid-$3"}
  local name n order i conf type out prev=null
  name=$(jq -r .name "$conflist")
  n=$(jq '.plugins | length' "$conflist")
  local cache="$CHAIN_CACHE/$name-$cid-$ifname"
  case $cmd in
    ADD) order=$(seq 0 $((n - 1))) ;;
    CHECK) order=$(seq 0 $((n - 1))); prev=$(cat "$cache" 2>/dev/null || echo null) ;;
    DEL) order=$(seq $((n - 1)) -1 0); prev=$(cat "$cache" 2>/dev/null || echo null) ;;
  esac
  for i in $order; do
    conf=$(chain_plugin_conf "$conflist" "$i" "$rt" "$prev")
    type=$(jq -r ".plugins[$i].type" "$conflist")
    out=$(printf '%s' "$conf" | env CNI_COMMAND="$cmd" CNI_CONTAINERID="$cid" CNI_NETNS="$netns" \
      CNI_IFNAME="$ifname" CNI_PATH="$CHAIN_BIN" CNI_ARGS="$args" ${CHAIN_WRAP[@]+"${CHAIN_WRAP[@]}"} "$CHAIN_BIN/$type")
    if [ $? -ne 0 ]; then
      printf '%s\n' "$out"
      return 1
    fi
    [ "$cmd" = ADD ] && prev=$out
  done
  case $cmd in
    ADD) printf '%s' "$prev" >"$cache"; printf '%s\n' "$prev" ;;
    DEL) rm -f "$cache" ;;
  esac
}
