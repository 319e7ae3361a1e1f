#!/usr/bin/env bash
# full_base.sh — issue 3: "the layer being merged into sits on a filesystem
# that fills up: job failed with the reason, nothing lost, retry after
# freeing space completes".
#
# The domain's disk (the base image) lives on a 96 MiB ext4 on a loop
# device (a 96 MiB tmpfs where loop devices are not available); overlays go
# to overlay_dir on the big disk. Chain: base <- s1 <- s2 (active), the
# guest having written 24 MiB into each overlay. Twice — once for a middle
# layer (rmdir s1: commit s1 into base, no pivot), once for the active one
# (rmdir s2: active commit into base, then pivot) — the base's filesystem
# is filled until 8 MiB remain, so that the 24 MiB cannot fit:
#
#  - rmdir is accepted (the space runs out during the copy, not before);
#  - `cat wait` ends `failed`; job's `error:` says the block job failed,
#    and why: "(no space left on the filesystem of BASE)" (libvirt's
#    block-job event has no message; chainfs looks at the base's
#    filesystem itself);
#  - the snapshot is listed again, its info says `state: partial`;
#  - the guest is still running (QEMU's default policy for a commit job's
#    target write error is "report": the job fails, the guest, whose writes
#    go to the active overlay on another filesystem, never sees an error)
#    and its next write lands and reads back;
#  - nothing is lost: every pattern reads back through the chain, which is
#    unchanged; the invariants hold (tests/fault/lib.sh);
# then the filler is deleted and the same rmdir completes.
set -euo pipefail
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"

fault_init
BFS="$T/basefs"        # the small filesystem's mount point
BFS_MOUNTED=0
LOOP=""
EVPID=""               # a `virsh qemu-monitor-event` we started

# At exit, before lib.sh's clean-up: the listener, the domain (its QEMU has
# the base open, in a mount namespace whose copy of the small filesystem
# would keep it busy), then the filesystem and its loop device.
fb_cleanup() {
  local dom
  [ -z "$EVPID" ] || kill "$EVPID" 2>/dev/null
  for dom in "${IT_DOMAINS[@]}"; do
    it_virsh destroy "$dom" >/dev/null 2>&1
  done
  if [ "$BFS_MOUNTED" -eq 1 ]; then
    umount "$BFS" 2>/dev/null || umount -l "$BFS" ||
      echo "[$IT_NAME] cannot unmount $BFS" >&2
  fi
  # A loop device still referenced (by a mount namespace not gone yet) is
  # only marked for auto-detach by losetup -d: fine.
  [ -z "$LOOP" ] || losetup -d "$LOOP" ||
    echo "[$IT_NAME] cannot detach $LOOP" >&2
}
fault_on_exit fb_cleanup

mkdir -m 0755 "$BFS"
# The small filesystem must exist before the domain starts: QEMU runs in a
# mount namespace copied from the host's when it starts.
if command -v mkfs.ext4 >/dev/null 2>&1 && command -v losetup >/dev/null 2>&1 &&
  truncate -s 96M "$T/basefs.img" && mkfs.ext4 -q -F -m 0 "$T/basefs.img" &&
  LOOP=$(losetup --find --show "$T/basefs.img" 2>/dev/null); then
  mount -t ext4 "$LOOP" "$BFS" || it_fail "mount $LOOP on $BFS"
  BFS_KIND="ext4 on $LOOP"
else
  LOOP=""
  mount -t tmpfs -o size=96m "cfsfault-$$" "$BFS" || it_fail "mount tmpfs on $BFS"
  BFS_KIND="tmpfs (no loop device here)"
fi
BFS_MOUNTED=1
chmod 0755 "$BFS" # QEMU, as libvirt-qemu, must reach the base
# The filler lives in a subdirectory: the orphan check looks at the image
# files directly in $BFS.
mkdir -m 0755 "$BFS/fill"
FAULT_IMAGE_DIRS+=("$BFS")

