#!/usr/bin/env bash
# queue.sh — issue 8 §3: rmdir never says EBUSY because of chainfs's own
# merges.
#  1. base <- s1 <- s2 <- s3 (active) on a running domain, a pattern in
#     every layer: `rmdir s3 s2 s1` (one command) returns 0 at once and
#     hides all three; `cat wait` returns once the chain is the base image
#     alone; the daemon log shows s2 and s1 merged as one job (two merges
#     in all: s3's, then the run); every pattern reads back from the base.
#  2. base <- s1 <- s2 <- s3 <- s4 (active), merges limited to 1 MiB/s:
#     s2's merge into s1 runs, s4 (not next to s2: no regroup) is queued
#     behind it, `virsh destroy`: the merge fails and s4 comes back in
#     snapshots/ with the reason in `job`; after `virsh start`, `rmdir s2
#     s4` completes.
#  3. Regroup (§3.3): s1's merge into the base has just started (slow)
#     when s3, next to it, is queued: it is aborted and s3 and s1 are
#     merged as one job; every pattern of parts 2 and 3 reads back.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

# ---- 1. one command, as few merges as the chain allows ------------------------

D="$IT_PREFIX-q"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"

mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
it_guest_write "$D" 0x22 4M 4M
mkdir "$MNT/$D/vda/snapshots/s2" || it_fail "mkdir snapshots/s2"
it_guest_write "$D" 0x33 12M 4M
mkdir "$MNT/$D/vda/snapshots/s3" || it_fail "mkdir snapshots/s3"
it_guest_write "$D" 0x44 20M 4M
it_assert_eq "s1 s2 s3" "$(it_snapshots "$D" vda)" "three snapshots"

t0=$(it_now_ms)
rmdir "$MNT/$D/vda/snapshots/s3" "$MNT/$D/vda/snapshots/s2" \
  "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir s3 s2 s1"
took=$(($(it_now_ms) - t0))
it_log "rmdir s3 s2 s1 returned 0 after $took ms"
[ "$took" -lt 10000 ] || it_fail "rmdir s3 s2 s1 took $took ms: the queued ones must not wait for the merge"
it_assert_eq "" "$(it_snapshots "$D" vda)" "ls snapshots/ right after rmdir: all three gone"
job=$(cat "$MNT/$D/vda/job")
it_log "job after rmdir:"$'\n'"$job"

out=$(it_wait_job "$D" vda)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "cat wait: the last merge completed"
it_assert_eq "" "$(sed -n 's/^queued: *//p' <<<"$out")" "cat wait: nothing queued any more"
it_assert_eq "1" "$(jq '.layers | length' "$MNT/$D/vda/chain.json")" "chain.json: one layer left"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "libvirt: the base image is the active layer"
it_assert_eq "" "$(it_snapshots "$D" vda)" "ls snapshots/ after the merges"
it_assert_eq "" "$(it_snapshot_names "$D")" "virsh snapshot-list is empty"

# Two merges at most: s3's, then s2 and s1 as one run; or one, when s3's
# merge was under half done as s2 queued next to it and was regrouped
# (§3.3). Which one depends on how fast QEMU is; never three.
grep -E "$D/vda.*(started|queued|dispatched|merged|pulled|regroup)" "$IT_LOG" | sed 's/^/    /' >&2
done_merges=$(grep -cE "$D/vda: snapshots? .* (merged|pulled) into " "$IT_LOG" || true)
it_log "merges completed: $done_merges"
if [ "$done_merges" -lt 1 ] || [ "$done_merges" -gt 2 ]; then
  it_fail "$done_merges merges for three adjacent snapshots (want 1 or 2)"
fi
grep -qE "$D/vda: snapshots [a-z0-9]+, [a-z0-9]+(, [a-z0-9]+)? merged into $base in one job" "$IT_LOG" ||
  it_fail "the log does not show adjacent snapshots merged into the base as one job"
it_log "ok: three adjacent deletions in $done_merges merges, the last a run of several"
leftover=$(find "$T" "$T/overlays" -maxdepth 1 -name "$D.vda.*" 2>/dev/null || true)
it_assert_eq "" "$leftover" "every merged overlay deleted"

it_destroy "$D"
it_check_pattern "$base" 0x11 0 1M
it_check_pattern "$base" 0x22 4M 4M
it_check_pattern "$base" 0x33 12M 4M
it_check_pattern "$base" 0x44 20M 4M
it_unmount || it_fail "unmount after part 1"

# ---- 2. the merge ahead fails: the queue comes back -----------------------------

