#!/usr/bin/env bash
# multidisk.sh — one libvirt snapshot covering two disks (made outside
# chainfs: virsh snapshot-create-as --disk-only --atomic with vda and vdb)
# and a merge of one disk's layer:
#   1. rmdir vda/snapshots/sA merges vda's layer only: libvirt's snapshot
#      sA stays (snapshot-list, snapshot-current) and now names vdb's
#      overlay only (vda snapshot='no'); vdb's layer keeps its name sA in
#      vdb/snapshots/;
#   2. what chainfs caches of sA's disks is not the old list: a new
#      snapshot sB whose vda overlay reuses the path sA named for vda is
#      named sB in vda/snapshots/; its rmdir removes sB from libvirt;
#   3. rmdir vdb/snapshots/sA merges the last disk of sA: libvirt no
#      longer lists sA;
#   4. the same with the domain shut off (offline merges): sC over both
#      disks stays for vdb after vda's layer is merged, goes after vdb's;
# the patterns written before and by the guest into each layer read back.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-multidisk"
vda="$T/vda.qcow2"
vdb="$T/vdb.qcow2"
it_make_image "$vda" 64M
it_make_image "$vdb" 64M
it_write_pattern "$vda" 0x11 0 1M
it_write_pattern "$vdb" 0x21 0 1M
it_define "$D" "$vda" "$vdb"
it_start "$D"
it_mount
it_wait_dom "$D"

it_virsh snapshot-create-as "$D" sA --disk-only --atomic \
  --diskspec "vda,file=$T/vda.sA.qcow2" --diskspec "vdb,file=$T/vdb.sA.qcow2" >/dev/null ||
  it_fail "virsh snapshot-create-as sA"
it_guest_write "$D" 0x12 1M 1M virtio-disk0
it_guest_write "$D" 0x22 1M 1M virtio-disk1
snaps_are() { [ "$(it_snapshots "$D" "$1")" = "$2" ]; }
it_wait_until 20 "vda/snapshots/ shows sA" snaps_are vda sA
it_wait_until 20 "vdb/snapshots/ shows sA" snaps_are vdb sA

# --- 1. merge vda's layer of sA -----------------------------------------------------------
rmdir "$MNT/$D/vda/snapshots/sA" || it_fail "rmdir vda/snapshots/sA"
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of vda's layer completed"
it_assert_eq "$vda" "$(it_domblk "$D" vda)" "vda is on its base again"
[ ! -e "$T/vda.sA.qcow2" ] || it_fail "vda's merged overlay still exists"
it_assert_eq "$T/vdb.sA.qcow2" "$(it_domblk "$D" vdb)" "vdb still runs on its sA overlay"
it_assert_eq "sA" "$(it_snapshot_names "$D")" "virsh snapshot-list still lists sA"
it_assert_eq "sA" "$(it_virsh snapshot-current "$D" --name | sed '/^$/d')" "sA is still libvirt's current snapshot"
disks=$(it_virsh snapshot-dumpxml "$D" sA | python3 -c '
import sys, xml.etree.ElementTree as ET
for d in ET.parse(sys.stdin).getroot().find("disks"):
    s = d.find("source")
    print(d.get("name"), d.get("snapshot"), s.get("file") if s is not None else "-")')
it_assert_eq "vda no -"$'\n'"vdb external $T/vdb.sA.qcow2" "$disks" "sA's metadata names vdb's overlay only"
it_wait_until 20 "vdb/snapshots/ still shows sA" snaps_are vdb sA
it_log "ok: vdb's layer keeps its name sA"
it_assert_eq "" "$(it_snapshots "$D" vda)" "vda/snapshots/ is empty"

# --- 2. no stale disk list: a new layer at sA's old vda path is sB's ------------------
it_virsh snapshot-create-as "$D" sB --disk-only --atomic \
  --diskspec "vda,file=$T/vda.sA.qcow2" --diskspec vdb,snapshot=no >/dev/null ||
  it_fail "virsh snapshot-create-as sB"
it_guest_write "$D" 0x13 2M 1M virtio-disk0
it_wait_until 20 "vda/snapshots/ shows sB" snaps_are vda sB
it_log "ok: the layer at sA's old vda path is named sB"
it_assert_eq "sA" "$(it_snapshots "$D" vdb)" "vdb/snapshots/ still shows sA"
rmdir "$MNT/$D/vda/snapshots/sB" || it_fail "rmdir vda/snapshots/sB"
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of sB completed"
it_assert_eq "sA" "$(it_snapshot_names "$D")" "libvirt forgot sB (its only disk merged), kept sA"

# --- 3. merge vdb's layer of sA: the last one -----------------------------------------
rmdir "$MNT/$D/vdb/snapshots/sA" || it_fail "rmdir vdb/snapshots/sA"
out=$(it_wait_job "$D" vdb)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of vdb's layer completed"
it_assert_eq "$vdb" "$(it_domblk "$D" vdb)" "vdb is on its base again"
[ ! -e "$T/vdb.sA.qcow2" ] || it_fail "vdb's merged overlay still exists"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer lists sA"
it_assert_eq "" "$(it_snapshots "$D" vdb)" "vdb/snapshots/ is empty"

it_check_pattern "$vda" 0x11 0 1M
it_check_pattern "$vda" 0x12 1M 1M
it_check_pattern "$vda" 0x13 2M 1M
it_check_pattern "$vdb" 0x21 0 1M
it_check_pattern "$vdb" 0x22 1M 1M

# --- 4. shut off: offline merges -------------------------------------------------------
it_destroy "$D"
it_wait_until 20 "chainfs sees the domain shut off" grep -q '^state: *shutoff$' "$MNT/$D/vda/chain"
it_virsh snapshot-create-as "$D" sC --disk-only --atomic \
  --diskspec "vda,file=$T/vda.sC.qcow2" --diskspec "vdb,file=$T/vdb.sC.qcow2" >/dev/null ||
  it_fail "virsh snapshot-create-as sC (shut off)"
it_write_pattern "$T/vda.sC.qcow2" 0x14 3M 1M
it_write_pattern "$T/vdb.sC.qcow2" 0x24 3M 1M
it_wait_until 20 "vda/snapshots/ shows sC" snaps_are vda sC
it_wait_until 20 "vdb/snapshots/ shows sC" snaps_are vdb sC
rmdir "$MNT/$D/vda/snapshots/sC" || it_fail "rmdir vda/snapshots/sC (shut off)"
out=$(it_wait_job "$D" vda)
it_assert_eq "offline-commit completed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vda/job.json")" "the offline merge of vda's layer completed"
it_assert_eq "$vda" "$(it_domblk "$D" vda)" "vda is on its base again"
it_assert_eq "sC" "$(it_snapshot_names "$D")" "virsh snapshot-list still lists sC"
it_wait_until 20 "vdb/snapshots/ still shows sC" snaps_are vdb sC
it_log "ok: vdb's layer keeps its name sC"
rmdir "$MNT/$D/vdb/snapshots/sC" || it_fail "rmdir vdb/snapshots/sC (shut off)"
out=$(it_wait_job "$D" vdb)
it_assert_eq "offline-commit completed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vdb/job.json")" "the offline merge of vdb's layer completed"
it_assert_eq "$vdb" "$(it_domblk "$D" vdb)" "vdb is on its base again"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer lists sC"
it_assert_eq "" "$(it_snapshots "$D" vdb)" "vdb/snapshots/ is empty"
it_check_pattern "$vda" 0x14 3M 1M
it_check_pattern "$vdb" 0x24 3M 1M
it_check_pattern "$vda" 0x11 0 1M
it_check_pattern "$vdb" 0x21 0 1M
