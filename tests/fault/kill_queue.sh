#!/usr/bin/env bash
# kill_queue.sh — issue 8 §3: the queue outlives the daemon. An
# intermediate merge (s1 into the base) held in its copy phase at 1 MiB/s,
# an rmdir of s3 (the active layer, not next to s1: no regroup) queued
# behind it, then kill -9 of the daemon. Restarted on the same state_dir,
# chainfs takes the queued deletion up from its journal (s3 stays hidden,
# job.json lists it), follows s1's merge to its end and then dispatches
# s3's: the chain ends as s2 on the base, both merged files are deleted,
# the journal is empty, and every pattern reads back.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-kq"
base="$FAULT_IMAGES/base.qcow2"
s1="$FAULT_IMAGES/$D.vda.s1.qcow2"
s2="$FAULT_IMAGES/$D.vda.s2.qcow2"
s3="$FAULT_IMAGES/$D.vda.s3.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 4M
it_make_image "$s1" 256M "$base"
# 128 MiB in the layer to merge: minutes at 1 MiB/s.
it_write_pattern "$s1" 0x22 2M 128M
it_make_image "$s2" 256M "$s1"
it_write_pattern "$s2" 0x33 140M 1M
it_make_image "$s3" 256M "$s2"
it_write_pattern "$s3" 0x44 150M 1M
it_define "$D" "$s3"
it_start "$D"
it_mount_slow
it_wait_dom "$D"
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vda)" "snapshots/ shows s1 s2 s3"

it_rmdir_throttled "$D" vda s1
rmdir "$MNT/$D/vda/snapshots/s3" || it_fail "rmdir s3 (queued behind s1's merge)"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "s1 merging, s3 queued: s2 listed"
it_assert_eq '["s3"]' "$(jq -c '[.queue[].snapshot]' "$MNT/$D/vda/job.json")" "job.json: s3 queued"
it_assert_eq "running" "$(fault_job_state "$D" vda)" "s1's merge is copying"

fault_kill_daemon
[ -n "$(fault_libvirt_job "$D" vda)" ] || it_fail "the block job ended while no daemon ran (not slowed enough?)"
fault_remount
it_wait_dom "$D"
it_wait_until 10 "recovery takes the queue up" \
  fault_log_has "recovery: $D/vda: deletion of s3 is queued"
it_wait_until 10 "recovery follows the merge again" \
  fault_log_has "recovery: $D/vda: merge of s1 still running; following it"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "after the restart s1 and s3 stay out of snapshots/"
it_assert_eq '["s3"]' "$(jq -c '[.queue[].snapshot]' "$MNT/$D/vda/job.json")" "after the restart job.json: s3 queued"
it_assert_contains "$(cat "$MNT/$D/vda/job")" "queued:" "job shows the queue after the restart"
fault_unthrottle "$D" vda

out=$(it_wait_job "$D" vda 300)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "s3's merge (dispatched after s1's) completed"
it_assert_eq "s3" "$(sed -n 's/^snapshot: *//p' <<<"$out")" "the last merge was s3's"
fault_log_has "$D/vda: queued deletions dispatched: s3 as one" ||
  it_fail "the log does not show s3 dispatched after the restart"
it_assert_eq "$s2" "$(it_domblk "$D" vda)" "s2 is the active layer"
it_assert_eq "$s2 $base" "$(it_chain "$s2" | tr '\n' ' ' | sed 's/ $//')" "s2 backs onto the base"
[ ! -e "$s1" ] || it_fail "the merged layer $s1 still exists"
[ ! -e "$s3" ] || it_fail "the merged layer $s3 still exists"
it_log "ok: both merged files are deleted"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "snapshots/ shows s2 only"
[ ! -s "$FAULT_STATE_DIR/journal" ] || it_fail "the journal is not empty: $(cat "$FAULT_STATE_DIR/journal")"
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$s2" \
  "0x11 0 2M" "0x22 2M 128M" "0x33 140M 1M" "0x44 150M 1M"
