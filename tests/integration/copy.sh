#!/usr/bin/env bash
# copy.sh — issue 8 §1: `copy DEST MODE` in a disk's ctl moves a running
# disk to a new file, on real libvirt and QEMU.
#  1. shallow: base (0x11) <- s1 (0x22) <- s2 (0x33) <- s3 (0x44, active);
#     `copy DEST shallow manual`; the guest writes while the mirror runs
#     and while it is ready; `pivot`. domblklist shows DEST, the three
#     snapshots are still listed (libvirt and snapshots/), s3's metadata
#     names DEST, the old active file is kept and named in job; the guest
#     reads every pattern through its new chain; rmdir s2 merges; after
#     destroy every pattern reads back from DEST's chain; start boots DEST.
#  2. flatten: `copy DEST` is EBUSY on a disk with snapshots; `copy DEST
#     flatten` makes DEST a flat image with every pattern, the snapshots
#     are gone from libvirt and snapshots/, destroy + start boots DEST.
#  3. manual + finish: write A, `copy DEST manual` (no snapshots: flat),
#     ready, write B, `finish`, write C: the domain stays on its source,
#     qemu-img check of DEST is clean, A and B are in DEST, C is not.
#  4. chain: base <- s1 <- s2 (active), `copy DEST chain` with the guest
#     writing: every layer moves to DEST's directory (the live chain is
#     DEST <- copy of s1 <- copy of base, each copy checks clean and holds
#     its own layer's data), the old files stay, both snapshots are still
#     listed and name their copies, the guest reads every pattern, start
#     boots DEST, and libvirt's own snapshot-delete of s2 works.
#  5. a transient domain (virsh create): `copy DEST` completes and pivots;
#     there is no persistent definition to update.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

job_state() { it_job_field "$1" vda state; }
is_ready() { [ "$(job_state "$1")" = ready ]; }

# ---- 1. shallow ---------------------------------------------------------------
D="$IT_PREFIX-cps"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir s1"
it_guest_write "$D" 0x22 4M 2M
mkdir "$MNT/$D/vda/snapshots/s2" || it_fail "mkdir s2"
it_guest_write "$D" 0x33 8M 2M
mkdir "$MNT/$D/vda/snapshots/s3" || it_fail "mkdir s3"
it_guest_write "$D" 0x44 12M 2M
src=$(it_domblk "$D" vda)

dir=$(it_tmpdir)
dest="$dir/moved.qcow2"
# refusals change nothing
it_assert_eq "EBUSY" "$(it_ctl_errno "$D" vda "copy $dest\n")" "copy DEST on a disk with snapshots"
it_assert_eq "ENOENT" "$(it_ctl_errno "$D" vda "copy $dir/nodir/x.qcow2 shallow\n")" "copy into a missing directory"
it_assert_eq "EEXIST" "$(it_ctl_errno "$D" vda "copy $base shallow\n")" "copy onto an existing file"
it_assert_eq "EINVAL" "$(it_ctl_errno "$D" vda "copy relative.qcow2\n")" "copy to a relative path"
[ ! -e "$dest" ] || it_fail "a refused copy left $dest"
it_assert_eq "$src" "$(it_domblk "$D" vda)" "refusals left the disk alone"

it_ctl "$D" vda "copy $dest shallow manual" || it_fail "echo 'copy DEST shallow manual' > ctl"
it_assert_eq "copy" "$(it_job_field "$D" vda type)" "job.json: type copy"
it_assert_eq "shallow" "$(it_job_field "$D" vda mode)" "job.json: mode shallow"
it_assert_eq "$dest" "$(it_job_field "$D" vda destination)" "job.json: destination"
it_assert_eq "$src" "$(it_job_field "$D" vda source)" "job.json: source"
it_guest_write "$D" 0x55 16M 1M # while the mirror runs
it_wait_until 120 "the copy is ready" is_ready "$D"
it_assert_eq "EINVAL" "$(it_ctl_errno "$D" vda "finish\n")" "finish of a shallow copy"
it_guest_write "$D" 0x66 20M 1M # while ready (mirrored)
it_log "job while ready:"$'\n'"$(cat "$MNT/$D/vda/job")"
it_ctl "$D" vda pivot || it_fail "echo pivot > ctl"
out=$(it_wait_job "$D" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the copy completed"
it_assert_eq "$dest" "$(it_domblk "$D" vda)" "domblklist shows DEST"
it_assert_contains "$out" "old files kept" "job names the old files"
[ -e "$src" ] || it_fail "the old active file $src was deleted"
it_assert_eq "s1 s2 s3" "$(it_snapshot_names "$D" | tr '\n' ' ' | sed 's/ $//')" "libvirt still lists s1 s2 s3"
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vda)" "ls snapshots/ shows s1 s2 s3"
s3src=$(it_virsh snapshot-dumpxml "$D" s3 | sed -n "s/.*<source file='\([^']*\)'.*/\1/p" | head -1)
it_assert_eq "$dest" "$s3src" "s3's metadata names DEST"
# the guest reads everything through its new chain (R1: the frozen files
# opened a second time at the pivot)
it_guest_check_pattern "$D" 0x11 0 1M
it_guest_check_pattern "$D" 0x22 4M 2M
it_guest_check_pattern "$D" 0x33 8M 2M
it_guest_check_pattern "$D" 0x44 12M 2M
it_guest_check_pattern "$D" 0x55 16M 1M
it_guest_check_pattern "$D" 0x66 20M 1M
it_guest_write "$D" 0x77 24M 1M # lands in DEST
# the snapshots are still mergeable
rmdir "$MNT/$D/vda/snapshots/s2" || it_fail "rmdir s2 after the copy"
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "rmdir s2 after the copy completed"
it_assert_eq "s1 s3" "$(it_snapshots "$D" vda)" "ls snapshots/ after rmdir s2"
it_destroy "$D"
for p in "0x11 0 1M" "0x22 4M 2M" "0x33 8M 2M" "0x44 12M 2M" "0x55 16M 1M" "0x66 20M 1M" "0x77 24M 1M"; do
  # shellcheck disable=SC2086 # three words
  it_check_pattern "$dest" $p