# free_bytes DIR — what statvfs says a non-root writer (QEMU) may use.
free_bytes() { stat -f -c '%a %S' "$1" | awk '{ printf "%d\n", $1 * $2 }'; }

# fill_to LEFT — (re)create the filler so that about LEFT bytes stay free
# on the base's filesystem.
fill_to() {
  local now
  rm -f "$BFS/fill/filler"
  sync -f "$BFS"
  now=$(free_bytes "$BFS")
  [ "$now" -gt "$1" ] || it_fail "only $now bytes free on $(it_short "$BFS") before filling"
  fallocate -l $((now - $1)) "$BFS/fill/filler" || it_fail "fallocate $BFS/fill/filler"
  sync -f "$BFS"
  it_log "filled $(it_short "$BFS"): $(free_bytes "$BFS") bytes free"
}

DOM="$IT_PREFIX-fullbase"
BASE="$BFS/base.qcow2"
it_make_image "$BASE" 128M
it_write_pattern "$BASE" 0x11 0 1M
it_write_pattern "$BASE" 0x12 100M 1M
# 0x22 and 0x32 below overwrite 0..8K of 0x11: the newer layer must win
it_define "$DOM" "$BASE"
it_start "$DOM"
it_mount
it_wait_dom "$DOM"
S="$MNT/$DOM/vda"
it_log "base on $BFS_KIND, $(free_bytes "$BFS") bytes free; overlays in $(it_short "$T/overlays")"

# Patterns: PATTERNS[i] = "PATTERN OFFSET LEN", every one must read back
# through the active layer at every check.
PATTERNS=("0x11 8K 1016K" "0x12 100M 1M")
guest_write() {
  it_guest_write "$DOM" "$@"
  PATTERNS+=("$1 $2 $3")
}
check_patterns() {
  local p active
  active=$(it_domblk "$DOM" vda)
  for p in "${PATTERNS[@]}"; do
    # shellcheck disable=SC2086 # "PATTERN OFFSET LEN"
    it_check_pattern "$active" $p
  done
}

mkdir "$S/snapshots/s1" || it_fail "mkdir s1"
guest_write 0x21 8M 24M
guest_write 0x22 0 4K # over base data: s1's copy must win
mkdir "$S/snapshots/s2" || it_fail "mkdir s2"
guest_write 0x31 40M 24M
guest_write 0x32 4K 4K
S1="$T/overlays/$DOM.vda.s1.qcow2"
S2="$T/overlays/$DOM.vda.s2.qcow2"
it_check_chain "$DOM" vda "$S2" "$S1" "$BASE"

# merge_fails NAME TYPE — rmdir NAME while the base's filesystem cannot
# take what NAME holds: the merge fails, nothing is lost.
merge_fails() {
  local name=$1 type=$2 out err state
  fill_to $((8 * 1024 * 1024))
  # What QEMU itself says: its BLOCK_JOB_COMPLETED event (libvirt passes
  # on only "failed"). For the record in the test's output, not asserted:
  # the listener may miss the event if it registers late.
  it_virsh qemu-monitor-event --domain "$DOM" --event BLOCK_JOB_COMPLETED \
    --loop --timeout 60 >"$T/events.$name" 2>&1 &
  EVPID=$!
  sleep 0.5
  rmdir "$S/snapshots/$name" || it_fail "rmdir $name was refused (the space runs out later)"
  out=$(it_wait_job "$DOM" vda 120)
  printf '%s\n' "$out" >&2
  sleep 0.2
  kill "$EVPID" 2>/dev/null || true
  wait "$EVPID" 2>/dev/null || true
  EVPID=""
  it_log "QEMU's event: $(tr -s '\n' ' ' <"$T/events.$name")"
  it_assert_eq failed "$(sed -n 's/^state: *//p' <<<"$out")" "$type of $name into a full filesystem ends failed"
  it_assert_eq "$type" "$(sed -n 's/^type: *//p' <<<"$out")" "job type $type"
  err=$(sed -n 's/^error: *//p' <<<"$out")
  # libvirt's block-job event carries no message (QEMU's "No space left
  # on device" stays inside libvirtd), so the reason is chainfs's own
  # look at the base's filesystem.
  it_assert_contains "$err" "failed" "job's error says the block job failed"
  it_assert_contains "$err" "(no space left on the filesystem of $BASE)" "job's error names the full filesystem"
  it_assert_eq yes "$(sed -n 's/^partial: *//p' <<<"$out")" "job says partial: part of $name was written into the base"
  it_log "free on the base's filesystem after the failure: $(free_bytes "$BFS") bytes"

  # The guest: QEMU's "report" policy fails the job, not the guest.
  state=$(it_state "$DOM")
  it_log "domain state after the failed $type: $state; domblkerror: $(it_virsh domblkerror "$DOM" | tr -s ' \n' ' ')"
  it_assert_eq running "$state" "the guest keeps running"

  it_wait_until 5 "$name is listed again in snapshots/" test -d "$S/snapshots/$name"
  it_assert_eq partial "$(sed -n 's/^state: *//p' "$S/snapshots/$name/info")" "$name/info says state partial"
  it_assert_eq partial "$(jq -r .state "$S/snapshots/$name/info.json")" "$name/info.json says state partial"
}

