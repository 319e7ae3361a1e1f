#!/usr/bin/env bash
# ctl.sh — the per-disk ctl file steers the disk's job (issue 7):
#   a. `bandwidth 1M` during a merge: libvirt's job has 1 MiB/s, `job`
#      shows it; after kill -9 of the daemon (and libvirt's limit changed
#      behind its back) the restarted daemon applies 1 MiB/s again, from
#      its journal, not the mount's default; `bandwidth 0` lifts it.
#   b. `abort` during an active commit: canceled, the chain as before, the
#      snapshot back in snapshots/; `abort` during an intermediate commit
#      once the base was written: canceled, partial: yes.
#   c. `pivot manual`: the active commit waits in ready while the guest
#      writes; `pivot` before ready is EAGAIN; `pivot` once ready completes,
#      also right after a guest write (the mirror catching up is ready).
#   d. refused writes (unknown command, a negative bandwidth, two commands
#      in one write, a 1 MiB write): EINVAL or E2BIG, nothing changes, and
#      the daemon keeps serving.
# Every qemu-io pattern written on the way reads back at the end.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/../fault/lib.sh"
fault_init

MiB=1048576
D="$IT_PREFIX-ctl"
base="$FAULT_IMAGES/base.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
# every merge starts limited to 2 MiB/s, from its first byte
it_mount_slow $((2 * MiB))
it_wait_dom "$D"
C="$MNT/$D/vda/ctl"
S="$MNT/$D/vda/snapshots"

# polled conditions (it_wait_until runs its command again each time)
job_is() { [ "$(it_job_field "$D" vda "$1" 2>/dev/null)" = "$2" ]; }
libvirt_bw_is() { [ "$(it_libvirt_bandwidth "$D" vda)" = "$1" ]; }
snaps_are() { [ "$(it_snapshots "$D" vda)" = "$1" ]; }
base_written() { [ "$(it_job_field "$D" vda cur 2>/dev/null)" -gt 0 ]; }

ctl_text=$(cat "$C") || it_fail "cat ctl"
it_log "ctl reads:"$'\n'"$ctl_text"
for word in abort pivot manual auto bandwidth; do
  it_assert_contains "$ctl_text" "$word" "ctl lists $word"
done

# base <- s1 (96 MiB) <- s2 (64 MiB, active)
mkdir "$S/s1" || it_fail "mkdir s1"
it_guest_write "$D" 0x22 1M 96M
mkdir "$S/s2" || it_fail "mkdir s2"
it_guest_write "$D" 0x33 100M 64M

# ---- a: bandwidth -------------------------------------------------------------------
it_rmdir_throttled "$D" vda s1
it_assert_eq "commit" "$(it_job_field "$D" vda type)" "an intermediate commit"

# ---- d: refused writes, while that merge runs ------------------------------------------
world() {
  jq -c '[.layers[].file]' "$MNT/$D/vda/chain.json"
  jq -c '[.state, .type, .bandwidth, .origin, .pivot]' "$MNT/$D/vda/job.json"
  it_libvirt_bandwidth "$D" vda
  it_snapshots "$D" vda
  cat "$C"
}
before=$(world)
for bad in 'bogus\n' 'bandwidth -5\n' 'abort\npivot\n' 'bandwidth\n' 'pivot sideways\n' 'bandwidth 1Q\n'; do
  got=$(it_ctl_errno "$D" vda "$bad")
  it_assert_eq "EINVAL" "$got" "write '$bad' to ctl"
done
got=$(it_ctl_errno "$D" vda 'bandwidth 1M ' $MiB)
case "$got" in
  EINVAL | E2BIG) it_log "ok: a 1 MiB write to ctl -> $got" ;;
  *) it_fail "a 1 MiB write to ctl -> $got (want EINVAL or E2BIG)" ;;
esac
it_assert_eq "$before" "$(world)" "the refused writes changed nothing"
grep -q "bogus" "$IT_LOG" || it_fail "no log line for the refused 'bogus'"
kill -0 "$IT_PID" || it_fail "the daemon died"
it_assert_eq "running" "$(it_job_field "$D" vda state)" "the merge still runs after the refused writes"

it_ctl "$D" vda "bandwidth 1M" || it_fail "echo 'bandwidth 1M' > ctl"
it_assert_eq "$MiB" "$(it_libvirt_bandwidth "$D" vda)" "virsh blockjob --info: 1 MiB/s"
it_wait_until 5 "job.json shows 1 MiB/s" job_is bandwidth "$MiB"
job=$(cat "$MNT/$D/vda/job")
grep -Eq '^bandwidth: *1(\.0)? ?MiB/s' <<<"$job" || it_fail "job does not show 1 MiB/s:"$'\n'"$job"
it_log "ok: job shows $(grep '^bandwidth' <<<"$job")"

fault_kill_daemon
# libvirt's limit changed while no daemon runs: chainfs puts its own back
it_virsh blockjob "$D" vda --bandwidth 5 >/dev/null || it_fail "virsh blockjob --bandwidth 5"
it_assert_eq "$((5 * MiB))" "$(it_libvirt_bandwidth "$D" vda)" "libvirt has 5 MiB/s while no daemon runs"
# the new daemon's default (2 MiB/s) is for merges it starts, not this one
fault_remount "bandwidth=$((2 * MiB))"
it_wait_dom "$D"
it_wait_until 30 "the restarted daemon applies 1 MiB/s again" libvirt_bw_is "$MiB"
it_assert_eq "$MiB" "$(it_job_field "$D" vda bandwidth)" "job.json: 1 MiB/s after the restart"
it_assert_eq "running" "$(it_job_field "$D" vda state)" "the merge is followed again"

