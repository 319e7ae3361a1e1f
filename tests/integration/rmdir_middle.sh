#!/usr/bin/env bash
# rmdir_middle.sh — rmdir of a snapshot below the active layer: a live
# commit of that one layer into the layer below, no pivot. Chain
# base <- s1 <- s2 <- s3 (active), one pattern per layer; rmdir s2 takes
# s2's overlay out of the chain, s3's overlay then backs onto s1's, the
# active layer is unchanged and every pattern reads back.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-rmmid"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x10 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"

declare -A file
for i in 1 2 3; do
  mkdir "$MNT/$D/vda/snapshots/s$i" || it_fail "mkdir snapshots/s$i"
  file[s$i]=$(it_domblk "$D" vda)
  it_guest_write "$D" "0x2$i" "${i}M" 1M
done
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vda)" "three snapshots"
it_check_chain "$D" vda "${file[s3]}" "${file[s2]}" "${file[s1]}" "$base"

rmdir "$MNT/$D/vda/snapshots/s2" || it_fail "rmdir snapshots/s2"
it_assert_eq "s1 s3" "$(it_snapshots "$D" vda)" "s2 left snapshots/ as soon as rmdir returned"
out=$(it_wait_job "$D" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "commit completed s2" "$(jq -r '"\(.type) \(.state) \(.snapshot)"' "$MNT/$D/vda/job.json")" "job.json: a completed (non-active) commit of s2"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "cat wait: the merge completed"

it_assert_eq "${file[s3]}" "$(it_domblk "$D" vda)" "no pivot: the active layer is still s3's overlay"
it_assert_eq "$(printf '%s\n' "${file[s3]}" "${file[s1]}" "$base")" "$(it_chain "${file[s3]}")" \
  "qemu-img: s3's overlay now backs onto s1's"
[ ! -e "${file[s2]}" ] || it_fail "the merged overlay ${file[s2]} still exists"
it_log "ok: s2's overlay file deleted"
it_assert_eq "s1 s3" "$(it_snapshot_names "$D" | tr '\n' ' ' | sed 's/ $//')" "virsh snapshot-list: s2 gone, s1 and s3 kept"
it_assert_eq "s1 s3" "$(it_snapshots "$D" vda)" "ls snapshots/ after the merge"
it_check_chain "$D" vda "${file[s3]}" "${file[s1]}" "$base"

for i in 1 2 3; do
  it_check_pattern "${file[s3]}" "0x2$i" "${i}M" 1M
done
it_check_pattern "${file[s3]}" 0x10 0 1M
# s2's data now lives in s1's overlay; the base is untouched.
it_check_pattern "${file[s1]}" 0x22 2M 1M
it_check_pattern "$base" 0x00 1M 3M
