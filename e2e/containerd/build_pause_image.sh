#!/usr/bin/env bash
# build_pause_image.sh OUT.tar REF: a one-layer image holding a static /pause, written as a
# docker-archive tar (manifest.json + config + layer) that `ctr images import` accepts. No
# registry is reachable from the test machines, so the sandbox image is built here.
set -euo pipefail
out=$1
ref=$2
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/rootfs" "$tmp/image"
gcc -static -Os -s -o "$tmp/rootfs/pause" "$here/pause.c"
tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$tmp/rootfs" -cf "$tmp/layer.tar" pause
layer_sha=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
mkdir -p "$tmp/image/$layer_sha"
mv "$tmp/layer.tar" "$tmp/image/$layer_sha/layer.tar"
jq -nc --arg diff "sha256:$layer_sha" '{
  architecture: "amd64", os: "linux",
  config: {Entrypoint: ["/pause"], WorkingDir: "/"},
  rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created_by: "netstack e2e: static pause"}]}' >"$tmp/config.json"
config_sha=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
mv "$tmp/config.json" "$tmp/image/$config_sha.json"
jq -nc --arg cfg "$config_sha.json" --arg ref "$ref" --arg layer "$layer_sha/layer.tar" \
  '[{Config: $cfg, RepoTags: [$ref], Layers: [$layer]}]' >"$tmp/image/manifest.json"
tar --numeric-owner --owner=0 --group=0 -C "$tmp/image" -cf "$out" .
