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
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount_slow
it_wait_dom "$D"

mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
top=$(it_domblk "$D" vda)
[ "$top" != "$base" ] || it_fail "mkdir did not change the active layer"
# 96 MiB in the overlay: limited to 1 MiB/s, the merge copies QEMU's
# first burst (32 MiB) at once and the rest over a minute, so the guest
# writes below land while it runs. (32 MiB, as this test had, were all
# copied in that first burst: the writes came after the merge.)
it_guest_write "$D" 0x22 1M 96M

it_rmdir_throttled "$D" vda s1
it_assert_eq "" "$(it_snapshots "$D" vda)" "s1 left snapshots/ as soon as rmdir returned"
job=$(cat "$MNT/$D/vda/job")
it_log "job during the merge:"$'\n'"$job"
it_assert_contains "$job" "active-commit" "job shows an active commit"
it_guest_write "$D" 0x33 100M 1M
it_guest_write "$D" 0x44 0 4K
it_assert_eq "running" "$(it_job_field "$D" vda state)" "the merge was still copying after the guest writes"
it_unthrottle "$D" vda

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
it_check_pattern "$base" 0x22 1M 96M
it_check_pattern "$base" 0x33 100M 1M
