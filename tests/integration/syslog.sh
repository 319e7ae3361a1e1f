#!/usr/bin/env bash
# syslog.sh — issue 11: detached, chainfs logs to syslog (ident chainfs,
# facility daemon, the right severities), and every job's start, end and
# failure is one line with type, domain, disk, snapshot and libvirt's
# message (fs/core/events.c).
#
# /dev/log belongs to the machine: the test never touches the host's.
# The script runs itself again in a private mount namespace (unshare -m
# --propagation private) whose /dev is a tmpfs holding the host's device
# nodes and directories (bind mounts) and, as /dev/log, the socket of a
# listener of ours that records every datagram. The daemon, the mount
# and every file operation of the test happen inside the namespace;
# libvirtd and QEMU, outside, only need the image files under $T.
#
# Steps, on a running throwaway domain:
#  - chainfs started without -f returns once mounted; its lines reach the
#    listener as "<PRI>TIMESTAMP chainfs[PID]: TEXT", PRI = 3*8 + severity;
#  - mkdir/rmdir of s1: "job N started:" / "job N completed:" lines of the
#    snapshot and of the active commit, naming DOM/vda and s1, at notice;
#  - a merge libvirt refuses (the base made immutable, chattr +i, so that
#    libvirt/QEMU cannot open it for writing): rmdir fails, "job N failed:"
#    at err carries libvirt's message; the base writable again, the rmdir
#    completes;
#  - a second daemon on the same state directory fails to start: the
#    terminal gets the reason (the parent prints it) and so does syslog;
#  - unmounted, the daemon logs "unmounted" and exits.
set -euo pipefail

if [ -z "${CFS_SYSLOG_NS:-}" ] && [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null 2>&1; then
  exec unshare -m --propagation private env CFS_SYSLOG_NS=1 bash "$0" "$@"
fi

# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init
[ -n "${CFS_SYSLOG_NS:-}" ] || it_skip "unshare is not installed (util-linux): no private mount namespace"

NEWDEV="$T/newdev"      # the namespace's /dev, built here, then moved
SYSLOG="$T/syslog.txt"  # every datagram the listener got, one per line
LISTENER_PID=""
IMMUTABLE=""            # a file we made immutable (made mutable at exit)

sl_cleanup() {
  [ -z "$IMMUTABLE" ] || chattr -i "$IMMUTABLE" 2>/dev/null || true
  [ -z "$LISTENER_PID" ] || kill "$LISTENER_PID" 2>/dev/null || true
  # never leave binds of the host's /dev under $T (lib.sh removes $T)
  if mountpoint -q "$NEWDEV" 2>/dev/null; then
    umount -R -l "$NEWDEV" || { echo "[$IT_NAME] cannot unmount $NEWDEV" >&2; return 1; }
  fi
  if [ "$IT_RC" -ne 0 ] && [ -s "$SYSLOG" ]; then
    echo "[$IT_NAME] ---- syslog datagrams (last 60) ----" >&2
    tail -n 60 "$SYSLOG" >&2
  fi
  return 0
}
IT_CLEANUP_HOOKS+=(sl_cleanup)

# ---- a private /dev with our /dev/log ----------------------------------------
mkdir -m 0755 "$NEWDEV"
mount -t tmpfs -o mode=0755,size=1m "cfs-syslog-$$" "$NEWDEV" || it_fail "tmpfs on $NEWDEV"
for e in /dev/* ; do
  name=${e##*/}
  [ "$name" != log ] || continue
  if [ -L "$e" ]; then
    cp -P "$e" "$NEWDEV/$name"
  elif [ -d "$e" ]; then
    mkdir "$NEWDEV/$name"
    mount --rbind "$e" "$NEWDEV/$name" || it_fail "bind $e"
  else
    touch "$NEWDEV/$name"
    mount --bind "$e" "$NEWDEV/$name" || it_fail "bind $e"
  fi
done
python3 - "$NEWDEV/log" "$SYSLOG" <<'PY' &
import os, socket, sys
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open(out, "ab", buffering=0) as f:
    f.write(b"# listening\n")
    while True:
        data = s.recv(65536)
        # one record a line: chainfs escapes control characters itself,
        # a stray newline here would be a bug worth seeing as \n
        f.write(data.rstrip(b"\0").replace(b"\n", b"\\n") + b"\n")
