#!/usr/bin/env bash
# destroy_rmdir.sh — rmdir right after `virsh destroy`, before chainfs's
# re-read caught up, does the offline merge (issue 6, item 5): the
# running/shut-off decision comes from libvirt at the time of the rmdir,
# not from the cached state (which used to start a live commit on a
# stopped domain and fail with EIO). ROUNDS (3) rounds: start, mkdir
# snapshots/yN, a guest write into the new active layer, then destroy and
# rmdir at once; the write must end up in the layer below.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

ROUNDS=${ROUNDS:-3}
D="$IT_PREFIX-destroy"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x10 0 1M
it_define "$D" "$base"
it_mount
it_wait_dom "$D"

for ((i = 1; i <= ROUNDS; i++)); do
  it_start "$D"
  it_wait_until 10 "chainfs sees $D running" \
    sh -c "grep -q '^state: *running' '$MNT/$D/vda/chain'"
  below=$(it_domblk "$D" vda)
  mkdir "$MNT/$D/vda/snapshots/y$i" || it_fail "round $i: mkdir y$i"
  top=$(it_domblk "$D" vda)
  it_guest_write "$D" "0x2$i" "${i}M" 1M
  it_destroy "$D"
  rmdir "$MNT/$D/vda/snapshots/y$i" || it_fail "round $i: rmdir y$i right after virsh destroy"
  out=$(it_wait_job "$D" vda)
  it_assert_eq "offline-commit completed y$i" \
    "$(jq -r '"\(.type) \(.state) \(.snapshot)"' "$MNT/$D/vda/job.json")" \
    "round $i: an offline merge of y$i, completed"
  it_assert_eq "$below" "$(it_domblk "$D" vda)" "round $i: the disk is back on the layer below"
  [ ! -e "$top" ] || it_fail "round $i: the merged overlay $top is left"
  it_check_pattern "$below" "0x2$i" "${i}M" 1M
  it_log "round $i: $out"
done
it_check_pattern "$base" 0x10 0 1M
