#!/usr/bin/env bash
# rmdir_active.sh — rmdir of the active snapshot on a running domain: live
# active commit, then pivot, with guest writes while the merge runs. After
# `cat wait`: libvirt's disk is the base again, the overlay file is gone,
# the snapshot metadata is gone, and every pattern — in the base before the
# snapshot, in the overlay before the rmdir, written during the merge —
# reads back from the base.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-rmact"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"

mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
top=$(it_domblk "$D" vda)
[ "$top" != "$base" ] || it_fail "mkdir did not change the active layer"
# 32 MiB in the overlay, so that the merge is still copying when it is
# slowed down below.
it_guest_write "$D" 0x22 1M 32M

rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir snapshots/s1"
it_virsh blockjob "$D" vda --bandwidth 1 >/dev/null 2>&1 ||
  it_log "note: could not slow the job down (already finished?)"
it_assert_eq "" "$(it_snapshots "$D" vda)" "s1 left snapshots/ as soon as rmdir returned"
job=$(cat "$MNT/$D/vda/job")
it_log "job during the merge:"$'\n'"$job"
it_assert_contains "$job" "active-commit" "job shows an active commit"
it_guest_write "$D" 0x33 40M 1M
it_guest_write "$D" 0x44 0 4K
it_virsh blockjob "$D" vda --bandwidth 0 >/dev/null 2>&1 || true

out=$(it_wait_job "$D" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "cat wait: the merge completed"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "virsh domblklist shows the base again (pivoted)"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_log "ok: overlay file deleted"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer lists s1"
it_assert_eq "" "$(it_snapshots "$D" vda)" "ls snapshots/ is empty"
it_check_chain "$D" vda "$base"

it_destroy "$D"
it_check_pattern "$base" 0x44 0 4K
it_check_pattern "$base" 0x11 4K 1020K
it_check_pattern "$base" 0x22 1M 32M
it_check_pattern "$base" 0x33 40M 1M
