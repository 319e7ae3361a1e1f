#!/usr/bin/env bash
# remote.sh — a libvirt whose files are not this machine's (issue 6 item
# 3). The daemon is private_libvirtd.sh's: a session libvirtd in a mount
# namespace of its own, where $T/img and $T/img2 are private tmpfs. On
# this side the same paths hold decoys: files of the same names (images,
# and the overlay names chainfs will pick) with other contents. chainfs
# must judge the connection remote by itself, and then:
#   1. mkdir on a running domain (vda in $T/img, a libvirt storage pool;
#      vdb in $T/img2, no pool): libvirt makes the overlays on its side;
#   2. rmdir of the active layer of vda: merged, the overlay deleted
#      through the storage pool; rmdir of a middle and then the active
#      layer of vdb: merged, the overlays left in place and listed as
#      `leftover:` in job and job.json;
#   3. shut-off domains: mkdir through libvirt (one taken running, one
#      shut off; one domain never started, whose chain only libvirt's
#      storage pool knows); rmdir refused with EOPNOTSUPP and a clear
#      message, nothing changed;
# every pattern reads back on the daemon's side, and after every mkdir and
# rmdir the decoys (and $T/overlays) are listed and checksummed unchanged.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/private_libvirtd.sh
. "$(dirname "$0")/private_libvirtd.sh"
it_init

IMG="$T/img"
IMG2="$T/img2"
D="$IT_PREFIX-rem"
DOFF="$IT_PREFIX-remoff"
DOFF2="$IT_PREFIX-remoff2"
POOL="$IT_PREFIX-pool"
mkdir -p "$IMG" "$IMG2"
chmod 0755 "$IMG" "$IMG2"
# the decoys: every name the daemon's side will use, with other contents
for f in "$IMG/base.qcow2" "$IMG2/b.qcow2" "$IMG/off.qcow2" \
  "$IMG/$D.vda.s1.qcow2" "$IMG/$D.vda.s2.qcow2" \
  "$IMG2/$D.vdb.t1.qcow2" "$IMG2/$D.vdb.t2.qcow2" "$IMG/$DOFF.vda.o1.qcow2" "$IMG/$DOFF.vda.o2.qcow2" \
  "$IMG/off2.qcow2" "$IMG/q1.qcow2" "$IMG/$DOFF2.vda.p1.qcow2"; do
  printf 'decoy %s: not the image libvirt means\n' "${f##*/}" >"$f"
done
it_make_image "$IMG/decoy-real.qcow2" 64M # a real image too, for good measure
it_write_pattern "$IMG/decoy-real.qcow2" 0x99 0 1M
SUMS_BEFORE=$(pd_tree_sums "$IMG" "$IMG2" "$T/overlays")

# host_unchanged WHAT — the decoys' listing and checksums are as before.
host_unchanged() {
  it_assert_eq "$SUMS_BEFORE" "$(pd_tree_sums "$IMG" "$IMG2" "$T/overlays")" \
    "after $1: no file of this machine in \$T/img, \$T/img2, \$T/overlays was created, changed or deleted"
}

pd_start "$IMG" "$IMG2"
pd_in it_make_image "$IMG/base.qcow2" 64M
pd_in it_write_pattern "$IMG/base.qcow2" 0x11 0 1M
pd_in it_make_image "$IMG2/b.qcow2" 64M
pd_in it_write_pattern "$IMG2/b.qcow2" 0x51 0 1M
pd_in it_make_image "$IMG/off.qcow2" 64M
pd_in it_write_pattern "$IMG/off.qcow2" 0x71 0 1M
pd_in it_make_image "$IMG/off2.qcow2" 64M
pd_in it_write_pattern "$IMG/off2.qcow2" 0x81 0 1M
pd_in it_make_image "$IMG/q1.qcow2" 64M "$IMG/off2.qcow2"
pd_in it_write_pattern "$IMG/q1.qcow2" 0x82 1M 1M
cat >"$T/pool.xml" <<EOF
<pool type='dir'><name>$POOL</name><target><path>$IMG</path></target></pool>
EOF
it_virsh pool-create "$T/pool.xml" >/dev/null || it_fail "virsh pool-create $POOL (on the private daemon)"
pd_in it_define "$D" "$IMG/base.qcow2" "$IMG2/b.qcow2"
pd_in it_define "$DOFF" "$IMG/off.qcow2"
pd_in it_define "$DOFF2" "$IMG/q1.qcow2"
it_start "$D"
IT_OVERLAY_DIR="" # overlays beside the active image, on the daemon's side
it_mount
it_wait_dom "$D"
it_wait_dom "$DOFF"
it_wait_dom "$DOFF2"
grep -q "image files: not on this machine (the libvirt daemon (pid $PD_PID) runs in another mount namespace)" "$IT_LOG" ||
  it_fail "chainfs did not judge the private daemon remote: $(grep 'image files' "$IT_LOG")"
