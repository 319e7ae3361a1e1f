#!/usr/bin/env bash
# double_mount.sh — chainfs refuses a mount point that is already mounted
# (issue 6, item 10): a second chainfs on a live chainfs mount (with a
# state_dir of its own, so the state_dir lock does not stop it), and a
# chainfs on a plain bind mount (another filesystem entirely). Daemon and
# foreground mode alike: exit non-zero before detaching, a message that
# says why, no second mount stacked on the first, no process left behind,
# and the first mount keeps answering.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-dbl"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_define "$D" "$base"
it_mount
it_wait_dom "$D"

# mounts_on DIR — how many entries of our mount table are mounted on DIR.
mounts_on() { awk -v m="$1" '$5 == m { n++ } END { print n + 0 }' /proc/self/mountinfo; }
# no_daemon_on DIR — no chainfs process but the first one ($IT_PID) runs
# with DIR as its mount point (pgrep only looks; DIR is unique to this
# script).
no_daemon_on() { ! pgrep -f -- "$CHAINFS.* $1\$" | grep -qvx "$IT_PID"; }

# try_second DIR WHAT — start chainfs on DIR in both modes and check the
# refusal.
try_second() {
  local dir=$1 what=$2 mode rc msg before
  before=$(mounts_on "$dir")
  for mode in daemon foreground; do
    mkdir -p "$T/state2-$mode"
    local args=(-c "$IT_URI" -o "state_dir=$T/state2-$mode,overlay_dir=$T/overlays")
    [ "$mode" = daemon ] || args+=(-f)
    rc=0
    msg=$(timeout 30 "$CHAINFS" "${args[@]}" "$dir" 2>&1) || rc=$?
    it_log "chainfs ($mode) on $what: exit $rc: $msg"
    [ "$rc" -ne 124 ] || it_fail "chainfs ($mode) on $what did not return within 30 s"
    [ "$rc" -ne 0 ] || it_fail "chainfs ($mode) mounted on top of $what"
    it_assert_contains "$msg" "already a mount point" "the message ($mode, $what) says why"
    case "$msg" in
      *Sanitizer* | *"runtime error"*) it_fail "chainfs ($mode) refused with a sanitizer report" ;;
    esac
    it_assert_eq "$before" "$(mounts_on "$dir")" "no second mount stacked on $what ($mode)"
    it_poll 2 no_daemon_on "$dir" || it_fail "chainfs ($mode) left a process behind on $what"
  done
}

try_second "$MNT" "a live chainfs mount"
test -d "$MNT/$D/vda/snapshots" || it_fail "the first mount no longer answers"
it_log "ok: the first mount still answers"

bind="$T/bind"
mkdir -p "$bind"
mount --bind "$bind" "$bind" || it_fail "mount --bind $(it_short "$bind")"
trap 'umount "$bind" 2>/dev/null; it_cleanup' EXIT
try_second "$bind" "a bind mount"
umount "$bind" || it_fail "umount $(it_short "$bind")"
trap it_cleanup EXIT
