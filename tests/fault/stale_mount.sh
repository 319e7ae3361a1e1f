#!/usr/bin/env bash
# stale_mount.sh — chainfs started on the stale mount a killed daemon left
# behind (while that daemon's merge still runs in QEMU). Both as a daemon
# (the normal way) and in the foreground, it exits non-zero at once,
# before detaching (no chainfs process is left), and its message names the
# fix, `fusermount3 -u MOUNTPOINT`. After exactly that fix it mounts fine,
# takes up the merge from the journal and completes it.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-stale"
base="$FAULT_IMAGES/base.qcow2"
top="$FAULT_IMAGES/$D.vda.s1.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 4M
it_make_image "$top" 256M "$base"
it_write_pattern "$top" 0x22 2M 64M
it_define "$D" "$top"
it_start "$D"
it_mount_slow
it_wait_dom "$D"
it_rmdir_throttled "$D" vda s1
it_guest_write "$D" 0x33 100M 1M

fault_kill_daemon
fault_mounted || it_fail "the killed daemon's mount is gone (expected it stale)"
stale=$(it_errno stat "$MNT")
it_assert_eq ENOTCONN "$stale" "the mount point is stale (stat: ENOTCONN)"

OPTS="state_dir=$FAULT_STATE_DIR,overlay_dir=$T/overlays"
# no_daemon_left — no chainfs process runs on this (unique) mount point.
# pgrep only looks; anything it found would be ours and is killed by pid.
no_daemon_left() {
  local pids
  pids=$(pgrep -f -- "$CHAINFS.* $MNT\$" || true)
  [ -z "$pids" ] && return 0
  echo "[$IT_NAME] chainfs still running on the stale mount: $pids" >&2
  # shellcheck disable=SC2086 # one pid per word
  kill -KILL $pids 2>/dev/null || true
  return 1
}
for mode in daemon foreground; do
  args=(-c "$IT_URI" -o "$OPTS")
  [ "$mode" = daemon ] || args+=(-f)
  rc=0
  msg=$(timeout 30 "$CHAINFS" "${args[@]}" "$MNT" 2>&1) || rc=$?
  it_log "chainfs ($mode) on the stale mount: exit $rc: $msg"
  [ "$rc" -ne 0 ] || it_fail "chainfs ($mode) started on a stale mount with exit 0"
  [ "$rc" -ne 124 ] || it_fail "chainfs ($mode) on a stale mount did not return within 30 s"
  it_assert_contains "$msg" "fusermount3 -u $MNT" "the message ($mode) names the fix"
  # In the sanitized build a refusal must be as clean as a normal exit.
  case "$msg" in
    *Sanitizer* | *"runtime error"*) it_fail "chainfs ($mode) refused with a sanitizer report" ;;
  esac
  it_poll 2 no_daemon_left || it_fail "chainfs ($mode) left a process behind"
  it_log "ok: no chainfs process left ($mode)"
  fault_mounted || it_fail "the refused start changed the mount table"
done

# The fix, exactly as the message says it.
fusermount3 -u "$MNT" || it_fail "fusermount3 -u $(it_short "$MNT")"
fault_mounted && it_fail "the stale mount is still there after fusermount3 -u"
it_log "ok: fusermount3 -u cleared the stale mount"
fault_remount
it_wait_dom "$D"
it_wait_until 10 "recovery follows the merge" \
  fault_log_has "recovery: $D/vda: merge of s1 still running; following it"
it_log "ok: recovery logged: $(grep -E "recovery: $D/vda" "$IT_LOG" | tail -n 1)"
it_guest_write "$D" 0x44 110M 1M
fault_unthrottle "$D" vda
out=$(it_wait_job "$D" vda 120)
it_log "cat wait:"$'\n'"$out"
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "the merge completed after the fix"
it_assert_eq "$base" "$(it_domblk "$D" vda)" "pivoted: the base is the active image"
[ ! -e "$top" ] || it_fail "the merged overlay $top still exists"
fault_check_invariants "$D" vda

it_destroy "$D"
fault_check_patterns "$base" "0x11 0 2M" "0x22 2M 64M" "0x33 100M 1M" "0x44 110M 1M"