it_log "ok: chainfs judged the connection remote (the daemon is in another mount namespace)"

# --- 1. mkdir on a running domain ----------------------------------------------------
declare -A file
for s in s1 s2; do
  mkdir "$MNT/$D/vda/snapshots/$s" || it_fail "mkdir vda/snapshots/$s (remote)"
  file[$s]=$(it_domblk "$D" vda)
  it_assert_eq "$IMG/$D.vda.$s.qcow2" "${file[$s]}" "domblklist: vda's overlay for $s beside the active image, on the daemon's side"
  host_unchanged "mkdir vda/snapshots/$s"
  it_guest_write "$D" "0x2${s#s}" "${s#s}M" 1M
done
for s in t1 t2; do
  mkdir "$MNT/$D/vdb/snapshots/$s" || it_fail "mkdir vdb/snapshots/$s (remote)"
  file[$s]=$(it_domblk "$D" vdb)
  it_assert_eq "$IMG2/$D.vdb.$s.qcow2" "${file[$s]}" "domblklist: vdb's overlay for $s"
  host_unchanged "mkdir vdb/snapshots/$s"
  it_guest_write "$D" "0x6${s#t}" "${s#t}M" 1M virtio-disk1
done
it_assert_eq "s1 s2" "$(it_snapshots "$D" vda)" "ls vda/snapshots/"
it_assert_eq "t1 t2" "$(it_snapshots "$D" vdb)" "ls vdb/snapshots/"
# the image files are on the daemon's side: no disk.raw (issue 9)
it_assert_eq "info info.json" "$(it_ls "$MNT/$D/vda/snapshots/s1")" "no disk.raw over a remote connection"
it_expect_errno ENOENT open "$MNT/$D/vda/snapshots/s1/disk.raw"
it_assert_eq "s1 s2 t1 t2" "$(it_snapshot_names "$D" | tr '\n' ' ' | sed 's/ $//')" "virsh snapshot-list (private daemon)"
it_assert_eq "$(printf '%s\n' "${file[s2]}" "${file[s1]}" "$IMG/base.qcow2")" "$(pd_in it_chain "${file[s2]}")" \
  "qemu-img on the daemon's side: vda's chain"
it_assert_eq "$(printf '%s\n' "${file[s2]}" "${file[s1]}" "$IMG/base.qcow2")" \
  "$(jq -r '.layers[].file' "$MNT/$D/vda/chain.json")" "chain.json of vda"

# --- 2. rmdir: the active layer in a pool, a middle and an active layer in none ------------
rmdir "$MNT/$D/vda/snapshots/s2" || it_fail "rmdir vda/snapshots/s2 (remote, active)"
out=$(it_wait_job "$D" vda)
it_log "cat vda/wait:"$'\n'"$out"
it_assert_eq "active-commit completed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vda/job.json")" "vda: active commit completed"
it_assert_eq "${file[s1]}" "$(it_domblk "$D" vda)" "vda pivoted to s1's overlay"
it_assert_eq "null" "$(jq -r .leftover "$MNT/$D/vda/job.json")" "vda: no leftover (deleted through the pool)"
pd_run test ! -e "${file[s2]}" || it_fail "s2's overlay is still there on the daemon's side (pool delete)"
it_log "ok: s2's overlay deleted through libvirt's storage pool"
grep -q "deleted ${file[s2]} through libvirt's storage pool" "$IT_LOG" || it_fail "no log line for the pool delete"
host_unchanged "rmdir vda/snapshots/s2"

