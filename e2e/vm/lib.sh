#!/usr/bin/env bash
# A test VM for the e2e scripts: Debian's cloud kernel (downloaded, never installed on the host)
# and a busybox initramfs whose /init is e2e/vm/init, both cached under $VM_CACHE and keyed by
# the package versions and the init script; QEMU booted with a bounded wait, KVM when a probe
# boot succeeds and TCG otherwise; a serial-console protocol to run commands in the guest.
# The guest has busybox and iperf3 (copied from the host with the libraries ldd lists).
# Source after e2e/lib.sh (or e2e/checks.sh). Every VM this starts is killed by vm_cleanup.
#
#   vm_assets                         kernel + initramfs ready: $VM_KERNEL, $VM_INITRD
#   vm_accel                          $VM_ACCEL = kvm or tcg (probe boot), and why in $VM_ACCEL_WHY
#   vm_nic_vhost SOCK MAC [QUEUES]    $VM_NIC: QEMU args for a virtio-net on a vhost-user socket
#   vm_kata_tap NETNS / vm_nic_tap    Kata's tcfilter TAP tap0_kata in NETNS; $VM_NIC on it
#   vm_kata_tap_del NETNS             remove tap0_kata and the filters
#   vm_boot NAME APPEND -- QEMU_ARGS  start a VM (QEMU_ARGS: its NIC), wait for the marker
#   vm_run NAME [-t SECS] CMD         run CMD in the guest; its output on stdout, its status back
#   vm_stop NAME / vm_cleanup         kill one VM / all of them

VM_CACHE=${VM_CACHE:-/var/cache/netstack/vm}
VM_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VM_WORK=${VM_WORK:-${WORK:-/tmp/netstack-vm.$$}/vm}
# virtio_net and what it needs, in dependency order (modinfo -F depends of each, Debian 6.1).
VM_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net)
# Host programs copied into the guest's /bin, with their libraries (ldd) at the same paths.
VM_GUEST_BINS=(/usr/bin/iperf3)
VM_MEM=256M
VM_BOOT_TIMEOUT=${VM_BOOT_TIMEOUT:-60}
VM_NAMES=()
declare -A VM_PID VM_IN VM_SOCAT

vm_log() { echo "  [vm] $*" >&2; }

# vm_kernel_pkg: the versioned package linux-image-cloud-amd64 depends on, and its version.
vm_kernel_pkg() {
  local pkg ver
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  [ -n "$pkg" ] || return 1
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
  [ -n "$ver" ] || return 1
  echo "${pkg}_$ver"
}

# vm_guest_files: the files VM_GUEST_BINS bring into the guest, one a line: each program and
# every library ldd lists for it (the dynamic loader included), as paths on the host.
vm_guest_files() {
  local b
  for b in "${VM_GUEST_BINS[@]}"; do
    echo "$b"
    ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
  done | sort -u
}