PY
LISTENER_PID=$!
it_wait_until 5 "the listener binds $NEWDEV/log" test -S "$NEWDEV/log"
mount --move "$NEWDEV" /dev || it_fail "mount --move $NEWDEV /dev"
[ -S /dev/log ] || it_fail "/dev/log is not our socket after the move"
if [ ! -c /dev/fuse ] || [ ! -c /dev/null ]; then
  it_fail "/dev/fuse or /dev/null missing in the private /dev"
fi
mountpoint -q "$NEWDEV" && it_fail "$NEWDEV still a mount after the move"
it_log "private /dev with our listener on /dev/log (host's /dev/log untouched)"

# sl_lines REGEX — the datagrams (the whole "<PRI>... chainfs[PID]: text")
# whose text matches REGEX (grep -E)
sl_lines() { grep -E "^<[0-9]+>.* chainfs\[[0-9]+\]: .*$1" "$SYSLOG" || true; }

# sl_expect PRI REGEX WHAT — exactly one datagram from chainfs matching
# REGEX, at PRI (3*8 + severity); prints its text
sl_expect() {
  local pri=$1 re=$2 what=$3 got n
  got=$(sl_lines "$re")
  n=$(printf '%s' "$got" | grep -c . || true)
  [ "$n" -eq 1 ] || it_fail "$what: $n syslog lines match '$re', expected 1"
  case "$got" in
    "<$pri>"*) ;;
    *) it_fail "$what: priority ${got%%>*}> in '$got', expected <$pri> (daemon facility, severity $((pri - 24)))" ;;
  esac
  it_log "ok: $what: ${got#*]: }"
}

# ---- the domain, the detached daemon -------------------------------------------
D="$IT_PREFIX-syslog"
base="$T/base.qcow2"
it_make_image "$base" 64M
it_write_pattern "$base" 0x11 0 1M
it_define "$D" "$base"
it_start "$D"

MNT="$T/mnt"
mkdir -p "$MNT"
OPTS="state_dir=$T/state,overlay_dir=$T/overlays"
"$CHAINFS" -c "$IT_URI" -o "$OPTS" "$MNT" >>"$IT_LOG" 2>&1 ||
  it_fail "chainfs (detached) exited $? before mounting: $(cat "$IT_LOG")"
mountpoint -q "$MNT" || it_fail "chainfs returned but $MNT is not mounted"
it_wait_dom "$D"
it_wait_until 5 "the mount's line reaches syslog" grep -q "chainfs\[[0-9]*\]: mounted on $MNT " "$SYSLOG"
line=$(grep "chainfs\[[0-9]*\]: mounted on $MNT " "$SYSLOG")
DPID=$(printf '%s\n' "$line" | sed -n 's/.* chainfs\[\([0-9]*\)\]: .*/\1/p')
if [ -z "$DPID" ] || ! kill -0 "$DPID" 2>/dev/null; then
  it_fail "no running daemon with the pid of '$line'"
fi
case "$line" in
  "<30>"[A-Z][a-z][a-z]" "*" chainfs[$DPID]: mounted on $MNT "*) ;;
  *) it_fail "the mount's line is not '<30>TIMESTAMP chainfs[$DPID]: ...' (daemon.info): $line" ;;
esac
it_log "ok: detached daemon $DPID logs to syslog, ident chainfs, facility daemon: ${line#*]: }"
[ ! -s "$IT_LOG" ] || it_fail "the detached daemon wrote to the terminal: $(cat "$IT_LOG")"

# ---- mkdir/rmdir ----------------------------------------------------------------
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir snapshots/s1"
overlay=$(it_domblk "$D" vda)
rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir snapshots/s1"
it_assert_contains "$(it_wait_job "$D" vda)" "completed" "the merge of s1 completed"
it_wait_until 5 "the merge's end reaches syslog" grep -q "job [0-9]* completed: active-commit $D/vda" "$SYSLOG"

sl_expect 29 "job [0-9]+ started: snapshot $D/vda snapshot s1 \(base $base\)$" "mkdir's start"
sl_expect 29 "job [0-9]+ completed: snapshot $D/vda snapshot s1 \(top $overlay, base $base\) in [0-9]+ s$" "mkdir's end"
sl_expect 29 "job [0-9]+ started: active-commit $D/vda snapshot s1 \(top $overlay, base $base\)$" "rmdir's start"
sl_expect 29 "job [0-9]+ completed: active-commit $D/vda snapshot s1 \(top $overlay, base $base\) in [0-9]+ s$" "rmdir's end"
sl_expect 30 "job [0-9]+ pivoting: active-commit $D/vda snapshot s1 \(was ready\)$" "the pivot's edge (info)"

