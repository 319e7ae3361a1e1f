#!/usr/bin/env bash
# kill_pull.sh — kill -9 the daemon while a forward merge (a live pull,
# issue 8 §2) runs: base <- s1 (4 MiB written) <- s2 (24 MiB written,
# active), rmdir s2 pulls s1 into s2's file at 1 MiB/s. The pull goes on
# in libvirt while no daemon runs (the guest keeps writing); the next
# chainfs on the same state_dir follows it from the journal, reads the
# domain without block statistics until it ends (QEMU 7.2 crashes when
# block nodes are queried as a pull ends, docs/design/issue8.md §7.4),
# then finishes the clean-up: s1's file deleted, libvirt's metadata names
# s2's file for s1, snapshots/ shows s1. Every pattern reads back, and
# the domain kept running all along.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-kpull"
base="$FAULT_IMAGES/base.qcow2"
it_make_image "$base" 128M
it_write_pattern "$base" 0x11 0 4M
it_define "$D" "$base"
it_start "$D"
it_mount "live_pull=on,bandwidth=1M"
it_wait_dom "$D"

mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
f1=$(it_domblk "$D" vda)
it_guest_write "$D" 0x22 8M 4M
mkdir "$MNT/$D/vda/snapshots/s2" || it_fail "mkdir snapshots/s2"
f2=$(it_domblk "$D" vda)
it_guest_write "$D" 0x33 16M 24M

rmdir "$MNT/$D/vda/snapshots/s2" || it_fail "rmdir snapshots/s2"
it_assert_eq "pull" "$(it_job_field "$D" vda type)" "the rmdir pulls"
fault_wait_state "$D" vda running 30
job=$(cat "$MNT/$D/vda/job")
it_log "job before the kill:"$'\n'"$job"

fault_kill_daemon
it_guest_write "$D" 0x44 48M 1M
[ -n "$(fault_libvirt_job "$D" vda)" ] ||
  it_fail "libvirt's pull ended before the restart (the test wants it still running; lower the bandwidth)"

fault_remount "live_pull=on"
it_wait_dom "$D"
out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the restarted daemon completed the pull"
fault_log_has "recovery: $D/vda: merge of s2 (still running; following it|had finished; cleaned up)" ||
  it_fail "no recovery line for the pull in the log"
it_assert_eq "running" "$(it_state "$D")" "the domain kept running (QEMU did not crash)"
it_assert_eq "$f2" "$(it_domblk "$D" vda)" "s2's file is still the active layer"
[ ! -e "$f1" ] || it_fail "s1's file $f1 still exists"
[ -e "$base" ] || it_fail "the base image was deleted"
it_assert_eq "s1" "$(it_snapshot_names "$D")" "virsh snapshot-list lists s1 alone"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "ls snapshots/ shows s1"
src=$(it_virsh snapshot-dumpxml "$D" s1 | sed -n "s/.*<source file='\([^']*\)'.*/\1/p" | head -1)
it_assert_eq "$f2" "$src" "s1's metadata names s2's file"
it_guest_write "$D" 0x55 52M 1M
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$f2" \
  "0x11 0 4M" "0x22 8M 4M" "0x33 16M 24M" "0x44 48M 1M" "0x55 52M 1M"
