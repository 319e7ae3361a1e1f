#!/usr/bin/env bash
# open_at_unmount.sh — the mount goes away (lazy unmount) while a reader
# still holds a file of it open: the kernel never sends that file's
# release, and the daemon must still exit 0 with nothing leaked (under
# AddressSanitizer a leaked handle makes it exit non-zero).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_init

D="$IT_PREFIX-openum"
img="$T/$D.qcow2"
it_make_image "$img" 64M
it_define "$D" "$img"
it_mount
it_wait_dom "$D"

python3 -c 'import sys, time
f = open(sys.argv[1]); f.read(); print("open", flush=True); time.sleep(60)' \
  "$MNT/$D/vda/chain" >"$T/holder.out" &
holder=$!
it_wait_until 10 "the reader holds chain open" grep -q open "$T/holder.out"
fusermount3 -u -z "$MNT" || it_fail "fusermount3 -u -z"
it_unmount || it_fail "the daemon did not exit 0 though the mount is gone (a file was still open)"
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
it_log "ok: the daemon exited 0 with a file still open at the unmount"
