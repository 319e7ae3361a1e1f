#!/usr/bin/env bash
# rmdir_domain_partial.sh — issue 10 §3.4: a domain-level rmdir whose merge
# fails on one disk. Domain with vda (base in $T) and vdb, whose base sits
# on a 96 MiB filesystem (ext4 on a loop device, or tmpfs where there is
# none: as full_base.sh) that is filled until 8 MiB remain; s1 is one
# libvirt snapshot of both disks, the guest (HMP qemu-io) wrote 24 MiB
# into vdb's overlay. `rmdir <dom>/snapshots/s1`:
#
#  - is accepted; vdb's active commit fails (no space), vda's, held in
#    ready until then, pivots: `cat <dom>/wait` ends `partial`, members
#    `vda done, vdb failed (partial)`, `error:` names vdb;
#  - <dom>/snapshots/s1/info says `state: partially-merged`, `remaining:
#    vdb`; s1 stays in <dom>/snapshots/ and vdb/snapshots/, not in vda's;
#    libvirt's s1 names vdb only; vda is on its base, vdb on its overlay;
#    the guest keeps running and writing;
#  - the filler deleted, `rmdir <dom>/snapshots/s1` again merges vdb only
#    and completes: both disks on their bases, s1 gone everywhere, every
#    pattern reads back, the invariants hold (tests/fault/lib.sh).
set -euo pipefail
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"

fault_init
BFS="$T/basefs"
BFS_MOUNTED=0
LOOP=""

# At exit, before lib.sh's clean-up: the domain (its QEMU has the base
# open), then the small filesystem and its loop device.
rp_cleanup() {
  local dom
  for dom in "${IT_DOMAINS[@]}"; do
    it_virsh destroy "$dom" >/dev/null 2>&1
  done
  if [ "$BFS_MOUNTED" -eq 1 ]; then
    umount "$BFS" 2>/dev/null || umount -l "$BFS" ||
      echo "[$IT_NAME] cannot unmount $BFS" >&2
  fi
  [ -z "$LOOP" ] || losetup -d "$LOOP" ||
    echo "[$IT_NAME] cannot detach $LOOP" >&2
}
fault_on_exit rp_cleanup

mkdir -m 0755 "$BFS"
# before the domain starts: QEMU runs in a copy of the host's mount namespace
if command -v mkfs.ext4 >/dev/null 2>&1 && command -v losetup >/dev/null 2>&1 &&
  truncate -s 96M "$T/basefs.img" && mkfs.ext4 -q -F -m 0 "$T/basefs.img" &&
  LOOP=$(losetup --find --show "$T/basefs.img" 2>/dev/null); then
  mount -t ext4 "$LOOP" "$BFS" || it_fail "mount $LOOP on $BFS"
  BFS_KIND="ext4 on $LOOP"
else
  LOOP=""
  mount -t tmpfs -o size=96m "cfsfault-$$" "$BFS" || it_fail "mount tmpfs on $BFS"
  BFS_KIND="tmpfs (no loop device here)"
fi
BFS_MOUNTED=1
chmod 0755 "$BFS"
mkdir -m 0755 "$BFS/fill"
FAULT_IMAGE_DIRS+=("$BFS")
mkdir -p "$T/overlays" && chmod 0755 "$T/overlays"

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

DOM="$IT_PREFIX-rmdompart"
VDA="$FAULT_IMAGES/vda.qcow2"
VDB="$BFS/vdb.qcow2"
it_make_image "$VDA" 128M
it_make_image "$VDB" 128M
it_write_pattern "$VDA" 0x11 0 1M
it_write_pattern "$VDB" 0x21 0 1M
it_define "$DOM" "$VDA" "$VDB"
it_start "$DOM"
it_mount
it_wait_dom "$DOM"
it_log "vdb's base on $BFS_KIND, $(free_bytes "$BFS") bytes free"

A1="$T/overlays/vda.s1.qcow2"
B1="$T/overlays/vdb.s1.qcow2"
it_virsh snapshot-create-as "$DOM" s1 --disk-only --atomic \
  --diskspec "vda,file=$A1" --diskspec "vdb,file=$B1" >/dev/null ||
  it_fail "virsh snapshot-create-as s1"
snaps_are() { [ "$(it_ls "$1")" = "$2" ]; }
it_wait_until 20 "<dom>/snapshots/ shows s1" snaps_are "$MNT/$DOM/snapshots" s1
it_guest_write "$DOM" 0x12 1M 2M virtio-disk0
it_guest_write "$DOM" 0x22 8M 24M virtio-disk1
it_guest_write "$DOM" 0x23 0 4K virtio-disk1

