#!/usr/bin/env bash
# kill9_reader.sh — issue 9: kill -9 of the daemon while a disk.raw is
# being read. The qemu-nbd it started ends by itself (its last client is
# gone, and its death signal), no socket or pid record is left once the
# next daemon started on the same state_dir, and no image lock is left:
# the snapshot the reader held merges. Also a stale socket file and a pid
# record of a dead process planted in STATE_DIR/nbd are removed at start,
# and nothing is killed for them.
# shellcheck source=tests/fault/lib.sh
. "$(dirname "$0")/lib.sh"
fault_init

D="$IT_PREFIX-k9r"
base="$FAULT_IMAGES/base.qcow2"
it_make_image "$base" 256M
it_write_pattern "$base" 0x11 0 200M
it_define "$D" "$base"
it_start "$D"
it_mount
it_wait_dom "$D"
mkdir "$MNT/$D/vda/snapshots/s1" || it_fail "mkdir s1"
it_guest_write "$D" 0x22 0 1M

# a slow reader: 64 KiB every 10 ms keeps the file open for seconds
python3 - "$MNT/$D/vda/snapshots/s1/disk.raw" <<'PY' &
import sys, time
with open(sys.argv[1], "rb", buffering=0) as f:
    while f.read(65536):
        time.sleep(0.01)
PY
reader=$!
fault_on_exit "kill $reader 2>/dev/null"
it_wait_until 10 "the reader opened disk.raw" fault_log_has "disk.raw of $D/vda s1 opened by"
nbd=$(ps --ppid "$IT_PID" -o pid=,comm= | awk '$2 == "qemu-nbd" { print $1 }')
[ -n "$nbd" ] || it_fail "no qemu-nbd child of the daemon while disk.raw is read"
it_log "qemu-nbd pid(s) $nbd serve the reader"

fault_kill_daemon
# (reaped by init or a subreaper; a zombie still answers kill -0 until then)
nbd_gone() {
  local p
  for p in $nbd; do
    [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && return 1
  done
  return 0
}
it_wait_until 2 "qemu-nbd ends within 2 s of its daemon's kill -9" nbd_gone
it_log "ok: qemu-nbd $nbd ended"
kill "$reader" 2>/dev/null || true
wait "$reader" 2>/dev/null || true

# planted leftovers: a socket file and the pid record of a dead process
python3 - "$FAULT_STATE_DIR/nbd/9999.s" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
PY
sleep 30 &
dead=$!
kill "$dead"
wait "$dead" 2>/dev/null || true
printf '%s 12345\n' "$dead" >"$FAULT_STATE_DIR/nbd/9998.pid"
sleep 300 &
alive_pid=$!
fault_on_exit "kill $alive_pid 2>/dev/null"
# a record whose pid lives but is not the process recorded: not killed
printf '%s 1\n' "$alive_pid" >"$FAULT_STATE_DIR/nbd/9997.pid"

fault_remount
it_wait_dom "$D"
left=$(ls -A "$FAULT_STATE_DIR/nbd")
it_assert_eq "" "$left" "STATE_DIR/nbd is empty after the restart"
kill -0 "$alive_pid" 2>/dev/null || it_fail "the sweep killed pid $alive_pid, which it did not start"
it_log "ok: the sweep left pid $alive_pid alone"
rmdir "$MNT/$D/vda/snapshots/s1" || it_fail "rmdir s1 after the restart (a lock left behind?)"
out=$(it_wait_job "$D" vda)
it_assert_eq "completed" "$(sed -n 's/^state: *//p' <<<"$out")" "s1 merged after the restart"
