#!/usr/bin/env bash
# podman for the e2e tests, sourced after lib.sh: a private configuration, storage and hooks
# directory under $WORK/podman (nothing of the node's podman is read or changed), the CNI
# backend, and an image imported from a busybox-static rootfs (no registry is reachable).

PM=$WORK/podman
ROOTFS=$WORK/rootfs
IMAGE=localhost/netstack-e2e-busybox:$RUN_ID

pm() {
  CONTAINERS_CONF=$PM/containers.conf CONTAINERS_STORAGE_CONF=$PM/storage.conf \
    podman --root "$PM/root" --runroot "$PM/run" --tmpdir "$PM/tmp" --storage-driver vfs \
    --hooks-dir "$PM/hooks.d" --network-config-dir "$PM/net.d" --cgroup-manager cgroupfs \
    --events-backend file "$@"
}

# The busybox-static rootfs every container runs (read-only, shared).
make_rootfs() {
  mkdir -p "$ROOTFS"/{bin,proc,sys,dev,etc,tmp}
  cp /bin/busybox "$ROOTFS/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$ROOTFS/bin/$a"
  done
  printf 'root:x:0:0:root:/:/bin/sh\n' >"$ROOTFS/etc/passwd"
}

# podman_setup CNI_PLUGIN_DIRS...: containers.conf (CNI backend; the limits this machine
# allows, see shared/research/feasibility.md), storage.conf, and the image.
podman_setup() {
  local dirs
  dirs=$(printf '"%s",' "$@")
  mkdir -p "$PM"/{hooks.d,net.d,tmp}
  cat >"$PM/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
default_sysctls = []
[network]
network_backend = "cni"
cni_plugin_dirs = [${dirs%,}]
network_config_dir = "$PM/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PM/events.log"
hooks_dir = ["$PM/hooks.d"]
static_dir = "$PM/root/libpod"
tmp_dir = "$PM/tmp"
volume_path = "$PM/root/volumes"
runtime = "runc"
CONF
  printf '[storage]\ndriver = "vfs"\ngraphroot = "%s"\nrunroot = "%s"\n' "$PM/root" "$PM/run" >"$PM/storage.conf"
  [ -x "$ROOTFS/bin/busybox" ] || make_rootfs
  tar -C "$ROOTFS" -c . | pm import - "$IMAGE" >"$WORK/import.log" 2>&1
}

# podman_cleanup: every container and image of this run's private podman.
podman_cleanup() {
  [ -f "$PM/containers.conf" ] || return 0
  pm rm -a -f -t 0 >/dev/null 2>&1
  pm rmi -a -f >/dev/null 2>&1
}
