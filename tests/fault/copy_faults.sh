#!/usr/bin/env bash
# copy_faults.sh — issue 8 §1.5/§1.7: a `copy` (held at 1 MiB/s by
# -o bandwidth) interrupted, on real libvirt:
#  1. kill -9 of the daemon mid-copy, the guest writing while no daemon
#     runs; chainfs started again on the same state_dir follows the copy
#     from its journal, it completes and pivots: domblklist shows DEST,
#     every pattern reads back from DEST's chain, start boots DEST.
#  2. virsh destroy mid-copy: the job ends `failed`, DEST (made by
#     chainfs, never used) is removed, the source chain is untouched.
#  3. abort mid-copy (running, then ready under `manual`): `canceled`,
#     the disk still on its source, DEST removed.
#  4. `copy DEST chain` (base <- s1, active): kill -9 while qemu-img
#     copies the base at 1 MiB/s: the qemu-img child dies with the daemon
#     (PDEATHSIG); the restarted daemon copies the layers left, the copy
#     pivots, the copies check clean and every pattern reads back.
#  5. `copy DEST chain` again, unmounted while qemu-img copies the base:
#     the daemon exits 0 (its qemu-img stopped), the mirror goes on, the
#     journal entry stays open; mounted again, the copy completes.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

# a domain on base (0x11) <- s1 (0x22 over 48 MiB: the active layer a
# shallow copy mirrors, well over QEMU's first burst)
make_dom() {
  local d=$1 b="$FAULT_IMAGES/$1.base.qcow2"
  it_make_image "$b" 128M
  it_write_pattern "$b" 0x11 0 1M
  it_define "$d" "$b"
  it_start "$d"
  it_wait_dom "$d"
  mkdir "$MNT/$d/vda/snapshots/s1" || it_fail "mkdir $d s1"
  it_guest_write "$d" 0x22 4M 48M
}

it_mount_slow 1048576
dir="$FAULT_IMAGES/dest"
mkdir -p "$dir"
chmod 0755 "$dir"

# ---- 1. kill -9 mid-copy ---------------------------------------------------------
K="$IT_PREFIX-cpk"
make_dom "$K"
ksrc=$(it_domblk "$K" vda)
kbase="$FAULT_IMAGES/$K.base.qcow2"
kdest="$dir/k.qcow2"
it_ctl "$K" vda "copy $kdest shallow" || it_fail "copy $kdest shallow"
it_assert_eq "running" "$(fault_job_state "$K" vda)" "the copy is mirroring"
[ -s "$FAULT_STATE_DIR/journal" ] || it_fail "no journal entry while the copy runs"
grep -q '"type":"copy"' "$FAULT_STATE_DIR/journal" || it_fail "the journal entry is not a copy"
fault_kill_daemon
it_guest_write "$K" 0x33 60M 1M # no daemon runs
[ -n "$(fault_libvirt_job "$K" vda)" ] || it_fail "the copy ended while no daemon ran"
it_assert_eq "$ksrc" "$(it_domblk "$K" vda)" "no pivot while no daemon runs"
fault_remount "bandwidth=$IT_BANDWIDTH"
it_wait_dom "$K"
it_wait_until 10 "recovery follows the copy again" \
  fault_log_has "recovery: $K/vda: copy to $kdest still running; following it"
