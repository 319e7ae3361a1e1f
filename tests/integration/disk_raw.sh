#!/usr/bin/env bash
# disk_raw.sh — snapshots/NAME/disk.raw (issue 9) on a running domain:
#  1. walking the tree (ls -lR, find, du, stat) starts no qemu-nbd;
#  2. a 3-layer chain with a pattern per layer, guest writes going on
#     while it is read: disk.raw of s2 is byte for byte the frozen chain
#     as it was (qemu-img convert made right after s2), writes after s2
#     absent; `cp --sparse=always` of it too;
#  3. qemu-img convert -O qcow2 of disk.raw, then qemu-img compare with
#     the frozen chain: identical; lseek(SEEK_DATA/SEEK_HOLE) answers;
#  4. while disk.raw of s1 is open, rmdir s1 is EBUSY (the log names the
#     reader), nothing changes; rmdir of a newer snapshot is not held;
#     queued behind that merge, rmdir s1 waits for the reader (`waiting:`)
#     and merges once it closes;
#  5. two cp of two snapshots of one disk and one of another domain at
#     once: all equal; every server gone after.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-raw"
E="$IT_PREFIX-raw2"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x10 0 2M
it_define "$D" "$base"
ebase="$T/ebase.qcow2"
it_make_image "$ebase" 64M
it_write_pattern "$ebase" 0x50 0 3M
it_define "$E" "$ebase"
it_start "$D"
it_start "$E"
it_mount
it_wait_dom "$D"
it_wait_dom "$E"

# qemu-nbd processes the daemon started (its children)
nbd_children() { ps --ppid "$IT_PID" -o comm= 2>/dev/null | grep -c '^qemu-nbd$'; }
nbd_none() { [ "$(nbd_children)" = 0 ]; }

declare -A file
for i in 1 2 3; do
  mkdir "$MNT/$D/vda/snapshots/s$i" || it_fail "mkdir snapshots/s$i"
  file[s$i]=$(it_domblk "$D" vda)
  if [ "$i" = 2 ]; then
    # s2's content: everything below its overlay, as it is now
    qemu-img convert -U -O raw "${file[s1]}" "$T/exp_s2.raw" || it_fail "qemu-img convert of s2's frozen chain"
  fi
  it_guest_write "$D" "0x2$i" "${i}M" 1M
done
mkdir "$MNT/$E/vda/snapshots/e1" || it_fail "mkdir $E snapshots/e1"
it_guest_write "$E" 0x61 0 1M
qemu-img convert -U -O raw "$ebase" "$T/exp_e1.raw" || it_fail "qemu-img convert of e1's frozen chain"
qemu-img convert -U -O raw "${file[s2]}" "$T/exp_s3.raw" || it_fail "qemu-img convert of s3's frozen chain"
qemu-img convert -U -O raw "$base" "$T/exp_s1.raw" || it_fail "qemu-img convert of s1's frozen chain"

# ---- 1. the tree stays fast to walk ------------------------------------------
it_assert_eq "disk.raw info info.json" "$(it_ls "$MNT/$D/vda/snapshots/s2")" "snapshots/s2 lists disk.raw"
ls -lR "$MNT" >/dev/null || it_fail "ls -lR of the mount"
find "$MNT" -type f >/dev/null || it_fail "find over the mount"
du -sh "$MNT" >/dev/null || it_fail "du -sh of the mount"
st=$(stat -c '%s %a %F' "$MNT/$D/vda/snapshots/s2/disk.raw") || it_fail "stat disk.raw"
it_assert_eq "67108864 400 regular file" "$st" "stat disk.raw: the virtual size, 0400, a regular file"
it_assert_eq 0 "$(nbd_children)" "no qemu-nbd after ls -lR, find, du, stat"
grep -q 'opened by' "$IT_LOG" && it_fail "a walk of the tree opened a disk.raw"
blocks=$(stat -c %b "$MNT/$D/vda/snapshots/s2/disk.raw")
[ "$blocks" -gt 0 ] && [ "$blocks" -lt $((64 * 2048)) ] ||
  it_fail "stat st_blocks of s2's disk.raw is $blocks: expected an estimate of the data, below the size"
it_log "ok: st_blocks (estimate) $blocks"

# ---- 2. content, with the guest writing meanwhile ----------------------------
touch "$T/writing"
(
  n=0
  while [ -e "$T/writing" ]; do
    virsh -q -c "$IT_URI" qemu-monitor-command "$D" --hmp \
      "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P 0x7f $(((n % 8) * 4))M 4M\"" >/dev/null 2>&1
    n=$((n + 1))
  done
) &
writer=$!
cp --sparse=always "$MNT/$D/vda/snapshots/s2/disk.raw" "$T/got_s2.raw" || it_fail "cp of s2's disk.raw"
cmp "$T/exp_s2.raw" "$T/got_s2.raw" || it_fail "s2's disk.raw differs from its frozen chain"
it_log "ok: cp --sparse=always of s2's disk.raw equals the frozen chain, guest writing"
cat "$MNT/$D/vda/snapshots/s2/disk.raw" | cmp - "$T/exp_s2.raw" || it_fail "cat of s2's disk.raw differs"
rm -f "$T/writing"
wait "$writer"
it_log "ok: cat of s2's disk.raw equals it too; writes after s2 are absent"
# (FUSE's release comes after close(2) returned)
it_wait_until 5 "a close line naming cp in the log" grep -q "disk.raw of $D/vda s2 closed: .* by pid [0-9]* cp" "$IT_LOG"
it_wait_until 5 "no qemu-nbd once the readers closed" nbd_none