D2="$IT_PREFIX-qd"
base2="$T/base2.qcow2"
it_make_image "$base2" 64M
it_write_pattern "$base2" 0x11 0 1M
it_define "$D2" "$base2"
it_mount_slow 1048576
it_start "$D2"
it_wait_dom "$D2"
S="$MNT/$D2/vda/snapshots"

mkdir "$S/s1" || it_fail "mkdir snapshots/s1"
it_guest_write "$D2" 0x22 4M 2M
mkdir "$S/s2" || it_fail "mkdir snapshots/s2"
it_guest_write "$D2" 0x33 8M 12M
mkdir "$S/s3" || it_fail "mkdir snapshots/s3"
it_guest_write "$D2" 0x55 22M 1M
mkdir "$S/s4" || it_fail "mkdir snapshots/s4"
it_guest_write "$D2" 0x44 24M 1M

# s2 into s1 at 1 MiB/s (12 MiB: about 12 s); s4 queued behind it
it_rmdir_throttled "$D2" vda s2
rmdir "$S/s4" || it_fail "rmdir s4 (queued)"
it_assert_eq "s1 s3" "$(it_snapshots "$D2" vda)" "s2 merging, s4 queued: s1 and s3 listed"
it_assert_contains "$(cat "$MNT/$D2/vda/job")" "queued:" "job shows the queue"
it_assert_eq '["s4"]' "$(jq -c '[.queue[].snapshot]' "$MNT/$D2/vda/job.json")" "job.json: queue"
it_assert_eq "running" "$(it_job_field "$D2" vda state)" "s2's merge still runs"

it_destroy "$D2"
out=$(it_wait_job "$D2" vda 60)
it_log "cat wait after destroy:"$'\n'"$out"
it_assert_eq "failed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of s2 failed"
returned=$(sed -n 's/^returned: *//p' <<<"$out")
it_log "returned: $returned"
case "$returned" in
  "s4 (the merge of s2 failed: "*) ;;
  *) it_fail "job does not say s4 came back because the merge of s2 failed: '$returned'" ;;
esac
it_assert_eq '["s4"]' "$(jq -c '[.returned[].snapshot]' "$MNT/$D2/vda/job.json")" "job.json: returned"
it_assert_eq "s1 s2 s3 s4" "$(it_snapshots "$D2" vda)" "s2 and s4 back in snapshots/"

it_start "$D2"
rmdir "$S/s2" "$S/s4" || it_fail "rmdir s2 s4 after virsh start"
it_assert_eq "s1 s3" "$(it_snapshots "$D2" vda)" "s2 and s4 gone from snapshots/"
it_unthrottle "$D2" vda
out=$(it_wait_job "$D2" vda 300)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merges completed"
it_assert_eq "3" "$(jq '.layers | length' "$MNT/$D2/vda/chain.json")" "chain.json: s3 <- s1 <- base"
it_assert_eq "s1 s3" "$(it_snapshots "$D2" vda)" "ls snapshots/: s1 s3"
f3=$(it_domblk "$D2" vda)

# ---- 3. regroup: a slow merge just started, the deletion next to it queued ------

# s1 (14 MiB now) into the base at 1 MiB/s; s3, the active layer above
# it, queued a moment later: the merge of s1 is aborted and s3 and s1 go
# as one active commit into the base
it_rmdir_throttled "$D2" vda s1
rmdir "$S/s3" || it_fail "rmdir s3 (next to s1's merge)"
it_assert_eq "" "$(it_snapshots "$D2" vda)" "s1 merging, s3 queued: none listed"
out=$(it_wait_job "$D2" vda 300)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the union merge completed"
it_assert_eq "s3, s1" "$(sed -n 's/^snapshots: *//p' <<<"$out")" "one job removed s3 and s1"
it_assert_eq "1" "$(jq '.layers | length' "$MNT/$D2/vda/chain.json")" "chain.json: the base alone"
it_assert_eq "$base2" "$(it_domblk "$D2" vda)" "libvirt: the base image is the active layer"
grep -q "$D2/vda: regrouping: the merge of s1" "$IT_LOG" ||
  it_fail "the log does not show the merge of s1 regrouped"
grep -q "$D2/vda: queued deletions dispatched: s3, s1 as one" "$IT_LOG" ||
  it_fail "the log does not show s3 and s1 dispatched as one job"
it_assert_eq "" "$(it_snapshot_names "$D2")" "virsh snapshot-list is empty"

it_destroy "$D2"
it_check_pattern "$base2" 0x11 0 1M
it_check_pattern "$base2" 0x22 4M 2M
it_check_pattern "$base2" 0x33 8M 12M
it_check_pattern "$base2" 0x55 22M 1M
it_check_pattern "$base2" 0x44 24M 1M
[ ! -e "$f3" ] || [ "$f3" = "$base2" ] || it_fail "s3's file $f3 still exists"