# merge_completes NAME — free the space; rmdir NAME again completes.
merge_completes() {
  local name=$1 out
  rm -f "$BFS/fill/filler"
  it_log "filler deleted: $(free_bytes "$BFS") bytes free"
  rmdir "$S/snapshots/$name" || it_fail "rmdir $name again after freeing space"
  out=$(it_wait_job "$DOM" vda 120)
  it_assert_eq completed "$(sed -n 's/^state: *//p' <<<"$out")" "rmdir $name again completes once there is room"
  it_assert_eq - "$(sed -n 's/^error: *//p' <<<"$out")" "no error this time"
}

# 1. A middle layer: commit s1 into base (no pivot).
merge_fails s1 commit
it_assert_eq "s1 s2" "$(it_snapshots "$DOM" vda)" "snapshots/ lists s1 and s2 again"
it_check_chain "$DOM" vda "$S2" "$S1" "$BASE"
check_patterns
guest_write 0x41 70M 1M
fault_check_invariants "$DOM" vda
merge_completes s1
it_check_chain "$DOM" vda "$S2" "$BASE"
test ! -e "$S1" || it_fail "s1's overlay was not deleted after its merge"
check_patterns

# 2. The active layer: active commit of s2 into base, then pivot.
merge_fails s2 active-commit
it_assert_eq "s2" "$(it_snapshots "$DOM" vda)" "snapshots/ lists s2 again"
it_assert_eq "$S2" "$(it_domblk "$DOM" vda)" "no pivot: the guest still writes to s2"
it_check_chain "$DOM" vda "$S2" "$BASE"
check_patterns
guest_write 0x42 72M 1M
fault_check_invariants "$DOM" vda
merge_completes s2
it_assert_eq "$BASE" "$(it_domblk "$DOM" vda)" "pivoted to the base"
it_check_chain "$DOM" vda "$BASE"
test ! -e "$S2" || it_fail "s2's overlay was not deleted after its merge"
it_assert_eq "" "$(it_snapshot_names "$DOM")" "virsh snapshot-list is empty"
check_patterns
fault_check_invariants "$DOM" vda
# The base took two failed writes: it may have leaked clusters (qemu-img
# check: exit 3, harmless), never corruption (exit 2).
rc=0
out=$(qemu-img check -U "$BASE" 2>&1) || rc=$?
case $rc in
  0) it_log "ok: qemu-img check: base is clean" ;;
  3) it_log "ok: qemu-img check: base has only leaked clusters: $(tr '\n' ' ' <<<"$out")" ;;
  *) it_fail "qemu-img check of the base (exit $rc): $out" ;;
esac
