#!/usr/bin/env bash
# unmount_midmerge.sh — `fusermount3 -u` while an active merge of a mkdir'd
# snapshot is copying (held at 1 MiB/s): the daemon exits 0 and leaves the
# job to QEMU and its journal entry open. Mounted again on the same
# state_dir, chainfs follows the merge to its end: pivot, overlay deleted,
# libvirt's snapshot metadata dropped, journal empty. Every pattern, in
# each layer before and from the guest during the merge, reads back.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-umnt"
base="$FAULT_IMAGES/base.qcow2"
mid="$FAULT_IMAGES/mid.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 4M
# mid: a layer made by hand (its name comes from the file name), with the
# bulk of the data, so that the snapshot chainfs takes on top of it holds
# only what the guest writes.
it_make_image "$mid" 256M "$base"
it_write_pattern "$mid" 0x22 2M 2M
it_define "$D" "$mid"
it_start "$D"
it_mount_slow
it_wait_dom "$D"

mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
top=$(it_domblk "$D" vda)
it_assert_eq "mid s1" "$(it_snapshots "$D" vda)" "snapshots/ shows mid s1"
# 64 MiB written by the guest into the new overlay: at 1 MiB/s a minute.
it_guest_write "$D" 0x33 3M 64M

it_rmdir_throttled "$D" vda s1
it_guest_write "$D" 0x44 100M 1M
# job shows libvirt's progress once chainfs polled it (the mirror's first
# burst is copied at once), rather than after a fixed second
copied() { [ "$(it_job_field "$D" vda cur)" -gt 0 ]; }
it_wait_until 30 "job shows the merge's progress" copied
job=$(cat "$MNT/$D/vda/job")
it_log "job before the unmount:"$'\n'"$job"
it_assert_eq "running" "$(sed -n 's/^state: *//p' <<<"$job")" "the merge is copying"
[ -s "$FAULT_STATE_DIR/journal" ] || it_fail "no journal entry while the merge runs"

# The daemon must exit 0 (it_unmount checks it) and leave the job alone.
it_unmount || it_fail "unmount during the merge"
it_log "ok: unmounted mid-merge; chainfs exited 0"
[ -n "$(fault_libvirt_job "$D" vda)" ] || it_fail "the block job ended with the unmount"
[ -s "$FAULT_STATE_DIR/journal" ] || it_fail "the journal entry was closed although the merge goes on"
it_log "ok: the journal entry is still open"
it_guest_write "$D" 0x55 110M 1M

fault_remount
it_wait_dom "$D"
it_wait_until 10 "recovery follows the merge again" \
  fault_log_has "recovery: $D/vda: merge of s1 still running; following it"
it_log "ok: recovery logged: $(grep -E "recovery: $D/vda" "$IT_LOG" | tail -n 1)"
it_assert_eq "running" "$(fault_job_state "$D" vda)" "mounted again, job shows the merge running"
it_assert_eq "mid" "$(it_snapshots "$D" vda)" "s1 stays out of snapshots/"
it_guest_write "$D" 0x66 120M 1M
fault_unthrottle "$D" vda

out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge completed after the remount"
it_assert_eq "$mid" "$(it_domblk "$D" vda)" "pivoted: mid is the active layer"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_log "ok: the merged overlay file is deleted"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer names s1"
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$mid" \
  "0x11 0 2M" "0x22 2M 1M" "0x33 3M 64M" "0x44 100M 1M" "0x55 110M 1M" "0x66 120M 1M"
it_check_pattern "$base" 0x11 0 4M