# ---- 3. qemu-img reads it as a raw image; lseek ------------------------------
qemu-img convert -f raw -O qcow2 "$MNT/$D/vda/snapshots/s2/disk.raw" "$T/x.qcow2" || it_fail "qemu-img convert of disk.raw"
out=$(qemu-img compare -U "$T/x.qcow2" "${file[s1]}" 2>&1) || it_fail "qemu-img compare with the frozen chain: $out"
it_log "ok: qemu-img convert -O qcow2 of disk.raw, compare with the frozen chain: $out"
seeks=$(python3 - "$MNT/$D/vda/snapshots/s1/disk.raw" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE))
try:
    os.lseek(fd, 3 << 20, os.SEEK_DATA)
    print("data")
except OSError as e:
    print(e.errno)
os.close(fd)
EOF
) || it_fail "lseek on disk.raw"
# s1's content is the base: 2 MiB of 0x10, then nothing
it_assert_eq "0 2097152
6" "$seeks" "SEEK_DATA 0, SEEK_HOLE at 2 MiB, no data after 3 MiB (ENXIO)"

# ---- 4. an open reader holds its merges off ----------------------------------
# (a failure while it is open: close it before the unmount)
trap 'rc=$?; set +e; exec 3<&-; (exit $rc); it_cleanup' EXIT
exec 3<"$MNT/$D/vda/snapshots/s1/disk.raw"
it_assert_eq 1 "$(nbd_children)" "one qemu-nbd while s1's disk.raw is open"
grep -q '^readers:.*s1 (pid ' "$MNT/$D/vda/job" || it_fail "job does not list the reader"
it_expect_errno EBUSY rmdir "$MNT/$D/vda/snapshots/s1"
grep -q "rmdir $D/vda/snapshots/s1 refused (Device or resource busy): snapshots/s1/disk.raw of $D/vda is open (pid $$" "$IT_LOG" ||
  it_fail "the refusal's log line does not name the reader"
it_check_chain "$D" vda "${file[s3]}" "${file[s2]}" "${file[s1]}" "$base"
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vda)" "nothing changed"
# a newer snapshot's merge does not touch the base: allowed. Held in
# ready (pivot manual), it keeps the disk busy, so rmdir s1 queues behind
# it instead of being refused; once s3 is merged, s1's merge waits for
# the reader (`waiting:` in job), and starts when it closes.
echo "pivot manual" >"$MNT/$D/vda/ctl" || it_fail "pivot manual"
rmdir "$MNT/$D/vda/snapshots/s3" || it_fail "rmdir s3 with s1's disk.raw open"
job_state() { jq -r .state "$MNT/$D/vda/job.json"; }
is_ready() { [ "$(job_state)" = ready ]; }
it_wait_until 60 "s3's active commit is ready" is_ready
rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir s1 behind s3's merge (queued) with its reader open"
it_assert_eq '["s1"]' "$(jq -c '[.queue[].snapshot]' "$MNT/$D/vda/job.json")" "s1 is queued"
echo pivot >"$MNT/$D/vda/ctl" || it_fail "pivot"
s1_waits() { grep -q '^waiting: *s1 (snapshots/s1/disk.raw of .* is open (pid ' "$MNT/$D/vda/job"; }
it_wait_until 60 "s1's queued merge waits for the reader" s1_waits
it_log "job: $(grep '^waiting:' "$MNT/$D/vda/job")"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "s3 merged, s1 queued (hidden)"
head -c 1M <&3 | cmp - <(head -c 1M "$T/exp_s1.raw") || it_fail "s1's reader reads wrong data after s3's merge"
it_check_chain "$D" vda "${file[s2]}" "${file[s1]}" "$base"
exec 3<&-
out=$(it_wait_job "$D" vda)
it_assert_eq "completed s1" "$(jq -r '"\(.state) \(.snapshot)"' "$MNT/$D/vda/job.json")" "s1 merged once the reader closed"
it_wait_until 5 "the server stops at the close" nbd_none
echo "pivot auto" >"$MNT/$D/vda/ctl" || it_fail "pivot auto"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "s2 is left"

# ---- 5. readers side by side -------------------------------------------------
mkdir "$MNT/$D/vda/snapshots/s4" || it_fail "mkdir s4"
qemu-img convert -U -O raw "$(it_chain "$(it_domblk "$D" vda)" | sed -n 2p)" "$T/exp_s4.raw" ||
  it_fail "qemu-img convert of s4's frozen chain"
it_guest_write "$D" 0x24 5M 1M
cp --sparse=always "$MNT/$D/vda/snapshots/s2/disk.raw" "$T/c_s2.raw" &
p1=$!
cp --sparse=always "$MNT/$D/vda/snapshots/s4/disk.raw" "$T/c_s4.raw" &
p2=$!
cp --sparse=always "$MNT/$E/vda/snapshots/e1/disk.raw" "$T/c_e1.raw" &
p3=$!
wait "$p1" || it_fail "cp of s2"
wait "$p2" || it_fail "cp of s4"
wait "$p3" || it_fail "cp of e1"
# s2's frozen chain is s1's overlay over the base, merged since: its
# content is unchanged by the merges that kept it
cmp "$T/exp_s2.raw" "$T/c_s2.raw" || it_fail "concurrent cp: s2 differs"
cmp "$T/exp_s4.raw" "$T/c_s4.raw" || it_fail "concurrent cp: s4 differs"
cmp "$T/exp_e1.raw" "$T/c_e1.raw" || it_fail "concurrent cp: e1 of $E differs"
it_log "ok: three concurrent cp (two snapshots of one disk, one of another domain) equal"
it_wait_until 5 "every server stops" nbd_none
