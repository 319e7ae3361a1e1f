#!/usr/bin/env bash
# demo.sh — see chainfs work, from nothing: install what is missing, build,
# make sure libvirtd runs, create a throwaway VM (64 MiB, no OS, one qcow2
# disk), mount chainfs, and take and merge a live snapshot with mkdir, cat
# and rmdir. Everything it created — mount, daemon, VM, files — is removed
# on exit, whether the demo succeeded or not. Run as root:
#
#     sudo bash scripts/demo.sh
#
# With CHAINFS set (e.g. CHAINFS=/usr/bin/chainfs, the installed package)
# it installs and builds nothing and runs that binary instead, from a
# directory outside the source tree.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (sudo bash scripts/demo.sh): it defines a VM on qemu:///system and mounts FUSE" >&2
  exit 1
fi

if [ -z "${CHAINFS:-}" ]; then
  cd "$HERE/.."
  bash scripts/deps.sh
  [ -d build ] || meson setup build
  ninja -C build
  CHAINFS=$PWD/build/fs/fuse/chainfs
fi
[ -x "$CHAINFS" ] || { echo "demo: $CHAINFS is not an executable" >&2; exit 1; }
# shellcheck source=scripts/libvirtd.sh
. "$HERE/libvirtd.sh"
libvirtd_ensure

URI=qemu:///system
DOM="chainfs-demo-$$"
TMP=$(mktemp -d /var/tmp/chainfs-demo.XXXXXX)
chmod 0755 "$TMP" # QEMU runs as libvirt-qemu and must reach the image
MNT="$TMP/mnt"
PID=""
DEFINED=""

cleanup() {
  local rc=$? i
  set +e
  trap - EXIT INT TERM
  cd /
  echo
  echo "--- cleaning up"
  if [ -n "$DEFINED" ]; then
    virsh -q -c "$URI" destroy "$DOM" >/dev/null 2>&1
    virsh -q -c "$URI" undefine --snapshots-metadata "$DOM" >/dev/null 2>&1
  fi
  if mountpoint -q "$MNT" 2>/dev/null; then
    fusermount3 -u "$MNT" 2>/dev/null || { sleep 1; fusermount3 -u "$MNT" 2>/dev/null; } ||
      fusermount3 -u -z "$MNT"
  fi
  if [ -n "$PID" ]; then
    for ((i = 0; i < 50; i++)); do
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$PID" 2>/dev/null && kill -TERM "$PID"
    wait "$PID" 2>/dev/null
  fi
  mountpoint -q "$MNT" 2>/dev/null || rm -rf "$TMP"
  if [ "$rc" -eq 0 ]; then
    echo "demo: done; VM $DOM, mount and files removed"
  else
    echo "demo: FAILED (status $rc); VM $DOM, mount and files removed" >&2
    [ -s "$TMP.log" ] && { echo "--- chainfs log:" >&2; cat "$TMP.log" >&2; }
  fi
  rm -f "$TMP.log"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# show CMD... — print CMD as a shell transcript line, then run it in the
# mount point (paths are relative to it).
show() {
  printf '\n$ %s\n' "$*"
  (cd "$MNT" && "$@")
}

echo "--- creating throwaway VM $DOM (64 MiB, no OS, $(libvirtd_virt_type)) in $TMP"
qemu-img create -q -f qcow2 "$TMP/$DOM.qcow2" 64M
cat >"$TMP/$DOM.xml" <<XML
<domain type='$(libvirtd_virt_type)'>
  <name>$DOM</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$TMP/$DOM.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
XML
DEFINED=1
virsh -q -c "$URI" define "$TMP/$DOM.xml" >/dev/null
virsh -q -c "$URI" start "$DOM" >/dev/null

echo "--- mounting chainfs on $MNT ($CHAINFS)"
mkdir -p "$MNT"
cd "$TMP"
"$CHAINFS" -f -c "$URI" -o "state_dir=$TMP/state" "$MNT" 2>"$TMP.log" &
PID=$!
for ((i = 0; i < 100; i++)); do
  [ -d "$MNT/$DOM" ] && break
  kill -0 "$PID" 2>/dev/null || { echo "demo: chainfs exited" >&2; exit 1; }
  sleep 0.1
done
[ -d "$MNT/$DOM" ] || { echo "demo: $DOM did not appear in $MNT within 10 s" >&2; exit 1; }
echo "--- in $MNT:"

show ls
show cat "$DOM/vda/chain"
show mkdir "$DOM/vda/snapshots/before-upgrade"
show cat "$DOM/vda/chain"
show virsh -c "$URI" snapshot-list "$DOM"
show rmdir "$DOM/vda/snapshots/before-upgrade"
show cat "$DOM/vda/wait"
show cat "$DOM/vda/chain"
