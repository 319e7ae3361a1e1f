#!/usr/bin/env bash
# options.sh — start-up options and their mistakes:
#  - manage_group without allow_other warns at start (the group's members
#    could not enter the mount): on stderr before the daemon detaches,
#    and in the log;
#  - the default state_dir of a non-root user (~/.local/state/chainfs) is
#    created with its parents, mode 0700;
#  - an overlay_dir removed after start: mkdir fails, and the log line and
#    `job` name the directory; once it is back, mkdir works.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

WARN="manage_group=root has no effect without allow_other"

# --- manage_group without allow_other, as a daemon: stderr before detaching -----
# (a state_dir that is a file makes the start fail after the warning, so
# no daemon is left running)
touch "$T/not-a-dir"
mkdir -p "$T/mnt0"
status=0
out=$("$CHAINFS" -c "$IT_URI" -o "manage_group=root,state_dir=$T/not-a-dir" "$T/mnt0" 2>&1) || status=$?
[ "$status" -ne 0 ] || it_fail "chainfs started on a state_dir that is a file"
it_assert_contains "$out" "warning: $WARN" "the warning is on stderr before the daemon detaches"
mountpoint -q "$T/mnt0" && it_fail "$T/mnt0 is mounted"

# --- the default state_dir of a non-root user -----------------------------------------
# chainfs runs as nobody (not a user we made: only its HOME is ours) on
# libvirt's test driver; whether the mount itself is allowed to nobody
# here (/dev/fuse, fusermount3) does not matter for the state_dir.
NR="$T/nonroot"
mkdir -p "$NR/home" "$NR/mnt"
chown nobody "$NR/home" "$NR/mnt"
setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups \
  env -i HOME="$NR/home" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  "$CHAINFS" -f -c test:///default "$NR/mnt" >"$NR/log" 2>&1 &
nrpid=$!
state="$NR/home/.local/state/chainfs"
it_poll 10 test -e "$state/lock" || true
if mountpoint -q "$NR/mnt"; then
  setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups fusermount3 -u "$NR/mnt" ||
    fusermount3 -u "$NR/mnt"
fi
for ((i = 0; i < 100; i++)); do
  kill -0 "$nrpid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$nrpid" 2>/dev/null && { kill "$nrpid"; it_fail "chainfs as nobody did not exit: $(cat "$NR/log")"; }
wait "$nrpid" || true
if grep -q "state directory" "$NR/log"; then
  it_fail "chainfs as nobody: $(cat "$NR/log")"
fi
for d in "$NR/home/.local" "$NR/home/.local/state" "$state"; do
  it_assert_eq "700 nobody" "$(stat -c '%a %U' "$d")" "$(it_short "$d") created, 0700, nobody's"
done
[ -e "$state/lock" ] || it_fail "no lock in the state_dir: $(cat "$NR/log")"
it_log "ok: the non-root default state_dir was created with its parents"

# --- manage_group without allow_other, in the foreground: the log ---------------------
D="$IT_PREFIX-opt"
it_make_image "$T/vda.qcow2" 64M
it_define "$D" "$T/vda.qcow2"
it_mount "manage_group=root"
it_wait_dom "$D"
grep -q "chainfs warning: $WARN" "$IT_LOG" || it_fail "no warning in the log"
it_log "ok: the warning is in the log"

# --- overlay_dir removed after start ----------------------------------------------
rmdir "$T/overlays"
it_expect_errno ENOENT mkdir "$MNT/$D/vda/snapshots/s1"
it_assert_eq "" "$(it_snapshots "$D" vda)" "no snapshot was made"
it_assert_eq "$T/vda.qcow2" "$(it_domblk "$D" vda)" "the chain did not change"
grep -q "mkdir $D/vda/snapshots/s1 failed (No such file or directory): .*overlay directory $T/overlays" "$IT_LOG" ||
  it_fail "the log line does not name the overlay directory"
it_log "ok: the log line names the overlay directory"
err=$(sed -n 's/^error: *//p' "$MNT/$D/vda/job")
it_assert_contains "$err" "$T/overlays" "job's error names the overlay directory"
mkdir "$T/overlays"
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir once the overlay directory is back"
it_assert_eq "s1" "$(it_snapshots "$D" vda)" "the snapshot is made once the directory is back"
