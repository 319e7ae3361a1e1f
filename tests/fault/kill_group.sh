#!/usr/bin/env bash
# kill_group.sh — kill -9 the daemon while a domain-level rmdir holds: vda's
# active commit is ready and held (design issue10 §3.3) because vdb's runs
# (limited to 1 MiB/s with 96 MiB to copy). The group and its members are
# journaled: the next chainfs on the same state_dir takes the group up
# again, vda stays ready and held (no pivot while vdb runs), and once vdb
# is let go both pivot. Guest writes to both disks before, during and
# while no daemon runs are mirrored and read back from each base; the
# invariants of tests/fault/lib.sh hold at the end.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-kgroup"
vda="$FAULT_IMAGES/vda.qcow2"
vdb="$FAULT_IMAGES/vdb.qcow2"
it_make_image "$vda" 256M
it_make_image "$vdb" 256M
it_write_pattern "$vda" 0x11 0 4M
it_write_pattern "$vdb" 0x21 0 4M
it_define "$D" "$vda" "$vdb"
it_start "$D"
it_mount_slow
it_wait_dom "$D"

# chainfs's own domain-level snapshot of both disks
mkdir "$MNT/$D/snapshots/s1" || it_fail "mkdir $D/snapshots/s1"
a1=$(it_domblk "$D" vda) b1=$(it_domblk "$D" vdb)
if [ "$a1" = "$vda" ] || [ "$b1" = "$vdb" ]; then
  it_fail "mkdir did not give both disks an overlay"
fi
it_guest_write "$D" 0x12 4M 1M virtio-disk0
it_guest_write "$D" 0x22 4M 96M virtio-disk1

held() { grep -q '^members: *vda ready, vdb running' "$MNT/$D/job"; }
rmdir "$MNT/$D/snapshots/s1" || it_fail "rmdir $D/snapshots/s1"
it_wait_until 60 "vda ready and held while vdb runs" held
it_log "<dom>/job before the kill:"$'\n'"$(cat "$MNT/$D/job")"
it_guest_write "$D" 0x13 120M 1M virtio-disk0

fault_kill_daemon
it_guest_write "$D" 0x14 130M 1M virtio-disk0
it_guest_write "$D" 0x24 130M 1M virtio-disk1
[ -n "$(fault_libvirt_job "$D" vda)" ] || it_fail "vda's job vanished while no daemon ran"
it_assert_eq "$a1" "$(it_domblk "$D" vda)" "no pivot of vda while no daemon runs"

fault_remount
it_wait_dom "$D"
it_wait_until 60 "the group is taken up again, vda held" held
sleep 2
it_assert_eq "ready" "$(fault_job_state "$D" vda)" "vda still ready after the restart"
it_assert_eq "$a1" "$(it_domblk "$D" vda)" "the restarted daemon did not pivot vda while vdb runs"
it_assert_eq "running" "$(fault_job_state "$D" vdb)" "vdb's commit still runs"
fault_log_has "recovery: $D/snapshots/s1: domain-level rmdir \(group [^,]+, running\) taken up" ||
  it_fail "no recovery line for the group in the log"
it_log "ok: recovery took the group up"
it_guest_write "$D" 0x15 140M 1M virtio-disk0
fault_unthrottle "$D" vdb

out=$(timeout 300 cat "$MNT/$D/wait") || it_fail "cat $D/wait failed or timed out"
it_log "cat <dom>/wait:"$'\n'"$out"
it_assert_eq completed "$(sed -n 's/^state: *//p' <<<"$out" | head -1)" "the group completed after the restart"
it_assert_eq "$vda" "$(it_domblk "$D" vda)" "vda pivoted to its base"
it_assert_eq "$vdb" "$(it_domblk "$D" vdb)" "vdb pivoted to its base"
if [ -e "$a1" ] || [ -e "$b1" ]; then it_fail "a merged overlay still exists"; fi
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list is empty"
it_guest_write "$D" 0x16 150M 1M virtio-disk0
fault_check_invariants "$D" vda "$D" vdb

it_destroy "$D"
fault_check_patterns "$vda" "0x11 0 4M" "0x12 4M 1M" "0x13 120M 1M" "0x14 130M 1M" \
  "0x15 140M 1M" "0x16 150M 1M"
fault_check_patterns "$vdb" "0x21 0 4M" "0x22 4M 96M" "0x24 130M 1M"