rmdir "$MNT/$D/vdb/snapshots/t1" || it_fail "rmdir vdb/snapshots/t1 (remote, middle)"
out=$(it_wait_job "$D" vdb)
it_log "cat vdb/wait:"$'\n'"$out"
it_assert_eq "commit completed ${file[t1]}" "$(jq -r '"\(.type) \(.state) \(.leftover)"' "$MNT/$D/vdb/job.json")" \
  "vdb: commit of t1 completed, its overlay a leftover in job.json"
it_assert_contains "$(cat "$MNT/$D/vdb/job")" "leftover:  ${file[t1]}" "vdb: job lists the leftover"
pd_run test -e "${file[t1]}" || it_fail "t1's overlay is gone on the daemon's side (no pool: it should be left)"
host_unchanged "rmdir vdb/snapshots/t1"

rmdir "$MNT/$D/vdb/snapshots/t2" || it_fail "rmdir vdb/snapshots/t2 (remote, active)"
it_wait_job "$D" vdb >/dev/null
it_assert_eq "active-commit completed ${file[t2]}" "$(jq -r '"\(.type) \(.state) \(.leftover)"' "$MNT/$D/vdb/job.json")" \
  "vdb: active commit of t2 completed, its overlay a leftover"
it_assert_eq "$IMG2/b.qcow2" "$(it_domblk "$D" vdb)" "vdb pivoted to its base"
host_unchanged "rmdir vdb/snapshots/t2"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "ls vda/snapshots/ after the merges"
it_assert_eq "" "$(it_snapshots "$D" vdb)" "ls vdb/snapshots/ after the merges"
it_assert_eq "s1" "$(it_snapshot_names "$D")" "virsh snapshot-list: only s1 left"

# data, read where the images are
pd_in it_check_pattern "${file[s1]}" 0x11 0 1M
pd_in it_check_pattern "${file[s1]}" 0x21 1M 1M
pd_in it_check_pattern "${file[s1]}" 0x22 2M 1M
pd_in it_check_pattern "$IMG/base.qcow2" 0x00 1M 2M
pd_in it_check_pattern "$IMG2/b.qcow2" 0x51 0 1M
pd_in it_check_pattern "$IMG2/b.qcow2" 0x61 1M 1M
pd_in it_check_pattern "$IMG2/b.qcow2" 0x62 2M 1M
it_check_pattern "$IMG/decoy-real.qcow2" 0x99 0 1M

