#!/usr/bin/env bash
# errors.sh — every refusal of SPEC's error table that a user can provoke
# on a healthy host returns its errno and changes nothing: not libvirt's
# disks (domblklist), not libvirt's snapshots (snapshot-list), not the
# files in overlay_dir, not the tree (ls snapshots/ of every disk).
# The domain has two disks, because snapshot names are per domain.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-errors"
it_make_image "$T/vda.qcow2" 256M
it_make_image "$T/vdb.qcow2" 64M
it_define "$D" "$T/vda.qcow2" "$T/vdb.qcow2"
it_start "$D"
# merges limited to 1 MiB/s from their first byte: the one below must
# still run while EBUSY is checked
it_mount_slow
it_wait_dom "$D"
S="$MNT/$D/vda/snapshots"

mkdir "$S/s1" || it_fail "mkdir snapshots/s1"
# An overlay file of the name chainfs would give snapshot "pre" (FILES.md).
trapfile="$T/overlays/$D.vda.pre.qcow2"
it_make_image "$trapfile" 1M
trapsum=$(md5sum <"$trapfile")

world() {
  echo "domblklist:"
  it_virsh domblklist "$D"
  echo "snapshot-list:"
  it_snapshot_names "$D"
  echo "overlay_dir:"
  ls -1 "$T/overlays"
  md5sum <"$trapfile"
  echo "vda: $(it_snapshots "$D" vda)"
  echo "vdb: $(it_snapshots "$D" vdb)"
}

# refuse ERRNO OP PATH — os.OP(PATH) fails with ERRNO and changes nothing.
refuse() {
  local before after
  before=$(world)
  it_expect_errno "$1" "$2" "$3"
  after=$(world)
  it_assert_eq "$before" "$after" "$2 $(it_short "$3") changed nothing"
}

# --- EINVAL / ENAMETOOLONG: names ------------------------------------------------------
refuse EINVAL mkdir "$S/a b"
refuse EINVAL mkdir "$S/.x"
refuse EINVAL mkdir "$S/-x"
refuse EINVAL mkdir "$S/$(printf 'a%.0s' {1..65})"
refuse EINVAL mkdir "$S/a~b"
refuse ENAMETOOLONG mkdir "$S/$(printf 'b%.0s' {1..256})"

# --- EEXIST ---------------------------------------------------------------------------------
refuse EEXIST mkdir "$S/s1"
refuse EEXIST mkdir "$MNT/$D/vdb/snapshots/s1"
err=$(sed -n 's/^error: *//p' "$MNT/$D/vda/job")
if [ -z "$err" ] || [ "$err" = "-" ]; then
  it_fail "job's error: line does not show the last refusal (got '$err')"
fi
it_log "ok: job shows the last refusal: $err"
# A file already there under the overlay's name is not chainfs's to
# overwrite: mkdir takes the next free name, <dom>.<disk>.pre.2.qcow2
# (issue 8 §2.5: after a pull the active file keeps a merged snapshot's
# file name), and the file stays as it was.
mkdir "$S/pre" || it_fail "mkdir snapshots/pre beside an existing $(it_short "$trapfile")"
it_assert_eq "$T/overlays/$D.vda.pre.2.qcow2" "$(it_domblk "$D" vda)" "the overlay took the next free name"
it_assert_eq "$trapsum" "$(md5sum <"$trapfile")" "the existing overlay file was not overwritten"
rmdir "$S/pre" || it_fail "rmdir snapshots/pre"
cat "$MNT/$D/vda/wait" >/dev/null
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "back to s1 alone"
it_assert_eq "$trapsum" "$(md5sum <"$trapfile")" "the existing file is still untouched after the merge"

# --- EACCES: QEMU may not enter overlay_dir ------------------------------------------
# (a directory made by mktemp -d is 0700: QEMU, running as libvirt-qemu,
# cannot open the overlay chainfs wrote there). The file is removed again.
chmod 0700 "$T/overlays"
refuse EACCES mkdir "$S/p1"
chmod 0755 "$T/overlays"
err=$(sed -n 's/^error: *//p' "$MNT/$D/vda/job")
case "$err" in
  *"Permission denied"*) it_log "ok: job shows libvirt's message: $err" ;;
  *) it_fail "job's error does not carry libvirt's message: '$err'" ;;
esac
grep -q "mkdir $D/vda/snapshots/p1 failed (Permission denied): .*Permission denied" "$IT_LOG" ||
  it_fail "no log line with libvirt's message for the refused mkdir of p1"
it_log "ok: the log line carries libvirt's message"

# --- ENOENT -----------------------------------------------------------------------------------
refuse ENOENT rmdir "$S/nosuch"
refuse ENOENT mkdir "$MNT/$IT_PREFIX-nosuchdomain/vda/snapshots/x"
refuse ENOENT mkdir "$MNT/$D/vdz/snapshots/x"

# --- EBUSY: a merge runs on vda ---------------------------------------------------------
# s1 holds more than s2, so the cost rule of issue 8 commits s2 (an
# active commit, long enough at 1 MiB/s) rather than pulling s1
it_guest_write "$D" 0x59 0 128M
mkdir "$S/s2" || it_fail "mkdir snapshots/s2"
it_guest_write "$D" 0x5a 128M 96M
it_rmdir_throttled "$D" vda s2
busy() { [ "$(it_job_field "$D" vda state)" = running ]; }
busy || it_fail "the merge of s2 is not running (state $(it_job_field "$D" vda state)); cannot test EBUSY"
refuse EBUSY mkdir "$S/s3"
# (an rmdir during chainfs's own merge is no refusal since issue 8: it is
# queued behind it, queue.sh; rmdir stays EBUSY for a job chainfs did not
# start, external_job.sh, and for files used elsewhere, aliases.sh)
busy || it_fail "the merge of s2 ended during the EBUSY checks; they prove nothing"
it_log "ok: the merge was running throughout the EBUSY checks"
it_unthrottle "$D" vda
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of s2 completed"

# --- and the boundary that must work: a 64-character name -----------------------------
name64=$(printf 'c%.0s' {1..64})
mkdir "$MNT/$D/vdb/snapshots/$name64" || it_fail "mkdir of a 64-character name"
it_assert_eq "$name64" "$(it_snapshots "$D" vdb)" "a 64-character name is a snapshot"
