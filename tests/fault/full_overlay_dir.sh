#!/usr/bin/env bash
# full_overlay_dir.sh — issue 3: "overlay_dir on a small tmpfs that is
# full: mkdir -> ENOSPC, nothing changed".
#
# overlay_dir is an 8 MiB tmpfs. One snapshot is taken while it has room;
# then it is filled up and mkdir is tried two ways:
#
#  1. less than 1 MiB free: chainfs's own check (it wants 4 MiB free for a
#     new overlay) refuses before asking libvirt;
#  2. 6 MiB free, but the disk is vdb, whose virtual size (1 PiB) makes the
#     new overlay's L1 table alone 16 MiB: chainfs's check passes, the
#     overlay is one chainfs does not write itself (over 64 TiB), so
#     libvirt (QEMU's blockdev-create) makes it, runs out of space, and
#     chainfs maps libvirt's "No space left on device" to ENOSPC too.
#
# Each time: errno ENOSPC (os.mkdir), and nothing changed — domblklist,
# snapshot-list, ls snapshots/, the files in overlay_dir, chain.json and the
# journal are byte-identical before and after —, the daemon's log has the
# refusal line and `job` shows the error. Then the space is freed and the
# same mkdir works. The invariants (tests/fault/lib.sh) close the test.
set -euo pipefail
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"

fault_init
OVL="$T/overlays"     # overlay_dir: it_mount passes this path
OVL_MOUNTED=0

# At exit, before lib.sh's clean-up: the domain first (while its QEMU
# holds files in the tmpfs, the copy of the mount in QEMU's namespace
# keeps it busy), then the tmpfs.
ovl_cleanup() {
  local dom
  for dom in "${IT_DOMAINS[@]}"; do
    it_virsh destroy "$dom" >/dev/null 2>&1
  done
  if [ "$OVL_MOUNTED" -eq 1 ]; then
    umount "$OVL" 2>/dev/null || umount -l "$OVL" ||
      echo "[$IT_NAME] cannot unmount the tmpfs on $OVL" >&2
  fi
}
fault_on_exit ovl_cleanup

# A tmpfs of 8 MiB as overlay_dir, mode 0755 (QEMU, as libvirt-qemu, must
# reach the overlays in it). Mounted before the domain starts: QEMU gets a
# copy of the host's mounts at start, and must see this one.
mount -t tmpfs -o size=8m,mode=0755 "cfsfault-$$" "$OVL" || it_fail "mount tmpfs on $OVL"
OVL_MOUNTED=1

# free_bytes DIR — what statvfs says an unprivileged writer may still use.
free_bytes() { stat -f -c '%a %S' "$1" | awk '{ printf "%d\n", $1 * $2 }'; }

# fill_to DIR LEFT — (re)create DIR/filler so that about LEFT bytes stay free.
fill_to() {
  local f="$1/filler" now
  rm -f "$f"
  now=$(free_bytes "$1")
  [ "$now" -gt "$2" ] || it_fail "only $now bytes free on $1 before filling"
  fallocate -l $((now - $2)) "$f" || it_fail "fallocate $f"
  it_log "filled $(it_short "$1"): $(free_bytes "$1") bytes free"
}

DOM="$IT_PREFIX-ovl"
it_make_image "$FAULT_IMAGES/vda.qcow2" 64M
it_make_image "$FAULT_IMAGES/vdb.qcow2" 1P
it_write_pattern "$FAULT_IMAGES/vda.qcow2" 0x11 0 1M
it_write_pattern "$FAULT_IMAGES/vdb.qcow2" 0x12 0 1M
it_define "$DOM" "$FAULT_IMAGES/vda.qcow2" "$FAULT_IMAGES/vdb.qcow2"
it_start "$DOM"
it_mount
it_wait_dom "$DOM"
S="$MNT/$DOM"

# One snapshot while there is room: the chain to keep intact has two layers.
mkdir "$S/vda/snapshots/s1" || it_fail "mkdir s1 with room in overlay_dir"
it_guest_write "$DOM" 0x21 1M 1M virtio-disk0
it_assert_eq "s1" "$(it_snapshots "$DOM" vda)" "s1 taken while overlay_dir had room"

# state DISK — everything mkdir could change, as one text.
state() {
  local disk=$1
  echo "== domblklist"; it_virsh domblklist "$DOM"
  echo "== snapshot-list"; it_snapshot_names "$DOM"
  echo "== ls snapshots"; it_snapshots "$DOM" "$disk"; echo
  echo "== overlay_dir"; (cd "$OVL" && find . -printf '%p %s\n' | sort)
  echo "== chain.json"; cat "$S/$disk/chain.json"
  echo "== journal"; cat "$T/state/journal" 2>/dev/null || true
}

