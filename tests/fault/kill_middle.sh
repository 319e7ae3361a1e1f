#!/usr/bin/env bash
# kill_middle.sh — kill -9 the daemon during an intermediate merge (rmdir of
# a layer below the active one: live commit, no pivot), held in its copy
# phase at 1 MiB/s. Restarted on the same state_dir, chainfs follows the
# job to its end: the layer leaves the chain, the layer above backs onto
# the one below, the merged file is deleted, the journal is empty, and
# every pattern — one per layer, plus guest writes before, during and
# after the outage — reads back through the new chain.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-kmid"
base="$FAULT_IMAGES/base.qcow2"
mid="$FAULT_IMAGES/$D.vda.s1.qcow2"
top="$FAULT_IMAGES/$D.vda.s2.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 4M
it_make_image "$mid" 256M "$base"
# 128 MiB in the layer to merge: minutes at 1 MiB/s.
it_write_pattern "$mid" 0x22 2M 128M
it_make_image "$top" 256M "$mid"
it_write_pattern "$top" 0x33 100M 1M
it_define "$D" "$top"
it_start "$D"
it_mount_slow
it_wait_dom "$D"
it_assert_eq "s1 s2" "$(it_snapshots "$D" vda)" "snapshots/ shows s1 s2"

it_rmdir_throttled "$D" vda s1
it_assert_eq "running" "$(fault_job_state "$D" vda)" "the merge is copying"
it_assert_eq "commit" "$(it_job_field "$D" vda type)" "an intermediate commit (no pivot)"
it_guest_write "$D" 0x44 140M 1M

fault_kill_daemon
it_guest_write "$D" 0x55 150M 1M
[ -n "$(fault_libvirt_job "$D" vda)" ] || it_fail "the block job ended while no daemon ran (not slowed enough?)"

fault_remount
it_wait_dom "$D"
it_wait_until 10 "recovery follows the merge again" \
  fault_log_has "recovery: $D/vda: merge of s1 still running; following it"
it_log "ok: recovery logged: $(grep -E "recovery: $D/vda" "$IT_LOG" | tail -n 1)"
it_assert_eq "running" "$(fault_job_state "$D" vda)" "after the restart job shows the merge running"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "s1 stays out of snapshots/ after the restart"
it_guest_write "$D" 0x66 160M 1M
fault_unthrottle "$D" vda

out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge completed after the restart"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "no pivot: s2 is still the active layer"
[ ! -e "$mid" ] || it_fail "the merged layer $mid still exists"
it_log "ok: the merged layer's file is deleted"
it_assert_eq "$top $base" "$(it_chain "$top" | tr '\n' ' ' | sed 's/ $//')" "s2 backs onto the base now"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "snapshots/ shows s2 only"
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$top" \
  "0x11 0 2M" "0x22 2M 98M" "0x33 100M 1M" "0x22 101M 29M" \
  "0x44 140M 1M" "0x55 150M 1M" "0x66 160M 1M"
it_check_pattern "$base" 0x22 2M 128M
