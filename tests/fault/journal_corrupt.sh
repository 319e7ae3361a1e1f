#!/usr/bin/env bash
# journal_corrupt.sh — a damaged journal at start. Two merges run (one per
# disk, held at 1 MiB/s), so the journal holds two real open entries; the
# daemon is killed -9 and the journal damaged before the next start:
#
#  1. garbage appended (binary junk, a torn JSON object, a non-object):
#     chainfs starts, logs each bad line ("journal line N: ... skipped")
#     and follows both merges;
#  2. killed again, the file truncated at a random byte inside its second
#     line (a torn write): chainfs starts, logs line 2 as skipped and
#     follows the merge of line 1. The merge of line 2 is no longer
#     chainfs's to follow: its snapshot shows (its overlay is still in the
#     chain), rmdir of it is EBUSY while libvirt's job runs; once that job
#     is aborted (virsh blockjob --abort), rmdir merges it.
#
# Both disks end with every pattern intact and the invariants holding.
# FAULT_SEED=N repeats a run's truncation point.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

SEED=${FAULT_SEED:-$$}
RANDOM=$SEED
D="$IT_PREFIX-jrnl"
J="$FAULT_STATE_DIR/journal"
base_a="$FAULT_IMAGES/base-a.qcow2"
top_a="$FAULT_IMAGES/$D.vda.a.qcow2"
base_b="$FAULT_IMAGES/base-b.qcow2"
top_b="$FAULT_IMAGES/$D.vdb.b.qcow2"
it_make_image "$base_a" 256M
it_write_pattern "$base_a" 0x11 0 4M
it_make_image "$top_a" 256M "$base_a"
it_write_pattern "$top_a" 0x22 2M 128M
it_make_image "$base_b" 256M
it_write_pattern "$base_b" 0x33 0 4M
it_make_image "$top_b" 256M "$base_b"
it_write_pattern "$top_b" 0x44 2M 128M
it_define "$D" "$top_a" "$top_b"
it_start "$D"
it_mount_slow
it_wait_dom "$D"

it_rmdir_throttled "$D" vda a
it_rmdir_throttled "$D" vdb b
it_guest_write "$D" 0x55 140M 1M virtio-disk0
it_guest_write "$D" 0x66 140M 1M virtio-disk1
it_assert_eq "2" "$(grep -c . "$J")" "the journal holds two open entries"
it_log "journal:"$'\n'"$(cat "$J")"

# ---- 1: garbage appended ---------------------------------------------------------
fault_kill_daemon
printf '\x00\xff\xfe binary junk \x01\x02\n{"version": 1, "id": "torn\n[1, 2, 3]\n' >>"$J"
it_log "appended three bad lines to the journal"
fault_remount
it_wait_dom "$D"
for n in 3 4 5; do
  it_wait_until 10 "the log reports journal line $n" fault_log_has "journal line $n: .*skipped"
done
it_log "ok: the bad lines are reported:"$'\n'"$(grep -E 'journal line [0-9]+:' "$IT_LOG")"
for s in vda:a vdb:b; do
  it_wait_until 10 "recovery follows the merge of ${s#*:}" \
    fault_log_has "recovery: $D/${s%:*}: merge of ${s#*:} still running; following it"
  it_assert_eq "running" "$(fault_job_state "$D" "${s%:*}")" "the merge of ${s#*:} is followed again"
done

# ---- 2: torn second line ------------------------------------------------------------
fault_kill_daemon
it_guest_write "$D" 0x77 150M 1M virtio-disk0
it_guest_write "$D" 0x78 150M 1M virtio-disk1
# Line 2 after the first daemon rewrote the file (or not): find its disk.
lost_disk=$(sed -n 2p "$J" | jq -r .disk)
kept_disk=$(sed -n 1p "$J" | jq -r .disk)
case "$lost_disk:$kept_disk" in
  vda:vdb | vdb:vda) ;;
  *) it_fail "the journal's first two lines are not the two merges: $(head -n 2 "$J")" ;;
esac
len1=$(sed -n 1p "$J" | wc -c)    # with its newline
len2=$(($(sed -n 2p "$J" | wc -c) - 1))
keep=$((1 + RANDOM % (len2 - 1)))  # 1 .. len2-1 bytes: the closing } is cut
truncate -s $((len1 + keep)) "$J"
it_log "journal truncated to $((len1 + keep)) bytes: $keep of line 2's $len2 (FAULT_SEED=$SEED); line 2 was $lost_disk's"
declare -A SNAP=([vda]=a [vdb]=b)
lost=${SNAP[$lost_disk]}
kept=${SNAP[$kept_disk]}
fault_remount
it_wait_dom "$D"
it_wait_until 10 "the log reports the torn line 2" fault_log_has "journal line 2: .*skipped"
it_log "ok: $(grep -E 'journal line 2:' "$IT_LOG" | tail -n 1)"
it_wait_until 10 "recovery follows the merge of $kept" \
  fault_log_has "recovery: $D/$kept_disk: merge of $kept still running; following it"
if fault_log_has "recovery: $D/$lost_disk: merge of $lost .*(cleaned up|marked failed)"; then
  it_fail "chainfs acted on the merge of $lost, whose journal line was torn"
fi
it_assert_eq "running" "$(fault_job_state "$D" "$kept_disk")" "the merge of $kept (line 1) is followed"

# The lost entry's merge still runs in QEMU; chainfs shows its overlay as
# the snapshot it is and does not start a second job on the disk.
it_wait_until 5 "$lost shows in $lost_disk/snapshots/" test -d "$MNT/$D/$lost_disk/snapshots/$lost"
[ -n "$(fault_libvirt_job "$D" "$lost_disk")" ] || it_fail "libvirt's job on $lost_disk vanished"
it_expect_errno EBUSY rmdir "$MNT/$D/$lost_disk/snapshots/$lost"
# virsh blockjob --abort returns once the job is gone; rmdir at once, as
# an admin would: libvirt's CANCELED event for the aborted job may well
# arrive after the new merge started, and must not end it.
it_virsh blockjob "$D" "$lost_disk" --abort >/dev/null || it_fail "virsh blockjob $lost_disk --abort"
it_log "aborted libvirt's job on $lost_disk by hand"
rmdir "$MNT/$D/$lost_disk/snapshots/$lost" || it_fail "rmdir $lost after the abort"
fault_unthrottle "$D" "$kept_disk"
for disk in "$kept_disk" "$lost_disk"; do
  out=$(it_wait_job "$D" "$disk" 120)
  it_log "cat $disk/wait:"$'\n'"$out"
  it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of $disk completed"
done
it_assert_eq "$base_a" "$(it_domblk "$D" vda)" "vda pivoted to its base"
it_assert_eq "$base_b" "$(it_domblk "$D" vdb)" "vdb pivoted to its base"
for f in "$top_a" "$top_b"; do
  [ ! -e "$f" ] || it_fail "the merged overlay $f is left"
done
fault_check_invariants "$D" vda "$D" vdb

it_destroy "$D"
fault_check_patterns "$base_a" "0x11 0 2M" "0x22 2M 128M" "0x55 140M 1M" "0x77 150M 1M"
fault_check_patterns "$base_b" "0x33 0 2M" "0x44 2M 128M" "0x66 140M 1M" "0x78 150M 1M"
