#!/usr/bin/env bash
# blockdev.sh — a disk on a block device (a loop device over a file this
# script made; LVM behaves the same) and chainfs without overlay_dir:
#   1. mkdir is refused up front with EROFS, a log line and a job error
#      that name `-o overlay_dir`; nothing is created in /dev (the overlay
#      would go beside the active image, i.e. into /dev); libvirt's disks
#      and snapshots are unchanged;
#   2. mounted again with overlay_dir, mkdir takes the snapshot (overlay in
#      overlay_dir) and rmdir merges it back into the device; the patterns
#      written before, into the overlay and by the guest read back from the
#      device.
# The loop device is detached at exit, pass or fail.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

command -v losetup >/dev/null 2>&1 || it_skip "losetup is not installed"
LOOP=""
D="$IT_PREFIX-blockdev"

bd_cleanup() {
  local rc=$?
  set +e
  # the domain first: QEMU holds the device open
  it_virsh destroy "$D" >/dev/null 2>&1
  if [ -n "$LOOP" ]; then
    losetup -d "$LOOP" || echo "[$IT_NAME] could not detach $LOOP" >&2
  fi
  (exit "$rc")
  it_cleanup
}
trap bd_cleanup EXIT

truncate -s 64M "$T/disk.img"
LOOP=$(losetup --find --show "$T/disk.img" 2>/dev/null) ||
  it_skip "no loop device available here"
it_log "loop device $LOOP over \$T/disk.img"
it_write_pattern "$LOOP" 0x11 0 1M
it_define "$D" "$LOOP"
it_start "$D"

# --- 1. no overlay_dir: refused, nothing in /dev --------------------------------------
IT_OVERLAY_DIR="" it_mount
it_wait_dom "$D"
S="$MNT/$D/vda/snapshots"
it_assert_eq "$LOOP" "$(it_domblk "$D" vda)" "the disk is the loop device"
devdir=$(dirname "$LOOP")
before_blk=$(it_virsh domblklist "$D")
it_expect_errno EROFS mkdir "$S/s1"
it_assert_eq "$before_blk" "$(it_virsh domblklist "$D")" "domblklist unchanged"
it_assert_eq "" "$(it_snapshot_names "$D")" "libvirt has no snapshot"
it_assert_eq "" "$(it_snapshots "$D" vda)" "ls snapshots/ is empty"
for f in "$devdir/$D.vda.s1.qcow2" "$devdir/$D.vda.s1.qcow2.tmp"; do
  [ ! -e "$f" ] || it_fail "$f was created"
done
found=$(find /dev -maxdepth 3 -name "$IT_PREFIX*" 2>/dev/null)
it_assert_eq "" "$found" "nothing named $IT_PREFIX* under /dev"
grep -q "mkdir $D/vda/snapshots/s1 refused (Read-only file system): .*-o overlay_dir" "$IT_LOG" ||
  it_fail "no log line naming -o overlay_dir for the refused mkdir"
it_log "ok: the log line names -o overlay_dir"
err=$(sed -n 's/^error: *//p' "$MNT/$D/vda/job")
it_assert_contains "$err" "-o overlay_dir" "job's error names -o overlay_dir"
it_unmount || it_fail "unmount"

# --- 2. with overlay_dir it works -----------------------------------------------------
it_mount
it_wait_dom "$D"
mkdir "$S/s1" || it_fail "mkdir snapshots/s1 with overlay_dir"
top=$(it_domblk "$D" vda)
it_assert_eq "$T/overlays" "$(dirname "$top")" "the overlay is in overlay_dir"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "ls snapshots/ shows s1"
it_assert_eq "$(printf '%s\n' "$top" "$LOOP")" "$(it_chain "$top")" "qemu-img: the overlay backs onto the device"
it_guest_write "$D" 0x22 1M 1M
it_check_pattern "$top" 0x11 0 1M
it_check_pattern "$top" 0x22 1M 1M
rmdir "$S/s1" || it_fail "rmdir snapshots/s1"
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of s1 completed"
it_assert_eq "$LOOP" "$(it_domblk "$D" vda)" "the disk is the loop device again"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_assert_eq "" "$(it_snapshots "$D" vda)" "ls snapshots/ is empty again"
it_check_pattern "$LOOP" 0x11 0 1M
it_check_pattern "$LOOP" 0x22 1M 1M
it_check_pattern "$LOOP" 0x00 2M 1M
