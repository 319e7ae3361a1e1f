#!/usr/bin/env bash
# rmdir_domain.sh — issue 10 §3: rmdir of <dom>/snapshots/NAME on a domain
# with vda and vdb (a domain without an OS; the guest's writes are HMP
# qemu-io on each disk's virtio backend). NAME is one libvirt snapshot of
# both disks (virsh snapshot-create-as --disk-only --atomic).
#
#   1. the active snapshot, running: one active commit per disk, limited to
#      1 MiB/s; vda's overlay is small, so vda is ready first and holds
#      (`state: ready (held: group)`, <dom>/job `vda ready, vdb running`)
#      while the guest keeps writing to both disks; vdb let go: both pivot
#      in one pass, `cat <dom>/wait` says completed, both disks are on their
#      base, both overlays are gone, libvirt's snapshot is gone;
#   2. an intermediate snapshot, running: one commit per disk, no pivot;
#   3. shut off: one offline merge per disk;
# and every pattern written into every layer (before the snapshots, into
# the overlays, during the merges) reads back from each disk's image with
# qemu-io.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-rmdom"
vda="$T/vda.qcow2"
vdb="$T/vdb.qcow2"
it_make_image "$vda" 256M
it_make_image "$vdb" 256M
it_write_pattern "$vda" 0x11 0 1M
it_write_pattern "$vdb" 0x21 0 1M
it_define "$D" "$vda" "$vdb"
it_start "$D"
it_mount_slow
it_wait_dom "$D"

# snap NAME — one libvirt snapshot of both disks, overlays in $T
snap() {
  it_virsh snapshot-create-as "$D" "$1" --disk-only --atomic \
    --diskspec "vda,file=$T/vda.$1.qcow2" --diskspec "vdb,file=$T/vdb.$1.qcow2" >/dev/null ||
    it_fail "virsh snapshot-create-as $1"
}
snaps_are() { [ "$(it_snapshots "$D" "$1")" = "$2" ]; }
dom_snaps_are() { [ "$(it_ls "$MNT/$D/snapshots")" = "$2" ]; }
dom_job_has() { grep -q "$1" "$MNT/$D/job"; }
wait_dom() {
  local out
  out=$(timeout "${1:-300}" cat "$MNT/$D/wait") || it_fail "cat $D/wait failed or timed out"
  printf '%s\n' "$out"
}

# --- 1. the active snapshot of both disks, running -------------------------------
snap s1
it_wait_until 20 "vda/snapshots/ shows s1" snaps_are vda s1
it_wait_until 20 "vdb/snapshots/ shows s1" snaps_are vdb s1
it_wait_until 20 "<dom>/snapshots/ shows s1" dom_snaps_are x s1
it_guest_write "$D" 0x12 1M 1M virtio-disk0
# 96 MiB into vdb's overlay: at 1 MiB/s its commit runs a minute after
# QEMU's first burst; vda's 1 MiB is ready at once
it_guest_write "$D" 0x22 1M 96M virtio-disk1

rmdir "$MNT/$D/snapshots/s1" || it_fail "rmdir $D/snapshots/s1"
it_assert_eq "" "$(it_ls "$MNT/$D/snapshots")" "s1 left <dom>/snapshots/ as soon as rmdir returned"
it_assert_eq "" "$(it_snapshots "$D" vda)" "s1 left vda/snapshots/"
it_assert_eq "" "$(it_snapshots "$D" vdb)" "s1 left vdb/snapshots/"
it_wait_until 60 "vda's commit is ready and held" dom_job_has '^members: *vda ready, vdb running'
job=$(cat "$MNT/$D/job")
it_log "<dom>/job while vda holds:"$'\n'"$job"
it_assert_contains "$job" "group:     rmdir s1" "<dom>/job names the group"
grep -q '^state: *ready (held: group)$' "$MNT/$D/vda/job" || it_fail "vda's job does not say it is held: $(cat "$MNT/$D/vda/job")"
it_log "ok: vda's job says ready (held: group)"
it_assert_eq "$T/vda.s1.qcow2" "$(it_domblk "$D" vda)" "vda has not pivoted while vdb runs"
it_assert_eq "running" "$(jq -r .group.state "$MNT/$D/job.json")" "job.json: the group runs"
it_assert_eq "vda vdb" "$(jq -r '.group.remaining | join(" ")' "$MNT/$D/job.json")" "job.json: both remain"
# the guest writes to both disks while one merge holds and the other runs
it_guest_write "$D" 0x13 200M 1M virtio-disk0
it_guest_write "$D" 0x23 200M 1M virtio-disk1
it_guest_write "$D" 0x14 0 4K virtio-disk0
it_guest_write "$D" 0x24 0 4K virtio-disk1
it_assert_eq "running" "$(it_job_field "$D" vdb state)" "vdb's commit still runs after the guest's writes"
it_unthrottle "$D" vdb

