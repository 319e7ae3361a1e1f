#!/usr/bin/env bash
# external_job.sh — block jobs chainfs did not start (issue 7): a
# `virsh blockcopy --transient-job` and a `virsh blockpull` started by hand
# on a mounted disk. While each runs:
#   - `job` shows it as what it is (type copy / pull) with origin: external;
#   - mkdir and rmdir on the disk are EBUSY, with a log line naming it;
#     abort and pivot in ctl are EBUSY too;
#   - a read of wait blocks (until the job ends; the copy in ready too);
#   - chainfs never pivots, aborts or cleans up after it: the copy stays in
#     ready until the test pivots it with virsh, and no file is deleted.
# When it ends the tree shows the new chain: the copy's single layer, and
# after the pull the pulled layer gone from the chain.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/../fault/lib.sh"
fault_init

D="$IT_PREFIX-ext"
base="$FAULT_IMAGES/base.qcow2"
dest="$FAULT_IMAGES/copy.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"
S="$MNT/$D/vda/snapshots"

mkdir "$S/s1" || it_fail "mkdir s1"
s1=$(it_domblk "$D" vda)
it_guest_write "$D" 0x22 1M 64M

# polled conditions (it_wait_until runs its command again each time)
origin_external() { [ "$(it_job_field "$D" vda origin 2>/dev/null)" = external ]; }
no_libvirt_job() { [ -z "$(fault_libvirt_job "$D" vda)" ]; }

# wait_blocks WHAT — a read of wait does not return while WHAT runs
# (timeout kills it: exit status 124).
wait_blocks() {
  local rc=0
  timeout 3 cat "$MNT/$D/vda/wait" >/dev/null 2>&1 || rc=$?
  it_assert_eq 124 "$rc" "cat wait blocks while $1 runs (timeout's status)"
}

# busy_checks TYPE NAME — the refusals while an external TYPE job runs;
# NAME is a snapshot in snapshots/.
busy_checks() {
  local type=$1 name=$2 job line
  it_wait_until 20 "job shows the external $type" origin_external
  job=$(cat "$MNT/$D/vda/job")
  it_log "job:"$'\n'"$job"
  it_assert_eq "$type" "$(it_job_field "$D" vda type)" "job.json type"
  grep -Eq '^origin: *external$' <<<"$job" || it_fail "job does not say origin: external"
  it_expect_errno EBUSY mkdir "$S/new-$type"
  it_expect_errno EBUSY rmdir "$S/$name"
  it_assert_eq "$name" "$(it_snapshots "$D" vda)" "snapshots/ unchanged"
  line=$(grep -E "mkdir $D/vda/snapshots/new-$type (refused|failed) \(Device or resource busy\)" "$IT_LOG" | tail -n 1)
  it_assert_contains "$line" "$type" "the mkdir refusal's log line names the $type job"
  line=$(grep -E "rmdir $D/vda/snapshots/$name (refused|failed) \(Device or resource busy\)" "$IT_LOG" | tail -n 1)
  it_assert_contains "$line" "$type" "the rmdir refusal's log line names the $type job"
  it_assert_eq "EBUSY" "$(it_ctl_errno "$D" vda 'abort\n')" "abort in ctl on an external job"
  it_assert_eq "EBUSY" "$(it_ctl_errno "$D" vda 'pivot\n')" "pivot in ctl on an external job"
  it_assert_eq "EBUSY" "$(it_ctl_errno "$D" vda 'bandwidth 5M\n')" "bandwidth in ctl on an external job"
  wait_blocks "the external $type job"
  [ -n "$(fault_libvirt_job "$D" vda)" ] || it_fail "the $type job ended during the checks (slow it more)"
}

# ---- a full copy, transient job, 1 MiB/s --------------------------------------------------
it_virsh blockcopy "$D" vda "$dest" --transient-job --bandwidth 1 >/dev/null ||
  it_fail "virsh blockcopy --transient-job"
it_log "virsh blockcopy started: $(fault_libvirt_job "$D" vda)"
busy_checks copy s1

it_virsh blockjob "$D" vda --bandwidth 0 >/dev/null || it_fail "virsh blockjob --bandwidth 0"
ready() { it_virsh dumpxml "$D" | grep -q "<mirror .*ready='yes'"; }
it_wait_until 120 "the copy is ready (mirror ready='yes')" ready
sleep 5
# chainfs never pivots nor aborts it
ready || it_fail "the copy left ready without the test"
it_assert_eq "$s1" "$(it_domblk "$D" vda)" "no pivot by chainfs"
it_assert_eq "copy" "$(it_job_field "$D" vda type)" "job still shows the copy"
it_expect_errno EBUSY mkdir "$S/while-ready"
wait_blocks "the external copy in ready"
it_virsh blockjob "$D" vda --pivot >/dev/null || it_fail "virsh blockjob --pivot"
it_assert_eq "$dest" "$(it_domblk "$D" vda)" "the copy is the active image"
chain_is() { [ "$(jq -c '[.layers[].file]' "$MNT/$D/vda/chain.json")" = "$1" ]; }
it_wait_until 20 "chain shows the copy alone" chain_is "[\"$dest\"]"
timeout 20 cat "$MNT/$D/vda/wait" >/dev/null || it_fail "cat wait did not return after the copy ended"
it_assert_eq "" "$(it_snapshots "$D" vda)" "snapshots/ is empty (a full copy has no backing)"
[ -e "$s1" ] && [ -e "$base" ] || it_fail "chainfs deleted a file of the copied chain"
it_log "ok: the old chain's files are untouched"

# ---- a pull into a new overlay, 1 MiB/s ------------------------------------------------------
mkdir "$S/s2" || it_fail "mkdir s2 after the copy ended"
s2=$(it_domblk "$D" vda)
it_guest_write "$D" 0x33 100M 1M
it_virsh blockpull "$D" vda --bandwidth 1 >/dev/null || it_fail "virsh blockpull"
it_log "virsh blockpull started: $(fault_libvirt_job "$D" vda)"
busy_checks pull s2
it_virsh blockjob "$D" vda --bandwidth 0 >/dev/null || true
it_wait_until 180 "the pull ends" no_libvirt_job
it_wait_until 20 "chain shows s2 alone (the copy pulled into it)" chain_is "[\"$s2\"]"
[ -e "$dest" ] || it_fail "chainfs deleted the pulled layer's file"
it_log "ok: the pulled layer's file is untouched"
mkdir "$S/s3" || it_fail "mkdir s3 after the pull ended"
active=$(it_domblk "$D" vda)

it_destroy "$D"
fault_check_patterns "$active" \
  "0x11 0 1M" "0x22 1M 64M" "0x33 100M 1M"
