#!/usr/bin/env bash
# disk_raw_offline.sh — issue 9: disk.raw of a shut-off domain whose chain
# is a raw base under a qcow2 layer with a relative backing path; while it
# is open the domain starts and writes; QEMU's image locks keep every file
# of the served chain from being opened for writing by anyone else — the
# qcow2 layer by qemu-nbd's own lock, the raw base by the one chainfs
# takes — including a `virsh blockcommit` by hand into them.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-rawoff"
mkdir -p "$T/img/sub"
chmod 0755 "$T/img" "$T/img/sub"
rbase="$T/img/base.raw"
qemu-img create -q -f raw "$rbase" 64M || it_fail "qemu-img create raw base"
it_write_pattern "$rbase" 0x15 0 2M
r1="$T/img/sub/r1.qcow2"
(cd "$T/img/sub" && qemu-img create -q -f qcow2 -b ../base.raw -F raw r1.qcow2 64M) || it_fail "qemu-img create r1 (relative backing)"
it_write_pattern "$r1" 0x16 1M 2M
it_define "$D" "$r1"
it_mount
it_wait_dom "$D"
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir s1 (shut off)"
qemu-img convert -U -O raw "$r1" "$T/exp.raw" || it_fail "qemu-img convert of the frozen chain"

raw="$MNT/$D/vda/snapshots/s1/disk.raw"
cmp "$raw" "$T/exp.raw" || it_fail "disk.raw of a shut-off domain (raw base, relative backing) differs"
it_log "ok: disk.raw of the shut-off domain equals its frozen chain"

# (a failure while it is open: close it before the unmount)
trap 'rc=$?; set +e; exec 3<&-; (exit $rc); it_cleanup' EXIT
exec 3<"$raw"
# the locks, before QEMU runs
out=$(qemu-io -f raw -c 'write -P 0x99 0 4k' "$rbase" 2>&1) || true
it_assert_contains "$out" 'Failed to get "write" lock' "qemu-io cannot write the raw base under a reader"
out=$(qemu-io -f qcow2 -c 'write -P 0x99 0 4k' "$r1" 2>&1) || true
it_assert_contains "$out" 'Failed to get "write" lock' "qemu-io cannot write the qcow2 layer under a reader"
# the domain starts and writes with the reader open
it_start "$D"
it_guest_write "$D" 0x77 0 1M
# a commit by hand into the reader's files: QEMU refuses
out=$(it_virsh blockcommit "$D" vda --top "$r1" --base "$rbase" --wait 2>&1) &&
  it_fail "virsh blockcommit into the reader's chain succeeded: $out"
it_assert_contains "$out" "lock" "virsh blockcommit into the raw base is refused by a lock"
head -c 4M <&3 | cmp - <(head -c 4M "$T/exp.raw") || it_fail "the reader's data changed"
exec 3<&-
nbd_none() { ! ps --ppid "$IT_PID" -o comm= | grep -q '^qemu-nbd$'; }
it_wait_until 5 "the server stops" nbd_none
out=$(it_virsh blockcommit "$D" vda --top "$r1" --base "$rbase" --wait 2>&1) ||
  it_fail "virsh blockcommit after the reader closed: $out"
it_log "ok: the same commit works once the reader closed"
it_check_pattern "$rbase" 0x16 1M 2M

# --- who may read it: root, and with -o manage_group that group's members --
GROUP=users
if getent group "$GROUP" >/dev/null; then
  GROUP_GID=$(getent group "$GROUP" | cut -d: -f3)
  it_destroy "$D"
  it_unmount || it_fail "unmount"
  it_mount "allow_other,manage_group=$GROUP"
  it_wait_dom "$D"
  it_assert_eq "440 root $GROUP" "$(stat -c '%a %U %G' "$raw")" "with manage_group, disk.raw is 0440 and the group's"
  nobody_gid=$(id -g nobody)
  out=$(setpriv --reuid=nobody --regid="$nobody_gid" --clear-groups head -c 1 "$raw" 2>&1) &&
    it_fail "nobody read disk.raw"
  it_assert_contains "$out" "Permission denied" "a user outside the group may not read disk.raw"
  n=$(setpriv --reuid=nobody --regid="$nobody_gid" --groups="$GROUP_GID" cat "$raw" | wc -c) ||
    it_fail "a member of $GROUP could not read disk.raw"
  it_assert_eq 67108864 "$n" "a member of $GROUP reads the whole disk.raw"
else
  it_log "no group 'users' on this host: the manage_group part is left out"
fi