# --- the merge of vdb fails, vda's completes ----------------------------------------
fill_to $((8 * 1024 * 1024))
rmdir "$MNT/$DOM/snapshots/s1" || it_fail "rmdir <dom>/snapshots/s1 was refused (the space runs out later)"
out=$(timeout 120 cat "$MNT/$DOM/wait") || it_fail "cat <dom>/wait failed or timed out"
printf '%s\n' "$out" >&2
it_assert_eq partial "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "the group ends partial"
grep -q '^members: *vda done, vdb failed' <<<"$out" || it_fail "members: not vda done, vdb failed"
it_log "ok: vda done, vdb failed"
it_assert_eq vdb "$(sed -n 's/^remaining: *//p' <<<"$out")" "<dom>/job: vdb remains"
it_assert_contains "$(sed -n 's/^error: *//p' <<<"$out")" "vdb: " "the group's error names vdb"
it_assert_contains "$(sed -n 's/^error: *//p' <<<"$out")" "(no space left on the filesystem of $VDB)" "the group's error says why"

info=$(cat "$MNT/$DOM/snapshots/s1/info")
it_log "<dom>/snapshots/s1/info:"$'\n'"$info"
it_assert_eq partially-merged "$(sed -n 's/^state: *//p' <<<"$info" | head -1)" "info: state partially-merged"
it_assert_eq vdb "$(sed -n 's/^remaining: *//p' <<<"$info")" "info: remaining vdb"
it_assert_eq partially-merged "$(jq -r .state "$MNT/$DOM/snapshots/s1/info.json")" "info.json: state partially-merged"
it_assert_eq vdb "$(jq -r '.remaining | join(" ")' "$MNT/$DOM/snapshots/s1/info.json")" "info.json: remaining [vdb]"
it_assert_eq s1 "$(it_ls "$MNT/$DOM/snapshots")" "s1 stays in <dom>/snapshots/"
it_assert_eq s1 "$(it_snapshots "$DOM" vdb)" "s1 stays in vdb/snapshots/"
it_assert_eq "" "$(it_snapshots "$DOM" vda)" "s1 left vda/snapshots/"
it_assert_eq "$VDA" "$(it_domblk "$DOM" vda)" "vda pivoted to its base"
it_assert_eq "$B1" "$(it_domblk "$DOM" vdb)" "vdb still runs on its overlay"
test ! -e "$A1" || it_fail "vda's merged overlay was not deleted"
disks=$(it_virsh snapshot-dumpxml "$DOM" s1 | python3 -c '
import sys, xml.etree.ElementTree as ET
for d in ET.parse(sys.stdin).getroot().find("disks"):
    print(d.get("name"), d.get("snapshot"))')
it_assert_eq "vda no"$'\n'"vdb external" "$disks" "libvirt's s1 names vdb only"
it_assert_eq running "$(it_state "$DOM")" "the guest keeps running"
it_guest_write "$DOM" 0x24 40M 1M virtio-disk1
it_guest_write "$DOM" 0x13 40M 1M virtio-disk0
it_assert_eq "group partial vdb" \
  "$(jq -r 'select(.type == "group") | "\(.type) \(.phase) \(.remaining | join(" "))"' "$T/state/journal")" \
  "the journal keeps the group, partial, vdb remaining"

# --- room again: rmdir again merges vdb only ------------------------------------------
rm -f "$BFS/fill/filler"
it_log "filler deleted: $(free_bytes "$BFS") bytes free"
rmdir "$MNT/$DOM/snapshots/s1" || it_fail "rmdir <dom>/snapshots/s1 again"
out=$(timeout 120 cat "$MNT/$DOM/wait") || it_fail "cat <dom>/wait failed or timed out"
printf '%s\n' "$out" >&2
it_assert_eq completed "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "rmdir again completes"
grep -q '^members: *vda done, vdb done$' <<<"$out" || it_fail "members: not both done"
it_assert_eq - "$(sed -n 's/^remaining: *//p' <<<"$out")" "nothing remains"
it_assert_eq "$VDB" "$(it_domblk "$DOM" vdb)" "vdb pivoted to its base"
it_assert_eq "" "$(it_ls "$MNT/$DOM/snapshots")" "<dom>/snapshots/ is empty"
it_assert_eq "" "$(it_snapshot_names "$DOM")" "virsh snapshot-list is empty"
test ! -e "$B1" || it_fail "vdb's merged overlay was not deleted"
fault_check_invariants "$DOM" vda "$DOM" vdb
it_guest_write "$DOM" 0x25 50M 1M virtio-disk1

it_destroy "$DOM"
it_check_pattern "$VDA" 0x11 0 1M
it_check_pattern "$VDA" 0x12 1M 2M
it_check_pattern "$VDA" 0x13 40M 1M
it_check_pattern "$VDB" 0x23 0 4K
it_check_pattern "$VDB" 0x21 4K 1020K
it_check_pattern "$VDB" 0x22 8M 24M
it_check_pattern "$VDB" 0x24 40M 1M
it_check_pattern "$VDB" 0x25 50M 1M
rc=0
out=$(qemu-img check -U "$VDB" 2>&1) || rc=$?
case $rc in
  0) it_log "ok: qemu-img check: vdb's base is clean" ;;
  3) it_log "ok: qemu-img check: vdb's base has only leaked clusters" ;;
  *) it_fail "qemu-img check of vdb's base (exit $rc): $out" ;;
esac
