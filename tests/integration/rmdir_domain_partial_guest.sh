#!/usr/bin/env bash
# rmdir_domain_partial_guest.sh — issue 10 acceptance "one disk's merge made
# to fail": the real test guest (guest_lib.sh) with vda's image on a small
# filesystem (ext4 on a loop device, or tmpfs: as tests/fault/full_base.sh)
# and vdb's in $T. s1 is a libvirt snapshot of both disks; the guest's
# files go to vda's overlay; the small filesystem is filled until 64 KiB
# remain. `rmdir <dom>/snapshots/s1`:
#
#  - vda's commit fails (no room in its base), vdb's, held in ready until
#    then, pivots: the group ends `partial`, <dom>/snapshots/s1/info says
#    `state: partially-merged`, `remaining: vda`; the guest keeps writing;
#  - room again (the filler deleted), rmdir again merges vda only and
#    completes: both disks on their bases;
#
# and after `virsh destroy` both images are fsck-clean, every file the
# guest reported is intact and the lockstep seqs agree (guest_check).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/guest_lib.sh
. "$(dirname "$0")/guest_lib.sh"

it_init
guest_init

BFS="$T/basefs"
BFS_MOUNTED=0
LOOP=""
# after lib.sh's clean-up destroyed the domain (its QEMU holds vda's base
# open) and unmounted chainfs: the small filesystem and its loop device
rg_cleanup() {
  if [ "$BFS_MOUNTED" -eq 1 ]; then
    umount "$BFS" 2>/dev/null || umount -l "$BFS" || echo "[$IT_NAME] cannot unmount $BFS" >&2
  fi
  [ -z "$LOOP" ] || losetup -d "$LOOP" || echo "[$IT_NAME] cannot detach $LOOP" >&2
  return 0
}
IT_CLEANUP_HOOKS+=(rg_cleanup)

mkdir -m 0755 "$BFS"
if command -v losetup >/dev/null 2>&1 &&
  truncate -s 96M "$T/basefs.img" && mkfs.ext4 -q -F -m 0 "$T/basefs.img" &&
  LOOP=$(losetup --find --show "$T/basefs.img" 2>/dev/null); then
  mount -t ext4 "$LOOP" "$BFS" || it_fail "mount $LOOP on $BFS"
  BFS_KIND="ext4 on $LOOP"
else
  LOOP=""
  mount -t tmpfs -o size=96m "cfsguest-$$" "$BFS" || it_fail "mount tmpfs on $BFS"
  BFS_KIND="tmpfs (no loop device here)"
fi
BFS_MOUNTED=1
chmod 0755 "$BFS"
mkdir -m 0755 "$BFS/fill"

free_bytes() { stat -f -c '%a %S' "$1" | awk '{ printf "%d\n", $1 * $2 }'; }
fill_to() {
  local now
  rm -f "$BFS/fill/filler"
  sync -f "$BFS"
  now=$(free_bytes "$BFS")
  [ "$now" -gt "$1" ] || it_fail "only $now bytes free on $(it_short "$BFS") before filling"
  fallocate -l $((now - $1)) "$BFS/fill/filler" || it_fail "fallocate $BFS/fill/filler"
  sync -f "$BFS"
  it_log "filled $(it_short "$BFS"): $(free_bytes "$BFS") bytes free"
}

D=$IT_PREFIX-rmdompg
vda=$BFS/vda.qcow2
vdb=$T/vdb.qcow2
guest_disk "$vda"
guest_disk "$vdb"
guest_define "$D" "$vda" "$vdb"
guest_start "$D"
it_mount
it_wait_dom "$D"
it_log "vda's image on $BFS_KIND, $(free_bytes "$BFS") bytes free"

it_virsh snapshot-create-as "$D" s1 --disk-only --atomic \
  --diskspec "vda,file=$T/vda.s1.qcow2" --diskspec "vdb,file=$T/vdb.s1.qcow2" >/dev/null ||
  it_fail "virsh snapshot-create-as s1"
it_log "snapshot s1 of vda and vdb taken at file $(guest_last_n "$D")"
# every new 4 KiB file takes a new cluster in vda's overlay, which the
# commit must allocate in vda's base
guest_wait_more "$D" 30 120
fill_to 65536

# --- vda's merge fails, vdb's completes ---------------------------------------------
rmdir "$MNT/$D/snapshots/s1" || it_fail "rmdir $D/snapshots/s1"
out=$(timeout 300 cat "$MNT/$D/wait") || it_fail "cat $D/wait failed or timed out"
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq partial "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "the group ends partial"
grep -q '^members: *vda failed.*, vdb done$' <<<"$out" || it_fail "members: not vda failed, vdb done"
it_assert_eq vda "$(sed -n 's/^remaining: *//p' <<<"$out")" "vda remains"
info=$(cat "$MNT/$D/snapshots/s1/info")
it_log "<dom>/snapshots/s1/info:"$'\n'"$info"
it_assert_eq partially-merged "$(sed -n 's/^state: *//p' <<<"$info" | head -1)" "info: partially-merged"
it_assert_eq vda "$(sed -n 's/^remaining: *//p' <<<"$info")" "info: remaining vda"
it_assert_eq "$T/vda.s1.qcow2" "$(it_domblk "$D" vda)" "vda still runs on its overlay"
it_assert_eq "$vdb" "$(it_domblk "$D" vdb)" "vdb pivoted to its base"
it_assert_eq running "$(it_state "$D")" "the guest keeps running"
guest_wait_more "$D" 3

# --- room again: rmdir again merges vda ----------------------------------------------
rm -f "$BFS/fill/filler"
it_log "filler deleted: $(free_bytes "$BFS") bytes free"
rmdir "$MNT/$D/snapshots/s1" || it_fail "rmdir $D/snapshots/s1 again"
out=$(timeout 300 cat "$MNT/$D/wait") || it_fail "cat $D/wait failed or timed out"
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq completed "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "rmdir again completes"
grep -q '^members: *vda done, vdb done$' <<<"$out" || it_fail "members: not both done"
it_assert_eq "$vda" "$(it_domblk "$D" vda)" "vda pivoted to its base"
it_assert_eq "" "$(it_ls "$MNT/$D/snapshots")" "<dom>/snapshots/ is empty"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list is empty"
guest_wait_more "$D" 3

guest_destroy "$D"
guest_check "$D" "$vda" "$vdb"
it_log "guest_check: $(guest_last_n "$D") reported files intact, seqs ${GUEST_SEQS[*]}"