it_ctl "$D" vda "bandwidth 0" || it_fail "echo 'bandwidth 0' > ctl"
if [ -n "$(fault_libvirt_job "$D" vda)" ]; then
  it_assert_eq "" "$(it_libvirt_bandwidth "$D" vda)" "virsh blockjob --info: no limit"
fi
out=$(it_wait_job "$D" vda 300)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge of s1 completed"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "snapshots/: s2"

# ---- b: abort ---------------------------------------------------------------------------
# base <- s2 (64 MiB) <- s3 (60 MiB, active): less data than s2, so the
# cost rule of issue 8 commits (a pull would copy more)
mkdir "$S/s3" || it_fail "mkdir s3"
top=$(it_domblk "$D" vda)
it_guest_write "$D" 0x44 170M 60M
chain_before=$(jq -c '[.layers[].file]' "$MNT/$D/vda/chain.json")
it_rmdir_throttled "$D" vda s3
it_assert_eq "active-commit" "$(it_job_field "$D" vda type)" "an active commit"
it_guest_write "$D" 0x55 236M 1M
it_assert_eq "running" "$(it_job_field "$D" vda state)" "the active commit is copying"
it_ctl "$D" vda abort || it_fail "echo abort > ctl (active commit)"
out=$(it_wait_job "$D" vda 60)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "canceled" "$(sed -n 's/^state: *//p' <<<"$out")" "job: canceled"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "the active layer is s3 still"
it_wait_until 10 "s3 is back in snapshots/" snaps_are "s2 s3"
it_assert_eq "$chain_before" "$(jq -c '[.layers[].file]' "$MNT/$D/vda/chain.json")" "the chain is as before"
[ -z "$(fault_libvirt_job "$D" vda)" ] || it_fail "libvirt still has a job after the abort"
it_assert_eq "ENOENT" "$(it_ctl_errno "$D" vda 'abort\n')" "abort with no job"

# an intermediate commit, aborted once it wrote into the base
rmdir "$S/s2" || it_fail "rmdir s2"
it_assert_eq "commit" "$(it_job_field "$D" vda type)" "an intermediate commit"
it_wait_until 60 "the merge of s2 wrote into the base" base_written
it_ctl "$D" vda abort || it_fail "echo abort > ctl (intermediate commit)"
out=$(it_wait_job "$D" vda 60)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "canceled" "$(sed -n 's/^state: *//p' <<<"$out")" "job: canceled"
it_assert_eq "true" "$(it_job_field "$D" vda partial)" "partial: the base was written"
grep -Eq '^partial: *yes$' "$MNT/$D/vda/job" || it_fail "job does not say partial: yes"
it_wait_until 10 "s2 is back in snapshots/" snaps_are "s2 s3"
it_assert_eq "$chain_before" "$(jq -c '[.layers[].file]' "$MNT/$D/vda/chain.json")" "the chain is as before"

# ---- c: pivot manual ----------------------------------------------------------------------
it_ctl "$D" vda "pivot manual" || it_fail "echo 'pivot manual' > ctl"
it_assert_contains "$(cat "$C")" "manual" "ctl shows pivot manual"
rmdir "$S/s3" || it_fail "rmdir s3"
it_assert_eq "EAGAIN" "$(it_ctl_errno "$D" vda 'pivot\n')" "pivot before ready"
it_assert_eq "manual" "$(it_job_field "$D" vda pivot)" "job.json: pivot manual"
it_ctl "$D" vda "bandwidth 0" || it_fail "echo 'bandwidth 0' > ctl"
fault_wait_state "$D" vda ready 120
it_guest_write "$D" 0x66 240M 1M
it_guest_write "$D" 0x77 0 4K
sleep 3
it_assert_eq "ready" "$(it_job_field "$D" vda state)" "still ready while the guest writes"
it_assert_eq "$top" "$(it_domblk "$D" vda)" "not pivoted while manual"
# a guest write just before `pivot`: the ready mirror is briefly behind
# (its progress short of its end) yet ready, and the pivot is accepted
it_guest_write "$D" 0x68 244M 8M
it_ctl "$D" vda pivot || it_fail "echo pivot > ctl"
out=$(it_wait_job "$D" vda 60)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "pivot completed the merge"
[ "$(it_domblk "$D" vda)" != "$top" ] || it_fail "still on s3 after the pivot"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
it_assert_eq "s2" "$(it_snapshots "$D" vda)" "snapshots/: s2"
it_ctl "$D" vda "pivot auto" || it_fail "echo 'pivot auto' > ctl"
active=$(it_domblk "$D" vda)
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$active" \
  "0x77 0 4K" "0x11 4K 1020K" "0x22 1M 96M" "0x33 100M 64M" "0x44 170M 60M" \
  "0x55 236M 1M" "0x66 240M 1M" "0x68 244M 8M"
