#!/usr/bin/env bash
# destroy_midmerge.sh — `virsh destroy` while an active merge is copying
# (held at 1 MiB/s). libvirt sends a lifecycle event, no block-job event:
# the job ends `failed` (job and job.json say so, with a reason), the chain
# shown is the one on disk (the overlay still active: no pivot happened),
# the snapshot is back in snapshots/ (state partial: the base was partly
# written), nothing was deleted and the journal entry is closed. Then the
# domain is started again and the same rmdir completes the merge.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-dstr"
base="$FAULT_IMAGES/base.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 4M
it_define "$D" "$base"
it_start "$D"
it_mount_slow
it_wait_dom "$D"

mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
top=$(it_domblk "$D" vda)
# 64 MiB by the guest into the overlay: the first 32 MiB burst of the
# mirror leaves the rest for half a minute at 1 MiB/s.
it_guest_write "$D" 0x22 2M 64M

# The base as it stands before the merge (read-only under the overlay, so
# a copy is safe): the oracle for "partly written" below.
frozen="$T/base.frozen.qcow2"
cp --sparse=always "$base" "$frozen" || it_fail "copy of the frozen base"
blocks_before=$(stat -c %b "$base")

it_rmdir_throttled "$D" vda s1
it_guest_write "$D" 0x33 100M 1M
it_assert_eq "running" "$(fault_job_state "$D" vda)" "the merge is copying"

it_destroy "$D"
it_log "domain destroyed mid-merge"
fault_wait_state "$D" vda failed 15
job=$(cat "$MNT/$D/vda/job")
it_log "job after the destroy:"$'\n'"$job"
err=$(it_job_field "$D" vda error)
case "$err" in "" | null) it_fail "job.json has no error for the failed merge" ;; esac
it_log "ok: job.json says why: $err"
[ "$(it_job_field "$D" vda finished)" != null ] || it_fail "job.json has no finished time"
it_assert_eq "active-commit" "$(it_job_field "$D" vda type)" "the failed job is the active commit"
# Did the mirror write into the base before the destroy? Then the base no
# longer holds exactly the frozen point in time, and chainfs must say so.
# Judged from the files, not from chainfs's last polled progress (which can
# still be 0 when the first chunk lands just before the destroy): the base's
# data differs from the copy taken before rmdir, or the file grew.
cur=$(it_job_field "$D" vda cur)
blocks_after=$(stat -c %b "$base")
rc=0
qemu-img compare -U -q -f qcow2 -F qcow2 "$frozen" "$base" || rc=$?
case $rc in
  0) differs=no ;;
  1) differs=yes ;;
  *) it_fail "qemu-img compare of the base with its copy failed (exit $rc)" ;;
esac
partial=false
if [ "$differs" = yes ] || [ "$blocks_after" -gt "$blocks_before" ]; then
  partial=true
fi
it_log "base after the destroy: data differs from before: $differs; blocks $blocks_before -> $blocks_after; job cur $cur"
it_assert_eq "$partial" "$(it_job_field "$D" vda partial)" "job.json partial is $partial"
it_wait_until 5 "s1 is back in snapshots/" test -d "$MNT/$D/vda/snapshots/s1"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "s1 is back in snapshots/"
info=$(cat "$MNT/$D/vda/snapshots/s1/info")
it_log "snapshots/s1/info:"$'\n'"$info"
want=ok
[ "$partial" = false ] || want=partial
it_assert_eq "$want" "$(sed -n 's/^state: *//p' <<<"$info")" "snapshots/s1/info says state $want"
[ -e "$top" ] || it_fail "the overlay $top was deleted although the merge failed"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "libvirt's disk is still the overlay (no pivot)"
it_assert_eq "s1" "$(it_snapshot_names "$D")" "libvirt's snapshot metadata still names s1"
it_check_chain "$D" vda "$top" "$base"
# The chain shown is the chain on disk, the journal entry is closed, no
# file lost or orphaned.
fault_check_invariants "$D" vda
# What the guest wrote reads back through the chain it is on, before the
# retry (nothing is running now: read-only opens are safe).
fault_check_patterns "$top" "0x11 0 2M" "0x22 2M 64M" "0x33 100M 1M"

it_start "$D"
it_guest_write "$D" 0x44 110M 1M
rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir snapshots/s1 again"
# the mount's 1 MiB/s was for the first merge: let this one go
it_ctl "$D" vda "bandwidth 0" || true
it_guest_write "$D" 0x55 120M 1M
out=$(it_wait_job "$D" vda 120)
it_log "cat wait (retry):"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "rmdir again completed the merge"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "pivoted: the base is the active image"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_log "ok: the merged overlay file is deleted"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer names s1"
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$base" \
  "0x11 0 2M" "0x22 2M 64M" "0x33 100M 1M" "0x44 110M 1M" "0x55 120M 1M"
