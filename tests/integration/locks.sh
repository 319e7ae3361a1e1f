#!/usr/bin/env bash
# locks.sh — another process holds an image of the chain (here qemu-io,
# read-only, as a backup tool or a second QEMU would): QEMU's image
# locking refuses the merge, and chainfs says EBUSY and names the image.
#   1. running, rmdir of a middle layer while the base is held: QEMU's
#      'Failed to get "write" lock' -> rmdir EBUSY naming the base (found
#      by looking for the process that has it open without the top);
#   2. running, rmdir of the active layer while the layer below is held:
#      EBUSY naming that layer;
#   3. running, rmdir of a middle layer while that layer itself is held
#      (and, by qemu-io, its backing file): EBUSY naming both images;
#   4. shut off, rmdir of a middle layer while the base is held: the
#      offline merge (qemu-img commit) fails, the job's error names the
#      base as in use by another process;
# each time nothing changes (domblklist, snapshot-list, snapshots/, the
# chain on disk) and, once the holder is gone, the same rmdir merges; every
# pattern reads back.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

HOLDER="" # pid of the qemu-io holding an image, while one does

lk_cleanup() {
  local rc=$?
  set +e
  [ -z "$HOLDER" ] || { kill "$HOLDER"; wait "$HOLDER"; } 2>/dev/null
  (exit "$rc")
  it_cleanup
}
trap lk_cleanup EXIT

# hold FILE — open FILE read-only (with QEMU's locks) in a qemu-io of our
# own until release.
hold() {
  qemu-io -r -f qcow2 -c "sleep 600000" "$1" >"$T/holder.out" 2>&1 &
  HOLDER=$!
  it_wait_until 10 "qemu-io holds $(it_short "$1")" holds "$1"
  it_log "qemu-io (pid $HOLDER) holds $(it_short "$1")"
}
holds() {
  kill -0 "$HOLDER" 2>/dev/null || it_fail "qemu-io could not open $1: $(cat "$T/holder.out")"
  [ "$(readlink -f "/proc/$HOLDER/fd/"* 2>/dev/null | grep -cxF "$1")" -gt 0 ]
}
release() {
  kill "$HOLDER"
  wait "$HOLDER" 2>/dev/null || true
  HOLDER=""
}

D="$IT_PREFIX-locks"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"
S="$MNT/$D/vda/snapshots"
mkdir "$S/s1" || it_fail "mkdir snapshots/s1"
s1=$(it_domblk "$D" vda)
# 2 MiB in s1, 1 MiB in s2: rmdir s2 stays an active commit (the cost
# rule of issue 8 would pull s1 into s2 if s1 held less)
it_guest_write "$D" 0x22 1M 2M
mkdir "$S/s2" || it_fail "mkdir snapshots/s2"
s2=$(it_domblk "$D" vda)
it_guest_write "$D" 0x33 2M 1M

world() {
  it_virsh domblklist "$D"
  it_snapshot_names "$D"
  it_snapshots "$D" vda
  it_chain "$s2"
}

# busy NAME HELD NAMED — rmdir snapshots/NAME is EBUSY while HELD is held;
# the log line and the job's error say "image NAMED is in use by another
# process" and carry QEMU's message; nothing changed.
busy() {
  local before err line want="image $3 is in use by another process"
  before=$(world)
  it_expect_errno EBUSY rmdir "$S/$1"
  line=$(grep -F "rmdir $D/vda/snapshots/$1 failed (Device or resource busy): " "$IT_LOG" | tail -n 1)
  it_assert_contains "$line" "$want: " "the log line says: $(it_short "$want")"
  it_assert_contains "$line" "Failed to get" "the log line carries QEMU's message"
  err=$(sed -n 's/^error: *//p' "$MNT/$D/vda/job")
  it_assert_contains "$err" "$want" "job's error says the same"
  it_assert_eq "$before" "$(world)" "rmdir $1 changed nothing"
}

# --- 1. middle layer, base held: "write" lock -----------------------------------------
hold "$base"
busy s1 "$base" "$base"
release

# --- 2. active layer, the layer below held: "write" lock -----------------------------
hold "$s1"
busy s2 "$s1" "$s1"
release

# --- 3. middle layer held itself --------------------------------------------------------
# (qemu-io opens s1's backing file too, and its locks there keep QEMU from
# writing the base: either image may be the one, and both are named)
hold "$s1"
busy s1 "$s1" "$base or $s1"
release

# --- 4. shut off: qemu-img commit, base held --------------------------------------------
it_destroy "$D"
it_wait_until 5 "chainfs sees the domain shut off" grep -q '^state: *shutoff$' "$MNT/$D/vda/chain"
hold "$base"
before=$(world)
rmdir "$S/s1" || it_fail "rmdir snapshots/s1 (shut off) was not accepted"
out=$(it_wait_job "$D" vda)
it_assert_eq "offline-commit failed" "$(jq -r '"\(.type) \(.state)"' "$MNT/$D/vda/job.json")" "the offline merge failed"
err=$(jq -r .error "$MNT/$D/vda/job.json")
it_assert_contains "$err" "image $base is in use by another process" "job's error names the base"
it_assert_contains "$err" "Failed to get \"write\" lock" "job's error carries qemu-img's message"
it_assert_eq "$before" "$(world)" "the failed offline merge changed nothing"
release

# --- the merges, once nobody holds anything -------------------------------------------
rmdir "$S/s1" || it_fail "rmdir snapshots/s1 (shut off)"
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the offline merge of s1 completed"
it_start "$D"
it_wait_until 5 "chainfs sees the domain running" grep -q '^state: *running$' "$MNT/$D/vda/chain"
rmdir "$S/s2" || it_fail "rmdir snapshots/s2"
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of s2 completed"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "the disk is the base again"
it_check_pattern "$base" 0x11 0 1M
it_check_pattern "$base" 0x22 1M 1M
it_check_pattern "$base" 0x33 2M 1M
