#!/usr/bin/env bash
# mkdir.sh — mkdir snapshots/NAME on a running domain takes a live external
# disk-only snapshot: libvirt shows the new overlay and the snapshot, the
# data written before reads back through the new chain, and new guest
# writes land in the overlay, not in the frozen base.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-mkdir"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"
it_assert_eq "" "$(it_snapshots "$D" vda)" "no snapshots before mkdir"

mkdir "$MNT/$D/vda/snapshots/snapA" || it_fail "mkdir snapshots/snapA"

top=$(it_domblk "$D" vda)
it_assert_eq "$T/overlays" "$(dirname "$top")" "virsh domblklist: the new overlay is in overlay_dir"
file=$(basename "$top")
it_assert_contains "$file" "$D" "overlay file name carries the domain"
it_assert_contains "$file" "vda" "overlay file name carries the disk"
it_assert_contains "$file" "snapA" "overlay file name carries the snapshot name"
it_assert_eq "snapA" "$(it_snapshot_names "$D")" "virsh snapshot-list shows snapA"
it_assert_eq "$(printf '%s\n' "$top" "$base")" "$(it_chain "$top")" "qemu-img: the overlay backs onto the base"
it_check_pattern "$top" 0x11 0 1M

it_assert_eq "snapA" "$(it_snapshots "$D" vda)" "ls snapshots/ shows snapA"
it_check_chain "$D" vda "$top" "$base"
it_assert_eq "snapA libvirt-metadata" "$(jq -r '.layers[0] | "\(.snapshot) \(.name_source)"' "$MNT/$D/vda/chain.json")" "chain.json names layer 0 snapA"
info="$MNT/$D/vda/snapshots/snapA/info.json"
it_assert_eq "snapA $top $base 0 true" "$(jq -r '"\(.name) \(.file) \(.frozen) \(.depth) \(.active)"' "$info")" "snapshots/snapA/info.json"
it_assert_eq "snapshot completed snapA" "$(jq -r '"\(.type) \(.state) \(.snapshot)"' "$MNT/$D/vda/job.json")" "job.json shows the finished snapshot job"

it_guest_write "$D" 0x22 1M 1M
it_check_pattern "$top" 0x22 1M 1M
it_check_pattern "$base" 0x00 1M 1M
it_check_pattern "$base" 0x11 0 1M