# ---- a merge libvirt refuses ------------------------------------------------------
mkdir "$MNT/$D/vda/snapshots/s2" || it_fail "mkdir snapshots/s2"
overlay2=$(it_domblk "$D" vda)
if chattr +i "$base" 2>/dev/null; then
  IMMUTABLE=$base
  if rmdir "$MNT/$D/vda/snapshots/s2" 2>"$T/rmdir.err"; then
    it_fail "rmdir s2 succeeded with an immutable base"
  fi
  it_log "rmdir s2 refused as expected: $(cat "$T/rmdir.err")"
  chattr -i "$base"
  IMMUTABLE=""
  it_assert_eq "s2" "$(it_snapshots "$D" vda)" "s2 is back in snapshots/"
  err=$(it_job_field "$D" vda error)
  if [ -z "$err" ] || [ "$err" = null ]; then
    it_fail "job.json has no error"
  fi
  it_wait_until 5 "the failure reaches syslog" grep -q "job [0-9]* failed: active-commit $D/vda snapshot s2" "$SYSLOG"
  sl_expect 27 "job [0-9]+ failed: active-commit $D/vda snapshot s2 \(top $overlay2, base $base\) after [0-9]+ s: " "the failure"
  fail_line=$(sl_lines "job [0-9]+ failed: active-commit $D/vda snapshot s2")
  # the job's error, libvirt's message in it, is the line's end
  case "$fail_line" in
    *": $err") it_log "ok: the failure line ends with the job's error (libvirt's message)" ;;
    *) it_fail "the failure line does not end with job.json's error '$err': $fail_line" ;;
  esac
  case "$err" in
    "rmdir s2: "?*) ;;
    *) it_fail "job.json's error is not rmdir's with libvirt's message: $err" ;;
  esac
else
  # (tmpfs, overlayfs: no immutable files) libvirt would accept the merge
  it_skip "chattr +i does not work on $(stat -f -c %T "$T"): no merge libvirt refuses here"
fi
rmdir "$MNT/$D/vda/snapshots/s2" || it_fail "rmdir snapshots/s2 once the base is writable"
it_assert_contains "$(it_wait_job "$D" vda)" "completed" "the merge of s2 completed"
it_check_pattern "$base" 0x11 0 1M

# ---- a start-up failure reaches the terminal and syslog --------------------------
mkdir -p "$T/mnt2"
if "$CHAINFS" -c "$IT_URI" -o "state_dir=$T/state" "$T/mnt2" 2>"$T/second.err"; then
  mountpoint -q "$T/mnt2" && fusermount3 -u "$T/mnt2"
  it_fail "a second daemon on the same state directory started"
fi
it_assert_contains "$(cat "$T/second.err")" "in use by another chainfs" "the terminal gets the start-up failure"
it_wait_until 5 "the start-up failure reaches syslog" grep -q "start-up failed: .*in use by another chainfs" "$SYSLOG"
sl_expect 27 "start-up failed: state directory $T/state is in use by another chainfs" "the start-up failure"

# ---- unmount: the daemon says so and exits ----------------------------------------
fusermount3 -u "$MNT" || it_fail "fusermount3 -u $MNT"
it_wait_until 10 "daemon $DPID exits after the unmount" sh -c "! kill -0 $DPID 2>/dev/null"
sl_expect 30 "unmounted $MNT$" "the unmount"
# every chainfs datagram is daemon facility (PRI 24..31)
bad=$(grep -E "chainfs\[[0-9]+\]:" "$SYSLOG" | grep -vE "^<(2[4-9]|3[01])>" || true)
[ -z "$bad" ] || it_fail "chainfs lines outside the daemon facility: $bad"
# and no debug line without -d
! grep -qE "^<31>.* chainfs\[" "$SYSLOG" || it_fail "debug lines without -d: $(grep -E '^<31>' "$SYSLOG" | head -n 3)"
it_log "ok: $(grep -c "chainfs\[$DPID\]" "$SYSLOG") lines from daemon $DPID, all daemon facility"
