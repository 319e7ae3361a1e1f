#!/usr/bin/env bash
# mtime.sh — a node's mtime is when what it shows last changed, so
# `rsync -a` (which compares size and mtime) copies exactly the files
# that changed: the root and every node are dated at the mount at first;
# a file changes its mtime when its bytes change (even when its size
# does not: `job` of one snapshot and of the next have the same length),
# a directory when its entries change; nothing changes on its own.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
command -v rsync >/dev/null 2>&1 || it_skip "rsync is not installed (run scripts/deps.sh)"

D1="$IT_PREFIX-m1"
D2="$IT_PREFIX-m2"
it_make_image "$T/d1a.qcow2" 64M
it_make_image "$T/d1b.qcow2" 64M
it_make_image "$T/d2a.qcow2" 64M
it_define "$D1" "$T/d1a.qcow2" "$T/d1b.qcow2"
it_define "$D2" "$T/d2a.qcow2"

before_mount=$(date +%s)
it_mount
after_mount=$(date +%s)
it_wait_dom "$D1"
it_wait_dom "$D2"

root_mtime=$(stat -c %Y "$MNT")
if [ "$root_mtime" -lt "$before_mount" ] || [ "$root_mtime" -gt "$after_mount" ]; then
  it_fail "the root's mtime $root_mtime is not the mount time ($before_mount..$after_mount)"
fi
it_log "ok: the root is dated at the mount ($root_mtime)"

for s in s1 s2; do
  mkdir "$MNT/$D1/vda/snapshots/$s" || it_fail "mkdir $D1/vda/snapshots/$s"
done

# one rsync of our two domains (other domains of this host change
# meanwhile) into $T/copy; prints the files it transferred, sorted.
sync_copy() {
  # (no guest disks: rsync of a whole tree leaves disk.raw out, as
  # docs/FILES.md advises; its reader would show in job until released)
  rsync -a --exclude=disk.raw --itemize-changes "$MNT/$D1" "$MNT/$D2" "$T/copy/" >"$T/rsync.out" ||
    it_fail "rsync -a of the mount: $(cat "$T/rsync.out")"
  awk '$1 ~ /^>f/ { print $2 }' "$T/rsync.out" | sort | tr '\n' ' ' | sed 's/ $//'
}

# the copy is what the mount shows (every file's bytes)
check_copy() {
  diff -r -x disk.raw "$MNT/$D1" "$T/copy/$D1" >&2 || it_fail "$1: the copy of $D1 differs from the mount"
  diff -r -x disk.raw "$MNT/$D2" "$T/copy/$D2" >&2 || it_fail "$1: the copy of $D2 differs from the mount"
  it_log "ok: $1: the copy is what the mount shows"
}

mkdir "$T/copy"
sync_copy >/dev/null
check_copy "first rsync"
t0=$(stat -c %Y "$MNT/$D1/vda/chain")

# no change: the times stay, and rsync copies nothing
sleep 1.1
it_assert_eq "$t0" "$(stat -c %Y "$MNT/$D1/vda/chain")" "an unchanged file keeps its mtime"
it_assert_eq "" "$(sync_copy)" "rsync after no change copies nothing"

# a change: one more snapshot of D1/vda, its name and its overlay's path
# as long as the last one's
job_size=$(stat -c %s "$MNT/$D1/vda/job")
mkdir "$MNT/$D1/vda/snapshots/s3" || it_fail "mkdir $D1/vda/snapshots/s3"
it_assert_eq "$job_size" "$(stat -c %s "$MNT/$D1/vda/job")" \
  "job has the same size after the third mkdir (so only its mtime can tell)"
t1=$(stat -c %Y "$MNT/$D1/vda/chain")
[ "$t1" -gt "$t0" ] || it_fail "chain's mtime did not move forward ($t0 -> $t1)"
it_log "ok: chain's mtime moved from $t0 to $t1"
[ "$(stat -c %Y "$MNT/$D1/vda/snapshots")" -ge "$t1" ] ||
  it_fail "snapshots/ did not change its mtime when its entries changed"
# (the root lists the other domains of this host too, which come and go)
it_assert_eq "$root_mtime" "$(stat -c %Y "$MNT/$D1")" "$D1's disks stayed, so did its directory's mtime"
it_assert_eq "$root_mtime" "$(stat -c %Y "$MNT/$D1/vdb/chain")" "the other disk's chain kept its mtime"

# the files whose bytes differ from the copy, or that are new
changed=$(cd "$MNT" && find "$D1" "$D2" -type f ! -name disk.raw | sort | while read -r f; do
  cmp -s "$f" "$T/copy/$f" || printf '%s\n' "$f"
done | tr '\n' ' ' | sed 's/ $//')
V="$D1/vda"
it_assert_contains "$changed" "$V/job " "job's bytes changed"
it_assert_contains "$changed" "$V/snapshots/s3/info" "the new snapshot is there"
case " $changed" in
  *" $D1/vdb/"* | *" $D2/"*) it_fail "files of other disks changed: $changed" ;;
esac
it_assert_eq "$changed" "$(sync_copy)" "the second rsync copies exactly the files that changed"
check_copy "second rsync"
grep -q "^\.d\.\.t.* $V/snapshots/$" "$T/rsync.out" ||
  it_fail "rsync did not see snapshots/ change its time: $(cat "$T/rsync.out")"
it_log "ok: rsync saw snapshots/ change its time"

sleep 1.1
it_assert_eq "" "$(sync_copy)" "a third rsync, nothing changed, copies nothing"
check_copy "third rsync"
