#!/usr/bin/env bash
# offline.sh — mkdir and rmdir on a shut-off domain, then the domain starts
# on the resulting chain:
#   1. mkdir s1, data into the overlay (qemu-io: the domain is off), rmdir
#      s1: an offline merge; the chain is the base again, data intact, and
#      the domain starts on the base;
#   2. mkdir s2 while shut off, then start: the domain runs on the overlay.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-offline"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_mount
it_wait_dom "$D"
it_assert_eq "shutoff" "$(jq -r .state "$MNT/$D/vda/chain.json")" "the domain is shut off"

# --- 1. mkdir + rmdir while shut off --------------------------------------------
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1 (shut off)"
top=$(it_domblk "$D" vda)
it_assert_eq "$T/overlays" "$(dirname "$top")" "domblklist: the new overlay is in overlay_dir"
it_assert_eq "s1" "$(it_snapshot_names "$D")" "virsh snapshot-list shows s1"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "ls snapshots/ shows s1"
it_assert_eq "$(printf '%s\n' "$top" "$base")" "$(it_chain "$top")" "qemu-img: the overlay backs onto the base"
it_check_chain "$D" vda "$top" "$base"
it_write_pattern "$top" 0x22 1M 1M

rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir snapshots/s1 (shut off)"
out=$(it_wait_job "$D" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "offline-commit completed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vda/job.json")" "job.json: offline commit completed"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "domblklist shows the base again"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_log "ok: overlay file deleted"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list no longer lists s1"
it_assert_eq "" "$(it_snapshots "$D" vda)" "ls snapshots/ is empty"
it_assert_eq "$base" "$(it_chain "$base")" "qemu-img: the base has no backing file"
it_check_pattern "$base" 0x11 0 1M
it_check_pattern "$base" 0x22 1M 1M

it_start "$D"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "the domain started on the base"
it_destroy "$D"

# --- 2. mkdir while shut off, then start -------------------------------------------
it_wait_until 2 "chainfs sees the domain shut off" grep -q '^state: *shutoff$' "$MNT/$D/vda/chain"
mkdir "$MNT/$D/vda/snapshots/s2" || it_fail "mkdir snapshots/s2 (shut off)"
top=$(it_domblk "$D" vda)
[ "$top" != "$base" ] || it_fail "mkdir s2 did not change the disk's source"
it_write_pattern "$top" 0x33 2M 1M
it_start "$D"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "the domain runs on s2's overlay"
it_wait_until 2 "chainfs sees the domain running" grep -q '^state: *running$' "$MNT/$D/vda/chain"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "ls snapshots/ shows s2 while running"
it_check_chain "$D" vda "$top" "$base"
it_guest_write "$D" 0x44 3M 1M
it_check_pattern "$top" 0x11 0 1M
it_check_pattern "$top" 0x22 1M 1M
it_check_pattern "$top" 0x33 2M 1M
it_check_pattern "$top" 0x44 3M 1M
it_check_pattern "$base" 0x00 2M 2M