# --- 3. a shut-off domain ----------------------------------------------------------------
# libvirt describes a shut-off domain's chain only as far as its XML does
# (chainfs reads no image header here): a live snapshot writes the chain
# into it, so o1 is taken running, o2 shut off.
it_start "$DOFF"
mkdir "$MNT/$DOFF/vda/snapshots/o1" || it_fail "mkdir $DOFF/vda/snapshots/o1 (remote, running)"
it_destroy "$DOFF"
it_wait_until 5 "chainfs sees $DOFF shut off" grep -q '^state: *shutoff$' "$MNT/$DOFF/vda/chain"
mkdir "$MNT/$DOFF/vda/snapshots/o2" || it_fail "mkdir $DOFF/vda/snapshots/o2 (remote, shut off)"
it_assert_eq "$IMG/$DOFF.vda.o2.qcow2" "$(it_domblk "$DOFF" vda)" "shut off: libvirt made o2's overlay"
pd_run test -e "$IMG/$DOFF.vda.o2.qcow2" || it_fail "o2's overlay is not on the daemon's side"
host_unchanged "mkdir $DOFF/vda/snapshots/o1 and o2"
it_log "chain of $DOFF as chainfs shows it (shut off):"$'\n'"$(cat "$MNT/$DOFF/vda/chain")"
it_wait_until 5 "o1 shows in snapshots/ (shut off)" test -d "$MNT/$DOFF/vda/snapshots/o1"
# EOPNOTSUPP; Linux gives it the same number as ENOTSUP, the name Python prints
it_expect_errno ENOTSUP rmdir "$MNT/$DOFF/vda/snapshots/o1"
it_assert_contains "$(cat "$MNT/$DOFF/vda/job")" "start the domain and rmdir again" "job says why the offline merge is refused"
grep -q "rmdir $DOFF/vda/snapshots/o1 refused (Operation not supported)" "$IT_LOG" || it_fail "no log line for the refusal"
it_assert_eq "$IMG/$DOFF.vda.o2.qcow2" "$(it_domblk "$DOFF" vda)" "shut off: the chain is unchanged"
it_assert_eq "$(printf '%s\n' "$IMG/$DOFF.vda.o2.qcow2" "$IMG/$DOFF.vda.o1.qcow2" "$IMG/off.qcow2")" \
  "$(pd_in it_chain "$IMG/$DOFF.vda.o2.qcow2")" "qemu-img on the daemon's side: $DOFF's chain is unchanged"
pd_in it_check_pattern "$IMG/$DOFF.vda.o2.qcow2" 0x71 0 1M
host_unchanged "rmdir $DOFF/vda/snapshots/o1 (refused)"

# A domain never started, on a chain qemu-img made (q1 <- off2): its XML
# names q1 only; the storage pool knows the rest. mkdir p1 shut off makes
# the pool learn p1 too.
it_assert_eq "$IMG/q1.qcow2 $IMG/off2.qcow2" "$(jq -r '.layers[].file' "$MNT/$DOFF2/vda/chain.json" | tr '\n' ' ' | sed 's/ $//')" \
  "$DOFF2: chain.json from the storage pool (the XML names only q1)"
it_assert_eq "q1" "$(it_snapshots "$DOFF2" vda)" "$DOFF2: q1 listed (named by its file)"
mkdir "$MNT/$DOFF2/vda/snapshots/p1" || it_fail "mkdir $DOFF2/vda/snapshots/p1 (remote, never started)"
it_assert_eq "$IMG/$DOFF2.vda.p1.qcow2" "$(it_domblk "$DOFF2" vda)" "$DOFF2: libvirt made p1's overlay"
it_wait_until 5 "p1 shows in $DOFF2's snapshots/" test -d "$MNT/$DOFF2/vda/snapshots/p1"
it_assert_eq "$IMG/$DOFF2.vda.p1.qcow2 $IMG/q1.qcow2 $IMG/off2.qcow2" \
  "$(jq -r '.layers[].file' "$MNT/$DOFF2/vda/chain.json" | tr '\n' ' ' | sed 's/ $//')" "$DOFF2: chain.json after mkdir p1"
it_assert_eq "67108864" "$(jq -r '.layers[0].virtual_size' "$MNT/$DOFF2/vda/chain.json")" "$DOFF2: p1's size as libvirt reports it"
it_expect_errno ENOTSUP rmdir "$MNT/$DOFF2/vda/snapshots/q1"
it_expect_errno ENOTSUP rmdir "$MNT/$DOFF2/vda/snapshots/p1"
it_assert_eq "$(printf '%s\n' "$IMG/$DOFF2.vda.p1.qcow2" "$IMG/q1.qcow2" "$IMG/off2.qcow2")" \
  "$(pd_in it_chain "$IMG/$DOFF2.vda.p1.qcow2")" "qemu-img on the daemon's side: $DOFF2's chain"
pd_in it_check_pattern "$IMG/$DOFF2.vda.p1.qcow2" 0x81 0 1M
pd_in it_check_pattern "$IMG/$DOFF2.vda.p1.qcow2" 0x82 1M 1M
host_unchanged "mkdir and rmdir on $DOFF2 (shut off)"
