#!/bin/bash
# issue10_lock.sh — probe for design issue 10 §4.3 step 2: does an OFD read
# lock on byte 201 of a shut-off domain's active qcow2 layer make
# `virsh start` fail (so a start cannot race a revert)? And after the lock
# is dropped, does it start? (An OS-less 64 MiB domain, destroyed and
# undefined at once.)
set -euo pipefail
D=/var/tmp/d10lock-$$
V="virsh -q -c qemu:///system"
dom=d10lock-$$
mkdir -p "$D"; chmod 0755 "$D"
log() { printf '[%s] %s\n' "$(date -u +%T.%3N)" "$*"; }
holder=""
cleanup() {
  [ -n "$holder" ] && kill "$holder" 2>/dev/null || true
  $V destroy "$dom" >/dev/null 2>&1 || true
  $V undefine "$dom" >/dev/null 2>&1 || true
  rm -rf "$D"
}
trap cleanup EXIT
qemu-img create -q -f raw "$D/base.raw" 16M
qemu-img create -q -f qcow2 -b "$D/base.raw" -F raw "$D/top.qcow2"
cat >"$D/dom.xml" <<EOF
<domain type='${CHAINFS_VIRT_TYPE:-qemu}'><name>$dom</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$D/top.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>
EOF
$V define "$D/dom.xml" >/dev/null
python3 - "$D/top.qcow2" "$D/locked" <<'EOF' &
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CLOEXEC)
F_OFD_SETLK = 37
# struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
fl = struct.pack('hhqqi4x', fcntl.F_RDLCK, os.SEEK_SET, 201, 1, 0)
fcntl.fcntl(fd, F_OFD_SETLK, fl)
open(sys.argv[2], 'w').close()
time.sleep(60)
EOF
holder=$!
for _ in $(seq 1 50); do [ -e "$D/locked" ] && break; sleep 0.1; done
log "byte 201 of top.qcow2 read-locked (OFD) by pid $holder"
log "virsh start with the lock held: $($V start "$dom" 2>&1 | tr '\n' ' ') state: $($V domstate "$dom" | head -1)"
kill "$holder"; wait "$holder" 2>/dev/null || true; holder=""
log "lock dropped; virsh start: $($V start "$dom" 2>&1 | tr '\n' ' ') state: $($V domstate "$dom" | head -1)"
$V destroy "$dom" >/dev/null 2>&1 || true