# settle DISK — wait until chainfs shows libvirt's current sizes for the
# disk and chain.json stays the same for a second: the guest's last write
# and chainfs's background re-reads must not pass for a change mkdir made.
settle() {
  local disk=$1 files a b i
  mapfile -t files < <(it_chain "$(it_domblk "$DOM" "$disk")")
  it_check_chain "$DOM" "$disk" "${files[@]}"
  a=$(cat "$S/$disk/chain.json")
  for ((i = 0; i < 10; i++)); do
    sleep 1
    b=$(cat "$S/$disk/chain.json")
    [ "$a" != "$b" ] || return 0
    a=$b
  done
  it_fail "chain.json of $disk keeps changing"
}

# refused DISK NAME WHY_LOG WHY_JOB — mkdir DISK/snapshots/NAME fails with
# ENOSPC and changes nothing; the daemon's log has a line naming the mkdir
# and ENOSPC that contains WHY_LOG, and `job`'s error contains WHY_JOB.
refused() {
  local disk=$1 name=$2 before after err line t0
  cat "$S/$disk/wait" >/dev/null
  settle "$disk"
  before=$(state "$disk")
  it_expect_errno ENOSPC mkdir "$S/$disk/snapshots/$name"
  # Let a background re-read (if mkdir caused one) land before comparing;
  # and the engine thread closes the mkdir's journal entry after mkdir
  # returned: give it up to 10 s (a loaded machine) rather than one.
  sleep 1
  t0=$(it_now_ms)
  after=$(state "$disk")
  while [ "$before" != "$after" ] && [ $(($(it_now_ms) - t0)) -lt 10000 ]; do
    sleep 0.25
    after=$(state "$disk")
  done
  if [ "$before" != "$after" ]; then
    diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") >&2 || true
    it_fail "a refused mkdir $disk/snapshots/$name changed something"
  fi
  it_log "ok: domblklist, snapshot-list, ls snapshots/, overlay_dir, chain.json, journal unchanged"
  line=$(grep -F "mkdir $DOM/$disk/snapshots/$name " "$IT_LOG" | grep -F "(No space left on device)" | tail -n 1) ||
    it_fail "no log line for the refused mkdir $disk/snapshots/$name"
  it_assert_contains "$line" "$3" "the daemon log has the refusal line: ${line#* chainfs }"
  err=$(sed -n 's/^error: *//p' "$S/$disk/job")
  it_assert_contains "$err" "$4" "$disk/job shows the error ($err)"
  it_assert_eq failed "$(it_job_field "$DOM" "$disk" state)" "$disk/job state failed"
  it_assert_eq "$name" "$(it_job_field "$DOM" "$disk" snapshot)" "$disk/job names $name"
}

# 1. Under chainfs's 4 MiB threshold: refused before libvirt is asked.
fill_to "$OVL" $((512 * 1024))
refused vda s2 "overlay directory $OVL is full" "is full"

# 2. Above the threshold, but the overlay libvirt would create does not
# fit: libvirt's own ENOSPC.
fill_to "$OVL" $((6 * 1024 * 1024))
refused vdb big1 "No space left on device" "No space left"

# Space freed: the same names work.
rm -f "$OVL/filler"
it_log "freed overlay_dir: $(free_bytes "$OVL") bytes free"
mkdir "$S/vda/snapshots/s2" || it_fail "mkdir vda/snapshots/s2 after freeing space"
it_assert_eq "s1 s2" "$(it_snapshots "$DOM" vda)" "mkdir s2 works once overlay_dir has room"
it_assert_eq "$OVL/$DOM.vda.s2.qcow2" "$(it_domblk "$DOM" vda)" "vda writes to the new overlay"
it_guest_write "$DOM" 0x31 2M 1M virtio-disk0

# The vdb overlay needs 16 MiB: more than this tmpfs has in all. Make room
# by growing the tmpfs (remount keeps the files).
mount -o remount,size=40m "$OVL" || it_fail "remount $OVL with 40 MiB"
mkdir "$S/vdb/snapshots/big1" || it_fail "mkdir vdb/snapshots/big1 after making room"
it_assert_eq "big1" "$(it_snapshots "$DOM" vdb)" "mkdir big1 works once overlay_dir has room"
it_guest_write "$DOM" 0x32 1M 1M virtio-disk1

it_assert_eq "big1 s1 s2" "$(it_snapshot_names "$DOM" | tr '\n' ' ' | sed 's/ $//')" \
  "virsh snapshot-list names the three snapshots taken"
fault_check_invariants "$DOM" vda "$DOM" vdb

# Every pattern reads back through the chains the guest uses.
it_check_pattern "$(it_domblk "$DOM" vda)" 0x11 0 1M
it_check_pattern "$(it_domblk "$DOM" vda)" 0x21 1M 1M
it_check_pattern "$(it_domblk "$DOM" vda)" 0x31 2M 1M
it_check_pattern "$(it_domblk "$DOM" vdb)" 0x12 0 1M
it_check_pattern "$(it_domblk "$DOM" vdb)" 0x32 1M 1M