done
it_start "$D"
it_assert_eq "$dest" "$(it_domblk "$D" vda)" "virsh start boots from DEST"
it_guest_check_pattern "$D" 0x77 24M 1M
it_destroy "$D"

# ---- 2. flatten ------------------------------------------------------------------
F="$IT_PREFIX-cpf"
fbase="$T/fbase.qcow2"
it_make_image "$fbase" 64M
it_write_pattern "$fbase" 0x11 0 1M
it_define "$F" "$fbase"
it_start "$F"
it_wait_dom "$F"
mkdir "$MNT/$F/vda/snapshots/s1" || it_fail "mkdir s1"
it_guest_write "$F" 0x22 4M 2M
fsrc=$(it_domblk "$F" vda)
fdest="$dir/flat.qcow2"
it_assert_eq "EBUSY" "$(it_ctl_errno "$F" vda "copy $fdest\n")" "copy DEST (default) on a disk with a snapshot"
it_ctl "$F" vda "copy $fdest flatten" || it_fail "echo 'copy DEST flatten' > ctl"
it_guest_write "$F" 0x33 8M 1M # during the copy
out=$(it_wait_job "$F" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the flattening copy completed"
it_assert_eq "$fdest" "$(it_domblk "$F" vda)" "domblklist shows DEST"
it_assert_eq "" "$(it_snapshot_names "$F")" "libvirt lists no snapshot after a flattening copy"
it_assert_eq "" "$(it_snapshots "$F" vda)" "snapshots/ is empty"
for f in "$fsrc" "$fbase"; do [ -e "$f" ] || it_fail "old file $f was deleted"; done
it_guest_check_pattern "$F" 0x22 4M 2M
it_guest_check_pattern "$F" 0x33 8M 1M
it_destroy "$F"
it_assert_eq "$fdest" "$(it_chain "$fdest" | tr '\n' ' ' | sed 's/ $//')" "DEST has no backing file"
it_check_pattern "$fdest" 0x11 0 1M
it_check_pattern "$fdest" 0x22 4M 2M
it_check_pattern "$fdest" 0x33 8M 1M
it_start "$F"
it_assert_eq "$fdest" "$(it_domblk "$F" vda)" "virsh start boots from the flat DEST"
it_destroy "$F"

# ---- 3. manual + finish ----------------------------------------------------------
M="$IT_PREFIX-cpm"
mbase="$T/mbase.qcow2"
it_make_image "$mbase" 64M
it_define "$M" "$mbase"
it_start "$M"
it_wait_dom "$M"
it_guest_write "$M" 0x41 0 2M # A
mdest="$dir/backup.qcow2"
it_ctl "$M" vda "copy $mdest manual" || it_fail "echo 'copy DEST manual' > ctl"
it_wait_until 120 "the copy is ready" is_ready "$M"
it_guest_write "$M" 0x42 4M 2M # B: mirrored
it_ctl "$M" vda finish || it_fail "echo finish > ctl"
out=$(it_wait_job "$M" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "finish completed"
it_assert_contains "$out" "point-in-time copy" "job says what DEST is"
it_guest_write "$M" 0x43 8M 2M # C: after finish
it_assert_eq "$mbase" "$(it_domblk "$M" vda)" "the domain stays on its source"
chk=$(qemu-img check -U "$mdest" 2>&1) || it_fail "qemu-img check $mdest: $chk"
it_log "qemu-img check: $chk"
it_check_pattern "$mdest" 0x41 0 2M
it_check_pattern "$mdest" 0x42 4M 2M
it_check_pattern "$mdest" 0x00 8M 2M # C is not in it
it_destroy "$M"
it_check_pattern "$mbase" 0x43 8M 2M

# ---- 4. chain ------------------------------------------------------------------
C="$IT_PREFIX-cpc"
cbase="$T/cbase.qcow2"
it_make_image "$cbase" 64M
it_write_pattern "$cbase" 0x11 0 1M
it_define "$C" "$cbase"
it_start "$C"
it_wait_dom "$C"
mkdir "$MNT/$C/vda/snapshots/s1" || it_fail "mkdir s1"
cs1=$(it_domblk "$C" vda)
it_guest_write "$C" 0x22 4M 2M
mkdir "$MNT/$C/vda/snapshots/s2" || it_fail "mkdir s2"
cs2=$(it_domblk "$C" vda)
it_guest_write "$C" 0x33 8M 2M
cdir=$(it_tmpdir)
cdest="$cdir/vm.qcow2"
it_assert_eq "EEXIST" "$(it_ctl_errno "$C" vda "copy $T/overlays/x.qcow2 chain\n")" \
  "copy chain into the directory of its own layers"
it_ctl "$C" vda "copy $cdest chain" || it_fail "echo 'copy DEST chain' > ctl"
it_assert_eq "chain" "$(it_job_field "$C" vda mode)" "job.json: mode chain"
it_guest_write "$C" 0x44 12M 1M # during the copy
out=$(it_wait_job "$C" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the chain copy completed"
it_assert_eq "$cdest" "$(it_domblk "$C" vda)" "domblklist shows DEST"
want="$cdest $cdir/$(basename "$cs1") $cdir/cbase.qcow2"
it_assert_eq "$want" "$(it_chain "$cdest" | tr '\n' ' ' | sed 's/ $//')" "DEST's chain is the copies in its directory"
for f in "$cs1" "$cs2" "$cbase"; do [ -e "$f" ] || it_fail "old file $f deleted"; done
it_assert_eq "s1 s2" "$(it_snapshot_names "$C" | tr '\n' ' ' | sed 's/ $//')" "libvirt still lists s1 s2"
it_assert_eq "s1 s2" "$(it_snapshots "$C" vda)" "ls snapshots/ shows s1 s2"
s1src=$(it_virsh snapshot-dumpxml "$C" s1 | sed -n "s/.*<source file='\([^']*\)'.*/\1/p" | head -1)
it_assert_eq "$cdir/$(basename "$cs1")" "$s1src" "s1's metadata names its copy"
it_guest_check_pattern "$C" 0x11 0 1M
it_guest_check_pattern "$C" 0x22 4M 2M
it_guest_check_pattern "$C" 0x33 8M 2M
it_guest_check_pattern "$C" 0x44 12M 1M
it_destroy "$C"
for f in "$cdir/cbase.qcow2" "$cdir/$(basename "$cs1")" "$cdest"; do
  chk=$(qemu-img check -q "$f" 2>&1) || it_fail "qemu-img check $f: $chk"
done
it_log "ok: every copy checks clean"
it_check_pattern "$cdir/cbase.qcow2" 0x11 0 1M
it_check_pattern "$cdir/cbase.qcow2" 0x00 4M 2M # s1's data is in s1's copy only
it_check_pattern "$cdir/$(basename "$cs1")" 0x22 4M 2M
for p in "0x11 0 1M" "0x22 4M 2M" "0x33 8M 2M" "0x44 12M 1M"; do
  # shellcheck disable=SC2086 # three words
  it_check_pattern "$cdest" $p
done
it_start "$C"
it_assert_eq "$cdest" "$(it_domblk "$C" vda)" "virsh start boots from DEST"
out=$(it_virsh snapshot-delete "$C" s2 2>&1) || it_fail "virsh snapshot-delete s2 after the chain copy: $out"
it_assert_eq "s1" "$(it_snapshot_names "$C")" "libvirt's snapshot-delete of s2 worked"
it_destroy "$C"

# ---- 5. a transient domain --------------------------------------------------------
R="$IT_PREFIX-cpt"
rbase="$T/rbase.qcow2"
it_make_image "$rbase" 64M
it_write_pattern "$rbase" 0x11 0 1M
it_domain_xml "$R" "$rbase" >"$T/$R.xml"
IT_DOMAINS+=("$R")
it_virsh create "$T/$R.xml" >/dev/null || it_fail "virsh create $R"
it_wait_dom "$R"
rdest="$cdir/transient.qcow2"
it_ctl "$R" vda "copy $rdest" || it_fail "copy DEST on a transient domain"
out=$(it_wait_job "$R" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the transient domain's copy completed"
it_assert_eq "$rdest" "$(it_domblk "$R" vda)" "the transient domain runs on DEST"
it_wait_until 5 "the log says there is no persistent definition" \
  grep -q "$R/vda: transient domain: no persistent definition to update" "$IT_LOG"
it_log "ok: nothing redefined for a transient domain"
it_guest_check_pattern "$R" 0x11 0 1M
it_destroy "$R"
