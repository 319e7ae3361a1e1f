#!/usr/bin/env bash
# kill_copy.sh — kill -9 the daemon while an active merge is still copying
# (held at 1 MiB/s); start chainfs again on the same state_dir: it finds the
# job in its journal, follows it, pivots when it is ready and cleans up
# (overlay deleted, libvirt's snapshot metadata gone, journal empty). The
# chain mixes origins: s1 made by qemu-img (named by its file), s2 by
# `virsh snapshot-create-as` (named by libvirt's metadata). Guest writes
# before the kill, while no daemon runs and after the restart all land in
# the layer the merge ends in.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-kcopy"
base="$FAULT_IMAGES/base.qcow2"
mid="$FAULT_IMAGES/s1.qcow2"
top="$FAULT_IMAGES/top.qcow2"
# base <- s1 <- s2 (active), one pattern per layer, each partly covering
# the one below so that the order of the layers matters when read back.
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 4M
it_make_image "$mid" 256M "$base"
it_write_pattern "$mid" 0x22 2M 2M
it_define "$D" "$mid"
it_start "$D"
it_virsh snapshot-create-as "$D" s2 --disk-only --atomic \
  --diskspec "vda,snapshot=external,file=$top" >/dev/null || it_fail "virsh snapshot-create-as s2"
# 64 MiB to copy: after the mirror's first burst (up to 32 MiB), half a
# minute at 1 MiB/s, as long as this test needs the copy phase.
it_guest_write "$D" 0x33 3M 64M
it_mount_slow
it_wait_dom "$D"
it_assert_eq "s1 s2" "$(it_snapshots "$D" vda)" "snapshots/ shows s1 s2"
it_assert_eq "libvirt-metadata" "$(jq -r '.layers[0].name_source' "$MNT/$D/vda/chain.json")" \
  "s2 is named by libvirt's metadata"

it_rmdir_throttled "$D" vda s2
it_assert_eq "running" "$(fault_job_state "$D" vda)" "the merge is copying"
it_guest_write "$D" 0x44 140M 1M
job=$(cat "$MNT/$D/vda/job")
it_log "job before the kill:"$'\n'"$job"
it_assert_contains "$job" "active-commit" "job shows an active commit"
[ -s "$FAULT_STATE_DIR/journal" ] || it_fail "no journal entry while the merge runs"

fault_kill_daemon
# The block job goes on in QEMU without chainfs; so does the guest.
it_guest_write "$D" 0x55 150M 1M
[ -n "$(fault_libvirt_job "$D" vda)" ] || it_fail "the block job ended while no daemon ran (not slowed enough?)"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "no pivot while no daemon runs"

fault_remount
it_wait_dom "$D"
it_wait_until 10 "recovery follows the merge again" \
  fault_log_has "recovery: $D/vda: merge of s2 still running; following it"
it_log "ok: recovery logged: $(grep -E "recovery: $D/vda" "$IT_LOG" | tail -n 1)"
it_assert_eq "running" "$(fault_job_state "$D" vda)" "after the restart job shows the merge running"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "s2 stays out of snapshots/ after the restart"
it_guest_write "$D" 0x66 160M 1M
it_guest_write "$D" 0x77 0 4K
fault_unthrottle "$D" vda

out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge completed after the restart"
it_assert_eq "$mid" "$(it_domblk "$D" vda)" "pivoted: s1 is the active layer"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_log "ok: the merged overlay file is deleted"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "snapshots/ shows s1 only"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer names s2"
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$mid" \
  "0x77 0 4K" "0x11 4K 2044K" "0x22 2M 1M" "0x33 3M 64M" \
  "0x44 140M 1M" "0x55 150M 1M" "0x66 160M 1M"
it_check_pattern "$base" 0x11 0 4M
