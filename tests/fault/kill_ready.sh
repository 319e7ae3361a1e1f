#!/usr/bin/env bash
# kill_ready.sh — kill -9 the daemon when the active commit is ready (every
# byte copied, the mirror in sync) but not yet pivoted: `pivot manual` in the
# disk's ctl holds the pivot. The setting is journaled: the next chainfs on
# the same state_dir still holds it (the job stays ready, mirroring), and
# `pivot` in ctl releases it: the base is the active image again, the
# overlay mkdir made is deleted and libvirt's snapshot metadata for it is
# gone. Guest writes while ready and while no daemon runs are mirrored,
# and read back from the base.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-kready"
base="$FAULT_IMAGES/base.qcow2"
it_make_image "$base" 128M
it_write_pattern "$base" 0x11 0 4M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"

# The snapshot is chainfs's own (libvirt metadata, overlay in overlay_dir).
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
top=$(it_domblk "$D" vda)
[ "$top" != "$base" ] || it_fail "mkdir did not change the active layer"
it_assert_eq "s1" "$(it_snapshot_names "$D")" "virsh snapshot-list names s1"
it_guest_write "$D" 0x22 2M 8M

it_ctl "$D" vda "pivot manual" || it_fail "echo 'pivot manual' > ctl"
it_assert_contains "$(cat "$MNT/$D/vda/ctl")" "manual" "ctl shows the manual pivot"
rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir snapshots/s1"
fault_wait_state "$D" vda ready 60
it_guest_write "$D" 0x33 20M 1M
job=$(cat "$MNT/$D/vda/job")
it_log "job before the kill:"$'\n'"$job"
it_assert_eq "ready" "$(sed -n 's/^state: *//p' <<<"$job")" "job says ready"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "not pivoted while held"

fault_kill_daemon
it_guest_write "$D" 0x44 30M 1M
[ -n "$(fault_libvirt_job "$D" vda)" ] ||
  it_fail "libvirt's job vanished while no daemon ran: $(it_virsh dumpxml "$D" | grep -A2 -E '<(mirror|source)')"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "no pivot while no daemon runs"

fault_remount
it_wait_dom "$D"
fault_wait_state "$D" vda ready 60
# the hold was journaled: the restarted daemon keeps the job ready
sleep 3
it_assert_eq "ready" "$(fault_job_state "$D" vda)" "still ready after the restart (pivot manual held)"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "the restarted daemon did not pivot while held"
it_guest_write "$D" 0x4a 34M 1M
it_ctl "$D" vda pivot || it_fail "echo pivot > ctl"
out=$(it_wait_job "$D" vda 60)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the restarted daemon completed the merge"
fault_log_has "recovery: $D/vda: merge of s1 (still running; following it|had finished; cleaned up)" ||
  it_fail "no recovery line for the merge in the log"
it_log "ok: recovery logged: $(grep -E "recovery: $D/vda" "$IT_LOG" | tail -n 1)"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "pivoted: the base is the active image"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_log "ok: the merged overlay file is deleted"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer names s1"
it_assert_eq "" "$(it_snapshots "$D" vda)" "snapshots/ is empty"
it_guest_write "$D" 0x55 40M 1M
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$base" \
  "0x11 0 2M" "0x22 2M 8M" "0x33 20M 1M" "0x44 30M 1M" "0x4a 34M 1M" "0x55 40M 1M"