out=$(wait_dom 300)
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "<dom>/wait: the group completed"
grep -q '^members: *vda done, vdb done$' <<<"$out" || it_fail "<dom>/wait: not both disks done"
it_assert_eq "$vda" "$(it_domblk "$D" vda)" "vda pivoted to its base"
it_assert_eq "$vdb" "$(it_domblk "$D" vdb)" "vdb pivoted to its base"
[ ! -e "$T/vda.s1.qcow2" ] || it_fail "vda's merged overlay still exists"
[ ! -e "$T/vdb.s1.qcow2" ] || it_fail "vdb's merged overlay still exists"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer lists s1"
it_assert_eq "" "$(it_ls "$MNT/$D/snapshots")" "<dom>/snapshots/ is empty"
it_check_chain "$D" vda "$vda"
it_check_chain "$D" vdb "$vdb"
it_assert_eq "0" "$(wc -l <"$T/state/journal")" "the journal is empty"

# --- 2. an intermediate snapshot, running ----------------------------------------
snap s2
it_guest_write "$D" 0x15 2M 1M virtio-disk0
it_guest_write "$D" 0x25 2M 1M virtio-disk1
snap s3
it_guest_write "$D" 0x16 3M 1M virtio-disk0
it_guest_write "$D" 0x26 3M 1M virtio-disk1
it_wait_until 20 "<dom>/snapshots/ shows s2 s3" dom_snaps_are x "s2 s3"
rmdir "$MNT/$D/snapshots/s2" || it_fail "rmdir $D/snapshots/s2"
it_guest_write "$D" 0x17 4M 1M virtio-disk0
it_guest_write "$D" 0x27 4M 1M virtio-disk1
out=$(wait_dom 300)
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "the group of s2 completed"
grep -q '^  type: *commit$' <<<"$out" || it_fail "the members were not plain commits"
it_assert_eq "$T/vda.s3.qcow2" "$(it_domblk "$D" vda)" "vda still runs on s3"
it_assert_eq "$T/vdb.s3.qcow2" "$(it_domblk "$D" vdb)" "vdb still runs on s3"
it_check_chain "$D" vda "$T/vda.s3.qcow2" "$vda"
it_check_chain "$D" vdb "$T/vdb.s3.qcow2" "$vdb"
if [ -e "$T/vda.s2.qcow2" ] || [ -e "$T/vdb.s2.qcow2" ]; then
  it_fail "s2's overlays still exist"
fi
it_assert_eq "s3" "$(it_snapshot_names "$D")" "libvirt lists s3 only"
it_assert_eq "s3" "$(it_ls "$MNT/$D/snapshots")" "<dom>/snapshots/ lists s3 only"

# --- 3. shut off: offline merges --------------------------------------------------
it_destroy "$D"
it_wait_until 20 "chainfs sees the domain shut off" grep -q '^state: *shutoff$' "$MNT/$D/vda/chain"
rmdir "$MNT/$D/snapshots/s3" || it_fail "rmdir $D/snapshots/s3 (shut off)"
out=$(wait_dom 300)
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "the group of s3 completed (shut off)"
grep -q '^  type: *offline-commit$' <<<"$out" || it_fail "the members were not offline merges"
it_assert_eq "$vda" "$(it_domblk "$D" vda)" "vda is on its base again"
it_assert_eq "$vdb" "$(it_domblk "$D" vdb)" "vdb is on its base again"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list is empty"
it_assert_eq "0" "$(wc -l <"$T/state/journal")" "the journal is empty"

# --- every layer's data, from each disk's image ------------------------------------
it_check_pattern "$vda" 0x14 0 4K
it_check_pattern "$vda" 0x11 4K 1020K
it_check_pattern "$vda" 0x12 1M 1M
it_check_pattern "$vda" 0x15 2M 1M
it_check_pattern "$vda" 0x16 3M 1M
it_check_pattern "$vda" 0x17 4M 1M
it_check_pattern "$vda" 0x13 200M 1M
it_check_pattern "$vdb" 0x24 0 4K
it_check_pattern "$vdb" 0x21 4K 1020K
it_check_pattern "$vdb" 0x25 2M 1M
it_check_pattern "$vdb" 0x26 3M 1M
it_check_pattern "$vdb" 0x27 4M 1M
it_check_pattern "$vdb" 0x22 1M 1M
it_check_pattern "$vdb" 0x22 5M 92M
it_check_pattern "$vdb" 0x23 200M 1M