it_assert_eq "copy" "$(it_job_field "$K" vda type)" "after the restart job shows the copy"
it_guest_write "$K" 0x44 64M 1M
fault_unthrottle "$K" vda
out=$(it_wait_job "$K" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the copy completed after the restart"
it_assert_eq "$kdest" "$(it_domblk "$K" vda)" "pivoted: DEST is the active layer"
[ -e "$ksrc" ] || it_fail "the old active file was deleted"
it_assert_eq "s1" "$(it_snapshots "$K" vda)" "snapshots/ still shows s1"
it_assert_eq "" "$(cat "$FAULT_STATE_DIR/journal" 2>/dev/null)" "the journal is empty"
it_destroy "$K"
fault_check_patterns "$kdest" "0x11 0 1M" "0x22 4M 48M" "0x33 60M 1M" "0x44 64M 1M"
it_check_pattern "$kbase" 0x11 0 1M
it_start "$K"
it_assert_eq "$kdest" "$(it_domblk "$K" vda)" "virsh start boots from DEST"
it_destroy "$K"

# ---- 2. virsh destroy mid-copy -------------------------------------------------
X="$IT_PREFIX-cpx"
make_dom "$X"
xsrc=$(it_domblk "$X" vda)
xdest="$dir/x.qcow2"
it_ctl "$X" vda "copy $xdest shallow" || it_fail "copy $xdest shallow"
it_assert_eq "running" "$(fault_job_state "$X" vda)" "the copy is mirroring"
[ -e "$xdest" ] || it_fail "DEST was not created"
it_destroy "$X"
fault_wait_state "$X" vda failed 30
it_log "job:"$'\n'"$(cat "$MNT/$X/vda/job")"
[ ! -e "$xdest" ] || it_fail "the partial DEST $xdest is still there"
it_log "ok: the partial DEST is removed"
it_assert_eq "$xsrc" "$(it_domblk "$X" vda)" "the domain's disk is still its source"
it_assert_eq "s1" "$(it_snapshots "$X" vda)" "snapshots/ still shows s1"
it_assert_eq "" "$(cat "$FAULT_STATE_DIR/journal" 2>/dev/null)" "the journal is empty"
fault_check_patterns "$xsrc" "0x11 0 1M" "0x22 4M 48M"

# ---- 3. abort mid-copy -----------------------------------------------------------
A="$IT_PREFIX-cpa"
make_dom "$A"
asrc=$(it_domblk "$A" vda)
adest="$dir/a.qcow2"
it_ctl "$A" vda "copy $adest shallow" || it_fail "copy $adest shallow"
it_assert_eq "running" "$(fault_job_state "$A" vda)" "the copy is mirroring"
it_ctl "$A" vda abort || it_fail "echo abort > ctl"
it_assert_eq "canceled" "$(fault_job_state "$A" vda)" "abort: the copy is canceled"
[ ! -e "$adest" ] || it_fail "abort left DEST $adest"
it_assert_eq "$asrc" "$(it_domblk "$A" vda)" "abort: back on the source"
[ -z "$(fault_libvirt_job "$A" vda)" ] || it_fail "libvirt still has a block job"
# the same while ready (held by manual): abort ends the mirror there too
it_ctl "$A" vda "copy $adest shallow manual" || it_fail "copy $adest shallow manual"
fault_unthrottle "$A" vda
fault_wait_state "$A" vda ready 120
it_guest_write "$A" 0x55 70M 1M
it_ctl "$A" vda abort || it_fail "echo abort > ctl (ready)"
it_assert_eq "canceled" "$(fault_job_state "$A" vda)" "abort while ready: canceled"
[ ! -e "$adest" ] || it_fail "abort while ready left DEST $adest"
it_assert_eq "$asrc" "$(it_domblk "$A" vda)" "abort while ready: back on the source"
it_guest_write "$A" 0x66 72M 1M
it_destroy "$A"
fault_check_patterns "$asrc" "0x11 0 1M" "0x22 4M 48M" "0x55 70M 1M" "0x66 72M 1M"

# ---- 4. kill -9 while a chain copy fills its frozen copies ---------------------
Q="$IT_PREFIX-cpq"
qbase="$FAULT_IMAGES/$Q.base.qcow2"
it_make_image "$qbase" 128M
it_write_pattern "$qbase" 0x11 0 8M # 8 s of qemu-img convert at 1 MiB/s
it_define "$Q" "$qbase"
it_start "$Q"
it_wait_dom "$Q"
mkdir "$MNT/$Q/vda/snapshots/s1" || it_fail "mkdir $Q s1"
qs1=$(it_domblk "$Q" vda)
it_guest_write "$Q" 0x22 16M 2M
qdir="$FAULT_IMAGES/qdest"
mkdir -p "$qdir"
chmod 0755 "$qdir"
qdest="$qdir/vm.qcow2"
it_ctl "$Q" vda "copy $qdest chain" || it_fail "copy $qdest chain"
conv() { pgrep -f "qemu-img convert .*$qdir/" >/dev/null; }
it_wait_until 10 "qemu-img convert copies the base" conv
it_log "job before the kill:"$'\n'"$(cat "$MNT/$Q/vda/job")"
fault_kill_daemon
it_wait_until 5 "qemu-img convert dies with the daemon" eval '! conv'
it_log "ok: the qemu-img child died with the daemon"
it_assert_eq "$qs1" "$(it_domblk "$Q" vda)" "no pivot while no daemon runs"
it_guest_write "$Q" 0x33 20M 1M
fault_remount "bandwidth=$IT_BANDWIDTH" # (the next scenario copies at 1 MiB/s too)
it_wait_dom "$Q"
it_wait_until 10 "recovery follows the chain copy" \
  fault_log_has "recovery: $Q/vda: copy to $qdest still running; following it"
out=$(it_wait_job "$Q" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the chain copy completed after the restart"
it_assert_eq "$qdest" "$(it_domblk "$Q" vda)" "pivoted onto DEST"
# (s1 is the active layer: DEST is its copy)
it_assert_eq "$qdest $qdir/$(basename "$qbase")" \
  "$(it_chain "$qdest" | tr '\n' ' ' | sed 's/ $//')" "DEST's chain is the base's copy"
it_destroy "$Q"
[ -e "$qs1" ] || it_fail "the old active file $qs1 was deleted"
for f in "$qdir/$(basename "$qbase")" "$qdest"; do
  chk=$(qemu-img check -q "$f" 2>&1) || it_fail "qemu-img check $f: $chk"
done
fault_check_patterns "$qdest" "0x11 0 8M" "0x22 16M 2M" "0x33 20M 1M"
it_check_pattern "$qbase" 0x11 0 8M

# ---- 5. unmount while a chain copy fills its frozen copies ---------------------
U="$IT_PREFIX-cpu"
ubase="$FAULT_IMAGES/$U.base.qcow2"
it_make_image "$ubase" 128M
it_write_pattern "$ubase" 0x11 0 8M
it_define "$U" "$ubase"
it_start "$U"
it_wait_dom "$U"
mkdir "$MNT/$U/vda/snapshots/s1" || it_fail "mkdir $U s1"
us1=$(it_domblk "$U" vda)
it_guest_write "$U" 0x22 16M 2M
udir="$FAULT_IMAGES/udest"
mkdir -p "$udir"
chmod 0755 "$udir"
udest="$udir/vm.qcow2"
it_ctl "$U" vda "copy $udest chain" || it_fail "copy $udest chain"
uconv() { pgrep -f "qemu-img convert .*$udir/" >/dev/null; }
it_wait_until 10 "qemu-img convert copies the base" uconv
it_unmount || it_fail "unmount during the chain copy"
it_log "ok: unmounted mid-copy; chainfs exited 0"
it_wait_until 5 "qemu-img convert stops with the daemon" eval '! uconv'
[ -n "$(fault_libvirt_job "$U" vda)" ] || it_fail "the mirror ended with the unmount"
grep -q '"type":"copy"' "$FAULT_STATE_DIR/journal" || it_fail "the copy's journal entry was closed"
it_log "ok: the mirror goes on and the journal entry is still open"
it_assert_eq "$us1" "$(it_domblk "$U" vda)" "no pivot while unmounted"
it_guest_write "$U" 0x33 20M 1M
fault_remount
it_wait_dom "$U"
it_wait_until 10 "recovery follows the chain copy" \
  fault_log_has "recovery: $U/vda: copy to $udest still running; following it"
out=$(it_wait_job "$U" vda 120)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the chain copy completed after the remount"
it_assert_eq "$udest" "$(it_domblk "$U" vda)" "pivoted onto DEST"
it_destroy "$U"
fault_check_patterns "$udest" "0x11 0 8M" "0x22 16M 2M" "0x33 20M 1M"