# vm_assets: downloads and unpacks the kernel once per version, builds the initramfs once per
# (kernel, busybox, init script, the guest programs' and libraries' contents); sets VM_KERNEL
# and VM_INITRD.
vm_assets() {
  local key kdir tmp deb kver m bb ikey initrd root f files
  key=$(vm_kernel_pkg) || {
    apt-get update -qq >/dev/null 2>&1
    key=$(vm_kernel_pkg)
  } || {
    # No apt lists (offline): the newest kernel already in the cache.
    key=$(find "$VM_CACHE" -maxdepth 1 -name 'linux-image-*' -printf '%f\n' 2>/dev/null | sort -V | tail -1)
    [ -n "$key" ] || { vm_log "no kernel: apt-cache knows no linux-image-cloud-amd64 and $VM_CACHE is empty"; return 1; }
  }
  kdir=$VM_CACHE/$key
  if [ ! -f "$kdir/vmlinuz" ]; then
    mkdir -p "$VM_CACHE"
    tmp=$(mktemp -d "$VM_CACHE/.kernel.XXXXXX")
    vm_log "downloading ${key%%_*} (${key#*_}) into $kdir"
    if ! (cd "$tmp" && timeout 300 apt-get download -q "${key%%_*}=${key#*_}" >/dev/null 2>&1); then
      vm_log "apt-get download ${key%%_*} failed"; rm -rf "$tmp"; return 1
    fi
    deb=$(ls "$tmp"/*.deb)
    dpkg-deb -x "$deb" "$tmp/x" || { rm -rf "$tmp"; return 1; }
    kver=$(ls "$tmp/x/lib/modules")
    mkdir -p "$tmp/out/modules"
    cp "$tmp/x/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
    for m in "${VM_MODULES[@]}"; do
      find "$tmp/x/lib/modules/$kver" -name "$m.ko" -exec cp {} "$tmp/out/modules/" \;
      [ -f "$tmp/out/modules/$m.ko" ] || { vm_log "module $m.ko not in $key"; rm -rf "$tmp"; return 1; }
    done
    echo "$kver" >"$tmp/out/release"
    rm -rf "$kdir"
    mv "$tmp/out" "$kdir"
    rm -rf "$tmp"
  fi
  VM_KERNEL=$kdir/vmlinuz
  bb=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null)
  [ -x /bin/busybox ] && [ -n "$bb" ] || { vm_log "busybox-static is not installed"; return 1; }
  # iperf3 comes with the other test packages (scripts/deps.sh installs it).
  for f in "${VM_GUEST_BINS[@]}"; do
    [ -x "$f" ] || "$VM_SRC/../../scripts/deps.sh" >/dev/null || true
    [ -x "$f" ] || { vm_log "$f is not installed (scripts/deps.sh)"; return 1; }
  done
  mapfile -t files < <(vm_guest_files)
  # The key covers what the guest gets: the kernel, busybox, the module list, /init and the
  # contents of every copied program and library (a package upgrade changes it).
  ikey=$({
    printf '%s\n' "$key" "$bb" "${VM_MODULES[*]}" "${files[@]}"
    cat "$VM_SRC/init"
    sha256sum "${files[@]}" | cut -d' ' -f1
  } | sha256sum | cut -c1-16)
  initrd=$VM_CACHE/initramfs-$ikey.cpio.gz
  if [ ! -f "$initrd" ]; then
    tmp=$(mktemp -d "$VM_CACHE/.initramfs.XXXXXX")
    root=$tmp/root
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    for m in $(/bin/busybox --list); do [ "$m" = busybox ] || ln -s busybox "$root/bin/$m"; done
    cp "$kdir"/modules/*.ko "$root/lib/modules/"
    printf '%s\n' "${VM_MODULES[@]}" >"$root/lib/modules/order"
    for f in "${files[@]}"; do
      if [[ " ${VM_GUEST_BINS[*]} " == *" $f "* ]]; then
        cp -L "$f" "$root/bin/"
      else
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
      fi
    done
    cp "$VM_SRC/init" "$root/init"
    chmod 755 "$root/init"
    # busybox's cpio: the host may have no cpio of its own.
    (set -o pipefail && cd "$root" && find . | /bin/busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) \
      >"$tmp/initramfs.cpio.gz" && mv "$tmp/initramfs.cpio.gz" "$initrd"
    rm -rf "$tmp"
    [ -f "$initrd" ] || { vm_log "building the initramfs failed"; return 1; }
  fi
  VM_INITRD=$initrd
}

# vm_qemu ACCEL NAME APPEND QEMU_ARGS...: QEMU in the background (in the caller's netns), its
# serial console on a unix socket with everything it prints logged to $VM_WORK/NAME/console.log.
vm_qemu() {
  local accel=$1 name=$2 append=$3 dir=$VM_WORK/$2 cpu=qemu64
  shift 3
  mkdir -p "$dir"
  : >"$dir/console.log"
  [ "$accel" = kvm ] && cpu=host
  ${VM_LAUNCH:-} qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -smp 1 -m "$VM_MEM" \
    -object "memory-backend-memfd,id=mem,size=$VM_MEM,share=on" -numa node,memdev=mem \
    -nographic -nodefaults -no-reboot -no-user-config -monitor none \
    -chardev "socket,id=ser0,path=$dir/console.sock,server=on,wait=off,logfile=$dir/console.log" \
    -serial chardev:ser0 \
    -kernel "$VM_KERNEL" -initrd "$VM_INITRD" \
    -append "console=ttyS0 quiet loglevel=1 panic=-1 $append" \
    "$@" >"$dir/qemu.log" 2>&1 </dev/null &
  VM_PID[$name]=$!
  VM_NAMES+=("$name")
}

# vm_console_open NAME: one connection to the console socket for the VM's lifetime, fed from
# the fifo $VM_WORK/NAME/in (QEMU drops what the UART has not taken yet when a client
# disconnects, so a connection per command would lose the end of long lines).
vm_console_open() {
  local dir=$VM_WORK/$1 fd i
  mkfifo "$dir/in"
  exec {fd}<>"$dir/in"
  VM_IN[$1]=$fd
  for ((i = 0; i < 50; i++)); do [ -S "$dir/console.sock" ] && break; sleep 0.1; done
  # Both ways (what the guest prints is read and dropped: the logfile has it): a one-way
  # socat shuts its read side down and QEMU then stops sending, serial output and all.
  socat - "UNIX-CONNECT:$dir/console.sock" <"$dir/in" >/dev/null 2>>"$dir/qemu.log" &
  VM_SOCAT[$1]=$!
}

# vm_wait_ready NAME SECS: the marker on the console within SECS, QEMU still running.
vm_wait_ready() {
  local name=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    grep -q 'NETSTACK-VM-READY' "$VM_WORK/$name/console.log" 2>/dev/null && return 0
    kill -0 "${VM_PID[$name]}" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# vm_accel: KVM if /dev/kvm opens and a probe VM (no NIC) reaches its marker in 20 s; TCG
# otherwise (nested virtualization here: KVM fails in early boot). Sets VM_ACCEL, VM_ACCEL_WHY.
vm_accel() {
  [ -n "${VM_ACCEL:-}" ] && return 0
  if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    VM_ACCEL=tcg VM_ACCEL_WHY="no usable /dev/kvm"
  else
    # In a subshell with its stderr dropped (bash reports QEMU's abort on KVM there, as a job
    # killed by a signal) and under timeout (bounded even if this shell dies first).
    if (
      VM_LAUNCH="timeout 60" vm_qemu kvm kvm-probe ""
      vm_wait_ready kvm-probe 20
      rc=$?
      vm_stop kvm-probe
      exit "$rc"
    ) 2>/dev/null; then
      VM_ACCEL=kvm VM_ACCEL_WHY="a KVM probe boot reached the shell"
    else
      VM_ACCEL=tcg VM_ACCEL_WHY="a KVM probe boot failed: $(grep -m1 . "$VM_WORK/kvm-probe/qemu.log" 2>/dev/null | cut -c1-120 || echo "no shell within 20 s")"
    fi
  fi
  vm_log "accelerator: $VM_ACCEL ($VM_ACCEL_WHY)"
}

# vm_nic_vhost SOCK MAC [QUEUES]: sets VM_NIC to the QEMU arguments of a virtio-net device on
# the vhost-user socket SOCK (QEMU the client, reconnecting within a second when the backend
# goes away) with MAC and QUEUES queue pairs (default 1; more: mq=on). The guest's memory is
# the memfd vm_qemu always gives it (shared: the backend maps it). vectors=0: QEMU 7.2 under
# TCG crashes when the guest starts a vhost-user virtio-net that has MSI-X vectors.
vm_nic_vhost() {
  local sock=$1 mac=$2 queues=${3:-1} mq=
  ((queues > 1)) && mq=,mq=on
  VM_NIC=(-chardev "socket,id=c0,path=$sock,reconnect=1"
    -netdev "vhost-user,id=n0,chardev=c0,queues=$queues"
    -device "virtio-net-pci,netdev=n0,mac=$mac,vectors=0$mq")
}

# vm_kata_tap NETNS: Kata's tcfilter internetworking in the pod netns NETNS, as its runtime
# does it (src/runtime/virtcontainers/network_linux.go, setupTCFiltering): a TAP tap0_kata with
# the vnet header at eth0's MTU, eth0's addresses cleared (the guest gets them), and a
# catch-all u32 filter with a mirred egress redirect on each side's ingress qdisc.
vm_kata_tap() {
  local ns=$1 mtu pair
  mtu=$(ip -n "$ns" -j link show eth0 | jq -r '.[0].mtu')
  ip -n "$ns" tuntap add dev tap0_kata mode tap vnet_hdr &&
    ip -n "$ns" link set tap0_kata mtu "$mtu" up &&
    ip -n "$ns" addr flush dev eth0 || return 1
  for pair in eth0:tap0_kata tap0_kata:eth0; do
    tc -n "$ns" qdisc add dev "${pair%%:*}" ingress &&
      tc -n "$ns" filter add dev "${pair%%:*}" parent ffff: protocol all u32 match u32 0 0 \
        action mirred egress redirect dev "${pair##*:}" || return 1
  done
}

# vm_kata_tap_del NETNS: removes what vm_kata_tap made (eth0's ingress qdisc, tap0_kata).
vm_kata_tap_del() {
  tc -n "$1" qdisc del dev eth0 ingress 2>/dev/null
  ip -n "$1" link del tap0_kata 2>/dev/null
}

# vm_nic_tap MAC: sets VM_NIC to QEMU's own -netdev tap on tap0_kata (QEMU runs in the pod's
# netns) with the pod's MAC, as Kata's QEMU gets it (vhost-net off: the fds are QEMU's own).
vm_nic_tap() {
  VM_NIC=(-netdev tap,id=n0,ifname=tap0_kata,script=no,downscript=no,vhost=off
    -device "virtio-net-pci,netdev=n0,mac=$1")
}

# vm_boot NAME APPEND -- QEMU_ARGS...: a VM with the kernel command line APPEND (ns.ip=...,
# ns.gw=...) and QEMU_ARGS (its -netdev/-device), booted within $VM_BOOT_TIMEOUT seconds.
vm_boot() {
  local name=$1 append=$2
  shift 2
  [ "${1:-}" = -- ] && shift
  vm_accel
  vm_qemu "$VM_ACCEL" "$name" "$append" "$@"
  vm_console_open "$name"
  if ! vm_wait_ready "$name" "$VM_BOOT_TIMEOUT"; then
    vm_log "$name did not boot in ${VM_BOOT_TIMEOUT}s; qemu: $(tail -3 "$VM_WORK/$name/qemu.log" | tr '\n' ' ')"
    vm_log "console: $(tr -d '\r' <"$VM_WORK/$name/console.log" | tail -5 | tr '\n' '|')"
    return 1
  fi
}

# vm_ready_line NAME: the guest's marker line (net=eth0 MAC ADDR gw GW mtu MTU, or net=none).
vm_ready_line() { tr -d '\r' <"$VM_WORK/$1/console.log" | grep -o -m1 'NETSTACK-VM-READY.*'; }

# vm_run NAME [-t SECS] CMD: CMD (one shell line) in the guest, bounded by SECS (default 30);
# prints what it printed and returns its exit status (124 when SECS passed first).
vm_run() {
  local name=$1 secs=30 n log i
  shift
  if [ "$1" = -t ]; then secs=$2; shift 2; fi
  # The sequence number lives in a file: vm_run usually runs in $(...), a subshell.
  n=$(($(cat "$VM_WORK/$name/seq" 2>/dev/null || echo 0) + 1))
  echo "$n" >"$VM_WORK/$name/seq"
  log=$VM_WORK/$name/console.log
  [ -n "${VM_IN[$name]:-}" ] || return 125
  printf '%s %s\n' "$n" "$*" >&"${VM_IN[$name]}" || return 125
  for ((i = 0; i < secs * 10; i++)); do
    grep -aq "^@@E$n=" <(tr -d '\r' <"$log") && break
    kill -0 "${VM_PID[$name]}" 2>/dev/null || return 126
    sleep 0.1
  done
  tr -d '\r' <"$log" | awk -v b="@@B$n" -v e="^@@E$n=" '$0 == b {on = 1; next} $0 ~ e {exit} on'
  local rc
  rc=$(tr -d '\r' <"$log" | sed -n "s/^@@E$n=\([0-9]*\)$/\1/p" | head -1)
  [ -n "$rc" ] || return 124
  return "$rc"
}

# vm_alive NAME: its QEMU is still running.
vm_alive() { [ -n "${VM_PID[$1]:-}" ] && kill -0 "${VM_PID[$1]}" 2>/dev/null; }

# vm_stop NAME: kill its QEMU (TERM, then KILL after 5 s) and wait for it.
vm_stop() {
  local pid=${VM_PID[$1]:-} i
  if [ -n "${VM_SOCAT[$1]:-}" ]; then
    kill "${VM_SOCAT[$1]}" 2>/dev/null
    wait "${VM_SOCAT[$1]}" 2>/dev/null
    eval "exec ${VM_IN[$1]}>&-"
    VM_SOCAT[$1]= VM_IN[$1]=
  fi
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  VM_PID[$1]=
}

# vm_cleanup: every VM this shell started, and their work directories.
vm_cleanup() {
  local n
  for n in "${VM_NAMES[@]}"; do vm_stop "$n"; done
  VM_NAMES=()
  rm -rf "$VM_WORK"
}
